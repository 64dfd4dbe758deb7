//! The etcd rendezvous backend: the cluster's state under a key prefix of an etcd cluster the
//! operator already runs (`/swarmstrap/<cluster>/` by default), every decision the rulebook's
//! ([`swarmstrap_wire::rules`]).
//!
//! Key layout (values are JSON; see `etcd/README.md`):
//! - `<prefix>state`: the [`ClusterState`] (lease, fencing counter, formation, counts, resets);
//! - `<prefix>nodes/<bb>`: the registrations ([`swarmstrap_wire::NodeInfo`], a JSON list) whose
//!   node id falls in bucket `bb` of 64 (so one transaction never exceeds etcd's operation
//!   limit, however many registrations it changes);
//! - `<prefix>docs/<name>`: one [`Document`] per named document.
//!
//! Every call reads what its rule needs (the state key with the caller's bucket and a
//! document, or the whole prefix) in one linearizable read (one revision, so a consistent
//! snapshot), runs the rule on it ([`Memory`]) and commits the rule's change in one etcd
//! transaction conditioned on the `mod_revision` of the state key as read (and, for a
//! document write, of the document's key). Every write that touches a registration also
//! rewrites the state key, so the state key's `mod_revision` stands for "nothing the rule read
//! changed": a lost race fails the transaction, and the rule runs again on a fresh read. No
//! lost update, no read-then-write race.
//!
//! Waiting (join info, documents) is an etcd watch on the key concerned, started at the
//! revision after the read that did not answer yet: nothing written in between is missed and
//! nothing is polled.
//!
//! The init lease is the rulebook's own (a fencing token and an expiry in the state key), not
//! an etcd lease: the rulebook lets the holder renew or publish after expiry as long as nobody
//! took over, and keeps the same expiry on a re-claim; an etcd lease deletes its keys when it
//! expires and would change those rules for this backend only.

#[cfg(feature = "testing")]
pub mod testing;

use backon::BackoffBuilder;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    LockOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use swarmstrap_wire::rendezvous::{
    Credentials, Offered, Presenting, Rendezvous, RendezvousError, Result, Snapshot,
};
use swarmstrap_wire::rules::{self, ClusterState, Code, Memory, Outcome, RuleError};
use swarmstrap_wire::{
    AdoptRequest, AdoptResponse, ClaimResponse, ClusterStatus, Document, DocumentWrite,
    JoinResponse, PublishRequest, PublishResponse, RegisterRequest, RegisterResponse, RenewRequest,
    ResetRequest, Secret, SyncRequest, SyncResponse,
};

/// How long one call keeps re-running its rule after lost races before it answers `Transient`.
const CAS_DEADLINE: Duration = Duration::from_secs(30);

/// How long one request is sent again while members cannot be reached (failover).
const FAILOVER_DEADLINE: Duration = Duration::from_secs(10);

/// Each etcd request's own timeout (a member that does not answer is left for another).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the cluster lives and how to reach etcd.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Cluster name (`[a-z0-9-]`, 1–63).
    pub cluster: String,
    pub target_managers: u8,
    /// Client URLs of the etcd members (`https://host:2379`); the client fails over between them.
    pub endpoints: Vec<String>,
    /// Key prefix of this cluster; `None`: `/swarmstrap/<cluster>/`.
    pub prefix: Option<String>,
    /// PEM CA bundle that signed the etcd members' certificates (required for `https://`).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key (etcd `--client-cert-auth`); the key file must be 0600.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// etcd user, and the file holding its password (0600).
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
}

impl std::fmt::Debug for EtcdConfig {
    /// Paths and names only; never a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("cluster", &self.cluster)
            .field("target_managers", &self.target_managers)
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("user", &self.user)
            .field("password_file", &self.password_file)
            .finish()
    }
}

impl EtcdConfig {
    pub fn new(cluster: impl Into<String>, target_managers: u8, endpoints: Vec<String>) -> Self {
        EtcdConfig {
            cluster: cluster.into(),
            target_managers,
            endpoints,
            prefix: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            user: None,
            password_file: None,
        }
    }

    pub fn resolved_prefix(&self) -> String {
        self.prefix
            .clone()
            .unwrap_or_else(|| format!("/swarmstrap/{}/", self.cluster))
    }

    /// Where the manager join token is kept, readable only by the managers' etcd role: the
    /// prefix without its trailing `/`, then `.managers/` (`/swarmstrap/prod.managers/`). It
    /// is outside the shared prefix, so a role that grants the shared prefix does not grant it.
    pub fn managers_prefix(&self) -> String {
        managers_prefix_of(&self.resolved_prefix())
    }

    pub fn validate(&self) -> Result<()> {
        swarmstrap_wire::validate_name(&self.cluster)
            .map_err(|m| rejected("invalid_config", format!("etcd backend: cluster name: {m}")))?;
        if self.endpoints.is_empty() {
            return Err(rejected(
                "invalid_config",
                "etcd backend: no endpoints: give at least one etcd client URL, e.g. \
                 https://10.0.0.5:2379",
            ));
        }
        for e in &self.endpoints {
            let https = e.starts_with("https://");
            if !https && !e.starts_with("http://") {
                return Err(rejected(
                    "invalid_config",
                    format!("etcd endpoint {e:?} must start with https:// (or http:// on a trusted network)"),
                ));
            }
            if https && self.ca_file.is_none() {
                return Err(rejected(
                    "invalid_config",
                    format!("etcd endpoint {e} is https: give the CA file that signed the etcd members' certificates"),
                ));
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(rejected(
                "invalid_config",
                "etcd client certificate and key go together: give both files or neither",
            ));
        }
        if self.user.is_some() != self.password_file.is_some() {
            return Err(rejected(
                "invalid_config",
                "etcd user and password file go together: give both or neither",
            ));
        }
        let prefix = self.resolved_prefix();
        if !prefix.ends_with('/') || prefix.len() < 2 {
            return Err(rejected(
                "invalid_config",
                format!(
                    "etcd key prefix {prefix:?} must end with '/' and not be the whole keyspace"
                ),
            ));
        }
        Ok(())
    }
}

/// `readwrite prefix /a/` or `read [/a, /b)`.
fn describe_permission(p: &etcd_client::Permission) -> String {
    let kind = match p.get_type() {
        0 => "read",
        1 => "write",
        _ => "readwrite",
    };
    let key = String::from_utf8_lossy(p.key()).into_owned();
    let end = p.range_end();
    if end.is_empty() {
        return format!("{kind} key {key}");
    }
    if end == [0] {
        return format!("{kind} from {key}");
    }
    let mut next = p.key().to_vec();
    if let Some(last) = next.last_mut() {
        *last = last.wrapping_add(1);
    }
    if next == end {
        format!("{kind} prefix {key}")
    } else {
        format!("{kind} [{key}, {})", String::from_utf8_lossy(end))
    }
}

fn managers_prefix_of(prefix: &str) -> String {
    format!("{}.managers/", prefix.trim_end_matches('/'))
}

/// Read a secret file (key, password) that must not be readable by group or others.
fn read_secret_file(path: &std::path::Path, what: &str) -> Result<Vec<u8>> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| {
        rejected(
            "invalid_config",
            format!("cannot read the etcd {what} file {}: {e}", path.display()),
        )
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(rejected(
            "invalid_config",
            format!(
                "the etcd {what} file {} has mode {mode:o}: it holds a secret, make it 0600 \
                 (chmod 600 {})",
                path.display(),
                path.display()
            ),
        ));
    }
    std::fs::read(path).map_err(|e| {
        rejected(
            "invalid_config",
            format!("cannot read the etcd {what} file {}: {e}", path.display()),
        )
    })
}

