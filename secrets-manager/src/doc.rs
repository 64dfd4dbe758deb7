//! The JSON document stored in the secret — storage only.
//!
//! A [`ClusterDoc`] is one whole cluster as the rendezvous rulebook
//! ([`swarmstrap_wire::rules`]) sees it — a [`rules::Memory`]: state, nodes, named documents —
//! plus what only this storage needs: the layout's `schema` and the ids of the last committed
//! writes (`recent_writes`, for ambiguous-write detection). No rule lives here: the CAS loop in
//! `lib.rs` calls a rule on the freshly read document ([`decide`]), writes nothing when the
//! rule's change is empty, and otherwise applies the change to a copy and compare-and-swaps
//! it; a lost race re-reads and calls the rule again, so every check is evaluated against the
//! state the write replaces.
//!
//! # Layout, and compatibility with the previous version (schema 1)
//!
//! The stored JSON is `schema`, the rulebook's [`rules::Memory`] flattened (its state fields —
//! `name`, `target_managers`, `node_count`, `manager_count`, `lease`, `last_fencing_token`,
//! `formed`, `resets`, `reset_log`, `awaiting_adoption`, `adoptions` —, `nodes` as a list
//! (each with `joined_through` and `seen_at_ms` once known), `docs` as a map of
//! `{version, body}`) and `recent_writes`. That is the layout the previous version wrote, with
//! additions; it stays **schema 1** because both versions read each other's documents:
//!
//! - **Reading a document of the previous version** (or one it rewrote): its `cluster` is the
//!   cluster's name; its `next_fencing_token` (the token the *next* grant gets) becomes
//!   `last_fencing_token = max(last_fencing_token, next_fencing_token - 1)`, so fencing stays
//!   monotonic across the upgrade; the node and manager counts it did not store are recounted
//!   from the node list (only when absent: a sync sets the manager count from the swarm's
//!   healthy managers, which need not all be registered); a `formed` without
//!   `published_by` was published by the holder of the lease the previous version kept after
//!   publishing, so that lease's holder and token become `published_by` / `fencing_token` and
//!   the lease is dropped (the rulebook clears it on publish), which keeps the publisher's
//!   identical re-publish accepted; `reset_log` entries carry `previous_swarm_id` as a string,
//!   which reads as the rulebook's `Option<String>`.
//! - **Writing for a reader of the previous version** (a node still running it, e.g. during a
//!   rolling upgrade or a rollback): every document also carries `cluster` (= `name`) and
//!   `next_fencing_token` (= `last_fencing_token + 1`), the two fields it requires; every other
//!   field it requires is unchanged, and it ignores the new ones. A document it writes back
//!   loses the new fields, and the first rule of this list restores them — all but the
//!   publisher of a cluster formed by this version (it keeps no lease to recover it from):
//!   that publisher's identical re-publish is then refused as `stale_fencing_token`; and what
//!   the previous version has no rule for: an adoption hold (lifted), the adoption count, the
//!   nodes' `seen_at_ms` (the next sync marks them again; until then a departed node is not
//!   dropped) and `joined_through`. That is what a mixed fleet loses.
//! - **Fields added since** (`awaiting_adoption`, `adoptions`, a node's `joined_through` and
//!   `seen_at_ms`) default to false / 0 / absent, so a document written before them reads as
//!   it is.
//!
//! Registrations of nodes that left the swarm are dropped from `nodes` by the leader's sync
//! ([`rules::sync`]), so the document stays bounded under churn (a secret holds at most
//! [`MAX_SECRET_BYTES`]).
//!
//! A document with another `schema` is refused (see [`crate::aws`]).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use swarmstrap_wire::rendezvous::Result;
use swarmstrap_wire::rules::{self, ClusterState, Memory, Outcome};

/// Version of the document layout. A reader refuses any other value.
pub const SCHEMA: u32 = 1;

/// AWS limit on a SecretString (bytes).
pub const MAX_SECRET_BYTES: usize = 65_536;

/// How many write ids the document remembers (~40 bytes each). Covers every commit made
/// during one CAS backoff (≤ 2 s; the account's ~50 TPS write budget allows ≤ 25 commits/s).
pub const RECENT_WRITES: usize = 64;

/// The whole state of one cluster as stored in its secret. `Debug` is safe: the join tokens
/// are [`swarmstrap_wire::Secret`]s.
///
/// Serialized as `schema`, the flattened [`rules::Memory`], `recent_writes` and the two
/// fields a reader of the previous version requires (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterDoc {
    pub schema: u32,
    /// The cluster as the rulebook sees it.
    pub cluster: Memory,
    /// Version ids of the last [`RECENT_WRITES`] committed writes, newest last. A writer whose
    /// stage move had an unknown outcome (timeout, retried request) finds out whether it
    /// committed by looking for its id here, even when others have written on top since.
    pub recent_writes: Vec<String>,
    /// Position in the secret's chain of versions: every write stores its predecessor's plus
    /// one. A reader that has seen (or written) a higher one knows a read is stale (AWS reads
    /// are eventually consistent). 0: written by a version that did not count.
    pub seq: u64,
}

