//! Test support: a real moto server per test (child process, killed by pid on drop) and
//! backends pointed at it with dummy static credentials.
#![allow(dead_code)]

use aws_sdk_secretsmanager::config::{Credentials, Region, SharedCredentialsProvider};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use swarmstrap_secrets_manager::backoff::Backoff;
use swarmstrap_secrets_manager::{SecretsManagerConfig, SecretsManagerRendezvous};

/// A moto_server child process on a free loopback port.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Moto {
    /// Start moto and wait (polling with backoff, 30 s deadline) until it answers HTTP.
    pub fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("pick a free port")
            .port();
        let child = match Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_target())
            .spawn()
        {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "moto_server not found on PATH: these tests need a real moto server; install it \
                 with `pip install \"moto[server]\"`"
            ),
            Err(e) => panic!("cannot start moto_server: {e}"),
        };
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        loop {
            if http_ok(port) {
                return moto;
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited during startup with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on port {port} within 30 s"
            );
            std::thread::sleep(backoff.next_delay());
        }
    }

    pub fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "testing", "testing", None, None, "static",
            )))
            .endpoint_url(&self.endpoint)
            .build()
    }

    /// A plain SDK client (for test-side setup such as DeleteSecret).
    pub fn client(&self) -> aws_sdk_secretsmanager::Client {
        aws_sdk_secretsmanager::Client::new(&self.sdk_config())
    }

    /// A backend with its own SDK client, as a separate node would have.
    pub fn backend(&self, cluster: &str, target_managers: u8) -> SecretsManagerRendezvous {
        let cfg = SecretsManagerConfig::new(cluster, target_managers);
        SecretsManagerRendezvous::with_sdk_config(cfg, &self.sdk_config()).expect("backend")
    }
}

/// moto's request log goes to `$SWARMSTRAP_MOTO_LOG` (appended) when set, for debugging.
fn log_target() -> Stdio {
    match std::env::var_os("SWARMSTRAP_MOTO_LOG") {
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null()),
        None => Stdio::null(),
    }
}

fn http_ok(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    matches!(s.read(&mut buf), Ok(n) if n >= 12 && buf.starts_with(b"HTTP/1."))
}

impl Drop for Moto {
    fn drop(&mut self) {
        // Child::kill signals exactly this pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
