//! The REAL coordinator store (`swarm_coordinator::store::Store`, redb in a temp data dir)
//! behind the [`Rendezvous`] trait, in process, with restarts.
//!
//! It does what the coordinator's HTTP layer and the agent's client do around the store: errors
//! go through the coordinator's `StoreError → ApiError` mapping and then through the agent
//! client's `map_status` (so a fencing refusal is `Conflict`, a storage failure `Transient`, as
//! over HTTPS); claim/renew/publish wake the join long-polls like the API's state signal;
//! `wait_join` waits in whole seconds like the real client. Like the client, it keeps the node
//! credentials `register`/`adopt` issue ([`Credentials`], one per node id: it serves every node
//! of a race) and presents them; the cluster's operator credential is [`Coordinator::operator`].
//!
//! A restart drops the store and reopens it from the same directory. While it is down, calls
//! fail with `Transient` (connection refused); a call that was in flight across the restart
//! loses its answer (`Transient`, connection reset) even if the store applied it.

use crate::backend::coordinator::map_status;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use swarm_coordinator::datadir::DataDir;
use swarm_coordinator::error::ApiError;
use swarm_coordinator::store::{OpenError, OpenMode, Store, StoreError};
use swarmstrap_wire::rendezvous::{Credentials, Rendezvous, RendezvousError, Result as RResult};
use swarmstrap_wire::{
    AdoptRequest, AdoptResponse, ClaimResponse, ClusterStatus, Document, DocumentWrite, ErrorBody,
    JoinResponse, PublishRequest, PublishResponse, RegisterRequest, RegisterResponse, RenewRequest,
    ResetRequest, Secret, SyncRequest, SyncResponse, MAX_WAIT_SECS,
};
use tokio::sync::watch;

/// How long a reopen may keep finding the database locked (requests still in flight on the
/// old handle finish within milliseconds).
const REOPEN_DEADLINE: Duration = Duration::from_secs(10);

pub struct Coordinator {
    dir: DataDir,
    cluster: String,
    store: Mutex<Option<Store>>,
    /// Bumped when the coordinator goes down: answers of requests across it are lost.
    epoch: watch::Sender<u64>,
    /// Bumped on what the real API signals to join long-polls (claim, renew, publish, reset).
    state: watch::Sender<u64>,
    /// Every fencing token the store granted (also when the answer was lost).
    tokens: Mutex<BTreeSet<u64>>,
    credentials: Credentials,
    /// The cluster's operator credential (`reset` needs it).
    pub operator: Secret,
}

fn transient(msg: &str) -> RendezvousError {
    RendezvousError::Transient(msg.into())
}

impl Coordinator {
    /// A fresh data dir under `root` holding one cluster.
    pub async fn start(root: &Path, cluster: &str, target: u8) -> Coordinator {
        let dir = DataDir::new(root.join("coordinator"));
        let store = Store::open(&dir, OpenMode::CreateIfMissing).expect("open the store");
        let operator = crate::testing::fresh_credential();
        store
            .create_cluster(
                cluster.into(),
                target,
                [7u8; 32],
                false,
                swarmstrap_wire::rules::credential_sha256(&operator),
            )
            .await
            .expect("create the cluster");
        Coordinator {
            dir,
            cluster: cluster.into(),
            store: Mutex::new(Some(store)),
            epoch: watch::channel(0).0,
            state: watch::channel(0).0,
            tokens: Mutex::new(BTreeSet::new()),
            credentials: Credentials::default(),
            operator,
        }
    }

    /// The current store handle and epoch, or "connection refused" while it is down.
    fn handle(&self) -> RResult<(Store, u64)> {
        let g = self.store.lock().unwrap();
        match &*g {
            Some(s) => Ok((s.clone(), *self.epoch.borrow())),
            None => Err(transient(
                "sim: connection refused (the coordinator is restarting)",
            )),
        }
    }

    /// The answer as the client sees it: lost if the coordinator restarted meanwhile.
    fn answer<T>(&self, epoch: u64, path: &str, r: Result<T, StoreError>) -> RResult<T> {
        if *self.epoch.borrow() != epoch {
            return Err(transient(
                "sim: connection reset (the coordinator restarted while handling the request)",
            ));
        }
        r.map_err(|e| self.map_err(path, e))
    }

    fn map_err(&self, path: &str, e: StoreError) -> RendezvousError {
        let api = ApiError::from(e);
        let body = serde_json::to_string(&ErrorBody {
            error: api.code.to_string(),
            message: api.message,
        })
        .expect("error body serializes");
        let status =
            reqwest::StatusCode::from_u16(api.status.as_u16()).expect("a valid HTTP status");
        let url = format!("sim://coordinator/v1/clusters/{}{path}", self.cluster);
        map_status(status, &body, &url, &self.cluster)
    }