fn read_file(path: &std::path::Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        rejected(
            "invalid_config",
            format!("cannot read the etcd {what} file {}: {e}", path.display()),
        )
    })
}

/// The backend: one etcd client (balanced over the endpoints) per agent.
pub struct EtcdRendezvous {
    client: Client,
    cluster: String,
    target_managers: u8,
    prefix: String,
    endpoints: Vec<String>,
    /// The etcd user and the client certificate file (for error messages), if any.
    user: Option<String>,
    cert_file: Option<PathBuf>,
    credentials: Credentials,
    offered: Offered,
}

/// What a call reads: a rule that judges one node (and one document) reads only their keys and
/// the state key; status, sync, adoption and the operator's calls read every registration.
#[derive(Clone, Copy)]
enum Scope<'a> {
    All,
    Keys {
        node: Option<&'a str>,
        doc: Option<&'a str>,
    },
}

impl<'a> Scope<'a> {
    fn node(id: &'a str) -> Self {
        Scope::Keys {
            node: Some(id),
            doc: None,
        }
    }
}

/// Lost races after which a call queues for a turn (see [`EtcdRendezvous::take_turn`]).
const QUEUE_AFTER_LOST_RACES: u32 = 2;
/// How long a turn lasts at most (seconds): a holder that died stalls the queue this long.
const TURN_TTL_SECS: i64 = 10;

/// A turn at writing the cluster (an etcd lock held by a lease), given back when dropped.
struct Turn {
    client: Client,
    lease: i64,
}

impl Turn {
    /// Revoke the lease in the background, which deletes the lock key (one write; best
    /// effort: the lease ends the turn anyway).
    fn release(client: Client, lease: i64) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = client.lease_client().revoke(lease).await;
            });
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        Turn::release(self.client.clone(), self.lease);
    }
}

/// Registrations are stored in this many keys (`nodes/00`..`nodes/3f`, a JSON list each), so
/// a transaction that changes any number of them has at most this many node operations (etcd
/// refuses more than `--max-txn-ops`, default 128, in one transaction).
const NODE_BUCKETS: u32 = 64;

/// The bucket of a node id: FNV-1a (32 bit) of its bytes, modulo [`NODE_BUCKETS`]. Stored
/// layout: never change it without migrating.
fn bucket_of(id: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % NODE_BUCKETS
}

/// Largest read answer accepted (tonic's default is 4 MiB): every registration of a cluster of
/// 10,000 nodes, with room.
const MAX_READ_BYTES: usize = 64 << 20;

/// One consistent read (one etcd revision) of what a call needs.
struct Read {
    memory: Memory,
    /// The revision the read saw.
    revision: i64,
    /// `mod_revision` of the state key (0: absent).
    state_rev: i64,
    /// `mod_revision` of each document key.
    doc_revs: HashMap<String, i64>,
    /// The node buckets read (every registration in them is in `memory`).
    buckets: Vec<u32>,
}

enum Mutated<T> {
    Unchanged(T),
    Written(T),
}

impl<T> Mutated<T> {
    fn into_inner(self) -> T {
        match self {
            Mutated::Unchanged(t) | Mutated::Written(t) => t,
        }
    }
}

impl EtcdRendezvous {
    /// Connect (lazily: the first call that needs etcd dials). Reads the TLS and password files
    /// now, so a bad path or mode is reported at start.
    pub async fn new(cfg: EtcdConfig) -> Result<Self> {
        cfg.validate()?;
        let mut opts = ConnectOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let mut tls_used = None;
        if let Some(ca) = &cfg.ca_file {
            let mut tls =
                TlsOptions::new().ca_certificate(Certificate::from_pem(read_file(ca, "CA")?));
            if let (Some(c), Some(k)) = (&cfg.cert_file, &cfg.key_file) {
                tls = tls.identity(Identity::from_pem(
                    read_file(c, "client certificate")?,
                    read_secret_file(k, "client key")?,
                ));
            }
            tls_used = Some(tls.clone());
            opts = opts.with_tls(tls);
        }
        if let (Some(user), Some(pw)) = (&cfg.user, &cfg.password_file) {
            let pw = read_secret_file(pw, "password")?;
            let pw = String::from_utf8(pw)
                .map_err(|_| rejected("invalid_config", "the etcd password file is not UTF-8"))?;
            opts = opts
                .with_user(user.clone(), pw.trim_end_matches(['\n', '\r']).to_string())
                .with_auto_token_refresh(true);
        }
        // Connecting logs in (one request): sent again, starting at another endpoint, while no
        // member could be reached, so a dead member among the endpoints does not stop the start.
        let deadline = Instant::now() + FAILOVER_DEADLINE;
        let mut backoff = failover_backoff();
        let mut endpoints = cfg.endpoints.clone();
        let client = loop {
            match Client::connect(&endpoints, Some(opts.clone())).await {
                Ok(c) => break c,
                Err(e) => {
                    // Logging in is idempotent: any transient failure is tried again.
                    let mut e = etcd_error(&cfg.endpoints.join(","), e);
                    if e.is_transient() && cfg.user.is_some() && cfg.ca_file.is_some() {
                        // A refused client certificate shows only as a closed connection
                        // while logging in; one request without logging in names the alert.
                        if let Some(tls) = &tls_used {
                            if let Some(refused) = tls_refusal(&endpoints, tls.clone()).await {
                                e = with_cert_file(refused, cfg.cert_file.as_deref());
                            }
                        }
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if !e.is_transient() || left.is_zero() {
                        return Err(with_cert_file(e, cfg.cert_file.as_deref()));
                    }
                    tracing::debug!("connecting to etcd failed, trying again: {e}");
                    // A new balanced channel sends its first request to the first endpoint
                    // it was given: start the next attempt at the next one.
                    endpoints.rotate_left(1);
                    let d = backoff.next().unwrap_or(Duration::from_secs(1));
                    tokio::time::sleep(d.min(left)).await;
                }
            }
        };
        let backend = EtcdRendezvous {
            client,
            prefix: cfg.resolved_prefix(),
            cluster: cfg.cluster,
            target_managers: cfg.target_managers,
            endpoints: cfg.endpoints,
            user: cfg.user,
            cert_file: cfg.cert_file,
            credentials: Credentials::default(),
            offered: Offered::default(),
        };
        backend.check_access().await?;
        Ok(backend)
    }

    /// One read of the state key (keys only): the TLS set-up, the login and the role's reach
    /// are all checked at start, so a misconfiguration is a permanent error now rather than a
    /// retried failure later. A refusal names the user, its roles and what they grant.
    async fn check_access(&self) -> Result<()> {
        let r = self
            .failover(true, || {
                let mut kv = self.client.kv_client();
                let key = self.state_key();
                async move { kv.get(key, Some(GetOptions::new().with_keys_only())).await }
            })
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(RendezvousError::Unauthorized(detail)) => Err(RendezvousError::Unauthorized(
                format!("{}; {detail}", self.explain_denied(&self.prefix).await),
            )),
            Err(e) => Err(with_cert_file(e, self.cert_file.as_deref())),
        }
    }

