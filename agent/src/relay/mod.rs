//! The relay: on Secrets Manager, the day-2 documents come from the swarm's managers, not from
//! a poll of AWS on every node.
//!
//! Secrets Manager has no push and bills every read, so a long-poll there is a poll (~2,400
//! reads an hour for each loop that waits). The relay keeps Secrets Manager the durable store
//! and the only place anything is written, and moves the *waiting* into the swarm:
//!
//! - **Managers** keep one cached [`Snapshot`] (status and every document: one
//!   `GetSecretValue`). It is read again when a write is announced (a *poke*), after this
//!   agent's own non-document writes, and every [`SLOW_REFRESH`] in case a poke was lost. The
//!   manager's own loops (keeper, load balancer, rejoin watch) read the cache; their long-polls
//!   wait on it.
//! - **Every manager's agent serves** the documents to the swarm's nodes over mutual TLS with
//!   the swarm's own node certificates ([`tls`]; port [`DEFAULT_PORT`], `[secrets_manager]
//!   relay_port`), as long-polls ([`server`]).
//! - **Workers** ask the managers their engine knows (`docker info` RemoteManagers) instead of
//!   Secrets Manager ([`peer`]). If no manager's agent answers, a worker reads Secrets Manager
//!   directly with a backoff that grows to [`FALLBACK_MAX`] between reads.
//! - **Every write** still goes to Secrets Manager (the compare-and-swap chain decides); the
//!   writer then pokes the managers with the document and version it wrote, and each manager
//!   reads again until it sees that version (stale reads are retried with backoff for up to
//!   [`POKE_DEADLINE`]).
//!
//! What a node can read through the relay is what its own IAM role lets it read in Secrets
//! Manager anyway (the shared secret's documents); the join tokens are never relayed.

pub mod peer;
pub mod server;
pub mod tls;

use crate::engine::{Engine, EngineInfo};
use rand::Rng;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swarmstrap_wire::rendezvous::{Rendezvous, RendezvousError, Result, Snapshot};
use swarmstrap_wire::rules::{self, doc_answers, empty_doc, Code, RuleError};
use swarmstrap_wire::{
    AdoptRequest, AdoptResponse, ClaimResponse, ClusterStatus, Document, JoinResponse,
    PublishRequest, PublishResponse, RegisterRequest, RegisterResponse, ResetRequest, Secret,
    SyncRequest, SyncResponse,
};
use tokio::sync::{watch, Notify};

/// The relay's TCP port on every node (managers serve on it; workers connect to it).
pub const DEFAULT_PORT: u16 = 2378;
/// A manager reads the whole cluster again at least this often (a lost poke, a change made
/// from outside the swarm such as a deleted secret).
pub const SLOW_REFRESH: Duration = Duration::from_secs(600);
/// After a poke, a manager reads again (backoff) until it sees the announced version, for at
/// most this long (AWS's reads are eventually consistent).
pub const POKE_DEADLINE: Duration = Duration::from_secs(30);
/// At most one cluster read per this interval per manager, however many pokes arrive.
const MIN_REFRESH_GAP: Duration = Duration::from_secs(1);
/// A worker that no manager answers reads Secrets Manager directly, at most this rarely.
pub const FALLBACK_MAX: Duration = Duration::from_secs(300);
/// Longest long-poll a manager holds for a peer.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// A command that wrote (`leave`, `rotate-tokens`, `recover`) tells the managers' agents to
/// read again, so they act now rather than at their next slow read. Best effort, awaited.
pub async fn announce_write(cfg: &crate::config::Config) {
    if let Some(p) = poker_for(cfg).await {
        p.send_generic().await
    }
}

/// What [`announce_write`] needs, taken now (before `docker swarm leave` removes the node's
/// certificates and manager list).
pub async fn poker_for(cfg: &crate::config::Config) -> Option<peer::Poker> {
    let port = cfg.relay_port?;
    let engine = crate::engine::BollardEngine::new(&cfg.docker_host, Duration::from_secs(5));
    let info = engine.info().await.ok()?;
    peer::Poker::new(&info, port)
}

/// Documents that live only in the raft leader's agent while the relay is on, never in
/// Secrets Manager: the load balancer's membership (derived from the swarm at any time; a node
/// flapping would otherwise burn the secret's versions) and the keeper's report (for
/// `status`). Managers forward reads to the leader's agent; a new leader's agent publishes
/// them afresh (the report's history of actions starts over).
pub const LEADER_DOCS: [&str; 2] = [rules::DOC_MEMBERSHIP, rules::DOC_KEEPER];
/// A forwarded read reached an agent that is not the leader's.
pub const NOT_LEADER: &str = "not_leader";