    /// Long-polls parked right now (each holds a subscription to the restart signal): lets a
    /// test restart the coordinator *while* a long-poll waits, not before it started.
    pub fn parked_long_polls(&self) -> usize {
        self.epoch.receiver_count()
    }

    fn signal(&self) {
        self.state.send_modify(|v| *v += 1);
    }

    /// Stop the coordinator, stay down for `down`, reopen it from the same data dir.
    pub async fn restart(&self, down: Duration) -> Result<(), String> {
        {
            let mut g = self.store.lock().unwrap();
            let old = g.take();
            self.epoch.send_modify(|e| *e += 1);
            drop(old);
        }
        tokio::time::sleep(down).await; // the outage itself
        let started = Instant::now();
        let mut backoff = Duration::from_millis(1);
        loop {
            let dir = self.dir.clone();
            let opened =
                tokio::task::spawn_blocking(move || Store::open(&dir, OpenMode::MustExist))
                    .await
                    .map_err(|e| format!("the reopen panicked: {e}"))?;
            match opened {
                Ok(s) => {
                    *self.store.lock().unwrap() = Some(s);
                    return Ok(());
                }
                // Requests in flight on the old handle keep the database open a little longer.
                Err(OpenError::Locked { .. }) if started.elapsed() < REOPEN_DEADLINE => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(20));
                }
                Err(e) => return Err(format!("the coordinator did not come back: {e}")),
            }
        }
    }

    /// The store's view, bypassing every fault (None while it is down).
    pub fn peek(&self) -> Option<ClusterStatus> {
        let (store, _) = self.handle().ok()?;
        store.status(&self.cluster).ok()
    }

    pub fn tokens_granted(&self) -> usize {
        self.tokens.lock().unwrap().len()
    }
}

/// `wait` in whole seconds, rounded up, as the coordinator client sends it.
fn wait_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.min(MAX_WAIT_SECS)
}

#[async_trait::async_trait]
impl Rendezvous for Coordinator {
    fn describe(&self) -> String {
        "sim coordinator (in-process store)".into()
    }

    fn set_credential(&self, node_id: &str, credential: Secret) {
        self.credentials.set(node_id, credential);
    }

    fn credential(&self, node_id: &str) -> Option<Secret> {
        self.credentials.get(node_id)
    }

    async fn register(&self, req: &RegisterRequest) -> RResult<RegisterResponse> {
        let (store, epoch) = self.handle()?;
        let r = store
            .register(
                self.cluster.clone(),
                req.clone(),
                self.credentials.get(&req.node_id),
            )
            .await;
        // Kept when the store issued it, even if the answer is then lost: a real client would
        // not have it, and its agent would continue under a new node id
        // (`Bootstrap::run_or_rename`); the races keep node ids stable.
        if let Ok(w) = &r {
            self.credentials
                .keep(&req.node_id, w.value.credential.as_ref());
        }
        self.answer(epoch, "/nodes", r.map(|w| w.value))
    }

    async fn claim(&self, node_id: &str, ttl: Duration) -> RResult<ClaimResponse> {
        let (store, epoch) = self.handle()?;
        let r = store
            .claim(
                self.cluster.clone(),
                node_id.into(),
                ttl.as_millis() as u64,
                self.credentials.get(node_id),
            )
            .await;
        if let Ok(w) = &r {
            if w.value.granted {
                if let Some(l) = &w.value.lease {
                    self.tokens.lock().unwrap().insert(l.fencing_token);
                }
            }
            if w.changed {
                self.signal();
            }
        }
        self.answer(epoch, "/claim", r.map(|w| w.value))
    }

    async fn renew(
        &self,
        node_id: &str,
        fencing_token: u64,
        ttl: Duration,
    ) -> RResult<ClaimResponse> {
        let (store, epoch) = self.handle()?;
        let req = RenewRequest {
            node_id: node_id.into(),
            fencing_token,
            ttl_ms: ttl.as_millis() as u64,
        };
        let r = store
            .renew(self.cluster.clone(), req, self.credentials.get(node_id))
            .await;
        if matches!(&r, Ok(w) if w.changed) {
            self.signal();
        }
        self.answer(epoch, "/claim/renew", r.map(|w| w.value))
    }

    async fn publish(&self, req: &PublishRequest) -> RResult<PublishResponse> {
        let (store, epoch) = self.handle()?;
        let r = store
            .publish(
                self.cluster.clone(),
                req.clone(),
                self.credentials.get(&req.node_id),
            )
            .await;
        if matches!(&r, Ok(w) if w.changed) {
            self.signal();
        }
        self.answer(
            epoch,
            "/publish",
            r.map(|w| PublishResponse { phase: w.value }),
        )
    }

