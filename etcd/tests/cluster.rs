//! The etcd backend against a real 3-member etcd cluster (TLS + auth; `testing::EtcdCluster`).

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;
use swarmstrap_etcd::testing::EtcdCluster;
use swarmstrap_etcd::EtcdRendezvous;
use swarmstrap_wire::rendezvous::{Rendezvous, RendezvousError};
use swarmstrap_wire::{Phase, RegisterRequest, RequestedRole, Role};

fn reg(id: &str) -> RegisterRequest {
    RegisterRequest {
        node_id: id.into(),
        hostname: id.into(),
        advertise_addr: "10.0.0.1".into(),
        role: RequestedRole::Auto,
        joined_through: None,
        labels: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_auth_prefix_role_and_failover() {
    let mut etcd = EtcdCluster::start().await;
    let b = etcd.backend("prod", 1).await;
    assert_eq!(b.prefix(), "/swarmstrap/prod/");
    assert_eq!(b.status().await.unwrap().phase, Phase::Open);
    assert_eq!(b.register(&reg("n1")).await.unwrap().role, Role::Manager);
    assert_eq!(b.register(&reg("n2")).await.unwrap().role, Role::Worker);
    assert_eq!(b.status().await.unwrap().nodes.len(), 2);

    // The role grants the swarmstrap prefix only: a prefix outside it is refused.
    let mut cfg = etcd.config("prod", 1);
    cfg.prefix = Some("/other/".into());
    let err = EtcdRendezvous::new(cfg)
        .await
        .err()
        .expect("a prefix outside the role is refused at start");
    assert!(matches!(err, RendezvousError::Unauthorized(_)), "{err}");

    // A wrong password is refused as unauthorized (not retried as transient).
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "wrong\n").unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cfg = etcd.config("prod", 1);
    cfg.password_file = Some(pw.clone());
    match EtcdRendezvous::new(cfg).await {
        Err(e) => assert!(!e.is_transient(), "{e}"),
        Ok(b) => {
            let e = b.status().await.unwrap_err();
            assert!(!e.is_transient(), "{e}");
        }
    }

    // A password file readable by others is refused before connecting, saying what to do.
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cfg = etcd.config("prod", 1);
    cfg.password_file = Some(pw);
    let e = EtcdRendezvous::new(cfg)
        .await
        .err()
        .expect("mode 0644 refused");
    assert!(e.to_string().contains("0600"), "{e}");

    // One member down: each call fails over to the others by itself (quorum 2 of 3 remains).
    etcd.kill_member(0);
    assert_eq!(b.register(&reg("n3")).await.unwrap().role, Role::Worker);
    assert_eq!(b.status().await.unwrap().nodes.len(), 3);
    let again = etcd.backend("prod", 1).await;
    assert_eq!(again.status().await.unwrap().nodes.len(), 3);
}

/// A sync that marks hundreds of registrations seen commits in one transaction: more changed
/// registrations than etcd's default `--max-txn-ops` (128) allows keys in one transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_of_300_registrations_commits() {
    use swarmstrap_wire::{Member, PublishRequest, Secret, SyncRequest};
    const N: usize = 300;
    let etcd = EtcdCluster::start().await;
    let b = etcd.backend("big", 3).await;
    let ids: Vec<String> = (0..N).map(|i| format!("n{i:03}")).collect();
    for id in &ids {
        b.register(&reg(id)).await.unwrap();
    }
    let lease = b.claim("n000", Duration::from_secs(60)).await.unwrap();
    let token = lease.lease.expect("granted").fencing_token;
    let swarm = "swarmid0123456789abcdefgh";
    b.publish(&PublishRequest {
        node_id: "n000".into(),
        fencing_token: token,
        swarm_id: swarm.into(),
        ca_digest: swarmstrap_wire::format_fingerprint(&[0xab; 32]),
        manager_addrs: vec!["198.18.0.10:2377".into()],
        manager_token: Secret::new("SWMTKN-1-m"),
        worker_token: Secret::new("SWMTKN-1-w"),
    })
    .await
    .unwrap();
    let status = b.status().await.unwrap();
    let members: Vec<Member> = status
        .nodes
        .iter()
        .map(|n| Member {
            node_id: n.node_id.clone(),
            role: n.role,
        })
        .collect();
    assert_eq!(members.len(), N);
    let r = b
        .sync(&SyncRequest {
            node_id: "n000".into(),
            swarm_id: swarm.into(),
            manager_addrs: vec!["198.18.0.10:2377".into()],
            managers: 3,
            members,
        })
        .await
        .unwrap();
    assert!(r.changed, "the first sync marks every registration seen");
    assert_eq!(r.node_count, N as u64);
    assert_eq!(b.status().await.unwrap().nodes.len(), N);
}