/// For a command that reads (`status`, `lb render`): `backend` behind a relay that does not
/// serve, when the relay is on, so the [`LEADER_DOCS`] come from the leader's agent.
pub fn for_command(
    cfg: &crate::config::Config,
    backend: Arc<dyn Rendezvous>,
) -> Arc<dyn Rendezvous> {
    match cfg.relay_port {
        Some(port) => {
            let engine =
                crate::engine::BollardEngine::new(&cfg.docker_host, Duration::from_secs(5));
            Relay::new(backend, Arc::new(engine), port)
        }
        None => backend,
    }
}

/// A long-poll on a watched value: the document `pick` finds (or the empty one) at once when it
/// answers `after` (or `wait` is zero), else when the value changes so that it does, else after
/// `wait` as it is then.
async fn long_poll<T>(
    mut rx: watch::Receiver<T>,
    after: Option<u64>,
    wait: Duration,
    pick: impl Fn(&T) -> Option<Document>,
) -> Document {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let doc = pick(&rx.borrow_and_update()).unwrap_or_else(empty_doc);
        if doc_answers(&doc, after) || wait.is_zero() {
            return doc;
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            _ => return doc,
        }
    }
}

/// Where the engine keeps this node's swarm certificates.
pub fn cert_dir(info: &EngineInfo) -> PathBuf {
    PathBuf::from(info.docker_root_dir.as_deref().unwrap_or("/var/lib/docker"))
        .join("swarm")
        .join("certificates")
}

#[derive(Clone, Debug)]
pub struct Cached {
    pub snap: Snapshot,
    pub at: Instant,
}

/// What pokes announced and the cache has not seen yet.
#[derive(Default)]
struct Pending {
    /// Document name → the version a writer committed.
    docs: BTreeMap<String, u64>,
    /// A write that is not a document (a registration, a sync, a reset): read again until the
    /// read has moved on (a stale one has not), for at most [`POKE_DEADLINE`].
    generic: bool,
}

/// A manager's copy of the cluster (see the module docs).
pub struct Cache {
    inner: Arc<dyn Rendezvous>,
    tx: watch::Sender<Option<Arc<Cached>>>,
    refresh: tokio::sync::Mutex<Option<Instant>>,
    dirty: AtomicBool,
    poked: Notify,
    pending: Mutex<Pending>,
    started: AtomicBool,
    /// Cluster reads made (for tests and `status`).
    pub reads: std::sync::atomic::AtomicU64,
}

impl Cache {
    pub fn new(inner: Arc<dyn Rendezvous>) -> Arc<Cache> {
        Arc::new(Cache {
            inner,
            tx: watch::channel(None).0,
            refresh: tokio::sync::Mutex::new(None),
            dirty: AtomicBool::new(false),
            poked: Notify::new(),
            pending: Mutex::new(Pending::default()),
            started: AtomicBool::new(false),
            reads: Default::default(),
        })
    }

    fn current(&self) -> Option<Arc<Cached>> {
        self.tx.borrow().clone()
    }

    /// The cached cluster, read first if there is none, it is older than [`SLOW_REFRESH`], or
    /// a write made it dirty.
    pub async fn ensure(self: &Arc<Self>) -> Result<Arc<Cached>> {
        self.start();
        match self.current() {
            Some(c) if !self.dirty.load(Ordering::SeqCst) && c.at.elapsed() < SLOW_REFRESH => Ok(c),
            _ => self.refresh(false).await,
        }
    }

    /// Read the cluster now (one at a time; a caller that waited for another's read takes it).
    /// `gap`: keep [`MIN_REFRESH_GAP`] since the last read (pokes).
    async fn refresh(&self, gap: bool) -> Result<Arc<Cached>> {
        let asked = Instant::now();
        let mut last = self.refresh.lock().await;
        if let (Some(l), Some(c)) = (*last, self.current()) {
            if l >= asked && !self.dirty.load(Ordering::SeqCst) {
                return Ok(c);
            }
            if gap && l.elapsed() < MIN_REFRESH_GAP {
                // A rate limit, not a wait for a condition.
                tokio::time::sleep(MIN_REFRESH_GAP - l.elapsed()).await;
            }
        }
        self.dirty.store(false, Ordering::SeqCst);
        self.reads.fetch_add(1, Ordering::Relaxed);
        let snap = match self.inner.snapshot().await {
            Ok(Some(s)) => s,
            Ok(None) => {
                return Err(RendezvousError::Rejected {
                    code: "unsupported".into(),
                    message: format!(
                        "{} has no whole-cluster read: the relay cannot cache it",
                        self.inner.describe()
                    ),
                })
            }
            Err(e) => {
                self.dirty.store(true, Ordering::SeqCst);
                return Err(e);
            }
        };
        *last = Some(Instant::now());
        let c = Arc::new(Cached {
            snap,
            at: Instant::now(),
        });
        self.tx.send_replace(Some(c.clone()));
        Ok(c)
    }