    /// "etcd user U (roles: R granting …) may not read or write P: …what to do".
    async fn explain_denied(&self, prefix: &str) -> String {
        let Some(user) = self.user.as_deref() else {
            return format!(
                "etcd refused this client access to the prefix {prefix}; with no [etcd] user, \
                 etcd takes the user from the client certificate's common name: give that user a \
                 role that grants readwrite on {prefix} (or set the [etcd] user and \
                 password_file of one)"
            );
        };
        // A user may read its own record and roles (etcd allows it without root).
        let mut auth = self.client.auth_client();
        let roles = match auth.user_get(user).await {
            Ok(u) => {
                let mut described = Vec::new();
                for role in u.roles() {
                    let grants = match auth.role_get(role.clone()).await {
                        Ok(r) => {
                            let g: Vec<String> =
                                r.permissions().iter().map(describe_permission).collect();
                            if g.is_empty() {
                                "nothing".to_string()
                            } else {
                                g.join(", ")
                            }
                        }
                        Err(_) => "(not readable)".to_string(),
                    };
                    described.push(format!("{role:?} granting {grants}"));
                }
                if described.is_empty() {
                    "no role".to_string()
                } else {
                    format!("role {}", described.join("; role "))
                }
            }
            Err(_) => "roles not readable".to_string(),
        };
        format!(
            "etcd user {user:?} ({roles}) may not read and write the prefix {prefix}: give it a \
             role that does (`etcdctl role grant-permission ROLE --prefix=true readwrite \
             {prefix}` then `etcdctl user grant-role {user} ROLE`; etcd/README.md \"Security\")"
        )
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn state_key(&self) -> String {
        format!("{}state", self.prefix)
    }

    /// The bucket key holding `id`'s registration.
    fn node_key(&self, id: &str) -> String {
        self.bucket_key(bucket_of(id))
    }

    fn bucket_key(&self, bucket: u32) -> String {
        format!("{}nodes/{bucket:02x}", self.prefix)
    }

    /// Written with every change of the published join data (see [`Self::mutate_with`]).
    fn join_key(&self) -> String {
        format!("{}join", self.prefix)
    }

    fn doc_key(&self, name: &str) -> String {
        format!("{}docs/{name}", self.prefix)
    }

    fn where_(&self) -> String {
        format!("{} under {}", self.endpoints.join(","), self.prefix)
    }

    /// What `scope` needs, in one linearizable read at one revision: the whole prefix, or the
    /// state key with one node's and/or one document's key (a transaction of gets).
    async fn read(&self, scope: Scope<'_>) -> Result<Read> {
        let kv = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_READ_BYTES);
        // The node buckets this read holds completely.
        let buckets: Vec<u32>;
        let (revision, kvs) = match scope {
            Scope::All => {
                buckets = (0..NODE_BUCKETS).collect();
                let mut resp = self
                    .failover(true, || {
                        let mut kv = kv.clone();
                        let key = self.prefix.clone();
                        async move { kv.get(key, Some(GetOptions::new().with_prefix())).await }
                    })
                    .await?;
                (resp.header().map_or(0, |h| h.revision()), resp.take_kvs())
            }
            Scope::Keys { node, doc } => {
                buckets = node.map(bucket_of).into_iter().collect();
                let mut ops = vec![TxnOp::get(self.state_key(), None)];
                if let Some(id) = node {
                    ops.push(TxnOp::get(self.node_key(id), None));
                }
                if let Some(name) = doc {
                    ops.push(TxnOp::get(self.doc_key(name), None));
                }
                let resp = self
                    .failover(true, || {
                        let mut kv = kv.clone();
                        let txn = Txn::new().and_then(ops.clone());
                        async move { kv.txn(txn).await }
                    })
                    .await?;
                let revision = resp.header().map_or(0, |h| h.revision());
                let mut kvs = Vec::new();
                for r in resp.op_responses() {
                    if let TxnOpResponse::Get(mut g) = r {
                        kvs.extend(g.take_kvs());
                    }
                }
                (revision, kvs)
            }
        };
        let mut state = None;
        let mut state_rev = 0;
        let mut nodes = BTreeMap::new();
        let mut docs = BTreeMap::new();
        let mut doc_revs = HashMap::new();
        for kv in &kvs {
            let key = String::from_utf8_lossy(kv.key());
            let Some(rest) = key.strip_prefix(self.prefix.as_str()) else {
                continue;
            };
            let bad = |e: serde_json::Error| {
                rejected(
                    "corrupt_state",
                    format!(
                        "etcd key {key} does not hold what swarmstrap wrote there: {e}; \
                         restore it or delete the cluster's prefix to start over"
                    ),
                )
            };
            if rest == "state" {
                state = Some(serde_json::from_slice::<ClusterState>(kv.value()).map_err(bad)?);
                state_rev = kv.mod_revision();
            } else if rest.starts_with("nodes/") {
                let list: Vec<swarmstrap_wire::NodeInfo> =
                    serde_json::from_slice(kv.value()).map_err(bad)?;
                nodes.extend(list.into_iter().map(|n| (n.node_id.clone(), n)));
            } else if let Some(name) = rest.strip_prefix("docs/") {
                let d: Document = serde_json::from_slice(kv.value()).map_err(bad)?;
                docs.insert(name.to_string(), d);
                doc_revs.insert(name.to_string(), kv.mod_revision());
            }
        }
        let state = match state {
            Some(s) => s,
            None => ClusterState::new(&self.cluster, self.target_managers)?,
        };
        Ok(Read {
            memory: Memory { state, nodes, docs },
            revision,
            state_rev,
            doc_revs,
            buckets,
        })
    }

