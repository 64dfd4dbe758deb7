//! Shared test helpers: a real server on 127.0.0.1:0 with a self-signed certificate from a
//! temp data dir, started in-process through `server::run`, and a reqwest client that pins
//! that certificate.
#![allow(dead_code)]

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use swarm_coordinator::api::Limits;
use swarm_coordinator::server::{self, ServeOptions, TlsMode};
use swarmstrap_wire::Secret;
use tokio::sync::oneshot;

pub fn install_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub base: String,
    pub fingerprint: String,
    pub admin_token: Secret,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(Limits::default()).await
    }

    pub async fn start_with(limits: Limits) -> Self {
        install_crypto();
        let dir = tempfile::tempdir().expect("temp dir");
        let opts = ServeOptions {
            data_dir: dir.path().join("data"),
            tls: TlsMode::SelfSigned { sans: vec![] },
            limits,
        };
        let cfg = server::prepare(&opts).expect("prepare the server");
        let fingerprint = cfg.fingerprint.clone().expect("https has a fingerprint");
        let admin_token = cfg.admin_token.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server::run(listener, cfg, async {
                let _ = stopped.await;
            })
            .await
            .expect("server runs");
        });
        TestServer {
            addr,
            base: format!("https://{addr}"),
            fingerprint,
            admin_token,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A client that trusts exactly this server's certificate.
    pub fn client(&self) -> reqwest::Client {
        pinned_client(&self.fingerprint)
    }

    pub async fn create_cluster(&self, name: &str, target: u8) -> Api {
        let (status, body) = send(
            &self.client(),
            Method::POST,
            &format!("{}/v1/admin/clusters", self.base),
            Some(self.admin_token.expose()),
            Some(json!({"name": name, "target_managers": target})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "create cluster: {body}");
        Api {
            client: self.client(),
            base: self.base.clone(),
            cluster: name.to_string(),
            secret: body["secret"].as_str().unwrap().to_string(),
        }
    }

    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        send(
            &self.client(),
            method,
            &format!("{}{path}", self.base),
            Some(self.admin_token.expose()),
            body,
        )
        .await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        let resp = self
            .client()
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("request");
        let status = resp.status();
        (status, resp.text().await.unwrap_or_default())
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task");
        }
    }
}

pub fn pinned_client(fingerprint: &str) -> reqwest::Client {
    install_crypto();
    let pin = swarmstrap_wire::parse_fingerprint(fingerprint).unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured(swarmstrap_wire::pin::pinned_client_config(pin))
        .no_proxy()
        .timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

/// Send a JSON request; answer (status, JSON body or Null).
pub async fn send(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = client.request(method, url);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("request to {url}: {e}"));
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let value = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, value)
}

/// Calls on one cluster with its secret.
#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
    pub cluster: String,
    pub secret: String,
}

impl Api {
    pub fn url(&self, rest: &str) -> String {
        format!("{}/v1/clusters/{}{rest}", self.base, self.cluster)
    }

    pub async fn call(
        &self,
        method: Method,
        rest: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        send(
            &self.client,
            method,
            &self.url(rest),
            Some(&self.secret),
            body,
        )
        .await
    }

    pub async fn register(&self, node: &str, role: &str) -> Value {
        let (s, b) = self
            .call(
                Method::POST,
                "/nodes",
                Some(json!({"node_id": node, "hostname": format!("host-{node}"),
                            "advertise_addr": "198.18.0.10", "role": role})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "register {node}: {b}");
        b
    }

    pub async fn claim(&self, node: &str, ttl_ms: u64) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            "/claim",
            Some(json!({"node_id": node, "ttl_ms": ttl_ms})),
        )
        .await
    }

    pub async fn publish(&self, node: &str, token: u64) -> (StatusCode, Value) {
        self.call(Method::POST, "/publish", Some(publish_body(node, token)))
            .await
    }

    pub async fn status(&self) -> Value {
        let (s, b) = self.call(Method::GET, "", None).await;
        assert_eq!(s, StatusCode::OK, "status: {b}");
        b
    }
}

pub const MANAGER_TOKEN: &str = "SWMTKN-1-manager-token-for-tests";
pub const WORKER_TOKEN: &str = "SWMTKN-1-worker-token-for-tests";

pub fn publish_body(node: &str, token: u64) -> Value {
    json!({
        "node_id": node,
        "fencing_token": token,
        "swarm_id": "swarm-abc",
        "ca_digest": format!("sha256:{}", "ab".repeat(32)),
        "manager_addrs": ["198.18.0.10:2377"],
        "manager_token": MANAGER_TOKEN,
        "worker_token": WORKER_TOKEN,
    })
}

/// Retry `f` until it yields Some, with capped exponential backoff and jitter inside an
/// overall deadline. Panics with `what` when the deadline passes.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    let mut delay = Duration::from_millis(5);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        let jitter =
            Duration::from_micros(rand::random::<u64>() % (delay.as_micros() as u64 / 2 + 1));
        tokio::time::sleep((delay + jitter).min(end.saturating_duration_since(Instant::now())))
            .await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}
