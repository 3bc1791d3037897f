//! What `xsock recv` keeps beside a partial file so that a transfer can
//! resume: which chunks it holds, verified, and their digests. Written
//! atomically (a temporary file, fsync, rename) only after the file's
//! pages are flushed, so a crash leaves a state that never claims more
//! than the disk holds.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

const MAGIC: [u8; 4] = *b"XSST";
const VERSION: u8 = 1;

/// The chunks a receiver holds of one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeState {
    /// The source's identity (from its `Hello`).
    pub file_id: u64,
    /// File size.
    pub size: u64,
    /// Chunk size.
    pub chunk_size: u32,
    /// Per chunk: the digest it was verified against, if held.
    pub held: Vec<Option<[u8; 32]>>,
}

impl ResumeState {
    /// Nothing held yet.
    pub fn new(file_id: u64, size: u64, chunk_size: u32) -> ResumeState {
        let n = size.div_ceil(u64::from(chunk_size)) as usize;
        ResumeState { file_id, size, chunk_size, held: vec![None; n] }
    }

    /// Chunks held.
    pub fn held_count(&self) -> usize {
        self.held.iter().filter(|h| h.is_some()).count()
    }

    /// The byte range of chunk `i`.
    pub fn range(&self, i: usize) -> std::ops::Range<usize> {
        let start = i as u64 * u64::from(self.chunk_size);
        let end = (start + u64::from(self.chunk_size)).min(self.size);
        start as usize..end as usize
    }

    /// The held chunks as a bitmap, least significant bit first.
    pub fn bitmap(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.held.len().div_ceil(8)];
        for (i, h) in self.held.iter().enumerate() {
            if h.is_some() {
                b[i / 8] |= 1 << (i % 8);
            }
        }
        b
    }

    /// Reads the state at `path`; `None` if there is none or it is not
    /// readable as one (a fresh start is then the safe course).
    pub fn load(path: &Path) -> Option<ResumeState> {
        let b = fs::read(path).ok()?;
        if b.len() < 25 || b[..4] != MAGIC || b[4] != VERSION {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8"));
        let (size, chunk) = (u64_at(13), u32::from_le_bytes(b[21..25].try_into().expect("4")));
        // The chunk count must match the records the file holds before
        // anything is sized from it (a damaged or foreign file must not
        // make us divide by zero or allocate its claimed size).
        if chunk == 0 || size.div_ceil(u64::from(chunk)).checked_mul(33) != Some(b.len() as u64 - 25) {
            return None;
        }
        let mut s = ResumeState::new(u64_at(5), size, chunk);
        for (i, rec) in b[25..].chunks_exact(33).enumerate() {
            if rec[0] == 1 {
                s.held[i] = Some(rec[1..].try_into().expect("32"));
            }
        }
        Some(s)
    }

    /// Writes the state to `path` atomically.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let mut b = Vec::with_capacity(25 + self.held.len() * 33);
        b.extend_from_slice(&MAGIC);
        b.push(VERSION);
        b.extend_from_slice(&self.file_id.to_le_bytes());
        b.extend_from_slice(&self.size.to_le_bytes());
        b.extend_from_slice(&self.chunk_size.to_le_bytes());
        for h in &self.held {
            b.push(u8::from(h.is_some()));
            b.extend_from_slice(&h.unwrap_or([0; 32]));
        }
        let tmp = tmp_path(path);
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&b)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".tmp");
    PathBuf::from(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_garbage_is_no_state() {
        let dir = std::env::temp_dir().join(format!("xsock-state-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s");
        let mut s = ResumeState::new(42, 10_000, 4096);
        assert_eq!(s.held.len(), 3);
        assert_eq!(s.range(2), 8192..10_000);
        s.held[1] = Some([7; 32]);
        s.save(&p).unwrap();
        let back = ResumeState::load(&p).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.bitmap(), vec![0b010]);
        assert_eq!(back.held_count(), 1);
        fs::write(&p, b"XSST\x01short").unwrap();
        assert_eq!(ResumeState::load(&p), None);
        // Regression: a chunk size of 0, or a size claiming 2^64 chunks.
        let mut hostile = fs::read(&p).unwrap_or_default();
        hostile.clear();
        s.save(&p).unwrap();
        let good = fs::read(&p).unwrap();
        for (size, chunk) in [(10_000u64, 0u32), (u64::MAX, 1)] {
            hostile.clone_from(&good);
            hostile[13..21].copy_from_slice(&size.to_le_bytes());
            hostile[21..25].copy_from_slice(&chunk.to_le_bytes());
            fs::write(&p, &hostile).unwrap();
            assert_eq!(ResumeState::load(&p), None, "size {size} chunk {chunk}");
        }
        assert_eq!(ResumeState::load(&dir.join("missing")), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
