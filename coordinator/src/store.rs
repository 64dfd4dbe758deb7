//! Crash-safe storage in one redb file. Every write runs on a single writer thread that groups
//! the queued operations into one write transaction and commits it with immediate durability
//! (fsync) before any of them is acknowledged ("group commit": one fsync for many requests).
//! Reads use redb's MVCC read transactions directly.
//!
//! All read-modify-write logic (role assignment, claims, publish, document compare-and-set)
//! runs inside the write transaction, so concurrent requests are serialized by the store, not
//! by in-memory locks. Nothing the server needs survives only in memory.

use crate::datadir::{DataDir, DataDirError, DirState, MarkerState};
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use swarmstrap_wire::{
    ClaimResponse, ClusterStatus, Document, DocumentWrite, JoinInfo, JoinResponse, Lease, NodeInfo,
    Phase, PublishRequest, RegisterRequest, RegisterResponse, RenewRequest, RequestedRole,
    ResetRequest, Role, Secret,
};
use tokio::sync::{mpsc, oneshot};

/// Schema version of the tables below. Bump it (and write a migration) on any change.
pub const SCHEMA_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const CLUSTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("clusters");
/// (cluster, node_id) → NodeRecord (JSON)
const NODES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("nodes");
/// (cluster, doc name) → Document (JSON)
const DOCS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("docs");

const META_SCHEMA: &str = "schema_version";
/// Last fencing token handed out, for all clusters: tokens are never reused, also across
/// resets and restarts.
const META_FENCING: &str = "fencing_counter";
const META_PROBE: &str = "ready_probe_ms";

/// Init lease bounds (the requested TTL is clamped into them).
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(300);

/// At most this many queued writes share one transaction.
const MAX_BATCH: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unknown cluster {0:?}")]
    UnknownCluster(String),
    #[error("cluster {0:?} already exists")]
    ClusterExists(String),
    #[error("node {node:?} is not registered in cluster {cluster:?}: register it first (POST /v1/clusters/{cluster}/nodes)")]
    NodeNotRegistered { cluster: String, node: String },
    #[error("node {0:?} was assigned the worker role; only managers may claim the init lease")]
    NotAManager(String),
    #[error("fencing token {given} is stale; the current one is {current}")]
    StaleFencingToken { given: u64, current: u64 },
    #[error("node {node:?} does not hold the init lease{}", holder.as_ref().map(|h| format!(" (held by {h:?})")).unwrap_or_default())]
    NotLeaseHolder {
        node: String,
        holder: Option<String>,
    },
    #[error("the init lease expired {ago_ms} ms ago; claim again")]
    LeaseExpired { ago_ms: u64 },
    #[error("the init lease is lost: {0}")]
    LeaseLost(String),
    #[error("the cluster is already formed with different data (swarm {swarm_id:?}); an operator must `cluster reset` it first")]
    AlreadyFormed { swarm_id: String },
    #[error("the cluster is formed with swarm {}, not {given:?}: nothing was reset (check the swarm id)", current.as_deref().map(|c| format!("{c:?}")).unwrap_or_else(|| "none (it is not formed)".into()))]
    SwarmMismatch {
        given: String,
        current: Option<String>,
    },
    #[error(
        "version conflict: the document is at version {current}, the write expected {expected}"
    )]
    VersionConflict { expected: u64, current: u64 },
    #[error("{0}")]
    Invalid(String),
    #[error("storage error: {0}")]
    Storage(String),
    #[error("the store is shut down")]
    Closed,
}

impl StoreError {
    fn storage(e: impl std::fmt::Display) -> Self {
        StoreError::Storage(e.to_string())
    }

    /// A storage failure leaves the write transaction unusable: the whole batch is aborted.
    fn is_storage(&self) -> bool {
        matches!(self, StoreError::Storage(_) | StoreError::Closed)
    }
}

macro_rules! impl_storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::storage(e) }
        }
    )*};
}
impl_storage_from!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    serde_json::Error
);

/// Why the store cannot open a data dir. Messages name the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("{path} is locked by another process (a running swarm-coordinator server?)")]
    Locked { path: PathBuf },
    #[error(
        "cannot open the database {path}: {reason}. The file is corrupt or not a redb database. \
         Nothing was changed. Restore it from a backup; to deliberately start over (all clusters \
         are lost), move the data dir aside and start with an empty one"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "the database {path} has schema version {found}, this swarm-coordinator understands \
         {SCHEMA_VERSION}. Run the swarm-coordinator version that wrote it (nothing was changed)"
    )]
    SchemaMismatch { path: PathBuf, found: u64 },
    #[error("the data dir {path} does not exist; create a cluster or start the server first")]
    Missing { path: PathBuf },
}

