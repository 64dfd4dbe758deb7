//! The rendezvous rulebook: every rule of the rendezvous, written once, as pure functions.
//!
//! Each function takes the cluster's current state (and, where a rule needs it, the record of
//! the one node concerned), the current time, and a request. It returns the answer and the
//! [`Change`] to store, or a [`RuleError`] whose [`Code`] has exactly one wire spelling. No
//! I/O, no clock of its own: time is an input (`now_ms`, wall-clock milliseconds).
//!
//! # What a backend provides
//!
//! A backend is storage. To run the rulebook it must:
//!
//! 1. **Read** the cluster's [`ClusterState`], the [`NodeInfo`] of one node by id, all nodes
//!    (for status) and a named [`Document`] (version 0 / `null` when never written).
//! 2. **Apply a rule inside one atomic step**: read, call the rule, store every part of the
//!    returned [`Change`] (new state, upserted node, cleared nodes, new document) so that the
//!    write commits only if nothing it read changed in between. The coordinator does this in
//!    one redb write transaction (its single writer serializes them); the Secrets Manager
//!    backend reads the secret, applies the rule, and compare-and-swaps the secret, re-running
//!    the rule on a lost race; the in-memory fake holds a mutex. An etcd backend would read the
//!    keys, apply the rule, and commit in a transaction conditioned on the `mod_revision` of
//!    every key read.
//! 3. **Answer only after the change is durable**, and answer nothing when the step failed.
//!    A [`Change`] that [`Change::is_empty`] needs no write at all.
//! 4. Optionally **wait for a newer state** (long-polls of join info and documents); polling
//!    with capped backoff is a correct if slower substitute.
//!
//! [`Memory`] is a complete in-memory cluster (state, nodes and documents) with
//! [`Memory::apply`]: a backend that stores one blob per cluster (Secrets Manager, the test
//! fake, an etcd backend keeping one key) serializes a `Memory` and needs nothing else.
//!
//! # The rules, and why (each was once implemented differently by different backends)
//!
//! - **Register** is idempotent per node id. A new node is a manager when it asked for
//!   `manager` or `auto` and fewer than `target_managers` managers are registered, else a
//!   worker: the manager count never exceeds the target. A known node keeps its role; a changed
//!   hostname, address or requested role is stored, and so are the node labels it asks for
//!   (only when the request carries them: `labels: None` keeps the stored ones; at most
//!   [`crate::labels::MAX_NODE_LABELS`], each by [`crate::labels::validate_node_label`]).
//! - **Claim**: a formed cluster never grants a claim. A live lease is granted again to its
//!   holder with the same fencing token and the *same expiry* (a re-claim does not extend it:
//!   only renew does, so a holder cannot keep a lease alive by retrying claims). Otherwise (no
//!   lease, or an expired one) a node registered as a worker is refused with `not_a_manager`
//!   (it must never run `swarm init`), and anyone else gets a new lease with a strictly larger
//!   fencing token. Fencing tokens are never reused, also across resets.
//! - **Lease bounds**: the requested ttl is clamped into [`MIN_LEASE_TTL_MS`]..=
//!   [`MAX_LEASE_TTL_MS`] (1 s to 5 min: long enough for a slow `swarm init`, short enough
//!   that a dead claimant delays formation by minutes at most).
//! - **Expiry only opens the lease to takeover.** Renew and publish are judged by holder and
//!   fencing token, not by the clock: while nobody has claimed after the expiry, the holder's
//!   token is still the newest, so extending the lease or publishing under it cannot admit a
//!   second init (any other node would have needed a grant, which bumps the token). This way
//!   one failed renewal, or a slow `swarm init`, does not strand a swarm that was formed
//!   correctly. (The agent itself never *starts* `swarm init` on a lease it cannot prove live.)
//! - **Renew**: the holder under the current token extends the lease to `now + ttl`, but only
//!   once at most half of the ttl is left ([`renewal_due`]); before that the answer is the
//!   current lease and nothing is written (Secrets Manager bills and rate-limits writes). The
//!   agent renews every `ttl / `[`RENEW_DIVISOR`] (a quarter), so each extension leaves two
//!   renewal periods of margin: one failed renewal never loses the lease. Renewing once formed,
//!   or under another holder's or an older token, is `lease_lost`.
//! - **Publish**: only the lease holder under the current fencing token moves the cluster to
//!   formed (`not_lease_holder` / `stale_fencing_token` otherwise); the lease is then cleared.
//!   Into a formed cluster, only the publisher repeating the identical publish under the same
//!   token is accepted (a retry whose answer was lost), without a write; a different token is
//!   `stale_fencing_token`, another node `not_lease_holder`, different data `already_formed`.
//!   The CA digest is stored in its canonical form `sha256:<64 lowercase hex>`.
//! - **Join**: a registered node gets the token of its own role only; an unregistered node is
//!   `node_not_registered`.
//! - **Reset** (operator recovery after every manager was lost) is compare-and-set on the swarm
//!   id: only while the cluster is formed with that swarm id (`swarm_mismatch` otherwise), so
//!   concurrent recoveries allow exactly one new init. It clears the formation, the lease and
//!   every registration (roles are assigned again) and is recorded; the log keeps the last
//!   [`RESET_LOG`] entries, the counter counts all. The admin reset is the same without the
//!   swarm id check.
//! - **The rendezvous follows the swarm** ([`sync`], by the raft leader's agent, only while
//!   formed with that swarm id, else `swarm_mismatch`): the manager addresses handed to joining
//!   nodes become the live managers' (the address of the node that ran `swarm init` is not
//!   forever); each registration found in the swarm takes its swarm role and is marked seen; a
//!   registration seen once and now missing has left and is dropped (a replaced manager VM frees
//!   its manager slot; Secrets Manager's one document stays bounded under churn); one never seen
//!   is joining and kept for [`PENDING_JOIN_GRACE_MS`]; and the manager count that assigns the
//!   next role is the swarm's healthy managers plus the joining managers, the joining ones
//!   capped so the total stays within the target.
//! - **Adoption** ([`adopt`]): when the rendezvous lost or rolled back a formation (database
//!   wiped or restored from an old backup, secret deleted and re-created), the running swarm's
//!   leader publishes it again. It never runs `swarm init`, it records a swarm that exists, under
//!   a fresh fencing token larger than any the cluster remembers, so no lease granted before it
//!   can publish afterwards; and not below the wall clock in milliseconds ([`adoption_token`]),
//!   so also larger than every token the forgotten state granted, which nobody remembers any
//!   more (claims count up by one from there: they never reach the clock). A swarm retired by
//!   an operator reset is never adopted (`swarm_retired`: adopting would undo `swarm-agent
//!   recover`); a cluster formed with another swarm is `already_formed`. Formed with the same
//!   swarm, adoption refreshes its addresses and tokens. The one window adoption alone cannot close is a node that claims between the loss
//!   and the adoption (a few seconds): an operator re-creating a cluster declares it
//!   ([`set_adoption_hold`], `swarm-coordinator cluster create --adopt`), and a held cluster
//!   refuses every claim with `awaiting_adoption` until the swarm adopts it, a reset, or the
//!   operator lifts the hold. A brand-new cluster has no hold, so forming is not slower.
//! - **Documents** are compare-and-set on their own version: a write succeeds only when the
//!   document's current version equals `expected_version` (0: never written), and makes it
//!   `expected_version + 1`. Changes elsewhere in the cluster never fail a document write.
//! - **Validation** (identical everywhere): node ids 1–128 of `A-Z a-z 0-9 - _ . :`; hostnames,
//!   addresses, swarm ids and manager addresses printable without spaces; the CA digest parsed
//!   by [`crate::parse_fingerprint`]; 1–64 manager addresses; join tokens 1–512 bytes; a reset
//!   reason at most 500 characters without control characters.

