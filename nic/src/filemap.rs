//! Files mapped into memory, for transfers that move file bytes straight
//! between the page cache and the transport's buffers (`xsock send` reads
//! from a map, `xsock recv` writes into one), with no staging buffer.
//!
//! Mapping a file is `unsafe` in Rust because another process may truncate
//! or rewrite the file underneath the map; here, as for the kernel
//! interfaces, the `unsafe` stays in this crate and the contract is stated
//! once: the transfer tools own the files they map for as long as the map
//! lives (the receiver's `.xsock-part` file is private to it; a sender's
//! source changed mid-transfer is caught by the per-chunk digests).

use std::{fs::File, io, ops::Range};

use memmap2::{Mmap, MmapMut};

/// A file mapped read-only.
#[derive(Debug)]
pub struct ReadMap {
    map: Option<Mmap>,
}

impl ReadMap {
    /// Maps all of `file` (an empty file maps to an empty slice).
    pub fn new(file: &File) -> io::Result<ReadMap> {
        if file.metadata()?.len() == 0 {
            return Ok(ReadMap { map: None });
        }
        // SAFETY: the map is only read, through `bytes`; the module's
        // contract (above) is that nobody truncates the file while it is
        // mapped. A rewrite underneath changes what we read, which the
        // transfer's digests detect, but is not undefined behaviour for
        // plain byte reads of a shared file map.
        let map = unsafe { Mmap::map(file) }?;
        Ok(ReadMap { map: Some(map) })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// Tells the kernel the file will be read front to back.
    pub fn advise_sequential(&self) {
        if let Some(m) = &self.map {
            let _ = m.advise(memmap2::Advice::Sequential);
        }
    }
}

/// A file mapped read-write (its length fixed before mapping).
#[derive(Debug)]
pub struct WriteMap {
    map: Option<MmapMut>,
}

impl WriteMap {
    /// Maps all of `file`, which must already have its final length
    /// (allocate it first, so a full disk is an error now and not a
    /// SIGBUS on a later write).
    pub fn new(file: &File) -> io::Result<WriteMap> {
        if file.metadata()?.len() == 0 {
            return Ok(WriteMap { map: None });
        }
        // SAFETY: the file is the receiver's private `.xsock-part` file,
        // opened read-write by it and allocated to its length; the module's
        // contract is that nobody else truncates it while it is mapped.
        let map = unsafe { MmapMut::map_mut(file) }?;
        Ok(WriteMap { map: Some(map) })
    }

    /// The file's bytes, readable.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    /// The bytes of `range`, writable.
    pub fn slice_mut(&mut self, range: Range<usize>) -> &mut [u8] {
        match &mut self.map {
            Some(m) => &mut m[range],
            None => &mut [][range],
        }
    }

    /// Writes the dirty pages of the whole file back and waits for it.
    pub fn flush(&self) -> io::Result<()> {
        self.map.as_ref().map_or(Ok(()), |m| m.flush())
    }
}

/// Reserves `len` bytes of disk for `file` (posix_fallocate), so that a
/// disk too small says so now. Filesystems that cannot preallocate fall
/// back to setting the length (sparse), which the caller must check
/// against the free space itself.
pub fn allocate(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if len == 0 {
        return file.set_len(0);
    }
    let off_len = libc::off_t::try_from(len).map_err(|_| io::Error::other("file too large for this platform"))?;
    // SAFETY: the fd is valid for the call (borrowed from `file`), and
    // posix_fallocate touches no memory of ours.
    let r = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, off_len) };
    match r {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(len),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Free bytes for an unprivileged writer on the filesystem holding `path`.
pub fn free_space(path: &std::path::Path) -> io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_written_map_reads_back_through_a_read_map() {
        let dir = std::env::temp_dir().join(format!("xsock-filemap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        allocate(&f, 10_000).unwrap();
        let mut w = WriteMap::new(&f).unwrap();
        w.slice_mut(9_990..10_000).copy_from_slice(b"0123456789");
        w.flush().unwrap();
        let r = ReadMap::new(&std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!(&r.bytes()[9_990..], b"0123456789");
        assert!(r.bytes()[..9_990].iter().all(|&b| b == 0));
        let mut empty = std::fs::File::create(dir.join("e")).unwrap();
        empty.flush().unwrap();
        assert!(ReadMap::new(&std::fs::File::open(dir.join("e")).unwrap()).unwrap().bytes().is_empty());
        assert!(free_space(&dir).unwrap() > 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