/// How [`Store::open`] treats a data dir that has no database yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create and initialize it.
    CreateIfMissing,
    /// Fail with [`OpenError::Missing`].
    MustExist,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseRecord {
    holder: String,
    fencing_token: u64,
    granted_at_ms: u64,
    expires_at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Formation {
    swarm_id: String,
    ca_digest: String,
    manager_addrs: Vec<String>,
    manager_token: Secret,
    worker_token: Secret,
    published_by: String,
    fencing_token: u64,
    formed_at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ResetRecord {
    at_ms: u64,
    previous_swarm_id: Option<String>,
    /// Who asked: "operator (admin API)" or "node <id>" (`swarm-agent recover`).
    #[serde(default)]
    by: String,
    #[serde(default)]
    reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ClusterRecord {
    name: String,
    /// hex sha256 of the join secret; the secret itself is never stored.
    secret_sha256: String,
    target_managers: u8,
    created_at_ms: u64,
    node_count: u64,
    manager_count: u64,
    lease: Option<LeaseRecord>,
    formed: Option<Formation>,
    resets: u64,
    reset_log: Vec<ResetRecord>,
}

impl ClusterRecord {
    fn live_lease(&self, now: u64) -> Option<&LeaseRecord> {
        self.lease.as_ref().filter(|l| l.expires_at_ms > now)
    }

    fn phase(&self, now: u64) -> Phase {
        if self.formed.is_some() {
            Phase::Formed
        } else if self.live_lease(now).is_some() {
            Phase::Claimed
        } else {
            Phase::Open
        }
    }

    fn wire_lease(&self, now: u64) -> Option<Lease> {
        self.live_lease(now).map(|l| Lease {
            holder: l.holder.clone(),
            fencing_token: l.fencing_token,
            expires_in_ms: l.expires_at_ms - now,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodeRecord {
    node_id: String,
    hostname: String,
    advertise_addr: String,
    requested: RequestedRole,
    role: Role,
    registered_at_ms: u64,
}

impl From<NodeRecord> for NodeInfo {
    fn from(n: NodeRecord) -> Self {
        NodeInfo {
            node_id: n.node_id,
            hostname: n.hostname,
            advertise_addr: n.advertise_addr,
            requested: n.requested,
            role: n.role,
            registered_at_ms: n.registered_at_ms,
        }
    }
}

/// The result of a write: `changed` says whether anything watchers care about changed.
pub struct Written<T> {
    pub value: T,
    pub changed: bool,
}

type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
type WriteOp = Box<dyn FnOnce(&WriteTransaction) -> (Completion, bool) + Send>;

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    writer: mpsc::Sender<WriteOp>,
    path: PathBuf,
}

impl Store {
    /// Open (or create) the store in `dir`. Never resets or rewrites data it does not
    /// recognize: a foreign, corrupt or newer data dir is an error that names the file.
    pub fn open(dir: &DataDir, mode: OpenMode) -> Result<Store, OpenError> {
        let state = dir.inspect()?;
        let path = dir.db_path();
        let db = match state {
            DirState::Fresh | DirState::Initializing => {
                if state == DirState::Fresh && mode == OpenMode::MustExist {
                    return Err(OpenError::Missing {
                        path: dir.root().to_path_buf(),
                    });
                }
                dir.create()?;
                dir.write_marker(MarkerState::Initializing)?;
                let db = open_db(&path, true)?;
                init_schema(&db, &path)?;
                dir.write_marker(MarkerState::Ready)?;
                db
            }
            DirState::Ready => {
                // Check read-only first, so a damaged or foreign file is reported untouched (the
                // read-write open verifies checksums and commits).
                precheck_read_only(&path)?;
                let db = open_db(&path, false)?;
                check_schema(&db, &path)?;
                db
            }
        };
        Ok(Store::start(db, path))
    }

    /// Start the writer thread. It ends (and closes the database) when the last handle drops.
    fn start(db: Database, path: PathBuf) -> Store {
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<WriteOp>(4096);
        let writer_db = db.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(writer_db, rx))
            .expect("spawn the store writer thread");
        Store {
            db,
            writer: tx,
            path,
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Queue `f` on the writer thread; resolves after the transaction holding it is durable.
    async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (tx, rx) = oneshot::channel();
        let op: WriteOp = Box::new(move |txn| {
            let result = f(txn);
            let failed = matches!(&result, Err(e) if e.is_storage());
            let completion: Completion = Box::new(move |commit| {
                let _ = tx.send(commit.and(result));
            });
            (completion, failed)
        });
        self.writer.send(op).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| {
            StoreError::Storage("the write was not executed (storage failure or shutdown)".into())
        })?
    }

    fn read<R>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let txn = self.db.begin_read()?;
        f(&txn)
    }

    /// A real, tiny, durable write transaction (for `/readyz`).
    pub async fn probe_write(&self) -> Result<(), StoreError> {
        self.write(|txn| {
            txn.open_table(META)?.insert(META_PROBE, now_ms())?;
            Ok(())
        })
        .await
    }

    pub async fn create_cluster(
        &self,
        name: String,
        target_managers: u8,
        secret_sha256: [u8; 32],
    ) -> Result<ClusterStatus, StoreError> {
        swarmstrap_wire::validate_name(&name).map_err(StoreError::Invalid)?;
        swarmstrap_wire::validate_target_managers(target_managers).map_err(StoreError::Invalid)?;
        self.write(move |txn| {
            if get_cluster(txn, &name)?.is_some() {
                return Err(StoreError::ClusterExists(name));
            }
            let rec = ClusterRecord {
                name: name.clone(),
                secret_sha256: hex::encode(secret_sha256),
                target_managers,
                created_at_ms: now_ms(),
                node_count: 0,
                manager_count: 0,
                lease: None,
                formed: None,
                resets: 0,
                reset_log: vec![],
            };
            put_cluster(txn, &rec)?;
            Ok(status_of(&rec, vec![], now_ms()))
        })
        .await
    }

    /// sha256 of the cluster's join secret, or None for an unknown cluster.
    pub fn cluster_secret_hash(&self, name: &str) -> Result<Option<[u8; 32]>, StoreError> {
        self.read(|txn| {
            let Some(rec) = get_cluster_r(txn, name)? else {
                return Ok(None);
            };
            let mut out = [0u8; 32];
            hex::decode_to_slice(&rec.secret_sha256, &mut out)
                .map_err(|e| StoreError::Storage(format!("bad secret hash of {name:?}: {e}")))?;
            Ok(Some(out))
        })
    }

    pub fn status(&self, name: &str) -> Result<ClusterStatus, StoreError> {
        self.read(|txn| {
            let rec =
                get_cluster_r(txn, name)?.ok_or_else(|| StoreError::UnknownCluster(name.into()))?;
            let nodes = list_nodes(txn, name)?;
            Ok(status_of(&rec, nodes, now_ms()))
        })
    }

    pub fn list(&self) -> Result<Vec<ClusterStatus>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(CLUSTERS)?;
            let mut out = vec![];
            let now = now_ms();
            for entry in table.iter()? {
                let (_, v) = entry?;
                let rec: ClusterRecord = serde_json::from_slice(v.value())?;
                let nodes = list_nodes(txn, &rec.name)?;
                out.push(status_of(&rec, nodes, now));
            }
            Ok(out)
        })
    }

    /// (clusters, nodes)
    pub fn counts(&self) -> Result<(u64, u64), StoreError> {
        self.read(|txn| {
            let c = txn.open_table(CLUSTERS)?.len()?;
            let n = txn.open_table(NODES)?.len()?;
            Ok((c, n))
        })
    }

    /// Operator reset: forget the formation, any lease and the node registrations (roles are
    /// assigned again), so exactly one new init can be granted. Fencing tokens keep counting
    /// up.
    pub async fn reset(&self, name: String) -> Result<ClusterStatus, StoreError> {
        self.write(move |txn| {
            let rec =
                get_cluster(txn, &name)?.ok_or_else(|| StoreError::UnknownCluster(name.clone()))?;
            reset_in(txn, rec, "operator (admin API)".into(), String::new())
        })
        .await
    }

    /// `swarm-agent recover`: the same reset, but only while the cluster is still formed with
    /// `req.swarm_id` (compare-and-set), so concurrent recoveries allow one new init in total.
    pub async fn recover(
        &self,
        cluster: String,
        req: ResetRequest,
    ) -> Result<ClusterStatus, StoreError> {
        validate_node_id(&req.node_id)?;
        if !req.reason.is_empty() {
            validate_text("reason", &req.reason, 500)?;
        }
        self.write(move |txn| {
            let rec = get_cluster(txn, &cluster)?
                .ok_or_else(|| StoreError::UnknownCluster(cluster.clone()))?;
            let current = rec.formed.as_ref().map(|f| f.swarm_id.clone());
            if current.as_deref() != Some(req.swarm_id.as_str()) {
                return Err(StoreError::SwarmMismatch {
                    given: req.swarm_id.clone(),
                    current,
                });
            }
            reset_in(
                txn,
                rec,
                format!("node {}", req.node_id),
                req.reason.clone(),
            )
        })
        .await
    }

    pub async fn register(
        &self,
        cluster: String,
        req: RegisterRequest,
    ) -> Result<Written<RegisterResponse>, StoreError> {
        validate_node_id(&req.node_id)?;
        validate_text("hostname", &req.hostname, 253)?;
        validate_text("advertise_addr", &req.advertise_addr, 255)?;
        self.write(move |txn| {
            let mut rec = get_cluster(txn, &cluster)?
                .ok_or_else(|| StoreError::UnknownCluster(cluster.clone()))?;
            let now = now_ms();
            let existing = get_node(txn, &cluster, &req.node_id)?;
            let (role, changed) = match existing {
                Some(mut node) => {
                    let changed = node.hostname != req.hostname
                        || node.advertise_addr != req.advertise_addr
                        || node.requested != req.role;
                    if changed {
                        node.hostname = req.hostname.clone();
                        node.advertise_addr = req.advertise_addr.clone();
                        node.requested = req.role;
                        put_node(txn, &cluster, &node)?;
                    }
                    (node.role, changed)
                }
                None => {
                    let wants_manager =
                        matches!(req.role, RequestedRole::Auto | RequestedRole::Manager);
                    let role =
                        if wants_manager && rec.manager_count < u64::from(rec.target_managers) {
                            Role::Manager
                        } else {
                            Role::Worker
                        };
                    let node = NodeRecord {
                        node_id: req.node_id.clone(),
                        hostname: req.hostname.clone(),
                        advertise_addr: req.advertise_addr.clone(),
                        requested: req.role,
                        role,
                        registered_at_ms: now,
                    };
                    put_node(txn, &cluster, &node)?;
                    rec.node_count += 1;
                    if role == Role::Manager {
                        rec.manager_count += 1;
                    }
                    put_cluster(txn, &rec)?;
                    (role, true)
                }
            };
            Ok(Written {
                value: RegisterResponse {
                    node_id: req.node_id,
                    role,
                    target_managers: rec.target_managers,
                    phase: rec.phase(now),
                },
                changed,
            })
        })
        .await
    }

    pub async fn claim(
        &self,
        cluster: String,
        node_id: String,
        ttl_ms: u64,
    ) -> Result<Written<ClaimResponse>, StoreError> {
        validate_node_id(&node_id)?;
        let ttl = clamp_ttl(ttl_ms);
        self.write(move |txn| {
            let mut rec = get_cluster(txn, &cluster)?
                .ok_or_else(|| StoreError::UnknownCluster(cluster.clone()))?;
            // Registration is not required to claim, but a node registered as a worker must
            // never run `swarm init`: that would add a manager beyond the target.
            let node = get_node(txn, &cluster, &node_id)?;
            let now = now_ms();
            if rec.formed.is_some() {
                return Ok(Written {
                    value: ClaimResponse {
                        granted: false,
                        phase: Phase::Formed,
                        lease: None,
                    },
                    changed: false,
                });
            }
            if let Some(live) = rec.live_lease(now) {
                // The holder's retry is granted again with the same token; others learn who.
                return Ok(Written {
                    value: ClaimResponse {
                        granted: live.holder == node_id,
                        phase: Phase::Claimed,
                        lease: rec.wire_lease(now),
                    },
                    changed: false,
                });
            }
            if node.is_some_and(|n| n.role == Role::Worker) {
                return Err(StoreError::NotAManager(node_id));
            }
            // Open, or an expired unpublished lease: grant a new lease under a new token.
            let token = next_fencing_token(txn)?;
            rec.lease = Some(LeaseRecord {
                holder: node_id,
                fencing_token: token,
                granted_at_ms: now,
                expires_at_ms: now + ttl,
            });
            put_cluster(txn, &rec)?;
            Ok(Written {
                value: ClaimResponse {
                    granted: true,
                    phase: Phase::Claimed,
                    lease: rec.wire_lease(now),
                },
                changed: true,
            })
        })
        .await
    }

    /// Extend the lease. Allowed for the holder under the current token as long as nobody
    /// took the lease over, even if it ran out in between (the token still fences).
    pub async fn renew(
        &self,
        cluster: String,
        req: RenewRequest,
    ) -> Result<Written<ClaimResponse>, StoreError> {
        let ttl = clamp_ttl(req.ttl_ms);
        self.write(move |txn| {
            let mut rec = get_cluster(txn, &cluster)?
                .ok_or_else(|| StoreError::UnknownCluster(cluster.clone()))?;
            let now = now_ms();
            if rec.formed.is_some() {
                return Err(StoreError::LeaseLost(
                    "the cluster is already formed".into(),
                ));
            }
            match &mut rec.lease {
                Some(l) if l.holder == req.node_id && l.fencing_token == req.fencing_token => {
                    l.expires_at_ms = now + ttl;
                }
                Some(l) => {
                    return Err(StoreError::LeaseLost(format!(
                        "the lease is held by {:?} under fencing token {}",
                        l.holder, l.fencing_token
                    )))
                }
                None => return Err(StoreError::LeaseLost("no lease is held".into())),
            }
            put_cluster(txn, &rec)?;
            Ok(Written {
                value: ClaimResponse {
                    granted: true,
                    phase: Phase::Claimed,
                    lease: rec.wire_lease(now),
                },
                changed: true,
            })
        })
        .await
    }

    pub async fn publish(
        &self,
        cluster: String,
        req: PublishRequest,
    ) -> Result<Written<Phase>, StoreError> {
        validate_publish(&req)?;
        self.write(move |txn| {
            let mut rec = get_cluster(txn, &cluster)?
                .ok_or_else(|| StoreError::UnknownCluster(cluster.clone()))?;
            let now = now_ms();
            if let Some(f) = &rec.formed {
                if req.fencing_token != f.fencing_token {
                    return Err(StoreError::StaleFencingToken {
                        given: req.fencing_token,
                        current: f.fencing_token,
                    });
                }
                if req.node_id != f.published_by {
                    return Err(StoreError::NotLeaseHolder {
                        node: req.node_id,
                        holder: Some(f.published_by.clone()),
                    });
                }
                let same = f.swarm_id == req.swarm_id
                    && f.ca_digest == req.ca_digest
                    && f.manager_addrs == req.manager_addrs
                    && f.manager_token == req.manager_token
                    && f.worker_token == req.worker_token;
                if !same {
                    return Err(StoreError::AlreadyFormed {
                        swarm_id: f.swarm_id.clone(),
                    });
                }
                // Idempotent retry of the publish that formed the cluster.
                return Ok(Written {
                    value: Phase::Formed,
                    changed: false,
                });
            }
            let Some(lease) = &rec.lease else {
                return Err(StoreError::NotLeaseHolder {
                    node: req.node_id,
                    holder: None,
                });
            };
            if req.fencing_token != lease.fencing_token {
                return Err(StoreError::StaleFencingToken {
                    given: req.fencing_token,
                    current: lease.fencing_token,
                });
            }
            if req.node_id != lease.holder {
                return Err(StoreError::NotLeaseHolder {
                    node: req.node_id,
                    holder: Some(lease.holder.clone()),
                });
            }
            if lease.expires_at_ms <= now {
                return Err(StoreError::LeaseExpired {
                    ago_ms: now - lease.expires_at_ms,
                });
            }
            rec.formed = Some(Formation {
                swarm_id: req.swarm_id,
                ca_digest: req.ca_digest,
                manager_addrs: req.manager_addrs,
                manager_token: req.manager_token,
                worker_token: req.worker_token,
                published_by: req.node_id,
                fencing_token: req.fencing_token,
                formed_at_ms: now,
            });
            rec.lease = None;
            put_cluster(txn, &rec)?;
            Ok(Written {
                value: Phase::Formed,
                changed: true,
            })
        })
        .await
    }

    /// What `node_id` needs to join (the token of its role only), if the cluster is formed.
    pub fn join(&self, cluster: &str, node_id: &str) -> Result<JoinResponse, StoreError> {
        self.read(|txn| {
            let rec = get_cluster_r(txn, cluster)?
                .ok_or_else(|| StoreError::UnknownCluster(cluster.into()))?;
            let node = get_node_r(txn, cluster, node_id)?.ok_or_else(|| {
                StoreError::NodeNotRegistered {
                    cluster: cluster.into(),
                    node: node_id.into(),
                }
            })?;
            let now = now_ms();
            let join = rec.formed.as_ref().map(|f| JoinInfo {
                swarm_id: f.swarm_id.clone(),
                ca_digest: f.ca_digest.clone(),
                manager_addrs: f.manager_addrs.clone(),
                role: node.role,
                token: match node.role {
                    Role::Manager => f.manager_token.clone(),
                    Role::Worker => f.worker_token.clone(),
                },
            });
            Ok(JoinResponse {
                phase: rec.phase(now),
                lease: rec.wire_lease(now),
                join,
            })
        })
    }

    pub fn get_doc(&self, cluster: &str, name: &str) -> Result<Document, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(DOCS)?;
            Ok(match table.get((cluster, name))? {
                Some(v) => serde_json::from_slice(v.value())?,
                None => Document {
                    version: 0,
                    body: serde_json::Value::Null,
                },
            })
        })
    }

    pub async fn put_doc(
        &self,
        cluster: String,
        name: String,
        write: DocumentWrite,
    ) -> Result<Document, StoreError> {
        self.write(move |txn| {
            let mut table = txn.open_table(DOCS)?;
            let current = match table.get((cluster.as_str(), name.as_str()))? {
                Some(v) => serde_json::from_slice::<Document>(v.value())?.version,
                None => 0,
            };
            if current != write.expected_version {
                return Err(StoreError::VersionConflict {
                    expected: write.expected_version,
                    current,
                });
            }
            let doc = Document {
                version: current + 1,
                body: write.body,
            };
            let bytes = serde_json::to_vec(&doc)?;
            table.insert((cluster.as_str(), name.as_str()), bytes.as_slice())?;
            Ok(doc)
        })
        .await
    }
}