    /// Run an etcd request, sending it again (capped backoff with jitter, within
    /// [`FAILOVER_DEADLINE`]) while no member could be reached, so that the balanced channel
    /// moves on to a live member; with `idempotent`, also after any transient error (reads).
    async fn failover<T, F, Fut>(&self, idempotent: bool, mut request: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + FAILOVER_DEADLINE;
        let mut backoff = failover_backoff();
        loop {
            let e = match request().await {
                Ok(t) => return Ok(t),
                Err(e) => e,
            };
            let unsent = never_sent(&e);
            let e = etcd_error(&self.where_(), e);
            let left = deadline.saturating_duration_since(Instant::now());
            if !(unsent || (idempotent && e.is_transient())) || left.is_zero() {
                return Err(e);
            }
            tracing::debug!("etcd request failed, trying again: {e}");
            let d = backoff.next().unwrap_or(Duration::from_secs(1));
            tokio::time::sleep(d.min(left)).await;
        }
    }

    /// Read → rule → transaction conditioned on what was read, until the change is empty, the
    /// transaction commits, or the rule refuses.
    async fn mutate<T>(
        &self,
        op: &'static str,
        scope: Scope<'_>,
        rule: impl FnMut(&Memory, u64) -> rules::Result<Outcome<T>>,
    ) -> Result<Mutated<T>> {
        self.mutate_with(op, scope, &[], rule).await
    }

