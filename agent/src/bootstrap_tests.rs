//! Bootstrap state machine against the fakes: races, crashes, reboots, bad secrets, orphans.

use super::*;
use crate::state::StateStore;
use crate::testing::{wait_for, world, FakeBackend, FakeEngine, SharedWorld};
use std::collections::HashSet;

const TTL: Duration = Duration::from_millis(600);

struct Node {
    engine: Arc<FakeEngine>,
    dir: tempfile::TempDir,
    node_id: String,
}

impl Node {
    fn new(w: &SharedWorld, name: &str, ip: &str) -> Node {
        Node {
            engine: FakeEngine::new(w, name, ip),
            dir: tempfile::tempdir().unwrap(),
            node_id: format!("id-{name}"),
        }
    }

    fn boot(&self, backend: &Arc<FakeBackend>) -> Bootstrap {
        Bootstrap {
            engine: self.engine.clone(),
            backend: backend.clone(),
            store: StateStore::new(self.dir.path()),
            settings: Settings {
                cluster: "test".into(),
                node_id: self.node_id.clone(),
                advertise_addr: self.engine.addr.clone(),
                requested_role: RequestedRole::Auto,
                lease_ttl: TTL,
                long_poll: Duration::from_secs(25),
                policy: Policy::FAST,
                unauthorized_hint:
                    "the join secret was rejected for cluster test: check /etc/swarm-agent/join-secret"
                        .into(),
                debug_hold_file: None,
                record_joined_through: true,
            },
        }
    }

    fn state(&self) -> AgentState {
        StateStore::new(self.dir.path()).load().unwrap().unwrap()
    }

    fn state_opt(&self) -> Option<AgentState> {
        StateStore::new(self.dir.path()).load().ok().flatten()
    }
}

fn nodes(w: &SharedWorld, n: usize) -> Vec<Node> {
    (1..=n)
        .map(|i| Node::new(w, &format!("node{i}"), &format!("198.18.0.{i}")))
        .collect()
}

async fn run_all(nodes: &[Node], backend: &Arc<FakeBackend>) -> Vec<Outcome> {
    let mut handles = vec![];
    for n in nodes {
        let b = n.boot(backend);
        handles.push(tokio::spawn(async move { b.run().await }));
    }
    let mut out = vec![];
    for h in handles {
        out.push(
            tokio::time::timeout(Duration::from_secs(20), h)
                .await
                .expect("bootstrap finished")
                .unwrap()
                .unwrap(),
        );
    }
    out
}

/// Every node in one swarm; `managers` of them managers.
fn assert_one_swarm(w: &SharedWorld, nodes: &[Node], managers: usize) -> String {
    let ids: HashSet<_> = nodes
        .iter()
        .map(|n| n.engine.membership().expect("node is in a swarm").0)
        .collect();
    assert_eq!(ids.len(), 1, "all nodes in one swarm: {ids:?}");
    let m = nodes
        .iter()
        .filter(|n| n.engine.membership().unwrap().1 == Role::Manager)
        .count();
    assert_eq!(m, managers);
    let swarms_with_members = w
        .lock()
        .unwrap()
        .swarms
        .iter()
        .filter(|s| !s.members.is_empty())
        .count();
    assert_eq!(swarms_with_members, 1, "no host left in a second swarm");
    ids.into_iter().next().unwrap()
}