fn writer_loop(db: Arc<Database>, mut rx: mpsc::Receiver<WriteOp>) {
    // Ops queued behind a failed op never ran: they go into the next transaction.
    let mut carry: Vec<WriteOp> = vec![];
    loop {
        let mut batch = std::mem::take(&mut carry);
        if batch.is_empty() {
            match rx.blocking_recv() {
                Some(op) => batch.push(op),
                None => break,
            }
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let txn = match db.begin_write() {
            Ok(t) => t,
            Err(e) => {
                // Dropping the ops tells their callers the write was not executed.
                tracing::error!(error = %e, "cannot begin a write transaction");
                continue;
            }
        };
        let mut completions: Vec<Completion> = Vec::with_capacity(batch.len());
        let mut failure: Option<String> = None;
        let mut ops = batch.into_iter();
        for op in ops.by_ref() {
            match std::panic::catch_unwind(AssertUnwindSafe(|| op(&txn))) {
                Ok((completion, failed)) => {
                    completions.push(completion);
                    if failed {
                        failure = Some("a write in this transaction failed".into());
                        break;
                    }
                }
                Err(_) => {
                    failure = Some("a write operation panicked".into());
                    break;
                }
            }
        }
        carry = ops.collect();
        let outcome = match failure {
            Some(msg) => {
                let _ = txn.abort();
                Err(msg)
            }
            None => txn.commit().map_err(|e| e.to_string()),
        };
        if let Err(msg) = &outcome {
            tracing::error!(error = %msg, "write transaction aborted");
        }
        for c in completions {
            c(outcome.clone().map_err(StoreError::Storage));
        }
    }
}

fn open_db(path: &std::path::Path, create: bool) -> Result<Database, OpenError> {
    let mut builder = Database::builder();
    // Verify every page's checksum at open: a damaged file is reported, never trusted.
    builder.set_check_integrity_on_open(true);
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        if create {
            builder.create(path)
        } else {
            builder.open(path)
        }
    }));
    match result {
        Ok(Ok(db)) => {
            // The database holds join tokens: owner only.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| DataDirError::Io {
                    path: path.to_path_buf(),
                    what: "cannot set mode 0600 on the database",
                    source,
                },
            )?;
            Ok(db)
        }
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(OpenError::Locked {
            path: path.to_path_buf(),
        }),
        Ok(Err(e)) => Err(OpenError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
        Err(_) => Err(OpenError::Corrupt {
            path: path.to_path_buf(),
            reason: "the database library panicked while opening it".into(),
        }),
    }
}

