//! The conformance suite on the coordinator: a real `swarm-coordinator` server in process
//! (redb store in a temp data dir, self-signed certificate, real TLS on 127.0.0.1), reached
//! through the agent's own HTTPS client with the certificate pinned — the path every agent
//! takes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use swarm_agent::backend::coordinator::CoordinatorClient;
use swarm_agent::config::{CoordinatorConfig, CoordinatorTls};
use swarm_coordinator::api::Limits;
use swarm_coordinator::server::{self, ServeOptions, TlsMode};
use swarmstrap_conformance::{run_all, Backend, Clients};
use swarmstrap_wire::rendezvous::Rendezvous;
use swarmstrap_wire::{CreatedCluster, Secret};
use tokio::sync::oneshot;

struct Coordinator {
    base: String,
    fingerprint: String,
    admin_token: Secret,
    clusters: AtomicU32,
    _dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

impl Coordinator {
    async fn start() -> Coordinator {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().expect("temp dir");
        let opts = ServeOptions {
            data_dir: dir.path().join("data"),
            tls: TlsMode::SelfSigned { sans: vec![] },
            limits: Limits::default(),
        };
        let cfg = server::prepare(&opts).expect("prepare the coordinator");
        let fingerprint = cfg.fingerprint.clone().expect("https has a fingerprint");
        let admin_token = cfg.admin_token.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            server::run(listener, cfg, async {
                let _ = stopped.await;
            })
            .await
            .expect("the coordinator runs");
        });
        Coordinator {
            base: format!("https://{addr}"),
            fingerprint,
            admin_token,
            clusters: AtomicU32::new(0),
            _dir: dir,
            _stop: stop,
        }
    }

    fn config(&self) -> CoordinatorConfig {
        let pin = swarmstrap_wire::parse_fingerprint(&self.fingerprint).unwrap();
        CoordinatorConfig {
            url: self.base.clone(),
            tls: CoordinatorTls::Pinned(pin),
        }
    }
}

#[async_trait::async_trait]
impl Backend for Coordinator {
    fn name(&self) -> String {
        "coordinator".into()
    }

    async fn cluster(&self, target_managers: u8) -> Clients {
        let name = format!("c{}", self.clusters.fetch_add(1, Ordering::SeqCst));
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(swarmstrap_wire::pin::pinned_client_config(
                swarmstrap_wire::parse_fingerprint(&self.fingerprint).unwrap(),
            ))
            .build()
            .unwrap();
        let resp = http
            .post(format!("{}/v1/admin/clusters", self.base))
            .bearer_auth(self.admin_token.expose())
            .json(&serde_json::json!({"name": name, "target_managers": target_managers}))
            .send()
            .await
            .expect("create the cluster");
        assert_eq!(resp.status(), 201, "create cluster {name}");
        let created: CreatedCluster = resp.json().await.unwrap();
        let cfg = self.config();
        Arc::new(move || {
            let client = CoordinatorClient::new(
                &cfg,
                &name,
                created.secret.clone(),
                Duration::from_secs(30),
            )
            .expect("the agent's coordinator client");
            Arc::new(client) as Arc<dyn Rendezvous>
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_passes_the_conformance_suite() {
    let filter = std::env::var("CONFORMANCE_FILTER").ok();
    run_all(Arc::new(Coordinator::start().await), filter.as_deref()).await;
}