use crate::{
    AdoptRequest, AdoptResponse, ClaimResponse, ClusterStatus, Document, DocumentWrite, JoinInfo,
    JoinResponse, Lease, NodeInfo, Phase, PublishRequest, PublishResponse, RegisterRequest,
    RegisterResponse, RenewRequest, RequestedRole, ResetRequest, Role, Secret, SyncRequest,
    SyncResponse,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Init lease bounds (the requested ttl is clamped into them).
pub const MIN_LEASE_TTL_MS: u64 = 1_000;
pub const MAX_LEASE_TTL_MS: u64 = 300_000;

/// The holder renews every `ttl / RENEW_DIVISOR`; a renewal writes once at most half the ttl is
/// left, so every extension leaves `RENEW_DIVISOR / 2` renewal periods of margin.
pub const RENEW_DIVISOR: u32 = 4;

/// How many resets the log keeps (the `resets` counter counts them all).
pub const RESET_LOG: usize = 20;

/// Longest reset reason (characters).
pub const MAX_REASON_CHARS: usize = 500;

/// A registration that was never seen in the swarm is kept this long by a sync (its node may be
/// joining right now); after that it counts as abandoned and is dropped.
pub const PENDING_JOIN_GRACE_MS: u64 = 10 * 60 * 1000;

/// Most members one sync may list.
pub const MAX_SYNC_MEMBERS: usize = 10_000;

/// Most registrations one cluster holds (sized for 10,000 agents with room for churn).
pub const MAX_NODES: u64 = 12_000;

/// The documents a cluster may hold; any other name is refused (`invalid_name`). See
/// [`put_doc`] for who may write which.
pub const KNOWN_DOCS: [&str; 4] = [DOC_MEMBERSHIP, DOC_DRAINS, DOC_KEEPER, DOC_REJOINS];
/// The load-balancer membership (the raft leader's agent; a current manager only).
pub const DOC_MEMBERSHIP: &str = "membership";
/// `swarm-agent leave` requests (any node for itself; a manager for anyone).
pub const DOC_DRAINS: &str = "drains";
/// The quorum keeper's report (a current manager only).
pub const DOC_KEEPER: &str = "keeper";
/// The keeper's rejoin requests (a manager; the asked node updates its own entry).
pub const DOC_REJOINS: &str = "rejoins";
/// Largest document body (serialized JSON): a membership of 10,000 nodes fits.
pub const MAX_DOC_BYTES: usize = 4 << 20;

/// Every refusal the rulebook can give, each with one wire spelling ([`Code::as_str`]) and one
/// HTTP status ([`Code::http_status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    /// A malformed field (400).
    InvalidRequest,
    /// A bad cluster or document name (400).
    InvalidName,
    /// The cluster does not exist (404).
    UnknownCluster,
    /// The cluster already exists (409).
    ClusterExists,
    /// The node must register first (404).
    NodeNotRegistered,
    /// A worker may not claim the init lease (409).
    NotAManager,
    /// Another node holds (or held) the lease (409).
    NotLeaseHolder,
    /// The fencing token is not the current one (409).
    StaleFencingToken,
    /// Renewal refused: the caller no longer holds the lease (409).
    LeaseLost,
    /// The cluster is formed with different data (409).
    AlreadyFormed,
    /// Reset refused: the cluster is not formed with the given swarm id (409).
    SwarmMismatch,
    /// Document compare-and-set failed (409).
    VersionConflict,
    /// Init claims are refused until the running swarm adopts the cluster (409).
    AwaitingAdoption,
    /// Adoption refused: an operator reset retired this swarm (409).
    SwarmRetired,
    /// The node credential presented for a node id is missing or wrong (403).
    BadNodeCredential,
    /// The call needs the cluster's operator credential (403).
    OperatorRequired,
    /// A per-cluster limit is reached (403): registrations, documents.
    QuotaExceeded,
}

impl Code {
    pub const ALL: [Code; 17] = [
        Code::InvalidRequest,
        Code::InvalidName,
        Code::UnknownCluster,
        Code::ClusterExists,
        Code::NodeNotRegistered,
        Code::NotAManager,
        Code::NotLeaseHolder,
        Code::StaleFencingToken,
        Code::LeaseLost,
        Code::AlreadyFormed,
        Code::SwarmMismatch,
        Code::VersionConflict,
        Code::AwaitingAdoption,
        Code::SwarmRetired,
        Code::BadNodeCredential,
        Code::OperatorRequired,
        Code::QuotaExceeded,
    ];

    /// The spelling in `{"error": code}` and in [`crate::rendezvous::RendezvousError`].
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidRequest => "invalid_request",
            Code::InvalidName => "invalid_name",
            Code::UnknownCluster => "unknown_cluster",
            Code::ClusterExists => "cluster_exists",
            Code::NodeNotRegistered => "node_not_registered",
            Code::NotAManager => "not_a_manager",
            Code::NotLeaseHolder => "not_lease_holder",
            Code::StaleFencingToken => "stale_fencing_token",
            Code::LeaseLost => "lease_lost",
            Code::AlreadyFormed => "already_formed",
            Code::SwarmMismatch => "swarm_mismatch",
            Code::VersionConflict => "version_conflict",
            Code::AwaitingAdoption => "awaiting_adoption",
            Code::SwarmRetired => "swarm_retired",
            Code::BadNodeCredential => "bad_node_credential",
            Code::OperatorRequired => "operator_required",
            Code::QuotaExceeded => "quota_exceeded",
        }
    }

    pub fn parse(s: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == s)
    }

    pub fn http_status(self) -> u16 {
        match self {
            Code::InvalidRequest | Code::InvalidName => 400,
            Code::UnknownCluster | Code::NodeNotRegistered => 404,
            Code::BadNodeCredential | Code::OperatorRequired | Code::QuotaExceeded => 403,
            _ => 409,
        }
    }

    /// A conflict: re-read the state and decide again (as opposed to a request that is wrong).
    pub fn is_conflict(self) -> bool {
        self.http_status() == 409
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: a code and a message that says what was wrong and what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RuleError {
    pub code: Code,
    pub message: String,
}

impl RuleError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        RuleError {
            code,
            message: message.into(),
        }
    }
}

impl From<RuleError> for crate::rendezvous::RendezvousError {
    fn from(e: RuleError) -> Self {
        let (code, message) = (e.code.as_str().to_string(), e.message);
        if e.code.is_conflict() {
            crate::rendezvous::RendezvousError::Conflict { code, message }
        } else {
            crate::rendezvous::RendezvousError::Rejected { code, message }
        }
    }
}

pub type Result<T> = std::result::Result<T, RuleError>;

/// The init lease as stored. `expires_at_ms` is wall-clock; the wire shows time left.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseState {
    pub holder: String,
    pub fencing_token: u64,
    #[serde(default)]
    pub granted_at_ms: u64,
    pub expires_at_ms: u64,
}

/// The published join data. `Debug` is safe: the tokens are [`Secret`]s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Formation {
    pub swarm_id: String,
    pub ca_digest: String,
    pub manager_addrs: Vec<String>,
    pub manager_token: Secret,
    pub worker_token: Secret,
    /// The node that published, and under which fencing token (an identical retry by it is
    /// accepted).
    #[serde(default)]
    pub published_by: String,
    #[serde(default)]
    pub fencing_token: u64,
    pub formed_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetRecord {
    pub at_ms: u64,
    pub previous_swarm_id: Option<String>,
    /// `operator (admin API)` or `node <id>` (`swarm-agent recover`).
    #[serde(default)]
    pub by: String,
    #[serde(default)]
    pub reason: String,
}

