//! The Secrets Manager backend in a race: [`SecretsManagerRendezvous`] against a moto server
//! (a `moto_server` child process on a free loopback port, dummy static credentials), one
//! client per node behind the [`Outage`] adapter, and an unfaulted observer client for the
//! checks.
//!
//! One [`Moto`] serves a whole suite (each race has its own cluster, i.e. its own secret); it is
//! killed by pid when dropped.

use super::backend::{InitLease, Outage, OutageClient, SimBackend};
use super::stored_lease::{judge, now_ms, parse_raw, Raw};
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarmstrap_secrets_manager::backoff::Backoff;
use swarmstrap_secrets_manager::SecretsManagerRendezvous;
use swarmstrap_wire::rendezvous::Rendezvous;
use swarmstrap_wire::ClusterStatus;

/// How long an observer read may keep failing transiently (moto busy) before the check gives
/// up on it.
const OBSERVE_DEADLINE: Duration = Duration::from_secs(10);

pub use swarmstrap_secrets_manager::moto::Moto;

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