/// TLS misconfigurations: a CA that did not sign the members is a permanent refusal naming
/// the CA file; a missing client certificate fails (etcd closes the handshake) with a hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_misconfigurations_are_reported() {
    let etcd = EtcdCluster::start().await;
    let mut cfg = etcd.config("prod", 1);
    cfg.ca_file = Some(etcd.cert_file.clone());
    let e = EtcdRendezvous::new(cfg)
        .await
        .err()
        .expect("an untrusted CA is refused");
    assert!(!e.is_transient(), "{e}");
    assert_eq!(e.code(), None);
    assert!(
        matches!(&e, RendezvousError::Rejected { code, .. } if code == "tls_certificate"),
        "{e}"
    );
    assert!(e.to_string().contains("check the CA file"), "{e}");

    let mut cfg = etcd.config("prod", 1);
    cfg.cert_file = None;
    cfg.key_file = None;
    let e = EtcdRendezvous::new(cfg)
        .await
        .err()
        .expect("no client certificate: refused");
    assert!(e.to_string().contains("client certificate"), "{e}");
}

/// The production role (README "Security"): a user whose role grants one cluster's prefix
/// works there and is refused on another cluster's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_cluster_role_reaches_its_cluster_only() {
    let etcd = EtcdCluster::start().await;
    let pw = etcd
        .add_prefix_user("swarmstrap-prod", "/swarmstrap/prod/")
        .await;
    let with_user = |cluster: &str| {
        let mut c = etcd.config(cluster, 1);
        c.user = Some("swarmstrap-prod".into());
        c.password_file = Some(pw.clone());
        c
    };
    let prod = EtcdRendezvous::new(with_user("prod")).await.unwrap();
    assert_eq!(prod.register(&reg("n1")).await.unwrap().role, Role::Manager);
    // Refused at start (not at the first call, not retried), naming the user, its role and
    // what the role grants, the prefix it lacks, and what to do.
    let e = EtcdRendezvous::new(with_user("other"))
        .await
        .err()
        .expect("another cluster's prefix is refused at start");
    assert!(matches!(e, RendezvousError::Unauthorized(_)), "{e}");
    assert!(!e.is_transient(), "{e}");
    let msg = e.to_string();
    for part in [
        "etcd user \"swarmstrap-prod\"",
        "role \"swarmstrap-prod\" granting readwrite prefix /swarmstrap/prod/",
        "may not read and write the prefix /swarmstrap/other/",
        "etcdctl role grant-permission ROLE --prefix=true readwrite /swarmstrap/other/",
    ] {
        assert!(msg.contains(part), "{part:?} not in: {msg}");
    }
}

fn publish_req(node: &str, fencing_token: u64) -> swarmstrap_wire::PublishRequest {
    swarmstrap_wire::PublishRequest {
        node_id: node.into(),
        fencing_token,
        swarm_id: "swarmid0123456789abcdefgh".into(),
        ca_digest: swarmstrap_wire::format_fingerprint(&[0xab; 32]),
        manager_addrs: vec!["198.18.0.10:2377".into()],
        manager_token: swarmstrap_wire::Secret::new("SWMTKN-1-etcd-test-manager"),
        worker_token: swarmstrap_wire::Secret::new("SWMTKN-1-etcd-test-worker"),
    }
}