/// Everything the rules know about one cluster except its nodes and documents (which a
/// backend may store apart, e.g. one row per node). Field names are the stored layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    #[serde(alias = "cluster")]
    pub name: String,
    pub target_managers: u8,
    #[serde(default)]
    pub node_count: u64,
    #[serde(default)]
    pub manager_count: u64,
    #[serde(default)]
    pub lease: Option<LeaseState>,
    /// The last fencing token granted in this cluster (the next grant gets a larger one).
    #[serde(default)]
    pub last_fencing_token: u64,
    #[serde(default)]
    pub formed: Option<Formation>,
    #[serde(default)]
    pub resets: u64,
    #[serde(default)]
    pub reset_log: Vec<ResetRecord>,
    /// Set by an operator re-creating the cluster of a running swarm: claims are refused until
    /// the swarm adopts the cluster, a reset, or the operator lifts it.
    #[serde(default)]
    pub awaiting_adoption: bool,
    /// Adoptions so far.
    #[serde(default)]
    pub adoptions: u64,
    /// `sha256:<hex>` of the operator credential ([`check_operator`]); never shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_sha256: Option<String>,
    /// Join-token rotations the operator asked for ([`request_token_rotation`]) and the last one
    /// the raft leader's agent carried out (it rotates the swarm's tokens and publishes the new
    /// ones with [`adopt`]). `requested > done`: a rotation is pending.
    #[serde(default)]
    pub token_rotation_requested: u64,
    #[serde(default)]
    pub token_rotation_done: u64,
}

/// What a rule decided to store. Empty: nothing changed, no write needed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Change {
    /// The cluster's new state.
    pub state: Option<ClusterState>,
    /// Node records to insert or replace (applied last).
    pub nodes: Vec<NodeInfo>,
    /// Node registrations to forget, by node id.
    pub removed_nodes: Vec<String>,
    /// Forget every node registration (applied first).
    pub clear_nodes: bool,
    /// A document's new content: (name, document).
    pub doc: Option<(String, Document)>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.state.is_none()
            && self.nodes.is_empty()
            && self.removed_nodes.is_empty()
            && !self.clear_nodes
            && self.doc.is_none()
    }
}

/// A rule's result: the answer, and what to store before giving it.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome<T> {
    pub answer: T,
    pub change: Change,
}

impl<T> Outcome<T> {
    fn keep(answer: T) -> Self {
        Outcome {
            answer,
            change: Change::default(),
        }
    }

    fn state(answer: T, state: ClusterState) -> Self {
        Outcome {
            answer,
            change: Change {
                state: Some(state),
                ..Change::default()
            },
        }
    }
}

impl ClusterState {
    /// A new, open cluster. Validates the name and the manager target.
    pub fn new(name: &str, target_managers: u8) -> Result<Self> {
        crate::validate_name(name).map_err(|m| RuleError::new(Code::InvalidName, m))?;
        crate::validate_target_managers(target_managers)
            .map_err(|m| RuleError::new(Code::InvalidRequest, m))?;
        Ok(ClusterState {
            name: name.to_string(),
            target_managers,
            node_count: 0,
            manager_count: 0,
            lease: None,
            last_fencing_token: 0,
            formed: None,
            resets: 0,
            reset_log: Vec::new(),
            awaiting_adoption: false,
            adoptions: 0,
            operator_sha256: None,
            token_rotation_requested: 0,
            token_rotation_done: 0,
        })
    }

    /// The lease if it is still live at `now_ms`.
    pub fn live_lease(&self, now_ms: u64) -> Option<&LeaseState> {
        self.lease.as_ref().filter(|l| l.expires_at_ms > now_ms)
    }

    pub fn phase(&self, now_ms: u64) -> Phase {
        if self.formed.is_some() {
            Phase::Formed
        } else if self.live_lease(now_ms).is_some() {
            Phase::Claimed
        } else {
            Phase::Open
        }
    }

    /// The live lease as the wire shows it (`expires_in_ms` relative to now).
    pub fn wire_lease(&self, now_ms: u64) -> Option<Lease> {
        self.live_lease(now_ms).map(|l| Lease {
            holder: l.holder.clone(),
            fencing_token: l.fencing_token,
            expires_in_ms: l.expires_at_ms.saturating_sub(now_ms),
        })
    }

    fn claim_answer(&self, node_id: &str, now_ms: u64) -> ClaimResponse {
        let lease = self.wire_lease(now_ms);
        ClaimResponse {
            granted: self.formed.is_none() && lease.as_ref().is_some_and(|l| l.holder == node_id),
            phase: self.phase(now_ms),
            lease,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation

fn invalid(message: impl Into<String>) -> RuleError {
    RuleError::new(Code::InvalidRequest, message)
}

pub fn validate_node_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid node_id {id:?}: use 1-128 characters of A-Z, a-z, 0-9, '-', '_', '.', ':'"
        )))
    }
}

/// 1..=max bytes, printable, no whitespace. The value is not echoed (it may be anything).
fn validate_word(field: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty()
        || value.len() > max
        || value.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(invalid(format!(
            "invalid {field}: must be 1-{max} printable characters without spaces"
        )));
    }
    Ok(())
}

pub fn validate_register(req: &RegisterRequest) -> Result<()> {
    validate_node_id(&req.node_id)?;
    validate_word("hostname", &req.hostname, 253)?;
    validate_word("advertise_addr", &req.advertise_addr, 255)?;
    if let Some(labels) = &req.labels {
        crate::labels::validate_node_labels(labels)
            .map_err(|e| invalid(format!("invalid labels: {e}")))?;
    }
    Ok(())
}

/// Validates a publish and returns its CA digest in canonical form.
pub fn validate_publish(req: &PublishRequest) -> Result<String> {
    validate_node_id(&req.node_id)?;
    validate_word("swarm_id", &req.swarm_id, 128)?;
    let digest = crate::parse_fingerprint(&req.ca_digest).map_err(|_| {
        invalid("invalid ca_digest: expected sha256:<64 hex digits> of the swarm root CA (DER)")
    })?;
    if req.manager_addrs.is_empty() || req.manager_addrs.len() > 64 {
        return Err(invalid(
            "manager_addrs must list 1-64 manager addresses (ip:2377)",
        ));
    }
    for a in &req.manager_addrs {
        validate_word("manager_addrs entry", a, 255)?;
    }
    for (field, token) in [
        ("manager_token", &req.manager_token),
        ("worker_token", &req.worker_token),
    ] {
        if token.is_empty() || token.expose().len() > 512 {
            return Err(invalid(format!(
                "invalid {field}: must be a non-empty join token of at most 512 bytes"
            )));
        }
    }
    Ok(crate::format_fingerprint(&digest))
}

pub fn validate_reset(req: &ResetRequest) -> Result<()> {
    validate_node_id(&req.node_id)?;
    validate_word("swarm_id", &req.swarm_id, 128)?;
    if req.reason.chars().count() > MAX_REASON_CHARS || req.reason.chars().any(|c| c.is_control()) {
        return Err(invalid(format!(
            "invalid reason: at most {MAX_REASON_CHARS} characters without control characters"
        )));
    }
    Ok(())
}

pub fn clamp_ttl_ms(ttl_ms: u64) -> u64 {
    ttl_ms.clamp(MIN_LEASE_TTL_MS, MAX_LEASE_TTL_MS)
}

/// True when a renewal should extend (write) the lease: at most half of `ttl_ms` is left.
pub fn renewal_due(lease: &LeaseState, now_ms: u64, ttl_ms: u64) -> bool {
    lease.expires_at_ms.saturating_sub(now_ms) <= clamp_ttl_ms(ttl_ms) / 2
}

// ---------------------------------------------------------------------------------------------
// Node credentials

/// `sha256:<hex>` of a credential: what is stored for a node (or an operator) instead of the
/// credential itself.
pub fn credential_sha256(c: &Secret) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(c.expose().as_bytes());
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Does `presented` match the stored digest? Compares digests in constant time.
pub fn credential_matches(stored_sha256: &str, presented: &Secret) -> bool {
    let given = credential_sha256(presented);
    let (a, b) = (given.as_bytes(), stored_sha256.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The registration of `node_id`, if `presented` is its credential.
pub fn authenticate<'a>(
    st: &ClusterState,
    node: Option<&'a NodeInfo>,
    node_id: &str,
    presented: Option<&Secret>,
) -> Result<&'a NodeInfo> {
    validate_node_id(node_id)?;
    let Some(node) = node else {
        return Err(RuleError::new(
            Code::NodeNotRegistered,
            format!(
                "node {node_id:?} is not registered in cluster {:?}: register it first (POST /v1/clusters/{}/nodes)",
                st.name, st.name
            ),
        ));
    };
    let Some(stored) = node.credential_sha256.as_deref() else {
        return Err(RuleError::new(
            Code::BadNodeCredential,
            format!(
                "node {node_id:?} was registered before node credentials existed: register it \
                 again (the answer carries its credential)"
            ),
        ));
    };
    match presented {
        Some(p) if credential_matches(stored, p) => Ok(node),
        Some(_) => Err(RuleError::new(
            Code::BadNodeCredential,
            format!(
                "the node credential presented for node {node_id:?} is wrong: only the node that \
                 registered this id holds it (a node that lost its state dir registers under a \
                 new node id)"
            ),
        )),
        None => Err(RuleError::new(
            Code::BadNodeCredential,
            format!(
                "no node credential was presented for node {node_id:?}: every call for a \
                 registered node id carries the credential its registration returned"
            ),
        )),
    }
}

