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
    let outside = EtcdRendezvous::new(cfg).await.unwrap();
    let err = outside.status().await.unwrap_err();
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
    let other = EtcdRendezvous::new(with_user("other")).await.unwrap();
    let e = other.status().await.unwrap_err();
    assert!(matches!(e, RendezvousError::Unauthorized(_)), "{e}");
    let e = other.register(&reg("n1")).await.unwrap_err();
    assert!(matches!(e, RendezvousError::Unauthorized(_)), "{e}");
}
