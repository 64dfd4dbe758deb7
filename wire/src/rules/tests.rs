//! The rules with time as an input: every boundary is checked at the exact millisecond.

use super::*;

const NOW: u64 = 1_700_000_000_000;

fn cluster(target: u8) -> Memory {
    Memory::new(ClusterState::new("prod", target).unwrap())
}

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
        swarm_id: "swarm1".into(),
        ca_digest: crate::format_fingerprint(&[7u8; 32]),
        manager_addrs: vec!["198.18.0.1:2377".into()],
        manager_token: Secret::new("SWMTKN-1-mgr"),
        worker_token: Secret::new("SWMTKN-1-wrk"),
    }
}

fn renew_req(node: &str, token: u64, ttl_ms: u64) -> RenewRequest {
    RenewRequest {
        node_id: node.into(),
        fencing_token: token,
        ttl_ms,
    }
}

/// Apply an outcome to the cluster and return the answer.
fn apply<T>(m: &mut Memory, o: Result<Outcome<T>>) -> T {
    let o = o.expect("the rule refused");
    m.apply(o.change);
    o.answer
}

fn code<T: std::fmt::Debug>(r: Result<T>) -> Code {
    r.expect_err("the rule accepted").code
}

// Every node `id` of these tests holds the credential `cred(id)`: the tests hand it in as the
// fresh credential of its registration and present it on every later call.

fn cred(id: &str) -> Secret {
    Secret::new(format!("credential-of-{id}"))
}

fn register_as(m: &Memory, now: u64, req: &RegisterRequest) -> Result<Outcome<RegisterResponse>> {
    m.register(now, req, Some(&cred(&req.node_id)), &cred(&req.node_id))
}

fn claim_as(m: &Memory, now: u64, id: &str, ttl_ms: u64) -> Result<Outcome<ClaimResponse>> {
    m.claim(now, id, ttl_ms, Some(&cred(id)))
}

fn renew_as(m: &Memory, now: u64, req: &RenewRequest) -> Result<Outcome<ClaimResponse>> {
    m.renew(now, req, Some(&cred(&req.node_id)))
}

fn publish_as(m: &Memory, now: u64, req: &PublishRequest) -> Result<Outcome<PublishResponse>> {
    m.publish(now, req, Some(&cred(&req.node_id)))
}

fn join_as(m: &Memory, now: u64, id: &str) -> Result<JoinResponse> {
    m.join(now, id, Some(&cred(id)))
}

fn sync_as(m: &Memory, now: u64, req: &SyncRequest) -> Result<Outcome<SyncResponse>> {
    m.sync(now, req, Some(&cred(&req.node_id)))
}

fn adopt_as(m: &Memory, now: u64, req: &AdoptRequest) -> Result<Outcome<AdoptResponse>> {
    m.adopt(now, req, Some(&cred(&req.node_id)), &cred(&req.node_id))
}

fn put_as(m: &Memory, name: &str, write: &DocumentWrite) -> Result<Outcome<Document>> {
    m.put_doc(name, write, Some(&cred(&write.node_id)))
}

/// A cluster (target `target`) with `ids` registered in order (managers first, up to the
/// target).
fn registered(target: u8, ids: &[&str]) -> Memory {
    let mut m = cluster(target);
    for id in ids {
        let o = register_as(&m, NOW, &reg(id, RequestedRole::Auto));
        apply(&mut m, o);
    }
    m
}

#[test]
fn codes_have_one_spelling_each() {
    let mut seen = std::collections::HashSet::new();
    for c in Code::ALL {
        assert!(seen.insert(c.as_str()), "{c:?} spelled twice");
        assert_eq!(Code::parse(c.as_str()), Some(c));
        assert!(matches!(c.http_status(), 400 | 403 | 404 | 409));
    }
    assert_eq!(Code::parse("lease_expired"), None);
    let e: crate::rendezvous::RendezvousError = RuleError::new(Code::LeaseLost, "x").into();
    assert!(
        matches!(e, crate::rendezvous::RendezvousError::Conflict { ref code, .. } if code == "lease_lost")
    );
    let e: crate::rendezvous::RendezvousError = RuleError::new(Code::InvalidName, "x").into();
    assert!(matches!(
        e,
        crate::rendezvous::RendezvousError::Rejected { .. }
    ));
}

#[test]
fn register_fills_managers_to_the_target_then_workers() {
    let mut m = cluster(3);
    let roles: Vec<Role> = (0..5)
        .map(|i| {
            let o = register_as(&m, NOW, &reg(&format!("n{i}"), RequestedRole::Auto));
            apply(&mut m, o).role
        })
        .collect();
    use Role::*;
    assert_eq!(roles, [Manager, Manager, Manager, Worker, Worker]);
    assert_eq!((m.state.manager_count, m.state.node_count), (3, 5));
    let o = register_as(&m, NOW, &reg("m", RequestedRole::Manager));
    assert_eq!(apply(&mut m, o).role, Worker);
    // idempotent: no change at all
    let o = register_as(&m, NOW, &reg("n0", RequestedRole::Auto)).unwrap();
    assert!(o.change.is_empty());
    assert_eq!(o.answer.role, Manager);
    // a changed requested role is stored, the role is kept, counts unchanged
    let o = register_as(&m, NOW, &reg("n0", RequestedRole::Worker)).unwrap();
    assert_eq!(o.answer.role, Manager);
    assert!(o.change.state.is_none());
    assert_eq!(o.change.nodes[0].requested, RequestedRole::Worker);
}

