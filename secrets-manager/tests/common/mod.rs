//! Test support: a real moto server per test (child process, killed by pid on drop) and
//! backends pointed at it with dummy static credentials.
#![allow(dead_code)]

use std::time::{Duration, Instant};
use swarmstrap_secrets_manager::backoff::Backoff;

pub use swarmstrap_secrets_manager::moto::Moto;

/// Wait for an async condition: poll with capped backoff until it holds or the deadline hits.
pub async fn eventually<F, Fut, T>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

pub fn reg(
    node_id: &str,
    role: swarmstrap_wire::RequestedRole,
) -> swarmstrap_wire::RegisterRequest {
    swarmstrap_wire::RegisterRequest {
        node_id: node_id.to_string(),
        hostname: format!("host-{node_id}"),
        advertise_addr: "198.18.0.10".to_string(),
        role,
        joined_through: None,
        labels: None,
    }
}

pub fn publish_req(
    node_id: &str,
    fencing_token: u64,
    manager_token: &str,
    worker_token: &str,
) -> swarmstrap_wire::PublishRequest {
    swarmstrap_wire::PublishRequest {
        node_id: node_id.to_string(),
        fencing_token,
        swarm_id: "swarm-abc".to_string(),
        ca_digest: swarmstrap_wire::format_fingerprint(&[0x5a; 32]),
        manager_addrs: vec!["198.18.0.10:2377".to_string()],
        manager_token: swarmstrap_wire::Secret::new(manager_token),
        worker_token: swarmstrap_wire::Secret::new(worker_token),
    }
}

pub fn conflict_code(e: &swarmstrap_wire::rendezvous::RendezvousError) -> Option<&str> {
    match e {
        swarmstrap_wire::rendezvous::RendezvousError::Conflict { code, .. } => Some(code),
        _ => None,
    }
}
