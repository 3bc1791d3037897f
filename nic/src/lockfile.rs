//! One owner per resource across processes: an exclusive flock(2) on a
//! file, which the kernel releases when the holder's descriptor closes,
//! including when the holder dies (`kill -9`), so a crashed engine never
//! leaves an interface locked (issue 12: one engine per interface). The
//! holder writes its pid into the file, so the next one can say who holds
//! it.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read, Seek, SeekFrom, Write},
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::{Path, PathBuf},
};

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// A live process holds it.
    #[error("{} is held by {}; stop that process first, or use it", path.display(), holder(*pid))]
    Held {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid, as it wrote it (if it did).
        pid: Option<u32>,
    },
    /// The lock file could not be opened or locked.
    #[error("lock file {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
}

fn holder(pid: Option<u32>) -> String {
    pid.map_or_else(|| "another process".into(), |p| format!("pid {p}"))
}

/// A held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct LockFile {
    _file: File,
    path: PathBuf,
}

impl LockFile {
    /// Takes the lock at `path` (creating the file, mode 0644), or says
    /// who holds it. Never waits.
    pub fn acquire(path: &Path) -> Result<LockFile, LockError> {
        // A holder that removes the file on its way out (remove) may do so
        // between our open and our flock: then we hold a lock on a file no
        // one else can find. Take it again on the file that is there.
        for _ in 0..8 {
            let l = Self::acquire_once(path)?;
            use std::os::unix::fs::MetadataExt;
            let ours = l._file.metadata().map(|m| m.ino()).ok();
            let there = std::fs::metadata(path).map(|m| m.ino()).ok();
            if ours.is_some() && ours == there {
                return Ok(l);
            }
        }
        Err(LockError::Io { path: path.to_owned(), source: io::Error::other("the lock file keeps being replaced") })
    }

    fn acquire_once(path: &Path) -> Result<LockFile, LockError> {
        let io_err = |source| LockError::Io { path: path.to_owned(), source };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(io_err)?;
        // SAFETY: flock takes a descriptor we own and an int operation.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(io_err(e));
            }
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(LockError::Held { path: path.to_owned(), pid: text.trim().parse().ok() });
        }
        let pid = format!("{}\n", std::process::id());
        file.set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(pid.as_bytes()))
            .map_err(io_err)?;
        Ok(LockFile { _file: file, path: path.to_owned() })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Releases the lock and removes the file (a clean shutdown leaves
    /// nothing behind). Removing while still holding is safe: a process
    /// that opened the old file re-checks it after locking.
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