    /// Take a document this agent just wrote (no read needed).
    pub fn merge(&self, name: &str, doc: &Document) {
        self.tx.send_if_modified(|cur| {
            let Some(c) = cur else { return false };
            let newer = c
                .snap
                .docs
                .get(name)
                .is_none_or(|d| d.version < doc.version);
            if newer {
                let mut snap = c.snap.clone();
                snap.docs.insert(name.to_string(), doc.clone());
                *cur = Some(Arc::new(Cached { snap, at: c.at }));
            }
            newer
        });
    }

    /// The next read must go to the backend (a write changed what the cache holds).
    pub fn invalidate(&self) {
        self.dirty.store(true, Ordering::SeqCst);
    }

    /// Someone wrote: `doc` = the document and the version they committed, `None` for any
    /// other write. The refresher reads again until it sees it.
    pub fn poke(&self, doc: Option<(String, u64)>) {
        {
            let mut p = self.pending.lock().unwrap();
            match doc {
                Some((name, v)) => {
                    let e = p.docs.entry(name).or_insert(v);
                    *e = (*e).max(v);
                }
                None => p.generic = true,
            }
        }
        self.poked.notify_one();
    }

    /// A long-poll of a cached document: at once when it is newer than `after` (or `after` is
    /// `None`), else when the cache gets a newer one, else after `wait` with the current one.
    pub async fn get_doc(
        self: &Arc<Self>,
        name: &str,
        after: Option<u64>,
        wait: Duration,
    ) -> Result<Document> {
        swarmstrap_wire::validate_name(name).map_err(|m| RendezvousError::Rejected {
            code: "invalid_name".into(),
            message: m,
        })?;
        self.ensure().await?;
        Ok(long_poll(self.tx.subscribe(), after, wait, |c| {
            c.as_ref().and_then(|c| c.snap.docs.get(name).cloned())
        })
        .await)
    }

    fn start(self: &Arc<Self>) {
        if !self.started.swap(true, Ordering::SeqCst) {
            tokio::spawn(self.clone().refresher());
        }
    }

    fn take_pending(&self) -> Pending {
        std::mem::take(&mut *self.pending.lock().unwrap())
    }

    async fn refresher(self: Arc<Self>) {
        let mut failing = false;
        loop {
            let slow = SLOW_REFRESH.mul_f64(rand::rng().random_range(0.9..1.0));
            tokio::select! {
                _ = self.poked.notified() => {}
                _ = tokio::time::sleep(slow) => {}
            }
            let pending = self.take_pending();
            let deadline = Instant::now() + POKE_DEADLINE;
            let before = self.current();
            let mut delay = Duration::from_millis(500);
            loop {
                match self.refresh(true).await {
                    Ok(c) => {
                        if failing {
                            tracing::info!("relay: reading {} again", self.inner.describe());
                            failing = false;
                        }
                        let docs_seen = pending
                            .docs
                            .iter()
                            .all(|(n, v)| c.snap.docs.get(n).is_some_and(|d| d.version >= *v));
                        // A write that is not a document: done once the cluster read moved on
                        // (a stale read has not; the deadline bounds a write already seen).
                        let generic_done = !pending.generic
                            || before.as_ref().is_some_and(|b| {
                                match (b.snap.revision, c.snap.revision) {
                                    (Some(old), Some(new)) => new > old,
                                    _ => b.snap != c.snap,
                                }
                            });
                        if docs_seen && generic_done {
                            break;
                        }
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(
                                "relay: cannot read {}: {e} (retrying)",
                                self.inner.describe()
                            );
                            failing = true;
                        }
                    }
                }
                if Instant::now() >= deadline {
                    break;
                }
                let jitter = rand::rng().random_range(0..=delay.as_millis() as u64 / 2);
                tokio::time::sleep(delay + Duration::from_millis(jitter)).await;
                delay = (delay * 2).min(Duration::from_secs(4));
            }
        }
    }
}

