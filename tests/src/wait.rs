//! Waiting on conditions: capped exponential backoff with jitter inside an overall deadline.
//! There is no other way to wait in this crate (no fixed sleeps).

use crate::error::{LabError, Result};
use rand::Rng;
use std::time::{Duration, Instant};

/// First delay between two polls: short, because most lab conditions become true quickly.
pub const INITIAL_DELAY: Duration = Duration::from_millis(20);
/// Longest delay between two polls: keeps the reaction time to a change under ~0.5 s.
pub const MAX_DELAY: Duration = Duration::from_millis(500);

/// Capped exponential backoff with jitter ("equal jitter": each delay is drawn from
/// `[d/2, d]` where `d` doubles from `initial` up to `cap`).
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(INITIAL_DELAY, MAX_DELAY)
    }
}

impl Backoff {
    pub fn new(initial: Duration, cap: Duration) -> Self {
        Backoff {
            next: initial.min(cap),
            cap,
        }
    }

    /// The next delay (with jitter) and advance the exponential.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.cap);
        let half = d / 2;
        let jitter_ns = rand::rng().random_range(0..=half.as_nanos() as u64);
        half + Duration::from_nanos(jitter_ns)
    }

    /// Sleep for the next delay, but never past `deadline`. Returns false when the deadline
    /// has already passed (nothing slept).
    pub fn sleep_until_next(&mut self, deadline: Instant) -> bool {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(self.next_delay().min(deadline - now));
        true
    }
}

/// Poll `check` until it returns `Ok(Some(value))`, with capped exponential backoff + jitter
/// (20 ms initial delay, 500 ms cap), for at most `timeout`.
///
/// `Ok(None)` means "not yet". An `Err` is treated as transient (e.g. "the node is not a
/// manager yet"): polling goes on and the last error is reported if the deadline passes.
/// `what` names the condition for the timeout message.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut backoff = Backoff::default();
    loop {
        let last = match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => String::from("condition not met yet"),
            Err(e) => e.to_string(),
        };
        if !backoff.sleep_until_next(deadline) {
            return Err(LabError::Timeout {
                what: what.to_string(),
                waited: start.elapsed(),
                last,
            });
        }
    }
}

/// Like [`wait_until`], but the check reports its progress as `Err(description)` so that a
/// timeout says how far things got (e.g. "3 of 5 nodes Ready").
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<std::result::Result<T, String>>,
) -> Result<T> {
    let mut progress = String::new();
    let r = wait_until(timeout, what, || match check()? {
        Ok(v) => Ok(Some(v)),
        Err(p) => {
            progress = p;
            Ok(None)
        }
    });
    match r {
        Err(LabError::Timeout {
            what, waited, last, ..
        }) if !progress.is_empty() && last == "condition not met yet" => Err(LabError::Timeout {
            what,
            waited,
            last: progress,
        }),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_cap_with_jitter_in_range() {
        let mut b = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        let mut nominal = Duration::from_millis(20);
        for _ in 0..12 {
            let d = b.next_delay();
            assert!(
                d >= nominal / 2 && d <= nominal,
                "{d:?} not in [{nominal:?}/2, {nominal:?}]"
            );
            nominal = (nominal * 2).min(Duration::from_millis(500));
        }
        assert_eq!(nominal, Duration::from_millis(500));
    }

    #[test]
    fn wait_until_returns_value_once_ready() {
        let mut n = 0;
        let v = wait_until(Duration::from_secs(5), "counter", || {
            n += 1;
            Ok((n >= 3).then_some(n))
        })
        .unwrap();
        assert_eq!(v, 3);
    }

    #[test]
    fn wait_until_times_out_with_last_error() {
        let start = Instant::now();
        let err = wait_until::<()>(Duration::from_millis(150), "never", || {
            Err(LabError::Check("still broken".into()))
        })
        .unwrap_err();
        assert!(start.elapsed() >= Duration::from_millis(150));
        assert!(start.elapsed() < Duration::from_secs(2));
        let msg = err.to_string();
        assert!(
            msg.contains("never") && msg.contains("still broken"),
            "{msg}"
        );
    }

    #[test]
    fn wait_for_reports_progress_on_timeout() {
        let err = wait_for::<()>(Duration::from_millis(100), "nodes", || {
            Ok(Err("2 of 5 Ready".into()))
        })
        .unwrap_err();
        assert!(err.to_string().contains("2 of 5 Ready"), "{err}");
    }
}