/// The operator's calls (reset): `presented` must be the cluster's operator credential. A node
/// holds the join secret and its own credential, never this one.
pub fn check_operator(st: &ClusterState, presented: Option<&Secret>) -> Result<()> {
    match (&st.operator_sha256, presented) {
        (Some(d), Some(p)) if credential_matches(d, p) => Ok(()),
        (Some(_), Some(_)) => Err(RuleError::new(
            Code::OperatorRequired,
            format!(
                "the operator credential presented for cluster {:?} is wrong",
                st.name
            ),
        )),
        (Some(_), None) => Err(RuleError::new(
            Code::OperatorRequired,
            format!(
                "resetting cluster {:?} needs its operator credential (the one `cluster create` \
                 printed; pass it to `swarm-agent recover --operator-credential-file FILE`, or \
                 `-` for stdin); the join secret and node credentials cannot reset a cluster",
                st.name
            ),
        )),
        (None, _) => Err(RuleError::new(
            Code::OperatorRequired,
            format!(
                "cluster {:?} has no operator credential (created before they existed): reset \
                 it through the admin API (`swarm-coordinator cluster reset {}` on the \
                 coordinator host)",
                st.name, st.name
            ),
        )),
    }
}

/// [`authenticate`], and the registration must hold the manager role.
pub fn authenticate_manager<'a>(
    st: &ClusterState,
    node: Option<&'a NodeInfo>,
    node_id: &str,
    presented: Option<&Secret>,
    what: &str,
) -> Result<&'a NodeInfo> {
    let n = authenticate(st, node, node_id, presented)?;
    if n.role != Role::Manager {
        return Err(RuleError::new(
            Code::NotAManager,
            format!("node {node_id:?} was assigned the worker role; only managers may {what}"),
        ));
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// Rules

/// Register `req`. `existing` is the stored record of `req.node_id`, if any; `presented` the
/// credential the caller presented; `fresh` a new random credential, issued (and its digest
/// stored) when this registration creates the node id, or binds a registration made before
/// credentials existed. Registering an existing node id again needs its credential.
pub fn register(
    st: &ClusterState,
    existing: Option<&NodeInfo>,
    now_ms: u64,
    req: &RegisterRequest,
    presented: Option<&Secret>,
    fresh: &Secret,
) -> Result<Outcome<RegisterResponse>> {
    validate_register(req)?;
    let answer = |role, credential: Option<&Secret>| RegisterResponse {
        node_id: req.node_id.clone(),
        role,
        target_managers: st.target_managers,
        phase: st.phase(now_ms),
        credential: credential.cloned(),
    };
    if let Some(node) = existing {
        let bind = node.credential_sha256.is_none();
        if !bind {
            authenticate(st, existing, &req.node_id, presented)?;
        }
        let same = node.hostname == req.hostname
            && node.advertise_addr == req.advertise_addr
            && node.requested == req.role
            && node.joined_through == req.joined_through
            && req.labels.as_ref().is_none_or(|l| *l == node.labels);
        if same && !bind {
            return Ok(Outcome::keep(answer(node.role, None)));
        }
        let mut node = node.clone();
        if bind {
            node.credential_sha256 = Some(credential_sha256(fresh));
        }
        node.hostname = req.hostname.clone();
        node.advertise_addr = req.advertise_addr.clone();
        node.requested = req.role;
        node.joined_through = req.joined_through.clone();
        if let Some(labels) = &req.labels {
            node.labels = labels.clone();
        }
        return Ok(Outcome {
            answer: answer(node.role, bind.then_some(fresh)),
            change: Change {
                nodes: vec![node],
                ..Change::default()
            },
        });
    }
    if st.node_count >= MAX_NODES {
        return Err(RuleError::new(
            Code::QuotaExceeded,
            format!(
                "cluster {:?} holds {} registrations, the most one cluster may hold ({MAX_NODES}); \
                 registrations of nodes that left are dropped by the leader's sync",
                st.name, st.node_count
            ),
        ));
    }
    let wants_manager = matches!(req.role, RequestedRole::Auto | RequestedRole::Manager);
    let role = if wants_manager && st.manager_count < u64::from(st.target_managers) {
        Role::Manager
    } else {
        Role::Worker
    };
    let mut next = st.clone();
    next.node_count += 1;
    if role == Role::Manager {
        next.manager_count += 1;
    }
    Ok(Outcome {
        answer: answer(role, Some(fresh)),
        change: Change {
            state: Some(next),
            nodes: vec![NodeInfo {
                node_id: req.node_id.clone(),
                hostname: req.hostname.clone(),
                advertise_addr: req.advertise_addr.clone(),
                requested: req.role,
                role,
                registered_at_ms: now_ms,
                joined_through: req.joined_through.clone(),
                seen_at_ms: None,
                credential_sha256: Some(credential_sha256(fresh)),
                labels: req.labels.clone().unwrap_or_default(),
            }],
            ..Change::default()
        },
    })
}

/// Claim the init lease for `node_id`: only a registered manager, with its credential. `node`
/// is its registration, if any.
pub fn claim(
    st: &ClusterState,
    node: Option<&NodeInfo>,
    now_ms: u64,
    node_id: &str,
    ttl_ms: u64,
    presented: Option<&Secret>,
) -> Result<Outcome<ClaimResponse>> {
    authenticate_manager(st, node, node_id, presented, "claim the init lease")?;
    if st.formed.is_none() && st.awaiting_adoption {
        return Err(RuleError::new(
            Code::AwaitingAdoption,
            format!(
                "cluster {:?} was re-created to adopt its running swarm: no node may run `swarm \
                 init` until that swarm's leader adopts it (seconds after the rendezvous is back). \
                 If no swarm runs for this cluster any more, an operator lifts the hold \
                 (`swarm-coordinator cluster allow-init {}`)",
                st.name, st.name
            ),
        ));
    }
    if st.formed.is_some() || st.live_lease(now_ms).is_some() {
        return Ok(Outcome::keep(st.claim_answer(node_id, now_ms)));
    }
    let mut next = st.clone();
    next.last_fencing_token += 1;
    next.lease = Some(LeaseState {
        holder: node_id.to_string(),
        fencing_token: next.last_fencing_token,
        granted_at_ms: now_ms,
        expires_at_ms: now_ms + clamp_ttl_ms(ttl_ms),
    });
    let answer = next.claim_answer(node_id, now_ms);
    Ok(Outcome::state(answer, next))
}

/// Check that `node_id` holds the lease under `token` (the clock is not consulted).
fn check_holder<'a>(st: &'a ClusterState, node_id: &str, token: u64) -> Result<&'a LeaseState> {
    match &st.lease {
        None => Err(RuleError::new(
            Code::NotLeaseHolder,
            format!("node {node_id:?} does not hold the init lease (no lease is held): claim it"),
        )),
        Some(l) if l.fencing_token != token => Err(RuleError::new(
            Code::StaleFencingToken,
            format!(
                "fencing token {token} is stale; the current lease has token {}",
                l.fencing_token
            ),
        )),
        Some(l) if l.holder != node_id => Err(RuleError::new(
            Code::NotLeaseHolder,
            format!(
                "node {node_id:?} does not hold the init lease (held by {:?})",
                l.holder
            ),
        )),
        Some(l) => Ok(l),
    }
}

