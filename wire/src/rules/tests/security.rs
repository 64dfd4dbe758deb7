//! Issue 14: node credentials, the operator credential, typed documents, quotas.

use super::*;
use serde_json::{json, Value};

fn wrong() -> Secret {
    Secret::new("not-the-credential")
}

/// A legacy registration: stored before node credentials existed (no digest).
fn make_legacy(m: &mut Memory, id: &str) {
    let mut n = m.node(id).expect("registered").clone();
    n.credential_sha256 = None;
    m.apply(Change {
        nodes: vec![n],
        ..Change::default()
    });
}

// ---------------------------------------------------------------------------------------------
// Registration

#[test]
fn a_new_node_gets_its_credential_once_and_only_its_digest_is_stored() {
    let mut m = cluster(3);
    let o = m
        .register(NOW, &reg("a", RequestedRole::Auto), None, &cred("a"))
        .unwrap();
    assert_eq!(o.answer.credential.as_ref(), Some(&cred("a")));
    assert!(
        !format!("{:?}", o.answer).contains("credential-of-a"),
        "Debug shows a credential"
    );
    m.apply(o.change);
    let stored = m.node("a").unwrap().credential_sha256.clone().unwrap();
    assert_eq!(stored, credential_sha256(&cred("a")));
    assert!(stored.starts_with("sha256:") && stored.len() == 7 + 64);
    let json = serde_json::to_string(&m).unwrap();
    assert!(
        !json.contains("credential-of-a"),
        "the credential is stored"
    );
    // The same registration again, with the credential: nothing issued, nothing written.
    let o = m
        .register(
            NOW,
            &reg("a", RequestedRole::Auto),
            Some(&cred("a")),
            &cred("other"),
        )
        .unwrap();
    assert!(o.change.is_empty());
    assert_eq!(o.answer.credential, None);
}

#[test]
fn registering_an_existing_id_again_needs_its_credential() {
    let mut m = registered(3, &["a", "b"]);
    let mut moved = reg("a", RequestedRole::Auto);
    moved.hostname = "evil".into();
    moved.advertise_addr = "198.18.0.66".into();
    for presented in [None, Some(wrong()), Some(cred("b"))] {
        let e = m
            .register(NOW, &moved, presented.as_ref(), &cred("x"))
            .unwrap_err();
        assert_eq!(e.code, Code::BadNodeCredential);
        assert_eq!(e.code.http_status(), 403);
        assert!(!e.message.contains("credential-of"), "{}", e.message);
    }
    // An identical registration without the credential is refused too (it would hand back
    // nothing, but must not confirm the id is free either way).
    assert_eq!(
        code(m.register(NOW, &reg("a", RequestedRole::Auto), None, &cred("x"))),
        Code::BadNodeCredential
    );
    // The right credential: accepted, the change stored, the credential kept.
    let o = m
        .register(NOW, &moved, Some(&cred("a")), &cred("x"))
        .unwrap();
    assert_eq!(o.answer.credential, None);
    m.apply(o.change);
    let n = m.node("a").unwrap();
    assert_eq!(n.hostname, "evil");
    assert_eq!(
        n.credential_sha256.as_deref(),
        Some(credential_sha256(&cred("a")).as_str())
    );
    assert_eq!(m.state.node_count, 2);
}

#[test]
fn a_legacy_registration_is_bound_on_its_next_registration() {
    let mut m = registered(3, &["a"]);
    make_legacy(&mut m, "a");
    // Until it registers again it can do nothing (whatever it presents).
    assert_eq!(code(join_as(&m, NOW, "a")), Code::BadNodeCredential);
    assert_eq!(code(m.join(NOW, "a", None)), Code::BadNodeCredential);
    assert_eq!(
        code(claim_as(&m, NOW, "a", 10_000)),
        Code::BadNodeCredential
    );
    // The next registration binds it to the fresh credential, returned once.
    let fresh = Secret::new("fresh-for-a");
    let o = m
        .register(NOW, &reg("a", RequestedRole::Auto), None, &fresh)
        .unwrap();
    assert_eq!(o.answer.credential.as_ref(), Some(&fresh));
    assert_eq!(o.answer.role, Role::Manager);
    assert!(o.change.state.is_none(), "no new registration is counted");
    m.apply(o.change);
    assert_eq!(
        m.node("a").unwrap().credential_sha256.as_deref(),
        Some(credential_sha256(&fresh).as_str())
    );
    // Bound: a second registration without it is refused, with it accepted (nothing issued).
    assert_eq!(
        code(m.register(NOW, &reg("a", RequestedRole::Auto), None, &cred("a"))),
        Code::BadNodeCredential
    );
    let o = m
        .register(
            NOW,
            &reg("a", RequestedRole::Auto),
            Some(&fresh),
            &cred("a"),
        )
        .unwrap();
    assert_eq!(o.answer.credential, None);
    assert!(o.change.is_empty());
    assert!(
        m.claim(NOW, "a", 10_000, Some(&fresh))
            .unwrap()
            .answer
            .granted
    );
}