fn engine_mutations(calls: &[String]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| matches!(c.as_str(), "init" | "join" | "leave"))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_nodes_form_one_swarm_with_one_init() {
    for _round in 0..5 {
        let w = world();
        let backend = FakeBackend::new(3);
        let ns = nodes(&w, 5);
        let out = run_all(&ns, &backend).await;
        assert_eq!(w.lock().unwrap().inits, 1, "exactly one swarm init");
        assert_eq!(out.iter().filter(|o| o.how == How::Initialised).count(), 1);
        assert_eq!(out.iter().filter(|o| o.how == How::Joined).count(), 4);
        let swarm = assert_one_swarm(&w, &ns, 3);
        assert_eq!(backend.formed_swarm(), Some(swarm.clone()));
        for n in &ns {
            let st = n.state();
            assert_eq!(st.phase, AgentPhase::Joined);
            assert_eq!(st.swarm_id.as_deref(), Some(swarm.as_str()));
            assert!(st.ca_digest.is_some() && st.joined_at.is_some() && st.swarm_node_id.is_some());
        }
        let accepted: Vec<_> = backend
            .publishes()
            .into_iter()
            .filter(|p| p.accepted)
            .collect();
        assert_eq!(accepted.len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_after_formation_is_a_no_op() {
    let w = world();
    let backend = FakeBackend::new(3);
    let ns = nodes(&w, 4);
    run_all(&ns, &backend).await;
    let swarm = assert_one_swarm(&w, &ns, 3);
    let before: Vec<_> = ns.iter().map(|n| n.engine.calls().len()).collect();
    let registers = backend.registers();

    let again = run_all(&ns, &backend).await;
    for (o, (n, before)) in again.iter().zip(ns.iter().zip(before)) {
        assert_eq!(o.how, How::AlreadyMember);
        let new_calls = &n.engine.calls()[before..];
        assert!(
            engine_mutations(new_calls).is_empty(),
            "{}: {new_calls:?}",
            n.engine.name
        );
    }
    assert_eq!(
        backend.registers(),
        registers,
        "no new registration on reboot"
    );
    assert_eq!(w.lock().unwrap().inits, 1);
    assert_eq!(assert_one_swarm(&w, &ns, 3), swarm);
}

#[tokio::test]
async fn wrong_secret_is_permanent_and_leaves_the_engine_alone() {
    let w = world();
    let backend = FakeBackend::new(3);
    backend
        .secret_ok
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let n = Node::new(&w, "node1", "198.18.0.1");
    let err = tokio::time::timeout(Duration::from_secs(5), n.boot(&backend).run())
        .await
        .expect("fails fast, no retry loop")
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BootstrapError::Unauthorized { .. }), "{msg}");
    assert!(
        msg.starts_with("fake backend: the join secret was rejected for cluster test"),
        "{msg}"
    );
    assert!(msg.contains("/etc/swarm-agent/join-secret"), "{msg}");
    assert!(engine_mutations(&n.engine.calls()).is_empty());
    let st = n.state();
    assert_eq!(st.phase, AgentPhase::Failed);
    assert!(st.last_error.unwrap().message.contains("join-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crashed_claimant_is_taken_over() {
    let w = world();
    let backend = FakeBackend::new(3);
    let ns = nodes(&w, 3);
    let hold = ns[0].dir.path().join("hold");
    std::fs::write(&hold, "").unwrap();
    let mut b0 = ns[0].boot(&backend);
    b0.settings.debug_hold_file = Some(hold.clone());
    let holder = tokio::spawn(async move { b0.run().await });
    let id0 = ns[0].node_id.clone();
    wait_for("node1 to hold the lease", Duration::from_secs(5), || {
        backend.lease_holder().as_deref() == Some(id0.as_str())
    })
    .await;
    assert!(!hold.exists(), "the hold file was consumed");

    let started = Instant::now();
    let others = run_all(&ns[1..], &backend).await;
    assert!(
        started.elapsed() >= TTL / 2,
        "the others waited for the lease to expire"
    );
    assert_eq!(
        others.iter().filter(|o| o.how == How::Initialised).count(),
        1
    );
    assert!(
        engine_mutations(&ns[0].engine.calls()).is_empty(),
        "held node did nothing"
    );
    holder.abort(); // the crash
    let _ = holder.await;

    // The crashed node restarts (hold file gone): it joins the formed cluster.
    let o = ns[0].boot(&backend).run().await.unwrap();
    assert_eq!(o.how, How::Joined);
    assert_eq!(o.role, Role::Manager);
    assert_eq!(w.lock().unwrap().inits, 1);
    assert_one_swarm(&w, &ns, 3);
}

/// Simulate "claimed, intent written, swarm init done, crash before publish".
async fn crashed_after_init(
    n: &Node,
    backend: &Arc<FakeBackend>,
    ttl: Duration,
    record_swarm_id: bool,
) -> String {
    backend
        .register(&RegisterRequest {
            node_id: n.node_id.clone(),
            hostname: n.engine.name.clone(),
            advertise_addr: n.engine.addr.clone(),
            role: RequestedRole::Auto,
            joined_through: None,
            labels: None,
        })
        .await
        .unwrap();
    let c = backend.claim(&n.node_id, ttl).await.unwrap();
    assert!(c.granted);
    n.engine.init(&n.engine.addr).await.unwrap();
    let details = n.engine.inspect_swarm().await.unwrap();
    let swarm = details.id.clone();
    let mut st = AgentState {
        cluster: "test".into(),
        node_id: n.node_id.clone(),
        phase: AgentPhase::Initialising,
        role: Some(Role::Manager),
        init: Some(InitRecord {
            fencing_token: c.lease.unwrap().fencing_token,
            intent_at: rfc3339_now(),
            swarm_id: record_swarm_id.then(|| swarm.clone()),
            ca_digest: record_swarm_id.then(|| details.ca_digest.clone()),
            published: false,
        }),
        ..Default::default()
    };
    StateStore::new(n.dir.path()).save(&mut st).unwrap();
    swarm
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orphan_swarm_is_left_and_the_real_one_joined() {
    let w = world();
    let backend = FakeBackend::new(3);
    let ns = nodes(&w, 3);
    let orphan = crashed_after_init(&ns[0], &backend, TTL, true).await;
    // While node1 is down, its lease expires and the others form the cluster.
    let others = run_all(&ns[1..], &backend).await;
    assert_eq!(
        others.iter().filter(|o| o.how == How::Initialised).count(),
        1
    );
    let real = backend.formed_swarm().unwrap();
    assert_ne!(real, orphan);

    let o = ns[0].boot(&backend).run().await.unwrap();
    assert_eq!(o.how, How::LeftOrphanAndJoined);
    assert_eq!(o.swarm_id.as_deref(), Some(real.as_str()));
    assert!(ns[0].engine.calls().contains(&"leave".to_string()));
    assert_eq!(assert_one_swarm(&w, &ns, 3), real);
    assert_eq!(ns[0].state().init, None);
    assert!(
        backend.publishes().iter().all(|p| p.swarm_id != orphan),
        "the orphan was never published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_holding_the_lease_publishes_the_existing_swarm() {
    let w = world();
    let backend = FakeBackend::new(3);
    let ns = nodes(&w, 3);
    // Crash between `swarm init` and recording its id: only the intent is on disk.
    let swarm = crashed_after_init(&ns[0], &backend, Duration::from_secs(30), false).await;
    let o = ns[0].boot(&backend).run().await.unwrap();
    assert_eq!(o.how, How::PublishedExisting);
    assert_eq!(backend.formed_swarm(), Some(swarm.clone()));
    run_all(&ns[1..], &backend).await;
    assert_eq!(w.lock().unwrap().inits, 1, "no second init");
    assert_eq!(assert_one_swarm(&w, &ns, 3), swarm);
    let st = ns[0].state();
    assert!(st.init.unwrap().published);
    // and a further restart is a no-op
    let again = ns[0].boot(&backend).run().await.unwrap();
    assert_eq!(again.how, How::AlreadyMember);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_lost_during_init_means_no_publish_under_the_old_token() {
    let w = world();
    let backend = FakeBackend::new(1);
    let n = Node::new(&w, "node1", "198.18.0.1");
    let b2 = backend.clone();
    // During `swarm init` the lease passes to an intruder (as if ours had expired), and init
    // is slow enough for a renewal to notice.
    *n.engine.init_hook.lock().unwrap() = Some(Box::new(move || {
        Box::pin(async move {
            b2.steal_lease("intruder", TTL);
            tokio::time::sleep(TTL / 2).await;
        })
    }));
    let o = n.boot(&backend).run().await.unwrap();
    assert_eq!(
        o.how,
        How::PublishedExisting,
        "re-claimed after the intruder's lease expired"
    );
    let pubs = backend.publishes();
    assert!(
        pubs.iter().all(|p| p.fencing_token != 1),
        "nothing published under the lost token: {pubs:?}"
    );
    assert_eq!(pubs.iter().filter(|p| p.accepted).count(), 1);
    assert_eq!(w.lock().unwrap().inits, 1);
}

#[tokio::test]
async fn foreign_swarm_is_refused_without_touching_the_engine() {
    let w = world();
    let backend = FakeBackend::new(3);
    let n = Node::new(&w, "node1", "198.18.0.1");
    n.engine.init("198.18.0.1").await.unwrap(); // someone else's swarm
    let before = n.engine.calls().len();
    let err = n.boot(&backend).run().await.unwrap_err();
    assert!(matches!(err, BootstrapError::ForeignSwarm { .. }), "{err}");
    assert!(
        err.to_string().contains("docker swarm leave --force"),
        "{err}"
    );
    assert!(engine_mutations(&n.engine.calls()[before..]).is_empty());
    assert!(n.engine.membership().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flaky_engines_and_backend_still_form() {
    let w = world();
    let backend = FakeBackend::new(3);
    let ns = nodes(&w, 5);
    ns[0]
        .engine
        .down_for_calls
        .store(5, std::sync::atomic::Ordering::SeqCst);
    ns[1]
        .engine
        .join_transient_failures
        .store(3, std::sync::atomic::Ordering::SeqCst);
    ns[2]
        .engine
        .lose_join_response
        .store(true, std::sync::atomic::Ordering::SeqCst);
    ns[3]
        .engine
        .lose_join_response
        .store(true, std::sync::atomic::Ordering::SeqCst);
    backend
        .transient_failures
        .store(4, std::sync::atomic::Ordering::SeqCst);
    run_all(&ns, &backend).await;
    assert_eq!(w.lock().unwrap().inits, 1);
    assert_one_swarm(&w, &ns, 3);
}

#[tokio::test]
async fn worker_with_lost_state_is_recognised_by_its_managers() {
    let w = world();
    let backend = FakeBackend::new(1);
    let ns = nodes(&w, 2);
    run_all(&ns, &backend).await;
    assert_eq!(ns[1].engine.membership().unwrap().1, Role::Worker);
    std::fs::remove_file(ns[1].dir.path().join("state.json")).unwrap();
    let before = ns[1].engine.calls().len();
    let o = ns[1].boot(&backend).run().await.unwrap();
    assert_eq!(o.how, How::AlreadyMember);
    assert_eq!(o.role, Role::Worker);
    assert!(engine_mutations(&ns[1].engine.calls()[before..]).is_empty());
}

/// The rendezvous forgot the cluster (database wiped) and was re-created awaiting adoption: a
/// node starting in that window registers, is refused the init lease, and joins the running
/// swarm once its leader adopts the cluster. No second `swarm init`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_starting_while_the_cluster_awaits_adoption_joins_the_adopted_swarm() {
    let w = world();
    let backend = FakeBackend::new(3);
    let ns = nodes(&w, 4);
    run_all(&ns[..3], &backend).await;
    let swarm = assert_one_swarm(&w, &ns[..3], 3);
    let initialiser = ns[..3]
        .iter()
        .find(|n| n.state().init.is_some())
        .expect("one node ran init");
    let details = initialiser.engine.inspect_swarm().await.unwrap();

    backend.wipe();
    backend.set_adoption_hold(true).unwrap();
    let late = ns[3].boot(&backend);
    let h = tokio::spawn(async move { late.run().await });
    wait_for(
        "the late node is refused the lease",
        Duration::from_secs(10),
        || {
            ns[3]
                .state_opt()
                .and_then(|s| s.last_error)
                .is_some_and(|e| e.message.contains("awaits adoption"))
        },
    )
    .await;
    assert!(!h.is_finished(), "the late node waits for the adoption");
    assert_eq!(w.lock().unwrap().inits, 1);

    let adopted = backend
        .adopt(&swarmstrap_wire::AdoptRequest {
            node_id: initialiser.node_id.clone(),
            hostname: "node-init".into(),
            advertise_addr: initialiser.engine.addr.clone(),
            swarm_id: details.id.clone(),
            ca_digest: details.ca_digest.clone(),
            manager_addrs: vec![format!("{}:2377", initialiser.engine.addr)],
            manager_token: details.manager_token.clone(),
            worker_token: details.worker_token.clone(),
            managers: 3,
        })
        .await
        .unwrap();
    assert!(adopted.adopted);
    let out = tokio::time::timeout(Duration::from_secs(20), h)
        .await
        .expect("the late node finished")
        .unwrap()
        .unwrap();
    assert_eq!(out.how, How::Joined);
    assert_eq!(
        out.role,
        Role::Worker,
        "3 managers stand: the late node is a worker"
    );
    assert_eq!(out.swarm_id.as_deref(), Some(swarm.as_str()));
    assert_eq!(w.lock().unwrap().inits, 1, "exactly one swarm init, ever");
    assert_one_swarm(&w, &ns, 3);
}

/// The state dir lost the node's credential while its registration stayed: the bootstrap
/// stops with a clear error (no retry loop), and `run_or_rename` continues under a new node
/// id, saved in the state dir.
#[tokio::test]
async fn a_lost_credential_continues_under_a_new_node_id() {
    let w = world();
    let backend = FakeBackend::new(3);
    let n = Node::new(&w, "node1", "198.18.0.1");
    let old = n.node_id.clone();
    backend
        .register(&RegisterRequest {
            node_id: old.clone(),
            hostname: "node1".into(),
            advertise_addr: "198.18.0.1".into(),
            role: RequestedRole::Auto,
            joined_through: None,
            labels: None,
        })
        .await
        .unwrap();
    let issued = backend.credential(&old).unwrap();
    backend.forget_credential(&old);
    let mut boot = n.boot(&backend);
    let e = tokio::time::timeout(Duration::from_secs(20), boot.run())
        .await
        .expect("refused at once, not retried")
        .unwrap_err();
    assert!(matches!(e, BootstrapError::LostCredential { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains(&old) && msg.contains("credential"), "{msg}");
    assert!(!msg.contains(issued.expose()));
    assert!(!e.needs_operator());
    let out = tokio::time::timeout(Duration::from_secs(20), boot.run_or_rename())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.how, How::Initialised);
    let new = boot.settings.node_id.clone();
    assert_ne!(new, old);
    assert_eq!(crate::state::read_node_id(n.dir.path()), Some(new.clone()));
    // The new id was bound to the credential saved before its registration offered it.
    assert!(backend.credential(&new).is_some());
    assert_eq!(
        crate::state::load_credential(n.dir.path(), &new).unwrap(),
        backend.credential(&new)
    );
    assert_eq!(n.state().node_id, new);
}
