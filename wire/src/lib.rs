//! Wire types of the swarm-coordinator `/v1` HTTP API, shared by `swarm-agent` and
//! `swarm-coordinator`. The OpenAPI description lives in `coordinator/openapi.yaml`.
//!
//! Every secret-bearing field uses [`Secret`], whose `Debug` never prints the value and which
//! has no `Display`, so a join token cannot reach a log line by accident.

#[cfg(feature = "fs")]
pub mod fsutil;
pub mod labels;
pub mod rendezvous;
#[cfg(feature = "rules")]
pub mod rules;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Every route lives under this prefix.
pub const API_PREFIX: &str = "/v1";

/// Longest long-poll a client may ask for (`wait` query parameter, seconds).
pub const MAX_WAIT_SECS: u64 = 60;

/// The header that carries a node's own credential (issued once, at its registration) on every
/// call made for that node id after registering. See [`RegisterResponse::credential`].
pub const NODE_CREDENTIAL_HEADER: &str = "x-swarmstrap-node-credential";

/// The header that carries the operator credential of a cluster (issued by `cluster create`,
/// never in user-data): the one credential that resets a cluster (`swarm-agent recover`).
pub const OPERATOR_CREDENTIAL_HEADER: &str = "x-swarmstrap-operator-credential";

/// A secret string (join token, cluster secret). `Debug` is redacted; there is no `Display`.
/// Use [`Secret::expose`] at the single place where the value is really needed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The role a node asks for when it registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RequestedRole {
    /// Let the coordinator decide, keeping the manager count at the cluster's target.
    #[default]
    Auto,
    Manager,
    Worker,
}

/// The role a node was assigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Manager,
    Worker,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        })
    }
}

/// Where a cluster is in its bootstrap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// No live init lease and no published tokens: the next claimant gets the lease.
    Open,
    /// A node holds a live init lease and has not published yet.
    Claimed,
    /// Join tokens are published: no further init claim is ever granted (until an operator
    /// reset).
    Formed,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Open => "open",
            Phase::Claimed => "claimed",
            Phase::Formed => "formed",
        })
    }
}

/// `POST /v1/clusters/{cluster}/nodes`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// Stable id of the node (the agent persists it in its state dir).
    pub node_id: String,
    pub hostname: String,
    /// The address the node advertises to the swarm (IP, or IP:port).
    pub advertise_addr: String,
    #[serde(default)]
    pub role: RequestedRole,
    /// The manager address (`ip:2377`) this node's engine joined the swarm through, once it
    /// joined. A hint for the quorum keeper: an engine promoted to manager joins raft through
    /// that address, so a worker that joined through a dead manager is promoted by leaving and
    /// rejoining instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined_through: Option<String>,
    /// The Docker node labels this node asks for (from its cloud tags, [`labels`] rules):
    /// `Some` replaces the stored set (`Some(empty)` clears it), `None` keeps what is stored,
    /// so a registration that does not know about labels never clears them. The raft leader's
    /// agent sets them on this node only; they are the node's claims, not a security boundary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub node_id: String,
    /// The assigned role. Registering again with the same node id returns the same role.
    pub role: Role,
    pub target_managers: u8,
    pub phase: Phase,
    /// The node's own credential, issued once: when this registration created the node id (or
    /// bound a registration made before credentials existed). Every later call for this node
    /// id (registering again, claim, renew, publish, join, sync, adopt, document writes) must
    /// present it ([`NODE_CREDENTIAL_HEADER`]); the agent keeps it in its state dir (mode
    /// 0600). Only its sha256 is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<Secret>,
}

/// An init lease. `expires_in_ms` is relative to the response, so clocks need not agree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub holder: String,
    pub fencing_token: u64,
    pub expires_in_ms: u64,
}

/// `POST /v1/clusters/{cluster}/claim`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRequest {
    pub node_id: String,
    /// Requested lease length; the coordinator clamps it to its bounds.
    pub ttl_ms: u64,
}