#[test]
fn claim_lease_and_takeover_at_the_exact_expiry() {
    let mut m = registered(3, &["a", "b"]);
    let a = claim_as(&m, NOW, "a", 10_000);
    let a = apply(&mut m, a);
    assert!(a.granted);
    assert_eq!(a.lease.as_ref().unwrap().fencing_token, 1);
    // 1 ms before expiry: still a's; the holder's re-claim is granted without a change
    let o = claim_as(&m, NOW + 9_999, "a", 10_000).unwrap();
    assert!(o.answer.granted && o.change.is_empty());
    assert_eq!(o.answer.lease.unwrap().expires_in_ms, 1);
    let o = claim_as(&m, NOW + 9_999, "b", 10_000).unwrap();
    assert!(!o.answer.granted && o.change.is_empty());
    // at expiry: b takes over with token 2
    let b = claim_as(&m, NOW + 10_000, "b", 10_000);
    let b = apply(&mut m, b);
    assert!(b.granted);
    assert_eq!(b.lease.unwrap().fencing_token, 2);
    assert_eq!(m.state.last_fencing_token, 2);
}

#[test]
fn a_worker_cannot_claim_even_an_open_cluster() {
    let mut m = cluster(1);
    let o = register_as(&m, NOW, &reg("m", RequestedRole::Auto));
    apply(&mut m, o);
    let o = register_as(&m, NOW, &reg("w", RequestedRole::Auto));
    assert_eq!(apply(&mut m, o).role, Role::Worker);
    assert_eq!(code(claim_as(&m, NOW, "w", 10_000)), Code::NotAManager);
    // nor while another holds a live lease, nor once formed: a worker never claims
    let o = claim_as(&m, NOW, "m", 10_000);
    apply(&mut m, o);
    assert_eq!(code(claim_as(&m, NOW, "w", 10_000)), Code::NotAManager);
    let o = publish_as(&m, NOW, &pubreq("m", 1));
    apply(&mut m, o);
    assert_eq!(code(claim_as(&m, NOW, "w", 10_000)), Code::NotAManager);
}

#[test]
fn ttl_is_clamped() {
    assert_eq!(clamp_ttl_ms(0), MIN_LEASE_TTL_MS);
    assert_eq!(clamp_ttl_ms(u64::MAX), MAX_LEASE_TTL_MS);
    let m = registered(3, &["a"]);
    let o = claim_as(&m, NOW, "a", 3_600_000).unwrap();
    assert_eq!(o.answer.lease.unwrap().expires_in_ms, MAX_LEASE_TTL_MS);
}

#[test]
fn renewal_writes_only_in_the_second_half_and_survives_expiry_without_takeover() {
    let mut m = registered(3, &["a", "b"]);
    let o = claim_as(&m, NOW, "a", 40_000);
    apply(&mut m, o);
    // 1 ms before half-time: no change
    let o = renew_as(&m, NOW + 19_999, &renew_req("a", 1, 40_000)).unwrap();
    assert!(o.change.is_empty() && o.answer.granted);
    assert_eq!(o.answer.lease.unwrap().expires_in_ms, 20_001);
    // at half-time: extended to now + ttl
    let o = renew_as(&m, NOW + 20_000, &renew_req("a", 1, 40_000));
    assert_eq!(apply(&mut m, o).lease.unwrap().expires_in_ms, 40_000);
    // after expiry, nobody took over: still the holder's
    let o = renew_as(&m, NOW + 100_000, &renew_req("a", 1, 40_000));
    let r = apply(&mut m, o);
    assert!(r.granted);
    assert_eq!(r.lease.unwrap().fencing_token, 1);
    // wrong holder or token: lease_lost
    assert_eq!(
        code(renew_as(&m, NOW + 100_001, &renew_req("b", 1, 40_000))),
        Code::LeaseLost
    );
    assert_eq!(
        code(renew_as(&m, NOW + 100_001, &renew_req("a", 2, 40_000))),
        Code::LeaseLost
    );
    assert_eq!(
        code(renew_as(
            &registered(3, &["a"]),
            NOW,
            &renew_req("a", 1, 40_000)
        )),
        Code::LeaseLost
    );
}

