//! The JSON document stored in the secret, and every state transition as a pure function of
//! (current document, request, wall-clock time). The AWS layer reads the document, calls one of
//! these, and writes the result with a compare-and-swap; a lost race simply calls it again on
//! the fresh document, so every check (fencing, document versions, manager count) is always
//! evaluated against the state the write replaces.

use crate::{conflict, rejected};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use swarmstrap_wire::rendezvous::Result;
use swarmstrap_wire::{
    ClaimResponse, ClusterStatus, Document, JoinInfo, JoinResponse, Lease, NodeInfo, Phase,
    PublishRequest, PublishResponse, RegisterRequest, RegisterResponse, RequestedRole,
    ResetRequest, Role, Secret,
};

/// Version of the document layout. A reader refuses any other value.
pub const SCHEMA: u32 = 1;

/// AWS limit on a SecretString (bytes).
pub const MAX_SECRET_BYTES: usize = 65_536;

/// The whole state of one cluster. `Debug` is safe: the join tokens are [`Secret`]s.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterDoc {
    pub schema: u32,
    pub cluster: String,
    pub target_managers: u8,
    #[serde(default)]
    pub nodes: Vec<NodeInfo>,
    #[serde(default)]
    pub lease: Option<StoredLease>,
    /// The fencing token the next grant gets; strictly increasing, never reused.
    pub next_fencing_token: u64,
    #[serde(default)]
    pub formed: Option<Formed>,
    #[serde(default)]
    pub resets: u64,
    /// Every `swarm-agent recover` reset (newest last, at most [`RESET_LOG`]).
    #[serde(default)]
    pub reset_log: Vec<ResetRecord>,
    #[serde(default)]
    pub docs: BTreeMap<String, StoredDoc>,
    /// Version ids of the last [`RECENT_WRITES`] committed writes, newest last. A writer whose
    /// stage move had an unknown outcome (timeout, retried request) finds out whether it
    /// committed by looking for its id here, even when others have written on top since.
    #[serde(default)]
    pub recent_writes: Vec<String>,
}

/// How many write ids the document remembers (~40 bytes each). Covers every commit made
/// during one CAS backoff (≤ 2 s; the account's ~50 TPS write budget allows ≤ 25 commits/s).
pub const RECENT_WRITES: usize = 64;

/// How many resets the document remembers.
pub const RESET_LOG: usize = 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResetRecord {
    pub at_ms: u64,
    pub previous_swarm_id: String,
    pub by: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLease {
    pub holder: String,
    pub fencing_token: u64,
    /// Wall-clock expiry, milliseconds since the Unix epoch (see the README on clocks).
    pub expires_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Formed {
    pub swarm_id: String,
    pub ca_digest: String,
    pub manager_addrs: Vec<String>,
    pub manager_token: Secret,
    pub worker_token: Secret,
    pub formed_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredDoc {
    pub version: u64,
    pub body: serde_json::Value,
}

/// What a transition decided: nothing to write (answer from the current state), or write this
/// new document and answer `T` once the write has committed.
#[derive(Debug)]
pub enum Step<T> {
    Keep(T),
    Write(Box<ClusterDoc>, T),
}

/// The fixed inputs of a transition.
#[derive(Clone, Copy, Debug)]
pub struct Ctx<'a> {
    pub cluster: &'a str,
    pub target_managers: u8,
    pub now_ms: u64,
}

/// Lease length bounds (the requested ttl is clamped into them, like the coordinator does).
pub const MIN_TTL_MS: u64 = 1_000;
pub const MAX_TTL_MS: u64 = 15 * 60 * 1_000;

pub fn clamp_ttl_ms(ttl_ms: u64) -> u64 {
    ttl_ms.clamp(MIN_TTL_MS, MAX_TTL_MS)
}

impl ClusterDoc {
    pub fn new(cluster: &str, target_managers: u8) -> Self {
        ClusterDoc {
            schema: SCHEMA,
            cluster: cluster.to_string(),
            target_managers,
            nodes: Vec::new(),
            lease: None,
            next_fencing_token: 1,
            formed: None,
            resets: 0,
            reset_log: Vec::new(),
            docs: BTreeMap::new(),
            recent_writes: Vec::new(),
        }
    }

    /// Record the id of the version about to be written (the CAS layer calls this).
    pub fn note_write(&mut self, version_id: &str) {
        self.recent_writes.push(version_id.to_string());
        let excess = self.recent_writes.len().saturating_sub(RECENT_WRITES);
        self.recent_writes.drain(..excess);
    }

    /// True when the version `version_id` was committed and this document descends from it.
    pub fn includes_write(&self, version_id: &str) -> bool {
        self.recent_writes.iter().any(|w| w == version_id)
    }

    /// The lease if it is still live at `now_ms`.
    pub fn live_lease(&self, now_ms: u64) -> Option<&StoredLease> {
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

    pub fn node(&self, node_id: &str) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.node_id == node_id)
    }

    fn managers(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.role == Role::Manager)
            .count()
    }
}