/// Answer to a claim or a renewal. `granted` is true when the caller holds the lease now;
/// otherwise `lease` (if any) names the holder. A formed cluster never grants a claim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimResponse {
    pub granted: bool,
    pub phase: Phase,
    pub lease: Option<Lease>,
}

/// `POST /v1/clusters/{cluster}/claim/renew`. Answered with a [`ClaimResponse`], or 409
/// `lease_lost` when the caller no longer holds the lease under this fencing token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewRequest {
    pub node_id: String,
    pub fencing_token: u64,
    pub ttl_ms: u64,
}

/// `POST /v1/clusters/{cluster}/publish`: only the lease holder with the current fencing
/// token may publish; anyone else gets 409 `stale_fencing_token` / `not_lease_holder`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRequest {
    pub node_id: String,
    pub fencing_token: u64,
    /// Docker's swarm cluster id.
    pub swarm_id: String,
    /// `sha256:<hex>` of the swarm root CA certificate (DER).
    pub ca_digest: String,
    /// `ip:2377` of the managers to join through.
    pub manager_addrs: Vec<String>,
    pub manager_token: Secret,
    pub worker_token: Secret,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishResponse {
    pub phase: Phase,
}

/// What a registered node needs to join: the token of its assigned role only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinInfo {
    pub swarm_id: String,
    pub ca_digest: String,
    pub manager_addrs: Vec<String>,
    pub role: Role,
    pub token: Secret,
}

/// `GET /v1/clusters/{cluster}/join?node_id=ID&wait=SECS` (long-poll until formed or `wait`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResponse {
    pub phase: Phase,
    pub lease: Option<Lease>,
    pub join: Option<JoinInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: String,
    pub hostname: String,
    pub advertise_addr: String,
    pub requested: RequestedRole,
    pub role: Role,
    pub registered_at_ms: u64,
    /// See [`RegisterRequest::joined_through`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined_through: Option<String>,
    /// When the raft leader's agent first reported this node in the swarm ([`SyncRequest`]).
    /// A node seen once and then missing from a sync has left: its registration is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_at_ms: Option<u64>,
    /// `sha256:<hex>` of the node's credential ([`RegisterResponse::credential`]). Stored, never
    /// shown: status answers leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_sha256: Option<String>,
    /// The node labels the node asked for ([`RegisterRequest::labels`]); empty in records
    /// written before labels existed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// `POST /v1/clusters/{cluster}/sync`: the raft leader's agent reports the live swarm, so the
/// rendezvous follows it: the manager addresses handed to joining nodes become the live
/// managers', registrations take the role their node has in the swarm, registrations of nodes
/// that left are dropped, and the manager count that assigns roles to new nodes is the swarm's.
/// Refused with `swarm_mismatch` unless the cluster is formed with `swarm_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// The caller (the raft leader's agent).
    pub node_id: String,
    pub swarm_id: String,
    /// `ip:2377` of every healthy (Ready and Reachable) manager, 1–64.
    pub manager_addrs: Vec<String>,
    /// Healthy managers in the swarm now, registered or not.
    pub managers: u32,
    /// The registered nodes found in the swarm, each with the role its registration must have
    /// (its swarm role, or `manager` for a worker the keeper rejoins as a manager).
    pub members: Vec<Member>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node_id: String,
    pub role: Role,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResponse {
    /// Node ids whose registrations were dropped by this sync.
    pub pruned: Vec<String>,
    /// The counts after the sync (what the next registration is judged by).
    pub manager_count: u64,
    pub node_count: u64,
    /// False when nothing had to change (no write happened).
    pub changed: bool,
}

