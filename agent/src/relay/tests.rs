//! The relay with the in-memory rulebook backend, real TLS on loopback and certificates made
//! the way swarmkit makes them (`tls::tests::FakeSwarmCa`).

use super::tls::tests::FakeSwarmCa;
use super::*;
use crate::engine::{
    EngineError, JoinRequest, LocalSwarm, LocalSwarmState, SwarmDetails, SwarmNode,
};
use crate::testing::FakeBackend;
use std::path::Path;
use swarmstrap_wire::{RegisterRequest, RequestedRole};

/// An engine that only answers `docker info` and `docker node ls` (what the relay asks).
struct InfoEngine(Mutex<EngineInfo>, Vec<SwarmNode>);

fn err() -> EngineError {
    EngineError::Unreachable {
        host: "info-only".into(),
        message: "not in this test".into(),
    }
}

#[async_trait::async_trait]
impl Engine for InfoEngine {
    fn describe(&self) -> String {
        "info-only".into()
    }
    async fn info(&self) -> crate::engine::Result<EngineInfo> {
        Ok(self.0.lock().unwrap().clone())
    }
    async fn inspect_swarm(&self) -> crate::engine::Result<SwarmDetails> {
        Err(err())
    }
    async fn init(&self, _: &str) -> crate::engine::Result<String> {
        Err(err())
    }
    async fn join(&self, _: &JoinRequest) -> crate::engine::Result<()> {
        Err(err())
    }
    async fn leave(&self, _: bool) -> crate::engine::Result<()> {
        Err(err())
    }
    async fn nodes(&self) -> crate::engine::Result<Vec<SwarmNode>> {
        if self.1.is_empty() {
            return Err(err());
        }
        Ok(self.1.clone())
    }
}

fn engine(manager: bool, addr: &str, root: &Path) -> Arc<InfoEngine> {
    // The relay looks under <root>/swarm/certificates.
    Arc::new(InfoEngine(
        Mutex::new(EngineInfo {
            hostname: addr.into(),
            server_version: "test".into(),
            swarm: LocalSwarm {
                state: LocalSwarmState::Active,
                node_id: Some(format!("node-{addr}")),
                node_addr: Some(addr.into()),
                control_available: manager,
                cluster_id: None,
                remote_managers: vec!["127.0.0.1:2377".into()],
                managers: None,
                nodes: None,
                error: None,
            },
            docker_root_dir: Some(root.display().to_string()),
        }),
        vec![],
    ))
}

async fn registered(backend: &Arc<FakeBackend>, id: &str) {
    backend
        .register(&RegisterRequest {
            node_id: id.into(),
            hostname: id.into(),
            advertise_addr: "10.0.0.9".into(),
            role: RequestedRole::Auto,
            joined_through: None,
            labels: None,
        })
        .await
        .unwrap();
}

fn drains(n: u64) -> serde_json::Value {
    serde_json::json!({"requests": {}, "n": n})
}

#[tokio::test]
async fn a_manager_serves_status_and_documents_from_one_read() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = FakeBackend::new(3);
    registered(&backend, "m1").await;
    let info = engine(true, "127.0.0.1", tmp.path())
        .0
        .lock()
        .unwrap()
        .clone();
    let with_quorum = Arc::new(InfoEngine(
        Mutex::new(info),
        vec![swarm_node("127.0.0.1", true)],
    ));
    let relay = Relay::new(backend.clone(), with_quorum, 0);
    for _ in 0..10 {
        relay.status().await.unwrap();
    }
    let d = relay.get_doc("drains", None, Duration::ZERO).await.unwrap();
    assert_eq!(
        relay.cache.reads.load(Ordering::SeqCst),
        1,
        "one read serves them all"
    );
    // Its own write lands in the cache without a read.
    let d1 = relay
        .put_doc("m1", "drains", d.version, &drains(1))
        .await
        .unwrap();
    let got = relay
        .get_doc("drains", Some(d.version), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got, d1);
    assert_eq!(relay.cache.reads.load(Ordering::SeqCst), 1);
    // Another node's write (straight to the backend), announced by a poke, wakes a long-poll.
    let waiter = {
        let relay = relay.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let d = relay
                .get_doc("drains", Some(d1.version), Duration::from_secs(20))
                .await
                .unwrap();
            (d, started.elapsed())
        })
    };
    let d2 = backend
        .put_doc("m1", "drains", d1.version, &drains(2))
        .await
        .unwrap();
    relay.cache.poke(Some(("drains".into(), d2.version)));
    let (got, took) = waiter.await.unwrap();
    assert_eq!(got, d2);
    assert!(
        took < Duration::from_secs(10),
        "woken by the poke, not the timeout: {took:?}"
    );
    // A write that is not a document (a sync, a reset) makes the next status read again.
    relay.cache.invalidate();
    relay.status().await.unwrap();
    assert!(relay.cache.reads.load(Ordering::SeqCst) >= 3);
}

