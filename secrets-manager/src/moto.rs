//! Test support (feature `moto`): a real moto server as a child process, and backends pointed
//! at it. Used by this crate's tests, the conformance suite and the agent's race suite, so the
//! one way to run "Secrets Manager" in a test lives here.
//!
//! moto is one process with always-fresh reads and no throttling: it checks the backend
//! against the Secrets Manager API, not against AWS's eventual consistency.

use crate::backoff::Backoff;
use crate::{SecretsManagerConfig, SecretsManagerRendezvous};
use aws_sdk_secretsmanager::config::{Credentials, Region, SharedCredentialsProvider};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long moto may take to answer its first request.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A `moto_server` child process on a free loopback port, killed (by pid) when dropped.
pub struct Moto {
    child: Mutex<Child>,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
}

impl Moto {
    /// Start moto and wait (capped backoff, 30 s deadline) until it answers HTTP. Its request
    /// log goes to `$SWARMSTRAP_MOTO_LOG` (appended) when set. Panics with what to install
    /// when `moto_server` is not on PATH.
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
                 with `pip install \"moto[server]\"` (scripts/setup.sh does)"
            ),
            Err(e) => panic!("cannot start moto_server: {e}"),
        };
        let moto = Moto {
            child: Mutex::new(child),
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + START_DEADLINE;
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        loop {
            if http_ok(port) {
                return moto;
            }
            if let Ok(Some(status)) = moto.child.lock().unwrap().try_wait() {
                panic!("moto_server exited during startup with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on port {port} within {START_DEADLINE:?}"
            );
            std::thread::sleep(backoff.next_delay());
        }
    }

    /// An SDK config for moto: region us-east-1, dummy static credentials.
    pub fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .http_client(crate::https_client())
            .region(Region::new("us-east-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "testing", "testing", None, None, "static",
            )))
            .endpoint_url(&self.endpoint)
            .build()
    }

    /// A plain SDK client (for test-side setup and raw reads).
    pub fn client(&self) -> aws_sdk_secretsmanager::Client {
        aws_sdk_secretsmanager::Client::new(&self.sdk_config())
    }

    /// A backend of `cluster` with its own SDK client, as a separate node would have.
    pub fn backend(&self, cluster: &str, target_managers: u8) -> SecretsManagerRendezvous {
        let cfg = SecretsManagerConfig::new(cluster, target_managers);
        SecretsManagerRendezvous::with_sdk_config(cfg, &self.sdk_config())
            .expect("a Secrets Manager backend for moto")
    }
}

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
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}