/// The backend every day-2 loop of the agent uses on Secrets Manager (see the module docs).
/// Bootstrap calls (register, claim, renew, publish, join) go straight to the backend.
pub struct Relay {
    pub inner: Arc<dyn Rendezvous>,
    pub engine: Arc<dyn Engine>,
    pub port: u16,
    pub cache: Arc<Cache>,
    peers: peer::Peers,
    fallback_failures: AtomicU32,
    /// Pokes in flight ([`Relay::flush`]).
    pokes: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The [`LEADER_DOCS`] this agent holds (while it is the raft leader's).
    local: watch::Sender<BTreeMap<String, Document>>,
    /// This instance serves the relay (the agent's `run`, not a command).
    serving: AtomicBool,
    /// Which manager each node's engine joined through, by Docker node id, as the nodes told
    /// this agent (proven by their swarm certificates): the keeper's hint.
    joined: Mutex<std::collections::HashMap<String, String>>,
}

/// Where a [`LEADER_DOCS`] document is read.
enum Route {
    /// This agent is the raft leader's and serves: its own copy.
    Here,
    /// A manager: ask the leader's agent.
    Leader(EngineInfo, SocketAddr),
    /// Not a manager: ask any manager's agent (it asks the leader's).
    AnyManager(EngineInfo),
}

fn transient(what: &str, e: impl std::fmt::Display) -> RendezvousError {
    RendezvousError::Transient(format!("{what}: {e}"))
}

impl Relay {
    pub fn new(inner: Arc<dyn Rendezvous>, engine: Arc<dyn Engine>, port: u16) -> Arc<Relay> {
        Arc::new(Relay {
            cache: Cache::new(inner.clone()),
            inner,
            engine,
            port,
            peers: peer::Peers::default(),
            fallback_failures: AtomicU32::new(0),
            pokes: Mutex::new(Vec::new()),
            local: watch::channel(BTreeMap::new()).0,
            serving: AtomicBool::new(false),
            joined: Mutex::new(Default::default()),
        })
    }

    /// This instance serves the relay (the agent's `run`): it may hold the [`LEADER_DOCS`].
    /// Set before the day-2 loops start ([`server::serve_on`] sets it too).
    pub fn mark_serving(&self) {
        self.serving.store(true, Ordering::SeqCst);
    }

    async fn is_manager(&self) -> Option<EngineInfo> {
        match self.engine.info().await {
            Ok(i) if i.swarm.control_available => Some(i),
            _ => None,
        }
    }

    /// Tell the managers that this node wrote (best effort, in the background).
    pub fn announce(&self, doc: Option<(String, u64)>) {
        let engine = self.engine.clone();
        let port = self.port;
        let task = tokio::spawn(async move {
            let Ok(info) = engine.info().await else {
                return;
            };
            peer::poke_all(&info, port, doc).await;
        });
        let mut pokes = self.pokes.lock().unwrap();
        pokes.retain(|t| !t.is_finished());
        pokes.push(task);
    }

    /// Tell every manager's agent which manager this node's engine (`swarm_node_id`) joined
    /// through (instead of a registration write; see `server` for how it is checked).
    pub fn announce_joined(&self, swarm_node_id: String, through: String) {
        let engine = self.engine.clone();
        let port = self.port;
        let task = tokio::spawn(async move {
            let Ok(info) = engine.info().await else {
                return;
            };
            let body =
                serde_json::json!({"swarm_node_id": swarm_node_id, "joined_through": through});
            peer::poke_all_with(&info, port, body).await;
        });
        self.pokes.lock().unwrap().push(task);
    }

    /// The manager address Docker node `swarm_node_id`'s engine joined through, if its agent
    /// said so.
    pub fn joined_through(&self, swarm_node_id: &str) -> Option<String> {
        self.joined.lock().unwrap().get(swarm_node_id).cloned()
    }

    /// Wait for the pokes in flight (a command that wrote, before it exits).
    pub async fn flush(&self) {
        let pokes = std::mem::take(&mut *self.pokes.lock().unwrap());
        for t in pokes {
            let _ = t.await;
        }
    }

