//! Processes the lab starts: signals by pid, pidfiles, identity checks through /proc, and
//! [`ProcHandle`] for processes spawned inside a host's network namespace.

use crate::error::{LabError, Result};
use crate::wait::Backoff;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use rustix::process::Signal;

/// Whether `pid` is a live process. A zombie counts as gone, unless other threads of it are
/// still exiting (the main thread of a multi-threaded process, e.g. dockerd, can turn zombie
/// before the others; the process is not gone until they are).
pub fn pid_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let zombie =
                stat_fields(&stat).is_some_and(|f| matches!(f.first(), Some(&"Z") | Some(&"X")));
            !zombie || fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|rd| rd.count() > 1)
        }
        Err(_) => false,
    }
}

/// Fields of /proc/<pid>/stat after the `(comm)` field: index 0 is the state, index 19 the
/// start time in clock ticks since boot.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let after = stat.rfind(')')?;
    Some(stat[after + 1..].split_whitespace().collect())
}

/// Start time of `pid` (clock ticks since boot). Together with the pid it identifies a
/// process: a recycled pid has a different start time.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_fields(&stat)?.get(19)?.parse().ok()
}

/// The command line of `pid`, arguments joined by spaces.
pub fn cmdline(pid: i32) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Inode of the network namespace `pid` lives in.
pub fn netns_inode(pid: i32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// The root directory of `pid` (a container's rootfs for a container process).
pub fn root_dir(pid: i32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/root")).ok()
}

/// All pids currently in /proc.
pub fn all_pids() -> Vec<i32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Send `sig` to `pid`. A process that is already gone is not an error.
pub fn signal_pid(pid: i32, sig: Signal) -> Result<()> {
    let Some(p) = rustix::process::Pid::from_raw(pid) else {
        return Err(LabError::Check(format!("refusing to signal pid {pid}")));
    };
    if pid <= 1 {
        return Err(LabError::Check(format!("refusing to signal pid {pid}")));
    }
    match rustix::process::kill_process(p, sig) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(LabError::io(
            format!("kill -{} {pid}", sig.as_raw()),
            std::io::Error::from(e),
        )),
    }
}

/// Wait (backoff, no fixed sleep) until every pid in `pids` is gone or `timeout` passes.
/// `reap` is called on each poll so that our own children do not linger as zombies.
/// Returns the pids still alive.
pub fn wait_gone(pids: &[i32], timeout: Duration, mut reap: impl FnMut()) -> Vec<i32> {
    let deadline = Instant::now() + timeout;
    let mut backoff = Backoff::default();
    loop {
        reap();
        let alive: Vec<i32> = pids.iter().copied().filter(|p| pid_alive(*p)).collect();
        if alive.is_empty() || !backoff.sleep_until_next(deadline) {
            // A child that just exited is a zombie (counted as gone): reap it now.
            reap();
            return alive;
        }
    }
}

/// Our pidfile format: `<pid> <start time>`. Writing the start time lets a later cleanup
/// tell our process from an unrelated one that got the same pid.
pub fn write_pidfile(path: &Path, pid: i32) -> Result<()> {
    let st = start_time(pid).unwrap_or(0);
    fs::write(path, format!("{pid} {st}\n"))
        .map_err(|e| LabError::io(format!("writing pidfile {}", path.display()), e))
}

/// Read a pidfile: ours (`<pid> <start time>`) or a plain one (`<pid>`, as dockerd,
/// containerd and the shims write them).
pub fn read_pidfile(path: &Path) -> Option<(i32, Option<u64>)> {
    let s = fs::read_to_string(path).ok()?;
    let mut it = s.split_whitespace();
    let pid: i32 = it.next()?.parse().ok()?;
    let st = it.next().and_then(|v| v.parse().ok()).filter(|v| *v != 0);
    (pid > 1).then_some((pid, st))
}

/// Whether live process `pid` belongs to the lab rooted at `root`: its recorded start time
/// matches, or its command line names a path under `root` (dockerd, containerd, shims), or its
/// root directory is under `root` (a container's process), or it lives in one of `netns`.
pub fn belongs_to_lab(pid: i32, recorded_start: Option<u64>, root: &Path, netns: &[u64]) -> bool {
    if !pid_alive(pid) {
        return false;
    }
    if let Some(st) = recorded_start {
        return start_time(pid) == Some(st);
    }
    let root_s = root.to_string_lossy();
    if cmdline(pid).is_some_and(|c| c.contains(root_s.as_ref())) {
        return true;
    }
    if root_dir(pid).is_some_and(|r| r.starts_with(root)) {
        return true;
    }
    netns_inode(pid).is_some_and(|ino| netns.contains(&ino))
}