#[test]
fn registrations_are_capped_per_cluster() {
    let mut m = registered(3, &["a"]);
    m.state.node_count = MAX_NODES - 1;
    ap!(m, register_as(&m, NOW, &reg("b", RequestedRole::Auto)));
    assert_eq!(m.state.node_count, MAX_NODES);
    let e = register_as(&m, NOW, &reg("c", RequestedRole::Auto)).unwrap_err();
    assert_eq!(e.code, Code::QuotaExceeded);
    assert_eq!(e.code.http_status(), 403);
    // A registered node may still register again.
    assert!(register_as(&m, NOW, &reg("a", RequestedRole::Auto)).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Claim, renew, publish, join, sync

#[test]
fn only_a_registered_manager_with_its_credential_claims() {
    let mut m = registered(1, &["m", "w"]);
    assert_eq!(
        code(claim_as(&m, NOW, "x", 10_000)),
        Code::NodeNotRegistered
    );
    assert_eq!(code(claim_as(&m, NOW, "w", 10_000)), Code::NotAManager);
    assert_eq!(
        code(m.claim(NOW, "m", 10_000, None)),
        Code::BadNodeCredential
    );
    assert_eq!(
        code(m.claim(NOW, "m", 10_000, Some(&wrong()))),
        Code::BadNodeCredential
    );
    // A worker's own credential does not work for the manager's id.
    assert_eq!(
        code(m.claim(NOW, "m", 10_000, Some(&cred("w")))),
        Code::BadNodeCredential
    );
    assert!(m.state.lease.is_none());
    assert!(ap!(m, claim_as(&m, NOW, "m", 10_000)).granted);
}

#[test]
fn renew_publish_join_and_sync_need_the_callers_credential() {
    let mut m = registered(3, &["a", "b", "c", "d"]);
    ap!(m, claim_as(&m, NOW, "a", 40_000));
    for bad in [None, Some(wrong()), Some(cred("b"))] {
        let bad = bad.as_ref();
        assert_eq!(
            code(m.renew(NOW + 30_000, &renew_req("a", 1, 40_000), bad)),
            Code::BadNodeCredential
        );
        assert_eq!(
            code(m.publish(NOW, &pubreq("a", 1), bad)),
            Code::BadNodeCredential
        );
        assert_eq!(code(m.join(NOW, "a", bad)), Code::BadNodeCredential);
    }
    assert_eq!(
        code(renew_as(&m, NOW, &renew_req("x", 1, 40_000))),
        Code::NodeNotRegistered
    );
    assert_eq!(
        code(publish_as(&m, NOW, &pubreq("x", 1))),
        Code::NodeNotRegistered
    );
    assert!(m.state.formed.is_none());
    ap!(m, publish_as(&m, NOW, &pubreq("a", 1)));
    let s = syncreq(&["198.18.0.1:2377"], 3, &[("a", M), ("b", M), ("c", M)]);
    for bad in [None, Some(wrong()), Some(cred("a"))] {
        assert_eq!(code(m.sync(NOW, &s, bad.as_ref())), Code::BadNodeCredential);
    }
    assert!(sync_as(&m, NOW, &s).is_ok());
}

#[test]
fn join_hands_each_node_the_token_of_its_own_role_only() {
    let m = formed_five();
    for (id, role, token) in [("a", M, "SWMTKN-1-mgr"), ("d", W, "SWMTKN-1-wrk")] {
        let j = join_as(&m, NOW, id).unwrap();
        let info = j.join.as_ref().unwrap();
        assert_eq!((info.role, info.token.expose()), (role, token));
        let wire = serde_json::to_string(&j).unwrap();
        if role == W {
            assert!(
                !wire.contains("SWMTKN-1-mgr"),
                "a worker sees the manager token"
            );
        }
    }
    // Another node's credential does not get its token.
    assert_eq!(
        code(m.join(NOW, "a", Some(&cred("d")))),
        Code::BadNodeCredential
    );
}

#[test]
fn sync_is_the_managers_only() {
    let m = formed_five();
    let mut s = syncreq(&["198.18.0.1:2377"], 3, &[("a", M), ("d", M)]);
    s.node_id = "d".into();
    assert_eq!(code(sync_as(&m, NOW, &s)), Code::NotAManager);
    s.node_id = "x".into();
    assert_eq!(code(sync_as(&m, NOW, &s)), Code::NodeNotRegistered);
    // A sync into another swarm (or an unformed cluster) is swarm_mismatch before anything
    // else: that is how the leader's agent learns to adopt.
    s.swarm_id = "other".into();
    assert_eq!(code(sync_as(&m, NOW, &s)), Code::SwarmMismatch);
}

// ---------------------------------------------------------------------------------------------
// Adoption

#[test]
fn adoption_by_an_unregistered_caller_only_into_an_unformed_cluster() {
    // Formed: an unregistered caller, a worker or a wrong credential cannot adopt.
    let m = formed_five();
    assert_eq!(
        code(adopt_as(&m, NOW, &adoptreq("x", "swarm1", 3))),
        Code::NodeNotRegistered
    );
    assert_eq!(
        code(adopt_as(&m, NOW, &adoptreq("d", "swarm1", 3))),
        Code::NotAManager
    );
    assert_eq!(
        code(m.adopt(NOW, &adoptreq("b", "swarm1", 3), Some(&wrong()), &cred("x"))),
        Code::BadNodeCredential
    );
    let o = adopt_as(&m, NOW, &adoptreq("b", "swarm1", 3)).unwrap();
    assert!(!o.answer.adopted);
    assert_eq!(o.answer.credential, None, "a registered node keeps its own");
    // Not formed: an unregistered caller adopts, is registered and gets its credential once.
    let mut wiped = cluster(3);
    let fresh = Secret::new("fresh-for-x");
    let a = ap!(
        wiped,
        wiped.adopt(NOW, &adoptreq("x", "swarm1", 3), None, &fresh)
    );
    assert!(a.adopted);
    assert_eq!(a.credential.as_ref(), Some(&fresh));
    let n = wiped.node("x").unwrap();
    assert_eq!(n.role, Role::Manager);
    assert_eq!(
        n.credential_sha256.as_deref(),
        Some(credential_sha256(&fresh).as_str())
    );
    assert!(wiped.join(NOW, "x", Some(&fresh)).is_ok());
    // Not formed, but the caller's id is registered with a credential: it must present it.
    let mut open = registered(3, &["y"]);
    assert_eq!(
        code(open.adopt(NOW, &adoptreq("y", "swarm1", 3), None, &cred("z"))),
        Code::BadNodeCredential
    );
    let a = ap!(open, adopt_as(&open, NOW, &adoptreq("y", "swarm1", 3)));
    assert!(a.adopted);
    assert_eq!(a.credential, None);
}

// ---------------------------------------------------------------------------------------------
// Status, operator

#[test]
fn status_carries_no_credential_digest() {
    let m = formed_five();
    let s = m.status(NOW);
    assert_eq!(s.nodes.len(), 5);
    assert!(s.nodes.iter().all(|n| n.credential_sha256.is_none()));
    let json = serde_json::to_string(&s).unwrap();
    assert!(!json.contains("credential"), "{json}");
    for id in ["a", "b", "c", "d", "e"] {
        assert!(!json.contains(&credential_sha256(&cred(id))[7..]));
    }
}

#[test]
fn only_the_operator_credential_passes_check_operator() {
    let mut st = ClusterState::new("prod", 3).unwrap();
    let op = Secret::new("the-operator-credential");
    // A cluster created before operator credentials: the admin API only.
    assert_eq!(code(check_operator(&st, Some(&op))), Code::OperatorRequired);
    assert_eq!(code(check_operator(&st, None)), Code::OperatorRequired);
    st.operator_sha256 = Some(credential_sha256(&op));
    assert!(check_operator(&st, Some(&op)).is_ok());
    for bad in [None, Some(wrong()), Some(cred("a"))] {
        let e = check_operator(&st, bad.as_ref()).unwrap_err();
        assert_eq!(e.code, Code::OperatorRequired);
        assert_eq!(e.code.http_status(), 403);
        assert!(!e.message.contains("the-operator-credential"));
    }
    let json = serde_json::to_string(&status(&st, Vec::new(), NOW)).unwrap();
    assert!(!json.contains("sha256:"), "{json}");
}

// ---------------------------------------------------------------------------------------------
// Documents

fn write(node: &str, v: u64, body: Value) -> DocumentWrite {
    DocumentWrite {
        expected_version: v,
        body,
        node_id: node.into(),
    }
}

fn member_json(id: &str, host: &str, addr: &str) -> Value {
    json!({
        "id": id, "hostname": host, "addr": addr, "role": "worker", "state": "ready",
        "availability": "active", "leader": false, "labels": {"zone": "eu-west-1a"}
    })
}

#[test]
fn only_the_known_documents_exist() {
    let m = formed_five();
    for name in ["members", "other", "membership2"] {
        assert_eq!(
            code(put_as(&m, name, &write("a", 0, json!({})))),
            Code::InvalidName,
            "{name}"
        );
    }
    for name in KNOWN_DOCS {
        assert!(
            put_as(&m, name, &write("a", 0, Value::Null)).is_ok(),
            "{name}"
        );
    }
}

#[test]
fn a_document_write_needs_the_writers_credential() {
    let m = formed_five();
    let w = write("a", 0, json!({"leader": "a"}));
    assert_eq!(
        code(put_as(&m, DOC_KEEPER, &write("x", 0, json!({})))),
        Code::NodeNotRegistered
    );
    for bad in [None, Some(wrong()), Some(cred("b"))] {
        assert_eq!(
            code(m.put_doc(DOC_KEEPER, &w, bad.as_ref())),
            Code::BadNodeCredential
        );
    }
    assert!(put_as(&m, DOC_KEEPER, &w).is_ok());
}

#[test]
fn a_worker_cannot_write_membership_or_keeper() {
    let m = formed_five();
    let body = json!({"nodes": [member_json("abc", "d", "10.0.0.4")]});
    assert_eq!(
        code(put_as(&m, DOC_MEMBERSHIP, &write("d", 0, body.clone()))),
        Code::NotAManager
    );
    assert_eq!(
        code(put_as(
            &m,
            DOC_KEEPER,
            &write("d", 0, json!({"leader": "d"}))
        )),
        Code::NotAManager
    );
    assert!(put_as(&m, DOC_MEMBERSHIP, &write("a", 0, body)).is_ok());
}

fn drain(agent: &str) -> Value {
    json!({"hostname": format!("host-{agent}"), "agent_node_id": agent, "state": "requested",
           "requested_at": "2026-11-30T09:00:00Z", "updated_at": "2026-11-30T09:00:00Z",
           "updated_ms": NOW})
}

#[test]
fn a_worker_changes_only_its_own_drain_requests() {
    let mut m = formed_five();
    // Its own request: accepted.
    let own = json!({"requests": {"dockerd": drain("d")}});
    let d = ap!(m, put_as(&m, DOC_DRAINS, &write("d", 0, own.clone())));
    assert_eq!(d.version, 1);
    // Another node's request: neither added, changed nor removed.
    let mut other = own.clone();
    other["requests"]["dockere"] = drain("e");
    assert_eq!(
        code(put_as(&m, DOC_DRAINS, &write("d", 1, other.clone()))),
        Code::NotAManager
    );
    let o = put_as(&m, DOC_DRAINS, &write("e", 1, other.clone()));
    ap!(m, o);
    let mut changed = other.clone();
    changed["requests"]["dockere"]["state"] = json!("left");
    assert_eq!(
        code(put_as(&m, DOC_DRAINS, &write("d", 2, changed))),
        Code::NotAManager
    );
    assert_eq!(
        code(put_as(&m, DOC_DRAINS, &write("d", 2, own.clone()))),
        Code::NotAManager,
        "removing e's request"
    );
    assert_eq!(
        code(put_as(&m, DOC_DRAINS, &write("d", 2, Value::Null))),
        Code::NotAManager,
        "dropping the whole document"
    );
    // Handing its own request over to another node is changing that node's entries.
    let mut handed = other.clone();
    handed["requests"]["dockerd"]["agent_node_id"] = json!("e");
    assert_eq!(
        code(put_as(&m, DOC_DRAINS, &write("d", 2, handed))),
        Code::NotAManager
    );
    // Unknown top-level fields are refused.
    let mut extra = other.clone();
    extra["x"] = json!(1);
    assert_eq!(
        code(put_as(&m, DOC_DRAINS, &write("d", 2, extra))),
        Code::InvalidRequest
    );
    // Its own entry changed and removed: accepted. A manager may change anyone's.
    let mut mine = other.clone();
    mine["requests"]["dockerd"]["state"] = json!("left");
    ap!(m, put_as(&m, DOC_DRAINS, &write("d", 2, mine.clone())));
    let mut gone = mine.clone();
    gone["requests"].as_object_mut().unwrap().remove("dockerd");
    ap!(m, put_as(&m, DOC_DRAINS, &write("d", 3, gone)));
    ap!(m, put_as(&m, DOC_DRAINS, &write("a", 4, Value::Null)));
    assert_eq!(m.doc(DOC_DRAINS).version, 5);
}

fn rejoin(state: &str) -> Value {
    json!({"hostname": "host-d", "swarm_node_id": "dockerd", "state": state,
           "requested_at": "2026-11-30T09:00:00Z", "updated_ms": NOW})
}

#[test]
fn a_worker_only_moves_the_state_of_its_own_rejoin_request() {
    let mut m = formed_five();
    // A worker cannot ask for its own rejoin (that would make it a manager).
    assert_eq!(
        code(put_as(
            &m,
            DOC_REJOINS,
            &write("d", 0, json!({"requests": {"d": rejoin("requested")}}))
        )),
        Code::NotAManager
    );
    // The keeper (a manager) asks d and e.
    let asked = json!({"requests": {"d": rejoin("requested"), "e": rejoin("requested")}});
    ap!(m, put_as(&m, DOC_REJOINS, &write("a", 0, asked.clone())));
    // d moves its own forward.
    let mut next = asked.clone();
    next["requests"]["d"]["state"] = json!("rejoining");
    next["requests"]["d"]["updated_ms"] = json!(NOW + 1);
    ap!(m, put_as(&m, DOC_REJOINS, &write("d", 1, next.clone())));
    // ... but not e's, not backwards, not its other fields, and it cannot remove it.
    let mut e = next.clone();
    e["requests"]["e"]["state"] = json!("failed");
    assert_eq!(
        code(put_as(&m, DOC_REJOINS, &write("d", 2, e))),
        Code::NotAManager
    );
    let mut back = next.clone();
    back["requests"]["d"]["state"] = json!("requested");
    assert_eq!(
        code(put_as(&m, DOC_REJOINS, &write("d", 2, back))),
        Code::NotAManager
    );
    let mut moved = next.clone();
    moved["requests"]["d"]["swarm_node_id"] = json!("dockera");
    assert_eq!(
        code(put_as(&m, DOC_REJOINS, &write("d", 2, moved))),
        Code::NotAManager
    );
    let mut removed = next.clone();
    removed["requests"].as_object_mut().unwrap().remove("d");
    assert_eq!(
        code(put_as(&m, DOC_REJOINS, &write("d", 2, removed.clone()))),
        Code::NotAManager
    );
    let mut failed = next.clone();
    failed["requests"]["d"]["state"] = json!("failed");
    failed["requests"]["d"]["message"] = json!("joining again failed");
    ap!(m, put_as(&m, DOC_REJOINS, &write("d", 2, failed.clone())));
    // Finished: it cannot revive it.
    let mut revived = failed.clone();
    revived["requests"]["d"]["state"] = json!("rejoining");
    assert_eq!(
        code(put_as(&m, DOC_REJOINS, &write("d", 3, revived))),
        Code::NotAManager
    );
    // The keeper forgets it.
    ap!(m, put_as(&m, DOC_REJOINS, &write("a", 3, removed)));
}

const INJECTED_ADDR: &str = "10.0.0.7; } server { listen 8081; } upstream x { server 10.0.0.8";

#[test]
fn membership_is_validated_strictly() {
    let m = formed_five();
    let put =
        |nodes: Vec<Value>| put_as(&m, DOC_MEMBERSHIP, &write("a", 0, json!({"nodes": nodes})));
    // Valid (IPv4 and IPv6, labels of the allowed charset, a node the engine reports without
    // hostname or address): accepted.
    let mut v6 = member_json("def", "node-2.example.com", "fd00::2");
    v6["labels"] = json!({"com.example/role": "edge web", "k": "a=b,c@d:e+f"});
    assert!(put(vec![
        member_json("abc", "node1", "10.0.0.1"),
        v6,
        member_json("ghi", "", "")
    ])
    .is_ok());
    assert!(put_as(&m, DOC_MEMBERSHIP, &write("a", 0, Value::Null)).is_ok());
    let refused = |node: Value, what: &str| {
        let e = put(vec![member_json("abc", "node1", "10.0.0.1"), node]).unwrap_err();
        assert_eq!(e.code, Code::InvalidRequest, "{what}: {}", e.message);
    };
    refused(member_json("def", "node2", INJECTED_ADDR), "nginx in addr");
    refused(
        member_json("def", "node2", "10.0.0.7:80"),
        "addr with a port",
    );
    refused(member_json("def", "node2", "example.com"), "addr not an IP");
    refused(member_json("def", "node2;", "10.0.0.2"), "hostname with ;");
    refused(
        member_json("def", "a b", "10.0.0.2"),
        "hostname with a space",
    );
    refused(
        member_json("def", "-node", "10.0.0.2"),
        "hostname starting with -",
    );
    refused(member_json("de-f", "node2", "10.0.0.2"), "id with -");
    for (v, what) in [
        ("a{b", "label value with {"),
        ("$host", "label value with $"),
        ("a\nb", "label value with a newline"),
        ("a;b", "label value with ;"),
        ("a\"b", "label value with a quote"),
        ("a}b", "label value with }"),
    ] {
        let mut n = member_json("def", "node2", "10.0.0.2");
        n["labels"] = json!({"zone": v});
        refused(n, what);
    }
    let mut n = member_json("def", "node2", "10.0.0.2");
    n["labels"] = json!({"zo ne": "x"});
    refused(n, "label key with a space");
    let mut n = member_json("def", "node2", "10.0.0.2");
    n["labels"] = json!({"zone": "x".repeat(257)});
    refused(n, "label value too long");
    for (k, v) in [
        ("role", json!("admin")),
        ("state", json!("ready; }")),
        ("availability", json!("x")),
        ("leader", json!("yes")),
        ("labels", json!(["a"])),
        ("extra", json!("x")),
    ] {
        let mut n = member_json("def", "node2", "10.0.0.2");
        n[k] = v;
        refused(n, k);
    }
    let mut n = member_json("def", "node2", "10.0.0.2");
    n.as_object_mut().unwrap().remove("addr");
    refused(n, "no addr");
    for body in [json!([]), json!({"nodes": 3}), json!({"nodes": [], "x": 1})] {
        assert_eq!(
            code(put_as(&m, DOC_MEMBERSHIP, &write("a", 0, body.clone()))),
            Code::InvalidRequest,
            "{body}"
        );
    }
}

#[test]
fn every_document_string_is_bounded_and_printable() {
    let m = formed_five();
    for bad in [
        json!({"leader": "a\u{1b}[2J"}),
        json!({"x": "y".repeat(4097)}),
    ] {
        assert_eq!(
            code(put_as(&m, DOC_KEEPER, &write("a", 0, bad))),
            Code::InvalidRequest
        );
    }
    assert_eq!(
        code(put_as(&m, DOC_KEEPER, &write("a", 0, json!({"a\u{7}": 1})))),
        Code::InvalidRequest,
        "a control character in a key"
    );
}

#[test]
fn an_oversized_document_is_over_quota() {
    let m = formed_five();
    let chunk = "x".repeat(4000);
    let big: Vec<Value> = (0..MAX_DOC_BYTES / 4000 + 1)
        .map(|_| Value::String(chunk.clone()))
        .collect();
    let e = put_as(&m, DOC_KEEPER, &write("a", 0, json!({ "big": big }))).unwrap_err();
    assert_eq!(e.code, Code::QuotaExceeded);
    assert_eq!(e.code.http_status(), 403);
    // Just under the limit: accepted.
    let fits: Vec<Value> = (0..MAX_DOC_BYTES / 4100)
        .map(|_| Value::String(chunk.clone()))
        .collect();
    assert!(put_as(&m, DOC_KEEPER, &write("a", 0, json!({ "big": fits }))).is_ok());
}