    /// A worker's read: from a manager's agent, else straight from the backend (rarely).
    async fn worker_get_doc(
        &self,
        name: &str,
        after: Option<u64>,
        wait: Duration,
    ) -> Result<Document> {
        let info = self.engine.info().await.ok();
        let tried = match &info {
            Some(info) => {
                let addrs = peer::manager_addrs(info, self.port, false);
                self.peers
                    .get_doc(info, addrs, name, after, wait.min(MAX_WAIT), false)
                    .await
            }
            None => Err("the local engine does not answer".to_string()),
        };
        match tried {
            Ok(doc) => {
                if self.fallback_failures.swap(0, Ordering::SeqCst) > 0 {
                    tracing::info!(
                        "relay: reading the cluster's documents from its managers again"
                    );
                }
                Ok(doc)
            }
            Err(why) => {
                let n = self.fallback_failures.fetch_add(1, Ordering::SeqCst);
                if n == 0 {
                    tracing::warn!(
                        "relay: no manager's agent answers ({why}); reading {} directly, \
                         backing off to one read per {}s (open TCP port {} between the nodes)",
                        self.inner.describe(),
                        FALLBACK_MAX.as_secs(),
                        self.port
                    );
                }
                let doc = self.inner.get_doc(name, after, Duration::ZERO).await?;
                if !doc_answers(&doc, after) {
                    let base = Duration::from_secs(5)
                        .saturating_mul(1 << n.min(8))
                        .min(FALLBACK_MAX);
                    let pause = base.mul_f64(rand::rng().random_range(0.5..1.0));
                    tokio::time::sleep(pause.min(wait.max(Duration::from_secs(1)))).await;
                }
                Ok(doc)
            }
        }
    }

    async fn route(&self) -> Result<Route> {
        let info = self
            .engine
            .info()
            .await
            .map_err(|e| transient("the local engine", e))?;
        if !info.swarm.control_available {
            return Ok(Route::AnyManager(info));
        }
        let nodes = self
            .engine
            .nodes()
            .await
            .map_err(|e| transient("listing the swarm's nodes", e))?;
        let Some(leader) = nodes.iter().find(|n| n.leader) else {
            return Err(RendezvousError::Transient(
                "the swarm has no raft leader right now".into(),
            ));
        };
        if info.swarm.node_id.as_deref() == Some(leader.id.as_str())
            && self.serving.load(Ordering::SeqCst)
        {
            return Ok(Route::Here);
        }
        let ip: IpAddr = leader
            .addr
            .as_deref()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| {
                RendezvousError::Transient(format!(
                    "the raft leader {} has no address in the node list",
                    leader.hostname
                ))
            })?;
        Ok(Route::Leader(info, SocketAddr::new(ip, self.port)))
    }

    /// A read of a [`LEADER_DOCS`] document. `hop`: a manager forwarded it already.
    pub(crate) async fn leader_get_doc(
        &self,
        name: &str,
        after: Option<u64>,
        wait: Duration,
        hop: bool,
    ) -> Result<Document> {
        let wait = wait.min(MAX_WAIT);
        match self.route().await? {
            Route::Here => Ok(self.local_get(name, after, wait).await),
            Route::Leader(..) if hop => Err(RendezvousError::Conflict {
                code: NOT_LEADER.into(),
                message: "this agent is not the raft leader's (any more): ask again".into(),
            }),
            Route::Leader(info, addr) => self
                .peers
                .get_doc(&info, vec![addr], name, after, wait, true)
                .await
                .map_err(|e| transient("the raft leader's agent", e)),
            Route::AnyManager(info) => {
                let addrs = peer::manager_addrs(&info, self.port, false);
                self.peers
                    .get_doc(&info, addrs, name, after, wait, false)
                    .await
                    .map_err(|e| {
                        transient(
                            &format!(
                                "no manager's agent answers on TCP port {} (open it between \
                                 the nodes)",
                                self.port
                            ),
                            e,
                        )
                    })
            }
        }
    }

    async fn local_get(&self, name: &str, after: Option<u64>, wait: Duration) -> Document {
        long_poll(self.local.subscribe(), after, wait, |docs| {
            docs.get(name).cloned()
        })
        .await
    }

    /// Compare-and-set of a [`LEADER_DOCS`] document in this agent. Versions are
    /// `max(previous + 1, now in ms)`, so a new leader's versions follow the old one's (clocks
    /// in sync); a reader that waits on an older leader's version gets the new document at its
    /// long-poll's end at the latest.
    fn local_put(&self, name: &str, expected: u64, body: &serde_json::Value) -> Result<Document> {
        rules::check_doc_body(name, body).map_err(RendezvousError::from)?;
        let mut out = None;
        self.local.send_if_modified(|docs| {
            let cur = docs.get(name).map(|d| d.version).unwrap_or(0);
            if cur != expected {
                out = Some(Err(RendezvousError::from(RuleError::new(
                    Code::VersionConflict,
                    format!(
                        "version conflict: document {name:?} is at version {cur}, the write \
                         expected {expected}; re-read and retry"
                    ),
                ))));
                return false;
            }
            let doc = Document {
                version: (cur + 1).max(crate::lifecycle::docs::now_ms()),
                body: body.clone(),
            };
            docs.insert(name.to_string(), doc.clone());
            out = Some(Ok(doc));
            true
        });
        out.expect("set above")
    }