#[test]
fn the_agents_renewal_period_leaves_two_periods_of_margin() {
    // The agent renews every ttl / RENEW_DIVISOR. Simulate it for a long bootstrap in which
    // every other renewal is lost: the lease never runs out.
    let ttl = 30_000;
    let period = ttl / u64::from(RENEW_DIVISOR);
    let mut m = registered(3, &["a"]);
    let o = claim_as(&m, NOW, "a", ttl);
    apply(&mut m, o);
    for k in 1..=40u64 {
        let now = NOW + k * period;
        assert!(
            m.state.live_lease(now).is_some(),
            "lease ran out at renewal {k}"
        );
        if k % 2 == 0 {
            continue; // this renewal was lost on the way
        }
        let o = renew_as(&m, now, &renew_req("a", 1, ttl));
        apply(&mut m, o);
    }
}

#[test]
fn publish_is_fenced_by_holder_and_token_not_by_the_clock() {
    let mut m = registered(3, &["a", "b"]);
    assert_eq!(
        code(publish_as(&m, NOW, &pubreq("a", 1))),
        Code::NotLeaseHolder
    );
    let o = claim_as(&m, NOW, "a", 10_000);
    apply(&mut m, o);
    assert_eq!(
        code(publish_as(&m, NOW, &pubreq("b", 1))),
        Code::NotLeaseHolder
    );
    assert_eq!(
        code(publish_as(&m, NOW, &pubreq("a", 2))),
        Code::StaleFencingToken
    );
    // expired, nobody took over: accepted
    let o = publish_as(&m, NOW + 50_000, &pubreq("a", 1));
    assert_eq!(apply(&mut m, o).phase, Phase::Formed);
    assert!(m.state.lease.is_none());
    let f = m.state.formed.as_ref().unwrap();
    assert_eq!((f.published_by.as_str(), f.fencing_token), ("a", 1));
}

#[test]
fn publish_after_a_takeover_is_stale() {
    let mut m = registered(3, &["a", "b"]);
    let o = claim_as(&m, NOW, "a", 10_000);
    apply(&mut m, o);
    let o = claim_as(&m, NOW + 10_000, "b", 10_000);
    apply(&mut m, o);
    assert_eq!(
        code(publish_as(&m, NOW + 10_001, &pubreq("a", 1))),
        Code::StaleFencingToken
    );
    let o = publish_as(&m, NOW + 10_001, &pubreq("b", 2));
    apply(&mut m, o);
    // into the formed cluster: identical retry ok (no change), anything else refused
    let o = publish_as(&m, NOW + 99_000, &pubreq("b", 2)).unwrap();
    assert!(o.change.is_empty());
    assert_eq!(
        code(publish_as(&m, NOW, &pubreq("a", 1))),
        Code::StaleFencingToken
    );
    assert_eq!(
        code(publish_as(&m, NOW, &pubreq("a", 2))),
        Code::NotLeaseHolder
    );
    let mut other = pubreq("b", 2);
    other.manager_addrs.push("198.18.0.2:2377".into());
    assert_eq!(code(publish_as(&m, NOW, &other)), Code::AlreadyFormed);
    // claims and renewals on a formed cluster
    assert!(
        !claim_as(&m, NOW + 99_000, "b", 10_000)
            .unwrap()
            .answer
            .granted
    );
    assert_eq!(
        code(renew_as(&m, NOW, &renew_req("b", 2, 10_000))),
        Code::LeaseLost
    );
}

#[test]
fn ca_digest_is_canonical_and_validated() {
    let mut p = pubreq("a", 1);
    p.ca_digest = p.ca_digest.to_uppercase();
    assert_eq!(
        validate_publish(&p).unwrap(),
        crate::format_fingerprint(&[7u8; 32])
    );
    for bad in ["md5:00", "sha256:abc", ""] {
        p.ca_digest = bad.into();
        assert_eq!(code(validate_publish(&p)), Code::InvalidRequest, "{bad:?}");
    }
}

#[test]
fn validation_messages_do_not_echo_tokens() {
    let mut p = pubreq("a", 1);
    p.manager_token = Secret::new(format!("SWMTKN-{}", "x".repeat(600)));
    let e = validate_publish(&p).unwrap_err();
    assert!(!e.message.contains("SWMTKN"), "{}", e.message);
}

#[test]
fn join_answers_the_role_token_only_to_registered_nodes() {
    let mut m = cluster(1);
    for (id, role) in [("m", RequestedRole::Auto), ("w", RequestedRole::Auto)] {
        let o = register_as(&m, NOW, &reg(id, role));
        apply(&mut m, o);
    }
    assert!(join_as(&m, NOW, "w").unwrap().join.is_none());
    assert_eq!(code(join_as(&m, NOW, "x")), Code::NodeNotRegistered);
    let o = claim_as(&m, NOW, "m", 10_000);
    apply(&mut m, o);
    let o = publish_as(&m, NOW, &pubreq("m", 1));
    apply(&mut m, o);
    let w = join_as(&m, NOW, "w").unwrap().join.unwrap();
    assert_eq!((w.role, w.token.expose()), (Role::Worker, "SWMTKN-1-wrk"));
    let mm = join_as(&m, NOW, "m").unwrap().join.unwrap();
    assert_eq!(
        (mm.role, mm.token.expose()),
        (Role::Manager, "SWMTKN-1-mgr")
    );
    assert!(!format!("{m:?}").contains("SWMTKN"), "Debug leaks a token");
    assert!(!serde_json::to_string(&m.status(NOW))
        .unwrap()
        .contains("SWMTKN"));
}