/// Renew the lease (see the module docs: extends only once half the ttl is used up).
pub fn renew(
    st: &ClusterState,
    node: Option<&NodeInfo>,
    now_ms: u64,
    req: &RenewRequest,
    presented: Option<&Secret>,
) -> Result<Outcome<ClaimResponse>> {
    authenticate(st, node, &req.node_id, presented)?;
    if st.formed.is_some() {
        return Err(RuleError::new(
            Code::LeaseLost,
            "the cluster is already formed: there is no init lease to renew",
        ));
    }
    let lease = check_holder(st, &req.node_id, req.fencing_token)
        .map_err(|e| RuleError::new(Code::LeaseLost, format!("the init lease is lost: {e}")))?;
    if !renewal_due(lease, now_ms, req.ttl_ms) {
        return Ok(Outcome::keep(st.claim_answer(&req.node_id, now_ms)));
    }
    let mut next = st.clone();
    if let Some(l) = next.lease.as_mut() {
        l.expires_at_ms = now_ms + clamp_ttl_ms(req.ttl_ms);
    }
    let answer = next.claim_answer(&req.node_id, now_ms);
    Ok(Outcome::state(answer, next))
}

/// Publish the join data (see the module docs).
pub fn publish(
    st: &ClusterState,
    node: Option<&NodeInfo>,
    now_ms: u64,
    req: &PublishRequest,
    presented: Option<&Secret>,
) -> Result<Outcome<PublishResponse>> {
    let ca_digest = validate_publish(req)?;
    authenticate(st, node, &req.node_id, presented)?;
    let formed = PublishResponse {
        phase: Phase::Formed,
    };
    if let Some(f) = &st.formed {
        if req.fencing_token != f.fencing_token {
            return Err(RuleError::new(
                Code::StaleFencingToken,
                format!(
                    "fencing token {} is stale: the cluster was formed under token {}",
                    req.fencing_token, f.fencing_token
                ),
            ));
        }
        if req.node_id != f.published_by {
            return Err(RuleError::new(
                Code::NotLeaseHolder,
                format!(
                    "node {:?} did not form the cluster ({:?} did)",
                    req.node_id, f.published_by
                ),
            ));
        }
        let same = f.swarm_id == req.swarm_id
            && f.ca_digest == ca_digest
            && f.manager_addrs == req.manager_addrs
            && f.manager_token == req.manager_token
            && f.worker_token == req.worker_token;
        if !same {
            return Err(RuleError::new(
                Code::AlreadyFormed,
                format!(
                    "the cluster is already formed with different data (swarm {:?}); an operator must reset it first",
                    f.swarm_id
                ),
            ));
        }
        return Ok(Outcome::keep(formed));
    }
    check_holder(st, &req.node_id, req.fencing_token)?;
    let mut next = st.clone();
    next.formed = Some(Formation {
        swarm_id: req.swarm_id.clone(),
        ca_digest,
        manager_addrs: req.manager_addrs.clone(),
        manager_token: req.manager_token.clone(),
        worker_token: req.worker_token.clone(),
        published_by: req.node_id.clone(),
        fencing_token: req.fencing_token,
        formed_at_ms: now_ms,
    });
    next.lease = None;
    Ok(Outcome::state(formed, next))
}

fn reset_change(
    st: &ClusterState,
    now_ms: u64,
    by: String,
    reason: String,
) -> Outcome<ClusterStatus> {
    let mut next = st.clone();
    next.reset_log.push(ResetRecord {
        at_ms: now_ms,
        previous_swarm_id: st.formed.as_ref().map(|f| f.swarm_id.clone()),
        by,
        reason,
    });
    let excess = next.reset_log.len().saturating_sub(RESET_LOG);
    next.reset_log.drain(..excess);
    next.resets += 1;
    // The next swarm has new tokens anyway.
    next.token_rotation_done = next.token_rotation_requested;
    next.formed = None;
    next.lease = None;
    next.awaiting_adoption = false;
    next.node_count = 0;
    next.manager_count = 0;
    Outcome {
        answer: status(&next, Vec::new(), now_ms),
        change: Change {
            state: Some(next),
            clear_nodes: true,
            ..Change::default()
        },
    }
}

/// `swarm-agent recover`: reset only while formed with `req.swarm_id`.
pub fn recover(
    st: &ClusterState,
    now_ms: u64,
    req: &ResetRequest,
) -> Result<Outcome<ClusterStatus>> {
    validate_reset(req)?;
    let current = st.formed.as_ref().map(|f| f.swarm_id.as_str());
    if current != Some(req.swarm_id.as_str()) {
        return Err(RuleError::new(
            Code::SwarmMismatch,
            format!(
                "the cluster is formed with swarm {}, not {:?}: nothing was reset (check the swarm id)",
                current.map_or_else(|| "none (it is not formed)".into(), |c| format!("{c:?}")),
                req.swarm_id
            ),
        ));
    }
    Ok(reset_change(
        st,
        now_ms,
        format!("node {}", req.node_id),
        req.reason.clone(),
    ))
}

/// The operator's unconditional reset (admin API / `swarm-coordinator cluster reset`).
pub fn admin_reset(st: &ClusterState, now_ms: u64) -> Outcome<ClusterStatus> {
    reset_change(st, now_ms, "operator (admin API)".into(), String::new())
}

/// What `node_id` needs to join (the token of its role only), once formed.
pub fn join(
    st: &ClusterState,
    node: Option<&NodeInfo>,
    now_ms: u64,
    node_id: &str,
    presented: Option<&Secret>,
) -> Result<JoinResponse> {
    let node = authenticate(st, node, node_id, presented)?;
    Ok(JoinResponse {
        phase: st.phase(now_ms),
        lease: st.wire_lease(now_ms),
        join: st.formed.as_ref().map(|f| JoinInfo {
            swarm_id: f.swarm_id.clone(),
            ca_digest: f.ca_digest.clone(),
            manager_addrs: f.manager_addrs.clone(),
            role: node.role,
            token: match node.role {
                Role::Manager => f.manager_token.clone(),
                Role::Worker => f.worker_token.clone(),
            },
        }),
    })
}

/// The cluster as `GET /v1/clusters/{c}` shows it: no secrets, no credential digests.
pub fn status(st: &ClusterState, mut nodes: Vec<NodeInfo>, now_ms: u64) -> ClusterStatus {
    for n in &mut nodes {
        n.credential_sha256 = None;
    }
    ClusterStatus {
        name: st.name.clone(),
        phase: st.phase(now_ms),
        target_managers: st.target_managers,
        lease: st.wire_lease(now_ms),
        swarm_id: st.formed.as_ref().map(|f| f.swarm_id.clone()),
        ca_digest: st.formed.as_ref().map(|f| f.ca_digest.clone()),
        manager_addrs: st
            .formed
            .as_ref()
            .map(|f| f.manager_addrs.clone())
            .unwrap_or_default(),
        nodes,
        formed_at_ms: st.formed.as_ref().map(|f| f.formed_at_ms),
        resets: st.resets,
        awaiting_adoption: st.awaiting_adoption && st.formed.is_none(),
        adoptions: st.adoptions,
        retired_swarm_ids: st.retired_swarm_ids(),
        token_rotation_pending: (st.token_rotation_requested > st.token_rotation_done)
            .then_some(st.token_rotation_requested),
        token_rotations: st.token_rotation_done,
    }
}

impl ClusterState {
    /// Swarm ids an operator reset retired (oldest first, no repeats).
    pub fn retired_swarm_ids(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for id in self
            .reset_log
            .iter()
            .filter_map(|r| r.previous_swarm_id.clone())
        {
            if !out.contains(&id) {
                out.push(id);
            }
        }
        out
    }
}

fn validate_addrs(addrs: &[String]) -> Result<()> {
    if addrs.is_empty() || addrs.len() > 64 {
        return Err(invalid(
            "manager_addrs must list 1-64 manager addresses (ip:2377)",
        ));
    }
    for a in addrs {
        validate_word("manager_addrs entry", a, 255)?;
    }
    Ok(())
}