    fn after_write<T>(&self, r: &Result<T>) {
        self.cache.invalidate();
        if r.is_ok() {
            self.announce(None);
        }
    }
}

#[async_trait::async_trait]
impl Rendezvous for Relay {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn set_credential(&self, node_id: &str, credential: Secret) {
        self.inner.set_credential(node_id, credential)
    }
    fn credential(&self, node_id: &str) -> Option<Secret> {
        self.inner.credential(node_id)
    }
    async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse> {
        self.inner.register(req).await
    }
    async fn claim(&self, node_id: &str, ttl: Duration) -> Result<ClaimResponse> {
        self.inner.claim(node_id, ttl).await
    }
    async fn renew(
        &self,
        node_id: &str,
        fencing_token: u64,
        ttl: Duration,
    ) -> Result<ClaimResponse> {
        self.inner.renew(node_id, fencing_token, ttl).await
    }
    async fn publish(&self, req: &PublishRequest) -> Result<PublishResponse> {
        let r = self.inner.publish(req).await;
        self.after_write(&r);
        r
    }
    async fn wait_join(&self, node_id: &str, wait: Duration) -> Result<JoinResponse> {
        self.inner.wait_join(node_id, wait).await
    }
    async fn status(&self) -> Result<ClusterStatus> {
        // A manager whose swarm has quorum: the cache (pokes keep it current). Without quorum
        // (every other manager lost) nobody pokes it: read the backend, so an operator's
        // reset is seen at the supervisor's next pass.
        if self.is_manager().await.is_some() && self.engine.nodes().await.is_ok() {
            return Ok(self.cache.ensure().await?.snap.status.clone());
        }
        self.inner.status().await
    }
    async fn reset(&self, req: &ResetRequest, operator: Option<&Secret>) -> Result<ClusterStatus> {
        let r = self.inner.reset(req, operator).await;
        self.after_write(&r);
        r
    }
    async fn request_token_rotation(&self, operator: Option<&Secret>) -> Result<ClusterStatus> {
        let r = self.inner.request_token_rotation(operator).await;
        self.after_write(&r);
        r
    }
    async fn sync(&self, req: &SyncRequest) -> Result<SyncResponse> {
        let r = self.inner.sync(req).await;
        match &r {
            Ok(s) if !s.changed => {}
            _ => self.after_write(&r),
        }
        r
    }
    async fn adopt(&self, req: &AdoptRequest) -> Result<AdoptResponse> {
        let r = self.inner.adopt(req).await;
        self.after_write(&r);
        r
    }
    async fn get_doc(&self, name: &str, after: Option<u64>, wait: Duration) -> Result<Document> {
        if LEADER_DOCS.contains(&name) {
            return self.leader_get_doc(name, after, wait, false).await;
        }
        if self.is_manager().await.is_some() {
            return self.cache.get_doc(name, after, wait).await;
        }
        self.worker_get_doc(name, after, wait).await
    }
    async fn snapshot(&self) -> Result<Option<Snapshot>> {
        self.inner.snapshot().await
    }
    async fn put_doc(
        &self,
        node_id: &str,
        name: &str,
        expected_version: u64,
        body: &serde_json::Value,
    ) -> Result<Document> {
        if LEADER_DOCS.contains(&name) {
            return match self.route().await? {
                Route::Here => self.local_put(name, expected_version, body),
                _ => Err(RendezvousError::Transient(format!(
                    "document {name:?} lives in the raft leader's agent, and this is not it \
                     (any more)"
                ))),
            };
        }
        let r = self
            .inner
            .put_doc(node_id, name, expected_version, body)
            .await;
        match &r {
            Ok(doc) => {
                self.cache.merge(name, doc);
                self.announce(Some((name.to_string(), doc.version)));
            }
            // The cache was behind (a conflict) or the write's fate is unknown: read again.
            Err(_) => self.cache.invalidate(),
        }
        r
    }
}

#[cfg(test)]
mod tests;