#[test]
fn reset_is_cas_on_the_swarm_id_and_clears_registrations() {
    let mut m = cluster(1);
    let o = register_as(&m, NOW, &reg("m", RequestedRole::Auto));
    apply(&mut m, o);
    let req = ResetRequest {
        node_id: "m".into(),
        swarm_id: "swarm1".into(),
        reason: "lost".into(),
    };
    assert_eq!(code(recover(&m.state, NOW, &req)), Code::SwarmMismatch);
    let o = claim_as(&m, NOW, "m", 10_000);
    apply(&mut m, o);
    let o = publish_as(&m, NOW, &pubreq("m", 1));
    apply(&mut m, o);
    let wrong = ResetRequest {
        swarm_id: "other".into(),
        ..req.clone()
    };
    assert_eq!(code(recover(&m.state, NOW, &wrong)), Code::SwarmMismatch);
    let o = recover(&m.state, NOW, &req);
    let s = apply(&mut m, o);
    assert_eq!((s.phase, s.resets), (Phase::Open, 1));
    assert!(m.nodes.is_empty());
    assert_eq!((m.state.manager_count, m.state.node_count), (0, 0));
    assert_eq!(
        m.state.last_fencing_token, 1,
        "fencing keeps counting across resets"
    );
    assert_eq!(
        m.state.reset_log[0].previous_swarm_id.as_deref(),
        Some("swarm1")
    );
    assert_eq!(m.state.reset_log[0].by, "node m");
    let long = ResetRequest {
        reason: "r".repeat(MAX_REASON_CHARS + 1),
        ..req
    };
    assert_eq!(code(recover(&m.state, NOW, &long)), Code::InvalidRequest);
}

#[test]
fn reset_log_is_bounded_and_the_counter_is_not() {
    let mut m = cluster(1);
    for _ in 0..RESET_LOG + 5 {
        let o = admin_reset(&m.state, NOW);
        m.apply(o.change);
    }
    assert_eq!(m.state.reset_log.len(), RESET_LOG);
    assert_eq!(m.state.resets, RESET_LOG as u64 + 5);
}

#[test]
fn documents_are_cas_on_their_own_version() {
    let mut m = registered(3, &["a"]);
    let w = |v, body| DocumentWrite {
        expected_version: v,
        body,
        node_id: "a".into(),
    };
    let drains =
        |n: u64| serde_json::json!({ "requests": { format!("d{n}"): { "agent_node_id": "a" } } });
    assert_eq!(
        code(put_as(&m, DOC_DRAINS, &w(1, drains(1)))),
        Code::VersionConflict
    );
    let o = put_as(&m, DOC_DRAINS, &w(0, drains(1)));
    assert_eq!(apply(&mut m, o).version, 1);
    let o = put_as(&m, DOC_KEEPER, &w(0, serde_json::json!({"leader": "a"})));
    apply(&mut m, o);
    let o = put_as(&m, DOC_DRAINS, &w(1, drains(2)));
    assert_eq!(apply(&mut m, o).version, 2);
    assert_eq!(m.doc(DOC_DRAINS).body, drains(2));
    assert_eq!(m.doc(DOC_KEEPER).version, 1);
    assert_eq!(m.doc(DOC_REJOINS).version, 0);
    assert_eq!(
        code(put_as(&m, "Bad Name", &w(0, serde_json::json!(1)))),
        Code::InvalidName
    );
}

#[test]
fn memory_round_trips_and_reads_the_old_layouts() {
    let mut m = cluster(3);
    let o = register_as(&m, NOW, &reg("n1", RequestedRole::Auto));
    apply(&mut m, o);
    let json = serde_json::to_value(&m).unwrap();
    assert!(
        json["nodes"].is_array(),
        "nodes are stored as a list: {json}"
    );
    let back: Memory = serde_json::from_value(json).unwrap();
    assert_eq!(back, m);
    // the Secrets Manager document used `cluster` for the name
    let old: ClusterState = serde_json::from_value(serde_json::json!({
        "cluster": "prod", "target_managers": 3, "lease": null, "formed": null
    }))
    .unwrap();
    assert_eq!(old.name, "prod");
}

// ---------------------------------------------------------------------------------------------
// Following the swarm, adoption, the adoption hold

/// `apply(&mut m, rule)` where the rule reads `m` first.
macro_rules! ap {
    ($m:ident, $rule:expr $(,)?) => {{
        let o = $rule;
        apply(&mut $m, o)
    }};
}