pub fn validate_sync(req: &SyncRequest) -> Result<()> {
    validate_node_id(&req.node_id)?;
    validate_word("swarm_id", &req.swarm_id, 128)?;
    validate_addrs(&req.manager_addrs)?;
    if req.members.len() > MAX_SYNC_MEMBERS {
        return Err(invalid(format!(
            "a sync lists at most {MAX_SYNC_MEMBERS} members"
        )));
    }
    if req.managers > 1000 {
        return Err(invalid("managers must be at most 1000"));
    }
    for m in &req.members {
        validate_node_id(&m.node_id)?;
    }
    Ok(())
}

/// Validates an adoption and returns its CA digest in canonical form.
pub fn validate_adopt(req: &AdoptRequest) -> Result<String> {
    validate_word("hostname", &req.hostname, 253)?;
    validate_word("advertise_addr", &req.advertise_addr, 255)?;
    if req.managers > 1000 {
        return Err(invalid("managers must be at most 1000"));
    }
    validate_publish(&PublishRequest {
        node_id: req.node_id.clone(),
        fencing_token: 0,
        swarm_id: req.swarm_id.clone(),
        ca_digest: req.ca_digest.clone(),
        manager_addrs: req.manager_addrs.clone(),
        manager_token: req.manager_token.clone(),
        worker_token: req.worker_token.clone(),
    })
}

/// A registration waiting to join: never seen in the swarm, not listed by the sync at hand.
fn pending(n: &NodeInfo, listed: &dyn Fn(&str) -> bool) -> bool {
    n.seen_at_ms.is_none() && !listed(&n.node_id)
}

/// Registrations as the swarm says they are, given `managers` healthy managers in the swarm and
/// the members the leader found (node id → role). Returns the changed records, the dropped node
/// ids, and the manager count that assigns the next role.
///
/// - a listed member takes the listed role and is marked seen;
/// - an unlisted node that was seen before has left the swarm: dropped;
/// - an unlisted node never seen is joining: kept for [`PENDING_JOIN_GRACE_MS`], and the joining
///   nodes (those registered as managers first, then the oldest) are managers only while the swarm's managers plus them
///   stay within the target, so a sync never hands out more manager tokens than the target.
fn follow_swarm(
    st: &ClusterState,
    nodes: &[NodeInfo],
    now_ms: u64,
    managers: u32,
    members: &BTreeMap<&str, Role>,
) -> (Vec<NodeInfo>, Vec<String>, u64, u64) {
    let listed = |id: &str| members.contains_key(id);
    let mut changed = Vec::new();
    let mut removed = Vec::new();
    let mut joining: Vec<&NodeInfo> = Vec::new();
    for n in nodes {
        if let Some(role) = members.get(n.node_id.as_str()) {
            if n.role != *role || n.seen_at_ms.is_none() {
                let mut m = n.clone();
                m.role = *role;
                m.seen_at_ms.get_or_insert(now_ms);
                changed.push(m);
            }
        } else if !pending(n, &listed)
            || now_ms.saturating_sub(n.registered_at_ms) > PENDING_JOIN_GRACE_MS
        {
            // Seen before and gone (it left), or never seen within the grace (abandoned).
            removed.push(n.node_id.clone());
        } else {
            joining.push(n);
        }
    }
    // Joining managers keep their role first (they may hold the manager token already), then
    // the oldest registrations.
    joining.sort_by(|a, b| {
        (a.role != Role::Manager)
            .cmp(&(b.role != Role::Manager))
            .then(a.registered_at_ms.cmp(&b.registered_at_ms))
            .then(a.node_id.cmp(&b.node_id))
    });
    let mut manager_count = u64::from(managers);
    for n in joining {
        let wants = matches!(n.requested, RequestedRole::Auto | RequestedRole::Manager);
        let role = if wants && manager_count < u64::from(st.target_managers) {
            manager_count += 1;
            Role::Manager
        } else {
            Role::Worker
        };
        if role != n.role {
            let mut m = n.clone();
            m.role = role;
            changed.push(m);
        }
    }
    let node_count = (nodes.len() - removed.len()) as u64;
    (changed, removed, manager_count, node_count)
}

/// The raft leader's agent reports the live swarm (see [`SyncRequest`]). `nodes`: every
/// registration of the cluster.
pub fn sync(
    st: &ClusterState,
    nodes: &[NodeInfo],
    now_ms: u64,
    req: &SyncRequest,
    presented: Option<&Secret>,
) -> Result<Outcome<SyncResponse>> {
    validate_sync(req)?;
    // The swarm first: a cluster that lost its formation lost its registrations with it, and
    // `swarm_mismatch` (not `node_not_registered`) is what tells the leader's agent to adopt.
    // It reveals nothing the status does not show.
    let Some(f) = st.formed.as_ref().filter(|f| f.swarm_id == req.swarm_id) else {
        return Err(RuleError::new(
            Code::SwarmMismatch,
            format!(
                "cluster {:?} is not formed with swarm {:?} ({}): nothing was synced",
                st.name,
                req.swarm_id,
                st.formed.as_ref().map_or_else(
                    || "it is not formed".to_string(),
                    |f| format!("it is formed with swarm {:?}", f.swarm_id)
                )
            ),
        ));
    };
    let caller = nodes.iter().find(|n| n.node_id == req.node_id);
    authenticate_manager(st, caller, &req.node_id, presented, "sync the cluster")?;
    let members: BTreeMap<&str, Role> = req
        .members
        .iter()
        .map(|m| (m.node_id.as_str(), m.role))
        .collect();
    let (changed_nodes, removed, manager_count, node_count) =
        follow_swarm(st, nodes, now_ms, req.managers, &members);
    let mut next = st.clone();
    next.manager_count = manager_count;
    next.node_count = node_count;
    if f.manager_addrs != req.manager_addrs {
        if let Some(nf) = next.formed.as_mut() {
            nf.manager_addrs = req.manager_addrs.clone();
        }
    }
    let state_changed = next != *st;
    let changed = state_changed || !changed_nodes.is_empty() || !removed.is_empty();
    Ok(Outcome {
        answer: SyncResponse {
            pruned: removed.clone(),
            manager_count,
            node_count,
            changed,
        },
        change: Change {
            state: state_changed.then_some(next),
            nodes: changed_nodes,
            removed_nodes: removed,
            ..Change::default()
        },
    })
}

/// The fencing token an adoption takes: larger than the last one the cluster remembers
/// (`last`), and at least the wall clock in milliseconds. The floor is what makes it larger than
/// the tokens of the state the rendezvous forgot (a wiped database, a deleted secret: `last` is
/// 0 again, or the older value of a restored backup): tokens count up by one per claim, and no
/// cluster is claimed once per millisecond since 1970, while the clock of an adoption runs ahead
/// of every earlier adoption's (the one assumption: the wall clock does not go back by more than
/// the time between two adoptions of one cluster).
pub fn adoption_token(last: u64, now_ms: u64) -> u64 {
    last.saturating_add(1).max(now_ms)
}