/// `POST /v1/clusters/{cluster}/adopt`: the raft leader's agent of a running swarm publishes it
/// into a cluster that lost (or rolled back) its formation: the coordinator's database was wiped
/// or restored from an older backup, the Secrets Manager secret was deleted and re-created.
/// - not formed: formed with this swarm under a fresh fencing token (larger than any the
///   cluster remembers), the lease and any adoption hold cleared, the caller registered as a
///   manager; `adopted: true`;
/// - formed with this swarm: manager addresses and tokens refreshed, `adopted: false`;
/// - formed with another swarm: `already_formed`; a swarm an operator retired with a reset
///   (`swarm-agent recover`): `swarm_retired`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptRequest {
    pub node_id: String,
    pub hostname: String,
    pub advertise_addr: String,
    pub swarm_id: String,
    pub ca_digest: String,
    pub manager_addrs: Vec<String>,
    pub manager_token: Secret,
    pub worker_token: Secret,
    /// Healthy managers in the swarm now (as in [`SyncRequest::managers`]).
    pub managers: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdoptResponse {
    /// True when the cluster was not formed and now is, with this swarm.
    pub adopted: bool,
    /// The caller's new node credential, when the adoption registered it (a cluster that lost
    /// its registrations); see [`RegisterResponse::credential`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<Secret>,
    /// The formation's fencing token.
    pub fencing_token: u64,
    pub phase: Phase,
}

/// `POST /v1/clusters/{cluster}/reset`: the operator's `swarm-agent recover` after every manager
/// of the cluster's swarm was lost. Compare-and-set on the swarm id: it resets the cluster only
/// while it is still formed with `swarm_id`, so two concurrent recoveries allow exactly one new
/// init (the second gets 409 `swarm_mismatch`). The reset forgets the node registrations too
/// (roles are assigned again) and is recorded with `node_id` and `reason`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetRequest {
    pub node_id: String,
    /// The lost swarm's id, as the operator confirmed it.
    pub swarm_id: String,
    #[serde(default)]
    pub reason: String,
}

/// `GET /v1/clusters/{cluster}`: no secrets in here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub name: String,
    pub phase: Phase,
    pub target_managers: u8,
    pub lease: Option<Lease>,
    pub swarm_id: Option<String>,
    pub ca_digest: Option<String>,
    pub manager_addrs: Vec<String>,
    pub nodes: Vec<NodeInfo>,
    pub formed_at_ms: Option<u64>,
    /// Number of operator resets so far (each allows exactly one new init).
    pub resets: u64,
    /// The cluster was (re-)created to adopt its running swarm: init claims are refused until
    /// the swarm's leader adopts it, or an operator lifts the hold.
    #[serde(default)]
    pub awaiting_adoption: bool,
    /// How many times a running swarm was adopted into this cluster.
    #[serde(default)]
    pub adoptions: u64,
    /// Swarm ids an operator reset retired (`swarm-agent recover`): never adopted again.
    #[serde(default)]
    pub retired_swarm_ids: Vec<String>,
    /// A join-token rotation the operator asked for and the raft leader's agent has not carried
    /// out yet (its number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_rotation_pending: Option<u64>,
    /// Join-token rotations carried out.
    #[serde(default)]
    pub token_rotations: u64,
}

/// `GET /v1/clusters/{cluster}/docs/{name}?after=V&wait=SECS` answers the current document;
/// with `after`, it waits (up to `wait`) for a version newer than V. A document never written
/// has version 0 and body `null`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Document {
    pub version: u64,
    pub body: serde_json::Value,
}

/// `PUT /v1/clusters/{cluster}/docs/{name}`: compare-and-set. 409 `version_conflict` when the
/// current version differs from `expected_version` (0 = must not exist yet).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocumentWrite {
    pub expected_version: u64,
    pub body: serde_json::Value,
    /// The writing node (its credential in [`NODE_CREDENTIAL_HEADER`]). Documents are typed:
    /// who may write which one, and what it may hold, is in the rulebook (`rules::put_doc`).
    #[serde(default)]
    pub node_id: String,
}

/// Admin: `POST /v1/admin/clusters` (bearer: the admin token in the data dir).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateCluster {
    pub name: String,
    #[serde(default = "default_target_managers")]
    pub target_managers: u8,
    /// Use this secret instead of generating one (e.g. from Terraform's random_password).
    #[serde(default)]
    pub secret: Option<Secret>,
    /// Re-creating the cluster of a running swarm (the coordinator lost its database): refuse
    /// init claims until that swarm's leader adopts the cluster (`swarm-coordinator cluster
    /// create --adopt`).
    #[serde(default)]
    pub await_adoption: bool,
    /// Use this operator credential instead of generating one. The operator credential resets
    /// the cluster (`swarm-agent recover`); it never goes into user-data.
    #[serde(default)]
    pub operator_credential: Option<Secret>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedCluster {
    pub name: String,
    pub target_managers: u8,
    pub secret: Secret,
    /// The cluster's operator credential (only its sha256 is stored).
    pub operator_credential: Secret,
}

