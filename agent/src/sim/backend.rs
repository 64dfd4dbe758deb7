//! The backends a race runs against, behind one small trait ([`SimBackend`]): what a race needs
//! from a backend beyond [`Rendezvous`] — a client per node, restarts/outages, the fencing
//! tokens it ever granted, and an unfaulted view of the cluster for the checks.
//!
//! - `coordinator`: the REAL coordinator store in process (`coord.rs`), restarted for real
//!   (the store is dropped and reopened from its data dir).
//! - `fake`: the in-memory [`FakeBackend`] of `testing.rs` (the rulebook's `Memory` under a
//!   mutex), one instance shared by every node, behind an [`Outage`] adapter.
//! - `secrets-manager`: [`SecretsManagerRendezvous`] against a moto server (`secrets_manager.rs`),
//!   one client per node, behind an [`Outage`] adapter.
//! - `etcd`: [`EtcdRendezvous`] against a real 3-member etcd cluster (`etcd.rs`), one
//!   connection per node, behind an [`Outage`] adapter.
//!
//! A fake, Secrets Manager or etcd "restart" is an outage in the adapter: while it is down
//! every call fails `Transient` (connection refused), and a call in flight across it loses its
//! answer (`Transient`, connection reset) whether or not the backend applied it; the backend
//! keeps its state, as a durable backend would. Every adapter records the fencing token of every
//! claim answer that granted a lease, before any fault can lose that answer.
//!
//! [`SecretsManagerRendezvous`]: swarmstrap_secrets_manager::SecretsManagerRendezvous
//! [`EtcdRendezvous`]: swarmstrap_etcd::EtcdRendezvous

use super::coord::Coordinator;
use super::etcd::{EtcdSim, EtcdSuite};
use super::secrets_manager::{Moto, SecretsManagerSim};
use crate::testing::FakeBackend;
use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swarmstrap_wire::rendezvous::{Rendezvous, RendezvousError, Result as RResult};
use swarmstrap_wire::{
    AdoptRequest, AdoptResponse, ClaimResponse, ClusterStatus, Document, JoinResponse,
    PublishRequest, PublishResponse, RegisterRequest, RegisterResponse, ResetRequest, Secret,
    SyncRequest, SyncResponse,
};
use tokio::sync::watch;

