//! The conformance suite on the coordinator: a real `swarm-coordinator` server in process
//! (redb store in a temp data dir, a self-signed certificate, real TLS on 127.0.0.1), reached
//! through the agent's own HTTPS client with the certificate pinned — the path every agent
//! takes.
//!
//! A cluster with an operator gets a coordinator of its own, so that "the rendezvous forgets"
//! is what happens in the field: the server is stopped, its data dir is lost, and a new server
//! starts on the same address with the same certificate and an empty data dir, where the
//! cluster is created again with the same name and secret (through the admin API, without
//! `await_adoption`). The agents' clients keep their connection settings and find it there.
//! The adoption hold is the admin API's (`cluster await-adoption` / `allow-init`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarm_agent::backend::coordinator::{map_status, CoordinatorClient};
use swarm_agent::config::{CoordinatorConfig, CoordinatorTls};
use swarm_coordinator::api::Limits;
use swarm_coordinator::datadir::DataDir;
use swarm_coordinator::server::{self, ServeOptions, TlsMode};
use swarmstrap_conformance::{run_all, Backend, Clients, Cluster, Operated, Operator};
use swarmstrap_wire::rendezvous::{Rendezvous, RendezvousError};
use swarmstrap_wire::{CreatedCluster, Secret};
use tokio::sync::{oneshot, Mutex};
use tokio::task::JoinHandle;

/// One serving incarnation of a coordinator.
struct Running {
    admin_token: Secret,
    /// The admin API's own listener (loopback, a port of its own per incarnation).
    admin_addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// An in-process coordinator on a fixed loopback address, with a certificate that outlives
/// its data dirs.
struct Coordinator {
    root: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    addr: SocketAddr,
    fingerprint: String,
    http: reqwest::Client,
    running: Mutex<Option<Running>>,
    incarnations: AtomicU32,
    clusters: AtomicU32,
}

impl Coordinator {
    async fn start() -> Arc<Coordinator> {
        swarmstrap_wire::pin::crypto_provider();
        let root = tempfile::tempdir().expect("temp dir");
        // The certificate lives outside the data dir (as the operator's PEM files would), so a
        // lost data dir keeps it: a self-signed one, generated once.
        let pki = DataDir::new(root.path().join("pki"));
        let id = swarm_coordinator::tls::self_signed(&pki, &[]).expect("a certificate");
        let cert = pki.path(swarm_coordinator::datadir::SELF_SIGNED_CERT);
        let key = pki.path(swarm_coordinator::datadir::SELF_SIGNED_KEY);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pin = swarmstrap_wire::parse_fingerprint(&id.fingerprint).unwrap();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(swarmstrap_wire::pin::pinned_client_config(pin))
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let c = Arc::new(Coordinator {
            root,
            cert,
            key,
            addr,
            fingerprint: id.fingerprint,
            http,
            running: Mutex::new(None),
            incarnations: AtomicU32::new(0),
            clusters: AtomicU32::new(0),
        });
        let running = c.serve(listener);
        *c.running.lock().await = Some(running);
        c
    }

    /// Serve `listener` from a new, empty data dir.
    fn serve(&self, listener: tokio::net::TcpListener) -> Running {
        let n = self.incarnations.fetch_add(1, Ordering::SeqCst);
        let opts = ServeOptions {
            data_dir: self.root.path().join(format!("data-{n}")),
            tls: TlsMode::Files {
                cert: self.cert.clone(),
                key: self.key.clone(),
            },
            limits: Limits::default(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
        };
        let cfg = server::prepare(&opts).expect("prepare the coordinator");
        assert_eq!(cfg.fingerprint.as_deref(), Some(self.fingerprint.as_str()));
        let admin_token = cfg.admin_token.clone();
        let admin_addr = cfg.admin_addr;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server::run(listener, cfg, async {
                let _ = stopped.await;
            })
            .await
            .expect("the coordinator runs");
        });
        Running {
            admin_token,
            admin_addr,
            stop,
            task,
        }
    }