fn start(cur: Option<&ClusterDoc>, ctx: &Ctx<'_>) -> ClusterDoc {
    cur.cloned()
        .unwrap_or_else(|| ClusterDoc::new(ctx.cluster, ctx.target_managers))
}

fn check_id(what: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty()
        || value.len() > max
        || value.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(rejected(
            "invalid_request",
            format!("{what} must be 1-{max} printable characters without spaces, got {value:?}"),
        ));
    }
    Ok(())
}

pub fn validate_register(req: &RegisterRequest) -> Result<()> {
    check_id("node_id", &req.node_id, 128)?;
    check_id("hostname", &req.hostname, 253)?;
    check_id("advertise_addr", &req.advertise_addr, 253)
}

/// Register (idempotent per node id). A new node gets `manager` when it asked for manager or
/// auto and the cluster has fewer managers than its target, else `worker`: the manager count
/// never exceeds the target. A known node keeps its role; only a changed hostname or address
/// is written.
pub fn register(
    cur: Option<&ClusterDoc>,
    ctx: &Ctx<'_>,
    req: &RegisterRequest,
) -> Result<Step<RegisterResponse>> {
    validate_register(req)?;
    let mut doc = start(cur, ctx);
    let answer = |doc: &ClusterDoc, role: Role| RegisterResponse {
        node_id: req.node_id.clone(),
        role,
        target_managers: doc.target_managers,
        phase: doc.phase(ctx.now_ms),
    };
    if let Some(node) = doc.nodes.iter_mut().find(|n| n.node_id == req.node_id) {
        let role = node.role;
        if node.hostname == req.hostname && node.advertise_addr == req.advertise_addr {
            return Ok(Step::Keep(answer(cur.expect("node found"), role)));
        }
        node.hostname = req.hostname.clone();
        node.advertise_addr = req.advertise_addr.clone();
        let resp = answer(&doc, role);
        return Ok(Step::Write(Box::new(doc), resp));
    }
    let room = doc.managers() < usize::from(doc.target_managers);
    let role = match req.role {
        RequestedRole::Worker => Role::Worker,
        RequestedRole::Auto | RequestedRole::Manager if room => Role::Manager,
        RequestedRole::Auto | RequestedRole::Manager => Role::Worker,
    };
    doc.nodes.push(NodeInfo {
        node_id: req.node_id.clone(),
        hostname: req.hostname.clone(),
        advertise_addr: req.advertise_addr.clone(),
        requested: req.role,
        role,
        registered_at_ms: ctx.now_ms,
    });
    let resp = answer(&doc, role);
    Ok(Step::Write(Box::new(doc), resp))
}

/// How a document answers a claim by `node_id` without changing anything.
pub fn claim_view(doc: &ClusterDoc, node_id: &str, now_ms: u64) -> ClaimResponse {
    let lease = doc.wire_lease(now_ms);
    let granted = doc.formed.is_none() && lease.as_ref().is_some_and(|l| l.holder == node_id);
    ClaimResponse {
        granted,
        phase: doc.phase(now_ms),
        lease,
    }
}

/// Claim the init lease. Formed → never granted. A live lease → granted only to its holder,
/// with the same fencing token (no write). No lease or an expired one → a new lease for the
/// caller with a strictly larger fencing token.
pub fn claim(
    cur: Option<&ClusterDoc>,
    ctx: &Ctx<'_>,
    node_id: &str,
    ttl_ms: u64,
) -> Result<Step<ClaimResponse>> {
    check_id("node_id", node_id, 128)?;
    if let Some(doc) = cur {
        if doc.formed.is_some() || doc.live_lease(ctx.now_ms).is_some() {
            return Ok(Step::Keep(claim_view(doc, node_id, ctx.now_ms)));
        }
    }
    let mut doc = start(cur, ctx);
    let token = doc.next_fencing_token.max(1);
    doc.next_fencing_token = token + 1;
    doc.lease = Some(StoredLease {
        holder: node_id.to_string(),
        fencing_token: token,
        expires_at_ms: ctx.now_ms + clamp_ttl_ms(ttl_ms),
    });
    let resp = claim_view(&doc, node_id, ctx.now_ms);
    Ok(Step::Write(Box::new(doc), resp))
}

