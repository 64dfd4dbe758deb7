//! The machine-wide lab lock. Labs use root networking, many processes and a lot of CPU, so
//! only one runs at a time on a machine: every [`Lab`](crate::Lab) holds this lock (flock on
//! [`LOCK_PATH`]) for its whole life, across test threads and test processes alike. The kernel
//! drops the lock when the holder dies, so a crashed run never leaves it held.

use crate::error::{LabError, Result};
use crate::wait::Backoff;
use rustix::fs::{flock, FlockOperation};
use std::fs::{File, OpenOptions};
use std::io::{Seek, Write};
use std::time::{Duration, Instant};

pub const LOCK_PATH: &str = "/tmp/swarmstrap-lab.lock";

/// Held while alive; released on drop (or when the process dies).
#[derive(Debug)]
pub struct LabLock {
    _file: File,
}

impl LabLock {
    /// Take the lock, polling with backoff for at most `timeout` while another lab holds it.
    pub fn acquire(timeout: Duration) -> Result<LabLock> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(LOCK_PATH)
            .map_err(|e| LabError::io(format!("opening the lab lock {LOCK_PATH}"), e))?;
        let start = Instant::now();
        let deadline = start + timeout;
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        let mut announced = false;
        let mut attempts = 0u32;
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::WOULDBLOCK) => {
                    attempts += 1;
                    // Not on the first miss: a holder that just got the lock may not have
                    // written its name yet.
                    if !announced && attempts >= 3 {
                        let holder = std::fs::read_to_string(LOCK_PATH).unwrap_or_default();
                        eprintln!(
                            "swarmstrap-lab: waiting for the lab lock {LOCK_PATH} (held by {})",
                            holder.trim()
                        );
                        announced = true;
                    }
                    if !backoff.sleep_until_next(deadline) {
                        return Err(LabError::Timeout {
                            what: format!("the lab lock {LOCK_PATH}"),
                            waited: start.elapsed(),
                            last: "another lab is still running; labs run one at a time".into(),
                        });
                    }
                }
                Err(e) => {
                    return Err(LabError::io(
                        format!("flock {LOCK_PATH}"),
                        std::io::Error::from(e),
                    ))
                }
            }
        }
        if announced {
            eprintln!(
                "swarmstrap-lab: got the lab lock after {:.1}s",
                start.elapsed().as_secs_f64()
            );
        }
        // Informational only: who holds the lock.
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(
            file,
            "pid {} ({})",
            std::process::id(),
            std::thread::current().name().unwrap_or("?")
        );
        Ok(LabLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_waits_for_the_first() {
        let first = LabLock::acquire(Duration::from_secs(600)).unwrap();
        let err = LabLock::acquire(Duration::from_millis(100)).unwrap_err();
        assert!(matches!(err, LabError::Timeout { .. }), "{err}");
        drop(first);
        LabLock::acquire(Duration::from_secs(600)).unwrap();
    }
}
