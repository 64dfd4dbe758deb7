//! Crash-safe storage in one redb file: the coordinator's backend of the rendezvous rulebook
//! (`swarmstrap_wire::rules`, whose module docs define every rule and this storage contract).
//!
//! Every write runs on a single writer thread that groups the queued operations into one write
//! transaction and commits it with immediate durability (fsync) before any of them is
//! acknowledged ("group commit": one fsync for many requests). Reads use redb's MVCC read
//! transactions directly.
//!
//! The store decides nothing. Each write reads, inside the write transaction, what its rule
//! needs (the cluster's [`ClusterState`], the one node record, the one document), calls the
//! rule, and stores the [`Change`] it returns: the state into CLUSTERS, upserted nodes into
//! NODES (one row per node, so 10,000 agents cost one small row each), `removed_nodes` and
//! `clear_nodes` as the removal of those / all of the cluster's NODES rows, a document into
//! DOCS. A refusal stores nothing. The rules that judge every registration (sync, adopt) read
//! all of the cluster's NODES rows inside the same transaction. Concurrent requests
//! are serialized by the single writer, not by in-memory locks; nothing the server needs
//! survives only in memory.

use crate::datadir::{DataDir, DataDirError, DirState, MarkerState};
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use swarmstrap_wire::rules::{self, Change, ClusterState, Code, Outcome, RuleError};
use swarmstrap_wire::{
    AdoptRequest, AdoptResponse, ClaimResponse, ClusterStatus, Document, DocumentWrite,
    JoinResponse, NodeInfo, Phase, PublishRequest, RegisterRequest, RegisterResponse, RenewRequest,
    ResetRequest, Secret, SyncRequest, SyncResponse,
};
use tokio::sync::{mpsc, oneshot};

/// Schema version of the tables below. Bump it (and write a migration) on any change.
///
/// 2: fencing tokens are counted per cluster (`ClusterState::last_fencing_token`, kept by the
/// rulebook); schema 1 had one global counter in META. [`Store::open`] migrates a schema-1
/// database once (see [`migrate_v1`]); a binary that only knows schema 1 refuses a schema-2
/// database instead of handing out tokens from a counter that stopped counting.
pub const SCHEMA_VERSION: u64 = 2;
/// The oldest schema [`Store::open`] migrates instead of refusing.
const OLDEST_MIGRATABLE: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// cluster name → ClusterRecord (JSON)
const CLUSTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("clusters");
/// (cluster, node_id) → NodeInfo (JSON)
const NODES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("nodes");
/// (cluster, doc name) → Document (JSON)
const DOCS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("docs");

const META_SCHEMA: &str = "schema_version";
/// Schema 1 only: the last fencing token handed out in any cluster. The migration to schema 2
/// folds it into every cluster's `last_fencing_token` and removes it.
const META_FENCING_V1: &str = "fencing_counter";
const META_PROBE: &str = "ready_probe_ms";

/// Init lease bounds, as the rulebook clamps them (for callers that want a `Duration`).
pub const MIN_LEASE_TTL: Duration = Duration::from_millis(rules::MIN_LEASE_TTL_MS);
pub const MAX_LEASE_TTL: Duration = Duration::from_millis(rules::MAX_LEASE_TTL_MS);

/// At most this many queued writes share one transaction.
const MAX_BATCH: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A refusal: by a rule of the rulebook, or an unknown / already existing cluster. Its
    /// [`Code`] has one wire spelling and one HTTP status (`swarmstrap_wire::rules::Code`).
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error("storage error: {0}")]
    Storage(String),
    #[error("the store is shut down")]
    Closed,
}

impl StoreError {
    fn storage(e: impl std::fmt::Display) -> Self {
        StoreError::Storage(e.to_string())
    }

    fn unknown_cluster(name: &str) -> Self {
        RuleError::new(Code::UnknownCluster, format!("unknown cluster {name:?}")).into()
    }

    fn cluster_exists(name: &str) -> Self {
        RuleError::new(
            Code::ClusterExists,
            format!("cluster {name:?} already exists"),
        )
        .into()
    }

    /// The refusal's code, or None for a storage failure.
    pub fn code(&self) -> Option<Code> {
        match self {
            StoreError::Rule(e) => Some(e.code),
            StoreError::Storage(_) | StoreError::Closed => None,
        }
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
         {OLDEST_MIGRATABLE} to {SCHEMA_VERSION}. Run the swarm-coordinator version that wrote it \
         (nothing was changed)"
    )]
    SchemaMismatch { path: PathBuf, found: u64 },
    #[error(
        "cannot migrate the database {path} from schema version {from} to {SCHEMA_VERSION}: \
         {reason}. Nothing was changed (the migration is one transaction); restore it from a \
         backup or run the swarm-coordinator version that wrote it"
    )]
    Migration {
        path: PathBuf,
        from: u64,
        reason: String,
    },
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

/// A stored cluster: the rulebook's state plus what only the coordinator keeps. `flatten`
/// keeps the layout of schema 1, whose fields were exactly these, so old records load as they
/// are (`last_fencing_token` defaults to 0 and is set by the migration).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ClusterRecord {
    #[serde(flatten)]
    state: ClusterState,
    /// hex sha256 of the join secret; the secret itself is never stored.
    secret_sha256: String,
    #[serde(default)]
    created_at_ms: u64,
}

/// Only the secret digest of a [`ClusterRecord`] (every authenticated request reads it: the
/// rest of the record is skipped, not parsed).
#[derive(Deserialize)]
struct SecretOnly {
    secret_sha256: String,
}