fn check_holder(doc: Option<&ClusterDoc>, node_id: &str, token: u64, now_ms: u64) -> Result<()> {
    let lease = doc.and_then(|d| d.lease.as_ref());
    match lease {
        None => Err(conflict(
            "not_lease_holder",
            format!("node {node_id} does not hold the init lease (no lease exists)"),
        )),
        Some(l) if l.holder != node_id => Err(conflict(
            "not_lease_holder",
            format!(
                "node {node_id} does not hold the init lease; {} does (fencing token {})",
                l.holder, l.fencing_token
            ),
        )),
        Some(l) if l.fencing_token != token => Err(conflict(
            "stale_fencing_token",
            format!(
                "fencing token {token} is stale; the current lease has token {}",
                l.fencing_token
            ),
        )),
        Some(l) if l.expires_at_ms <= now_ms => Err(conflict(
            "lease_lost",
            format!(
                "the lease of node {node_id} (fencing token {token}) expired {} ms ago",
                now_ms - l.expires_at_ms
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// Renew the lease. Writes only when the remaining time has dropped to a third of `ttl` or
/// less, so an agent renewing every ttl/4 writes about once per 3/4 ttl, and a bootstrap that
/// publishes within 2/3 of its ttl never writes a renewal at all.
pub fn renew(
    cur: Option<&ClusterDoc>,
    ctx: &Ctx<'_>,
    node_id: &str,
    fencing_token: u64,
    ttl_ms: u64,
) -> Result<Step<ClaimResponse>> {
    let lost = |e: swarmstrap_wire::rendezvous::RendezvousError| match e {
        swarmstrap_wire::rendezvous::RendezvousError::Conflict { message, .. } => {
            conflict("lease_lost", message)
        }
        other => other,
    };
    check_holder(cur, node_id, fencing_token, ctx.now_ms).map_err(lost)?;
    let doc = cur.expect("checked above");
    if doc.formed.is_some() {
        return Ok(Step::Keep(ClaimResponse {
            granted: true,
            phase: Phase::Formed,
            lease: doc.wire_lease(ctx.now_ms),
        }));
    }
    let ttl_ms = clamp_ttl_ms(ttl_ms);
    let lease = doc.lease.as_ref().expect("checked above");
    let remaining = lease.expires_at_ms.saturating_sub(ctx.now_ms);
    if remaining > ttl_ms / 3 {
        return Ok(Step::Keep(claim_view(doc, node_id, ctx.now_ms)));
    }
    let mut doc = doc.clone();
    if let Some(l) = doc.lease.as_mut() {
        l.expires_at_ms = ctx.now_ms + ttl_ms;
    }
    let resp = claim_view(&doc, node_id, ctx.now_ms);
    Ok(Step::Write(Box::new(doc), resp))
}

pub fn validate_publish(req: &PublishRequest) -> Result<()> {
    check_id("node_id", &req.node_id, 128)?;
    if req.swarm_id.trim().is_empty() {
        return Err(rejected("invalid_request", "swarm_id must not be empty"));
    }
    if swarmstrap_wire::parse_fingerprint(&req.ca_digest).is_err() {
        return Err(rejected(
            "invalid_request",
            format!(
                "ca_digest must be sha256:<64 hex digits>, got {:?}",
                req.ca_digest
            ),
        ));
    }
    if req.manager_addrs.is_empty() || req.manager_addrs.iter().any(|a| a.trim().is_empty()) {
        return Err(rejected(
            "invalid_request",
            "manager_addrs must list at least one non-empty ip:port",
        ));
    }
    if req.manager_token.is_empty() || req.worker_token.is_empty() {
        return Err(rejected(
            "invalid_request",
            "manager_token and worker_token must not be empty",
        ));
    }
    Ok(())
}

fn same_formation(f: &Formed, req: &PublishRequest) -> bool {
    f.swarm_id == req.swarm_id
        && f.ca_digest == req.ca_digest
        && f.manager_addrs == req.manager_addrs
        && f.manager_token == req.manager_token
        && f.worker_token == req.worker_token
}

/// Publish the join data: only the holder of a live lease with the current fencing token.
/// The publisher re-publishing identical data (same node, fencing token and data) into a
/// formed cluster is accepted without a write; any other publish into it is refused.
pub fn publish(
    cur: Option<&ClusterDoc>,
    ctx: &Ctx<'_>,
    req: &PublishRequest,
) -> Result<Step<PublishResponse>> {
    validate_publish(req)?;
    if let Some(formed) = cur.and_then(|d| d.formed.as_ref()) {
        // Only the node that published, under the same fencing token, may repeat it (the
        // lease stays in the document after publishing; its expiry no longer matters).
        let publisher = cur
            .and_then(|d| d.lease.as_ref())
            .is_some_and(|l| l.holder == req.node_id && l.fencing_token == req.fencing_token);
        if publisher && same_formation(formed, req) {
            return Ok(Step::Keep(PublishResponse {
                phase: Phase::Formed,
            }));
        }
        return Err(conflict(
            "already_formed",
            format!(
                "cluster {} is already formed (swarm {}); a different publish is refused",
                ctx.cluster, formed.swarm_id
            ),
        ));
    }
    check_holder(cur, &req.node_id, req.fencing_token, ctx.now_ms)?;
    let mut doc = cur.expect("checked above").clone();
    doc.formed = Some(Formed {
        swarm_id: req.swarm_id.clone(),
        ca_digest: req.ca_digest.clone(),
        manager_addrs: req.manager_addrs.clone(),
        manager_token: req.manager_token.clone(),
        worker_token: req.worker_token.clone(),
        formed_at_ms: ctx.now_ms,
    });
    Ok(Step::Write(
        Box::new(doc),
        PublishResponse {
            phase: Phase::Formed,
        },
    ))
}

/// `swarm-agent recover`: forget the formation, the lease and the registrations, only while
/// the cluster is formed with `req.swarm_id` (so concurrent recoveries allow one new init).
pub fn reset(
    cur: Option<&ClusterDoc>,
    ctx: &Ctx<'_>,
    req: &ResetRequest,
) -> Result<Step<ClusterStatus>> {
    let current = cur
        .and_then(|d| d.formed.as_ref())
        .map(|f| f.swarm_id.clone());
    if current.as_deref() != Some(req.swarm_id.as_str()) {
        return Err(conflict(
            "swarm_mismatch",
            format!(
                "cluster {} is formed with swarm {}, not {:?}: nothing was reset (check the swarm id)",
                ctx.cluster,
                current.as_deref().unwrap_or("none (it is not formed)"),
                req.swarm_id
            ),
        ));
    }
    let mut doc = cur.expect("formed implies a document").clone();
    doc.reset_log.push(ResetRecord {
        at_ms: ctx.now_ms,
        previous_swarm_id: req.swarm_id.clone(),
        by: format!("node {}", req.node_id),
        reason: req.reason.chars().take(500).collect(),
    });
    if doc.reset_log.len() > RESET_LOG {
        let drop = doc.reset_log.len() - RESET_LOG;
        doc.reset_log.drain(..drop);
    }
    doc.resets += 1;
    doc.formed = None;
    doc.lease = None;
    doc.nodes.clear();
    let status = status_view(Some(&doc), ctx);
    Ok(Step::Write(Box::new(doc), status))
}

/// The join answer for a registered node: `Ok(None)` while the cluster is not formed.
pub fn join_view(
    doc: Option<&ClusterDoc>,
    cluster: &str,
    node_id: &str,
) -> Result<Option<JoinInfo>> {
    let Some(node) = doc.and_then(|d| d.node(node_id)) else {
        return Err(rejected(
            "unknown_node",
            format!("node {node_id} is not registered in cluster {cluster}; register it first"),
        ));
    };
    let doc = doc.expect("node found");
    Ok(doc.formed.as_ref().map(|f| JoinInfo {
        swarm_id: f.swarm_id.clone(),
        ca_digest: f.ca_digest.clone(),
        manager_addrs: f.manager_addrs.clone(),
        role: node.role,
        token: match node.role {
            Role::Manager => f.manager_token.clone(),
            Role::Worker => f.worker_token.clone(),
        },
    }))
}

pub fn join_response(
    doc: Option<&ClusterDoc>,
    join: Option<JoinInfo>,
    now_ms: u64,
) -> JoinResponse {
    JoinResponse {
        phase: doc.map_or(Phase::Open, |d| d.phase(now_ms)),
        lease: doc.and_then(|d| d.wire_lease(now_ms)),
        join,
    }
}

pub fn status_view(doc: Option<&ClusterDoc>, ctx: &Ctx<'_>) -> ClusterStatus {
    let Some(doc) = doc else {
        return ClusterStatus {
            name: ctx.cluster.to_string(),
            phase: Phase::Open,
            target_managers: ctx.target_managers,
            lease: None,
            swarm_id: None,
            ca_digest: None,
            manager_addrs: Vec::new(),
            nodes: Vec::new(),
            formed_at_ms: None,
            resets: 0,
        };
    };
    ClusterStatus {
        name: doc.cluster.clone(),
        phase: doc.phase(ctx.now_ms),
        target_managers: doc.target_managers,
        lease: doc.wire_lease(ctx.now_ms),
        swarm_id: doc.formed.as_ref().map(|f| f.swarm_id.clone()),
        ca_digest: doc.formed.as_ref().map(|f| f.ca_digest.clone()),
        manager_addrs: doc
            .formed
            .as_ref()
            .map(|f| f.manager_addrs.clone())
            .unwrap_or_default(),
        nodes: doc.nodes.clone(),
        formed_at_ms: doc.formed.as_ref().map(|f| f.formed_at_ms),
        resets: doc.resets,
    }
}

/// The current version of a named document (version 0 and body `null` when never written).
pub fn doc_view(doc: Option<&ClusterDoc>, name: &str) -> Document {
    match doc.and_then(|d| d.docs.get(name)) {
        Some(d) => Document {
            version: d.version,
            body: d.body.clone(),
        },
        None => Document {
            version: 0,
            body: serde_json::Value::Null,
        },
    }
}

/// Compare-and-set of one named document: the check is on that document's own version, so a
/// concurrent change elsewhere in the secret neither fails nor loses this write (the CAS loop
/// re-runs this on the fresh read).
pub fn put_doc(
    cur: Option<&ClusterDoc>,
    ctx: &Ctx<'_>,
    name: &str,
    expected_version: u64,
    body: &serde_json::Value,
) -> Result<Step<Document>> {
    swarmstrap_wire::validate_name(name).map_err(|m| rejected("invalid_name", m))?;
    let current = doc_view(cur, name);
    if current.version != expected_version {
        return Err(conflict(
            "version_conflict",
            format!(
                "document {name} is at version {}, not {expected_version}; re-read and retry",
                current.version
            ),
        ));
    }
    let mut doc = start(cur, ctx);
    let version = expected_version + 1;
    doc.docs.insert(
        name.to_string(),
        StoredDoc {
            version,
            body: body.clone(),
        },
    );
    Ok(Step::Write(
        Box::new(doc),
        Document {
            version,
            body: body.clone(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmstrap_wire::rendezvous::RendezvousError;

    const NOW: u64 = 1_700_000_000_000;

    fn ctx(now_ms: u64) -> Ctx<'static> {
        Ctx {
            cluster: "prod",
            target_managers: 3,
            now_ms,
        }
    }

    fn reg(id: &str, role: RequestedRole) -> RegisterRequest {
        RegisterRequest {
            node_id: id.into(),
            hostname: format!("host-{id}"),
            advertise_addr: "198.18.0.1".into(),
            role,
        }
    }

    /// Evaluate the step (which borrows the document) first, then apply it.
    macro_rules! apply {
        ($doc:ident, $step:expr $(,)?) => {{
            let step = $step;
            apply_step(&mut $doc, step)
        }};
    }

    fn apply_step<T>(doc: &mut Option<ClusterDoc>, step: Step<T>) -> T {
        match step {
            Step::Keep(t) => t,
            Step::Write(d, t) => {
                *doc = Some(*d);
                t
            }
        }
    }

    fn pubreq(node: &str, token: u64) -> PublishRequest {
        PublishRequest {
            node_id: node.into(),
            fencing_token: token,
            swarm_id: "swarm-1".into(),
            ca_digest: swarmstrap_wire::format_fingerprint(&[7u8; 32]),
            manager_addrs: vec!["198.18.0.1:2377".into()],
            manager_token: Secret::new("SWMTKN-1-mgr"),
            worker_token: Secret::new("SWMTKN-1-wrk"),
        }
    }

    fn code(e: RendezvousError) -> String {
        match e {
            RendezvousError::Conflict { code, .. } | RendezvousError::Rejected { code, .. } => code,
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn register_assigns_roles_and_is_idempotent() {
        let mut doc = None;
        let mut roles = Vec::new();
        for i in 0..5 {
            let step = register(
                doc.as_ref(),
                &ctx(NOW),
                &reg(&format!("n{i}"), RequestedRole::Auto),
            )
            .unwrap();
            roles.push(apply!(doc, step).role);
        }
        assert_eq!(
            roles,
            [
                Role::Manager,
                Role::Manager,
                Role::Manager,
                Role::Worker,
                Role::Worker
            ]
        );
        // manager requested but target reached → worker; worker requested → worker
        let r = apply!(
            doc,
            register(doc.as_ref(), &ctx(NOW), &reg("m", RequestedRole::Manager)).unwrap(),
        );
        assert_eq!(r.role, Role::Worker);
        // same node again: same role, no write
        match register(doc.as_ref(), &ctx(NOW), &reg("n0", RequestedRole::Worker)).unwrap() {
            Step::Keep(r) => assert_eq!(r.role, Role::Manager),
            Step::Write(..) => panic!("idempotent register wrote"),
        }
        // changed address: written, role kept
        let mut moved = reg("n0", RequestedRole::Auto);
        moved.advertise_addr = "198.18.0.9".into();
        match register(doc.as_ref(), &ctx(NOW), &moved).unwrap() {
            Step::Write(d, r) => {
                assert_eq!(r.role, Role::Manager);
                assert_eq!(d.node("n0").unwrap().advertise_addr, "198.18.0.9");
            }
            Step::Keep(_) => panic!("address change not written"),
        }
        let bad = reg("has space", RequestedRole::Auto);
        assert_eq!(
            code(register(None, &ctx(NOW), &bad).unwrap_err()),
            "invalid_request"
        );
    }

    #[test]
    fn claim_grants_once_and_fences() {
        let mut doc = None;
        let a = apply!(doc, claim(doc.as_ref(), &ctx(NOW), "a", 30_000).unwrap(),);
        assert!(a.granted);
        let tok = a.lease.unwrap().fencing_token;
        assert_eq!(tok, 1);
        // b loses while the lease is live, and nothing is written
        match claim(doc.as_ref(), &ctx(NOW + 1_000), "b", 30_000).unwrap() {
            Step::Keep(r) => {
                assert!(!r.granted);
                assert_eq!(r.phase, Phase::Claimed);
                assert_eq!(r.lease.unwrap().holder, "a");
            }
            Step::Write(..) => panic!("b's claim wrote"),
        }
        // a again: same token, no write
        match claim(doc.as_ref(), &ctx(NOW + 1_000), "a", 30_000).unwrap() {
            Step::Keep(r) => {
                assert!(r.granted);
                assert_eq!(r.lease.unwrap().fencing_token, tok);
            }
            Step::Write(..) => panic!("re-claim wrote"),
        }
        // expired: b takes over with a larger token; a's publish is then refused
        let b = apply!(
            doc,
            claim(doc.as_ref(), &ctx(NOW + 31_000), "b", 30_000).unwrap(),
        );
        assert!(b.granted);
        let btok = b.lease.unwrap().fencing_token;
        assert!(btok > tok);
        let err = publish(doc.as_ref(), &ctx(NOW + 31_001), &pubreq("a", tok)).unwrap_err();
        assert_eq!(code(err), "not_lease_holder");
        let err = publish(doc.as_ref(), &ctx(NOW + 31_001), &pubreq("b", tok)).unwrap_err();
        assert_eq!(code(err), "stale_fencing_token");
        let p = apply!(
            doc,
            publish(doc.as_ref(), &ctx(NOW + 31_002), &pubreq("b", btok)).unwrap(),
        );
        assert_eq!(p.phase, Phase::Formed);
        // formed: no claim is ever granted, even after the lease expired
        match claim(doc.as_ref(), &ctx(NOW + 999_999), "c", 30_000).unwrap() {
            Step::Keep(r) => {
                assert!(!r.granted);
                assert_eq!(r.phase, Phase::Formed);
            }
            Step::Write(..) => panic!("claim on a formed cluster wrote"),
        }
        match claim(doc.as_ref(), &ctx(NOW + 31_003), "b", 30_000).unwrap() {
            Step::Keep(r) => assert!(!r.granted),
            Step::Write(..) => panic!("claim on a formed cluster wrote"),
        }
        // the fenced-out holder is refused even with identical data
        let mut from_a = pubreq("a", tok);
        from_a.fencing_token = tok;
        assert_eq!(
            code(publish(doc.as_ref(), &ctx(NOW + 40_000), &from_a).unwrap_err()),
            "already_formed"
        );
        // identical re-publish accepted without a write, a different one refused
        assert!(matches!(
            publish(doc.as_ref(), &ctx(NOW + 40_000), &pubreq("b", btok)).unwrap(),
            Step::Keep(_)
        ));
        let mut other = pubreq("b", btok);
        other.swarm_id = "swarm-2".into();
        assert_eq!(
            code(publish(doc.as_ref(), &ctx(NOW + 40_000), &other).unwrap_err()),
            "already_formed"
        );
    }

    #[test]
    fn same_holder_after_expiry_gets_a_new_token() {
        let mut doc = None;
        apply!(doc, claim(None, &ctx(NOW), "a", 5_000).unwrap());
        let again = apply!(
            doc,
            claim(doc.as_ref(), &ctx(NOW + 6_000), "a", 5_000).unwrap(),
        );
        assert_eq!(again.lease.unwrap().fencing_token, 2);
        let err = publish(doc.as_ref(), &ctx(NOW + 6_001), &pubreq("a", 1)).unwrap_err();
        assert_eq!(code(err), "stale_fencing_token");
    }

    #[test]
    fn publish_needs_a_live_lease() {
        let mut doc = None;
        apply!(doc, claim(None, &ctx(NOW), "a", 5_000).unwrap());
        let err = publish(doc.as_ref(), &ctx(NOW + 5_000), &pubreq("a", 1)).unwrap_err();
        assert_eq!(code(err), "lease_lost");
        assert_eq!(
            code(publish(None, &ctx(NOW), &pubreq("a", 1)).unwrap_err()),
            "not_lease_holder"
        );
        let mut bad = pubreq("a", 1);
        bad.ca_digest = "md5:00".into();
        assert_eq!(
            code(publish(doc.as_ref(), &ctx(NOW), &bad).unwrap_err()),
            "invalid_request"
        );
    }

    #[test]
    fn renew_writes_only_in_the_last_third() {
        let mut doc = None;
        apply!(doc, claim(None, &ctx(NOW), "a", 30_000).unwrap());
        // 10 s in: 20 s left > 10 s → no write
        match renew(doc.as_ref(), &ctx(NOW + 10_000), "a", 1, 30_000).unwrap() {
            Step::Keep(r) => {
                assert!(r.granted);
                assert_eq!(r.lease.unwrap().expires_in_ms, 20_000);
            }
            Step::Write(..) => panic!("early renew wrote"),
        }
        // 21 s in: 9 s left ≤ 10 s → extend to now + ttl
        let r = apply!(
            doc,
            renew(doc.as_ref(), &ctx(NOW + 21_000), "a", 1, 30_000).unwrap(),
        );
        assert_eq!(r.lease.unwrap().expires_in_ms, 30_000);
        assert_eq!(
            doc.as_ref().unwrap().lease.as_ref().unwrap().expires_at_ms,
            NOW + 51_000
        );
        // wrong token / other node / expired → lease_lost
        assert_eq!(
            code(renew(doc.as_ref(), &ctx(NOW + 22_000), "a", 9, 30_000).unwrap_err()),
            "lease_lost"
        );
        assert_eq!(
            code(renew(doc.as_ref(), &ctx(NOW + 22_000), "b", 1, 30_000).unwrap_err()),
            "lease_lost"
        );
        assert_eq!(
            code(renew(doc.as_ref(), &ctx(NOW + 60_000), "a", 1, 30_000).unwrap_err()),
            "lease_lost"
        );
        assert_eq!(
            code(renew(None, &ctx(NOW), "a", 1, 30_000).unwrap_err()),
            "lease_lost"
        );
    }

    #[test]
    fn join_gives_only_the_role_token() {
        let mut doc = None;
        for (id, role) in [("m", RequestedRole::Manager), ("w", RequestedRole::Worker)] {
            apply!(
                doc,
                register(doc.as_ref(), &ctx(NOW), &reg(id, role)).unwrap(),
            );
        }
        assert!(join_view(doc.as_ref(), "prod", "m").unwrap().is_none());
        assert_eq!(
            code(join_view(doc.as_ref(), "prod", "x").unwrap_err()),
            "unknown_node"
        );
        apply!(doc, claim(doc.as_ref(), &ctx(NOW), "m", 30_000).unwrap(),);
        apply!(
            doc,
            publish(doc.as_ref(), &ctx(NOW), &pubreq("m", 1)).unwrap(),
        );
        let m = join_view(doc.as_ref(), "prod", "m").unwrap().unwrap();
        assert_eq!((m.role, m.token.expose()), (Role::Manager, "SWMTKN-1-mgr"));
        let w = join_view(doc.as_ref(), "prod", "w").unwrap().unwrap();
        assert_eq!((w.role, w.token.expose()), (Role::Worker, "SWMTKN-1-wrk"));
        // nothing secret in Debug of the whole document
        assert!(!format!("{:?}", doc.unwrap()).contains("SWMTKN"));
    }

    #[test]
    fn put_doc_checks_only_its_own_version() {
        let mut doc = None;
        let body = serde_json::json!({"n": 1});
        assert_eq!(
            code(put_doc(None, &ctx(NOW), "members", 1, &body).unwrap_err()),
            "version_conflict"
        );
        let d = apply!(doc, put_doc(None, &ctx(NOW), "members", 0, &body).unwrap(),);
        assert_eq!(d.version, 1);
        // an unrelated change (another doc, a registration) does not disturb the next write
        apply!(
            doc,
            put_doc(doc.as_ref(), &ctx(NOW), "other", 0, &body).unwrap(),
        );
        apply!(
            doc,
            register(doc.as_ref(), &ctx(NOW), &reg("n1", RequestedRole::Auto)).unwrap(),
        );
        let d = apply!(
            doc,
            put_doc(doc.as_ref(), &ctx(NOW), "members", 1, &serde_json::json!(2)).unwrap(),
        );
        assert_eq!(d.version, 2);
        assert_eq!(doc_view(doc.as_ref(), "members").body, serde_json::json!(2));
        assert_eq!(doc_view(doc.as_ref(), "other").version, 1);
        assert_eq!(doc_view(doc.as_ref(), "nothing").version, 0);
        assert_eq!(
            code(put_doc(doc.as_ref(), &ctx(NOW), "members", 1, &body).unwrap_err()),
            "version_conflict"
        );
        assert_eq!(
            code(put_doc(None, &ctx(NOW), "Bad Name", 0, &body).unwrap_err()),
            "invalid_name"
        );
    }

    #[test]
    fn document_round_trips_with_its_tokens() {
        let mut doc = None;
        apply!(doc, claim(None, &ctx(NOW), "a", 30_000).unwrap());
        apply!(
            doc,
            publish(doc.as_ref(), &ctx(NOW), &pubreq("a", 1)).unwrap(),
        );
        let doc = doc.unwrap();
        let json = serde_json::to_string(&doc).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        for key in [
            "schema",
            "cluster",
            "target_managers",
            "nodes",
            "lease",
            "next_fencing_token",
            "formed",
            "resets",
            "docs",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["formed"]["manager_token"], "SWMTKN-1-mgr");
        let back: ClusterDoc = serde_json::from_str(&json).unwrap();
        assert_eq!(back, doc);
    }

    #[test]
    fn write_ids_are_remembered_in_a_bounded_ring() {
        let mut d = ClusterDoc::new("prod", 3);
        for i in 0..RECENT_WRITES + 10 {
            d.note_write(&format!("id-{i}"));
        }
        assert_eq!(d.recent_writes.len(), RECENT_WRITES);
        assert!(!d.includes_write("id-9"));
        assert!(d.includes_write("id-10"));
        assert!(d.includes_write(&format!("id-{}", RECENT_WRITES + 9)));
    }

    #[test]
    fn status_has_no_tokens() {
        let mut doc = None;
        apply!(doc, claim(None, &ctx(NOW), "a", 30_000).unwrap());
        apply!(
            doc,
            publish(doc.as_ref(), &ctx(NOW), &pubreq("a", 1)).unwrap(),
        );
        let s = status_view(doc.as_ref(), &ctx(NOW));
        assert_eq!(s.phase, Phase::Formed);
        assert!(!serde_json::to_string(&s).unwrap().contains("SWMTKN"));
        assert_eq!(status_view(None, &ctx(NOW)).phase, Phase::Open);
    }
}