/// What one CAS round does: answer from the current document (nothing to write), or write
/// this new document and answer `T` once the write has committed.
#[derive(Debug)]
pub enum Step<T> {
    Keep(T),
    Write(Box<ClusterDoc>, T),
}

/// Run `rule` on the current document `cur`: an empty change is answered without a write,
/// any other change is applied to a copy of `cur` (for the caller to compare-and-swap). A
/// refusal is returned as the rulebook's error.
pub fn decide<T>(
    cur: &ClusterDoc,
    rule: impl FnOnce(&Memory) -> rules::Result<Outcome<T>>,
) -> Result<Step<T>> {
    let Outcome { answer, change } = rule(&cur.cluster)?;
    if change.is_empty() {
        return Ok(Step::Keep(answer));
    }
    let mut next = cur.clone();
    next.cluster.apply(change);
    Ok(Step::Write(Box::new(next), answer))
}

impl ClusterDoc {
    /// The document of a cluster nobody has written yet.
    pub fn new(cluster: &str, target_managers: u8) -> Result<Self> {
        let state = ClusterState::new(cluster, target_managers)?;
        Ok(ClusterDoc {
            schema: SCHEMA,
            cluster: Memory::new(state),
            recent_writes: Vec::new(),
            seq: 0,
        })
    }

    /// The cluster name stored in the document.
    pub fn name(&self) -> &str {
        &self.cluster.state.name
    }

    /// Record the id of the version about to be written (the CAS layer calls this).
    pub fn note_write(&mut self, version_id: &str) {
        self.seq = self.seq.saturating_add(1);
        self.recent_writes.push(version_id.to_string());
        let excess = self.recent_writes.len().saturating_sub(RECENT_WRITES);
        self.recent_writes.drain(..excess);
    }

    /// True when the version `version_id` was committed and this document descends from it.
    pub fn includes_write(&self, version_id: &str) -> bool {
        self.recent_writes.iter().any(|w| w == version_id)
    }

    /// Bring a document as read up to the current layout (see the module docs): pure field
    /// conversion, no rule. `counted`: the document stored the node and manager counts.
    fn from_stored(stored: StoredIn, counted: bool) -> Self {
        let mut cluster = stored.cluster;
        let state = &mut cluster.state;
        if let Some(next) = stored.next_fencing_token {
            state.last_fencing_token = state.last_fencing_token.max(next.saturating_sub(1));
        }
        if let Some(formed) = state.formed.as_mut() {
            if formed.published_by.is_empty() {
                if let Some(kept) = state.lease.take() {
                    formed.published_by = kept.holder;
                    formed.fencing_token = kept.fencing_token;
                }
            }
        }
        if !counted {
            cluster.recount();
        }
        ClusterDoc {
            schema: stored.schema,
            cluster,
            recent_writes: stored.recent_writes,
            seq: stored.seq,
        }
    }
}

/// The stored layout as written.
#[derive(Serialize)]
struct StoredOut<'a> {
    schema: u32,
    /// For readers of the previous version: the cluster name (the same as `name`).
    cluster: &'a str,
    #[serde(flatten)]
    memory: &'a Memory,
    /// For readers of the previous version: the token the next grant gets.
    next_fencing_token: u64,
    recent_writes: &'a [String],
    seq: u64,
}

/// The stored layout as read (after `cluster` was folded into `name`).
#[derive(Deserialize)]
struct StoredIn {
    schema: u32,
    #[serde(flatten)]
    cluster: Memory,
    #[serde(default)]
    next_fencing_token: Option<u64>,
    #[serde(default)]
    recent_writes: Vec<String>,
    #[serde(default)]
    seq: u64,
}

