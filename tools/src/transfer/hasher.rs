//! SHA-256 off the transfer loop. A userspace TCP stack acknowledges only
//! while its loop runs, so a loop that stops for seconds to hash a file
//! looks, to its peer, like a host that vanished. The hashing runs on a
//! worker thread over a read-only map of the file; the loop hands it jobs
//! and picks up the digests when they are ready.

use std::{
    ops::Range,
    sync::{Arc, mpsc},
    thread,
};

use sha2::{Digest, Sha256};
use xsock_nic::filemap::ReadMap;

/// The caller's tag of a job: which transfer, which chunk (`None` = the
/// whole file).
pub type Tag = (u64, Option<u32>);

/// What to hash: a range of a mapped file, tagged by the caller.
pub struct Job {
    /// The caller's tag.
    pub tag: Tag,
    /// The file.
    pub map: Arc<ReadMap>,
    /// The bytes of it to hash.
    pub range: Range<usize>,
}

/// A worker thread that hashes [`Job`]s in order.
pub struct Hasher {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<(Tag, [u8; 32])>,
    worker: Option<thread::JoinHandle<()>>,
}

impl Hasher {
    /// Starts the worker.
    pub fn new() -> std::io::Result<Hasher> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (tx, done) = mpsc::channel();
        let worker = thread::Builder::new().name("xsock-sha256".into()).spawn(move || {
            for job in rx {
                let d: [u8; 32] = Sha256::digest(&job.map.bytes()[job.range]).into();
                if tx.send((job.tag, d)).is_err() {
                    return;
                }
            }
        })?;
        Ok(Hasher { jobs: Some(jobs), done, worker: Some(worker) })
    }

    /// Queues a job.
    pub fn submit(&self, job: Job) {
        if let Some(j) = &self.jobs {
            let _ = j.send(job);
        }
    }

    /// A finished digest, if one is ready.
    pub fn try_result(&self) -> Option<(Tag, [u8; 32])> {
        self.done.try_recv().ok()
    }
}

impl Drop for Hasher {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_come_back_tagged() {
        let dir = std::env::temp_dir().join(format!("xsock-hasher-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        std::fs::write(&p, b"hello world").unwrap();
        let map = Arc::new(ReadMap::new(&std::fs::File::open(&p).unwrap()).unwrap());
        let h = Hasher::new().unwrap();
        h.submit(Job { tag: (1, Some(0)), map: map.clone(), range: 0..5 });
        h.submit(Job { tag: (1, None), map, range: 0..11 });
        let mut got = Vec::new();
        while got.len() < 2 {
            if let Some(r) = h.try_result() {
                got.push(r);
            }
        }
        assert_eq!(got[0].0, (1, Some(0)));
        assert_eq!(got[0].1[..], Sha256::digest(b"hello")[..]);
        assert_eq!(got[1].1[..], Sha256::digest(b"hello world")[..]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