/// A formed cluster (target 3): a, b, c managers, d, e workers, all registered; `a` published.
fn formed_five() -> Memory {
    let mut m = cluster(3);
    for id in ["a", "b", "c", "d", "e"] {
        ap!(m, register_as(&m, NOW, &reg(id, RequestedRole::Auto)));
    }
    let c = ap!(m, claim_as(&m, NOW, "a", 10_000));
    let token = c.lease.unwrap().fencing_token;
    ap!(m, publish_as(&m, NOW, &pubreq("a", token)));
    m
}

fn member(id: &str, role: Role) -> crate::Member {
    crate::Member {
        node_id: id.into(),
        role,
    }
}

fn syncreq(addrs: &[&str], managers: u32, members: &[(&str, Role)]) -> SyncRequest {
    SyncRequest {
        node_id: "b".into(),
        swarm_id: "swarm1".into(),
        manager_addrs: addrs.iter().map(|a| a.to_string()).collect(),
        managers,
        members: members.iter().map(|(i, r)| member(i, *r)).collect(),
    }
}

fn adoptreq(node: &str, swarm: &str, managers: u32) -> AdoptRequest {
    AdoptRequest {
        node_id: node.into(),
        hostname: format!("host-{node}"),
        advertise_addr: "198.18.0.2".into(),
        swarm_id: swarm.into(),
        ca_digest: crate::format_fingerprint(&[7u8; 32]),
        manager_addrs: vec!["198.18.0.2:2377".into()],
        manager_token: Secret::new("SWMTKN-1-mgr"),
        worker_token: Secret::new("SWMTKN-1-wrk"),
        managers,
    }
}

const M: Role = Role::Manager;
const W: Role = Role::Worker;

#[test]
fn sync_makes_join_info_carry_the_live_managers() {
    let mut m = formed_five();
    let all = [("a", M), ("b", M), ("c", M), ("d", W), ("e", W)];
    let r = ap!(
        m,
        sync_as(
            &m,
            NOW,
            &syncreq(
                &["198.18.0.1:2377", "198.18.0.2:2377", "198.18.0.3:2377"],
                3,
                &all,
            ),
        ),
    );
    assert!(r.changed);
    let j = join_as(&m, NOW, "d").unwrap().join.unwrap();
    assert_eq!(j.manager_addrs.len(), 3);
    // The same report again writes nothing.
    let o = sync_as(
        &m,
        NOW + 1,
        &syncreq(
            &["198.18.0.1:2377", "198.18.0.2:2377", "198.18.0.3:2377"],
            3,
            &all,
        ),
    )
    .unwrap();
    assert!(o.change.is_empty(), "{:?}", o.change);
    assert!(!o.answer.changed);
    // `a` (the one that ran init) died for good; `d` was promoted in its place.
    let now = [("b", M), ("c", M), ("d", M), ("e", W)];
    let r = ap!(
        m,
        sync_as(
            &m,
            NOW + 2,
            &syncreq(
                &["198.18.0.2:2377", "198.18.0.3:2377", "198.18.0.4:2377"],
                3,
                &now,
            ),
        ),
    );
    assert_eq!(r.pruned, vec!["a".to_string()]);
    let j = join_as(&m, NOW, "e").unwrap().join.unwrap();
    assert!(!j.manager_addrs.contains(&"198.18.0.1:2377".to_string()));
    assert_eq!(m.node("d").unwrap().role, Role::Manager);
    assert!(m.node("a").is_none());
}

#[test]
fn sync_is_refused_for_another_swarm_or_an_unformed_cluster() {
    let mut m = formed_five();
    let mut r = syncreq(&["198.18.0.1:2377"], 1, &[]);
    r.swarm_id = "other".into();
    assert_eq!(code(sync_as(&m, NOW, &r)), Code::SwarmMismatch);
    let st = m.state.clone();
    m.apply(admin_reset(&st, NOW).change);
    assert_eq!(
        code(sync_as(&m, NOW, &syncreq(&["198.18.0.1:2377"], 1, &[]))),
        Code::SwarmMismatch
    );
    assert_eq!(
        code(sync_as(&m, NOW, &syncreq(&[], 1, &[]))),
        Code::InvalidRequest
    );
}

#[test]
fn a_replaced_manager_frees_its_slot_for_the_next_node() {
    let mut m = formed_five();
    // Every node joined; then manager `c` left the swarm (`swarm-agent leave`, removed).
    let all = [("a", M), ("b", M), ("c", M), ("d", W), ("e", W)];
    ap!(m, sync_as(&m, NOW, &syncreq(&["198.18.0.1:2377"], 3, &all)));
    let r = ap!(m, register_as(&m, NOW, &reg("f", RequestedRole::Auto)));
    assert_eq!(
        r.role,
        Role::Worker,
        "3 managers stand: a new node is a worker"
    );
    let left = [("a", M), ("b", M), ("d", W), ("e", W), ("f", W)];
    let r = ap!(
        m,
        sync_as(&m, NOW + 5, &syncreq(&["198.18.0.1:2377"], 2, &left)),
    );
    assert_eq!(r.pruned, vec!["c".to_string()]);
    assert_eq!(r.manager_count, 2);
    let r = ap!(m, register_as(&m, NOW + 6, &reg("g", RequestedRole::Auto)));
    assert_eq!(
        r.role,
        Role::Manager,
        "the replacement comes back as a manager"
    );
}

