//! The Secrets Manager backend in a race: [`SecretsManagerRendezvous`] against a moto server
//! (a `moto_server` child process on a free loopback port, dummy static credentials), one
//! client per node behind the [`Outage`] adapter, and an unfaulted observer client for the
//! checks.
//!
//! One [`Moto`] serves a whole suite (each race has its own cluster, i.e. its own secret); it is
//! killed by pid when dropped.

use super::backend::{InitLease, Outage, OutageClient, SimBackend};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use swarmstrap_secrets_manager::backoff::Backoff;
use swarmstrap_secrets_manager::SecretsManagerRendezvous;
use swarmstrap_wire::rendezvous::Rendezvous;
use swarmstrap_wire::rules::{self, LeaseState};
use swarmstrap_wire::ClusterStatus;

/// How long an observer read may keep failing transiently (moto busy) before the check gives
/// up on it.
const OBSERVE_DEADLINE: Duration = Duration::from_secs(10);

pub use swarmstrap_secrets_manager::moto::Moto;

/// Wall-clock milliseconds, the clock the backend's rules run on.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The parts of the stored document the init check reads, in the documented layout (the
/// rulebook's `Memory` flattened: `lease` and `formed` as the rulebook stores them).
struct Raw {
    lease: Option<LeaseState>,
    /// (published_by, fencing_token, formed_at_ms)
    formed: Option<(String, u64, u64)>,
}

pub struct SecretsManagerSim {
    cluster: String,
    secret_name: String,
    clients: Vec<Arc<OutageClient>>,
    observer: SecretsManagerRendezvous,
    raw: aws_sdk_secretsmanager::Client,
    outage: Arc<Outage>,
}

impl SecretsManagerSim {
    pub fn new(moto: &Moto, cluster: &str, target: u8, nodes: usize) -> SecretsManagerSim {
        let outage = Arc::new(Outage::default());
        let clients = (0..nodes)
            .map(|_| {
                Arc::new(OutageClient {
                    inner: Arc::new(moto.backend(cluster, target)),
                    outage: outage.clone(),
                })
            })
            .collect();
        // Past the AWS-behaviour proxy when one runs: the checks need the truth.
        let observer = moto.direct_backend(cluster, target);
        SecretsManagerSim {
            cluster: cluster.into(),
            secret_name: observer.secret_name().to_string(),
            clients,
            observer,
            raw: moto.client(),
            outage,
        }
    }

    /// The stored lease and formation (`Ok(None)`: no secret yet), retried while moto is busy.
    async fn read_raw(&self) -> Result<Option<Raw>, String> {
        let deadline = Instant::now() + OBSERVE_DEADLINE;
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(200));
        loop {
            let r = self
                .raw
                .get_secret_value()
                .secret_id(&self.secret_name)
                // Always named: moto answers a bare GetSecretValue with a stale version after
                // AWSCURRENT moved (see the backend's `aws::Store::read`).
                .version_stage("AWSCURRENT")
                .send()
                .await;
            let err = match r {
                Ok(out) => {
                    // The chain's head: AWSCURRENT may lag behind it (a writer's stage move
                    // failed or is still to come; the backend's readers walk the same way).
                    let mut text = out.secret_string().unwrap_or("{}").to_string();
                    let mut version = out.version_id().unwrap_or_default().to_string();
                    for _ in 0..16 {
                        let next = swarmstrap_secrets_manager::aws::successor_token(
                            &self.secret_name,
                            Some(&version),
                        );
                        match self
                            .raw
                            .get_secret_value()
                            .secret_id(&self.secret_name)
                            .version_id(&next)
                            .send()
                            .await
                        {
                            Ok(o) => {
                                text = o.secret_string().unwrap_or("{}").to_string();
                                version = next;
                            }
                            Err(_) => break,
                        }
                    }
                    return parse_raw(&text).map(Some);
                }
                Err(e) => {
                    let e = e.into_service_error();
                    if e.is_resource_not_found_exception() {
                        return Ok(None);
                    }
                    e.to_string()
                }
            };
            if Instant::now() >= deadline {
                return Err(err);
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

fn parse_raw(text: &str) -> Result<Raw, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("the secret is not JSON: {e}"))?;
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

/// Judge, from the document read after `t0` (wall-clock ms when init began), whether `holder`
/// had a live lease under `token` at `t0`. Nothing but a renewal by the holder changes a lease's
/// expiry (to `now + ttl`), a takeover records `granted_at_ms`, a publish `formed_at_ms`: what
/// happened before `t0` is known exactly; a renewal, takeover or publish in the read's own
/// latency after `t0` hides the state at `t0` (Unknown).
fn judge(raw: Option<Raw>, t0: u64, holder: &str, token: Option<u64>, ttl_ms: u64) -> InitLease {
    let Some(raw) = raw else {
        return InitLease::NotLive("no cluster document exists".into());
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

#[async_trait::async_trait]
impl SimBackend for SecretsManagerSim {
    fn name(&self) -> &'static str {
        "secrets-manager"
    }

    fn cluster(&self) -> String {
        self.cluster.clone()
    }

    fn client(&self, node: usize) -> Arc<dyn Rendezvous> {
        self.clients[node].clone()
    }

    async fn restart(&self, down: Duration) -> Result<(), String> {
        self.outage.run(down).await;
        Ok(())
    }

    async fn peek(&self) -> Option<ClusterStatus> {
        let deadline = Instant::now() + OBSERVE_DEADLINE;
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(200));
        loop {
            match self.observer.status().await {
                Ok(s) => return Some(s),
                Err(e) if e.is_transient() && Instant::now() < deadline => {
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(_) => return None,
            }
        }
    }

    /// A read over the network takes time, so the state is judged as of `t0` from what the
    /// document records (see [`judge`]) rather than from the live status at the read.
    async fn init_lease(&self, holder: &str, token: Option<u64>) -> InitLease {
        let t0 = now_ms();
        match self.read_raw().await {
            Ok(raw) => judge(
                raw,
                t0,
                holder,
                token,
                super::race::LEASE_TTL.as_millis() as u64,
            ),
            Err(_) => InitLease::Unknown("the secret could not be read"),
        }
    }

    fn tokens_granted(&self) -> usize {
        self.outage.tokens_granted()
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
        // Formed before / after; no lease at all; no document.
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
