//! Fuzz the coordinator's HTTP API in-process: `swarm_coordinator::api::router` over a real
//! store, driven with `tower::ServiceExt::oneshot`.
//!
//! Input format (text, so seeds are readable and a dictionary helps): one or more HTTP/1-style
//! requests separated by a line `===`:
//!
//! ```text
//! POST /v1/clusters/fuzz/nodes
//! Authorization: Bearer {{secret}}
//! Content-Type: application/json
//!
//! {"node_id":"a","hostname":"a","advertise_addr":"198.18.0.9"}
//! ```
//!
//! Placeholders: `{{secret}}` is the join secret of cluster `fuzz` (formed, tokens published),
//! `{{open}}` the secret of cluster `open` (not formed), `{{admin}}` the admin token,
//! `{{cred}}` the node credential of `fuzz`'s manager `n1`, `{{wcred}}` that of its worker `w1`,
//! `{{operator}}` `fuzz`'s operator credential. Cluster `vault` is formed too, but its secret
//! and credentials are never offered: nothing of it may ever leak. Paths under `/v1/admin` go to
//! the admin listener's router (and, to check it refuses them, to the public one too).
//!
//! Properties checked on every response:
//! - no 5xx, except 503 `too_many_long_polls` (the server shedding load);
//! - every 4xx (but to HEAD) has a JSON body of exactly `{"error": code, "message": text}`;
//! - every 2xx under /v1 is JSON;
//! - no secret, node or operator credential or join token appears in a response (body or
//!   headers) unless the request carries it, or an earlier request put it into the server's
//!   state (anywhere but its Authorization header: a hostname, a document, the method that
//!   becomes a metrics label, a credential header); `fuzz`'s worker token only to requests
//!   that carry `fuzz`'s secret, its manager token only once `n1`'s credential or `fuzz`'s
//!   operator credential was used; `vault`'s never; a node joining as a worker never gets the
//!   manager token;
//! - impersonation: in an input that never carries `n1`'s credential, `fuzz`'s operator
//!   credential or the admin token (so `n1` and `w1` stay registered with their credentials),
//!   no call for node `n1` or `w1` of `fuzz` (register, claim, renew, publish, join, sync,
//!   adopt, document write) succeeds without that node's own credential;
//! - the public listener never serves `/v1/admin`;
//! - no request hangs (long-polls answer at once: the state is built with shutdown signalled).
//!
//! The runtime, the store (in a temp data dir) and the router are built once per process
//! (building the router costs more than most requests). The per-address auth backoff is off, or
//! one input's bad tokens would block every later input (the backoff has its own tests).
#![no_main]

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use axum::Router;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use swarm_coordinator::api::{self, AppState, Limits};
use swarm_coordinator::server::{self, ServeOptions, TlsMode};
use swarm_coordinator::store::Store;
use swarmstrap_wire::Secret;
use tokio::sync::watch;
use tower::ServiceExt;

const FUZZ_SECRET: &str = "fuzz-cluster-secret-0123456789abcdef";
const OPEN_SECRET: &str = "open-cluster-secret-fedcba9876543210";
const VAULT_SECRET: &str = "vault-cluster-secret-5c1e8d2b7a9f4e60";
const FUZZ_MANAGER_TOKEN: &str = "SWMTKN-1-fuzz-manager-1f2e3d4c5b6a7980";
const FUZZ_WORKER_TOKEN: &str = "SWMTKN-1-fuzz-worker-0897a6b5c4d3e2f1";
const VAULT_MANAGER_TOKEN: &str = "SWMTKN-1-vault-manager-a1b2c3d4e5f60718";
const VAULT_WORKER_TOKEN: &str = "SWMTKN-1-vault-worker-8170f6e5d4c3b2a1";
const VAULT_SWARM_ID: &str = "vaultswarmid0000000000001";
const FUZZ_SWARM_ID: &str = "fuzzswarmid";
/// Node credentials, offered by the set-up's registrations (the coordinator binds a new node
/// id to a strong offered credential, so they are known here).
const N1_CRED: &str = "fuzz-n1-credential-0123456789abcdef0123";
const W1_CRED: &str = "fuzz-w1-credential-fedcba9876543210fedc";
const O1_CRED: &str = "open-o1-credential-00112233445566778899";
const VAULT_N1_CRED: &str = "vault-n1-credential-99887766554433221100";
const FUZZ_OPERATOR: &str = "fuzz-operator-credential-5a6b7c8d9e0f1a2b";
const OPEN_OPERATOR: &str = "open-operator-credential-0f1e2d3c4b5a6978";
const VAULT_OPERATOR: &str = "vault-operator-credential-13579bdf02468ace";
const CRED_HEADER: &str = swarmstrap_wire::NODE_CREDENTIAL_HEADER;
/// The method labels /metrics may show.
const METRIC_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE", "other",
];
/// Requests per input (after that, the rest is ignored).
const MAX_REQUESTS: usize = 8;
/// A request that takes longer than this hangs (long-polls answer at once here).
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