/// The result of a write: the rule's answer, and whether its change had to be stored
/// (`changed` is `!change.is_empty()`: something watchers care about may have changed).
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
    /// recognize: a foreign, corrupt or newer data dir is an error that names the file. An
    /// older schema it knows is migrated once, in one transaction.
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
                upgrade(&db, &path)?;
                dir.write_marker(MarkerState::Ready)?;
                db
            }
            DirState::Ready => {
                // Check read-only first, so a damaged or foreign file is reported untouched (the
                // read-write open verifies checksums and commits).
                precheck_read_only(&path)?;
                let db = open_db(&path, false)?;
                upgrade(&db, &path)?;
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

    pub fn path(&self) -> &Path {
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

    /// Create a cluster. `await_adoption`: it is the re-created cluster of a running swarm
    /// (`cluster create --adopt`), so it refuses init claims until that swarm adopts it
    /// (`rules::set_adoption_hold`).
    /// `operator_sha256` is `rules::credential_sha256` of the cluster's operator credential
    /// (only the digest is stored; it resets the cluster: `rules::check_operator`).
    pub async fn create_cluster(
        &self,
        name: String,
        target_managers: u8,
        secret_sha256: [u8; 32],
        await_adoption: bool,
        operator_sha256: String,
    ) -> Result<ClusterStatus, StoreError> {
        let mut state = ClusterState::new(&name, target_managers)?;
        state.operator_sha256 = Some(operator_sha256);
        if await_adoption {
            if let Some(held) = rules::set_adoption_hold(&state, true)?.change.state {
                state = held;
            }
        }
        self.write(move |txn| {
            if get_cluster(txn, &name)?.is_some() {
                return Err(StoreError::cluster_exists(&name));
            }
            let now = now_ms();
            let rec = ClusterRecord {
                state,
                secret_sha256: hex::encode(secret_sha256),
                created_at_ms: now,
            };
            put_cluster(txn, &rec)?;
            Ok(rules::status(&rec.state, vec![], now))
        })
        .await
    }

    /// sha256 of the cluster's join secret, or None for an unknown cluster.
    pub fn cluster_secret_hash(&self, name: &str) -> Result<Option<[u8; 32]>, StoreError> {
        self.read(|txn| {
            let table = txn.open_table(CLUSTERS)?;
            let Some(v) = table.get(name)? else {
                return Ok(None);
            };
            let rec: SecretOnly = serde_json::from_slice(v.value())?;
            let mut out = [0u8; 32];
            hex::decode_to_slice(&rec.secret_sha256, &mut out)
                .map_err(|e| StoreError::Storage(format!("bad secret hash of {name:?}: {e}")))?;
            Ok(Some(out))
        })
    }

    pub fn status(&self, name: &str) -> Result<ClusterStatus, StoreError> {
        self.read(|txn| {
            let rec = get_cluster_r(txn, name)?.ok_or_else(|| StoreError::unknown_cluster(name))?;
            let nodes = list_nodes(txn, name)?;
            Ok(rules::status(&rec.state, nodes, now_ms()))
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
                let nodes = list_nodes(txn, &rec.state.name)?;
                out.push(rules::status(&rec.state, nodes, now));
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

    /// Operator reset (`rules::admin_reset`).
    pub async fn reset(&self, name: String) -> Result<ClusterStatus, StoreError> {
        self.write(move |txn| {
            let rec = read_cluster(txn, &name)?;
            let outcome = rules::admin_reset(&rec.state, now_ms());
            Ok(store_outcome(txn, &name, Some(rec), outcome)?.value)
        })
        .await
    }

    /// Refuse a wrong node credential before the write is queued: a node id registered with
    /// a credential and presented with another one is refused from a read transaction, so a
    /// flood of bad credentials never reaches the single writer. The rule checks again (and
    /// decides everything else) inside the write transaction.
    fn precheck_node(
        &self,
        cluster: &str,
        node_id: &str,
        presented: Option<&Secret>,
    ) -> Result<(), StoreError> {
        self.read(|txn| {
            let Some(rec) = get_cluster_r(txn, cluster)? else {
                return Err(StoreError::unknown_cluster(cluster));
            };
            let node = node_in(&txn.open_table(NODES)?, cluster, node_id)?;
            if node.as_ref().is_some_and(|n| n.credential_sha256.is_some()) {
                rules::authenticate(&rec.state, node.as_ref(), node_id, presented)?;
            }
            Ok(())
        })
    }

    /// The credential a registration or adoption in `cluster` binds a new node id to
    /// ([`issue`]).
    fn issue(&self, cluster: &str, presented: Option<&Secret>) -> Result<Secret, StoreError> {
        let join = match presented {
            Some(_) => self.cluster_secret_hash(cluster)?,
            None => None,
        };
        Ok(issue(presented, join))
    }

    /// `swarm-agent recover` (`rules::check_operator`, then `rules::recover`): only with the
    /// cluster's operator credential.
    pub async fn recover(
        &self,
        cluster: String,
        req: ResetRequest,
        operator: Option<Secret>,
    ) -> Result<ClusterStatus, StoreError> {
        // Malformed input and a wrong operator credential never reach the single writer.
        rules::validate_reset(&req)?;
        self.read(|txn| {
            let rec = get_cluster_r(txn, &cluster)?
                .ok_or_else(|| StoreError::unknown_cluster(&cluster))?;
            Ok(rules::check_operator(&rec.state, operator.as_ref())?)
        })?;
        self.write(move |txn| {
            let rec = read_cluster(txn, &cluster)?;
            rules::check_operator(&rec.state, operator.as_ref())?;
            let outcome = rules::recover(&rec.state, now_ms(), &req)?;
            Ok(store_outcome(txn, &cluster, Some(rec), outcome)?.value)
        })
        .await
    }

    /// `rules::register` with `presented` (the node's credential, when it registers again)
    /// and the credential issued when this registration creates the node id ([`issue`]).
    pub async fn register(
        &self,
        cluster: String,
        req: RegisterRequest,
        presented: Option<Secret>,
    ) -> Result<Written<RegisterResponse>, StoreError> {
        rules::validate_register(&req)?;
        self.precheck_node(&cluster, &req.node_id, presented.as_ref())?;
        let fresh = self.issue(&cluster, presented.as_ref())?;
        self.write(move |txn| {
            let rec = read_cluster(txn, &cluster)?;
            let node = get_node(txn, &cluster, &req.node_id)?;
            let outcome = rules::register(
                &rec.state,
                node.as_ref(),
                now_ms(),
                &req,
                presented.as_ref(),
                &fresh,
            )?;
            store_outcome(txn, &cluster, Some(rec), outcome)
        })
        .await
    }

    /// `rules::claim`: a registered manager, with its credential.
    pub async fn claim(
        &self,
        cluster: String,
        node_id: String,
        ttl_ms: u64,
        presented: Option<Secret>,
    ) -> Result<Written<ClaimResponse>, StoreError> {
        rules::validate_node_id(&node_id)?;
        self.precheck_node(&cluster, &node_id, presented.as_ref())?;
        self.write(move |txn| {
            let rec = read_cluster(txn, &cluster)?;
            let node = get_node(txn, &cluster, &node_id)?;
            let outcome = rules::claim(
                &rec.state,
                node.as_ref(),
                now_ms(),
                &node_id,
                ttl_ms,
                presented.as_ref(),
            )?;
            store_outcome(txn, &cluster, Some(rec), outcome)
        })
        .await
    }

    /// `rules::renew`.
    pub async fn renew(
        &self,
        cluster: String,
        req: RenewRequest,
        presented: Option<Secret>,
    ) -> Result<Written<ClaimResponse>, StoreError> {
        rules::validate_node_id(&req.node_id)?;
        self.precheck_node(&cluster, &req.node_id, presented.as_ref())?;
        self.write(move |txn| {
            let rec = read_cluster(txn, &cluster)?;
            let node = get_node(txn, &cluster, &req.node_id)?;
            let outcome = rules::renew(
                &rec.state,
                node.as_ref(),
                now_ms(),
                &req,
                presented.as_ref(),
            )?;
            store_outcome(txn, &cluster, Some(rec), outcome)
        })
        .await
    }

    /// `rules::publish`; the answer is the phase after it.
    pub async fn publish(
        &self,
        cluster: String,
        req: PublishRequest,
        presented: Option<Secret>,
    ) -> Result<Written<Phase>, StoreError> {
        rules::validate_publish(&req)?;
        self.precheck_node(&cluster, &req.node_id, presented.as_ref())?;
        self.write(move |txn| {
            let rec = read_cluster(txn, &cluster)?;
            let node = get_node(txn, &cluster, &req.node_id)?;
            let outcome = rules::publish(
                &rec.state,
                node.as_ref(),
                now_ms(),
                &req,
                presented.as_ref(),
            )?;
            let w = store_outcome(txn, &cluster, Some(rec), outcome)?;
            Ok(Written {
                value: w.value.phase,
                changed: w.changed,
            })
        })
        .await
    }

    /// `rules::sync`: the raft leader's agent reports the live swarm.
    pub async fn sync(
        &self,
        cluster: String,
        req: SyncRequest,
        presented: Option<Secret>,
    ) -> Result<Written<SyncResponse>, StoreError> {
        rules::validate_sync(&req)?;
        self.precheck_node(&cluster, &req.node_id, presented.as_ref())?;
        self.write(move |txn| {
            let rec = read_cluster(txn, &cluster)?;
            let nodes = nodes_in(&txn.open_table(NODES)?, &cluster)?;
            let outcome = rules::sync(&rec.state, &nodes, now_ms(), &req, presented.as_ref())?;
            store_outcome(txn, &cluster, Some(rec), outcome)
        })
        .await
    }

    /// `rules::adopt`: a running swarm's leader re-forms a cluster that forgot it (with a
    /// fresh credential for a caller the adoption registers).
    pub async fn adopt(
        &self,
        cluster: String,
        req: AdoptRequest,
        presented: Option<Secret>,
    ) -> Result<Written<AdoptResponse>, StoreError> {
        rules::validate_adopt(&req)?;
        self.precheck_node(&cluster, &req.node_id, presented.as_ref())?;
        let fresh = self.issue(&cluster, presented.as_ref())?;
        self.write(move |txn| {
            let rec = read_cluster(txn, &cluster)?;
            let nodes = nodes_in(&txn.open_table(NODES)?, &cluster)?;
            let outcome = rules::adopt(
                &rec.state,
                &nodes,
                now_ms(),
                &req,
                presented.as_ref(),
                &fresh,
            )?;
            store_outcome(txn, &cluster, Some(rec), outcome)
        })
        .await
    }

    /// Replace the cluster's operator credential by the one whose `rules::credential_sha256`
    /// is `operator_sha256` (the operator's `cluster rotate-operator-credential`, on the
    /// coordinator host: a leaked credential, or a cluster created before operator credentials
    /// existed). The old one resets nothing from now on.
    pub async fn set_operator_credential(
        &self,
        cluster: String,
        operator_sha256: String,
    ) -> Result<ClusterStatus, StoreError> {
        self.write(move |txn| {
            let mut rec = read_cluster(txn, &cluster)?;
            rec.state.operator_sha256 = Some(operator_sha256);
            put_cluster(txn, &rec)?;
            let nodes = nodes_in(&txn.open_table(NODES)?, &cluster)?;
            Ok(rules::status(&rec.state, nodes, now_ms()))
        })
        .await
    }

    /// `rules::set_adoption_hold` (the operator's `cluster await-adoption` / `allow-init`);
    /// answers the cluster's status after it.
    pub async fn set_adoption_hold(
        &self,
        cluster: String,
        hold: bool,
    ) -> Result<Written<ClusterStatus>, StoreError> {
        self.write(move |txn| {
            let rec = read_cluster(txn, &cluster)?;
            let outcome = rules::set_adoption_hold(&rec.state, hold)?;
            let after = outcome.change.state.as_ref().unwrap_or(&rec.state).clone();
            let nodes = nodes_in(&txn.open_table(NODES)?, &cluster)?;
            let w = store_outcome(txn, &cluster, Some(rec), outcome)?;
            Ok(Written {
                value: rules::status(&after, nodes, now_ms()),
                changed: w.changed,
            })
        })
        .await
    }

    /// `rules::request_token_rotation` by an operator through the node API (`swarm-agent
    /// rotate-tokens`): only with the cluster's operator credential.
    pub async fn request_token_rotation_by_operator(
        &self,
        cluster: String,
        operator: Option<Secret>,
    ) -> Result<Written<ClusterStatus>, StoreError> {
        self.read(|txn| {
            let rec = get_cluster_r(txn, &cluster)?
                .ok_or_else(|| StoreError::unknown_cluster(&cluster))?;
            Ok(rules::check_operator(&rec.state, operator.as_ref())?)
        })?;
        self.write(move |txn| {
            let rec = read_cluster(txn, &cluster)?;
            rules::check_operator(&rec.state, operator.as_ref())?;
            let outcome = rules::request_token_rotation(&rec.state)?;
            let after = outcome.change.state.as_ref().unwrap_or(&rec.state).clone();
            let nodes = nodes_in(&txn.open_table(NODES)?, &cluster)?;
            let w = store_outcome(txn, &cluster, Some(rec), outcome)?;
            Ok(Written {
                value: rules::status(&after, nodes, now_ms()),
                changed: w.changed,
            })
        })
        .await
    }

    /// `rules::request_token_rotation` (the operator's `cluster rotate-tokens`); answers the
    /// cluster's status after it.
    pub async fn request_token_rotation(
        &self,
        cluster: String,
    ) -> Result<Written<ClusterStatus>, StoreError> {
        self.write(move |txn| {
            let rec = read_cluster(txn, &cluster)?;
            let outcome = rules::request_token_rotation(&rec.state)?;
            let after = outcome.change.state.as_ref().unwrap_or(&rec.state).clone();
            let nodes = nodes_in(&txn.open_table(NODES)?, &cluster)?;
            let w = store_outcome(txn, &cluster, Some(rec), outcome)?;
            Ok(Written {
                value: rules::status(&after, nodes, now_ms()),
                changed: w.changed,
            })
        })
        .await
    }

    /// `rules::join`: what `node_id` needs to join (the token of its role only), once formed;
    /// only with the node's credential.
    pub fn join(
        &self,
        cluster: &str,
        node_id: &str,
        presented: Option<&Secret>,
    ) -> Result<JoinResponse, StoreError> {
        self.read(|txn| {
            let rec =
                get_cluster_r(txn, cluster)?.ok_or_else(|| StoreError::unknown_cluster(cluster))?;
            let node = node_in(&txn.open_table(NODES)?, cluster, node_id)?;
            Ok(rules::join(
                &rec.state,
                node.as_ref(),
                now_ms(),
                node_id,
                presented,
            )?)
        })
    }

    /// The stored document, or `rules::empty_doc()` if it was never written.
    pub fn get_doc(&self, cluster: &str, name: &str) -> Result<Document, StoreError> {
        self.read(|txn| doc_in(&txn.open_table(DOCS)?, cluster, name))
    }

    /// `rules::put_doc` (compare-and-set on the document's own version), written by node
    /// `write.node_id` with its credential `presented`.
    pub async fn put_doc(
        &self,
        cluster: String,
        name: String,
        write: DocumentWrite,
        presented: Option<Secret>,
    ) -> Result<Document, StoreError> {
        self.precheck_node(&cluster, &write.node_id, presented.as_ref())?;
        self.write(move |txn| {
            let rec = read_cluster(txn, &cluster)?;
            let writer = get_node(txn, &cluster, &write.node_id)?;
            let current = doc_in(&txn.open_table(DOCS)?, &cluster, &name)?;
            let outcome = rules::put_doc(
                &rec.state,
                writer.as_ref(),
                &current,
                &name,
                &write,
                presented.as_ref(),
            )?;
            Ok(store_outcome(txn, &cluster, None, outcome)?.value)
        })
        .await
    }
}

/// The credential a registration (or adoption) binds a new node id to: the one the caller
/// offers in its credential header when it is a strong one ([`OFFERED_CREDENTIAL_MIN`]..256
/// printable characters, e.g. 32 random bytes hex encoded that the agent made and keeps before
/// registering), else 32 fresh bytes from the OS RNG. An offered credential makes the first
/// registration idempotent: when its answer is lost after the write committed, the retry
/// presents the same credential and is accepted, where a server-made one would be lost with
/// the answer and lock the node out of its id. For a node id that already holds a credential,
/// the presented one is only compared (the rule never re-binds it).
///
/// An offer equal to the cluster's join secret is never taken (every node holds that).
pub fn issue(presented: Option<&Secret>, join_secret_sha256: Option<[u8; 32]>) -> Secret {
    match presented {
        Some(p)
            if (OFFERED_CREDENTIAL_MIN..=crate::auth::MAX_SECRET_LEN)
                .contains(&p.expose().len())
                && p.expose().bytes().all(|b| b.is_ascii_graphic())
                && !join_secret_sha256.is_some_and(|d| {
                    crate::auth::digest_eq(&crate::auth::sha256(p.expose().as_bytes()), &d)
                }) =>
        {
            p.clone()
        }
        _ => crate::auth::generate_secret(),
    }
}

/// Shortest credential a node may offer for itself (32 characters: at least 128 bits when it
/// is hex of random bytes; the agent offers 64 hex characters).
pub const OFFERED_CREDENTIAL_MIN: usize = 32;

/// Store a rule's [`Change`] (the backend half of the rulebook's contract) inside the write
/// transaction, and hand back its answer. `rec` is the cluster record the rule read (`None`
/// when it read no state, as a document write).
fn store_outcome<T>(
    txn: &WriteTransaction,
    cluster: &str,
    rec: Option<ClusterRecord>,
    outcome: Outcome<T>,
) -> Result<Written<T>, StoreError> {
    let Outcome { answer, change } = outcome;
    let changed = !change.is_empty();
    let Change {
        state,
        nodes,
        removed_nodes,
        clear_nodes,
        doc,
    } = change;
    if let Some(state) = state {
        let mut rec = rec.ok_or_else(|| {
            StoreError::Storage(format!(
                "internal error: a rule changed the state of cluster {cluster:?} without reading it"
            ))
        })?;
        rec.state = state;
        put_cluster(txn, &rec)?;
    }
    if clear_nodes || !nodes.is_empty() || !removed_nodes.is_empty() {
        let mut table = txn.open_table(NODES)?;
        if clear_nodes {
            let mut ids = vec![];
            for entry in table.range((cluster, "")..)? {
                let (k, _) = entry?;
                let (c, id) = k.value();
                if c != cluster {
                    break;
                }
                ids.push(id.to_string());
            }
            for id in &ids {
                table.remove((cluster, id.as_str()))?;
            }
        }
        for id in &removed_nodes {
            table.remove((cluster, id.as_str()))?;
        }
        for node in &nodes {
            let bytes = serde_json::to_vec(node)?;
            table.insert((cluster, node.node_id.as_str()), bytes.as_slice())?;
        }
    }
    if let Some((name, doc)) = doc {
        let bytes = serde_json::to_vec(&doc)?;
        txn.open_table(DOCS)?
            .insert((cluster, name.as_str()), bytes.as_slice())?;
    }
    Ok(Written {
        value: answer,
        changed,
    })
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

fn open_db(path: &Path, create: bool) -> Result<Database, OpenError> {
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

fn precheck_read_only(path: &Path) -> Result<(), OpenError> {
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        Database::builder().open_read_only(path)
    }));
    match result {
        Ok(Ok(ro)) => check_schema(&ro, path).map(|_| ()),
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

/// Create the tables and record the schema version in a new database; refuse a version this
/// binary does not know.
fn init_schema(db: &Database, path: &Path) -> Result<(), OpenError> {
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
            Some(v) if !(OLDEST_MIGRATABLE..=SCHEMA_VERSION).contains(&v) => {
                return Err(OpenError::SchemaMismatch {
                    path: path.to_path_buf(),
                    found: v,
                })
            }
            // An older schema is migrated by `upgrade` right after.
            Some(_) => {}
            None => {
                meta.insert(META_SCHEMA, SCHEMA_VERSION)
                    .map_err(|e| corrupt(&e))?;
            }
        }
        txn.open_table(CLUSTERS).map_err(|e| corrupt(&e))?;
        txn.open_table(NODES).map_err(|e| corrupt(&e))?;
        txn.open_table(DOCS).map_err(|e| corrupt(&e))?;
    }
    txn.commit().map_err(|e| corrupt(&e))
}

/// The schema version of a database this binary can open (current or migratable).
fn check_schema(db: &impl ReadableDatabase, path: &Path) -> Result<u64, OpenError> {
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
    if !(OLDEST_MIGRATABLE..=SCHEMA_VERSION).contains(&version) {
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
    Ok(version)
}

/// Check the schema of an opened (read-write) database and migrate an older one.
fn upgrade(db: &Database, path: &Path) -> Result<(), OpenError> {
    match check_schema(db, path)? {
        SCHEMA_VERSION => Ok(()),
        1 => migrate_v1(db, path),
        found => Err(OpenError::SchemaMismatch {
            path: path.to_path_buf(),
            found,
        }),
    }
}

/// Schema 1 → 2, once, in one transaction. Schema 1 counted fencing tokens globally (META
/// `fencing_counter`); the rulebook counts per cluster (`last_fencing_token`). Every cluster
/// continues above `max(its own, the global counter)`, so no token handed out before is ever
/// handed out again; the global counter is removed (nothing bumps it any more).
fn migrate_v1(db: &Database, path: &Path) -> Result<(), OpenError> {
    let fail = |e: &dyn std::fmt::Display| OpenError::Migration {
        path: path.to_path_buf(),
        from: 1,
        reason: e.to_string(),
    };
    let txn = db.begin_write().map_err(|e| fail(&e))?;
    let (clusters, counter) = {
        let mut meta = txn.open_table(META).map_err(|e| fail(&e))?;
        let counter = meta
            .remove(META_FENCING_V1)
            .map_err(|e| fail(&e))?
            .map(|v| v.value())
            .unwrap_or(0);
        meta.insert(META_SCHEMA, SCHEMA_VERSION)
            .map_err(|e| fail(&e))?;
        let mut table = txn.open_table(CLUSTERS).map_err(|e| fail(&e))?;
        let mut records = vec![];
        for entry in table.iter().map_err(|e| fail(&e))? {
            let (_, v) = entry.map_err(|e| fail(&e))?;
            let rec: ClusterRecord = serde_json::from_slice(v.value()).map_err(|e| fail(&e))?;
            records.push(rec);
        }
        let n = records.len();
        for mut rec in records {
            rec.state.last_fencing_token = rec.state.last_fencing_token.max(counter);
            let bytes = serde_json::to_vec(&rec).map_err(|e| fail(&e))?;
            table
                .insert(rec.state.name.as_str(), bytes.as_slice())
                .map_err(|e| fail(&e))?;
        }
        (n, counter)
    };
    txn.commit().map_err(|e| fail(&e))?;
    tracing::info!(
        db = %path.display(),
        clusters,
        fencing_counter = counter,
        "migrated the database from schema 1 to 2: fencing tokens are counted per cluster, each continuing above the old global counter"
    );
    Ok(())
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

/// The cluster a write is about, or `unknown_cluster`.
fn read_cluster(txn: &WriteTransaction, name: &str) -> Result<ClusterRecord, StoreError> {
    get_cluster(txn, name)?.ok_or_else(|| StoreError::unknown_cluster(name))
}

fn put_cluster(txn: &WriteTransaction, rec: &ClusterRecord) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(rec)?;
    txn.open_table(CLUSTERS)?
        .insert(rec.state.name.as_str(), bytes.as_slice())?;
    Ok(())
}

fn node_in(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    cluster: &str,
    node_id: &str,
) -> Result<Option<NodeInfo>, StoreError> {
    Ok(match table.get((cluster, node_id))? {
        Some(v) => Some(serde_json::from_slice(v.value())?),
        None => None,
    })
}

fn get_node(
    txn: &WriteTransaction,
    cluster: &str,
    node_id: &str,
) -> Result<Option<NodeInfo>, StoreError> {
    node_in(&txn.open_table(NODES)?, cluster, node_id)
}

fn list_nodes(txn: &ReadTransaction, cluster: &str) -> Result<Vec<NodeInfo>, StoreError> {
    nodes_in(&txn.open_table(NODES)?, cluster)
}

/// Every node row of `cluster`.
fn nodes_in(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    cluster: &str,
) -> Result<Vec<NodeInfo>, StoreError> {
    let mut out = vec![];
    for entry in table.range((cluster, "")..)? {
        let (k, v) = entry?;
        if k.value().0 != cluster {
            break;
        }
        out.push(serde_json::from_slice(v.value())?);
    }
    Ok(out)
}

fn doc_in(
    table: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    cluster: &str,
    name: &str,
) -> Result<Document, StoreError> {
    Ok(match table.get((cluster, name))? {
        Some(v) => serde_json::from_slice(v.value())?,
        None => rules::empty_doc(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmstrap_wire::RequestedRole;

    fn register_req(node: &str) -> RegisterRequest {
        RegisterRequest {
            node_id: node.into(),
            hostname: format!("host-{node}"),
            advertise_addr: "198.18.0.1".into(),
            role: RequestedRole::Auto,
            joined_through: None,
            labels: None,
        }
    }

    /// Register `node` in `cluster`; its credential.
    async fn reg(store: &Store, cluster: &str, node: &str) -> Secret {
        store
            .register(cluster.into(), register_req(node), None)
            .await
            .unwrap()
            .value
            .credential
            .expect("a new registration is issued a credential")
    }

    const OP: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn record(store: &Store, name: &str) -> ClusterRecord {
        store
            .read(|txn| get_cluster_r(txn, name))
            .unwrap()
            .expect("the cluster exists")
    }

    /// A data dir holding a schema-1 database as the previous release wrote it: the global
    /// fencing counter at 41, cluster `old` with an expired lease under token 41 and one node,
    /// cluster `other` that never had a lease.
    fn schema_1_data_dir(root: &Path) -> DataDir {
        let dd = DataDir::new(root.join("data"));
        dd.create().unwrap();
        dd.write_marker(MarkerState::Initializing).unwrap();
        let db = Database::create(dd.db_path()).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert(META_SCHEMA, 1).unwrap();
            meta.insert(META_FENCING_V1, 41).unwrap();
            let mut clusters = txn.open_table(CLUSTERS).unwrap();
            let secret = "ab".repeat(32);
            let old = serde_json::json!({
                "name": "old", "secret_sha256": secret, "target_managers": 3,
                "created_at_ms": 1, "node_count": 1, "manager_count": 1,
                "lease": {"holder": "a", "fencing_token": 41, "granted_at_ms": 1, "expires_at_ms": 2},
                "formed": null, "resets": 0, "reset_log": []
            });
            let other = serde_json::json!({
                "name": "other", "secret_sha256": secret, "target_managers": 1,
                "created_at_ms": 1, "node_count": 0, "manager_count": 0,
                "lease": null, "formed": null, "resets": 0, "reset_log": []
            });
            for (name, v) in [("old", old), ("other", other)] {
                let bytes = serde_json::to_vec(&v).unwrap();
                clusters.insert(name, bytes.as_slice()).unwrap();
            }
            let mut nodes = txn.open_table(NODES).unwrap();
            let a = serde_json::json!({
                "node_id": "a", "hostname": "host-a", "advertise_addr": "198.18.0.1",
                "requested": "auto", "role": "manager", "registered_at_ms": 1
            });
            let bytes = serde_json::to_vec(&a).unwrap();
            nodes.insert(("old", "a"), bytes.as_slice()).unwrap();
            txn.open_table(DOCS).unwrap();
        }
        txn.commit().unwrap();
        drop(db);
        dd.write_marker(MarkerState::Ready).unwrap();
        dd
    }

    #[tokio::test]
    async fn schema_1_is_migrated_once_and_no_fencing_token_is_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let dd = schema_1_data_dir(tmp.path());
        let store = Store::open(&dd, OpenMode::MustExist).expect("a schema-1 database opens");
        {
            let txn = store.db.begin_read().unwrap();
            let meta = txn.open_table(META).unwrap();
            assert_eq!(meta.get(META_SCHEMA).unwrap().unwrap().value(), 2);
            assert!(
                meta.get(META_FENCING_V1).unwrap().is_none(),
                "the global counter is gone"
            );
        }
        for name in ["old", "other"] {
            assert_eq!(record(&store, name).state.last_fencing_token, 41, "{name}");
        }
        // The old record loads as it was written.
        let st = store.status("old").unwrap();
        assert_eq!(st.nodes.len(), 1);
        assert_eq!(st.target_managers, 3);
        assert_eq!(store.cluster_secret_hash("old").unwrap(), Some([0xab; 32]));

        // A registration from before credentials existed claims nothing until it registers
        // again (and is bound to the credential that answer carries).
        let err = store
            .claim("old".into(), "a".into(), 30_000, None)
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), Some(Code::BadNodeCredential));
        let w = store
            .register("old".into(), register_req("a"), None)
            .await
            .unwrap();
        let a = w.value.credential.expect("bound to a credential");
        // The expired lease is taken over, and both clusters continue above the old counter.
        let w = store
            .claim("old".into(), "a".into(), 30_000, Some(a))
            .await
            .unwrap();
        assert!(w.value.granted && w.changed);
        assert_eq!(w.value.lease.unwrap().fencing_token, 42);
        let x = reg(&store, "other", "x").await;
        let w = store
            .claim("other".into(), "x".into(), 30_000, Some(x))
            .await
            .unwrap();
        assert_eq!(w.value.lease.unwrap().fencing_token, 42);
        // A new cluster counts on its own.
        store
            .create_cluster("new".into(), 1, [1; 32], false, OP.into())
            .await
            .unwrap();
        let n = reg(&store, "new", "n").await;
        let w = store
            .claim("new".into(), "n".into(), 30_000, Some(n))
            .await
            .unwrap();
        assert_eq!(w.value.lease.unwrap().fencing_token, 1);

        // Reopening does not migrate again (the per-cluster counters are kept).
        drop(store);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let store = loop {
            match Store::open(&dd, OpenMode::MustExist) {
                Ok(s) => break s,
                // The writer thread of the dropped handle closes the database a moment later.
                Err(OpenError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    tokio::task::yield_now().await
                }
                Err(e) => panic!("reopen: {e}"),
            }
        };
        assert_eq!(record(&store, "old").state.last_fencing_token, 42);
        assert_eq!(record(&store, "new").state.last_fencing_token, 1);
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dd = schema_1_data_dir(tmp.path());
        {
            let db = Database::open(dd.db_path()).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(META_SCHEMA, SCHEMA_VERSION + 1)
                .unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(&dd, OpenMode::MustExist).err().unwrap();
        assert!(
            matches!(err, OpenError::SchemaMismatch { found, .. } if found == SCHEMA_VERSION + 1),
            "{err}"
        );
    }

    #[tokio::test]
    async fn reset_clears_only_its_own_clusters_nodes_and_bounds_the_log() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&DataDir::new(tmp.path()), OpenMode::CreateIfMissing).unwrap();
        let mut creds = std::collections::HashMap::new();
        for c in ["a", "b", "c"] {
            store
                .create_cluster(c.into(), 3, [2; 32], false, OP.into())
                .await
                .unwrap();
            for n in ["n1", "n2", "n3"] {
                let w = store
                    .register(c.into(), register_req(n), None)
                    .await
                    .unwrap();
                assert!(w.changed);
                creds.insert((c, n), w.value.credential.unwrap());
            }
        }
        // Registering again unchanged writes nothing (and needs the node's credential).
        let err = store
            .register("b".into(), register_req("n1"), None)
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), Some(Code::BadNodeCredential));
        let w = store
            .register(
                "b".into(),
                register_req("n1"),
                Some(creds[&("b", "n1")].clone()),
            )
            .await
            .unwrap();
        assert!(!w.changed && w.value.credential.is_none());
        let total = rules::RESET_LOG + 5;
        for _ in 0..total {
            let st = store.reset("b".into()).await.unwrap();
            assert!(st.nodes.is_empty());
        }
        assert!(store.status("b").unwrap().nodes.is_empty());
        assert_eq!(store.status("a").unwrap().nodes.len(), 3);
        assert_eq!(store.status("c").unwrap().nodes.len(), 3);
        assert_eq!(store.counts().unwrap(), (3, 6));
        let b = record(&store, "b").state;
        assert_eq!(b.resets, total as u64);
        assert_eq!(
            b.reset_log.len(),
            rules::RESET_LOG,
            "the log keeps the last entries"
        );
        assert_eq!((b.node_count, b.manager_count), (0, 0));
    }

    #[tokio::test]
    async fn refusals_and_no_op_answers_write_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&DataDir::new(tmp.path()), OpenMode::CreateIfMissing).unwrap();
        store
            .create_cluster("c".into(), 3, [3; 32], false, OP.into())
            .await
            .unwrap();
        let a = reg(&store, "c", "a").await;
        let b = reg(&store, "c", "b").await;
        let w = store
            .claim("c".into(), "a".into(), 60_000, Some(a.clone()))
            .await
            .unwrap();
        assert!(w.changed);
        let lease = w.value.lease.unwrap();
        let before = record(&store, "c");
        // The holder's re-claim and an early renewal answer the lease as it is.
        let w = store
            .claim("c".into(), "a".into(), 60_000, Some(a.clone()))
            .await
            .unwrap();
        assert!(w.value.granted && !w.changed);
        let renew = RenewRequest {
            node_id: "a".into(),
            fencing_token: lease.fencing_token,
            ttl_ms: 60_000,
        };
        let w = store
            .renew("c".into(), renew.clone(), Some(a.clone()))
            .await
            .unwrap();
        assert!(w.value.granted && !w.changed);
        let err = store
            .renew(
                "c".into(),
                RenewRequest {
                    node_id: "b".into(),
                    ..renew.clone()
                },
                Some(b),
            )
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), Some(Code::LeaseLost));
        // The holder's id with another node's (or no) credential.
        for wrong in [None, Some(Secret::new("x".repeat(64)))] {
            let err = store
                .renew("c".into(), renew.clone(), wrong)
                .await
                .err()
                .unwrap();
            assert_eq!(err.code(), Some(Code::BadNodeCredential));
        }
        assert_eq!(
            record(&store, "c").state,
            before.state,
            "nothing was written"
        );
        let err = store
            .claim("nope".into(), "a".into(), 1, None)
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), Some(Code::UnknownCluster));
        let err = store
            .create_cluster("c".into(), 3, [3; 32], false, OP.into())
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), Some(Code::ClusterExists));
    }

    fn adopt_req(node: &str, swarm: &str) -> AdoptRequest {
        AdoptRequest {
            node_id: node.into(),
            hostname: format!("host-{node}"),
            advertise_addr: "198.18.0.2".into(),
            swarm_id: swarm.into(),
            ca_digest: swarmstrap_wire::format_fingerprint(&[9; 32]),
            manager_addrs: vec!["198.18.0.2:2377".into()],
            manager_token: swarmstrap_wire::Secret::new("SWMTKN-1-m"),
            worker_token: swarmstrap_wire::Secret::new("SWMTKN-1-w"),
            managers: 1,
        }
    }

    /// Sync and adopt store their whole change in one transaction: upserted and removed node
    /// rows (only this cluster's), the state; the adoption hold is stored and survives a reopen.
    #[tokio::test]
    async fn sync_removes_departed_rows_and_the_hold_is_durable() {
        use swarmstrap_wire::{Member, Role};
        let tmp = tempfile::tempdir().unwrap();
        let dd = DataDir::new(tmp.path());
        let store = Store::open(&dd, OpenMode::CreateIfMissing).unwrap();
        store
            .create_cluster("c".into(), 1, [4; 32], false, OP.into())
            .await
            .unwrap();
        store
            .create_cluster("other".into(), 1, [4; 32], false, OP.into())
            .await
            .unwrap();
        let mut a_cred = None;
        for n in ["a", "b", "w"] {
            let c = reg(&store, "c", n).await;
            if n == "a" {
                a_cred = Some(c);
            }
            reg(&store, "other", n).await;
        }
        let a = store
            .adopt("c".into(), adopt_req("a", "s1"), a_cred.clone())
            .await
            .unwrap();
        assert!(a.value.adopted && a.changed);
        let sync = |members: &[(&str, Role)]| SyncRequest {
            node_id: "a".into(),
            swarm_id: "s1".into(),
            manager_addrs: vec!["198.18.0.2:2377".into(), "198.18.0.3:2377".into()],
            managers: 1,
            members: members
                .iter()
                .map(|(id, role)| Member {
                    node_id: id.to_string(),
                    role: *role,
                })
                .collect(),
        };
        let w = store
            .sync(
                "c".into(),
                sync(&[
                    ("a", Role::Manager),
                    ("b", Role::Worker),
                    ("w", Role::Worker),
                ]),
                a_cred.clone(),
            )
            .await
            .unwrap();
        assert!(w.changed && w.value.pruned.is_empty());
        // b left the swarm: its row goes, the other cluster's b stays.
        let w = store
            .sync(
                "c".into(),
                sync(&[("a", Role::Manager), ("w", Role::Worker)]),
                a_cred.clone(),
            )
            .await
            .unwrap();
        assert_eq!(w.value.pruned, vec!["b".to_string()]);
        assert_eq!(store.counts().unwrap(), (2, 5));
        let st = store.status("c").unwrap();
        assert_eq!(st.manager_addrs.len(), 2);
        assert_eq!(st.nodes.len(), 2);
        assert!(st.nodes.iter().all(|n| n.seen_at_ms.is_some()));
        // The same report again writes nothing.
        let w = store
            .sync(
                "c".into(),
                sync(&[("a", Role::Manager), ("w", Role::Worker)]),
                a_cred.clone(),
            )
            .await
            .unwrap();
        assert!(!w.changed);
        // A hold on an unformed cluster, refused on a formed one.
        store
            .create_cluster("held".into(), 3, [4; 32], true, OP.into())
            .await
            .unwrap();
        let err = store
            .set_adoption_hold("c".into(), true)
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), Some(Code::AlreadyFormed));
        let n = reg(&store, "held", "n").await;
        let err = store
            .claim("held".into(), "n".into(), 30_000, Some(n.clone()))
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), Some(Code::AwaitingAdoption));
        drop(store);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let store = loop {
            match Store::open(&dd, OpenMode::MustExist) {
                Ok(s) => break s,
                Err(OpenError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    tokio::task::yield_now().await
                }
                Err(e) => panic!("reopen: {e}"),
            }
        };
        assert!(store.status("held").unwrap().awaiting_adoption);
        assert_eq!(store.status("c").unwrap().adoptions, 1);
        let w = store.set_adoption_hold("held".into(), false).await.unwrap();
        assert!(w.changed && !w.value.awaiting_adoption);
        let w = store.set_adoption_hold("held".into(), false).await.unwrap();
        assert!(!w.changed, "lifting a lifted hold writes nothing");
        let w = store
            .claim("held".into(), "n".into(), 30_000, Some(n))
            .await
            .unwrap();
        assert!(w.value.granted);
    }
}