    /// [`Self::mutate`], with `extra` puts in the same transaction whenever it writes (the
    /// manager token under the managers' prefix, with the state that refers to it).
    async fn mutate_with<T>(
        &self,
        op: &'static str,
        mut scope: Scope<'_>,
        extra: &[TxnOp],
        mut rule: impl FnMut(&Memory, u64) -> rules::Result<Outcome<T>>,
    ) -> Result<Mutated<T>> {
        let deadline = Instant::now() + CAS_DEADLINE;
        // After a few lost races the call queues for a turn (an etcd lock under the prefix)
        // instead of racing: K writers at once then cost K transactions, not ~K²/2. The turn
        // is only an optimisation: the transaction stays conditioned on what was read.
        let mut lost = 0u32;
        let mut _turn: Option<Turn> = None;
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(5))
            .with_max_delay(Duration::from_millis(500))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            let r = self.read(scope).await?;
            let Outcome { answer, change } = rule(&r.memory, now_ms())?;
            if change.is_empty() {
                return Ok(Mutated::Unchanged(answer));
            }
            let state_key = self.state_key();
            let mut when = vec![Compare::mod_revision(
                state_key.clone(),
                CompareOp::Equal,
                r.state_rev,
            )];
            let mut ops = Vec::new();
            let touches_nodes =
                change.clear_nodes || !change.removed_nodes.is_empty() || !change.nodes.is_empty();
            // The key whose next value tells whether this transaction committed, should its
            // answer be lost: a registration bucket it writes (it holds the node's new
            // record: another writer's value equal to it is the same outcome), else the state
            // key, else (a document write alone) the document's key.
            let mut witness: Option<(String, Vec<u8>)> = None;
            if change.state.is_some() || touches_nodes {
                let st = change.state.as_ref().unwrap_or(&r.memory.state);
                let v = to_json(st)?;
                ops.push(TxnOp::put(state_key.clone(), v.clone(), None));
                witness = Some((state_key, v));
                if st.formed != r.memory.state.formed || change.clear_nodes {
                    // What `wait_join` watches: moves only when join answers may change
                    // (published, adopted, rotated, reset), not at every registration.
                    ops.push(TxnOp::put(self.join_key(), now_ms().to_string(), None));
                }
            }
            // Each bucket a change touches is written whole, from the registrations read
            // with the change applied: a reset (clear) touches all of them.
            let touched: Vec<u32> = if change.clear_nodes {
                (0..NODE_BUCKETS).collect()
            } else {
                let mut t: Vec<u32> = change
                    .removed_nodes
                    .iter()
                    .map(|id| bucket_of(id))
                    .chain(change.nodes.iter().map(|n| bucket_of(&n.node_id)))
                    .collect();
                t.sort_unstable();
                t.dedup();
                t
            };
            if !change.clear_nodes && touched.iter().any(|b| !r.buckets.contains(b)) {
                // The rule changed a registration this read did not hold (no rule does that
                // today): decide again on every registration.
                scope = Scope::All;
                continue;
            }
            let mut bucket_witness = None;
            if touches_nodes {
                let mut after = r.memory.clone();
                after.apply(change.clone());
                for b in touched {
                    let list: Vec<&swarmstrap_wire::NodeInfo> = after
                        .nodes
                        .values()
                        .filter(|n| bucket_of(&n.node_id) == b)
                        .collect();
                    let key = self.bucket_key(b);
                    if list.is_empty() {
                        ops.push(TxnOp::delete(key, None));
                    } else {
                        let v = to_json(&list)?;
                        if !change.nodes.is_empty() && bucket_witness.is_none() {
                            bucket_witness = Some((key.clone(), v.clone()));
                        }
                        ops.push(TxnOp::put(key, v, None));
                    }
                }
            }
            if let Some((name, doc)) = &change.doc {
                let key = self.doc_key(name);
                let rev = r.doc_revs.get(name).copied().unwrap_or(0);
                when.push(Compare::mod_revision(key.clone(), CompareOp::Equal, rev));
                let v = to_json(doc)?;
                witness.get_or_insert((key.clone(), v.clone()));
                ops.push(TxnOp::put(key, v, None));
            }
            ops.extend(extra.iter().cloned());
            // Only a request that never left (no connection) is sent again here: a transaction
            // whose answer was lost may have committed, so that one goes back to the caller.
            let sent = self
                .failover(false, || {
                    let mut kv = self.client.kv_client();
                    let txn = Txn::new().when(when.clone()).and_then(ops.clone());
                    async move { kv.txn(txn).await }
                })
                .await;
            let committed = match sent {
                Ok(resp) => resp.succeeded(),
                Err(e) if e.is_transient() => {
                    // The answer was lost: the transaction may have committed. It did exactly
                    // when the witness key's first write after the read is its value.
                    let Some((key, value)) = bucket_witness.as_ref().or(witness.as_ref()) else {
                        return Err(e);
                    };
                    match self.first_write_after(key, r.revision).await {
                        Ok(first) => first.as_deref() == Some(value.as_slice()),
                        Err(_) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
            if committed {
                return Ok(Mutated::Written(answer));
            }
            tracing::debug!(
                operation = op,
                "lost a race; deciding again on a fresh read"
            );
            lost += 1;
            if lost == QUEUE_AFTER_LOST_RACES && _turn.is_none() {
                _turn = self.take_turn(deadline).await;
                if _turn.is_some() {
                    continue;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RendezvousError::Transient(format!(
                    "{op}: lost every race for {}s at {}",
                    CAS_DEADLINE.as_secs(),
                    self.where_()
                )));
            }
            let d = backoff.next().unwrap_or(Duration::from_millis(500));
            tokio::time::sleep(d.min(left)).await;
        }
    }

    /// The value of the first write to `key` after revision `read` (`None`: none, a deletion,
    /// or the key is gone now: the caller then decides again, which is always safe), from the
    /// watch history when the key was written since.
    async fn first_write_after(&self, key: &str, read: i64) -> Result<Option<Vec<u8>>> {
        let mut now = self
            .failover(true, || {
                let mut kv = self.client.kv_client();
                let key = key.to_string();
                async move { kv.get(key, None).await }
            })
            .await?;
        let Some(cur) = now.take_kvs().into_iter().next() else {
            return Ok(None);
        };
        if cur.mod_revision() <= read {
            return Ok(None);
        }
        // Written since: the history from the read on has the first write.
        let mut stream = self
            .failover(true, || {
                let mut w = self.client.watch_client();
                let key = key.to_string();
                let opts = WatchOptions::new().with_start_revision(read + 1);
                async move { w.watch(key, Some(opts)).await }
            })
            .await?;
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(Ok(Some(m))) if m.canceled() => {
                    return Err(RendezvousError::Transient(format!(
                        "etcd cancelled a watch of {key}: {}",
                        m.cancel_reason()
                    )))
                }
                Ok(Ok(Some(m))) => {
                    if let Some(ev) = m.events().first() {
                        return Ok(match ev.event_type() {
                            etcd_client::EventType::Put => ev.kv().map(|kv| kv.value().to_vec()),
                            etcd_client::EventType::Delete => None,
                        });
                    }
                }
                Ok(Ok(None)) | Err(_) => {
                    return Err(RendezvousError::Transient(format!(
                        "no answer from the watch history of {key}"
                    )))
                }
                Ok(Err(e)) => return Err(etcd_error(&self.where_(), e)),
            }
        }
    }

    /// Read until `view` says done, waiting between reads on a watch of `key` from the revision
    /// after the read; at most `wait`.
    async fn wait_on<T>(
        &self,
        key: String,
        scope: Scope<'_>,
        wait: Duration,
        mut view: impl FnMut(&Memory, u64) -> Result<(bool, T)>,
    ) -> Result<T> {
        let wait = wait.min(Duration::from_secs(swarmstrap_wire::MAX_WAIT_SECS));
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let r = self.read(scope).await?;
            let (done, t) = view(&r.memory, now_ms())?;
            if done || tokio::time::Instant::now() >= deadline {
                return Ok(t);
            }
            let mut stream = self
                .failover(true, || {
                    let mut w = self.client.watch_client();
                    let key = key.clone();
                    let opts = WatchOptions::new().with_start_revision(r.revision + 1);
                    async move { w.watch(key, Some(opts)).await }
                })
                .await?;
            // Any event (or the end of the wait) means: read again.
            loop {
                match tokio::time::timeout_at(deadline, stream.message()).await {
                    Err(_) => break,
                    Ok(Err(e)) => return Err(etcd_error(&self.where_(), e)),
                    Ok(Ok(None)) => break,
                    // The revision after the read was compacted away: whatever changed is
                    // newer than the read, so read again (at a newer revision).
                    Ok(Ok(Some(m))) if m.canceled() && m.compact_revision() > 0 => break,
                    Ok(Ok(Some(m))) if m.canceled() => {
                        return Err(RendezvousError::Transient(format!(
                            "etcd cancelled a watch of {key}: {}",
                            m.cancel_reason()
                        )))
                    }
                    Ok(Ok(Some(m))) if m.events().is_empty() => continue,
                    Ok(Ok(Some(_))) => break,
                }
            }
        }
    }

    /// The cluster's prefix deleted (tests, an operator's `etcdctl del --prefix`).
    pub async fn wipe(&self) -> Result<()> {
        self.client
            .kv_client()
            .delete(
                self.prefix.as_bytes(),
                Some(DeleteOptions::new().with_prefix()),
            )
            .await
            .map_err(|e| etcd_error(&self.where_(), e))?;
        Ok(())
    }

    /// Set or lift the adoption hold (see the Secrets Manager backend's method of that name).
    pub async fn set_adoption_hold(&self, hold: bool) -> Result<ClusterStatus> {
        let r = self
            .mutate("set_adoption_hold", Scope::All, |m, now| {
                let outcome = rules::set_adoption_hold(&m.state, hold)?;
                let mut after = m.clone();
                after.apply(outcome.change.clone());
                Ok(Outcome {
                    answer: after.status(now),
                    change: outcome.change,
                })
            })
            .await?;
        Ok(r.into_inner())
    }

    /// Wait for a turn at writing this cluster: an etcd lock (`<prefix>turn/…`) held by a
    /// lease of [`TURN_TTL_SECS`] (released at once when the [`Turn`] is dropped, else when
    /// the lease runs out, e.g. the holder died). `None` when no turn came by `deadline` or
    /// etcd refused: the caller races on.
    async fn take_turn(&self, deadline: Instant) -> Option<Turn> {
        let left = deadline.saturating_duration_since(Instant::now());
        let lease =
            tokio::time::timeout(left, self.client.lease_client().grant(TURN_TTL_SECS, None))
                .await
                .ok()?
                .ok()?
                .id();
        let turn = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            self.client.lock_client().lock(
                format!("{}turn", self.prefix),
                Some(LockOptions::new().with_lease(lease)),
            ),
        )
        .await;
        match turn {
            Ok(Ok(_)) => Some(Turn {
                client: self.client.clone(),
                lease,
            }),
            other => {
                if let Ok(Err(e)) = other {
                    tracing::debug!("no turn at writing, racing on: {e}");
                }
                Turn::release(self.client.clone(), lease);
                None
            }
        }
    }

    /// The managers' prefix (see [`EtcdConfig::managers_prefix`]).
    fn managers_prefix(&self) -> String {
        managers_prefix_of(&self.prefix)
    }

    fn manager_token_key(&self, digest: &str) -> String {
        format!("{}tokens/{digest}", self.managers_prefix())
    }

    /// The put that stores `token` under the managers' prefix, and what the shared state
    /// stores instead (its reference). Written in the same transaction as the state that
    /// refers to it, so a reference never points at a token that is not stored. Token keys are
    /// not deleted (one per rotation, ~200 bytes each): a fenced-out publisher's own token key
    /// is referred to by nothing.
    fn manager_token_put(&self, token: &Secret) -> (TxnOp, Secret) {
        let reference = rules::manager_token_reference(token);
        let key = self.manager_token_key(&rules::manager_token_digest(token));
        (
            TxnOp::put(key, token.expose().as_bytes().to_vec(), None),
            reference,
        )
    }

    /// A manager's join answer carries a reference to the manager token: swap in the token
    /// from the managers' prefix. Workers' answers carry the worker token and pass unchanged.
    async fn with_manager_token(&self, mut j: JoinResponse) -> Result<JoinResponse> {
        let Some(info) = j.join.as_mut() else {
            return Ok(j);
        };
        if !rules::is_manager_token_reference(&info.token) {
            return Ok(j);
        }
        let digest = info
            .token
            .expose()
            .trim_start_matches(rules::MANAGER_TOKEN_REFERENCE_PREFIX)
            .to_string();
        let key = self.manager_token_key(&digest);
        let mut resp = self
            .failover(true, || {
                let mut kv = self.client.kv_client();
                let key = key.clone();
                async move { kv.get(key, None).await }
            })
            .await
            .map_err(|e| self.managers_denied(e, "read the manager join token"))?;
        let Some(kv) = resp.take_kvs().into_iter().next() else {
            return Err(rejected(
                "corrupt_state",
                format!(
                    "the cluster's state refers to a manager join token that is not under {} \
                     (deleted by hand?): rotate the join tokens (`swarm-agent rotate-tokens`) \
                     so the leader's agent stores them again",
                    self.managers_prefix()
                ),
            ));
        };
        let token = String::from_utf8(kv.value().to_vec())
            .map_err(|_| rejected("corrupt_state", format!("etcd key {key} is not UTF-8")))?;
        info.token = Secret::new(token);
        Ok(j)
    }

    /// A refusal on the managers' prefix means this node's etcd user has the worker role.
    fn managers_denied(&self, e: RendezvousError, what: &str) -> RendezvousError {
        match e {
            RendezvousError::Unauthorized(detail) => RendezvousError::Unauthorized(format!(
                "this node is a manager and must {what}, but etcd user {} may not read and \
                 write {}: a node that runs as (or may become) a manager needs the managers' \
                 role, which also grants that prefix (etcd/README.md \"Security\"); {detail}",
                self.user.as_deref().unwrap_or("(none)"),
                self.managers_prefix()
            )),
            other => other,
        }
    }

    fn presenting(&self, node_id: &str, offer: bool) -> Result<(Presenting, Option<Secret>)> {
        Presenting::start(
            &self.credentials,
            &self.offered,
            node_id,
            offer,
            new_credential,
        )
    }

    fn settle(&self, node_id: &str, p: &Presenting, issued: Option<&Secret>) {
        p.settle(&self.credentials, &self.offered, node_id, issued);
    }
}

