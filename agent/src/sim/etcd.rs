//! The etcd backend in a race: the real [`EtcdRendezvous`] against one real 3-member etcd
//! cluster ([`EtcdCluster`]: child processes on free loopback ports, TLS with client
//! certificates required, auth on), one connection and login per node behind the [`Outage`]
//! adapter, and unfaulted observers for the checks: an `EtcdRendezvous` for the status and a
//! raw etcd client (etcd's `root`, by its client certificate) that reads the state key
//! `<prefix>state` for the init-lease check.
//!
//! One [`EtcdSuite`] serves a whole suite (each race has its own cluster, `race-<seed>`, i.e.
//! its own prefix `/swarmstrap/race-<seed>/`); the members are killed by pid when it is dropped.
//!
//! The init-lease check reads after the instant init began, like Secrets Manager's, but etcd
//! keeps every version of the state key: when the newest version hides the instant (the holder
//! renewed, another node took over or the cluster was formed after it), the check reads the
//! version before it, and so on back to the version that was current at the instant, so it is
//! exact (an `Unknown` is left only if that history is compacted or cannot be read).

use super::backend::{InitLease, Outage, OutageClient, SimBackend};
use super::stored_lease::{judge, now_ms, parse_raw, Raw};
use etcd_client::GetOptions;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarmstrap_etcd::EtcdRendezvous;
use swarmstrap_secrets_manager::backoff::Backoff;
use swarmstrap_wire::rendezvous::Rendezvous;
use swarmstrap_wire::ClusterStatus;

pub use swarmstrap_etcd::testing::EtcdCluster;

/// How long an observer read may keep failing (members busy) before the check gives up on it.
const OBSERVE_DEADLINE: Duration = Duration::from_secs(10);

/// How long connecting one node (a TLS handshake and a login: etcd checks the password with
/// bcrypt, which takes CPU the races share) may keep failing before the race gives up.
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);

/// Versions of the state key the init-lease check reads back at most (each step goes past one
/// write made after init began; a race makes a few).
const HISTORY_STEPS: usize = 64;

/// The etcd cluster of a suite and the observers' raw client.
pub struct EtcdSuite {
    pub etcd: EtcdCluster,
    raw: etcd_client::Client,
}

impl EtcdSuite {
    /// Start the 3 members (panics with their log tails when etcd is missing or does not come
    /// up; Debian `etcd-server`).
    pub async fn start() -> EtcdSuite {
        let etcd = EtcdCluster::start().await;
        let raw = etcd.root_client().await;
        EtcdSuite { etcd, raw }
    }
}

/// A backend for `cluster`, retried while etcd is busy (every node of every race in flight
/// connects and logs in).
async fn connect(suite: &EtcdSuite, cluster: &str, target: u8) -> EtcdRendezvous {
    let deadline = Instant::now() + CONNECT_DEADLINE;
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
    loop {
        match EtcdRendezvous::new(suite.etcd.config(cluster, target)).await {
            Ok(r) => return r,
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tracing::debug!("connecting a race node to etcd failed, trying again: {e}");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => panic!("cannot connect the etcd backend of cluster {cluster}: {e}"),
        }
    }
}

pub struct EtcdSim {
    cluster: String,
    state_key: String,
    clients: Vec<Arc<OutageClient>>,
    observer: EtcdRendezvous,
    raw: etcd_client::Client,
    outage: Arc<Outage>,
    /// Init-lease checks that had to read an older version of the state key.
    checks_read_back: AtomicU64,
}

impl EtcdSim {
    pub async fn new(suite: &EtcdSuite, cluster: &str, target: u8, nodes: usize) -> EtcdSim {
        let outage = Arc::new(Outage::default());
        let connected =
            futures_util::future::join_all((0..nodes).map(|_| connect(suite, cluster, target)))
                .await;
        let clients = connected
            .into_iter()
            .map(|r| {
                Arc::new(OutageClient {
                    inner: Arc::new(r),
                    outage: outage.clone(),
                })
            })
            .collect();
        let observer = connect(suite, cluster, target).await;
        EtcdSim {
            cluster: cluster.into(),
            // The documented layout (`etcd/README.md`): the rulebook's `ClusterState` as JSON.
            state_key: format!("{}state", observer.prefix()),
            clients,
            observer,
            raw: suite.raw.clone(),
            outage,
            checks_read_back: AtomicU64::new(0),
        }
    }