#[test]
fn joining_registrations_are_kept_for_the_grace_and_capped_at_the_target() {
    let mut m = formed_five();
    // The leader `a` reports (`b` is demoted below: a worker's sync would be refused).
    let by_a = |r: SyncRequest| SyncRequest {
        node_id: "a".into(),
        ..r
    };
    // Only a is in the swarm yet; b, c (managers) and d, e (workers) are joining.
    let r = ap!(
        m,
        sync_as(
            &m,
            NOW + 1,
            &by_a(syncreq(&["198.18.0.1:2377"], 1, &[("a", M)]))
        ),
    );
    assert!(r.pruned.is_empty());
    assert_eq!(r.manager_count, 3);
    assert_eq!(m.node("b").unwrap().role, Role::Manager);
    assert_eq!(m.node("d").unwrap().role, Role::Worker);
    // The swarm has 3 healthy managers already (e.g. after an adoption): joiners are workers.
    let r = ap!(
        m,
        sync_as(
            &m,
            NOW + 2,
            &by_a(syncreq(&["198.18.0.1:2377"], 3, &[("a", M)]))
        ),
    );
    assert_eq!(r.manager_count, 3);
    assert_eq!(m.node("b").unwrap().role, Role::Worker);
    assert_eq!(m.node("c").unwrap().role, Role::Worker);
    // Never seen and older than the grace: dropped.
    let late = NOW + PENDING_JOIN_GRACE_MS + 1;
    let r = ap!(
        m,
        sync_as(
            &m,
            late,
            &by_a(syncreq(&["198.18.0.1:2377"], 1, &[("a", M)]))
        ),
    );
    assert_eq!(r.pruned.len(), 4, "{:?}", r.pruned);
    assert_eq!(m.nodes.len(), 1);
    assert_eq!(m.state.node_count, 1);
}

#[test]
fn adoption_reforms_a_forgetful_cluster_under_a_fresh_token() {
    let m = formed_five();
    let before = m.state.last_fencing_token;
    // The rendezvous forgot: a re-created cluster awaiting adoption, with the old tokens.
    let mut wiped = cluster(3);
    wiped.state.last_fencing_token = before - 1; // a restored backup may even be older
    ap!(wiped, set_adoption_hold(&wiped.state, true));
    // A new node registers and claims in the window: refused, nothing granted.
    let r = ap!(
        wiped,
        register_as(&wiped, NOW, &reg("new", RequestedRole::Auto)),
    );
    assert_eq!(r.role, Role::Manager);
    assert_eq!(
        code(claim_as(&wiped, NOW, "new", 10_000)),
        Code::AwaitingAdoption
    );
    assert!(wiped.status(NOW).awaiting_adoption);
    // The swarm's leader adopts.
    let a = ap!(
        wiped,
        adopt_as(&wiped, NOW + 1, &adoptreq("b", "swarm1", 3)),
    );
    assert!(a.adopted);
    assert!(a.fencing_token > before - 1);
    let st = wiped.status(NOW + 1);
    assert_eq!(st.phase, Phase::Formed);
    assert!(!st.awaiting_adoption);
    assert_eq!(st.adoptions, 1);
    assert_eq!(st.swarm_id.as_deref(), Some("swarm1"));
    // The node that registered in the window joins the adopted swarm, as a worker (3 managers
    // stand), and can never claim.
    let j = join_as(&wiped, NOW + 2, "new").unwrap().join.unwrap();
    assert_eq!(j.role, Role::Worker);
    assert_eq!(j.swarm_id, "swarm1");
    assert_eq!(
        code(claim_as(&wiped, NOW + 2, "new", 10_000)),
        Code::NotAManager
    );
    // Adopting again (a retry) changes nothing and keeps the token.
    let again = adopt_as(&wiped, NOW + 3, &adoptreq("b", "swarm1", 3)).unwrap();
    assert!(!again.answer.adopted);
    assert_eq!(again.answer.fencing_token, a.fencing_token);
    assert!(again.change.is_empty(), "{:?}", again.change);
    // Another swarm cannot adopt a formed cluster, and an unregistered node cannot adopt at all.
    assert_eq!(
        code(adopt_as(&wiped, NOW + 4, &adoptreq("b", "swarm2", 1))),
        Code::AlreadyFormed
    );
    assert_eq!(
        code(adopt_as(&wiped, NOW + 4, &adoptreq("x", "swarm2", 1))),
        Code::NodeNotRegistered
    );
}