/// The request never reached a member: no connection could be made (tonic reports a failed
/// connect as `Unavailable` "tcp connect error"). Safe to send again, also a transaction.
fn never_sent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::Unavailable && s.message().contains("connect error")
        }
        _ => false,
    }
}

/// Between attempts to reach another member: 50 ms doubling to 1 s, jittered.
fn failover_backoff() -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(1))
        .with_jitter()
        .without_max_times()
        .build()
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v)
        .map_err(|e| RendezvousError::Transient(format!("cannot encode the etcd value: {e}")))
}

/// etcd and transport errors sorted by what the caller should do.
fn etcd_error(at: &str, e: etcd_client::Error) -> RendezvousError {
    use etcd_client::Error as E;
    match e {
        // A token that expired or that a restarted member no longer knows: the client logs in
        // again on the next call (it retried once already).
        E::GRpcStatus(s) if s.message().contains("invalid auth token") => {
            RendezvousError::Transient(format!("etcd at {at}: {} (logging in again)", s.message()))
        }
        E::GRpcStatus(s) => match s.code() {
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
                RendezvousError::Unauthorized(format!(
                    "etcd at {at} refused: {}; check the etcd user, its password file and \
                     its role (it needs read-write on the cluster's prefix)",
                    s.message()
                ))
            }
            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
                rejected("etcd_refused", format!("etcd at {at}: {}", s.message()))
            }
            c => unreachable_or_tls(
                at,
                with_causes(s.message().to_string(), &s),
                matches!(
                    c,
                    tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
                ),
            ),
        },
        E::InvalidArgs(m) | E::EndpointError(m) => {
            rejected("invalid_config", format!("etcd at {at}: {m}"))
        }
        E::InvalidUri(u) => rejected("invalid_config", format!("etcd endpoint: {u}")),
        // tonic's Display stops at the outermost error; the cause (a TLS alert, a refused
        // connection) is further down the chain.
        other => unreachable_or_tls(at, with_causes(other.to_string(), &other), true),
    }
}

/// Name the client certificate file in a `tls_client_certificate` refusal.
fn with_cert_file(e: RendezvousError, cert: Option<&std::path::Path>) -> RendezvousError {
    match (e, cert) {
        (RendezvousError::Rejected { code, message }, Some(p))
            if code == "tls_client_certificate" =>
        {
            RendezvousError::Rejected {
                code,
                message: format!("{message} (cert_file {})", p.display()),
            }
        }
        (e, _) => e,
    }
}

/// One read without logging in, over `tls`: `Some` when a member refuses the TLS client
/// certificate (the error names the alert), else `None`.
async fn tls_refusal(endpoints: &[String], tls: TlsOptions) -> Option<RendezvousError> {
    let opts = ConnectOptions::new()
        .with_tls(tls)
        .with_timeout(REQUEST_TIMEOUT)
        .with_connect_timeout(Duration::from_secs(5));
    let mut c = Client::connect(endpoints, Some(opts)).await.ok()?;
    let e = c
        .get("/", Some(GetOptions::new().with_keys_only()))
        .await
        .err()?;
    let e = etcd_error(&endpoints.join(","), e);
    matches!(&e, RendezvousError::Rejected { code, .. } if code == "tls_client_certificate")
        .then_some(e)
}

/// `msg`, then every cause of `e` not already in it.
fn with_causes(mut msg: String, e: &dyn std::error::Error) -> String {
    let mut src = e.source();
    while let Some(e) = src {
        let m = e.to_string();
        if !msg.contains(&m) {
            msg = format!("{msg}: {m}");
        }
        src = e.source();
    }
    msg
}

/// TLS alerts a member sends when it refuses the client's certificate (or its absence).
const CLIENT_CERT_ALERTS: &[&str] = &[
    "BadCertificate",
    "UnknownCA",
    "CertificateRequired",
    "CertificateUnknown",
    "UnsupportedCertificate",
    "CertificateExpired",
    "CertificateRevoked",
];

