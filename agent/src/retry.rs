//! The one retry helper of the crate: capped exponential backoff with jitter (the `backon`
//! crate computes the delays), an optional overall deadline, and logging that reports each
//! change of the failure once instead of every attempt.
//!
//! Sleeping between attempts is the backoff itself; nothing in the agent sleeps to "wait for"
//! something otherwise.

use backon::{BackoffBuilder, ExponentialBuilder};
use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

/// How to retry one step.
///
/// backon's jitter adds a random 0–100 % to each delay, so a `base_cap` of 500 ms gives waits of
/// at most ~1 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// First delay before jitter.
    pub base_initial: Duration,
    /// Largest delay before jitter.
    pub base_cap: Duration,
    /// Give up (with [`Failure::Deadline`]) once this much time has passed since the first
    /// attempt. `None` retries until the step succeeds, fails permanently or is cancelled.
    pub deadline: Option<Duration>,
}

impl Policy {
    /// Steps on the formation hot path (engine start, rendezvous calls, joins): the first retry
    /// comes after ~25–50 ms and the waits stay ≤ ~1 s, so a peer or an engine that comes up is
    /// noticed within a second, which keeps formation close to a hand-written script.
    pub const FAST: Policy = Policy {
        base_initial: Duration::from_millis(25),
        base_cap: Duration::from_millis(500),
        deadline: None,
    };

    /// Background work that is not on the formation path (lease renewal retries, cloud
    /// metadata): ~100 ms first, ≤ ~4 s.
    pub const RELAXED: Policy = Policy {
        base_initial: Duration::from_millis(100),
        base_cap: Duration::from_secs(2),
        deadline: None,
    };

    pub const fn with_deadline(mut self, deadline: Duration) -> Policy {
        self.deadline = Some(deadline);
        self
    }

    /// The delays of this policy (endless; the deadline is checked by [`retry`]).
    pub fn delays(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::new()
            .with_jitter()
            .with_factor(2.0)
            .with_min_delay(self.base_initial)
            .with_max_delay(self.base_cap)
            .without_max_times()
            .build()
    }
}

/// Why [`retry`] gave up.
#[derive(Debug)]
pub enum Failure<E> {
    /// The operation reported an error that retrying cannot fix.
    Permanent(E),
    /// The deadline passed; `last` is the last transient error.
    Deadline { elapsed: Duration, last: E },
}

impl<E> Failure<E> {
    pub fn into_inner(self) -> E {
        match self {
            Failure::Permanent(e) => e,
            Failure::Deadline { last, .. } => last,
        }
    }

    pub fn inner(&self) -> &E {
        match self {
            Failure::Permanent(e) => e,
            Failure::Deadline { last, .. } => last,
        }
    }
}

impl<E: fmt::Display> fmt::Display for Failure<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Permanent(e) => e.fmt(f),
            Failure::Deadline { elapsed, last } => {
                write!(f, "still failing after {:.1?}: {last}", elapsed)
            }
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Failure<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.inner())
    }
}

/// Run `op` until it succeeds, fails permanently (`is_transient` says false) or the policy's
/// deadline passes. `what` names the step in log lines ("register with the coordinator").
///
/// The first failure is logged at `warn`, later ones only when the error text changes (a new
/// state), every attempt at `debug`, and a recovery at `info`.
pub async fn retry<T, E, F, Fut>(
    policy: Policy,
    what: &str,
    is_transient: impl Fn(&E) -> bool,
    op: F,
) -> Result<T, Failure<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: fmt::Display,
{
    retry_notify(policy, what, is_transient, |_| {}, op).await
}

/// [`retry`], calling `notify` with every transient error (e.g. to record it for `status`).
pub async fn retry_notify<T, E, F, Fut>(
    policy: Policy,
    what: &str,
    is_transient: impl Fn(&E) -> bool,
    mut notify: impl FnMut(&E),
    mut op: F,
) -> Result<T, Failure<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: fmt::Display,
{
    let started = Instant::now();
    let mut delays = policy.delays();
    let mut attempts: u32 = 0;
    let mut last_logged: Option<String> = None;
    loop {
        attempts += 1;
        match op().await {
            Ok(v) => {
                if last_logged.is_some() {
                    tracing::info!(
                        "{what}: succeeded after {attempts} attempts ({:.1?})",
                        started.elapsed()
                    );
                }
                return Ok(v);
            }
            Err(e) if !is_transient(&e) => return Err(Failure::Permanent(e)),
            Err(e) => {
                notify(&e);
                let text = e.to_string();
                if last_logged.as_deref() != Some(text.as_str()) {
                    tracing::warn!("{what}: {text} (retrying)");
                    last_logged = Some(text);
                } else {
                    tracing::debug!("{what}: attempt {attempts} failed: {e}");
                }
                let delay = delays.next().unwrap_or(policy.base_cap);
                if let Some(deadline) = policy.deadline {
                    let elapsed = started.elapsed();
                    if elapsed + delay > deadline {
                        return Err(Failure::Deadline { elapsed, last: e });
                    }
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug)]
    enum E {
        Busy,
        Broken,
    }
    impl fmt::Display for E {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{self:?}")
        }
    }

    const QUICK: Policy = Policy {
        base_initial: Duration::from_millis(1),
        base_cap: Duration::from_millis(4),
        deadline: None,
    };

    #[test]
    fn delays_are_capped_and_jittered() {
        let delays: Vec<_> = Policy::FAST.delays().take(30).collect();
        assert!(delays[0] >= Duration::from_millis(25) && delays[0] < Duration::from_millis(50));
        for d in &delays {
            assert!(*d <= Duration::from_secs(1), "{d:?}");
        }
        // later delays reach the cap region
        assert!(delays[29] >= Duration::from_millis(500));
        // jitter: not all equal once capped
        let capped = &delays[10..];
        assert!(capped.iter().any(|d| *d != capped[0]));
    }

    #[tokio::test]
    async fn retries_transient_until_success() {
        let n = AtomicU32::new(0);
        let r = retry(
            QUICK,
            "t",
            |e| matches!(e, E::Busy),
            || async {
                if n.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(E::Busy)
                } else {
                    Ok(7)
                }
            },
        )
        .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(n.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn stops_at_permanent() {
        let n = AtomicU32::new(0);
        let r: Result<(), _> = retry(
            QUICK,
            "t",
            |e| matches!(e, E::Busy),
            || async {
                n.fetch_add(1, Ordering::SeqCst);
                Err(E::Broken)
            },
        )
        .await;
        assert!(matches!(r, Err(Failure::Permanent(E::Broken))));
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn gives_up_at_deadline() {
        let started = Instant::now();
        let r: Result<(), _> = retry(
            QUICK.with_deadline(Duration::from_millis(50)),
            "t",
            |_| true,
            || async { Err(E::Busy) },
        )
        .await;
        let err = r.unwrap_err();
        assert!(matches!(err, Failure::Deadline { .. }));
        assert!(err.to_string().contains("still failing after"));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