struct Pair {
    _tmp: tempfile::TempDir,
    backend: Arc<FakeBackend>,
    manager: Arc<Relay>,
    worker: Arc<Relay>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A manager's relay serving on loopback and a worker's relay pointed at it; the worker's
/// certificates come from `worker_ca` (the swarm's own CA unless a test says otherwise).
async fn pair(worker_ca: Option<&FakeSwarmCa>) -> Pair {
    let tmp = tempfile::tempdir().unwrap();
    let ca = FakeSwarmCa::new("swarm");
    let (mroot, wroot) = (tmp.path().join("m"), tmp.path().join("w"));
    ca.node_dir(
        &mroot.join("swarm/certificates"),
        "managernode",
        "swarm-manager",
    );
    worker_ca.unwrap_or(&ca).node_dir(
        &wroot.join("swarm/certificates"),
        "workernode",
        "swarm-worker",
    );
    let backend = FakeBackend::new(3);
    registered(&backend, "m1").await;
    registered(&backend, "w1").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let manager = Relay::new(backend.clone(), engine(true, "127.0.0.1", &mroot), port);
    let worker = Relay::new(backend.clone(), engine(false, "127.0.0.2", &wroot), port);
    let server = tokio::spawn(server::serve_on(manager.clone(), listener));
    Pair {
        _tmp: tmp,
        backend,
        manager,
        worker,
        server,
    }
}

#[tokio::test]
async fn a_worker_reads_through_a_manager_and_its_writes_reach_the_manager() {
    let p = pair(None).await;
    let d = p
        .worker
        .get_doc("drains", None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(p.worker.fallback_failures.load(Ordering::SeqCst), 0);
    // The manager writes; the worker's long-poll through the relay sees it.
    let waiter = {
        let w = p.worker.clone();
        tokio::spawn(async move {
            w.get_doc("drains", Some(d.version), Duration::from_secs(20))
                .await
                .unwrap()
        })
    };
    // Let the long-poll reach the manager first; either order must work.
    tokio::task::yield_now().await;
    let d1 = p
        .manager
        .put_doc("m1", "drains", d.version, &drains(1))
        .await
        .unwrap();
    assert_eq!(waiter.await.unwrap(), d1);
    // The worker writes (a drain request in real life); its poke makes the manager read again
    // and wakes the manager's own long-poll.
    let waiter = {
        let m = p.manager.clone();
        tokio::spawn(async move {
            m.get_doc("drains", Some(d1.version), Duration::from_secs(20))
                .await
                .unwrap()
        })
    };
    let d2 = p
        .worker
        .put_doc("w1", "drains", d1.version, &drains(2))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(15), waiter)
        .await
        .expect("the poke woke the manager")
        .unwrap();
    assert_eq!(got, d2);
    assert_eq!(p.worker.fallback_failures.load(Ordering::SeqCst), 0);
    let _ = &p.backend;
}

#[tokio::test]
async fn another_swarms_node_gets_nothing_from_the_relay_and_falls_back() {
    let stranger = FakeSwarmCa::new("another swarm");
    let p = pair(Some(&stranger)).await;
    let d = p
        .worker
        .get_doc("drains", None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(d.version, 0);
    assert_eq!(
        p.worker.fallback_failures.load(Ordering::SeqCst),
        1,
        "the relay refused it; the answer came from the backend itself"
    );
    assert_eq!(
        p.manager.cache.reads.load(Ordering::SeqCst),
        0,
        "nothing was served"
    );
}

#[tokio::test]
async fn the_server_answers_json_errors() {
    let p = pair(None).await;
    let info = p.worker.engine.info().await.unwrap();
    let cfg = tls::client_config(&cert_dir(&info)).unwrap();
    let addr = peer::manager_addrs(&info, p.manager.port, false)[0];
    let call = |method: hyper::Method, path: &'static str, body: Option<&'static str>| {
        let cfg = cfg.clone();
        async move {
            let (s, b) = peer::request(
                cfg,
                addr,
                method,
                path,
                body.map(|b| b.as_bytes().to_vec()),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            (s.as_u16(), v)
        }
    };
    let (s, v) = call(hyper::Method::GET, "/v1/nope", None).await;
    assert_eq!((s, v["error"].as_str()), (404, Some("not_found")), "{v}");
    let (s, v) = call(hyper::Method::GET, "/v1/docs/drains?after=x", None).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("invalid_query")),
        "{v}"
    );
    let (s, v) = call(hyper::Method::GET, "/v1/docs/Bad..Name", None).await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = call(hyper::Method::POST, "/v1/poke", Some("{not json")).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_json")), "{v}");
    let (s, v) = call(hyper::Method::POST, "/v1/poke", Some(r#"{"doc":"drains"}"#)).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_poke")), "{v}");
    let big: &'static str =
        Box::leak(format!("{{\"doc\":\"{}\"}}", "a".repeat(5000)).into_boxed_str());
    let (s, v) = call(hyper::Method::POST, "/v1/poke", Some(big)).await;
    assert_eq!((s, v["error"].as_str()), (413, Some("too_large")), "{v}");
    // A node that is no longer a manager sends its callers elsewhere.
    p.manager.engine.info().await.unwrap();
    let demoted = Relay::new(
        p.backend.clone(),
        {
            let e = p.manager.engine.info().await.unwrap();
            let mut e2 = e.clone();
            e2.swarm.control_available = false;
            Arc::new(InfoEngine(Mutex::new(e2), vec![]))
        },
        0,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr2 = listener.local_addr().unwrap();
    let srv = tokio::spawn(server::serve_on(demoted, listener));
    let (s, b) = peer::request(
        cfg.clone(),
        addr2,
        hyper::Method::GET,
        "/v1/docs/drains",
        None,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    srv.abort();
    assert_eq!(s.as_u16(), 421, "{}", String::from_utf8_lossy(&b));
}

fn swarm_node(addr: &str, leader: bool) -> SwarmNode {
    SwarmNode {
        id: format!("node-{addr}"),
        hostname: addr.into(),
        role: swarmstrap_wire::Role::Manager,
        leader,
        reachable: Some(true),
        state: "ready".into(),
        addr: Some(addr.into()),
    }
}

#[tokio::test]
async fn leader_documents_live_in_the_leaders_agent_and_reach_every_node() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = FakeSwarmCa::new("swarm");
    let backend = FakeBackend::new(3);
    registered(&backend, "m1").await;
    // One port for every agent, as on VMs: each listens on its own loopback address.
    let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let nodes = vec![
        swarm_node("127.0.0.1", true),
        swarm_node("127.0.0.2", false),
    ];
    let mut relays = Vec::new();
    let mut servers = Vec::new();
    for (addr, manager, role) in [
        ("127.0.0.1", true, "swarm-manager"),
        ("127.0.0.2", true, "swarm-manager"),
        ("127.0.0.3", false, "swarm-worker"),
    ] {
        let root = tmp.path().join(addr);
        ca.node_dir(&root.join("swarm/certificates"), &format!("n{addr}"), role);
        let mut info = engine(manager, addr, &root).0.lock().unwrap().clone();
        info.swarm.remote_managers = vec!["127.0.0.1:2377".into(), "127.0.0.2:2377".into()];
        let e = Arc::new(InfoEngine(Mutex::new(info), nodes.clone()));
        let r = Relay::new(backend.clone(), e, port);
        if manager {
            r.mark_serving();
            let l = tokio::net::TcpListener::bind((addr, port)).await.unwrap();
            servers.push(tokio::spawn(server::serve_on(r.clone(), l)));
        }
        relays.push(r);
    }
    let (leader, manager, worker) = (&relays[0], &relays[1], &relays[2]);
    let body = serde_json::json!({"nodes": []});
    let d1 = leader.put_doc("m1", "membership", 0, &body).await.unwrap();
    assert!(d1.version > 1_000_000, "versions are times in ms: {d1:?}");
    // Not in the backend: the rendezvous never stores it.
    let stored = backend
        .get_doc("membership", None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(stored.version, 0);
    // Another manager forwards to the leader's agent; a worker asks any manager.
    assert_eq!(
        manager
            .get_doc("membership", None, Duration::ZERO)
            .await
            .unwrap(),
        d1
    );
    let waiter = {
        let w = worker.clone();
        tokio::spawn(async move {
            w.get_doc("membership", Some(d1.version), Duration::from_secs(20))
                .await
                .unwrap()
        })
    };
    let d2 = leader
        .put_doc(
            "m1",
            "membership",
            d1.version,
            &serde_json::json!({"nodes": [], "x": 1}),
        )
        .await;
    // The body is checked as the rulebook checks it: an unknown field is refused.
    let d2 = match d2 {
        Ok(d) => d,
        Err(e) => {
            assert!(e.code().is_some(), "{e}");
            leader
                .put_doc("m1", "membership", d1.version, &body)
                .await
                .unwrap()
        }
    };
    assert!(d2.version > d1.version);
    let got = tokio::time::timeout(Duration::from_secs(15), waiter)
        .await
        .expect("the long-poll was woken")
        .unwrap();
    assert_eq!(got, d2);
    // Only the leader's agent writes them; a stale expectation is a conflict.
    assert!(manager
        .put_doc("m1", "membership", d2.version, &body)
        .await
        .unwrap_err()
        .is_transient());
    assert!(leader
        .put_doc("m1", "membership", d1.version, &body)
        .await
        .is_err());
    // A forwarded read that reaches a non-leader is not forwarded again.
    let info = worker.engine.info().await.unwrap();
    let cfg = tls::client_config(&cert_dir(&info)).unwrap();
    let (s, b) = peer::request(
        cfg,
        SocketAddr::from(([127, 0, 0, 2], port)),
        hyper::Method::GET,
        "/v1/docs/membership?hop=1",
        None,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(s.as_u16(), 421, "{}", String::from_utf8_lossy(&b));
    for s in servers {
        s.abort();
    }
}

#[tokio::test]
async fn a_node_tells_the_managers_which_manager_it_joined_through_for_itself_only() {
    let p = pair(None).await;
    let info = p.worker.engine.info().await.unwrap();
    let cfg = tls::client_config(&cert_dir(&info)).unwrap();
    let addr = peer::manager_addrs(&info, p.manager.port, false)[0];
    let poke = |body: serde_json::Value| {
        let cfg = cfg.clone();
        async move {
            let (s, b) = peer::request(
                cfg,
                addr,
                hyper::Method::POST,
                "/v1/poke",
                Some(serde_json::to_vec(&body).unwrap()),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
            (s.as_u16(), String::from_utf8_lossy(&b).to_string())
        }
    };
    // Another node's id: the worker's certificate does not name it.
    let (s, b) = poke(
        serde_json::json!({"swarm_node_id": "managernode", "joined_through": "10.0.0.1:2377"}),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    assert_eq!(p.manager.joined_through("managernode"), None);
    // Its own (the id its certificate carries), through the agent's own call.
    p.worker
        .announce_joined("workernode".into(), "10.0.0.1:2377".into());
    p.worker.flush().await;
    assert_eq!(
        p.manager.joined_through("workernode").as_deref(),
        Some("10.0.0.1:2377")
    );
    let (s, b) =
        poke(serde_json::json!({"swarm_node_id": "workernode", "joined_through": "nonsense"}))
            .await;
    assert_eq!(s, 400, "{b}");
}

#[tokio::test]
async fn a_manager_without_quorum_reads_the_backend_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let backend = FakeBackend::new(3);
    // `docker node ls` fails: no raft leader, nobody will poke this manager.
    let relay = Relay::new(backend.clone(), engine(true, "127.0.0.1", tmp.path()), 0);
    for _ in 0..3 {
        relay.status().await.unwrap();
    }
    assert_eq!(
        relay.cache.reads.load(Ordering::SeqCst),
        0,
        "not from the cache"
    );
}
