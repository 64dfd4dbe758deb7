//! Secrets and authentication: generated secrets, sha256 hashes compared in constant time, and
//! a per-address backoff after repeated authentication failures.

use rand::TryRngCore;
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

/// A new random secret (join secret, operator credential, node credential, admin token): 32
/// bytes from the operating system's RNG (`getrandom(2)`), hex encoded.
pub fn generate_secret() -> Secret {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random number generator failed");
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

/// Backoff for repeated authentication failures, per (client address, scope): the scope is
/// the cluster named in the path (one shared scope for names that are no cluster) or the admin
/// API. After `threshold` failures of one pair, its further failures are refused (429) for
/// 1 s, then 2 s, 4 s … up to `max`. The caller checks the credential first: a valid one is
/// always accepted, so nobody is locked out by someone else's guesses from the same address,
/// and a valid call never resets a count (failures are forgotten after [`FORGET_AFTER`]
/// without any). Memory is bounded: at most [`MAX_ENTRIES`] pairs, the least recently failing
/// evicted first. State is in memory only (it rebuilds itself).
pub struct AuthBackoff {
    threshold: u32,
    max: Duration,
    cap: usize,
    entries: Mutex<HashMap<(IpAddr, String), Entry>>,
}

#[derive(Clone, Copy)]
struct Entry {
    failures: u32,
    blocked_until: Option<Instant>,
    last: Instant,
}

/// A pair quiet (no failure) for this long starts counting from zero again.
pub const FORGET_AFTER: Duration = Duration::from_secs(900);
/// Most (address, scope) pairs remembered (~100 bytes each).
pub const MAX_ENTRIES: usize = 65_536;

impl AuthBackoff {
    pub fn new(threshold: u32, max: Duration) -> Self {
        Self::with_capacity(threshold, max, MAX_ENTRIES)
    }

    pub fn with_capacity(threshold: u32, max: Duration, cap: usize) -> Self {
        AuthBackoff {
            threshold: threshold.max(1),
            max,
            cap: cap.max(4),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(IpAddr, String), Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Some(retry_after)` while (`ip`, `scope`) is backed off.
    pub fn blocked(&self, ip: IpAddr, scope: &str) -> Option<Duration> {
        let now = Instant::now();
        let map = self.lock();
        let until = map.get(&(ip, scope.to_string()))?.blocked_until?;
        (until > now).then(|| until - now)
    }

    /// Record a failure; returns the block it caused, if any.
    pub fn failure(&self, ip: IpAddr, scope: &str) -> Option<Duration> {
        let now = Instant::now();
        let mut map = self.lock();
        let key = (ip, scope.to_string());
        if !map.contains_key(&key) && map.len() >= self.cap {
            evict(&mut map, now, self.cap);
        }
        let e = map.entry(key).or_insert(Entry {
            failures: 0,
            blocked_until: None,
            last: now,
        });
        if now.duration_since(e.last) >= FORGET_AFTER {
            e.failures = 0;
            e.blocked_until = None;
        }
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

    /// Pairs remembered now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Make room: forget quiet pairs; if that is not enough, the least recently failing quarter.
/// Amortized: one sort per `cap / 4` new pairs.
fn evict(map: &mut HashMap<(IpAddr, String), Entry>, now: Instant, cap: usize) {
    map.retain(|_, e| now.duration_since(e.last) < FORGET_AFTER);
    if map.len() < cap {
        return;
    }
    let mut by_age: Vec<(Instant, (IpAddr, String))> =
        map.iter().map(|(k, e)| (e.last, k.clone())).collect();
    by_age.sort_unstable_by_key(|(last, _)| *last);
    for (_, k) in by_age.into_iter().take(cap / 4) {
        map.remove(&k);
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
    fn backoff_grows_per_address_and_scope() {
        let b = AuthBackoff::new(3, Duration::from_secs(8));
        let ip: IpAddr = "198.18.0.1".parse().unwrap();
        assert_eq!(b.failure(ip, "a"), None);
        assert_eq!(b.failure(ip, "a"), None);
        assert_eq!(b.failure(ip, "a"), Some(Duration::from_secs(1)));
        assert!(b.blocked(ip, "a").is_some());
        assert!(
            b.blocked(ip, "b").is_none(),
            "another cluster is not backed off"
        );
        assert_eq!(b.failure(ip, "a"), Some(Duration::from_secs(2)));
        assert_eq!(b.failure(ip, "a"), Some(Duration::from_secs(4)));
        assert_eq!(b.failure(ip, "a"), Some(Duration::from_secs(8)));
        assert_eq!(b.failure(ip, "a"), Some(Duration::from_secs(8)));
        let other: IpAddr = "198.18.0.2".parse().unwrap();
        assert!(b.blocked(other, "a").is_none());
    }

    #[test]
    fn backoff_memory_is_bounded() {
        let cap = 1000;
        let b = AuthBackoff::with_capacity(2, Duration::from_secs(8), cap);
        let blocked: IpAddr = "198.18.0.1".parse().unwrap();
        b.failure(blocked, "c");
        b.failure(blocked, "c");
        for i in 0..10 * cap as u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            b.failure(ip, "c");
            assert!(b.len() <= cap, "{} pairs", b.len());
        }
        assert!(b.len() >= cap / 2);
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
