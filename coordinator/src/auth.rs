//! Secrets and authentication: generated secrets, sha256 hashes compared in constant time, and
//! a per-address backoff after repeated authentication failures.

use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use swarmstrap_wire::Secret;

/// Shortest secret accepted from an operator (`--secret-file`, admin API).
pub const MIN_SECRET_LEN: usize = 16;
pub const MAX_SECRET_LEN: usize = 256;

/// A new random secret: 32 bytes from the OS RNG, hex encoded.
pub fn generate_secret() -> Secret {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    Secret::new(hex::encode(bytes))
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Constant-time comparison of two digests.
pub fn digest_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

/// Check an operator-supplied secret (no whitespace, sensible length).
pub fn validate_secret(secret: &Secret) -> Result<(), String> {
    let s = secret.expose();
    if s.len() < MIN_SECRET_LEN || s.len() > MAX_SECRET_LEN {
        return Err(format!(
            "the cluster secret must be {MIN_SECRET_LEN}-{MAX_SECRET_LEN} characters long (got {})",
            s.len()
        ));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "the cluster secret must be printable ASCII without spaces (it travels as a bearer token)"
                .into(),
        );
    }
    Ok(())
}

/// The bearer token of an `Authorization: Bearer ...` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let h = header?.trim();
    let (scheme, rest) = h.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        let t = rest.trim();
        (!t.is_empty()).then_some(t)
    } else {
        None
    }
}

/// Backoff for repeated authentication failures, per client address. After `threshold`
/// failures in a row, the address is refused (429) for 1 s, then 2 s, 4 s … up to `max`;
/// a success resets it. State is in memory only (it rebuilds itself).
pub struct AuthBackoff {
    threshold: u32,
    max: Duration,
    entries: Mutex<HashMap<IpAddr, Entry>>,
}

#[derive(Clone, Copy)]
struct Entry {
    failures: u32,
    blocked_until: Option<Instant>,
    last: Instant,
}

/// Forget addresses that have been quiet for this long (bounds the map).
const FORGET_AFTER: Duration = Duration::from_secs(3600);
const PRUNE_ABOVE: usize = 10_000;

impl AuthBackoff {
    pub fn new(threshold: u32, max: Duration) -> Self {
        AuthBackoff {
            threshold: threshold.max(1),
            max,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(retry_after)` while `ip` is blocked.
    pub fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let map = self.entries.lock().expect("backoff lock");
        let until = map.get(&ip)?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// Record a failure; returns the block it caused, if any.
    pub fn failure(&self, ip: IpAddr) -> Option<Duration> {
        let now = Instant::now();
        let mut map = self.entries.lock().expect("backoff lock");
        if map.len() > PRUNE_ABOVE {
            map.retain(|_, e| now.duration_since(e.last) < FORGET_AFTER);
        }
        let e = map.entry(ip).or_insert(Entry {
            failures: 0,
            blocked_until: None,
            last: now,
        });
        e.failures = e.failures.saturating_add(1);
        e.last = now;
        if e.failures >= self.threshold {
            let exp = (e.failures - self.threshold).min(20);
            let block = Duration::from_secs(1u64 << exp).min(self.max);
            e.blocked_until = Some(now + block);
            Some(block)
        } else {
            None
        }
    }

    pub fn success(&self, ip: IpAddr) {
        self.entries.lock().expect("backoff lock").remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn backoff_grows_and_resets() {
        let b = AuthBackoff::new(3, Duration::from_secs(8));
        let ip: IpAddr = "198.18.0.1".parse().unwrap();
        assert_eq!(b.failure(ip), None);
        assert_eq!(b.failure(ip), None);
        assert_eq!(b.failure(ip), Some(Duration::from_secs(1)));
        assert!(b.blocked(ip).is_some());
        assert_eq!(b.failure(ip), Some(Duration::from_secs(2)));
        assert_eq!(b.failure(ip), Some(Duration::from_secs(4)));
        assert_eq!(b.failure(ip), Some(Duration::from_secs(8)));
        assert_eq!(b.failure(ip), Some(Duration::from_secs(8)));
        b.success(ip);
        assert!(b.blocked(ip).is_none());
        let other: IpAddr = "198.18.0.2".parse().unwrap();
        assert!(b.blocked(other).is_none());
    }

    #[test]
    fn secrets() {
        let s = generate_secret();
        assert_eq!(s.expose().len(), 64);
        assert!(validate_secret(&s).is_ok());
        assert!(validate_secret(&Secret::new("short")).is_err());
        assert!(validate_secret(&Secret::new("has a space in it....")).is_err());
        assert!(digest_eq(&sha256(b"a"), &sha256(b"a")));
        assert!(!digest_eq(&sha256(b"a"), &sha256(b"b")));
    }
}
