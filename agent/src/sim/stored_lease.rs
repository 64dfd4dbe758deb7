//! The init-lease check for backends that can only be read over the network, after the
//! instant `swarm init` began (Secrets Manager, etcd): the stored lease and formation are read
//! afterwards and the instant is judged from the timestamps they record ([`judge`]).
//!
//! Only `lease` and `formed.{published_by, fencing_token, formed_at_ms}` are parsed (from
//! JSON, [`parse_raw`]), so the check does not depend on the rest of a backend's layout.

use super::backend::InitLease;
use std::time::{SystemTime, UNIX_EPOCH};
use swarmstrap_wire::rules::{self, LeaseState};

/// Wall-clock milliseconds, the clock the backends' rules run on.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The parts of the stored state the init check reads: `lease` and `formed` as the rulebook
/// stores them (the Secrets Manager document and the etcd state key both hold them so).
pub struct Raw {
    pub lease: Option<LeaseState>,
    /// (published_by, fencing_token, formed_at_ms)
    pub formed: Option<(String, u64, u64)>,
}

pub fn parse_raw(text: &str) -> Result<Raw, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("the stored state is not JSON: {e}"))?;
    let lease = match v.get("lease") {
        None | Some(serde_json::Value::Null) => None,
        Some(l) => Some(
            serde_json::from_value::<LeaseState>(l.clone())
                .map_err(|e| format!("unexpected lease layout: {e}"))?,
        ),
    };
    let formed = match v.get("formed") {
        None | Some(serde_json::Value::Null) => None,
        Some(f) => Some((
            f.get("published_by")
                .and_then(|x| x.as_str())
                .unwrap_or_default()
                .to_string(),
            f.get("fencing_token")
                .and_then(|x| x.as_u64())
                .unwrap_or_default(),
            f.get("formed_at_ms")
                .and_then(|x| x.as_u64())
                .unwrap_or_default(),
        )),
    };
    Ok(Raw { lease, formed })
}

/// Judge, from the state read after `t0` (wall-clock ms when init began), whether `holder`
/// had a live lease under `token` at `t0`. Nothing but a renewal by the holder changes a lease's
/// expiry (to `now + ttl`), a takeover records `granted_at_ms`, a publish `formed_at_ms`: what
/// happened before `t0` is known exactly; a renewal, takeover or publish in the read's own
/// latency after `t0` hides the state at `t0` (Unknown).
pub fn judge(
    raw: Option<Raw>,
    t0: u64,
    holder: &str,
    token: Option<u64>,
    ttl_ms: u64,
) -> InitLease {
    let Some(raw) = raw else {
        return InitLease::NotLive("no cluster state exists".into());
    };
    match (&raw.lease, &raw.formed) {
        (Some(l), _) if Some(l.fencing_token) == token && l.holder == holder => {
            // When the stored expiry was written: the grant, or the last renewal.
            let set_at = l.expires_at_ms.saturating_sub(rules::clamp_ttl_ms(ttl_ms));
            if set_at >= t0 {
                InitLease::Unknown("the lease was renewed after init began")
            } else if l.expires_at_ms > t0 {
                InitLease::Live
            } else {
                InitLease::NotLive(format!(
                    "the lease had expired {} ms before (token {})",
                    t0 - l.expires_at_ms,
                    l.fencing_token
                ))
            }
        }
        (Some(l), _) if l.granted_at_ms >= t0 => {
            InitLease::Unknown("the lease was taken over after init began")
        }
        (Some(l), _) => InitLease::NotLive(format!(
            "the lease was held by {} under token {} (granted {} ms before)",
            l.holder,
            l.fencing_token,
            t0 - l.granted_at_ms
        )),
        (None, Some((_, _, at))) if *at >= t0 => {
            InitLease::Unknown("the cluster was formed after init began")
        }
        (None, Some((by, tok, at))) => InitLease::NotLive(format!(
            "the cluster was formed {} ms before by {by} under token {tok}",
            t0 - at
        )),
        (None, None) => InitLease::NotLive("no lease is held (phase open)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, token: u64, granted: u64, expires: u64) -> Option<LeaseState> {
        Some(LeaseState {
            holder: holder.into(),
            fencing_token: token,
            granted_at_ms: granted,
            expires_at_ms: expires,
        })
    }

    #[test]
    fn judge_the_lease_as_of_the_moment_init_began() {
        let j = |lease, formed, t0| judge(Some(Raw { lease, formed }), t0, "a", Some(3), 1000);
        // Granted at 1000 for 1 s.
        assert_eq!(j(lease("a", 3, 1000, 2000), None, 1500), InitLease::Live);
        assert!(matches!(
            j(lease("a", 3, 1000, 2000), None, 2000),
            InitLease::NotLive(_)
        ));
        // Renewed at 1600 (expiry 2600) after init began at 1500: unknown; before it: live.
        assert!(matches!(
            j(lease("a", 3, 1000, 2600), None, 1500),
            InitLease::Unknown(_)
        ));
        assert_eq!(j(lease("a", 3, 1000, 2600), None, 1700), InitLease::Live);
        // Taken over before / after init began.
        assert!(matches!(
            j(lease("b", 4, 2100, 3100), None, 2200),
            InitLease::NotLive(_)
        ));
        assert!(matches!(
            j(lease("b", 4, 2100, 3100), None, 1900),
            InitLease::Unknown(_)
        ));
        // Formed before / after; no lease at all; no state.
        let formed = Some(("b".to_string(), 4, 2500));
        assert!(matches!(
            j(None, formed.clone(), 2600),
            InitLease::NotLive(_)
        ));
        assert!(matches!(j(None, formed, 2400), InitLease::Unknown(_)));
        assert!(matches!(j(None, None, 2400), InitLease::NotLive(_)));
        assert!(matches!(
            judge(None, 1, "a", Some(3), 1000),
            InitLease::NotLive(_)
        ));
        // Another token of the same holder is not its lease.
        assert!(matches!(
            j(lease("a", 2, 500, 1500), None, 1000),
            InitLease::NotLive(_)
        ));
    }

    #[test]
    fn the_raw_layout_is_the_rulebooks() {
        let raw = parse_raw(
            r#"{"schema":1,"name":"c","cluster":"c","target_managers":1,
                "lease":{"holder":"a","fencing_token":3,"granted_at_ms":1,"expires_at_ms":2},
                "formed":null,"nodes":[],"recent_writes":[]}"#,
        )
        .unwrap();
        assert_eq!(raw.lease, lease("a", 3, 1, 2));
        assert!(raw.formed.is_none());
    }
}