/// Was the lease `swarm init` runs under live at the backend when init began?
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InitLease {
    /// Yes: the caller held it under that token, unexpired.
    Live,
    /// No (a violation if that init created a swarm): what the backend had instead.
    NotLive(String),
    /// The backend could not tell (down, unreadable, or it changed in a way that hides the
    /// state at that instant); counted, not a violation.
    Unknown(&'static str),
}

/// What a race needs from a backend beyond [`Rendezvous`].
#[async_trait::async_trait]
pub trait SimBackend: Send + Sync {
    /// `coordinator`, `fake`, `secrets-manager` or `etcd`.
    fn name(&self) -> &'static str;

    /// The cluster name the nodes are configured with.
    fn cluster(&self) -> String;

    /// The rendezvous client of node `i` (every incarnation of the node uses it).
    fn client(&self, node: usize) -> Arc<dyn Rendezvous>;

    /// Go down for `down`, then come back with the state kept (the coordinator restarts for
    /// real; the others have an outage in the adapter).
    async fn restart(&self, down: Duration) -> Result<(), String>;

    /// The cluster as stored, bypassing every fault; `None` when it cannot be read (the
    /// coordinator while it restarts).
    async fn peek(&self) -> Option<ClusterStatus>;

    /// Called when `holder`'s `swarm init` under `token` (from its intent record) begins:
    /// whether the backend had that lease live at that instant. The default judges from
    /// [`SimBackend::peek`], which is exact when the peek reads the state in place (the
    /// coordinator, the fake).
    async fn init_lease(&self, holder: &str, token: Option<u64>) -> InitLease {
        let Some(status) = self.peek().await else {
            return InitLease::Unknown("the backend is down");
        };
        let live = status.lease.as_ref().is_some_and(|l| {
            l.holder == holder && Some(l.fencing_token) == token && l.expires_in_ms > 0
        });
        if live {
            InitLease::Live
        } else {
            InitLease::NotLive(format!(
                "the lease is {:?} (phase {})",
                status.lease, status.phase
            ))
        }
    }

    /// How many distinct fencing tokens the backend granted in its claim answers (also those
    /// the faults lost afterwards).
    fn tokens_granted(&self) -> usize;

    /// What the adapter itself counted during the race (added to the race's events).
    fn events(&self) -> Vec<(String, u64)> {
        vec![]
    }
}

/// Which backend a suite runs against.
#[derive(Clone)]
pub enum Kind {
    Coordinator,
    Fake,
    /// One moto server for the whole suite; each race uses its own cluster (secret).
    SecretsManager(Arc<Moto>),
    /// One etcd cluster for the whole suite; each race uses its own cluster (prefix).
    Etcd(Arc<EtcdSuite>),
}

impl Kind {
    pub const NAMES: [&'static str; 4] = ["coordinator", "fake", "secrets-manager", "etcd"];

    /// A fresh cluster for race `seed` with `nodes` nodes and `target` managers. `root` is the
    /// race's temp dir.
    pub async fn start(
        &self,
        root: &Path,
        seed: u64,
        target: u8,
        nodes: usize,
    ) -> Arc<dyn SimBackend> {
        match self {
            Kind::Coordinator => Arc::new(CoordinatorSim(Arc::new(
                Coordinator::start(root, super::race::CLUSTER, target).await,
            ))),
            Kind::Fake => Arc::new(FakeSim::new(target)),
            Kind::SecretsManager(moto) => Arc::new(SecretsManagerSim::new(
                moto,
                &format!("race-{seed}"),
                target,
                nodes,
            )),
            Kind::Etcd(suite) => {
                Arc::new(EtcdSim::new(suite, &format!("race-{seed}"), target, nodes).await)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The coordinator: exactly the in-process store of `coord.rs`.

pub struct CoordinatorSim(pub Arc<Coordinator>);

#[async_trait::async_trait]
impl SimBackend for CoordinatorSim {
    fn name(&self) -> &'static str {
        "coordinator"
    }

    fn cluster(&self) -> String {
        super::race::CLUSTER.into()
    }

    fn client(&self, _node: usize) -> Arc<dyn Rendezvous> {
        self.0.clone()
    }

    async fn restart(&self, down: Duration) -> Result<(), String> {
        self.0.restart(down).await
    }

    async fn peek(&self) -> Option<ClusterStatus> {
        self.0.peek()
    }

    fn tokens_granted(&self) -> usize {
        self.0.tokens_granted()
    }
}

// ---------------------------------------------------------------------------------------------
// The outage adapter (fake, Secrets Manager, etcd)

#[derive(Clone, Copy, Debug, Default)]
struct Up {
    down: bool,
    /// Bumped when an outage begins: answers of calls across it are lost.
    epoch: u64,
}

/// An outage switch shared by the clients of all nodes, and the fencing tokens granted.
#[derive(Default)]
pub struct Outage {
    up: watch::Sender<Up>,
    tokens: Mutex<BTreeSet<u64>>,
}

fn transient(msg: &str) -> RendezvousError {
    RendezvousError::Transient(msg.into())
}

impl Outage {
    /// Down for `down` (the outage itself is the scenario), then up again.
    pub async fn run(&self, down: Duration) {
        self.up.send_modify(|u| {
            u.down = true;
            u.epoch += 1;
        });
        tokio::time::sleep(down).await;
        self.up.send_modify(|u| u.down = false);
    }

    /// The epoch a call starts in, or "connection refused" while down.
    fn enter(&self) -> RResult<u64> {
        let u = *self.up.borrow();
        if u.down {
            Err(transient("sim: connection refused (the backend is down)"))
        } else {
            Ok(u.epoch)
        }
    }

    /// The answer as the client sees it: lost if an outage began meanwhile.
    fn answer<T>(&self, epoch: u64, r: RResult<T>) -> RResult<T> {
        if self.up.borrow().epoch != epoch {
            return Err(transient(
                "sim: connection reset (the backend went down while handling the request)",
            ));
        }
        r
    }

    pub fn tokens_granted(&self) -> usize {
        self.tokens.lock().unwrap().len()
    }

    /// Long-polls parked right now (each subscribes to the outage switch).
    pub fn parked_long_polls(&self) -> usize {
        self.up.receiver_count()
    }
}

/// One node's client behind the shared [`Outage`].
pub struct OutageClient {
    pub inner: Arc<dyn Rendezvous>,
    pub outage: Arc<Outage>,
}

impl OutageClient {
    async fn call<T>(&self, op: impl Future<Output = RResult<T>>) -> RResult<T> {
        let epoch = self.outage.enter()?;
        let r = op.await;
        self.outage.answer(epoch, r)
    }

    /// A long-poll ends when the backend goes down (the connection is reset).
    async fn poll<T>(&self, op: impl Future<Output = RResult<T>>) -> RResult<T> {
        let epoch = self.outage.enter()?;
        let mut up = self.outage.up.subscribe();
        tokio::select! {
            r = op => self.outage.answer(epoch, r),
            _ = up.wait_for(|u| u.epoch != epoch) => Err(transient(
                "sim: connection reset (the backend went down during the long-poll)",
            )),
        }
    }
}

#[async_trait::async_trait]
impl Rendezvous for OutageClient {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn set_credential(&self, node_id: &str, credential: Secret) {
        self.inner.set_credential(node_id, credential)
    }

    fn credential(&self, node_id: &str) -> Option<Secret> {
        self.inner.credential(node_id)
    }

    async fn register(&self, req: &RegisterRequest) -> RResult<RegisterResponse> {
        self.call(self.inner.register(req)).await
    }

    async fn claim(&self, node_id: &str, ttl: Duration) -> RResult<ClaimResponse> {
        let epoch = self.outage.enter()?;
        let r = self.inner.claim(node_id, ttl).await;
        if let Ok(ClaimResponse {
            granted: true,
            lease: Some(l),
            ..
        }) = &r
        {
            self.outage.tokens.lock().unwrap().insert(l.fencing_token);
        }
        self.outage.answer(epoch, r)
    }

    async fn renew(
        &self,
        node_id: &str,
        fencing_token: u64,
        ttl: Duration,
    ) -> RResult<ClaimResponse> {
        self.call(self.inner.renew(node_id, fencing_token, ttl))
            .await
    }

    async fn publish(&self, req: &PublishRequest) -> RResult<PublishResponse> {
        self.call(self.inner.publish(req)).await
    }

    async fn wait_join(&self, node_id: &str, wait: Duration) -> RResult<JoinResponse> {
        self.poll(self.inner.wait_join(node_id, wait)).await
    }

    async fn status(&self) -> RResult<ClusterStatus> {
        self.call(self.inner.status()).await
    }

    async fn reset(&self, req: &ResetRequest, operator: Option<&Secret>) -> RResult<ClusterStatus> {
        self.call(self.inner.reset(req, operator)).await
    }

    async fn sync(&self, req: &SyncRequest) -> RResult<SyncResponse> {
        self.call(self.inner.sync(req)).await
    }

    async fn adopt(&self, req: &AdoptRequest) -> RResult<AdoptResponse> {
        // An adoption's fencing token is not recorded with the claims': it runs no `swarm init`.
        self.call(self.inner.adopt(req)).await
    }

    async fn get_doc(&self, name: &str, after: Option<u64>, wait: Duration) -> RResult<Document> {
        self.poll(self.inner.get_doc(name, after, wait)).await
    }

    async fn put_doc(
        &self,
        node_id: &str,
        name: &str,
        expected_version: u64,
        body: &serde_json::Value,
    ) -> RResult<Document> {
        self.call(self.inner.put_doc(node_id, name, expected_version, body))
            .await
    }
}

// ---------------------------------------------------------------------------------------------
// The fake

pub struct FakeSim {
    backend: Arc<FakeBackend>,
    client: Arc<OutageClient>,
    outage: Arc<Outage>,
}

impl FakeSim {
    /// Long-polls parked right now behind the outage adapter.
    pub fn parked_long_polls(&self) -> usize {
        self.outage.parked_long_polls()
    }

    pub fn new(target: u8) -> FakeSim {
        let backend = FakeBackend::new(target);
        let outage = Arc::new(Outage::default());
        FakeSim {
            client: Arc::new(OutageClient {
                inner: backend.clone(),
                outage: outage.clone(),
            }),
            backend,
            outage,
        }
    }
}

#[async_trait::async_trait]
impl SimBackend for FakeSim {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn cluster(&self) -> String {
        // The fake ignores the name; the nodes still need one.
        super::race::CLUSTER.into()
    }

    fn client(&self, _node: usize) -> Arc<dyn Rendezvous> {
        self.client.clone()
    }

    async fn restart(&self, down: Duration) -> Result<(), String> {
        self.outage.run(down).await;
        Ok(())
    }

    async fn peek(&self) -> Option<ClusterStatus> {
        // Under the fake's mutex, at this instant: exact like the coordinator's peek.
        self.backend.status().await.ok()
    }

    fn tokens_granted(&self) -> usize {
        self.outage.tokens_granted()
    }
}
