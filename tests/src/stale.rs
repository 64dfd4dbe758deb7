//! Cleaning up after runs that crashed before their teardown. Only objects with our naming
//! prefix are touched, and only processes named in our own pidfiles under
//! `/tmp/swarmstrap-lab-*/` (and verified to still be the same process) are killed.

use crate::error::Result;
use crate::lock::LabLock;
use crate::net::{self, PREFIX, ROOT_PREFIX};
use crate::proc::{belongs_to_lab, read_pidfile, signal_pid, wait_gone, Signal};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What [`cleanup_stale`] removed.
#[derive(Debug, Clone, Default)]
pub struct StaleReport {
    pub removed: Vec<String>,
    pub errors: Vec<String>,
}

/// Remove leftovers of earlier crashed runs. Takes the lab lock (so it never touches a live
/// lab); do not call it while this thread holds a [`Lab`](crate::Lab). [`Lab::start`]
/// (crate::Lab::start) runs it already.
pub fn cleanup_stale() -> Result<StaleReport> {
    crate::lab::preflight()?;
    let _lock = LabLock::acquire(Duration::from_secs(30 * 60))?;
    Ok(cleanup_stale_locked())
}

/// Lab directories `/tmp/swarmstrap-lab-<hex id>`.
pub fn lab_dirs() -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir("/tmp") else {
        return Vec::new();
    };
    let base = ROOT_PREFIX.trim_start_matches("/tmp/");
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name().to_str().is_some_and(|n| {
                n.strip_prefix(base)
                    .is_some_and(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()))
            })
        })
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

/// The pidfiles a lab writes or makes its engines write: per host `docker.pid` (dockerd),
/// `engine.pid` and `procs/*.pid` (ours, with start times), and containerd's `containerd.pid`,
/// `shim.pid` and `init.pid` files under the exec roots (container root filesystems are not
/// searched).
pub fn lab_pidfiles(root: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let Ok(hosts) = std::fs::read_dir(root) else {
        return v;
    };
    for h in hosts.filter_map(|e| e.ok()).map(|e| e.path()) {
        if !h.is_dir() || h.is_symlink() {
            continue;
        }
        for f in ["engine.pid", "docker.pid"] {
            if h.join(f).is_file() {
                v.push(h.join(f));
            }
        }
        if let Ok(rd) = std::fs::read_dir(h.join("procs")) {
            v.extend(
                rd.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "pid")),
            );
        }
        find_containerd_pidfiles(&h.join("exec"), 0, &mut v);
    }
    v
}

fn find_containerd_pidfiles(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if depth > 8 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let Ok(t) = e.file_type() else { continue };
        let name = e.file_name();
        let name = name.to_string_lossy();
        if t.is_dir() {
            if name != "rootfs" && name != "netns" {
                find_containerd_pidfiles(&e.path(), depth + 1, out);
            }
        } else if t.is_file() && matches!(name.as_ref(), "containerd.pid" | "shim.pid" | "init.pid")
        {
            out.push(e.path());
        }
    }
}

/// [`cleanup_stale`] for a caller that holds the lab lock.
pub(crate) fn cleanup_stale_locked() -> StaleReport {
    let mut r = StaleReport::default();
    for dir in lab_dirs() {
        let id = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.rsplit('-').next())
            .unwrap_or("")
            .to_string();
        let inodes: Vec<u64> = net::netns_with_prefix(&format!("{PREFIX}{id}n"))
            .iter()
            .filter_map(|ns| net::netns_inode(ns))
            .collect();
        let ours: Vec<(PathBuf, i32)> = lab_pidfiles(&dir)
            .into_iter()
            .filter_map(|f| read_pidfile(&f).map(|(p, st)| (f, p, st)))
            .filter(|(_, p, st)| belongs_to_lab(*p, *st, &dir, &inodes))
            .map(|(f, p, _)| (f, p))
            .collect();
        if !ours.is_empty() {
            // dockerds first, gently, so they can release what they hold.
            let engines: Vec<i32> = ours
                .iter()
                .filter(|(f, _)| {
                    f.file_name()
                        .is_some_and(|n| n == "docker.pid" || n == "engine.pid")
                })
                .map(|(_, p)| *p)
                .collect();
            for p in &engines {
                let _ = signal_pid(*p, Signal::TERM);
            }
            wait_gone(&engines, Duration::from_secs(15), || {});
            let mut all: Vec<i32> = ours.iter().map(|(_, p)| *p).collect();
            all.sort_unstable();
            all.dedup();
            for p in &all {
                if crate::proc::pid_alive(*p) {
                    let _ = signal_pid(*p, Signal::KILL);
                }
            }
            let left = wait_gone(&all, Duration::from_secs(10), || {});
            r.removed
                .push(format!("processes {all:?} of {}", dir.display()));
            if !left.is_empty() {
                r.errors.push(format!("pids {left:?} survived SIGKILL"));
            }
        }
        let mounts = net::mounts_under(&dir);
        if !mounts.is_empty() {
            r.removed
                .push(format!("{} mounts under {}", mounts.len(), dir.display()));
            let left = net::unmount_all_under(&dir);
            if !left.is_empty() {
                r.errors.push(format!("could not unmount {left:?}"));
            }
        }
        if dir.join(crate::lab::KEEP_MARKER).exists() {
            continue;
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => r.removed.push(format!("directory {}", dir.display())),
            Err(e) => r.errors.push(format!("removing {}: {e}", dir.display())),
        }
    }
    for ns in net::netns_with_prefix(PREFIX) {
        match net::delete_netns(&ns) {
            Ok(()) => r.removed.push(format!("network namespace {ns}")),
            Err(e) => r.errors.push(e.to_string()),
        }
    }
    for l in net::links_with_prefix(PREFIX) {
        match net::delete_link(&l) {
            Ok(()) => r.removed.push(format!("link {l}")),
            Err(e) => r.errors.push(e.to_string()),
        }
    }
    match net::forward_rules_with_prefix(PREFIX) {
        Ok(rules) => {
            for spec in rules {
                match net::delete_forward_rule(&spec) {
                    Ok(()) => r
                        .removed
                        .push(format!("iptables FORWARD rule {}", spec.join(" "))),
                    Err(e) => r.errors.push(e.to_string()),
                }
            }
        }
        Err(e) => r.errors.push(e.to_string()),
    }
    r
}