pub fn default_target_managers() -> u8 {
    3
}

/// Every error response: `{"error": code, "message": text}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

/// An error and its sources on one line (`a: b: c`), skipping a source whose text the line
/// already holds (many errors repeat their source in their own message).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Cluster and document names: 1–63 of `[a-z0-9-]`, not starting or ending with `-`.
pub fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid name {name:?}: use 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
        ))
    }
}

/// Manager targets must be odd so raft keeps a majority: 1, 3, 5 or 7.
pub fn validate_target_managers(n: u8) -> Result<(), String> {
    if matches!(n, 1 | 3 | 5 | 7) {
        Ok(())
    } else {
        Err(format!(
            "target managers must be 1, 3, 5 or 7 (an odd count keeps a raft majority), got {n}"
        ))
    }
}

/// Parse a certificate pin: 64 hex digits, optionally prefixed with `sha256:`, optionally with
/// `:` between bytes, any case. Returns the 32 bytes.
pub fn parse_fingerprint(pin: &str) -> Result<[u8; 32], String> {
    let body = pin.trim();
    let body = body
        .strip_prefix("sha256:")
        .or_else(|| body.strip_prefix("SHA256:"))
        .unwrap_or(body);
    let hex: String = body.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "invalid sha256 fingerprint {pin:?}: expected 64 hex digits, e.g. sha256:3f2a…"
        ));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Format a certificate digest the way the coordinator prints it: `sha256:<64 lowercase hex>`.
pub fn format_fingerprint(digest: &[u8; 32]) -> String {
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::new("SWMTKN-1-abc");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        let req = PublishRequest {
            node_id: "n".into(),
            fencing_token: 1,
            swarm_id: "x".into(),
            ca_digest: "sha256:00".into(),
            manager_addrs: vec![],
            manager_token: Secret::new("SWMTKN-1-manager"),
            worker_token: Secret::new("SWMTKN-1-worker"),
        };
        assert!(!format!("{req:?}").contains("SWMTKN"));
        // but it is on the wire
        assert!(serde_json::to_string(&req)
            .unwrap()
            .contains("SWMTKN-1-manager"));
    }

    #[test]
    fn document_floats_round_trip_exactly() {
        // Found by fuzzing wire_json: without serde_json's float_roundtrip, this number decoded
        // to a double that re-encoded to a different one, so a document body changed in transit.
        let weight: f64 = "8.88888888888889e+80".parse().unwrap();
        let d = Document {
            version: 2,
            body: serde_json::json!({ "weight": weight }),
        };
        let again: Document = serde_json::from_slice(&serde_json::to_vec(&d).unwrap()).unwrap();
        assert_eq!(d, again);
    }

    #[test]
    fn names() {
        assert!(validate_name("prod-1").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("-a").is_err());
        assert!(validate_name("A").is_err());
        assert!(validate_name(&"a".repeat(64)).is_err());
    }

    #[test]
    fn fingerprints_round_trip() {
        let d = [0xabu8; 32];
        let s = format_fingerprint(&d);
        assert_eq!(parse_fingerprint(&s).unwrap(), d);
        let colons = s.as_bytes()[7..]
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap().to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(parse_fingerprint(&colons).unwrap(), d);
        assert!(parse_fingerprint("sha256:abc").is_err());
    }

    #[test]
    fn targets() {
        for n in [1, 3, 5, 7] {
            assert!(validate_target_managers(n).is_ok());
        }
        for n in [0, 2, 4, 9] {
            assert!(validate_target_managers(n).is_err());
        }
    }
}

#[cfg(feature = "pin")]
pub mod pin;