fn precheck_read_only(path: &std::path::Path) -> Result<(), OpenError> {
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        Database::builder().open_read_only(path)
    }));
    match result {
        Ok(Ok(ro)) => check_schema(&ro, path),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(OpenError::Locked {
            path: path.to_path_buf(),
        }),
        // Not shut down cleanly (e.g. after a crash): the read-write open repairs it.
        Ok(Err(redb::DatabaseError::RepairAborted)) => Ok(()),
        Ok(Err(e)) => Err(OpenError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
        Err(_) => Err(OpenError::Corrupt {
            path: path.to_path_buf(),
            reason: "the database library panicked while reading it".into(),
        }),
    }
}

fn init_schema(db: &Database, path: &std::path::Path) -> Result<(), OpenError> {
    let corrupt = |e: &dyn std::fmt::Display| OpenError::Corrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let txn = db.begin_write().map_err(|e| corrupt(&e))?;
    {
        let mut meta = txn.open_table(META).map_err(|e| corrupt(&e))?;
        let existing = meta
            .get(META_SCHEMA)
            .map_err(|e| corrupt(&e))?
            .map(|v| v.value());
        match existing {
            Some(v) if v != SCHEMA_VERSION => {
                return Err(OpenError::SchemaMismatch {
                    path: path.to_path_buf(),
                    found: v,
                })
            }
            Some(_) => {}
            None => {
                meta.insert(META_SCHEMA, SCHEMA_VERSION)
                    .map_err(|e| corrupt(&e))?;
                meta.insert(META_FENCING, 0).map_err(|e| corrupt(&e))?;
            }
        }
        txn.open_table(CLUSTERS).map_err(|e| corrupt(&e))?;
        txn.open_table(NODES).map_err(|e| corrupt(&e))?;
        txn.open_table(DOCS).map_err(|e| corrupt(&e))?;
    }
    txn.commit().map_err(|e| corrupt(&e))
}