struct World {
    rt: tokio::runtime::Runtime,
    store: Store,
    app: Router,
    admin_app: Router,
    admin: Secret,
    _shutdown_tx: watch::Sender<bool>,
}

fn limits() -> Limits {
    Limits {
        auth_failures_before_backoff: u32::MAX,
        ..Limits::default()
    }
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(World::new)
}

impl World {
    fn new() -> World {
        // tmpfs when there is one: the store fsyncs every write.
        let base = ["/dev/shm", "/tmp"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!(
            "swarmstrap-fuzz-coordinator-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = server::prepare(&ServeOptions {
            data_dir: dir.clone(),
            tls: TlsMode::InsecureHttp,
            limits: limits(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
        })
        .expect("open a store in a temp data dir");
        // The store keeps its open file; nothing below reads the data dir by path again, so
        // remove it now (libFuzzer exits without running destructors).
        let _ = std::fs::remove_dir_all(&dir);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        // Shutdown already signalled: every long-poll answers after its first re-check.
        let (tx, rx) = watch::channel(true);
        let state = AppState::new(cfg.store.clone(), &cfg.admin_token, limits(), rx);
        let w = World {
            rt,
            store: cfg.store,
            app: api::router(state.clone()),
            admin_app: api::admin_router(state),
            admin: cfg.admin_token,
            _shutdown_tx: tx,
        };
        w.rt.block_on(w.setup());
        w
    }

    /// A set-up call (for `node`'s credential `cred`, if given); must succeed.
    async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: &str,
        cred: Option<&str>,
        body: Option<Value>,
    ) -> Value {
        let mut b = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {bearer}"));
        if let Some(c) = cred {
            b = b.header(CRED_HEADER, c);
        }
        let body = match body {
            Some(v) => {
                b = b.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let app = if path.starts_with("/v1/admin") {
            &self.admin_app
        } else {
            &self.app
        };
        let resp = app.clone().oneshot(b.body(body).unwrap()).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "fuzz harness set-up: {method} {path} answered {status} {v}"
        );
        v
    }

    /// Clusters `fuzz` and `vault` formed with known tokens, `open` with one node.
    async fn setup(&self) {
        let admin = self.admin.expose().to_string();
        for (name, target, secret, operator) in [
            ("fuzz", 1, FUZZ_SECRET, FUZZ_OPERATOR),
            ("open", 3, OPEN_SECRET, OPEN_OPERATOR),
            ("vault", 1, VAULT_SECRET, VAULT_OPERATOR),
        ] {
            self.call(
                Method::POST,
                "/v1/admin/clusters",
                &admin,
                None,
                Some(json!({
                    "name": name, "target_managers": target, "secret": secret,
                    "operator_credential": operator,
                })),
            )
            .await;
        }
        self.form_fuzz().await;
        self.register("open", OPEN_SECRET, "o1", O1_CRED, "auto")
            .await;
        self.form_vault().await;
    }

    /// `fuzz` formed with its tokens, `n1` (manager) and `w1` (worker) registered with their
    /// credentials, a membership document written by `n1`. When an earlier input changed any of
    /// it (reset by the admin or the operator, or `n1`/`w1` dropped by a sync), it is reset
    /// directly in the store and made again.
    async fn form_fuzz(&self) {
        let intact = self
            .store
            .status("fuzz")
            .is_ok_and(|s| s.swarm_id.as_deref() == Some(FUZZ_SWARM_ID))
            && [("n1", N1_CRED), ("w1", W1_CRED)].iter().all(|(id, c)| {
                self.store
                    .join("fuzz", id, Some(&Secret::new(*c)))
                    .is_ok_and(|j| j.join.is_some())
            });
        if intact {
            return;
        }
        if self
            .store
            .status("fuzz")
            .is_ok_and(|s| s.swarm_id.is_some())
        {
            self.store.reset("fuzz".into()).await.expect("reset fuzz");
        }
        self.form(
            "fuzz",
            FUZZ_SECRET,
            N1_CRED,
            FUZZ_SWARM_ID,
            FUZZ_MANAGER_TOKEN,
            FUZZ_WORKER_TOKEN,
        )
        .await;
        self.register("fuzz", FUZZ_SECRET, "w1", W1_CRED, "worker")
            .await;
        let current = self
            .call(
                Method::GET,
                "/v1/clusters/fuzz/docs/membership",
                FUZZ_SECRET,
                None,
                None,
            )
            .await;
        let version = current["version"].as_u64().unwrap_or(0);
        let node = |id: &str, addr: &str, role: &str| {
            json!({"id": id, "hostname": id, "addr": addr, "role": role, "state": "ready",
                   "availability": "active", "leader": role == "manager", "labels": {}})
        };
        self.call(
            Method::PUT,
            "/v1/clusters/fuzz/docs/membership",
            FUZZ_SECRET,
            Some(N1_CRED),
            Some(
                json!({"expected_version": version, "node_id": "n1", "body": {"nodes": [
                    node("dn1", "198.18.0.1", "manager"), node("dw1", "198.18.0.2", "worker")
                ]}}),
            ),
        )
        .await;
    }

    async fn register(&self, cluster: &str, secret: &str, node: &str, cred: &str, role: &str) {
        self.call(
            Method::POST,
            &format!("/v1/clusters/{cluster}/nodes"),
            secret,
            Some(cred),
            Some(json!({"node_id": node, "hostname": node, "advertise_addr": "198.18.0.1", "role": role})),
        )
        .await;
    }

    async fn form(
        &self,
        cluster: &str,
        secret: &str,
        cred: &str,
        swarm_id: &str,
        mtok: &str,
        wtok: &str,
    ) {
        self.register(cluster, secret, "n1", cred, "manager").await;
        let c = self
            .call(
                Method::POST,
                &format!("/v1/clusters/{cluster}/claim"),
                secret,
                Some(cred),
                Some(json!({"node_id": "n1", "ttl_ms": 30_000})),
            )
            .await;
        assert_eq!(c["granted"], true, "claim on {cluster}: {c}");
        let fencing_token = c["lease"]["fencing_token"].as_u64().expect("fencing token");
        self.call(
            Method::POST,
            &format!("/v1/clusters/{cluster}/publish"),
            secret,
            Some(cred),
            Some(json!({
                "node_id": "n1", "fencing_token": fencing_token, "swarm_id": swarm_id,
                "ca_digest": "sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "manager_addrs": ["198.18.0.1:2377"],
                "manager_token": mtok, "worker_token": wtok,
            })),
        )
        .await;
    }

    async fn form_vault(&self) {
        let formed = self
            .store
            .status("vault")
            .map(|s| s.swarm_id.as_deref() == Some(VAULT_SWARM_ID))
            .unwrap_or(false);
        if !formed {
            // The fuzzer (with the admin token) reset it: form it again, so the tokens it
            // must never see are in the store for the next input too.
            self.form(
                "vault",
                VAULT_SECRET,
                VAULT_N1_CRED,
                VAULT_SWARM_ID,
                VAULT_MANAGER_TOKEN,
                VAULT_WORKER_TOKEN,
            )
            .await;
        }
    }
}

/// One request of the input, after placeholder substitution.
struct Parsed {
    raw: Vec<u8>,
    /// Everything but the Authorization header: what the server may store and hand back.
    stored: Vec<u8>,
    method: Method,
    target: String,
    request: Request<Body>,
}

fn replace_all(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

fn split_requests(data: &[u8]) -> Vec<&[u8]> {
    let sep = b"\n===\n";
    let mut out = Vec::new();
    let mut rest = data;
    while out.len() < MAX_REQUESTS {
        match rest.windows(sep.len()).position(|w| w == sep) {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + sep.len()..];
            }
            None => {
                out.push(rest);
                break;
            }
        }
    }
    out
}

