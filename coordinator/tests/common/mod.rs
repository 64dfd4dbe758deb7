//! Shared test helpers: a real server on 127.0.0.1:0 (admin API on another 127.0.0.1:0) with a
//! self-signed certificate from a temp data dir, started in-process through `server::run`, and
//! a reqwest client that pins that certificate. [`Api`] keeps the node credentials its
//! registrations were issued and presents them (header `x-swarmstrap-node-credential`) on
//! every call that names a node (`node_id` in the body or the query).
#![allow(dead_code)]

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swarm_coordinator::api::Limits;
use swarm_coordinator::server::{self, ServeOptions, TlsMode};
use swarmstrap_wire::Secret;
use tokio::sync::oneshot;

pub fn install_crypto() {
    swarmstrap_wire::pin::crypto_provider();
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub base: String,
    /// The admin listener (`/v1/admin`), loopback.
    pub admin_addr: SocketAddr,
    pub admin_base: String,
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
            admin_listen: "127.0.0.1:0".parse().unwrap(),
        };
        let cfg = server::prepare(&opts).expect("prepare the server");
        let admin_addr = cfg.admin_addr;
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
            admin_addr,
            admin_base: format!("https://{admin_addr}"),
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
            &format!("{}/v1/admin/clusters", self.admin_base),
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
            operator: body["operator_credential"].as_str().unwrap().to_string(),
            creds: Arc::default(),
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
            &format!("{}{path}", self.admin_base),
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
    send_with(client, method, url, bearer, &[], body).await
}

/// [`send`] with extra headers.
pub async fn send_with(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    bearer: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = client.request(method, url);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
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

pub const NODE_CREDENTIAL: &str = "x-swarmstrap-node-credential";
pub const OPERATOR_CREDENTIAL: &str = "x-swarmstrap-operator-credential";

/// Calls on one cluster with its secret, presenting the node credentials it was issued.
#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
    pub cluster: String,
    pub secret: String,
    /// The cluster's operator credential (from the create answer).
    pub operator: String,
    /// node id → credential, kept from registrations (and adoptions).
    pub creds: Arc<Mutex<HashMap<String, String>>>,
}

/// The node a call is for: `node_id` in the body, or in the query string.
fn node_of(rest: &str, body: Option<&Value>) -> Option<String> {
    if let Some(n) = body.and_then(|b| b["node_id"].as_str()) {
        return Some(n.to_string());
    }
    let query = rest.split_once('?')?.1;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("node_id="))
        .map(str::to_string)
}

impl Api {
    pub fn url(&self, rest: &str) -> String {
        format!("{}/v1/clusters/{}{rest}", self.base, self.cluster)
    }

    /// The credential this client holds for `node`.
    pub fn cred(&self, node: &str) -> Option<String> {
        self.creds.lock().unwrap().get(node).cloned()
    }

    pub fn keep_cred(&self, node: &str, answer: &Value) {
        if let Some(c) = answer["credential"].as_str() {
            self.creds
                .lock()
                .unwrap()
                .insert(node.to_string(), c.to_string());
        }
    }

    /// A call with the join secret and, when it names a node this client registered, that
    /// node's credential.
    pub async fn call(
        &self,
        method: Method,
        rest: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let node = node_of(rest, body.as_ref());
        let cred = node.as_deref().and_then(|n| self.cred(n));
        let headers: Vec<(&str, &str)> = cred
            .as_deref()
            .map(|c| vec![(NODE_CREDENTIAL, c)])
            .unwrap_or_default();
        let (s, b) = self.call_with(method, rest, &headers, body).await;
        // A registration or an adoption that registered the caller carries its credential.
        if let Some(n) = node {
            self.keep_cred(&n, &b);
        }
        (s, b)
    }

    /// `POST /reset` with the operator credential.
    pub async fn reset(&self, body: Option<Value>) -> (StatusCode, Value) {
        let op = self.operator.clone();
        self.call_with(Method::POST, "/reset", &[(OPERATOR_CREDENTIAL, &op)], body)
            .await
    }

    /// A call with the join secret and exactly `headers` (no credential added).
    pub async fn call_with(
        &self,
        method: Method,
        rest: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        send_with(
            &self.client,
            method,
            &self.url(rest),
            Some(&self.secret),
            headers,
            body,
        )
        .await
    }

    pub async fn try_register(&self, node: &str, role: &str) -> (StatusCode, Value) {
        let (s, b) = self
            .call(
                Method::POST,
                "/nodes",
                Some(json!({"node_id": node, "hostname": format!("host-{node}"),
                            "advertise_addr": "198.18.0.10", "role": role})),
            )
            .await;
        self.keep_cred(node, &b);
        (s, b)
    }

    pub async fn register(&self, node: &str, role: &str) -> Value {
        let (s, b) = self.try_register(node, role).await;
        assert_eq!(s, StatusCode::OK, "register {node}: {b}");
        b
    }

    /// Reset as the operator (`swarm-agent recover`), with the operator credential.
    pub async fn recover(&self, node: &str, swarm_id: &str) -> (StatusCode, Value) {
        let op = self.operator.clone();
        self.call_with(
            Method::POST,
            "/reset",
            &[(OPERATOR_CREDENTIAL, &op)],
            Some(json!({"node_id": node, "swarm_id": swarm_id, "reason": "test"})),
        )
        .await
    }

    /// Claim for `node`, registering it first (role auto) when this client holds no
    /// credential for it: only a registered manager may claim.
    pub async fn claim(&self, node: &str, ttl_ms: u64) -> (StatusCode, Value) {
        if self.cred(node).is_none() {
            let (s, b) = self.try_register(node, "auto").await;
            if s != StatusCode::OK {
                return (s, b);
            }
        }
        self.raw_claim(node, ttl_ms).await
    }

    /// Claim for `node` as it is (no registration first).
    pub async fn raw_claim(&self, node: &str, ttl_ms: u64) -> (StatusCode, Value) {
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