/// A failed request: an untrusted certificate is permanent, anything else may pass
/// (transient); `connection`: it failed at the connection (hint what to check).
fn unreachable_or_tls(at: &str, msg: String, connection: bool) -> RendezvousError {
    if msg.contains("received fatal alert") && CLIENT_CERT_ALERTS.iter().any(|a| msg.contains(a)) {
        // The member refused this client's certificate: retrying sends the same one.
        return rejected(
            "tls_client_certificate",
            format!(
                "etcd at {at}: {msg}: the etcd members refused this node's TLS client \
                 certificate; give a client certificate and key (cert_file, key_file) signed by \
                 the CA the members trust (their --trusted-ca-file)"
            ),
        );
    }
    if msg.contains("certificate") {
        // Retrying will not make the members' certificates trusted.
        return rejected(
            "tls_certificate",
            format!(
                "etcd at {at}: {msg}: the etcd members' TLS certificates are not trusted; \
                 check the CA file (the CA that signed them)"
            ),
        );
    }
    if connection {
        return RendezvousError::Transient(format!(
            "etcd at {at}: {msg} (check that the endpoints are etcd client URLs and up; a \
             member that requires a client certificate closes the connection of a client \
             without one)"
        ));
    }
    RendezvousError::Transient(format!("etcd at {at}: {msg}"))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

fn rejected(code: &str, message: impl Into<String>) -> RendezvousError {
    RendezvousError::Rejected {
        code: code.to_string(),
        message: message.into(),
    }
}

/// A fresh node credential: 32 bytes from the OS RNG, as 64 hex characters.
fn new_credential() -> Result<Secret> {
    use rand::TryRngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut b).map_err(|e| {
        RendezvousError::Transient(format!("the OS random number generator failed: {e}"))
    })?;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(Secret::new(hex))
}

#[async_trait::async_trait]
impl Rendezvous for EtcdRendezvous {
    fn describe(&self) -> String {
        format!("etcd {} ({})", self.prefix, self.endpoints.join(","))
    }

    fn set_credential(&self, node_id: &str, credential: Secret) {
        self.credentials.set(node_id, credential);
    }

    fn credential(&self, node_id: &str) -> Option<Secret> {
        self.credentials.get(node_id)
    }

    async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse> {
        rules::validate_register(req)?;
        let (p, fresh) = self.presenting(&req.node_id, true)?;
        let fresh = fresh.expect("offered");
        let r = self
            .mutate("register", Scope::node(&req.node_id), |m, now| {
                p.judge(|c| m.register(now, req, c, &fresh))
            })
            .await?
            .into_inner();
        self.settle(&req.node_id, &p, r.credential.as_ref());
        Ok(r)
    }

    async fn claim(&self, node_id: &str, ttl: Duration) -> Result<ClaimResponse> {
        rules::validate_node_id(node_id)?;
        let ttl_ms = ttl_ms(ttl);
        let (p, _) = self.presenting(node_id, false)?;
        let r = self
            .mutate("claim", Scope::node(node_id), |m, now| {
                p.judge(|c| m.claim(now, node_id, ttl_ms, c))
            })
            .await?;
        self.settle(node_id, &p, None);
        if let Mutated::Written(a) = &r {
            if a.granted {
                tracing::info!(
                    node = node_id,
                    fencing_token = a.lease.as_ref().map_or(0, |l| l.fencing_token),
                    "init lease granted"
                );
            }
        }
        Ok(r.into_inner())
    }

    async fn renew(
        &self,
        node_id: &str,
        fencing_token: u64,
        ttl: Duration,
    ) -> Result<ClaimResponse> {
        rules::validate_node_id(node_id)?;
        let req = RenewRequest {
            node_id: node_id.to_string(),
            fencing_token,
            ttl_ms: ttl_ms(ttl),
        };
        let (p, _) = self.presenting(node_id, false)?;
        let r = self
            .mutate("renew", Scope::node(node_id), |m, now| {
                p.judge(|c| m.renew(now, &req, c))
            })
            .await?;
        self.settle(node_id, &p, None);
        Ok(r.into_inner())
    }

    async fn publish(&self, req: &PublishRequest) -> Result<PublishResponse> {
        rules::validate_publish(req)?;
        let (p, _) = self.presenting(&req.node_id, false)?;
        let (token_put, stored) = self.manager_token_put(&req.manager_token);
        let req = &PublishRequest {
            manager_token: stored,
            ..req.clone()
        };
        let r = self
            .mutate_with(
                "publish",
                Scope::node(&req.node_id),
                &[token_put],
                |m, now| p.judge(|c| m.publish(now, req, c)),
            )
            .await
            .map_err(|e| self.managers_denied(e, "publish the manager join token"))?;
        self.settle(&req.node_id, &p, None);
        if let Mutated::Written(_) = r {
            tracing::info!(node = %req.node_id, swarm_id = %req.swarm_id, "join data published");
        }
        Ok(r.into_inner())
    }

    async fn wait_join(&self, node_id: &str, wait: Duration) -> Result<JoinResponse> {
        let (p, _) = self.presenting(node_id, false)?;
        let j = self
            .wait_on(self.join_key(), Scope::node(node_id), wait, |m, now| {
                let j = p.judge(|c| m.join(now, node_id, c))?;
                Ok((j.join.is_some(), j))
            })
            .await?;
        self.settle(node_id, &p, None);
        self.with_manager_token(j).await
    }

    async fn status(&self) -> Result<ClusterStatus> {
        Ok(self.read(Scope::All).await?.memory.status(now_ms()))
    }

    /// One range read: the status and every document, at one etcd revision.
    async fn snapshot(&self) -> Result<Option<Snapshot>> {
        let r = self.read(Scope::All).await?;
        Ok(Some(Snapshot {
            status: r.memory.status(now_ms()),
            docs: r.memory.docs.clone(),
            revision: u64::try_from(r.revision).ok(),
        }))
    }

    /// The operator is whoever may write the cluster's prefix in etcd (the etcd role): no
    /// operator credential is required; a stored one is checked when one is given.
    async fn reset(&self, req: &ResetRequest, operator: Option<&Secret>) -> Result<ClusterStatus> {
        rules::validate_reset(req)?;
        let r = self
            .mutate("reset", Scope::node(&req.node_id), |m, now| {
                if m.state.operator_sha256.is_some() && operator.is_some() {
                    rules::check_operator(&m.state, operator)?;
                }
                rules::recover(&m.state, now, req)
            })
            .await?;
        tracing::warn!(node = %req.node_id, lost_swarm = %req.swarm_id,
            "cluster reset by `swarm-agent recover`: one new init is allowed");
        Ok(r.into_inner())
    }

    async fn request_token_rotation(&self, operator: Option<&Secret>) -> Result<ClusterStatus> {
        let r = self
            .mutate("rotate-tokens", Scope::All, |m, now| {
                if m.state.operator_sha256.is_some() && operator.is_some() {
                    rules::check_operator(&m.state, operator)?;
                }
                let o = rules::request_token_rotation(&m.state)?;
                let mut after = m.clone();
                after.apply(o.change.clone());
                Ok(Outcome {
                    answer: after.status(now),
                    change: o.change,
                })
            })
            .await?;
        Ok(r.into_inner())
    }