impl Serialize for ClusterDoc {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        StoredOut {
            schema: self.schema,
            cluster: self.name(),
            memory: &self.cluster,
            next_fencing_token: self.cluster.state.last_fencing_token.saturating_add(1),
            recent_writes: &self.recent_writes,
            seq: self.seq,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for ClusterDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let mut map = serde_json::Map::deserialize(d)?;
        // The previous version names the cluster `cluster`, this one `name` and (for that
        // version's readers) `cluster` too: keep one.
        if let Some(cluster) = map.remove("cluster") {
            match map.get("name") {
                None => {
                    map.insert("name".into(), cluster);
                }
                Some(name) if *name == cluster => {}
                Some(_) => {
                    return Err(D::Error::custom(
                        "the document's `cluster` and `name` disagree",
                    ))
                }
            }
        }
        // The previous version stored no counts (recounted from the node list); this one
        // stores both, and a sync sets the manager count from the swarm.
        let counted = map.contains_key("node_count") && map.contains_key("manager_count");
        let stored: StoredIn =
            serde_json::from_value(serde_json::Value::Object(map)).map_err(D::Error::custom)?;
        Ok(ClusterDoc::from_stored(stored, counted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmstrap_wire::rendezvous::RendezvousError;
    use swarmstrap_wire::{
        DocumentWrite, Phase, PublishRequest, RegisterRequest, RenewRequest, RequestedRole,
        ResetRequest, Role, Secret,
    };

    const NOW: u64 = 1_700_000_000_000;

    fn reg(id: &str, role: RequestedRole) -> RegisterRequest {
        RegisterRequest {
            node_id: id.into(),
            hostname: format!("host-{id}"),
            advertise_addr: "198.18.0.1".into(),
            role,
            joined_through: None,
            labels: None,
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

    fn renewreq(node: &str, token: u64, ttl_ms: u64) -> RenewRequest {
        RenewRequest {
            node_id: node.into(),
            fencing_token: token,
            ttl_ms,
        }
    }

    fn code(e: RendezvousError) -> String {
        match e {
            RendezvousError::Conflict { code, .. } | RendezvousError::Rejected { code, .. } => code,
            other => panic!("unexpected {other}"),
        }
    }

    // Node `id` holds the credential `cred(id)`: handed in as the fresh credential of its
    // registration, presented on every later call.
    fn cred(id: &str) -> Secret {
        Secret::new(format!("credential-of-{id}"))
    }

    fn register_as(
        m: &Memory,
        now: u64,
        req: &RegisterRequest,
    ) -> rules::Result<Outcome<swarmstrap_wire::RegisterResponse>> {
        m.register(now, req, Some(&cred(&req.node_id)), &cred(&req.node_id))
    }

    fn claim_as(
        m: &Memory,
        now: u64,
        id: &str,
        ttl_ms: u64,
    ) -> rules::Result<Outcome<swarmstrap_wire::ClaimResponse>> {
        m.claim(now, id, ttl_ms, Some(&cred(id)))
    }

    fn renew_as(
        m: &Memory,
        now: u64,
        req: &RenewRequest,
    ) -> rules::Result<Outcome<swarmstrap_wire::ClaimResponse>> {
        m.renew(now, req, Some(&cred(&req.node_id)))
    }

    fn publish_as(
        m: &Memory,
        now: u64,
        req: &PublishRequest,
    ) -> rules::Result<Outcome<swarmstrap_wire::PublishResponse>> {
        m.publish(now, req, Some(&cred(&req.node_id)))
    }

    fn join_as(m: &Memory, now: u64, id: &str) -> rules::Result<swarmstrap_wire::JoinResponse> {
        m.join(now, id, Some(&cred(id)))
    }

    fn sync_as(
        m: &Memory,
        now: u64,
        req: &swarmstrap_wire::SyncRequest,
    ) -> rules::Result<Outcome<swarmstrap_wire::SyncResponse>> {
        m.sync(now, req, Some(&cred(&req.node_id)))
    }

    fn adopt_as(
        m: &Memory,
        now: u64,
        req: &swarmstrap_wire::AdoptRequest,
    ) -> rules::Result<Outcome<swarmstrap_wire::AdoptResponse>> {
        m.adopt(now, req, Some(&cred(&req.node_id)), &cred(&req.node_id))
    }

    /// Bind registrations stored before node credentials existed (their next registration).
    fn bind(doc: &mut ClusterDoc, ids: &[&str]) {
        for id in ids {
            let n = doc.cluster.node(id).expect("registered").clone();
            let req = RegisterRequest {
                node_id: n.node_id.clone(),
                hostname: n.hostname.clone(),
                advertise_addr: n.advertise_addr.clone(),
                role: n.requested,
                joined_through: n.joined_through.clone(),
                labels: None,
            };
            let (r, wrote) = run(doc, |m| m.register(NOW, &req, None, &cred(id))).unwrap();
            assert!(wrote);
            assert_eq!(r.credential, Some(cred(id)));
        }
    }

    fn reparse(doc: &ClusterDoc) -> ClusterDoc {
        serde_json::from_str(&serde_json::to_string(doc).unwrap()).unwrap()
    }

    /// One CAS round without AWS: decide on `doc`; a written document replaces it after a
    /// JSON round trip, as the secret would store it. Returns the answer and whether it wrote.
    fn run<T>(
        doc: &mut ClusterDoc,
        rule: impl FnOnce(&Memory) -> rules::Result<Outcome<T>>,
    ) -> Result<(T, bool)> {
        match decide(doc, rule)? {
            Step::Keep(t) => Ok((t, false)),
            Step::Write(next, t) => {
                let stored = reparse(&next);
                assert_eq!(stored, *next, "the document survives its JSON round trip");
                *doc = stored;
                Ok((t, true))
            }
        }
    }

    fn new_doc() -> ClusterDoc {
        ClusterDoc::new("prod", 3).unwrap()
    }

    #[test]
    fn rules_run_through_the_document() {
        let mut doc = new_doc();
        let mut roles = Vec::new();
        for i in 0..5 {
            let (r, wrote) = run(&mut doc, |m| {
                register_as(m, NOW, &reg(&format!("n{i}"), RequestedRole::Auto))
            })
            .unwrap();
            assert!(wrote);
            roles.push(r.role);
        }
        use Role::{Manager as M, Worker as W};
        assert_eq!(roles, [M, M, M, W, W]);
        assert_eq!(
            (
                doc.cluster.state.node_count,
                doc.cluster.state.manager_count
            ),
            (5, 3)
        );
        // re-register: same role, no write
        let (r, wrote) = run(&mut doc, |m| {
            register_as(m, NOW, &reg("n0", RequestedRole::Auto))
        })
        .unwrap();
        assert_eq!((r.role, wrote), (M, false));
        // a worker never claims
        let err = run(&mut doc, |m| claim_as(m, NOW, "n3", 30_000)).unwrap_err();
        assert_eq!(code(err), "not_a_manager");
        // the ttl is clamped to 5 min
        let (c, wrote) = run(&mut doc, |m| claim_as(m, NOW, "n0", 3_600_000)).unwrap();
        assert!(c.granted && wrote);
        let lease = c.lease.unwrap();
        assert_eq!((lease.fencing_token, lease.expires_in_ms), (1, 300_000));
        // another manager loses, without a write
        let (c, wrote) = run(&mut doc, |m| claim_as(m, NOW + 1, "n1", 300_000)).unwrap();
        assert!(!c.granted && !wrote);
        // renew writes only once at most half the ttl is left
        let early = |m: &Memory| renew_as(m, NOW + 100_000, &renewreq("n0", 1, 300_000));
        let (r, wrote) = run(&mut doc, early).unwrap();
        assert!(r.granted && !wrote);
        let due = |m: &Memory| renew_as(m, NOW + 150_000, &renewreq("n0", 1, 300_000));
        let (r, wrote) = run(&mut doc, due).unwrap();
        assert!(r.granted && wrote);
        assert_eq!(r.lease.unwrap().expires_in_ms, 300_000);
        // expired, nobody took over: renew is granted (and writes), so is a publish
        let late = NOW + 150_000 + 300_001;
        let (r, wrote) = run(&mut doc, |m| renew_as(m, late, &renewreq("n0", 1, 10_000))).unwrap();
        assert!(r.granted && wrote);
        let later = late + 10_001;
        let (p, wrote) = run(&mut doc, |m| publish_as(m, later, &pubreq("n0", 1))).unwrap();
        assert!(wrote);
        assert_eq!(p.phase, Phase::Formed);
        assert_eq!(doc.cluster.state.lease, None, "publish clears the lease");
        // the publisher's identical retry: accepted without a write; others refused
        let (_, wrote) = run(&mut doc, |m| publish_as(m, later, &pubreq("n0", 1))).unwrap();
        assert!(!wrote);
        let err = run(&mut doc, |m| publish_as(m, later, &pubreq("n1", 1))).unwrap_err();
        assert_eq!(code(err), "not_lease_holder");
        // renewing once formed is lease_lost; claims are answered without a write
        let err = run(&mut doc, |m| renew_as(m, later, &renewreq("n0", 1, 10_000))).unwrap_err();
        assert_eq!(code(err), "lease_lost");
        let (c, wrote) = run(&mut doc, |m| claim_as(m, later, "n1", 10_000)).unwrap();
        assert!(!c.granted && !wrote);
        // join: the token of the node's own role only; unknown nodes are refused
        let j = join_as(&doc.cluster, later, "n4").unwrap().join.unwrap();
        assert_eq!((j.role, j.token.expose()), (W, "SWMTKN-1-wrk"));
        let j = join_as(&doc.cluster, later, "n2").unwrap().join.unwrap();
        assert_eq!((j.role, j.token.expose()), (M, "SWMTKN-1-mgr"));
        assert_eq!(
            code(join_as(&doc.cluster, later, "ghost").unwrap_err().into()),
            "node_not_registered"
        );
        // nothing secret in the status or in Debug of the whole document
        assert!(!serde_json::to_string(&doc.cluster.status(later))
            .unwrap()
            .contains("SWMTKN"));
        assert!(!format!("{doc:?}").contains("SWMTKN"));
        // recover: compare-and-set on the swarm id; fencing continues after it
        let reset = |swarm: &str| ResetRequest {
            node_id: "n1".into(),
            swarm_id: swarm.into(),
            reason: "all managers lost".into(),
        };
        let err = run(&mut doc, |m| {
            rules::recover(&m.state, later, &reset("other"))
        })
        .unwrap_err();
        assert_eq!(code(err), "swarm_mismatch");
        let (s, wrote) = run(&mut doc, |m| {
            rules::recover(&m.state, later, &reset("swarm-1"))
        })
        .unwrap();
        assert!(wrote);
        assert_eq!((s.phase, s.resets, s.nodes.len()), (Phase::Open, 1, 0));
        assert!(doc.cluster.nodes.is_empty());
        let err = run(&mut doc, |m| claim_as(m, later, "n1", 10_000)).unwrap_err();
        assert_eq!(code(err), "node_not_registered");
        run(&mut doc, |m| {
            register_as(m, later, &reg("n1", RequestedRole::Auto))
        })
        .unwrap();
        let (c, _) = run(&mut doc, |m| claim_as(m, later, "n1", 10_000)).unwrap();
        assert_eq!(c.lease.unwrap().fencing_token, 2);
    }

    #[test]
    fn put_doc_checks_only_its_own_version() {
        let mut doc = new_doc();
        run(&mut doc, |m| {
            register_as(m, NOW, &reg("m", RequestedRole::Manager))
        })
        .unwrap();
        let write = |v: u64, body: serde_json::Value| DocumentWrite {
            expected_version: v,
            body,
            node_id: "m".into(),
        };
        let put = |m: &Memory, name: &str, w: &DocumentWrite| m.put_doc(name, w, Some(&cred("m")));
        let body = serde_json::json!({"n": 1});
        let err = run(&mut doc, |m| put(m, "keeper", &write(1, body.clone()))).unwrap_err();
        assert_eq!(code(err), "version_conflict");
        let (d, _) = run(&mut doc, |m| put(m, "keeper", &write(0, body.clone()))).unwrap();
        assert_eq!(d.version, 1);
        // an unrelated change (another doc, a registration) does not disturb the next write
        run(&mut doc, |m| put(m, "drains", &write(0, body.clone()))).unwrap();
        run(&mut doc, |m| {
            register_as(m, NOW, &reg("n1", RequestedRole::Auto))
        })
        .unwrap();
        let (d, _) = run(&mut doc, |m| {
            put(m, "keeper", &write(1, serde_json::json!(2)))
        })
        .unwrap();
        assert_eq!(d.version, 2);
        assert_eq!(doc.cluster.doc("keeper").body, serde_json::json!(2));
        assert_eq!(doc.cluster.doc("drains").version, 1);
        assert_eq!(doc.cluster.doc("rejoins").version, 0);
        for bad in ["Bad Name", "members"] {
            let err = run(&mut doc, |m| put(m, bad, &write(0, body.clone()))).unwrap_err();
            assert_eq!(code(err), "invalid_name");
        }
        // without the writer's credential: refused, nothing written
        let err = run(&mut doc, |m| {
            m.put_doc("keeper", &write(2, body.clone()), Some(&cred("n1")))
        })
        .unwrap_err();
        assert_eq!(code(err), "bad_node_credential");
        assert_eq!(doc.cluster.doc("keeper").version, 2);
    }

    /// A formed document exactly as the previous version wrote it (schema 1): `cluster`,
    /// `next_fencing_token`, no counts, no `published_by`, the lease kept after publishing.
    fn legacy_formed() -> serde_json::Value {
        serde_json::json!({
            "schema": 1,
            "cluster": "prod",
            "target_managers": 3,
            "nodes": [
                {"node_id": "a", "hostname": "host-a", "advertise_addr": "198.18.0.1",
                 "requested": "auto", "role": "manager", "registered_at_ms": NOW},
                {"node_id": "b", "hostname": "host-b", "advertise_addr": "198.18.0.2",
                 "requested": "manager", "role": "manager", "registered_at_ms": NOW},
                {"node_id": "w", "hostname": "host-w", "advertise_addr": "198.18.0.3",
                 "requested": "worker", "role": "worker", "registered_at_ms": NOW}
            ],
            "lease": {"holder": "a", "fencing_token": 4, "expires_at_ms": NOW + 30_000},
            "next_fencing_token": 5,
            "formed": {"swarm_id": "swarm-1",
                       "ca_digest": swarmstrap_wire::format_fingerprint(&[7u8; 32]),
                       "manager_addrs": ["198.18.0.1:2377"],
                       "manager_token": "SWMTKN-1-mgr", "worker_token": "SWMTKN-1-wrk",
                       "formed_at_ms": NOW},
            "resets": 1,
            "reset_log": [{"at_ms": NOW - 86_400_000, "previous_swarm_id": "swarm-0",
                           "by": "node b", "reason": "lost all managers"}],
            "docs": {"lb": {"version": 2, "body": {"x": 1}}},
            "recent_writes": ["id-1", "id-2"]
        })
    }

    #[test]
    fn schema_1_document_of_the_previous_version_loads_and_keeps_fencing_monotonic() {
        // An unformed one, whose holder's lease (token 4) has expired.
        let mut old = legacy_formed();
        old["formed"] = serde_json::Value::Null;
        old["lease"]["expires_at_ms"] = serde_json::json!(NOW - 1);
        let text = serde_json::to_string(&old).unwrap();
        let mut doc: ClusterDoc = serde_json::from_str(&text).unwrap();
        assert_eq!((doc.schema, doc.name()), (SCHEMA, "prod"));
        let st = &doc.cluster.state;
        assert_eq!(
            st.last_fencing_token, 4,
            "next_fencing_token 5 → last granted 4"
        );
        assert_eq!((st.node_count, st.manager_count), (3, 2), "recounted");
        assert_eq!(
            st.reset_log[0].previous_swarm_id.as_deref(),
            Some("swarm-0")
        );
        assert_eq!(doc.cluster.doc("lb").version, 2);
        assert!(doc.includes_write("id-2"));
        // registered before node credentials: nothing until bound by a registration
        let err = run(&mut doc, |m| renew_as(m, NOW, &renewreq("a", 4, 1_000))).unwrap_err();
        assert_eq!(code(err), "bad_node_credential");
        bind(&mut doc, &["a", "b"]);
        // the old holder may still renew its expired lease (nobody took over) ...
        let (r, _) = run(&mut doc, |m| renew_as(m, NOW, &renewreq("a", 4, 1_000))).unwrap();
        assert!(r.granted);
        // ... and once another manager has taken over, it gets a strictly larger token
        let (c, wrote) = run(&mut doc, |m| claim_as(m, NOW + 2_000, "b", 30_000)).unwrap();
        assert!(c.granted && wrote);
        assert_eq!(c.lease.unwrap().fencing_token, 5);
        let err = run(&mut doc, |m| {
            renew_as(m, NOW + 2_001, &renewreq("a", 4, 1_000))
        })
        .unwrap_err();
        assert_eq!(code(err), "lease_lost");
        // the recount drives role assignment: one manager seat is left
        let (r, _) = run(&mut doc, |m| {
            register_as(m, NOW, &reg("c", RequestedRole::Auto))
        })
        .unwrap();
        assert_eq!(r.role, Role::Manager);
        let (r, _) = run(&mut doc, |m| {
            register_as(m, NOW, &reg("d", RequestedRole::Auto))
        })
        .unwrap();
        assert_eq!(r.role, Role::Worker);
        // written back: the next grant for a reader of the previous version is 6
        let v: serde_json::Value = serde_json::to_value(&doc).unwrap();
        assert_eq!(v["last_fencing_token"], 5);
        assert_eq!(v["next_fencing_token"], 6);
        // and a fresh document of the previous version (never claimed) starts at token 1
        let mut fresh = legacy_formed();
        fresh["formed"] = serde_json::Value::Null;
        fresh["lease"] = serde_json::Value::Null;
        fresh["next_fencing_token"] = serde_json::json!(1);
        let mut doc: ClusterDoc = serde_json::from_value(fresh).unwrap();
        bind(&mut doc, &["a"]);
        let (c, _) = run(&mut doc, |m| claim_as(m, NOW, "a", 30_000)).unwrap();
        assert_eq!(c.lease.unwrap().fencing_token, 1);
    }

    #[test]
    fn formed_document_of_the_previous_version_keeps_its_publisher() {
        let mut doc: ClusterDoc = serde_json::from_value(legacy_formed()).unwrap();
        let f = doc.cluster.state.formed.as_ref().unwrap();
        assert_eq!((f.published_by.as_str(), f.fencing_token), ("a", 4));
        assert_eq!(doc.cluster.state.lease, None);
        bind(&mut doc, &["a", "w"]);
        // the publisher's identical retry is still accepted, without a write
        let (p, wrote) = run(&mut doc, |m| publish_as(m, NOW, &pubreq("a", 4))).unwrap();
        assert_eq!((p.phase, wrote), (Phase::Formed, false));
        let err = run(&mut doc, |m| publish_as(m, NOW, &pubreq("a", 3))).unwrap_err();
        assert_eq!(code(err), "stale_fencing_token");
        let j = join_as(&doc.cluster, NOW, "w").unwrap().join.unwrap();
        assert_eq!(j.token.expose(), "SWMTKN-1-wrk");
        // after a recovery the next grant still gets a larger token than any before
        let reset = ResetRequest {
            node_id: "b".into(),
            swarm_id: "swarm-1".into(),
            reason: String::new(),
        };
        run(&mut doc, |m| rules::recover(&m.state, NOW, &reset)).unwrap();
        assert_eq!(doc.cluster.state.resets, 2);
        assert_eq!(doc.cluster.state.reset_log.len(), 2);
        run(&mut doc, |m| {
            register_as(m, NOW, &reg("b", RequestedRole::Auto))
        })
        .unwrap();
        let (c, _) = run(&mut doc, |m| claim_as(m, NOW, "b", 30_000)).unwrap();
        assert_eq!(c.lease.unwrap().fencing_token, 5);
    }

    /// What the previous version required of a document (its reader, trimmed to the fields
    /// without a serde default; unknown fields were ignored).
    #[allow(dead_code)]
    mod previous {
        use serde::Deserialize;

        #[derive(Deserialize)]
        pub struct ClusterDoc {
            pub schema: u32,
            pub cluster: String,
            pub target_managers: u8,
            #[serde(default)]
            pub nodes: Vec<swarmstrap_wire::NodeInfo>,
            #[serde(default)]
            pub lease: Option<Lease>,
            pub next_fencing_token: u64,
            #[serde(default)]
            pub formed: Option<Formed>,
            #[serde(default)]
            pub resets: u64,
            #[serde(default)]
            pub reset_log: Vec<ResetRecord>,
            #[serde(default)]
            pub docs: std::collections::BTreeMap<String, Doc>,
            #[serde(default)]
            pub recent_writes: Vec<String>,
        }
        #[derive(Deserialize)]
        pub struct Lease {
            pub holder: String,
            pub fencing_token: u64,
            pub expires_at_ms: u64,
        }
        #[derive(Deserialize)]
        pub struct Formed {
            pub swarm_id: String,
            pub ca_digest: String,
            pub manager_addrs: Vec<String>,
            pub manager_token: swarmstrap_wire::Secret,
            pub worker_token: swarmstrap_wire::Secret,
            pub formed_at_ms: u64,
        }
        #[derive(Deserialize)]
        pub struct ResetRecord {
            pub at_ms: u64,
            pub previous_swarm_id: String,
            pub by: String,
            pub reason: String,
        }
        #[derive(Deserialize)]
        pub struct Doc {
            pub version: u64,
            pub body: serde_json::Value,
        }
    }

    #[test]
    fn documents_stay_readable_by_the_previous_version() {
        let mut doc = new_doc();
        run(&mut doc, |m| {
            register_as(m, NOW, &reg("a", RequestedRole::Auto))
        })
        .unwrap();
        let (c, _) = run(&mut doc, |m| claim_as(m, NOW, "a", 30_000)).unwrap();
        assert!(c.granted);
        doc.note_write("id-1");
        let text = serde_json::to_string(&doc).unwrap();
        let old: previous::ClusterDoc = serde_json::from_str(&text).unwrap();
        assert_eq!((old.schema, old.cluster.as_str()), (1, "prod"));
        assert_eq!(old.next_fencing_token, 2);
        assert_eq!(old.lease.unwrap().holder, "a");
        assert_eq!(old.nodes.len(), 1);
        // formed and reset, too
        run(&mut doc, |m| publish_as(m, NOW, &pubreq("a", 1))).unwrap();
        let text = serde_json::to_string(&doc).unwrap();
        let old: previous::ClusterDoc = serde_json::from_str(&text).unwrap();
        assert_eq!(old.formed.unwrap().worker_token.expose(), "SWMTKN-1-wrk");
        let reset = ResetRequest {
            node_id: "a".into(),
            swarm_id: "swarm-1".into(),
            reason: "lost".into(),
        };
        run(&mut doc, |m| rules::recover(&m.state, NOW, &reset)).unwrap();
        let old: previous::ClusterDoc =
            serde_json::from_str(&serde_json::to_string(&doc).unwrap()).unwrap();
        assert_eq!(old.reset_log[0].previous_swarm_id, "swarm-1");
        assert_eq!(old.docs.len(), 0);
        // and the stored keys are the rulebook's, with the tokens in the secret's value
        let v = serde_json::to_value(&doc).unwrap();
        for key in [
            "schema",
            "cluster",
            "name",
            "target_managers",
            "node_count",
            "manager_count",
            "nodes",
            "lease",
            "last_fencing_token",
            "next_fencing_token",
            "formed",
            "resets",
            "reset_log",
            "docs",
            "recent_writes",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
    }

    #[test]
    fn a_document_whose_cluster_and_name_disagree_is_refused() {
        let mut v = serde_json::to_value(new_doc()).unwrap();
        v["cluster"] = serde_json::json!("other");
        let err = serde_json::from_value::<ClusterDoc>(v).unwrap_err();
        assert!(err.to_string().contains("disagree"), "{err}");
        // neither name at all: not a document
        let mut v = serde_json::to_value(new_doc()).unwrap();
        v.as_object_mut().unwrap().remove("cluster");
        v.as_object_mut().unwrap().remove("name");
        assert!(serde_json::from_value::<ClusterDoc>(v).is_err());
        assert!(serde_json::from_str::<ClusterDoc>("[1, 2]").is_err());
    }

    #[test]
    fn write_ids_are_remembered_in_a_bounded_ring() {
        let mut d = new_doc();
        for i in 0..RECENT_WRITES + 10 {
            d.note_write(&format!("id-{i}"));
        }
        assert_eq!(d.recent_writes.len(), RECENT_WRITES);
        assert!(!d.includes_write("id-9"));
        assert!(d.includes_write("id-10"));
        assert!(d.includes_write(&format!("id-{}", RECENT_WRITES + 9)));
        assert_eq!(reparse(&d), d);
    }

    #[test]
    fn sync_and_adopt_survive_the_round_trip_and_prune_the_document() {
        use swarmstrap_wire::{AdoptRequest, Member, SyncRequest};
        // Adopted by a swarm of 3 healthy managers of which only the caller is registered: the
        // manager count is the swarm's, not the node list's, and reads back as stored.
        let mut doc = new_doc();
        let adopt = AdoptRequest {
            node_id: "lead".into(),
            hostname: "host-lead".into(),
            advertise_addr: "198.18.0.1".into(),
            swarm_id: "swarm-1".into(),
            ca_digest: swarmstrap_wire::format_fingerprint(&[7u8; 32]),
            manager_addrs: vec!["198.18.0.1:2377".into()],
            manager_token: Secret::new("SWMTKN-1-mgr"),
            worker_token: Secret::new("SWMTKN-1-wrk"),
            managers: 3,
        };
        let (a, wrote) = run(&mut doc, |m| adopt_as(m, NOW, &adopt)).unwrap();
        assert!(a.adopted && wrote);
        assert_eq!(doc.cluster.state.manager_count, 3);
        assert_eq!(doc.cluster.nodes.len(), 1);
        // So a new node is a worker: the swarm's managers stand.
        let (r, _) = run(&mut doc, |m| {
            register_as(m, NOW, &reg("n1", RequestedRole::Auto))
        })
        .unwrap();
        assert_eq!(r.role, Role::Worker);
        let (r, _) = run(&mut doc, |m| {
            register_as(m, NOW, &reg("n2", RequestedRole::Auto))
        })
        .unwrap();
        assert_eq!(r.role, Role::Worker);
        let sync = |members: &[&str], managers: u32| SyncRequest {
            node_id: "lead".into(),
            swarm_id: "swarm-1".into(),
            manager_addrs: vec!["198.18.0.1:2377".into()],
            managers,
            members: members
                .iter()
                .map(|id| Member {
                    node_id: id.to_string(),
                    role: if *id == "lead" {
                        Role::Manager
                    } else {
                        Role::Worker
                    },
                })
                .collect(),
        };
        run(&mut doc, |m| {
            sync_as(m, NOW + 1, &sync(&["lead", "n1", "n2"], 1))
        })
        .unwrap();
        let before = serde_json::to_string(&doc).unwrap().len();
        // n2 left the swarm: its registration is gone from the stored document.
        let (r, wrote) = run(&mut doc, |m| sync_as(m, NOW + 2, &sync(&["lead", "n1"], 1))).unwrap();
        assert!(wrote);
        assert_eq!(r.pruned, vec!["n2".to_string()]);
        let text = serde_json::to_string(&doc).unwrap();
        assert!(!text.contains("\"n2\""), "{text}");
        assert!(text.len() < before);
        assert_eq!(
            (
                doc.cluster.state.node_count,
                doc.cluster.state.manager_count
            ),
            (2, 1)
        );
        // The new fields are stored, and a document without them (written before) reads.
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["adoptions"], 1);
        assert_eq!(v["awaiting_adoption"], false);
        assert!(v["nodes"][0]["seen_at_ms"].is_u64(), "{v}");
        let old: ClusterDoc = serde_json::from_value(legacy_formed()).unwrap();
        assert!(!old.cluster.state.awaiting_adoption);
        assert_eq!(old.cluster.state.adoptions, 0);
        assert!(old.cluster.nodes.values().all(|n| n.seen_at_ms.is_none()));
    }
}
