//! A full disk under the state dir: the daemon never lives on unable to
//! write. Raft stops on the first write it cannot make durable, the daemon
//! exits non-zero naming the reason, and a restart once space is back
//! recovers every acknowledged write.
//!
//! Needs root (a small tmpfs is mounted for the state dir); says so and
//! skips otherwise.

mod harness;

use std::io::Write;
use std::process::Command;

use harness::{Daemon, READY_WITHIN};

/// A tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    path: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(path: &std::path::Path, size: &str) -> Result<SmallDisk, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(SmallDisk {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[test]
fn a_full_disk_makes_the_daemon_exit_naming_it_and_a_restart_keeps_every_acknowledged_write() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root to mount a small tmpfs for the state dir");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let disk = match SmallDisk::mount(&tmp.path().join("disk"), "32m") {
        Ok(d) => d,
        Err(e) => {
            eprintln!("SKIPPED: cannot mount a tmpfs here: {e}");
            return;
        }
    };
    let state_dir = disk.path.join("s1");
    let mut d = Daemon::start(&state_dir);

    // Phase 1: fill the disk but for a little room.
    let filler = disk.path.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }

    // Phase 2: write until a write fails. Every write acknowledged before
    // that must survive.
    let label = format!("blob={}", "x".repeat(60 << 10));
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for i in 0..400 {
        let name = format!("s{i}");
        let out = d.shoal(&[
            "service",
            "create",
            "--name",
            &name,
            "--label",
            &label,
            "--replicas",
            "0",
            "--",
            "sleep",
            "1000",
        ]);
        if out.status.success() {
            acknowledged.push(name);
        } else {
            refused = Some(String::from_utf8_lossy(&out.stderr).into_owned());
            break;
        }
    }
    let refused = refused.expect("400 writes of 60 KB fit on a full 32 MB disk");
    assert!(refused.starts_with("Error: "), "{refused}");

    // Phase 3: the daemon exits non-zero, saying why.
    let status = d
        .wait_exit(READY_WITHIN)
        .expect("the daemon lived on after raft could no longer write");
    assert!(!status.success(), "{status}");
    let log = d.log_text();
    assert!(
        log.contains("raft stopped and can write no more") && log.contains("No space left"),
        "{log}"
    );

    // Phase 4: with space back, a restart recovers every acknowledged write.
    std::fs::remove_file(&filler).unwrap();
    drop(d);
    let d = Daemon::start(&state_dir);
    let listed = d.ok(&["service", "ls", "-q"]);
    let count = listed.lines().count();
    assert!(
        count >= acknowledged.len(),
        "{} acknowledged, {count} after the restart",
        acknowledged.len()
    );
    for name in &acknowledged {
        d.ok(&["service", "inspect", name]);
    }
}