fn check_schema(db: &impl ReadableDatabase, path: &std::path::Path) -> Result<(), OpenError> {
    let corrupt = |reason: String| OpenError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let txn = db.begin_read().map_err(|e| corrupt(e.to_string()))?;
    let meta = txn
        .open_table(META)
        .map_err(|e| corrupt(format!("no swarm-coordinator metadata ({e})")))?;
    let version = meta
        .get(META_SCHEMA)
        .map_err(|e| corrupt(e.to_string()))?
        .map(|v| v.value())
        .ok_or_else(|| corrupt("no schema version recorded".into()))?;
    if version != SCHEMA_VERSION {
        return Err(OpenError::SchemaMismatch {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let missing =
        |name: &str, e: redb::TableError| corrupt(format!("table {name:?} is unreadable: {e}"));
    txn.open_table(CLUSTERS)
        .map_err(|e| missing("clusters", e))?;
    txn.open_table(NODES).map_err(|e| missing("nodes", e))?;
    txn.open_table(DOCS).map_err(|e| missing("docs", e))?;
    Ok(())
}

fn clamp_ttl(ttl_ms: u64) -> u64 {
    ttl_ms.clamp(
        MIN_LEASE_TTL.as_millis() as u64,
        MAX_LEASE_TTL.as_millis() as u64,
    )
}

fn next_fencing_token(txn: &WriteTransaction) -> Result<u64, StoreError> {
    let mut meta = txn.open_table(META)?;
    let last = meta.get(META_FENCING)?.map(|v| v.value()).unwrap_or(0);
    let next = last + 1;
    meta.insert(META_FENCING, next)?;
    Ok(next)
}

fn cluster_in(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Option<ClusterRecord>, StoreError> {
    Ok(match table.get(name)? {
        Some(v) => Some(serde_json::from_slice(v.value())?),
        None => None,
    })
}

fn get_cluster(txn: &WriteTransaction, name: &str) -> Result<Option<ClusterRecord>, StoreError> {
    cluster_in(&txn.open_table(CLUSTERS)?, name)
}

fn get_cluster_r(txn: &ReadTransaction, name: &str) -> Result<Option<ClusterRecord>, StoreError> {
    cluster_in(&txn.open_table(CLUSTERS)?, name)
}

fn put_cluster(txn: &WriteTransaction, rec: &ClusterRecord) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(rec)?;
    txn.open_table(CLUSTERS)?
        .insert(rec.name.as_str(), bytes.as_slice())?;
    Ok(())
}

fn node_in(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    cluster: &str,
    node_id: &str,
) -> Result<Option<NodeRecord>, StoreError> {
    Ok(match table.get((cluster, node_id))? {
        Some(v) => Some(serde_json::from_slice(v.value())?),
        None => None,
    })
}

fn get_node(
    txn: &WriteTransaction,
    cluster: &str,
    node_id: &str,
) -> Result<Option<NodeRecord>, StoreError> {
    node_in(&txn.open_table(NODES)?, cluster, node_id)
}

fn get_node_r(
    txn: &ReadTransaction,
    cluster: &str,
    node_id: &str,
) -> Result<Option<NodeRecord>, StoreError> {
    node_in(&txn.open_table(NODES)?, cluster, node_id)
}

fn put_node(txn: &WriteTransaction, cluster: &str, node: &NodeRecord) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(node)?;
    txn.open_table(NODES)?
        .insert((cluster, node.node_id.as_str()), bytes.as_slice())?;
    Ok(())
}

fn collect_nodes(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    cluster: &str,
) -> Result<Vec<NodeInfo>, StoreError> {
    let mut out = vec![];
    for entry in table.range((cluster, "")..)? {
        let (k, v) = entry?;
        if k.value().0 != cluster {
            break;
        }
        let node: NodeRecord = serde_json::from_slice(v.value())?;
        out.push(node.into());
    }
    Ok(out)
}

fn list_nodes(txn: &ReadTransaction, cluster: &str) -> Result<Vec<NodeInfo>, StoreError> {
    collect_nodes(&txn.open_table(NODES)?, cluster)
}

/// Record and apply a reset: no formation, no lease, no node registrations.
fn reset_in(
    txn: &WriteTransaction,
    mut rec: ClusterRecord,
    by: String,
    reason: String,
) -> Result<ClusterStatus, StoreError> {
    let now = now_ms();
    rec.reset_log.push(ResetRecord {
        at_ms: now,
        previous_swarm_id: rec.formed.as_ref().map(|f| f.swarm_id.clone()),
        by,
        reason,
    });
    rec.resets += 1;
    rec.formed = None;
    rec.lease = None;
    {
        let mut table = txn.open_table(NODES)?;
        let ids: Vec<String> = collect_nodes(&table, &rec.name)?
            .into_iter()
            .map(|n| n.node_id)
            .collect();
        for id in &ids {
            table.remove((rec.name.as_str(), id.as_str()))?;
        }
    }
    rec.node_count = 0;
    rec.manager_count = 0;
    put_cluster(txn, &rec)?;
    Ok(status_of(&rec, vec![], now))
}

fn status_of(rec: &ClusterRecord, nodes: Vec<NodeInfo>, now: u64) -> ClusterStatus {
    ClusterStatus {
        name: rec.name.clone(),
        phase: rec.phase(now),
        target_managers: rec.target_managers,
        lease: rec.wire_lease(now),
        swarm_id: rec.formed.as_ref().map(|f| f.swarm_id.clone()),
        ca_digest: rec.formed.as_ref().map(|f| f.ca_digest.clone()),
        manager_addrs: rec
            .formed
            .as_ref()
            .map(|f| f.manager_addrs.clone())
            .unwrap_or_default(),
        nodes,
        formed_at_ms: rec.formed.as_ref().map(|f| f.formed_at_ms),
        resets: rec.resets,
    }
}

fn validate_node_id(id: &str) -> Result<(), StoreError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "invalid node_id {id:?}: use 1-128 characters of A-Z, a-z, 0-9, '-', '_', '.', ':'"
        )))
    }
}

