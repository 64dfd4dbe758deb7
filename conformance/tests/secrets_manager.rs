//! The conformance suite on the Secrets Manager backend: the real `SecretsManagerRendezvous`
//! against a real moto server (a child process on a free loopback port, killed by pid at the
//! end). Every node gets its own SDK client, as separate VMs would. moto answers every read
//! fresh; the backend's behaviour under AWS's eventual consistency is outside this suite.

use aws_sdk_secretsmanager::config::{Credentials, Region, SharedCredentialsProvider};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarmstrap_conformance::{run_all, Backend, Clients};
use swarmstrap_secrets_manager::{SecretsManagerConfig, SecretsManagerRendezvous};
use swarmstrap_wire::rendezvous::Rendezvous;

struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    /// Start moto_server and wait until it answers HTTP (capped backoff, 30 s deadline).
    fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server on PATH (pip install \"moto[server]\"; scripts/setup.sh does)");
        let mut moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut delay = Duration::from_millis(20);
        while !http_ok(port) {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited during startup with {status}");
            }
            assert!(Instant::now() < deadline, "moto_server silent for 30 s");
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(500));
        }
        moto
    }

    fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "testing", "testing", None, None, "static",
            )))
            .endpoint_url(&self.endpoint)
            .build()
    }
}

fn http_ok(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let mut buf = [0u8; 12];
    s.write_all(req).is_ok() && matches!(s.read(&mut buf), Ok(12) if buf.starts_with(b"HTTP/1."))
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct SecretsManager {
    moto: Moto,
    clusters: AtomicU32,
}

#[async_trait::async_trait]
impl Backend for SecretsManager {
    fn name(&self) -> String {
        "secrets-manager (moto)".into()
    }

    async fn cluster(&self, target_managers: u8) -> Clients {
        let name = format!("c{}", self.clusters.fetch_add(1, Ordering::SeqCst));
        let sdk = self.moto.sdk_config();
        Arc::new(move || {
            let cfg = SecretsManagerConfig::new(name.clone(), target_managers);
            let backend =
                SecretsManagerRendezvous::with_sdk_config(cfg, &sdk).expect("the backend");
            Arc::new(backend) as Arc<dyn Rendezvous>
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_manager_passes_the_conformance_suite() {
    let filter = std::env::var("CONFORMANCE_FILTER").ok();
    let backend = SecretsManager {
        moto: Moto::start(),
        clusters: AtomicU32::new(0),
    };
    run_all(Arc::new(backend), filter.as_deref()).await;
}
