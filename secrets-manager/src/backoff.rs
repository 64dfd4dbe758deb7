//! Capped exponential backoff with jitter, used for compare-and-swap retries and for polling.
//! The caller owns the overall deadline; this only produces the next delay.

use rand::Rng;
use std::time::Duration;

/// Capped exponential backoff: the base delay doubles from `min` up to `max`; each returned
/// delay is drawn uniformly from `[base/2, base]` ("equal jitter"), or from `[0, base]` with
/// [`Backoff::full_jitter`], so contenders that started together spread out instead of
/// retrying in lock-step, and a delay never exceeds `max`.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    full: bool,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        Backoff {
            base: min.min(max),
            max: max.max(min),
            full: false,
        }
    }

    /// Draw each delay from `[0, base]`: the most spread for many contenders of one resource
    /// (fewest wasted attempts in total).
    pub fn full_jitter(mut self) -> Self {
        self.full = true;
        self
    }

    /// The delay to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.base;
        self.base = (self.base * 2).min(self.max);
        let half = if self.full { Duration::ZERO } else { base / 2 };
        let spread = (base - half).as_micros() as u64;
        let jitter = if spread == 0 {
            0
        } else {
            rand::rng().random_range(0..=spread)
        };
        half + Duration::from_micros(jitter)
    }
}

/// Delays between compare-and-swap attempts after a lost race: full jitter over a window that
/// doubles from 100 ms to 4 s. A lost attempt costs at most one write call (a PutSecretValue
/// refused because the successor exists) from the ~50 TPS write budget of the whole account,
/// so losers spread out widely rather than retry fast; one CAS round takes ~4 round trips.
pub fn cas_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(500), Duration::from_secs(8)).full_jitter()
}

/// The window over which the first write of a registration is spread: nodes that boot in the
/// same instant (one `terraform apply`) would otherwise all write at once, and every write
/// call counts against the account's ~50 TPS write budget (losers' calls included).
pub const FIRST_WRITE_SPREAD: Duration = Duration::from_secs(6);

/// Delays between polls of GetSecretValue while waiting for a change (join tokens, a newer
/// document): 100 ms at first so a fast bootstrap is not slowed down, capped at 2 s so a long
/// wait costs at most ~30 reads a minute per node (GetSecretValue allows ~10k TPS).
pub fn poll_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_jittered_and_capped() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        let mut last = first;
        for _ in 0..20 {
            last = b.next_delay();
            assert!(last <= Duration::from_secs(2), "{last:?} above the cap");
        }
        assert!(
            last >= Duration::from_secs(1),
            "{last:?} never reached the cap"
        );
    }

    #[test]
    fn jitter_spreads_values() {
        let delays: std::collections::BTreeSet<_> = (0..50)
            .map(|_| Backoff::new(Duration::from_millis(200), Duration::from_secs(1)).next_delay())
            .collect();
        assert!(delays.len() > 10, "jitter produced only {delays:?}");
    }
}
