//! Where an engine listens and keeps its lock: one directory
//! (`/run/xsock` unless `XSOCK_RUN_DIR` says otherwise), one socket and one
//! lock file per interface and network namespace. The namespace is part of
//! the name because namespaces share the filesystem: two namespaces may
//! each have an `eth0` with its own engine, and a process must find the one
//! of its own namespace.

use std::path::{Path, PathBuf};

/// The default directory.
pub const RUN_DIR: &str = "/run/xsock";

/// The environment variable that overrides [`RUN_DIR`].
pub const RUN_DIR_ENV: &str = "XSOCK_RUN_DIR";

/// An engine's place: its socket and lock file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The directory.
    pub dir: PathBuf,
    /// The interface.
    pub iface: String,
    /// The network namespace's inode (0 if unknown).
    pub netns: u64,
}

impl Place {
    /// The place for `iface` in the namespace `netns`, in `dir` (or the
    /// default directory).
    pub fn new(dir: Option<&Path>, iface: &str, netns: u64) -> Place {
        let dir = dir.map(Path::to_path_buf).unwrap_or_else(default_dir);
        Place { dir, iface: iface.to_owned(), netns }
    }

    /// The Unix socket clients connect to.
    pub fn socket(&self) -> PathBuf {
        self.dir.join(format!("{}.{}.sock", self.iface, self.netns))
    }

    /// The lock file the running engine holds.
    pub fn lock(&self) -> PathBuf {
        self.dir.join(format!("{}.{}.lock", self.iface, self.netns))
    }
}

/// `XSOCK_RUN_DIR` or [`RUN_DIR`].
pub fn default_dir() -> PathBuf {
    std::env::var_os(RUN_DIR_ENV).filter(|v| !v.is_empty()).map_or_else(|| PathBuf::from(RUN_DIR), PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_interface_and_namespace() {
        let p = Place::new(Some(Path::new("/tmp/r")), "e0", 4026531840);
        assert_eq!(p.socket(), Path::new("/tmp/r/e0.4026531840.sock"));
        assert_eq!(p.lock(), Path::new("/tmp/r/e0.4026531840.lock"));
    }
}