fn parse_request(chunk: &[u8], admin: &str) -> Option<Parsed> {
    let mut raw = replace_all(chunk, b"{{secret}}", FUZZ_SECRET.as_bytes());
    raw = replace_all(&raw, b"{{open}}", OPEN_SECRET.as_bytes());
    raw = replace_all(&raw, b"{{admin}}", admin.as_bytes());
    raw = replace_all(&raw, b"{{cred}}", N1_CRED.as_bytes());
    raw = replace_all(&raw, b"{{wcred}}", W1_CRED.as_bytes());
    raw = replace_all(&raw, b"{{operator}}", FUZZ_OPERATOR.as_bytes());

    // Lines up to the first empty one are the request line and headers; the rest is the body.
    let mut lines = Vec::new();
    let mut pos = 0;
    let mut body_start = raw.len();
    while pos < raw.len() {
        let end = raw[pos..]
            .iter()
            .position(|b| *b == b'\n')
            .map_or(raw.len(), |i| pos + i);
        let line = raw[pos..end].strip_suffix(b"\r").unwrap_or(&raw[pos..end]);
        pos = (end + 1).min(raw.len());
        if line.is_empty() && !lines.is_empty() {
            body_start = pos;
            break;
        }
        lines.push(line);
    }
    let (request_line, header_lines) = lines.split_first()?;
    let mut words = request_line.split(|b| *b == b' ').filter(|w| !w.is_empty());
    let method = Method::from_bytes(words.next()?).ok()?;
    let target = std::str::from_utf8(words.next()?).ok()?.to_string();
    let uri: Uri = target.parse().ok()?;

    let mut builder = Request::builder().method(method.clone()).uri(uri);
    let mut has_length = false;
    let mut stored = request_line.to_vec();
    for line in header_lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(line[..colon].trim_ascii()),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        has_length |= name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING;
        if name != header::AUTHORIZATION {
            stored.extend_from_slice(line);
        }
        builder = builder.header(name, value);
    }
    let body = raw[body_start..].to_vec();
    stored.extend_from_slice(&body);
    if !has_length && !body.is_empty() {
        // What a real client sends (hyper would otherwise read no body at all).
        builder = builder.header(header::CONTENT_LENGTH, body.len());
    }
    // The server inserts the peer address; the auth backoff is keyed on it.
    builder = builder.extension(ConnectInfo(SocketAddr::from(([198, 51, 100, 7], 40000))));
    let request = builder.body(Body::from(body)).ok()?;
    Some(Parsed {
        raw,
        stored,
        method,
        target,
        request,
    })
}