fn validate_text(field: &str, value: &str, max: usize) -> Result<(), StoreError> {
    if value.is_empty() || value.len() > max || value.chars().any(|c| c.is_control()) {
        return Err(StoreError::Invalid(format!(
            "invalid {field}: must be 1-{max} characters without control characters"
        )));
    }
    Ok(())
}

fn validate_publish(req: &PublishRequest) -> Result<(), StoreError> {
    validate_node_id(&req.node_id)?;
    validate_text("swarm_id", &req.swarm_id, 128)?;
    let digest_ok = req
        .ca_digest
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if !digest_ok {
        return Err(StoreError::Invalid(
            "invalid ca_digest: expected sha256:<64 hex digits> of the swarm root CA (DER)".into(),
        ));
    }
    if req.manager_addrs.is_empty() || req.manager_addrs.len() > 64 {
        return Err(StoreError::Invalid(
            "manager_addrs must list 1-64 manager addresses (ip:2377)".into(),
        ));
    }
    for a in &req.manager_addrs {
        validate_text("manager_addrs entry", a, 255)?;
    }
    for (field, token) in [
        ("manager_token", &req.manager_token),
        ("worker_token", &req.worker_token),
    ] {
        if token.is_empty() || token.expose().len() > 512 {
            return Err(StoreError::Invalid(format!(
                "invalid {field}: must be a non-empty join token"
            )));
        }
    }
    Ok(())
}