/// A running swarm's leader publishes it into a cluster that lost or rolled back its formation
/// (see [`AdoptRequest`]). `nodes`: every registration of the cluster.
///
/// Why this keeps "one `swarm init` per cluster": adoption never runs `swarm init`; it records a
/// swarm that exists. It takes a fencing token larger than any this cluster remembers (and than
/// any the forgotten state granted: [`adoption_token`]), so a publish under a lease granted
/// before the adoption is refused (`stale_fencing_token`), and a formed cluster grants no claim. The one window left is a node claiming between the loss and
/// the adoption: a cluster re-created `awaiting_adoption` refuses every claim until then.
///
/// Who may: a registered manager with its credential; an unregistered caller (or one registered
/// before credentials existed) only while the cluster is not formed (it lost its registrations
/// with its formation): it is registered with `fresh` as its credential, returned once.
pub fn adopt(
    st: &ClusterState,
    nodes: &[NodeInfo],
    now_ms: u64,
    req: &AdoptRequest,
    presented: Option<&Secret>,
    fresh: &Secret,
) -> Result<Outcome<AdoptResponse>> {
    let ca_digest = validate_adopt(req)?;
    let registered = nodes.iter().find(|n| n.node_id == req.node_id);
    let bind = st.formed.is_none() && registered.is_none_or(|n| n.credential_sha256.is_none());
    if !bind {
        authenticate_manager(st, registered, &req.node_id, presented, "adopt a swarm")?;
    }
    if st.retired_swarm_ids().contains(&req.swarm_id) {
        return Err(RuleError::new(
            Code::SwarmRetired,
            format!(
                "swarm {:?} was retired by an operator reset of cluster {:?} (`swarm-agent \
                 recover`): it is not adopted again. Its nodes leave it and join the cluster's \
                 new swarm",
                req.swarm_id, st.name
            ),
        ));
    }
    let caller = |role_seen: u64| -> NodeInfo {
        let old = nodes.iter().find(|n| n.node_id == req.node_id);
        NodeInfo {
            node_id: req.node_id.clone(),
            hostname: req.hostname.clone(),
            advertise_addr: req.advertise_addr.clone(),
            requested: old.map(|n| n.requested).unwrap_or(RequestedRole::Auto),
            role: Role::Manager,
            registered_at_ms: old.map(|n| n.registered_at_ms).unwrap_or(now_ms),
            joined_through: old.and_then(|n| n.joined_through.clone()),
            seen_at_ms: Some(old.and_then(|n| n.seen_at_ms).unwrap_or(role_seen)),
            credential_sha256: if bind {
                Some(credential_sha256(fresh))
            } else {
                old.and_then(|n| n.credential_sha256.clone())
            },
            labels: old.map(|n| n.labels.clone()).unwrap_or_default(),
        }
    };
    let mut next = st.clone();
    let adopted = match &st.formed {
        Some(f) if f.swarm_id == req.swarm_id && f.ca_digest == ca_digest => {
            // New tokens while a rotation is pending: the leader carried it out.
            let rotated =
                f.manager_token != req.manager_token || f.worker_token != req.worker_token;
            if rotated && st.token_rotation_requested > st.token_rotation_done {
                next.token_rotation_done = st.token_rotation_requested;
            }
            if let Some(nf) = next.formed.as_mut() {
                nf.manager_addrs = req.manager_addrs.clone();
                nf.manager_token = req.manager_token.clone();
                nf.worker_token = req.worker_token.clone();
            }
            false
        }
        Some(f) => {
            return Err(RuleError::new(
                Code::AlreadyFormed,
                format!(
                    "cluster {:?} is formed with swarm {:?} (CA {}), not with swarm {:?}: two \
                     swarms run for one cluster. Nothing was changed; an operator must decide \
                     which one to keep",
                    st.name, f.swarm_id, f.ca_digest, req.swarm_id
                ),
            ))
        }
        None => {
            next.last_fencing_token = adoption_token(st.last_fencing_token, now_ms);
            next.formed = Some(Formation {
                swarm_id: req.swarm_id.clone(),
                ca_digest: ca_digest.clone(),
                manager_addrs: req.manager_addrs.clone(),
                manager_token: req.manager_token.clone(),
                worker_token: req.worker_token.clone(),
                published_by: req.node_id.clone(),
                fencing_token: next.last_fencing_token,
                formed_at_ms: now_ms,
            });
            next.lease = None;
            next.awaiting_adoption = false;
            next.adoptions += 1;
            true
        }
    };
    // The caller is a member (and a manager) of the swarm; everyone else is judged as a sync
    // with only the caller listed would judge them, without dropping anyone: the swarm's other
    // members are not known here.
    let me = caller(now_ms);
    let others: Vec<NodeInfo> = nodes
        .iter()
        .filter(|n| n.node_id != req.node_id)
        .cloned()
        .collect();
    let members: BTreeMap<&str, Role> = others
        .iter()
        .filter(|n| n.seen_at_ms.is_some())
        .map(|n| (n.node_id.as_str(), n.role))
        .collect();
    let (mut changed, _, manager_count, _) =
        follow_swarm(&next, &others, now_ms, req.managers.max(1), &members);
    next.manager_count = manager_count;
    next.node_count = others.len() as u64 + 1;
    if nodes.iter().find(|n| n.node_id == req.node_id) != Some(&me) {
        changed.push(me);
    }
    let fencing_token = next.formed.as_ref().map_or(0, |f| f.fencing_token);
    let state_changed = next != *st;
    Ok(Outcome {
        answer: AdoptResponse {
            adopted,
            credential: bind.then(|| fresh.clone()),
            fencing_token,
            phase: Phase::Formed,
        },
        change: Change {
            state: state_changed.then_some(next),
            nodes: changed,
            ..Change::default()
        },
    })
}

/// The operator asks for new join tokens (`swarm-coordinator cluster rotate-tokens`): the raft
/// leader's agent sees the pending rotation in the status, rotates the swarm's worker and manager
/// tokens (`docker swarm join-token --rotate`), and publishes them ([`adopt`] of the formed
/// swarm, which marks the rotation done). Nodes joining afterwards get the new tokens; the old
/// ones no longer join. Answers the pending rotation's number. Only for a formed cluster.
pub fn request_token_rotation(st: &ClusterState) -> Result<Outcome<u64>> {
    if st.formed.is_none() {
        return Err(RuleError::new(
            Code::SwarmMismatch,
            format!(
                "cluster {:?} is not formed: it has no join tokens to rotate",
                st.name
            ),
        ));
    }
    if st.token_rotation_requested > st.token_rotation_done {
        return Ok(Outcome::keep(st.token_rotation_requested));
    }
    let mut next = st.clone();
    next.token_rotation_requested = st.token_rotation_done + 1;
    let n = next.token_rotation_requested;
    Ok(Outcome::state(n, next))
}

/// The operator's adoption hold: `hold = true` (the cluster of a running swarm was re-created,
/// or restored from a backup taken before it formed) refuses init claims until the swarm adopts
/// it; `false` lifts it (no swarm runs any more: let a new one form). Holding a formed cluster
/// is refused (`already_formed`): it grants no claim anyway.
pub fn set_adoption_hold(st: &ClusterState, hold: bool) -> Result<Outcome<()>> {
    if hold && st.formed.is_some() {
        return Err(RuleError::new(
            Code::AlreadyFormed,
            format!(
                "cluster {:?} is formed: it grants no init claim, there is nothing to hold",
                st.name
            ),
        ));
    }
    if st.awaiting_adoption == hold {
        return Ok(Outcome::keep(()));
    }
    let mut next = st.clone();
    next.awaiting_adoption = hold;
    Ok(Outcome::state((), next))
}

/// A document never written: version 0, body `null`.
pub fn empty_doc() -> Document {
    Document {
        version: 0,
        body: serde_json::Value::Null,
    }
}

/// Whether a document answers a read that asked for a version newer than `after` (`None`:
/// any version answers). A long-poll of a document waits until this holds.
pub fn doc_answers(doc: &Document, after: Option<u64>) -> bool {
    after.is_none_or(|seen| doc.version > seen)
}