/// Secrets that some request so far carried outside its Authorization header.
fn disclosed_set() -> &'static Mutex<HashSet<String>> {
    static DISCLOSED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    DISCLOSED.get_or_init(Default::default)
}

fn disclosed(secret: &str) -> bool {
    disclosed_set().lock().unwrap().contains(secret)
}

fn note_disclosures(p: &Parsed, admin: &str) {
    let all = [
        admin,
        FUZZ_SECRET,
        OPEN_SECRET,
        VAULT_SECRET,
        FUZZ_MANAGER_TOKEN,
        FUZZ_WORKER_TOKEN,
        VAULT_MANAGER_TOKEN,
        VAULT_WORKER_TOKEN,
        N1_CRED,
        W1_CRED,
        O1_CRED,
        VAULT_N1_CRED,
        FUZZ_OPERATOR,
        OPEN_OPERATOR,
        VAULT_OPERATOR,
    ];
    for secret in all {
        if contains(&p.stored, secret) {
            disclosed_set().lock().unwrap().insert(secret.to_string());
        }
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    // The secrets are ASCII, so a lossy conversion keeps every occurrence; `str::contains` is
    // much faster than comparing every window (each a memcmp that libFuzzer intercepts).
    String::from_utf8_lossy(hay).contains(needle)
}

fn check_response(
    p: &Parsed,
    admin: &str,
    status: StatusCode,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) {
    let ctx = || {
        format!(
            "{} {} -> {} {}",
            p.method,
            p.target,
            status,
            String::from_utf8_lossy(body)
        )
    };
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let is_head = p.method == Method::HEAD;

    if status.is_server_error() {
        let code = json.as_ref().and_then(|v| v["error"].as_str());
        assert!(
            status == StatusCode::SERVICE_UNAVAILABLE && code == Some("too_many_long_polls"),
            "server error on fuzzed input: {}",
            ctx()
        );
    }

    if status.is_client_error() && !is_head {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(
            ct.starts_with("application/json"),
            "4xx without a JSON content type ({ct:?}): {}",
            ctx()
        );
        let obj = json
            .as_ref()
            .and_then(|v| v.as_object())
            .unwrap_or_else(|| panic!("4xx body is not a JSON object: {}", ctx()));
        let non_empty = |k: &str| {
            obj.get(k)
                .and_then(|v| v.as_str())
                .is_some_and(|s| !s.is_empty())
        };
        assert!(
            obj.len() == 2 && non_empty("error") && non_empty("message"),
            "4xx body is not exactly {{\"error\", \"message\"}}: {}",
            ctx()
        );
    }

    if status.is_success() && !is_head && p.request_path().starts_with("/v1/") {
        assert!(json.is_some(), "2xx under /v1 is not JSON: {}", ctx());
    }

    // Metrics labels come from a bounded set: a client must not create a series per made-up
    // method (or route).
    if p.request_path() == "/metrics" && status.is_success() {
        let text = String::from_utf8_lossy(body);
        for label in text.split("method=\"").skip(1) {
            let method = label.split('"').next().unwrap_or("");
            assert!(
                METRIC_METHODS.contains(&method),
                "unbounded metrics label method={method:?}: {}",
                ctx()
            );
        }
        for label in text.split("route=\"").skip(1) {
            let route = label.split('"').next().unwrap_or("");
            assert!(
                route == "unmatched" || api::route_table().iter().any(|(_, r)| *r == route),
                "unbounded metrics label route={route:?}: {}",
                ctx()
            );
        }
    }

    // Secrets: nothing the request did not carry itself, or that the fuzzer did not store in
    // the server earlier (a node's hostname, a document, a metrics label: data of the cluster
    // or of the server, rightly handed back).
    let carries = |s: &str| contains(&p.raw, s) || disclosed(s);
    let with_fuzz_secret = carries(FUZZ_SECRET);
    // The manager token goes to the manager: only once its credential (or the operator's,
    // who may reset and re-form the cluster) was used.
    let as_manager = carries(N1_CRED) || carries(FUZZ_OPERATOR) || carries(admin);
    let rules: [(&str, &str, bool); 15] = [
        ("the admin token", admin, carries(admin)),
        ("cluster fuzz's secret", FUZZ_SECRET, with_fuzz_secret),
        ("cluster open's secret", OPEN_SECRET, carries(OPEN_SECRET)),
        (
            "cluster vault's secret",
            VAULT_SECRET,
            carries(VAULT_SECRET),
        ),
        (
            "fuzz's manager token",
            FUZZ_MANAGER_TOKEN,
            as_manager || carries(FUZZ_MANAGER_TOKEN),
        ),
        (
            "fuzz's worker token",
            FUZZ_WORKER_TOKEN,
            with_fuzz_secret || carries(FUZZ_WORKER_TOKEN),
        ),
        (
            "vault's manager token",
            VAULT_MANAGER_TOKEN,
            carries(VAULT_MANAGER_TOKEN),
        ),
        (
            "vault's worker token",
            VAULT_WORKER_TOKEN,
            carries(VAULT_WORKER_TOKEN),
        ),
        ("n1's credential", N1_CRED, carries(N1_CRED)),
        ("w1's credential", W1_CRED, carries(W1_CRED)),
        ("o1's credential", O1_CRED, carries(O1_CRED)),
        (
            "vault n1's credential",
            VAULT_N1_CRED,
            carries(VAULT_N1_CRED),
        ),
        (
            "fuzz's operator credential",
            FUZZ_OPERATOR,
            carries(FUZZ_OPERATOR),
        ),
        (
            "open's operator credential",
            OPEN_OPERATOR,
            carries(OPEN_OPERATOR),
        ),
        (
            "vault's operator credential",
            VAULT_OPERATOR,
            carries(VAULT_OPERATOR),
        ),
    ];
    for (what, secret, allowed) in rules {
        if allowed {
            continue;
        }
        assert!(
            !contains(body, secret),
            "{what} leaked in the body: {}",
            ctx()
        );
        for (name, value) in headers {
            assert!(
                !contains(value.as_bytes(), secret),
                "{what} leaked in header {name}: {}",
                ctx()
            );
        }
    }

    // A worker gets the worker token only.
    if let Some(join) = json.as_ref().map(|v| &v["join"]) {
        if join["role"] == "worker" {
            let token = join["token"].as_str().unwrap_or("");
            assert!(
                token != FUZZ_MANAGER_TOKEN && token != VAULT_MANAGER_TOKEN,
                "a worker got the manager token: {}",
                ctx()
            );
        }
    }
}

impl Parsed {
    fn request_path(&self) -> &str {
        self.request.uri().path()
    }

    /// The node a call of cluster `fuzz` is made for (`node_id` of the JSON body or the
    /// query), if it is one of the set-up's nodes: with that node's credential.
    fn fuzz_node(&self) -> Option<(&'static str, &'static str)> {
        let path = self.request_path();
        let Some(route) = path.strip_prefix("/v1/clusters/fuzz/") else {
            return None;
        };
        let node_route = matches!(
            route,
            "nodes" | "claim" | "claim/renew" | "publish" | "join" | "sync" | "adopt"
        ) || (route.starts_with("docs/") && self.method == Method::PUT);
        if !node_route {
            return None;
        }
        let body_start = self
            .raw
            .windows(2)
            .position(|w| w == b"\n\n")
            .map_or(self.raw.len(), |i| i + 2);
        let from_body = serde_json::from_slice::<Value>(&self.raw[body_start..])
            .ok()
            .and_then(|v| v.get("node_id").and_then(Value::as_str).map(str::to_string));
        let from_query = self.request.uri().query().and_then(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == "node_id")
                .map(|(_, v)| v.to_string())
        });
        [from_body, from_query]
            .into_iter()
            .flatten()
            .find_map(|id| match id.as_str() {
                "n1" => Some(("n1", N1_CRED)),
                "w1" => Some(("w1", W1_CRED)),
                _ => None,
            })
    }
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let admin = w.admin.expose();
    let requests: Vec<Parsed> = split_requests(data)
        .into_iter()
        .filter_map(|c| parse_request(c, admin))
        .collect();
    if requests.is_empty() {
        return;
    }
    // Only the admin can reset `vault`.
    let admin_used = requests.iter().any(|p| contains(&p.raw, admin));
    // `n1` and `w1` keep their registrations through this input unless it carries n1's
    // credential (a sync may drop them), the operator's or the admin's (a reset).
    let fixture_kept = !requests.iter().any(|p| {
        contains(&p.raw, admin) || contains(&p.raw, N1_CRED) || contains(&p.raw, FUZZ_OPERATOR)
    });
    w.rt.block_on(async {
        w.form_fuzz().await;
        for mut p in requests {
            note_disclosures(&p, admin);
            let request = std::mem::replace(&mut p.request, Request::new(Body::empty()));
            // Keep the path for the checks (the request is consumed).
            *p.request.uri_mut() = request.uri().clone();
            let admin_path = p.request_path().starts_with("/v1/admin");
            if admin_path {
                // The public listener never serves the admin API.
                if let Some(again) = parse_request(&p.raw, admin) {
                    let resp = tokio::time::timeout(
                        REQUEST_DEADLINE,
                        w.app.clone().oneshot(again.request),
                    )
                    .await
                    .unwrap_or_else(|_| panic!("{} {} hung", p.method, p.target))
                    .expect("the router is infallible");
                    assert!(
                        !resp.status().is_success(),
                        "the public listener served {} {}",
                        p.method,
                        p.target
                    );
                }
            }
            let app = if admin_path { &w.admin_app } else { &w.app };
            let resp = tokio::time::timeout(REQUEST_DEADLINE, app.clone().oneshot(request))
                .await
                .unwrap_or_else(|_| panic!("{} {} hung", p.method, p.target))
                .expect("the router is infallible");
            let status = resp.status();
            let (parts, body) = resp.into_parts();
            let body = tokio::time::timeout(REQUEST_DEADLINE, body.collect())
                .await
                .unwrap_or_else(|_| panic!("the body of {} {} hung", p.method, p.target))
                .expect("response body")
                .to_bytes();
            check_response(&p, admin, status, &parts.headers, &body);
            if fixture_kept && status.is_success() {
                if let Some((id, cred)) = p.fuzz_node() {
                    assert!(
                        contains(&p.raw, cred),
                        "a call for {id} without its credential succeeded: {} {} -> {status} {}",
                        p.method,
                        p.target,
                        String::from_utf8_lossy(&body)
                    );
                }
            }
        }
        if admin_used {
            w.form_vault().await;
        }
    });
});