    async fn sync(&self, req: &SyncRequest) -> Result<SyncResponse> {
        rules::validate_sync(req)?;
        let (p, _) = self.presenting(&req.node_id, false)?;
        let r = self
            .mutate("sync", Scope::All, |m, now| {
                p.judge(|c| m.sync(now, req, c))
            })
            .await?;
        self.settle(&req.node_id, &p, None);
        Ok(r.into_inner())
    }

    async fn adopt(&self, req: &AdoptRequest) -> Result<AdoptResponse> {
        rules::validate_adopt(req)?;
        let (p, fresh) = self.presenting(&req.node_id, true)?;
        let fresh = fresh.expect("offered");
        let (token_put, stored) = self.manager_token_put(&req.manager_token);
        let req = &AdoptRequest {
            manager_token: stored,
            ..req.clone()
        };
        let r = self
            .mutate_with("adopt", Scope::All, &[token_put], |m, now| {
                p.judge(|c| m.adopt(now, req, c, &fresh))
            })
            .await
            .map_err(|e| self.managers_denied(e, "store the manager join token"))?;
        let (Mutated::Written(a) | Mutated::Unchanged(a)) = &r;
        self.settle(&req.node_id, &p, a.credential.as_ref());
        Ok(r.into_inner())
    }

    async fn get_doc(&self, name: &str, after: Option<u64>, wait: Duration) -> Result<Document> {
        swarmstrap_wire::validate_name(name).map_err(|m| RuleError::new(Code::InvalidName, m))?;
        let wait = if after.is_some() {
            wait
        } else {
            Duration::ZERO
        };
        self.wait_on(
            self.doc_key(name),
            Scope::Keys {
                node: None,
                doc: Some(name),
            },
            wait,
            |m, _| {
                let d = m.doc(name);
                Ok((rules::doc_answers(&d, after), d))
            },
        )
        .await
    }

    async fn put_doc(
        &self,
        node_id: &str,
        name: &str,
        expected_version: u64,
        body: &serde_json::Value,
    ) -> Result<Document> {
        let write = DocumentWrite {
            expected_version,
            body: body.clone(),
            node_id: node_id.to_string(),
        };
        let (p, _) = self.presenting(node_id, false)?;
        let r = self
            .mutate(
                "put_doc",
                Scope::Keys {
                    node: Some(node_id),
                    doc: Some(name),
                },
                |m, _| p.judge(|c| m.put_doc(name, &write, c)),
            )
            .await?;
        self.settle(node_id, &p, None);
        Ok(r.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> EtcdConfig {
        EtcdConfig {
            ca_file: Some("/etc/etcd/ca.pem".into()),
            ..EtcdConfig::new("prod", 3, vec!["https://10.0.0.5:2379".into()])
        }
    }

    fn refusal(c: EtcdConfig) -> String {
        c.validate().expect_err("refused").to_string()
    }

    /// The lost-answer check against a real etcd: the first write after a read is found in
    /// the history even when later writes followed; no write since is `None`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn first_write_after_a_read_comes_from_the_history() {
        use swarmstrap_wire::{RegisterRequest, RequestedRole};
        let reg = |id: &str| RegisterRequest {
            node_id: id.into(),
            hostname: id.into(),
            advertise_addr: "10.0.0.1".into(),
            role: RequestedRole::Auto,
            joined_through: None,
            labels: None,
        };
        let etcd = crate::testing::EtcdCluster::start().await;
        let a = etcd.backend("hist", 3).await;
        let b = etcd.backend("hist", 3).await;
        a.register(&reg("n1")).await.unwrap();
        let before = a.read(Scope::node("n1")).await.unwrap();
        let key = a.state_key();
        assert_eq!(
            a.first_write_after(&key, before.revision).await.unwrap(),
            None,
            "nothing written since the read"
        );
        b.register(&reg("n2")).await.unwrap();
        let after_n2 = a.read(Scope::node("n2")).await.unwrap();
        let n2_state = serde_json::to_vec(&after_n2.memory.state).unwrap();
        b.register(&reg("n3")).await.unwrap();
        let first = a
            .first_write_after(&key, before.revision)
            .await
            .unwrap()
            .expect("n2's registration wrote the state");
        let first: ClusterState = serde_json::from_slice(&first).unwrap();
        assert_eq!(serde_json::to_vec(&first).unwrap(), n2_state);
        assert_eq!(first.node_count, 2, "n2's write, not the later n3's");
    }

    #[test]
    fn buckets_are_fnv1a_of_the_node_id() {
        // FNV-1a 32-bit test vectors: "" = 0x811c9dc5, "a" = 0xe40c292c, "foobar" = 0xbf9cf968.
        assert_eq!(bucket_of(""), 0x811c_9dc5 % NODE_BUCKETS);
        assert_eq!(bucket_of("a"), 0xe40c_292c % NODE_BUCKETS);
        assert_eq!(bucket_of("foobar"), 0xbf9c_f968 % NODE_BUCKETS);
        let used: std::collections::HashSet<u32> =
            (0..1000).map(|i| bucket_of(&format!("node-{i}"))).collect();
        assert_eq!(
            used.len(),
            NODE_BUCKETS as usize,
            "1000 ids spread over every bucket"
        );
    }

    #[test]
    fn default_prefix_is_per_cluster() {
        assert_eq!(cfg().resolved_prefix(), "/swarmstrap/prod/");
        assert!(cfg().validate().is_ok());
    }

    #[test]
    fn bad_configs_say_what_to_do() {
        let e = refusal(EtcdConfig {
            endpoints: vec![],
            ..cfg()
        });
        assert!(e.contains("no endpoints"), "{e}");
        let e = refusal(EtcdConfig {
            ca_file: None,
            ..cfg()
        });
        assert!(e.contains("give the CA file"), "{e}");
        let e = refusal(EtcdConfig {
            endpoints: vec!["10.0.0.5:2379".into()],
            ..cfg()
        });
        assert!(e.contains("must start with https://"), "{e}");
        let e = refusal(EtcdConfig {
            cert_file: Some("/c.pem".into()),
            ..cfg()
        });
        assert!(e.contains("certificate and key go together"), "{e}");
        let e = refusal(EtcdConfig {
            user: Some("u".into()),
            ..cfg()
        });
        assert!(e.contains("user and password file go together"), "{e}");
        let e = refusal(EtcdConfig {
            prefix: Some("/swarmstrap/prod".into()),
            ..cfg()
        });
        assert!(e.contains("must end with '/'"), "{e}");
        let e = refusal(EtcdConfig::new("Prod!", 3, vec!["http://h:2379".into()]));
        assert!(e.contains("cluster name"), "{e}");
    }
}