    fn base(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn config(&self) -> CoordinatorConfig {
        CoordinatorConfig {
            url: self.base(),
            tls: CoordinatorTls::Pinned(
                swarmstrap_wire::parse_fingerprint(&self.fingerprint).unwrap(),
            ),
        }
    }

    /// Create a cluster through the admin API (with `secret`, or a generated one).
    async fn create(
        &self,
        name: &str,
        target_managers: u8,
        secret: Option<&Secret>,
    ) -> CreatedCluster {
        let token = self.admin_token().await;
        let resp = self
            .http
            .post(format!("{}/v1/admin/clusters", self.admin_base().await))
            .bearer_auth(token.expose())
            .json(&serde_json::json!({
                "name": name,
                "target_managers": target_managers,
                "secret": secret.map(|s| s.expose()),
            }))
            .send()
            .await
            .expect("create the cluster");
        assert_eq!(resp.status(), 201, "create cluster {name}");
        resp.json::<CreatedCluster>().await.unwrap()
    }

    /// The admin API (same certificate, its own loopback listener).
    async fn admin_base(&self) -> String {
        let g = self.running.lock().await;
        format!(
            "https://{}",
            g.as_ref().expect("the coordinator runs").admin_addr
        )
    }

    async fn admin_token(&self) -> Secret {
        let g = self.running.lock().await;
        g.as_ref()
            .expect("the coordinator runs")
            .admin_token
            .clone()
    }

    /// The coordinator loses its database: stop, and start on the same address with the same
    /// certificate from an empty data dir.
    async fn lose_the_database(&self) {
        let mut g = self.running.lock().await;
        let old = g.take().expect("the coordinator runs");
        let _ = old.stop.send(());
        old.task.await.expect("the coordinator stopped");
        // The old listener is closed; bind its address again (a short retry with backoff in
        // case the kernel has not let go of it yet).
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut delay = Duration::from_millis(5);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding {}: {e}; retrying", self.addr);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(200));
                }
                Err(e) => panic!("cannot bind {} again: {e}", self.addr),
            }
        };
        *g = Some(self.serve(listener));
    }

    fn clients(self: &Arc<Self>, name: String, secret: Secret) -> Clients {
        let cfg = self.config();
        Arc::new(move || {
            let client =
                CoordinatorClient::new(&cfg, &name, secret.clone(), Duration::from_secs(30))
                    .expect("the agent's coordinator client");
            Arc::new(client) as Arc<dyn Rendezvous>
        })
    }
}

/// Runs the shared coordinator and, per operated cluster, a coordinator of its own.
struct Coordinators {
    shared: Arc<Coordinator>,
}

struct CoordinatorOperator {
    coordinator: Arc<Coordinator>,
    cluster: String,
    target_managers: u8,
    secret: Secret,
}

#[async_trait::async_trait]
impl Operator for CoordinatorOperator {
    async fn wipe(&self) {
        self.coordinator.lose_the_database().await;
        self.coordinator
            .create(&self.cluster, self.target_managers, Some(&self.secret))
            .await;
    }

    async fn set_adoption_hold(&self, hold: bool) -> Result<(), RendezvousError> {
        let c = &self.coordinator;
        let url = format!(
            "{}/v1/admin/clusters/{}/adoption-hold",
            c.admin_base().await,
            self.cluster
        );
        let resp = c
            .http
            .post(&url)
            .bearer_auth(c.admin_token().await.expose())
            .json(&serde_json::json!({ "hold": hold }))
            .send()
            .await
            .expect("the admin API answers");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status.is_success() {
            Ok(())
        } else {
            Err(map_status(status, &text, &url, &self.cluster))
        }
    }
}

#[async_trait::async_trait]
impl Backend for Coordinators {
    fn name(&self) -> String {
        "coordinator".into()
    }

    async fn cluster(&self, target_managers: u8) -> Cluster {
        let c = &self.shared;
        let name = format!("c{}", c.clusters.fetch_add(1, Ordering::SeqCst));
        let created = c.create(&name, target_managers, None).await;
        Cluster {
            clients: c.clients(name, created.secret),
            operator: Some(created.operator_credential),
        }
    }

    async fn operated_cluster(&self, target_managers: u8) -> Operated {
        let coordinator = Coordinator::start().await;
        let name = "operated".to_string();
        let secret = coordinator
            .create(&name, target_managers, None)
            .await
            .secret;
        Operated {
            clients: coordinator.clients(name.clone(), secret.clone()),
            operator: Arc::new(CoordinatorOperator {
                coordinator,
                cluster: name,
                target_managers,
                secret,
            }),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_passes_the_conformance_suite() {
    let filter = std::env::var("CONFORMANCE_FILTER").ok();
    let backend = Coordinators {
        shared: Coordinator::start().await,
    };
    run_all(Arc::new(backend), filter.as_deref()).await;
}