#[test]
fn adoption_fences_a_lease_granted_before_it() {
    let mut m = cluster(3);
    ap!(m, register_as(&m, NOW, &reg("n", RequestedRole::Auto)));
    let c = ap!(m, claim_as(&m, NOW, "n", 10_000));
    let token = c.lease.unwrap().fencing_token;
    ap!(m, adopt_as(&m, NOW + 1, &adoptreq("b", "swarm1", 3)));
    let mut late = pubreq("n", token);
    late.swarm_id = "swarm-of-n".into();
    assert_eq!(
        code(publish_as(&m, NOW + 2, &late)),
        Code::StaleFencingToken
    );
}

#[test]
fn a_retired_swarm_is_never_adopted_and_holds_are_lifted_by_reset_or_operator() {
    let mut m = formed_five();
    let req = ResetRequest {
        node_id: "b".into(),
        swarm_id: "swarm1".into(),
        reason: "all managers lost".into(),
    };
    ap!(m, recover(&m.state, NOW, &req));
    assert_eq!(m.status(NOW).retired_swarm_ids, vec!["swarm1".to_string()]);
    assert_eq!(
        code(adopt_as(&m, NOW, &adoptreq("b", "swarm1", 1))),
        Code::SwarmRetired
    );
    // A hold, then lifted by the operator: claims are granted again.
    ap!(m, set_adoption_hold(&m.state, true));
    ap!(m, register_as(&m, NOW, &reg("n", RequestedRole::Auto)));
    assert_eq!(code(claim_as(&m, NOW, "n", 10_000)), Code::AwaitingAdoption);
    ap!(m, set_adoption_hold(&m.state, false));
    assert!(claim_as(&m, NOW, "n", 10_000).unwrap().answer.granted);
    // A formed cluster cannot be held.
    let f = formed_five();
    assert_eq!(code(set_adoption_hold(&f.state, true)), Code::AlreadyFormed);
    // A reset lifts a hold.
    let mut h = cluster(3);
    ap!(h, set_adoption_hold(&h.state, true));
    let st = h.state.clone();
    h.apply(admin_reset(&st, NOW).change);
    assert!(!h.state.awaiting_adoption);
}

#[test]
fn registration_records_the_join_address() {
    let mut m = cluster(3);
    ap!(m, register_as(&m, NOW, &reg("a", RequestedRole::Auto)));
    let mut r = reg("a", RequestedRole::Auto);
    r.joined_through = Some("198.18.0.9:2377".into());
    let o = register_as(&m, NOW, &r).unwrap();
    assert_eq!(o.change.nodes.len(), 1);
    m.apply(o.change);
    assert_eq!(
        m.node("a").unwrap().joined_through.as_deref(),
        Some("198.18.0.9:2377")
    );
    assert!(register_as(&m, NOW, &r).unwrap().change.is_empty());
}

#[test]
fn an_adopted_token_exceeds_what_a_wiped_rendezvous_forgot() {
    // The formed cluster went through some claims and resets: its token is well above 1.
    let mut m = formed_five();
    for _ in 0..3 {
        let st = m.state.clone();
        m.apply(admin_reset(&st, NOW).change);
        ap!(m, register_as(&m, NOW, &reg("a", RequestedRole::Auto)));
        ap!(m, claim_as(&m, NOW, "a", 10_000));
    }
    let forgotten = m.state.last_fencing_token;
    assert!(forgotten > 3);
    // Wiped: the new cluster remembers nothing, and is adopted a moment later.
    let mut wiped = cluster(3);
    let a = ap!(
        wiped,
        adopt_as(&wiped, NOW + 1_000, &adoptreq("b", "swarm1", 3))
    );
    assert!(
        a.fencing_token > forgotten,
        "{} > {forgotten}",
        a.fencing_token
    );
    // Wiped again and adopted again later: larger again, although claims after the first
    // adoption counted on from its token.
    let first = a.fencing_token;
    let st = wiped.state.clone();
    wiped.apply(admin_reset(&st, NOW + 2_000).change);
    ap!(
        wiped,
        register_as(&wiped, NOW + 2_000, &reg("x", RequestedRole::Auto))
    );
    let c = ap!(wiped, claim_as(&wiped, NOW + 2_000, "x", 10_000));
    assert_eq!(c.lease.unwrap().fencing_token, first + 1);
    let mut again = cluster(3);
    let a = ap!(
        again,
        adopt_as(&again, NOW + 60_000, &adoptreq("b", "swarm1", 3))
    );
    assert!(a.fencing_token > first + 1);
    // A remembered token above the clock (a clock that went back) still grows.
    assert_eq!(adoption_token(NOW + 5, NOW), NOW + 6);
}

// After `ap!` and the fixtures above (textual macro scope).
mod security;