/// The manager join token is stored only under the managers' prefix (README "Security"): the
/// shared state holds its reference; a user with the workers' role (the shared prefix only)
/// joins as a worker, cannot read the managers' prefix, and a node assigned the manager role
/// with that user gets a permanent error that says which role it needs. A manager's join
/// answer carries the real token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manager_token_is_readable_by_the_managers_role_only() {
    let etcd = EtcdCluster::start().await;
    let mgr_pw = etcd
        .add_user_with_prefixes(
            "prod-manager",
            &["/swarmstrap/prod/", "/swarmstrap/prod.managers/"],
        )
        .await;
    let wrk_pw = etcd
        .add_user_with_prefixes("prod-worker", &["/swarmstrap/prod/"])
        .await;
    let as_user = |user: &str, pw: &std::path::Path| {
        let mut c = etcd.config("prod", 3);
        c.user = Some(user.into());
        c.password_file = Some(pw.to_path_buf());
        c
    };
    let mgr = EtcdRendezvous::new(as_user("prod-manager", &mgr_pw))
        .await
        .unwrap();
    let wrk = EtcdRendezvous::new(as_user("prod-worker", &wrk_pw))
        .await
        .unwrap();
    // n1 forms; n2 (workers' role) is assigned manager (target 3) and cannot get the token.
    assert_eq!(mgr.register(&reg("n1")).await.unwrap().role, Role::Manager);
    let lease = mgr.claim("n1", Duration::from_secs(60)).await.unwrap();
    assert!(lease.granted);
    let token = lease.lease.unwrap().fencing_token;
    mgr.publish(&publish_req("n1", token)).await.unwrap();
    let mut worker_req = reg("n2");
    worker_req.role = RequestedRole::Worker;
    assert_eq!(wrk.register(&worker_req).await.unwrap().role, Role::Worker);
    assert_eq!(wrk.register(&reg("n3")).await.unwrap().role, Role::Manager);

    // A worker gets the worker token.
    let j = wrk.wait_join("n2", Duration::from_secs(5)).await.unwrap();
    assert_eq!(j.join.unwrap().token.expose(), "SWMTKN-1-etcd-test-worker");
    // A manager through the managers' role gets the real manager token.
    mgr.register(&reg("n4")).await.unwrap();
    let j = mgr.wait_join("n1", Duration::from_secs(5)).await.unwrap();
    assert_eq!(j.join.unwrap().token.expose(), "SWMTKN-1-etcd-test-manager");
    // A manager-assigned node whose user has only the workers' role: permanent, says why.
    let e = wrk
        .wait_join("n3", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(e, RendezvousError::Unauthorized(_)), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("/swarmstrap/prod.managers/"), "{msg}");
    assert!(msg.contains("managers' role"), "{msg}");
    assert!(!msg.contains("SWMTKN"), "{msg}");

    // Raw etcd: the shared prefix holds no manager token, the workers' user cannot read the
    // managers' prefix, the managers' prefix holds it.
    let mut root = etcd.root_client().await;
    let shared = root
        .get(
            "/swarmstrap/prod/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert!(shared.count() > 0);
    for kv in shared.kvs() {
        let v = String::from_utf8_lossy(kv.value());
        assert!(!v.contains("SWMTKN-1-etcd-test-manager"), "{v}");
    }
    let managers = root
        .get(
            "/swarmstrap/prod.managers/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(managers.count(), 1);
    assert_eq!(
        managers.kvs()[0].value(),
        b"SWMTKN-1-etcd-test-manager".as_slice()
    );
    let mut opts = etcd_client::ConnectOptions::new().with_user("prod-worker", {
        let p = std::fs::read_to_string(&wrk_pw).unwrap();
        p.trim_end().to_string()
    });
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    opts = opts.with_tls(
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&etcd.ca_file)))
            .identity(etcd_client::Identity::from_pem(
                read(&etcd.cert_file),
                read(&etcd.key_file),
            )),
    );
    let mut worker_raw = etcd_client::Client::connect(&etcd.endpoints, Some(opts))
        .await
        .unwrap();
    let e = worker_raw
        .get(
            "/swarmstrap/prod.managers/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("permission denied"), "{e}");
}

/// A client certificate from a CA the members do not trust is a configuration error at start,
/// not a failure retried forever: refused within the connect deadline, not transient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_client_certificate_is_a_configuration_error() {
    let etcd = EtcdCluster::start().await;
    let (cert, key) = etcd.foreign_client_cert();
    let mut cfg = etcd.config("prod", 1);
    cfg.cert_file = Some(cert.clone());
    cfg.key_file = Some(key);
    let started = std::time::Instant::now();
    let e = EtcdRendezvous::new(cfg)
        .await
        .err()
        .expect("a foreign client certificate is refused");
    eprintln!("refused after {:?}: {e}", started.elapsed());
    assert!(!e.is_transient(), "{e}");
    assert!(e.to_string().contains("client certificate"), "{e}");
    assert!(
        e.to_string().contains(&cert.display().to_string()),
        "names the file: {e}"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "{e}");
}

/// etcd's auth token expires after `--auth-token-ttl` seconds without use (here 2 s;
/// production default 300 s): a backend idle for longer still works (the client logs in
/// again), so an agent that sleeps between day-2 calls is not locked out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_backend_outlives_its_auth_token() {
    let etcd = EtcdCluster::start_with_auth_token_ttl(2).await;
    let b = etcd.backend("idle", 1).await;
    assert_eq!(b.register(&reg("n1")).await.unwrap().role, Role::Manager);
    // Idle past the token's TTL: a condition on the wall clock, not on the system under test.
    let idle_until = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < idle_until {
        tokio::time::sleep(idle_until - std::time::Instant::now()).await;
    }
    assert_eq!(b.status().await.unwrap().nodes.len(), 1);
    assert_eq!(b.register(&reg("n2")).await.unwrap().role, Role::Worker);
}