pub(crate) struct ProcInner {
    pub(crate) name: String,
    pub(crate) pid: i32,
    pub(crate) log: PathBuf,
    pub(crate) pidfile: PathBuf,
    pub(crate) child: Mutex<Child>,
    pub(crate) status: Mutex<Option<ExitStatus>>,
}

impl ProcInner {
    pub(crate) fn try_wait(&self) -> Result<Option<ExitStatus>> {
        let mut status = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if status.is_none() {
            let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
            *status = child.try_wait().map_err(|e| {
                LabError::io(format!("waiting for {} (pid {})", self.name, self.pid), e)
            })?;
        }
        Ok(*status)
    }

    /// SIGTERM, wait up to `grace`, SIGKILL, wait. Returns the exit status.
    pub(crate) fn stop(&self, grace: Duration) -> Result<ExitStatus> {
        if let Some(s) = self.try_wait()? {
            return Ok(s);
        }
        signal_pid(self.pid, Signal::TERM)?;
        if let Ok(s) = self.wait_timeout(grace) {
            return Ok(s);
        }
        signal_pid(self.pid, Signal::KILL)?;
        self.wait_timeout(Duration::from_secs(10))
    }

    pub(crate) fn wait_timeout(&self, timeout: Duration) -> Result<ExitStatus> {
        crate::wait::wait_until(
            timeout,
            &format!("{} (pid {}) to exit", self.name, self.pid),
            || self.try_wait(),
        )
    }
}

/// A process running inside a lab host's network namespace (see
/// [`Host::spawn_in_netns`](crate::Host::spawn_in_netns)). Its stdout and stderr go to
/// [`log_path`](Self::log_path). The lab stops it at teardown if it still runs; dropping the
/// handle does not stop it.
#[derive(Clone)]
pub struct ProcHandle {
    pub(crate) inner: Arc<ProcInner>,
}

impl std::fmt::Debug for ProcHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcHandle")
            .field("name", &self.inner.name)
            .field("pid", &self.inner.pid)
            .field("log", &self.inner.log)
            .finish()
    }
}

impl ProcHandle {
    pub fn pid(&self) -> i32 {
        self.inner.pid
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn log_path(&self) -> &Path {
        &self.inner.log
    }

    /// What the process printed so far (stdout and stderr interleaved).
    pub fn log(&self) -> String {
        fs::read(&self.inner.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Send a signal (e.g. `Signal::TERM`, `Signal::KILL`, `Signal::STOP`).
    pub fn kill(&self, sig: Signal) -> Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        signal_pid(self.inner.pid, sig)
    }

    /// The exit status if it has exited.
    pub fn try_wait(&self) -> Result<Option<ExitStatus>> {
        self.inner.try_wait()
    }

    pub fn is_running(&self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Wait for the process to exit, at most `timeout` (polling with backoff).
    pub fn wait_timeout(&self, timeout: Duration) -> Result<ExitStatus> {
        self.inner.wait_timeout(timeout)
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL.
    pub fn stop(&self, grace: Duration) -> Result<ExitStatus> {
        self.inner.stop(grace)
    }

    /// The pidfile the lab keeps for this process (`<pid> <start time>`).
    pub fn pidfile(&self) -> &Path {
        &self.inner.pidfile
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_identity() {
        let me = std::process::id() as i32;
        assert!(pid_alive(me));
        let st = start_time(me).expect("start time");
        assert!(st > 0);
        assert!(netns_inode(me).is_some());
        assert!(belongs_to_lab(me, Some(st), Path::new("/nonexistent"), &[]));
        assert!(!belongs_to_lab(
            me,
            Some(st + 1),
            Path::new("/nonexistent"),
            &[]
        ));
        assert!(!belongs_to_lab(
            me,
            None,
            Path::new("/nonexistent-lab-root"),
            &[]
        ));
    }

    #[test]
    fn pidfile_roundtrip_and_plain_format() {
        let dir = std::env::temp_dir().join(format!("swarmstrap-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.pid");
        let me = std::process::id() as i32;
        write_pidfile(&p, me).unwrap();
        assert_eq!(read_pidfile(&p), Some((me, start_time(me))));
        fs::write(&p, "1234\n").unwrap();
        assert_eq!(read_pidfile(&p), Some((1234, None)));
        fs::write(&p, "1\n").unwrap();
        assert_eq!(read_pidfile(&p), None, "pid 1 is never ours");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn signal_and_wait_gone_on_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(pid_alive(pid));
        signal_pid(pid, Signal::TERM).unwrap();
        let left = wait_gone(&[pid], Duration::from_secs(5), || {
            let _ = child.try_wait();
        });
        assert!(left.is_empty());
        assert!(signal_pid(1, Signal::TERM).is_err());
    }
}
