//! The Secrets Manager backend against a real moto server (started per test).

mod common;

use common::{conflict_code, eventually, publish_req, reg, Moto};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use swarmstrap_secrets_manager::backoff::Backoff;
use swarmstrap_secrets_manager::ApiCallCounts;
use swarmstrap_wire::rendezvous::{Rendezvous, RendezvousError};
use swarmstrap_wire::rules::{DOC_DRAINS as DRAINS, DOC_KEEPER as KEEPER};
use swarmstrap_wire::{Phase, RequestedRole, Role};

const MGR: &str = "SWMTKN-1-manager-token-0123456789";
const WRK: &str = "SWMTKN-1-worker-token-9876543210";

fn add(total: &mut ApiCallCounts, c: ApiCallCounts) {
    total.get_secret_value += c.get_secret_value;
    total.create_secret += c.create_secret;
    total.put_secret_value += c.put_secret_value;
    total.update_secret_version_stage += c.update_secret_version_stage;
    total.other += c.other;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_contenders_elect_exactly_one_and_all_join() {
    let moto = Arc::new(Moto::start());
    let mut tasks = Vec::new();
    for i in 0..20 {
        let moto = moto.clone();
        tasks.push(tokio::spawn(async move {
            let backend = moto.backend("race", 3);
            // the agent's view: only the trait
            let rv: &dyn Rendezvous = &backend;
            let id = format!("node-{i:02}");
            // Everyone registers (the CreateSecret race), then claims: only a registered
            // manager may claim; a worker's claim is refused outright.
            let reg_resp = rv
                .register(&reg(&id, RequestedRole::Manager))
                .await
                .unwrap();
            assert!(
                reg_resp.credential.is_some(),
                "a new node gets its credential"
            );
            assert_eq!(
                rv.credential(&id),
                reg_resp.credential,
                "and the backend keeps it"
            );
            let claim = match rv.claim(&id, Duration::from_secs(60)).await {
                Ok(c) => Some(c),
                Err(e) if conflict_code(&e) == Some("not_a_manager") => {
                    assert_eq!(reg_resp.role, Role::Worker, "{e}");
                    None
                }
                Err(e) => panic!("{id}: {e}"),
            };
            let granted = claim.as_ref().is_some_and(|c| c.granted);
            // A live lease is always shown; once formed there is none (publishing cleared it).
            let token = claim.and_then(|c| {
                assert!(c.lease.is_some() || c.phase == Phase::Formed, "{c:?}");
                c.lease.map(|lease| {
                    assert_eq!(c.granted, lease.holder == id);
                    lease.fencing_token
                })
            });
            if granted {
                let token = token.expect("granted");
                rv.publish(&publish_req(&id, token, MGR, WRK))
                    .await
                    .unwrap();
            } else if let Some(token) = token {
                // A non-winner trying to publish with the winner's token is refused.
                let err = rv
                    .publish(&publish_req(&id, token, "SWMTKN-1-x", "SWMTKN-1-y"))
                    .await
                    .unwrap_err();
                assert!(
                    matches!(
                        conflict_code(&err),
                        Some("not_lease_holder" | "already_formed")
                    ),
                    "{err}"
                );
            }
            let join = rv
                .wait_join(&id, Duration::from_secs(30))
                .await
                .unwrap()
                .join
                .expect("formed within the wait");
            assert_eq!(join.role, reg_resp.role);
            let want = if join.role == Role::Manager { MGR } else { WRK };
            assert_eq!(join.token.expose(), want);
            let calls = backend.api_calls();
            (id, granted, join.role, token, calls)
        }));
    }
    let mut winners = Vec::new();
    let mut managers = 0;
    let mut tokens = std::collections::BTreeSet::new();
    let mut total = ApiCallCounts::default();
    for t in tasks {
        let (id, granted, role, token, calls) = t.await.unwrap();
        add(&mut total, calls);
        if granted {
            winners.push(id);
        }
        if role == Role::Manager {
            managers += 1;
        }
        tokens.extend(token);
    }
    eprintln!(
        "20 contenders, total: reads={} writes={} {total:?}",
        total.reads(),
        total.writes()
    );
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    assert_eq!(managers, 3);
    assert_eq!(tokens.len(), 1, "everyone saw the same fencing token");
    let status = moto.backend("race", 3).status().await.unwrap();
    assert_eq!(status.phase, Phase::Formed);
    assert_eq!(status.nodes.len(), 20);
    assert_eq!(status.lease, None, "publishing clears the lease");
    // Bounded versions: losers create none (the chain CAS), so 20 registrations + claim +
    // publish + the managers' secret stay within N + 5 however many races were lost.
    let shared = versions(&moto, "swarmstrap/race").await;
    let mgr = versions(&moto, "swarmstrap/race/managers").await;
    eprintln!("versions: shared secret {shared}, managers' secret {mgr}");
    assert!(shared + mgr <= 20 + 5, "{shared} + {mgr} versions");
    // Workers read the shared secret only: it holds no manager token.
    let raw = raw_value(&moto, "swarmstrap/race").await;
    assert!(!raw.contains(MGR), "manager token in the shared secret");
    assert!(raw.contains(WRK));
    assert!(raw_value(&moto, "swarmstrap/race/managers")
        .await
        .contains(MGR));
}

/// How many versions a secret has (moto keeps them all).
async fn versions(moto: &Moto, name: &str) -> usize {
    let mut n = 0;
    let mut next: Option<String> = None;
    loop {
        let out = moto
            .client()
            .list_secret_version_ids()
            .secret_id(name)
            .include_deprecated(true)
            .max_results(100)
            .set_next_token(next.take())
            .send()
            .await
            .unwrap();
        n += out.versions().len();
        match out.next_token() {
            Some(t) if !t.is_empty() => next = Some(t.to_string()),
            _ => return n,
        }
    }
}

async fn raw_value(moto: &Moto, name: &str) -> String {
    moto.client()
        .get_secret_value()
        .secret_id(name)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .unwrap()
        .secret_string()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_claim_is_taken_over_and_the_old_holder_is_fenced() {
    let moto = Moto::start();
    let old = moto.backend("stale", 3);
    let new = moto.backend("stale", 3);
    old.register(&reg("a", RequestedRole::Manager))
        .await
        .unwrap();
    new.register(&reg("b", RequestedRole::Manager))
        .await
        .unwrap();
    let a = old.claim("a", Duration::from_millis(1_000)).await.unwrap();
    assert!(a.granted);
    let a_token = a.lease.unwrap().fencing_token;
    // "a" vanishes. "b" keeps claiming (backoff, deadline) until the lease expires.
    let b = eventually(
        "b to take over the expired lease",
        Duration::from_secs(20),
        || async {
            let r = new.claim("b", Duration::from_secs(30)).await.unwrap();
            r.granted.then_some(r)
        },
    )
    .await;
    let b_token = b.lease.unwrap().fencing_token;
    assert!(b_token > a_token, "{b_token} > {a_token}");
    // The fencing token is checked first: a's token is no longer the current one.
    let err = old
        .publish(&publish_req("a", a_token, MGR, WRK))
        .await
        .unwrap_err();
    assert_eq!(conflict_code(&err), Some("stale_fencing_token"), "{err}");
    let err = old
        .renew("a", a_token, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(conflict_code(&err), Some("lease_lost"), "{err}");
    // The new holder's stale-token publish is refused too; the right one succeeds.
    let err = new
        .publish(&publish_req("b", a_token, MGR, WRK))
        .await
        .unwrap_err();
    assert_eq!(conflict_code(&err), Some("stale_fencing_token"), "{err}");
    let p = new
        .publish(&publish_req("b", b_token, MGR, WRK))
        .await
        .unwrap();
    assert_eq!(p.phase, Phase::Formed);
    // identical re-publish is accepted (idempotent, no write); a's is still refused
    let writes = new.api_calls().writes();
    new.publish(&publish_req("b", b_token, MGR, WRK))
        .await
        .unwrap();
    assert_eq!(new.api_calls().writes(), writes);
    let err = old
        .publish(&publish_req("a", a_token, MGR, WRK))
        .await
        .unwrap_err();
    assert_eq!(conflict_code(&err), Some("stale_fencing_token"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_doc_writers_and_registrations_lose_nothing() {
    let moto = Arc::new(Moto::start());
    // The writers: ten clients of one manager node (its credential handed to each, as the
    // agent hands its stored one back after a restart).
    let first = moto.backend("docs", 3);
    first
        .register(&reg("writer", RequestedRole::Manager))
        .await
        .unwrap();
    let writer = first.credential("writer").expect("issued");
    let mut tasks = Vec::new();
    for w in 0..10 {
        let moto = moto.clone();
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            let rv = moto.backend("docs", 3);
            rv.set_credential("writer", writer);
            let mut conflicts = 0;
            for _ in 0..10 {
                let mut backoff =
                    Backoff::new(Duration::from_millis(5), Duration::from_millis(200));
                loop {
                    let cur = rv.get_doc(KEEPER, None, Duration::ZERO).await.unwrap();
                    let n = cur.body.as_u64().unwrap_or(0);
                    match rv
                        .put_doc("writer", KEEPER, cur.version, &serde_json::json!(n + 1))
                        .await
                    {
                        Ok(d) => {
                            assert_eq!(d.version, cur.version + 1);
                            break;
                        }
                        Err(e) if conflict_code(&e) == Some("version_conflict") => {
                            conflicts += 1;
                            tokio::time::sleep(backoff.next_delay()).await;
                        }
                        Err(e) => panic!("writer {w}: {e}"),
                    }
                }
            }
            conflicts
        }));
    }
    // Concurrent registrations and a writer of another document touch the same secret.
    let mut regs = Vec::new();
    for i in 0..10 {
        let moto = moto.clone();
        regs.push(tokio::spawn(async move {
            let rv = moto.backend("docs", 3);
            rv.register(&reg(&format!("n{i}"), RequestedRole::Auto))
                .await
                .unwrap()
        }));
    }
    let other = {
        let moto = moto.clone();
        let writer = writer.clone();
        tokio::spawn(async move {
            let rv = moto.backend("docs", 3);
            rv.set_credential("writer", writer);
            for v in 0..10u64 {
                // expected version is known: nobody else writes the drains document
                rv.put_doc("writer", DRAINS, v, &serde_json::json!({ "v": v + 1 }))
                    .await
                    .unwrap();
            }
        })
    };
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    for r in regs {
        r.await.unwrap();
    }
    other.await.unwrap();
    let rv = moto.backend("docs", 3);
    let counter = rv.get_doc(KEEPER, None, Duration::ZERO).await.unwrap();
    assert_eq!(counter.version, 100);
    assert_eq!(counter.body, serde_json::json!(100));
    let other = rv.get_doc(DRAINS, None, Duration::ZERO).await.unwrap();
    assert_eq!(other.version, 10);
    assert_eq!(other.body, serde_json::json!({ "v": 10 }));
    let status = rv.status().await.unwrap();
    assert_eq!(status.nodes.len(), 11);
    let managers = status
        .nodes
        .iter()
        .filter(|n| n.role == Role::Manager)
        .count();
    assert_eq!(managers, 3);
    eprintln!("doc writers saw {conflicts} version conflicts (retried by the caller)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_doc_after_waits_for_a_newer_version() {
    let moto = Arc::new(Moto::start());
    let rv = moto.backend("wait", 3);
    rv.register(&reg("m", RequestedRole::Manager))
        .await
        .unwrap();
    rv.put_doc("m", KEEPER, 0, &serde_json::json!(["a"]))
        .await
        .unwrap();
    // nothing newer: returns the current version after about `wait`
    let t0 = std::time::Instant::now();
    let same = rv
        .get_doc(KEEPER, Some(1), Duration::from_millis(700))
        .await
        .unwrap();
    assert_eq!(same.version, 1);
    assert!(
        t0.elapsed() >= Duration::from_millis(650),
        "{:?}",
        t0.elapsed()
    );
    let waiter = {
        let moto = moto.clone();
        tokio::spawn(async move {
            moto.backend("wait", 3)
                .get_doc(KEEPER, Some(1), Duration::from_secs(30))
                .await
                .unwrap()
        })
    };
    rv.put_doc("m", KEEPER, 1, &serde_json::json!(["a", "b"]))
        .await
        .unwrap();
    let newer = waiter.await.unwrap();
    assert_eq!(newer.version, 2);
    assert_eq!(newer.body, serde_json::json!(["a", "b"]));
    // a document never written: version 0, null
    let none = rv.get_doc("rejoins", None, Duration::ZERO).await.unwrap();
    assert_eq!((none.version, none.body), (0, serde_json::Value::Null));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auto_roles_keep_managers_at_target() {
    let moto = Arc::new(Moto::start());
    let mut tasks = Vec::new();
    for i in 0..5 {
        let moto = moto.clone();
        tasks.push(tokio::spawn(async move {
            let rv = moto.backend("roles", 3);
            let id = format!("n{i}");
            let r = rv.register(&reg(&id, RequestedRole::Auto)).await.unwrap();
            (id, r.role, r.credential.expect("issued"))
        }));
    }
    let mut roles = BTreeMap::new();
    let rv = moto.backend("roles", 3);
    for t in tasks {
        let (id, role, credential) = t.await.unwrap();
        rv.set_credential(&id, credential);
        roles.insert(id, role);
    }
    let managers = roles.values().filter(|r| **r == Role::Manager).count();
    assert_eq!(managers, 3, "{roles:?}");
    // registering again (with the node's credential) returns the same role, without a write
    for (id, role) in &roles {
        let r = rv.register(&reg(id, RequestedRole::Auto)).await.unwrap();
        assert_eq!(r.role, *role);
    }
    assert_eq!(rv.api_calls().writes(), 0, "{:?}", rv.api_calls());
    let status = rv.status().await.unwrap();
    assert_eq!(status.nodes.len(), 5);
    assert_eq!(status.target_managers, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formed_cluster_refuses_new_claims() {
    let moto = Moto::start();
    let rv = moto.backend("formed", 3);
    rv.register(&reg("a", RequestedRole::Manager))
        .await
        .unwrap();
    let c = rv.claim("a", Duration::from_millis(1_000)).await.unwrap();
    let token = c.lease.unwrap().fencing_token;
    rv.publish(&publish_req("a", token, MGR, WRK))
        .await
        .unwrap();
    let other = moto.backend("formed", 3);
    other
        .register(&reg("b", RequestedRole::Manager))
        .await
        .unwrap();
    let r = other.claim("b", Duration::from_secs(30)).await.unwrap();
    assert!(!r.granted);
    assert_eq!(r.phase, Phase::Formed);
    // An unregistered node cannot even ask.
    let err = other.claim("c", Duration::from_secs(30)).await.unwrap_err();
    assert!(
        matches!(&err, RendezvousError::Rejected { code, .. } if code == "node_not_registered"),
        "{err}"
    );
    // publishing cleared the lease; still no claim is granted, not even to the former holder
    // (its credential handed to this client)
    other.set_credential("a", rv.credential("a").unwrap());
    assert_eq!(other.status().await.unwrap().lease, None);
    for node in ["b", "a"] {
        let r = other.claim(node, Duration::from_secs(30)).await.unwrap();
        assert!(!r.granted, "{node} was granted a claim on a formed cluster");
        assert_eq!(r.phase, Phase::Formed);
    }
    // a different publish is refused; the formed data is unchanged
    let err = other
        .publish(&publish_req("a", token, "SWMTKN-1-other", WRK))
        .await
        .unwrap_err();
    assert!(conflict_code(&err).is_some(), "{err}");
    other
        .register(&reg("late", RequestedRole::Auto))
        .await
        .unwrap();
    let join = other
        .wait_join("late", Duration::from_secs(5))
        .await
        .unwrap()
        .join
        .unwrap();
    assert_eq!(join.token.expose(), MGR, "late is the 3rd manager of 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_join_times_out_without_tokens_and_refuses_unknown_nodes() {
    let moto = Moto::start();
    let rv = moto.backend("slow", 3);
    rv.register(&reg("w", RequestedRole::Worker)).await.unwrap();
    rv.register(&reg("m", RequestedRole::Manager))
        .await
        .unwrap();
    let c = rv.claim("m", Duration::from_secs(30)).await.unwrap();
    assert!(c.granted);
    let t0 = std::time::Instant::now();
    let j = rv.wait_join("w", Duration::from_millis(800)).await.unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(750));
    assert!(j.join.is_none());
    assert_eq!(j.phase, Phase::Claimed);
    assert_eq!(j.lease.unwrap().holder, "m");
    let err = rv
        .wait_join("ghost", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RendezvousError::Rejected { code, .. } if code == "node_not_registered"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_for_deletion_name_is_a_clear_rejection() {
    let moto = Moto::start();
    let rv = moto.backend("gone", 3);
    rv.register(&reg("a", RequestedRole::Auto)).await.unwrap();
    moto.client()
        .delete_secret()
        .secret_id(rv.secret_name())
        .recovery_window_in_days(7)
        .send()
        .await
        .unwrap();
    let fresh = moto.backend("gone", 3);
    for err in [
        fresh.claim("b", Duration::from_secs(30)).await.unwrap_err(),
        fresh
            .register(&reg("b", RequestedRole::Auto))
            .await
            .unwrap_err(),
        fresh.status().await.unwrap_err(),
    ] {
        match err {
            RendezvousError::Rejected { code, message } => {
                assert_eq!(code, "secret_scheduled_for_deletion");
                assert!(
                    message
                        .contains("aws secretsmanager restore-secret --secret-id swarmstrap/gone"),
                    "{message}"
                );
                assert!(
                    message.contains("--force-delete-without-recovery"),
                    "{message}"
                );
            }
            other => panic!("expected Rejected, got {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_secret_is_rejected_not_overwritten() {
    let moto = Moto::start();
    moto.client()
        .create_secret()
        .name("swarmstrap/foreign")
        .secret_string("not json at all")
        .send()
        .await
        .unwrap();
    let rv = moto.backend("foreign", 3);
    let err = rv.claim("a", Duration::from_secs(30)).await.unwrap_err();
    match err {
        RendezvousError::Rejected { code, message } => {
            assert_eq!(code, "foreign_secret");
            assert!(!message.contains("not json"), "the value leaked: {message}");
        }
        other => panic!("expected Rejected, got {other}"),
    }
}

/// A normal 5-node bootstrap (3 managers, 2 workers), one step at a time so the counts are
/// exact: what each node costs in API calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_bootstrap_call_budget() {
    let moto = Moto::start();
    let nodes: Vec<_> = (0..5).map(|_| moto.backend("budget", 3)).collect();
    let ids: Vec<String> = (0..5).map(|i| format!("n{i}")).collect();
    let mut roles = Vec::new();
    for (rv, id) in nodes.iter().zip(&ids) {
        roles.push(
            rv.register(&reg(id, RequestedRole::Auto))
                .await
                .unwrap()
                .role,
        );
    }
    let mut token = 0;
    for (i, (rv, id)) in nodes.iter().zip(&ids).enumerate() {
        if roles[i] == Role::Manager {
            let c = rv.claim(id, Duration::from_secs(60)).await.unwrap();
            assert_eq!(c.granted, i == 0);
            token = c.lease.unwrap().fencing_token;
        }
    }
    // the winner renews once early (no write), then publishes
    nodes[0]
        .renew("n0", token, Duration::from_secs(60))
        .await
        .unwrap();
    nodes[0]
        .publish(&publish_req("n0", token, MGR, WRK))
        .await
        .unwrap();
    for (rv, id) in nodes.iter().zip(&ids) {
        let j = rv.wait_join(id, Duration::from_secs(10)).await.unwrap();
        assert!(j.join.is_some());
    }
    let counts: Vec<ApiCallCounts> = nodes.iter().map(|n| n.api_calls()).collect();
    let mut total = ApiCallCounts::default();
    for (i, c) in counts.iter().enumerate() {
        eprintln!(
            "node n{i} ({:?}): reads={} writes={} {:?}",
            roles[i],
            c.reads(),
            c.writes(),
            c
        );
        add(&mut total, *c);
    }
    eprintln!(
        "total: reads={} writes={} {total:?}",
        total.reads(),
        total.writes()
    );
    // Writes are exact: n0 (first, winner) creates the shared secret (register), writes the
    // claim and the publish (PutSecretValue + stage move each) and creates the managers'
    // secret; everyone else writes its registration only. Reads (cheap: ~10k TPS, no
    // versions) are bounded: every read is AWSCURRENT plus a probe of its successor (the
    // chain walk), every write a probe first, a registration reads again after its spread
    // pause, a manager's join reads the managers' secret.
    assert_eq!(
        (
            counts[0].create_secret,
            counts[0].put_secret_value,
            counts[0].update_secret_version_stage
        ),
        (2, 2, 2)
    );
    assert!(counts[0].reads() <= 20, "{:?}", counts[0]);
    for c in &counts[1..3] {
        assert_eq!(c.writes(), 2, "{c:?}");
        assert!(c.reads() <= 12, "{c:?}");
    }
    for c in &counts[3..5] {
        assert_eq!(c.writes(), 2, "{c:?}");
        assert!(c.reads() <= 8, "{c:?}");
    }
    assert_eq!(total.other, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_created_empty_beforehand_is_filled_by_cas() {
    let moto = Arc::new(Moto::start());
    // e.g. created by hand or by Terraform, without a value
    moto.client()
        .create_secret()
        .name("swarmstrap/empty")
        .send()
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..5 {
        let moto = moto.clone();
        tasks.push(tokio::spawn(async move {
            let rv = moto.backend("empty", 3);
            let id = format!("n{i}");
            let role = rv
                .register(&reg(&id, RequestedRole::Auto))
                .await
                .unwrap()
                .role;
            match rv.claim(&id, Duration::from_secs(30)).await {
                Ok(c) => c.granted,
                // a worker's claim is refused
                Err(e) if role == Role::Worker && conflict_code(&e) == Some("not_a_manager") => {
                    false
                }
                Err(e) => panic!("{id}: {e}"),
            }
        }));
    }
    let mut granted = 0;
    for t in tasks {
        granted += usize::from(t.await.unwrap());
    }
    assert_eq!(granted, 1);
    let status = moto.backend("empty", 3).status().await.unwrap();
    assert_eq!(status.nodes.len(), 5);
    assert_eq!(status.phase, Phase::Claimed);
}

/// The lease rules as the rulebook decides them, end to end on Secrets Manager: workers never
/// claim, the ttl is clamped to 5 min, expiry only opens the lease to takeover (the holder
/// may still renew and publish while nobody took over), a renewal writes only once at most
/// half the ttl is left, publishing clears the lease, renewing once formed is `lease_lost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_rules_come_from_the_rulebook() {
    let moto = Moto::start();
    let rv = moto.backend("lease", 3);
    rv.register(&reg("w", RequestedRole::Worker)).await.unwrap();
    rv.register(&reg("m", RequestedRole::Manager))
        .await
        .unwrap();
    let err = rv.claim("w", Duration::from_secs(30)).await.unwrap_err();
    assert_eq!(conflict_code(&err), Some("not_a_manager"), "{err}");

    // the ttl is clamped to 5 min
    let long = moto.backend("clamp", 3);
    long.register(&reg("m", RequestedRole::Manager))
        .await
        .unwrap();
    let c = long.claim("m", Duration::from_secs(3_600)).await.unwrap();
    let expires = c.lease.unwrap().expires_in_ms;
    assert!(
        c.granted && expires <= 300_000 && expires > 240_000,
        "{expires}"
    );

    // renew after expiry, nobody having taken over: granted and written
    let c = rv.claim("m", Duration::from_millis(1_000)).await.unwrap();
    assert!(c.granted);
    let token = c.lease.unwrap().fencing_token;
    eventually(
        "the 1 s lease to expire",
        Duration::from_secs(10),
        || async { rv.status().await.unwrap().lease.is_none().then_some(()) },
    )
    .await;
    let writes = rv.api_calls().writes();
    let r = rv.renew("m", token, Duration::from_secs(60)).await.unwrap();
    assert!(r.granted);
    assert_eq!(r.lease.as_ref().unwrap().fencing_token, token);
    assert_eq!(rv.api_calls().writes(), writes + 2, "put + stage move");
    // renewed just now: more than half of the ttl is left, so no write
    let r = rv.renew("m", token, Duration::from_secs(60)).await.unwrap();
    assert!(r.granted);
    assert_eq!(
        rv.api_calls().writes(),
        writes + 2,
        "an early renewal wrote"
    );

    // publish on an expired lease nobody took over: accepted, and the lease is cleared
    let quick = moto.backend("quick", 3);
    quick
        .register(&reg("m", RequestedRole::Manager))
        .await
        .unwrap();
    let c = quick
        .claim("m", Duration::from_millis(1_000))
        .await
        .unwrap();
    let qtoken = c.lease.unwrap().fencing_token;
    eventually(
        "the quick lease to expire",
        Duration::from_secs(10),
        || async { quick.status().await.unwrap().lease.is_none().then_some(()) },
    )
    .await;
    let p = quick
        .publish(&publish_req("m", qtoken, MGR, WRK))
        .await
        .unwrap();
    assert_eq!(p.phase, Phase::Formed);
    let s = quick.status().await.unwrap();
    assert_eq!((s.phase, s.lease), (Phase::Formed, None));
    // the publisher's identical retry: accepted without a write
    let writes = quick.api_calls().writes();
    quick
        .publish(&publish_req("m", qtoken, MGR, WRK))
        .await
        .unwrap();
    assert_eq!(quick.api_calls().writes(), writes);
    // renewing once formed: lease_lost
    let err = quick
        .renew("m", qtoken, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(conflict_code(&err), Some("lease_lost"), "{err}");
}

/// A secret written by the previous version (schema 1: `cluster`, `next_fencing_token`, no
/// counts) is read, extended and written back readable by both versions; fencing continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_of_the_previous_version_is_read_and_fencing_continues() {
    let moto = Moto::start();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let node = |id: &str, role: &str| {
        serde_json::json!({"node_id": id, "hostname": format!("host-{id}"),
            "advertise_addr": "198.18.0.10", "requested": "auto", "role": role,
            "registered_at_ms": now_ms})
    };
    let old = serde_json::json!({
        "schema": 1,
        "cluster": "legacy",
        "target_managers": 3,
        "nodes": [node("a", "manager"), node("b", "manager"), node("w", "worker")],
        "lease": {"holder": "a", "fencing_token": 7, "expires_at_ms": now_ms - 1_000},
        "next_fencing_token": 8,
        "formed": null,
        "resets": 0,
        "docs": {"lb": {"version": 3, "body": ["x"]}},
        "recent_writes": []
    });
    moto.client()
        .create_secret()
        .name("swarmstrap/legacy")
        .secret_string(old.to_string())
        .send()
        .await
        .unwrap();
    let rv = moto.backend("legacy", 3);
    let s = rv.status().await.unwrap();
    assert_eq!((s.nodes.len(), s.phase), (3, Phase::Open));
    assert_eq!(
        rv.get_doc("lb", None, Duration::ZERO)
            .await
            .unwrap()
            .version,
        3
    );
    // one manager seat is left (the counts are recounted from the node list)
    let r = rv.register(&reg("c", RequestedRole::Auto)).await.unwrap();
    assert_eq!(r.role, Role::Manager);
    let r = rv.register(&reg("d", RequestedRole::Auto)).await.unwrap();
    assert_eq!(r.role, Role::Worker);
    // Registered before node credentials: b can do nothing until it registers again, which
    // binds it to a credential (issued once).
    let err = rv.claim("b", Duration::from_secs(30)).await.unwrap_err();
    assert!(
        matches!(&err, RendezvousError::Rejected { code, .. } if code == "bad_node_credential"),
        "{err}"
    );
    for id in ["a", "b"] {
        let r = rv.register(&reg(id, RequestedRole::Auto)).await.unwrap();
        assert_eq!(r.role, Role::Manager);
        assert!(r.credential.is_some(), "{id} is bound on its registration");
        let again = rv.register(&reg(id, RequestedRole::Auto)).await.unwrap();
        assert!(again.credential.is_none(), "issued once");
    }
    // A client that is not b cannot bind or use it any more.
    let stranger = moto.backend("legacy", 3);
    let err = stranger
        .register(&reg("b", RequestedRole::Auto))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RendezvousError::Rejected { code, .. } if code == "bad_node_credential"),
        "{err}"
    );
    // the expired lease is taken over with a token larger than any the old version granted
    let c = rv.claim("b", Duration::from_secs(30)).await.unwrap();
    assert!(c.granted);
    assert_eq!(c.lease.unwrap().fencing_token, 8);
    let err = rv.renew("a", 7, Duration::from_secs(30)).await.unwrap_err();
    assert_eq!(conflict_code(&err), Some("lease_lost"), "{err}");
    // as stored now: both versions' fields
    let text = moto
        .client()
        .get_secret_value()
        .secret_id("swarmstrap/legacy")
        .version_stage("AWSCURRENT")
        .send()
        .await
        .unwrap()
        .secret_string()
        .unwrap()
        .to_string();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (v["schema"].as_u64(), v["cluster"].as_str()),
        (Some(1), Some("legacy"))
    );
    assert_eq!(v["name"], "legacy");
    assert_eq!(v["last_fencing_token"], 8);
    assert_eq!(v["next_fencing_token"], 9);
    assert_eq!(v["manager_count"], 3);
}

/// The AWSCURRENT document as stored (test-side raw read).
async fn stored_doc(moto: &Moto, secret: &str) -> Option<serde_json::Value> {
    match moto
        .client()
        .get_secret_value()
        .secret_id(secret)
        .version_stage("AWSCURRENT")
        .send()
        .await
    {
        Ok(out) => Some(serde_json::from_str(out.secret_string().unwrap()).unwrap()),
        Err(e) => {
            let text = format!("{e:?}");
            assert!(text.contains("ResourceNotFoundException"), "{text}");
            None
        }
    }
}

fn sync_req(
    swarm: &str,
    addrs: &[&str],
    managers: u32,
    members: &[(&str, Role)],
) -> swarmstrap_wire::SyncRequest {
    swarmstrap_wire::SyncRequest {
        node_id: "a".into(),
        swarm_id: swarm.into(),
        manager_addrs: addrs.iter().map(|a| a.to_string()).collect(),
        managers,
        members: members
            .iter()
            .map(|(id, role)| swarmstrap_wire::Member {
                node_id: id.to_string(),
                role: *role,
            })
            .collect(),
    }
}

fn adopt_req(node: &str, swarm: &str, managers: u32) -> swarmstrap_wire::AdoptRequest {
    swarmstrap_wire::AdoptRequest {
        node_id: node.into(),
        hostname: format!("host-{node}"),
        advertise_addr: "198.18.0.20".into(),
        swarm_id: swarm.into(),
        ca_digest: swarmstrap_wire::format_fingerprint(&[0x5a; 32]),
        manager_addrs: vec!["198.18.0.20:2377".into(), "198.18.0.21:2377".into()],
        manager_token: swarmstrap_wire::Secret::new(MGR),
        worker_token: swarmstrap_wire::Secret::new(WRK),
        managers,
    }
}

/// The leader's sync makes the secret follow the swarm: join info carries the live managers,
/// departed nodes leave the stored document (so it stays bounded under churn) and free their
/// manager slot; an unchanged report writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_prunes_departed_nodes_and_refreshes_manager_addrs() {
    use Role::{Manager as M, Worker as W};
    let moto = Moto::start();
    let rv = moto.backend("churn", 3);
    for id in ["a", "b", "c", "d"] {
        rv.register(&reg(id, RequestedRole::Auto)).await.unwrap();
    }
    let token = rv
        .claim("a", Duration::from_secs(60))
        .await
        .unwrap()
        .lease
        .unwrap()
        .fencing_token;
    rv.publish(&publish_req("a", token, MGR, WRK))
        .await
        .unwrap();
    let secret = rv.secret_name().to_string();
    // The document's size without the write-id ring (bounded at 64 ids, it fills as writes
    // happen): what grows with the nodes.
    let size = |v: &serde_json::Value| {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove("recent_writes");
        v.to_string().len()
    };
    let formed_size = size(&stored_doc(&moto, &secret).await.unwrap());

    let addrs = ["198.18.0.11:2377", "198.18.0.12:2377", "198.18.0.13:2377"];
    let all = [("a", M), ("b", M), ("c", M), ("d", W)];
    let r = rv
        .sync(&sync_req("swarm-abc", &addrs, 3, &all))
        .await
        .unwrap();
    assert!(r.changed && r.pruned.is_empty(), "{r:?}");
    // Another client of node d (with d's credential) reads the new addresses.
    let d = moto.backend("churn", 3);
    d.set_credential("d", rv.credential("d").unwrap());
    let j = d
        .wait_join("d", Duration::ZERO)
        .await
        .unwrap()
        .join
        .unwrap();
    assert_eq!(j.manager_addrs, addrs);
    // The same report again: no write.
    let writes = rv.api_calls().writes();
    let r = rv
        .sync(&sync_req("swarm-abc", &addrs, 3, &all))
        .await
        .unwrap();
    assert!(!r.changed);
    assert_eq!(rv.api_calls().writes(), writes);

    // Churn: 40 nodes join and leave, in two waves. Each wave's registrations reach the
    // secret; once they left the swarm, the leader's sync drops them from it.
    for wave in 0..2 {
        let ids: Vec<String> = (0..20).map(|i| format!("churn-{wave}-{i:02}")).collect();
        for id in &ids {
            let r = rv.register(&reg(id, RequestedRole::Auto)).await.unwrap();
            assert_eq!(r.role, W, "three managers stand");
        }
        let mut members: Vec<(&str, Role)> = all.to_vec();
        members.extend(ids.iter().map(|i| (i.as_str(), W)));
        rv.sync(&sync_req("swarm-abc", &addrs, 3, &members))
            .await
            .unwrap();
        let grown = size(&stored_doc(&moto, &secret).await.unwrap());
        assert!(grown > formed_size + 20 * 100, "{grown} vs {formed_size}");
        let r = rv
            .sync(&sync_req("swarm-abc", &addrs, 3, &all))
            .await
            .unwrap();
        assert_eq!(r.pruned.len(), 20, "{r:?}");
    }
    // Manager c and worker d left too: pruned, and c's manager slot is free again.
    let r = rv
        .sync(&sync_req(
            "swarm-abc",
            &addrs[..2],
            2,
            &[("a", M), ("b", M)],
        ))
        .await
        .unwrap();
    assert_eq!(r.pruned, vec!["c".to_string(), "d".to_string()]);
    assert_eq!((r.manager_count, r.node_count), (2, 2));
    let doc = stored_doc(&moto, &secret).await.unwrap();
    let stored: Vec<&str> = doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap())
        .collect();
    assert_eq!(stored, ["a", "b"]);
    assert!(
        size(&doc) <= formed_size + 200,
        "the document shrank back: {} vs {formed_size}",
        size(&doc)
    );
    assert_eq!(
        doc["manager_addrs"],
        serde_json::Value::Null,
        "addrs live in formed"
    );
    assert_eq!(
        doc["formed"]["manager_addrs"],
        serde_json::json!(addrs[..2])
    );
    let r = rv.register(&reg("e", RequestedRole::Auto)).await.unwrap();
    assert_eq!(r.role, M, "the replaced manager's slot is free");
    // Only the cluster's own swarm may sync.
    let err = rv
        .sync(&sync_req("other-swarm", &addrs, 3, &all))
        .await
        .unwrap_err();
    assert_eq!(conflict_code(&err), Some("swarm_mismatch"), "{err}");
}

/// The secret was deleted (for good) while its swarm runs: reads see an open cluster, the
/// leader's sync is `swarm_mismatch` and writes nothing, its adoption re-creates the secret
/// formed under a fencing token larger than any before; a node registering afterwards joins
/// the adopted swarm. Duplicate adoptions racing a registration create the secret once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleted_secret_is_re_created_by_the_adoption() {
    let moto = Arc::new(Moto::start());
    let rv = moto.backend("lost", 3);
    rv.register(&reg("a", RequestedRole::Auto)).await.unwrap();
    let old_token = rv
        .claim("a", Duration::from_secs(60))
        .await
        .unwrap()
        .lease
        .unwrap()
        .fencing_token;
    rv.publish(&publish_req("a", old_token, MGR, WRK))
        .await
        .unwrap();
    moto.client()
        .delete_secret()
        .secret_id(rv.secret_name())
        .force_delete_without_recovery(true)
        .send()
        .await
        .unwrap();
    let secret = rv.secret_name().to_string();
    assert!(stored_doc(&moto, &secret).await.is_none());

    // What a node sees now: an open, unformed, empty cluster.
    let fresh = moto.backend("lost", 3);
    let s = fresh.status().await.unwrap();
    assert_eq!((s.phase, s.nodes.len(), s.swarm_id), (Phase::Open, 0, None));
    // The leader's sync finds the swarm forgotten, and writes nothing.
    let err = rv
        .sync(&sync_req(
            "swarm-abc",
            &["198.18.0.10:2377"],
            1,
            &[("a", Role::Manager)],
        ))
        .await
        .unwrap_err();
    assert_eq!(conflict_code(&err), Some("swarm_mismatch"), "{err}");
    assert!(stored_doc(&moto, &secret).await.is_none());

    // Three duplicate adoptions (retries of the leader's client, which still holds a's
    // credential from before: the secret forgot it, so the adoption registers a anew) and a new
    // node's registration race to create the secret.
    let leader = Arc::new(moto.backend("lost", 3));
    leader.set_credential("a", rv.credential("a").unwrap());
    let mut adoptions = Vec::new();
    for _ in 0..3 {
        let leader = leader.clone();
        adoptions.push(tokio::spawn(async move {
            leader.adopt(&adopt_req("a", "swarm-abc", 1)).await.unwrap()
        }));
    }
    let late = {
        let moto = moto.clone();
        tokio::spawn(async move {
            let rv = moto.backend("lost", 3);
            rv.register(&reg("late", RequestedRole::Auto))
                .await
                .unwrap();
            rv.credential("late").expect("issued")
        })
    };
    let mut adopted = 0;
    let mut issued = 0;
    let mut tokens = std::collections::BTreeSet::new();
    for a in adoptions {
        let a = a.await.unwrap();
        adopted += usize::from(a.adopted);
        issued += usize::from(a.credential.is_some());
        tokens.insert(a.fencing_token);
        assert_eq!(a.phase, Phase::Formed);
    }
    assert_eq!(issued, 1, "a's new credential is issued once");
    assert_ne!(
        leader.credential("a"),
        rv.credential("a"),
        "a new credential"
    );
    fresh.set_credential("late", late.await.unwrap());
    assert_eq!(adopted, 1, "adopted once, the retries found it adopted");
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    let token = *tokens.iter().next().unwrap();
    assert!(token > old_token, "{token} > {old_token}");

    let s = fresh.status().await.unwrap();
    assert_eq!(s.phase, Phase::Formed);
    assert_eq!(s.swarm_id.as_deref(), Some("swarm-abc"));
    assert_eq!(s.adoptions, 1);
    assert!(s.nodes.iter().any(|n| n.node_id == "late"), "{:?}", s.nodes);
    // A node registering after the adoption joins the adopted swarm.
    fresh
        .register(&reg("later", RequestedRole::Auto))
        .await
        .unwrap();
    for id in ["late", "later"] {
        let j = fresh
            .wait_join(id, Duration::from_secs(5))
            .await
            .unwrap()
            .join
            .expect("formed");
        assert_eq!(j.swarm_id, "swarm-abc");
        assert_eq!(j.manager_addrs, ["198.18.0.20:2377", "198.18.0.21:2377"]);
    }
    // No claim is granted, and the old publisher's token is stale.
    match fresh.claim("later", Duration::from_secs(30)).await {
        Ok(c) => assert!(!c.granted),
        Err(e) => assert_eq!(conflict_code(&e), Some("not_a_manager"), "{e}"),
    }
    let err = leader
        .publish(&publish_req("a", old_token, MGR, WRK))
        .await
        .unwrap_err();
    assert_eq!(conflict_code(&err), Some("stale_fencing_token"), "{err}");
    // The old credential of a (from before the secret was lost) no longer speaks for it.
    let err = rv
        .publish(&publish_req("a", old_token, MGR, WRK))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RendezvousError::Rejected { code, .. } if code == "bad_node_credential"),
        "{err}"
    );
    let doc = stored_doc(&moto, &secret).await.unwrap();
    assert_eq!(doc["formed"]["fencing_token"], token);
}

/// A stored cluster awaiting adoption (the flag written into the document directly, as an
/// operator re-creating the secret would) refuses every claim until the swarm adopts it or the
/// hold is lifted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_refused_while_the_stored_cluster_awaits_adoption() {
    let moto = Moto::start();
    let rv = moto.backend("held", 3);
    rv.register(&reg("n", RequestedRole::Auto)).await.unwrap();
    let secret = rv.secret_name().to_string();
    let mut doc = stored_doc(&moto, &secret).await.unwrap();
    doc["awaiting_adoption"] = serde_json::json!(true);
    moto.client()
        .put_secret_value()
        .secret_id(&secret)
        .secret_string(doc.to_string())
        .send()
        .await
        .unwrap();
    assert!(rv.status().await.unwrap().awaiting_adoption);
    let writes = rv.api_calls().writes();
    let err = rv.claim("n", Duration::from_secs(30)).await.unwrap_err();
    assert_eq!(conflict_code(&err), Some("awaiting_adoption"), "{err}");
    assert_eq!(
        rv.api_calls().writes(),
        writes,
        "a refused claim writes nothing"
    );
    assert_eq!(rv.status().await.unwrap().lease, None);

    // Lifted by the operator: claims are granted again; held again: refused again.
    let s = rv.set_adoption_hold(false).await.unwrap();
    assert!(!s.awaiting_adoption);
    let s = rv.set_adoption_hold(true).await.unwrap();
    assert!(s.awaiting_adoption);
    let err = rv.claim("n", Duration::from_secs(30)).await.unwrap_err();
    assert_eq!(conflict_code(&err), Some("awaiting_adoption"), "{err}");

    // The running swarm adopts it: formed, hold gone, still no claim granted.
    let a = rv.adopt(&adopt_req("lead", "swarm-live", 3)).await.unwrap();
    assert!(a.adopted);
    let s = rv.status().await.unwrap();
    assert_eq!((s.phase, s.awaiting_adoption), (Phase::Formed, false));
    // n is a worker now (3 managers stand): it may not claim at all.
    let err = rv.claim("n", Duration::from_secs(30)).await.unwrap_err();
    assert_eq!(conflict_code(&err), Some("not_a_manager"), "{err}");
    let j = rv
        .wait_join("n", Duration::ZERO)
        .await
        .unwrap()
        .join
        .unwrap();
    assert_eq!((j.swarm_id.as_str(), j.role), ("swarm-live", Role::Worker));
    // A formed cluster cannot be held.
    let err = rv.set_adoption_hold(true).await.unwrap_err();
    assert_eq!(conflict_code(&err), Some("already_formed"), "{err}");
}

/// The rulebook's code of a refusal (`Conflict` or `Rejected`).
fn refusal(e: &RendezvousError) -> Option<&str> {
    match e {
        RendezvousError::Conflict { code, .. } | RendezvousError::Rejected { code, .. } => {
            Some(code)
        }
        _ => None,
    }
}

/// Issue 14: a node cannot act under another node's id. Every call for a registered node id
/// needs the credential its registration issued (missing or wrong: `bad_node_credential`, and
/// nothing is written); only its digest reaches the secret; handed to another client (as the
/// agent does after a restart) it works there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_act_under_another_nodes_id() {
    use swarmstrap_wire::Secret;
    let moto = Moto::start();
    let a = moto.backend("ids", 3);
    let r = a.register(&reg("a", RequestedRole::Manager)).await.unwrap();
    let cred = r.credential.clone().expect("issued");
    assert_eq!(cred.expose().len(), 64, "32 random bytes, hex");
    assert_eq!(
        a.credential("a").as_ref(),
        Some(&cred),
        "kept by the backend"
    );
    let token = a
        .claim("a", Duration::from_secs(60))
        .await
        .unwrap()
        .lease
        .unwrap()
        .fencing_token;
    a.publish(&publish_req("a", token, MGR, WRK)).await.unwrap();
    // Stored: the digest only. Shown: not even that.
    let doc = stored_doc(&moto, a.secret_name()).await.unwrap();
    assert!(!doc.to_string().contains(cred.expose()));
    assert_eq!(
        doc["nodes"][0]["credential_sha256"],
        swarmstrap_wire::rules::credential_sha256(&cred)
    );
    let s = a.status().await.unwrap();
    assert!(s.nodes.iter().all(|n| n.credential_sha256.is_none()));

    let b = moto.backend("ids", 3);
    b.register(&reg("b", RequestedRole::Manager)).await.unwrap();
    let writes = b.api_calls().writes();
    let mut hijack = reg("a", RequestedRole::Manager);
    hijack.advertise_addr = "198.18.0.66".into();
    let sync = sync_req(
        "swarm-abc",
        &["198.18.0.66:2377"],
        1,
        &[("a", Role::Manager)],
    );
    // Missing (b's client holds nothing for a), then wrong: b's own credential, a made-up one.
    for presented in [None, b.credential("b"), Some(Secret::new("0".repeat(64)))] {
        if let Some(p) = presented {
            b.set_credential("a", p);
        }
        let refusals = [
            b.register(&hijack).await.unwrap_err(),
            b.claim("a", Duration::from_secs(30)).await.unwrap_err(),
            b.renew("a", token, Duration::from_secs(30))
                .await
                .unwrap_err(),
            b.publish(&publish_req("a", token, MGR, WRK))
                .await
                .unwrap_err(),
            b.wait_join("a", Duration::ZERO).await.unwrap_err(),
            b.sync(&sync).await.unwrap_err(),
            b.adopt(&adopt_req("a", "swarm-abc", 1)).await.unwrap_err(),
            b.put_doc("a", KEEPER, 0, &serde_json::json!({"leader": "evil"}))
                .await
                .unwrap_err(),
        ];
        for e in refusals {
            assert_eq!(refusal(&e), Some("bad_node_credential"), "{e}");
            assert!(!e.to_string().contains(cred.expose()), "{e}");
        }
    }
    assert_eq!(
        b.api_calls().writes(),
        writes,
        "a refused call writes nothing"
    );
    let s = a.status().await.unwrap();
    let stored_a = s.nodes.iter().find(|n| n.node_id == "a").unwrap();
    assert_eq!(stored_a.advertise_addr, "198.18.0.10");
    assert_eq!(s.manager_addrs, ["198.18.0.10:2377"]);
    // The right credential, handed to another client: it speaks for a there.
    b.set_credential("a", cred.clone());
    let j = b
        .wait_join("a", Duration::ZERO)
        .await
        .unwrap()
        .join
        .unwrap();
    assert_eq!((j.role, j.token.expose()), (Role::Manager, MGR));
    assert!(b.sync(&sync).await.unwrap().changed);
}

/// Issue 14: documents are typed. Only the known documents exist; a worker writes neither the
/// membership nor the keeper document, and only its own entries of the drains document; the
/// membership is validated strictly, so nothing that is nginx syntax reaches a template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cannot_write_membership_and_documents_are_typed() {
    let moto = Moto::start();
    let m = moto.backend("typed", 1);
    m.register(&reg("m", RequestedRole::Manager)).await.unwrap();
    let w = moto.backend("typed", 1);
    let r = w.register(&reg("w", RequestedRole::Auto)).await.unwrap();
    assert_eq!(r.role, Role::Worker);
    let membership = serde_json::json!({"nodes": [{
        "id": "abc123", "hostname": "node1", "addr": "198.18.0.10", "role": "manager",
        "state": "ready", "availability": "active", "leader": true,
        "labels": {"zone": "eu-west-1a"}
    }]});
    for doc in ["membership", KEEPER] {
        let e = w.put_doc("w", doc, 0, &membership).await.unwrap_err();
        assert_eq!(refusal(&e), Some("not_a_manager"), "{doc}: {e}");
    }
    // Nor as the manager: its own credential is not m's.
    w.set_credential("m", w.credential("w").unwrap());
    let e = w
        .put_doc("m", "membership", 0, &membership)
        .await
        .unwrap_err();
    assert_eq!(refusal(&e), Some("bad_node_credential"), "{e}");
    let d = m.put_doc("m", "membership", 0, &membership).await.unwrap();
    assert_eq!(d.version, 1);
    // Injection attempts are refused, whoever writes.
    let evil = [
        (
            "addr",
            serde_json::json!("10.0.0.7; } server { listen 8081; } upstream x { server 10.0.0.8"),
        ),
        ("hostname", serde_json::json!("node1;")),
        ("labels", serde_json::json!({"zone": "${host}"})),
        ("labels", serde_json::json!({"zone": "a\n}"})),
    ];
    for (field, value) in evil {
        let mut body = membership.clone();
        body["nodes"][0][field] = value;
        let e = m.put_doc("m", "membership", 1, &body).await.unwrap_err();
        assert_eq!(refusal(&e), Some("invalid_request"), "{field}: {e}");
    }
    // Only the known documents exist.
    let e = m
        .put_doc("m", "lb", 0, &serde_json::json!([]))
        .await
        .unwrap_err();
    assert_eq!(refusal(&e), Some("invalid_name"), "{e}");
    // A worker's own drain request: accepted; one for another node: refused.
    let drain = |agent: &str| {
        serde_json::json!({"hostname": format!("host-{agent}"), "agent_node_id": agent,
            "state": "requested", "requested_at": "2026-11-30T09:00:00Z",
            "updated_at": "2026-11-30T09:00:00Z", "updated_ms": 0})
    };
    let own = serde_json::json!({"requests": {"dockerw": drain("w")}});
    assert_eq!(w.put_doc("w", DRAINS, 0, &own).await.unwrap().version, 1);
    let mut other = own.clone();
    other["requests"]["dockerm"] = drain("m");
    let e = w.put_doc("w", DRAINS, 1, &other).await.unwrap_err();
    assert_eq!(refusal(&e), Some("not_a_manager"), "{e}");
    // Nothing the refusals tried was stored.
    let got = m.get_doc("membership", None, Duration::ZERO).await.unwrap();
    assert_eq!((got.version, got.body), (1, membership));
    let got = m.get_doc(DRAINS, None, Duration::ZERO).await.unwrap();
    assert_eq!((got.version, got.body), (1, own));
}

/// Register manager `a`, claim, publish `swarm`.
async fn form(rv: &dyn Rendezvous, swarm: &str) {
    rv.register(&reg("a", RequestedRole::Manager))
        .await
        .unwrap();
    let c = rv.claim("a", Duration::from_secs(60)).await.unwrap();
    let mut p = publish_req("a", c.lease.unwrap().fencing_token, MGR, WRK);
    p.swarm_id = swarm.into();
    rv.publish(&p).await.unwrap();
}

/// Issue 14 on Secrets Manager: the operator is whoever may write the secret (IAM), so a reset
/// needs no operator credential; one that is given is checked against the stored digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_checks_a_given_operator_credential_against_the_stored_one() {
    use swarmstrap_wire::{ResetRequest, Secret};
    let moto = Moto::start();
    let reset = |swarm: &str| ResetRequest {
        node_id: "a".into(),
        swarm_id: swarm.into(),
        reason: "test".into(),
    };
    // No digest stored: nothing to check a given credential against.
    let plain = moto.backend("op-none", 3);
    form(&plain, "swarm-1").await;
    let s = plain
        .reset(&reset("swarm-1"), Some(&Secret::new("anything")))
        .await
        .unwrap();
    assert_eq!((s.phase, s.resets), (Phase::Open, 1));

    // A digest stored (written into the document directly, as the operator's tooling would).
    let rv = moto.backend("op", 3);
    rv.register(&reg("a", RequestedRole::Manager))
        .await
        .unwrap();
    let op = Secret::new("the-operator-credential");
    let secret = rv.secret_name().to_string();
    let mut doc = stored_doc(&moto, &secret).await.unwrap();
    doc["operator_sha256"] = serde_json::json!(swarmstrap_wire::rules::credential_sha256(&op));
    moto.client()
        .put_secret_value()
        .secret_id(&secret)
        .secret_string(doc.to_string())
        .send()
        .await
        .unwrap();
    form(&rv, "swarm-2").await;
    let e = rv
        .reset(&reset("swarm-2"), Some(&Secret::new("wrong")))
        .await
        .unwrap_err();
    assert_eq!(refusal(&e), Some("operator_required"), "{e}");
    assert!(!e.to_string().contains("the-operator-credential"));
    assert_eq!(rv.status().await.unwrap().phase, Phase::Formed);
    let s = rv.reset(&reset("swarm-2"), Some(&op)).await.unwrap();
    assert_eq!((s.phase, s.resets), (Phase::Open, 1));
    // Without one: IAM is the operator. The digest stays stored across resets.
    form(&rv, "swarm-3").await;
    let s = rv.reset(&reset("swarm-3"), None).await.unwrap();
    assert_eq!((s.phase, s.resets), (Phase::Open, 2));
    let doc = stored_doc(&moto, &secret).await.unwrap();
    assert_eq!(
        doc["operator_sha256"],
        swarmstrap_wire::rules::credential_sha256(&op)
    );
    assert!(!doc.to_string().contains("the-operator-credential"));
}