#[test]
fn a_token_rotation_is_pending_until_the_leader_publishes_new_tokens() {
    // Not formed: nothing to rotate.
    let open = cluster(3);
    assert_eq!(
        code(request_token_rotation(&open.state)),
        Code::SwarmMismatch
    );
    let mut m = formed_five();
    assert_eq!(m.status(NOW).token_rotation_pending, None);
    assert_eq!(ap!(m, request_token_rotation(&m.state)), 1);
    // Asking again while it is pending is the same rotation.
    assert_eq!(ap!(m, request_token_rotation(&m.state)), 1);
    assert_eq!(m.status(NOW).token_rotation_pending, Some(1));
    // A refresh with the same tokens is not the rotation.
    ap!(m, adopt_as(&m, NOW, &adoptreq("a", "swarm1", 3)));
    assert_eq!(m.status(NOW).token_rotation_pending, Some(1));
    // The leader rotated: new tokens published, the rotation is done, joins get them.
    let mut rotated = adoptreq("a", "swarm1", 3);
    rotated.manager_token = Secret::new("SWMTKN-1-mgr2");
    rotated.worker_token = Secret::new("SWMTKN-1-wrk2");
    ap!(m, adopt_as(&m, NOW, &rotated));
    let st = m.status(NOW);
    assert_eq!((st.token_rotation_pending, st.token_rotations), (None, 1));
    let j = m.join(NOW, "e", Some(&cred("e"))).unwrap().join.unwrap();
    assert_eq!(j.token.expose(), "SWMTKN-1-wrk2");
    // A worker cannot publish tokens (adopt needs a registered manager).
    let mut evil = rotated.clone();
    evil.node_id = "e".into();
    evil.worker_token = Secret::new("SWMTKN-1-attacker");
    assert_eq!(code(adopt_as(&m, NOW, &evil)), Code::NotAManager);
    // The next request is rotation 2; a reset settles a pending one (the next swarm has new
    // tokens anyway).
    assert_eq!(ap!(m, request_token_rotation(&m.state)), 2);
    let reset = ResetRequest {
        node_id: "op".into(),
        swarm_id: "swarm1".into(),
        reason: String::new(),
    };
    ap!(m, recover(&m.state, NOW, &reset));
    assert_eq!(m.status(NOW).token_rotation_pending, None);
}

#[test]
fn a_registration_carries_the_labels_its_node_asks_for() {
    let mut m = registered(3, &["a"]);
    let labels = |pairs: &[(&str, &str)]| -> Option<BTreeMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    };
    let stored = |m: &Memory| m.nodes.get("a").unwrap().labels.clone();
    let mut r = reg("a", RequestedRole::Auto);
    r.labels = labels(&[("zone", "eu-1"), ("gpu", "yes")]);
    let o = register_as(&m, NOW, &r).unwrap();
    assert!(!o.change.is_empty());
    m.apply(o.change);
    assert_eq!(stored(&m).get("zone").map(String::as_str), Some("eu-1"));
    // The same set again writes nothing.
    assert!(register_as(&m, NOW, &r).unwrap().change.is_empty());
    // A registration without labels (an older agent, the bootstrap) keeps them.
    let o = register_as(&m, NOW, &reg("a", RequestedRole::Auto)).unwrap();
    assert!(o.change.is_empty());
    assert_eq!(stored(&m).len(), 2);
    // A changed set replaces the stored one; an empty set clears it.
    r.labels = labels(&[("zone", "eu-2")]);
    let o = register_as(&m, NOW, &r).unwrap();
    m.apply(o.change);
    assert_eq!(stored(&m), labels(&[("zone", "eu-2")]).unwrap());
    r.labels = Some(BTreeMap::new());
    let o = register_as(&m, NOW, &r).unwrap();
    m.apply(o.change);
    assert!(stored(&m).is_empty());
    // A new node's first registration stores them too.
    let mut b = reg("b", RequestedRole::Auto);
    b.labels = labels(&[("rack", "r1")]);
    let o = register_as(&m, NOW, &b).unwrap();
    m.apply(o.change);
    assert_eq!(m.nodes.get("b").unwrap().labels.len(), 1);
}

#[test]
fn labels_out_of_bounds_are_refused_with_the_reason() {
    let m = registered(3, &["a"]);
    let mut r = reg("a", RequestedRole::Auto);
    let mut too_many = BTreeMap::new();
    for i in 0..=crate::labels::MAX_NODE_LABELS {
        too_many.insert(format!("k{i}"), "v".to_string());
    }
    r.labels = Some(too_many);
    let e = register_as(&m, NOW, &r).unwrap_err();
    assert_eq!(e.code, Code::InvalidRequest);
    assert!(e.message.contains("at most"), "{}", e.message);
    for (k, v) in [
        ("com.docker.x", "v"),
        ("swarmstrap.managed-labels", "v"),
        ("k", "a;b"),
        ("a b", "v"),
    ] {
        r.labels = Some([(k.to_string(), v.to_string())].into());
        let e = register_as(&m, NOW, &r).unwrap_err();
        assert_eq!(e.code, Code::InvalidRequest, "{k}={v}");
        assert!(e.message.contains("invalid labels"), "{}", e.message);
    }
    r.labels = Some([("k".to_string(), "v".repeat(257))].into());
    assert_eq!(
        register_as(&m, NOW, &r).unwrap_err().code,
        Code::InvalidRequest
    );
}
