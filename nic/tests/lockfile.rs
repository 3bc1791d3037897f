//! One owner per resource across processes (issue 12's engine lock): a
//! second taker is told who holds it, and a holder killed with SIGKILL
//! holds nothing.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use xsock_nic::lockfile::{LockError, LockFile};

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("xsock-lock-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("eth0.lock")
}

#[test]
fn a_second_taker_is_told_who_holds_it() {
    let path = scratch("second");
    let held = LockFile::acquire(&path).unwrap();
    let e = LockFile::acquire(&path).unwrap_err();
    assert!(matches!(&e, LockError::Held { pid: Some(p), .. } if *p == std::process::id()), "{e}");
    assert!(e.to_string().contains(&format!("pid {}", std::process::id())), "{e}");
    drop(held);
    let again = LockFile::acquire(&path).unwrap();
    assert_eq!(again.path(), path);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn a_holder_killed_with_sigkill_holds_nothing() {
    let path = scratch("killed");
    // flock(1) holds the lock itself (-o: not in the command it runs).
    let mut holder = Command::new("flock")
        .args(["-o", path.to_str().unwrap(), "sleep", "30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("flock(1) from util-linux");
    let t0 = Instant::now();
    loop {
        match LockFile::acquire(&path) {
            Err(LockError::Held { .. }) => break,
            Ok(l) => drop(l), // flock has not taken it yet
            Err(e) => panic!("{e}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "flock(1) never took the lock");
        std::thread::sleep(Duration::from_millis(10));
    }
    holder.kill().unwrap(); // SIGKILL
    holder.wait().unwrap();
    let l = LockFile::acquire(&path).expect("a dead holder's lock is free at once");
    drop(l);
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn a_lock_in_a_missing_directory_names_the_path() {
    let path = std::path::Path::new("/nonexistent-xsock-dir/eth0.lock");
    let e = LockFile::acquire(path).unwrap_err();
    assert!(matches!(e, LockError::Io { .. }));
    assert!(e.to_string().contains("/nonexistent-xsock-dir/eth0.lock"), "{e}");
}