    /// The state key at `revision` (`None`: the newest): its value parsed, and its
    /// `mod_revision` (`Ok(None)`: no state key at that revision). Retried while etcd is busy.
    async fn read_state(&self, revision: Option<i64>) -> Result<Option<(Raw, i64)>, String> {
        let deadline = Instant::now() + OBSERVE_DEADLINE;
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(200));
        loop {
            let opts = revision.map(|r| GetOptions::new().with_revision(r));
            let err = match self.raw.clone().get(self.state_key.as_str(), opts).await {
                Ok(resp) => {
                    let Some(kv) = resp.kvs().first() else {
                        return Ok(None);
                    };
                    let text = std::str::from_utf8(kv.value())
                        .map_err(|e| format!("the state key is not UTF-8: {e}"))?;
                    return parse_raw(text).map(|raw| Some((raw, kv.mod_revision())));
                }
                // The history before this revision is gone: the instant cannot be read.
                Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::OutOfRange => {
                    return Err(format!("etcd history compacted: {}", s.message()));
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(err);
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

impl EtcdSim {
    /// Whether `holder` held the lease under `token` at `t0` (wall-clock ms, in the past), and
    /// how many versions of the state key the check read back to tell.
    async fn init_lease_at(&self, t0: u64, holder: &str, token: Option<u64>) -> (InitLease, usize) {
        let ttl_ms = super::race::LEASE_TTL.as_millis() as u64;
        let mut revision = None;
        for read_back in 0..HISTORY_STEPS {
            let (raw, mod_revision) = match self.read_state(revision).await {
                Ok(Some((raw, rev))) => (Some(raw), rev),
                // No state key at that revision: the cluster did not exist yet.
                Ok(None) => (None, 0),
                Err(_) => {
                    return (
                        InitLease::Unknown("the state key could not be read"),
                        read_back,
                    )
                }
            };
            match judge(raw, t0, holder, token, ttl_ms) {
                // The version that hid the instant was written after it: read the one before.
                InitLease::Unknown(_) if mod_revision > 1 => revision = Some(mod_revision - 1),
                judged => return (judged, read_back),
            }
        }
        (
            InitLease::Unknown("more writes after init began than the check reads back"),
            HISTORY_STEPS,
        )
    }
}

#[async_trait::async_trait]
impl SimBackend for EtcdSim {
    fn name(&self) -> &'static str {
        "etcd"
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

    /// Judged as of now from the newest state key and, while a write after now hides the
    /// instant, from the versions before it (see the module doc).
    async fn init_lease(&self, holder: &str, token: Option<u64>) -> InitLease {
        let (judged, read_back) = self.init_lease_at(now_ms(), holder, token).await;
        if read_back > 0 {
            self.checks_read_back.fetch_add(1, Ordering::Relaxed);
        }
        judged
    }

    fn events(&self) -> Vec<(String, u64)> {
        let n = self.checks_read_back.load(Ordering::Relaxed);
        if n == 0 {
            return vec![];
        }
        vec![(
            "init lease check read an older state version (a write after init began hid it)".into(),
            n,
        )]
    }

    fn tokens_granted(&self) -> usize {
        self.outage.tokens_granted()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmstrap_wire::{PublishRequest, RegisterRequest, RequestedRole, Secret};

    /// The first wall-clock millisecond after now (a strict "later than everything so far").
    async fn next_ms() -> u64 {
        let now = now_ms();
        loop {
            tokio::task::yield_now().await;
            let t = now_ms();
            if t > now {
                return t;
            }
        }
    }

    /// On real etcd: a publish after the instant hides the lease in the newest state key (the
    /// newest version alone cannot tell), the check reads back to the version that was current
    /// at the instant.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_init_lease_check_reads_back_to_the_instant() {
        let suite = EtcdSuite::start().await;
        let sim = EtcdSim::new(&suite, "history", 1, 1).await;
        let c = sim.client(0);
        c.register(&RegisterRequest {
            node_id: "a".into(),
            hostname: "a".into(),
            advertise_addr: "198.18.0.1".into(),
            role: RequestedRole::Auto,
            joined_through: None,
            labels: None,
        })
        .await
        .unwrap();
        let before_claim = next_ms().await;
        let claim = c.claim("a", super::super::race::LEASE_TTL).await.unwrap();
        assert!(claim.granted);
        let token = claim.lease.unwrap().fencing_token;
        let held = next_ms().await;
        c.publish(&PublishRequest {
            node_id: "a".into(),
            fencing_token: token,
            swarm_id: "swarm1".into(),
            ca_digest: format!("sha256:{}", "ab".repeat(32)),
            manager_addrs: vec!["198.18.0.1:2377".into()],
            manager_token: Secret::new("SWMTKN-1-m"),
            worker_token: Secret::new("SWMTKN-1-w"),
        })
        .await
        .unwrap();
        let formed = next_ms().await;

        // The newest version alone: formed after `held`, no lease left in it.
        let (newest, _) = sim.read_state(None).await.unwrap().unwrap();
        let ttl_ms = super::super::race::LEASE_TTL.as_millis() as u64;
        assert!(matches!(
            judge(Some(newest), held, "a", Some(token), ttl_ms),
            InitLease::Unknown(_)
        ));
        // One version back (before the publish): a held it.
        assert_eq!(
            sim.init_lease_at(held, "a", Some(token)).await,
            (InitLease::Live, 1)
        );
        // ... and nobody else did.
        let (other, back) = sim.init_lease_at(held, "b", Some(token)).await;
        assert!(matches!(other, InitLease::NotLive(_)), "{other:?}");
        assert_eq!(back, 1);
        // Two versions back (before the claim): no lease at all.
        let (before, back) = sim.init_lease_at(before_claim, "a", Some(token)).await;
        assert!(matches!(before, InitLease::NotLive(_)), "{before:?}");
        assert_eq!(back, 2);
        // After the publish: formed, no lease; the newest version tells.
        let (after, back) = sim.init_lease_at(formed, "a", Some(token)).await;
        assert!(matches!(after, InitLease::NotLive(_)), "{after:?}");
        assert_eq!(back, 0);
        assert_eq!(
            sim.peek().await.unwrap().swarm_id.as_deref(),
            Some("swarm1")
        );
    }
}