    async fn wait_join(&self, node_id: &str, wait: Duration) -> RResult<JoinResponse> {
        let secs = wait_secs(wait);
        let (store, epoch) = self.handle()?;
        // Subscribe before the first check so no change between the two is missed.
        let mut changes = self.state.subscribe();
        let mut epochs = self.epoch.subscribe();
        let presented = self.credentials.get(node_id);
        let check = || store.join(&self.cluster, node_id, presented.as_ref());
        let first = check();
        let done = |r: &Result<JoinResponse, StoreError>| match r {
            Ok(j) => j.join.is_some(),
            Err(_) => true,
        };
        if secs == 0 || done(&first) {
            return self.answer(epoch, "/join", first);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return self.answer(epoch, "/join", check());
                }
                _ = epochs.changed() => {
                    return Err(transient(
                        "sim: connection reset (the coordinator restarted during the long-poll)",
                    ));
                }
            }
            let r = check();
            if done(&r) {
                return self.answer(epoch, "/join", r);
            }
        }
    }

    async fn status(&self) -> RResult<ClusterStatus> {
        let (store, epoch) = self.handle()?;
        let r = store.status(&self.cluster);
        self.answer(epoch, "", r)
    }

    async fn reset(&self, req: &ResetRequest, operator: Option<&Secret>) -> RResult<ClusterStatus> {
        let (store, epoch) = self.handle()?;
        let r = store
            .recover(self.cluster.clone(), req.clone(), operator.cloned())
            .await;
        if r.is_ok() {
            self.signal();
        }
        self.answer(epoch, "/reset", r)
    }

    async fn sync(&self, req: &SyncRequest) -> RResult<SyncResponse> {
        // No wakeup, as the API: a sync needs a formed cluster, whose join polls have answered.
        let (store, epoch) = self.handle()?;
        let r = store
            .sync(
                self.cluster.clone(),
                req.clone(),
                self.credentials.get(&req.node_id),
            )
            .await;
        self.answer(epoch, "/sync", r.map(|w| w.value))
    }

    async fn adopt(&self, req: &AdoptRequest) -> RResult<AdoptResponse> {
        let (store, epoch) = self.handle()?;
        let r = store
            .adopt(
                self.cluster.clone(),
                req.clone(),
                self.credentials.get(&req.node_id),
            )
            .await;
        if let Ok(w) = &r {
            self.credentials
                .keep(&req.node_id, w.value.credential.as_ref());
            if w.changed {
                self.signal();
            }
        }
        self.answer(epoch, "/adopt", r.map(|w| w.value))
    }

    async fn get_doc(&self, name: &str, _after: Option<u64>, _wait: Duration) -> RResult<Document> {
        // Not on the bootstrap path: answered without waiting.
        let (store, epoch) = self.handle()?;
        let r = store.get_doc(&self.cluster, name);
        self.answer(epoch, "/docs", r)
    }

    async fn put_doc(
        &self,
        node_id: &str,
        name: &str,
        expected_version: u64,
        body: &serde_json::Value,
    ) -> RResult<Document> {
        let (store, epoch) = self.handle()?;
        let write = DocumentWrite {
            expected_version,
            body: body.clone(),
            node_id: node_id.to_string(),
        };
        let r = store
            .put_doc(
                self.cluster.clone(),
                name.into(),
                write,
                self.credentials.get(node_id),
            )
            .await;
        self.answer(epoch, "/docs", r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmstrap_wire::rules::Code;
    use swarmstrap_wire::RequestedRole;

    /// The real store behind this adapter: credentials are issued, kept and checked, and a
    /// reset needs the operator credential.
    #[tokio::test]
    async fn the_real_store_checks_node_and_operator_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let c = Coordinator::start(dir.path(), "sim", 1).await;
        let reg = RegisterRequest {
            node_id: "a".into(),
            hostname: "a".into(),
            advertise_addr: "198.18.0.1".into(),
            role: RequestedRole::Auto,
            joined_through: None,
            labels: None,
        };
        let r = c.register(&reg).await.unwrap();
        assert!(r.credential.is_some());
        assert_eq!(c.credential("a"), r.credential);
        let lease = c.claim("a", Duration::from_secs(30)).await.unwrap();
        assert!(lease.granted);
        c.set_credential("a", Secret::new("wrong"));
        let e = c.claim("a", Duration::from_secs(30)).await.unwrap_err();
        assert_eq!(e.code(), Some(Code::BadNodeCredential), "{e}");
        let req = ResetRequest {
            node_id: "a".into(),
            swarm_id: "s".into(),
            reason: String::new(),
        };
        for op in [None, Some(Secret::new("guess"))] {
            let e = c.reset(&req, op.as_ref()).await.unwrap_err();
            assert_eq!(e.code(), Some(Code::OperatorRequired), "{e}");
        }
        // With the operator credential the rules decide (not formed: nothing to reset).
        let e = c.reset(&req, Some(&c.operator)).await.unwrap_err();
        assert_ne!(e.code(), Some(Code::OperatorRequired), "{e}");
    }
}