/// Document compare-and-set by a registered node (`write.node_id`, with its credential
/// `presented`; `writer` is its registration). `current` is the stored document ([`empty_doc`]
/// if none). Only the [`KNOWN_DOCS`] exist; each is typed (see [`docs`]): the membership and
/// keeper documents are written by managers only, a worker changes only its own entries of the
/// drains and rejoins documents.
pub fn put_doc(
    st: &ClusterState,
    writer: Option<&NodeInfo>,
    current: &Document,
    name: &str,
    write: &DocumentWrite,
    presented: Option<&Secret>,
) -> Result<Outcome<Document>> {
    crate::validate_name(name).map_err(|m| RuleError::new(Code::InvalidName, m))?;
    if !KNOWN_DOCS.contains(&name) {
        return Err(RuleError::new(
            Code::InvalidName,
            format!("there is no document {name:?}: the documents are {KNOWN_DOCS:?}"),
        ));
    }
    let node = authenticate(st, writer, &write.node_id, presented)?;
    let size = serde_json::to_vec(&write.body).map_or(usize::MAX, |b| b.len());
    if size > MAX_DOC_BYTES {
        return Err(RuleError::new(
            Code::QuotaExceeded,
            format!("document {name:?} would be {size} bytes; the most is {MAX_DOC_BYTES}"),
        ));
    }
    docs::check_strings(name, &write.body)?;
    let manager = node.role == Role::Manager;
    match name {
        DOC_MEMBERSHIP | DOC_KEEPER if !manager => {
            return Err(RuleError::new(
                Code::NotAManager,
                format!(
                    "node {:?} is a worker: only a current manager writes document {name:?}",
                    write.node_id
                ),
            ))
        }
        DOC_DRAINS if !manager => {
            docs::check_own_entries(name, &current.body, &write.body, &write.node_id, |_, v| {
                v.get("agent_node_id")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_string)
            })?
        }
        DOC_REJOINS if !manager => {
            docs::check_own_entries(name, &current.body, &write.body, &write.node_id, |k, _| {
                Some(k.to_string())
            })?;
            docs::check_worker_rejoin(&current.body, &write.body, &write.node_id)?
        }
        _ => {}
    }
    if name == DOC_MEMBERSHIP {
        docs::check_membership(&write.body)?;
    }
    if current.version != write.expected_version {
        return Err(RuleError::new(
            Code::VersionConflict,
            format!(
                "version conflict: document {name:?} is at version {}, the write expected {}; re-read and retry",
                current.version, write.expected_version
            ),
        ));
    }
    let doc = Document {
        version: current.version + 1,
        body: write.body.clone(),
    };
    Ok(Outcome {
        answer: doc.clone(),
        change: Change {
            doc: Some((name.to_string(), doc)),
            ..Change::default()
        },
    })
}

/// The content checks of [`put_doc`] alone (who may write is not judged here): for documents
/// a trusted writer keeps outside the store (the agent's relay keeps the membership and keeper
/// documents in the raft leader's agent).
pub fn check_doc_body(name: &str, body: &serde_json::Value) -> Result<()> {
    docs::check_strings(name, body)?;
    if name == DOC_MEMBERSHIP {
        docs::check_membership(body)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A whole cluster in memory

/// One cluster's complete state as one value: for backends that store a blob per cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    #[serde(flatten)]
    pub state: ClusterState,
    /// By node id.
    #[serde(default, with = "nodes_as_list")]
    pub nodes: BTreeMap<String, NodeInfo>,
    #[serde(default)]
    pub docs: BTreeMap<String, Document>,
}

/// Nodes are stored as a list (the layout the Secrets Manager document always had).
mod nodes_as_list {
    use crate::NodeInfo;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(
        m: &BTreeMap<String, NodeInfo>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let list: Vec<&NodeInfo> = m.values().collect();
        list.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, NodeInfo>, D::Error> {
        let list = Vec::<NodeInfo>::deserialize(d)?;
        Ok(list.into_iter().map(|n| (n.node_id.clone(), n)).collect())
    }
}

impl Memory {
    pub fn new(state: ClusterState) -> Self {
        Memory {
            state,
            nodes: BTreeMap::new(),
            docs: BTreeMap::new(),
        }
    }

    pub fn node(&self, node_id: &str) -> Option<&NodeInfo> {
        self.nodes.get(node_id)
    }

    pub fn doc(&self, name: &str) -> Document {
        self.docs.get(name).cloned().unwrap_or_else(empty_doc)
    }

    /// Recount managers and nodes from the node list (for layouts that did not store counts).
    pub fn recount(&mut self) {
        self.state.node_count = self.nodes.len() as u64;
        self.state.manager_count = self
            .nodes
            .values()
            .filter(|n| n.role == Role::Manager)
            .count() as u64;
    }

    /// Store a rule's change.
    pub fn apply(&mut self, change: Change) {
        if let Some(st) = change.state {
            self.state = st;
        }
        if change.clear_nodes {
            self.nodes.clear();
        }
        for id in change.removed_nodes {
            self.nodes.remove(&id);
        }
        for node in change.nodes {
            self.nodes.insert(node.node_id.clone(), node);
        }
        if let Some((name, doc)) = change.doc {
            self.docs.insert(name, doc);
        }
    }

    pub fn register(
        &self,
        now_ms: u64,
        req: &RegisterRequest,
        presented: Option<&Secret>,
        fresh: &Secret,
    ) -> Result<Outcome<RegisterResponse>> {
        register(
            &self.state,
            self.node(&req.node_id),
            now_ms,
            req,
            presented,
            fresh,
        )
    }

    pub fn claim(
        &self,
        now_ms: u64,
        node_id: &str,
        ttl_ms: u64,
        presented: Option<&Secret>,
    ) -> Result<Outcome<ClaimResponse>> {
        claim(
            &self.state,
            self.node(node_id),
            now_ms,
            node_id,
            ttl_ms,
            presented,
        )
    }

    pub fn renew(
        &self,
        now_ms: u64,
        req: &RenewRequest,
        presented: Option<&Secret>,
    ) -> Result<Outcome<ClaimResponse>> {
        renew(&self.state, self.node(&req.node_id), now_ms, req, presented)
    }

    pub fn publish(
        &self,
        now_ms: u64,
        req: &PublishRequest,
        presented: Option<&Secret>,
    ) -> Result<Outcome<PublishResponse>> {
        publish(&self.state, self.node(&req.node_id), now_ms, req, presented)
    }

    pub fn join(
        &self,
        now_ms: u64,
        node_id: &str,
        presented: Option<&Secret>,
    ) -> Result<JoinResponse> {
        join(&self.state, self.node(node_id), now_ms, node_id, presented)
    }

    pub fn status(&self, now_ms: u64) -> ClusterStatus {
        status(&self.state, self.nodes.values().cloned().collect(), now_ms)
    }

    pub fn put_doc(
        &self,
        name: &str,
        write: &DocumentWrite,
        presented: Option<&Secret>,
    ) -> Result<Outcome<Document>> {
        put_doc(
            &self.state,
            self.node(&write.node_id),
            &self.doc(name),
            name,
            write,
            presented,
        )
    }

    fn node_list(&self) -> Vec<NodeInfo> {
        self.nodes.values().cloned().collect()
    }

    pub fn sync(
        &self,
        now_ms: u64,
        req: &SyncRequest,
        presented: Option<&Secret>,
    ) -> Result<Outcome<SyncResponse>> {
        sync(&self.state, &self.node_list(), now_ms, req, presented)
    }

    pub fn adopt(
        &self,
        now_ms: u64,
        req: &AdoptRequest,
        presented: Option<&Secret>,
        fresh: &Secret,
    ) -> Result<Outcome<AdoptResponse>> {
        adopt(
            &self.state,
            &self.node_list(),
            now_ms,
            req,
            presented,
            fresh,
        )
    }
}

mod docs;
/// The value checks of the typed membership document, for renderers that check again.
pub use docs::{is_hostname, is_label_key, is_label_value};

#[cfg(test)]
mod tests;

/// How a stored reference to the manager join token starts (see [`manager_token_reference`]).
pub const MANAGER_TOKEN_REFERENCE_PREFIX: &str = "swarmstrap:managers-secret:sha256:";

/// sha256 of a join token, hex.
pub fn manager_token_digest(token: &Secret) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.expose().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a backend whose shared state every node may read stores in place of the manager join
/// token: `swarmstrap:managers-secret:sha256:<hex>`, the token itself being kept where only
/// managers may read it (Secrets Manager: the managers' secret; etcd: the managers' prefix).
/// Join tokens carry ~128 random bits, so the digest reveals nothing. The rules compare
/// references as they compare tokens (an identical re-publish, a rotation).
pub fn manager_token_reference(token: &Secret) -> Secret {
    if is_manager_token_reference(token) {
        return token.clone();
    }
    Secret::new(format!(
        "{MANAGER_TOKEN_REFERENCE_PREFIX}{}",
        manager_token_digest(token)
    ))
}

pub fn is_manager_token_reference(token: &Secret) -> bool {
    token.expose().starts_with(MANAGER_TOKEN_REFERENCE_PREFIX)
}
