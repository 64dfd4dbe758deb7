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
//! `{{open}}` the secret of cluster `open` (not formed), `{{admin}}` the admin token. Cluster
//! `vault` is formed too, but its secret is never offered: nothing of it may ever leak.
//!
//! Properties checked on every response:
//! - no 5xx, except 503 `too_many_long_polls` (the server shedding load);
//! - every 4xx (but to HEAD) has a JSON body of exactly `{"error": code, "message": text}`;
//! - every 2xx under /v1 is JSON;
//! - no secret or join token appears in a response (body or headers) unless the request carries
//!   it, or an earlier request put it into the server's state (anywhere but its Authorization
//!   header: a hostname, a document, the method that becomes a metrics label); `fuzz`'s join
//!   tokens only to requests that carry `fuzz`'s secret; `vault`'s never; a node joining as a
//!   worker never gets the manager token;
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
            app: api::router(state),
            admin: cfg.admin_token,
            _shutdown_tx: tx,
        };
        w.rt.block_on(w.setup());
        w
    }

    async fn call(&self, method: Method, path: &str, bearer: &str, body: Option<Value>) -> Value {
        let mut b = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {bearer}"));
        let body = match body {
            Some(v) => {
                b = b.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let resp = self
            .app
            .clone()
            .oneshot(b.body(body).unwrap())
            .await
            .unwrap();
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
        for (name, target, secret) in [
            ("fuzz", 1, FUZZ_SECRET),
            ("open", 3, OPEN_SECRET),
            ("vault", 1, VAULT_SECRET),
        ] {
            self.call(
                Method::POST,
                "/v1/admin/clusters",
                &admin,
                Some(json!({"name": name, "target_managers": target, "secret": secret})),
            )
            .await;
        }
        self.form(
            "fuzz",
            FUZZ_SECRET,
            "fuzzswarmid",
            FUZZ_MANAGER_TOKEN,
            FUZZ_WORKER_TOKEN,
        )
        .await;
        self.register("fuzz", FUZZ_SECRET, "w1", "worker").await;
        self.call(
            Method::PUT,
            "/v1/clusters/fuzz/docs/members",
            FUZZ_SECRET,
            Some(json!({"expected_version": 0, "body": {"nodes": ["n1", "w1"]}})),
        )
        .await;
        self.register("open", OPEN_SECRET, "o1", "auto").await;
        self.form_vault().await;
    }

    async fn register(&self, cluster: &str, secret: &str, node: &str, role: &str) {
        self.call(
            Method::POST,
            &format!("/v1/clusters/{cluster}/nodes"),
            secret,
            Some(json!({"node_id": node, "hostname": node, "advertise_addr": "198.18.0.1", "role": role})),
        )
        .await;
    }

    async fn form(&self, cluster: &str, secret: &str, swarm_id: &str, mtok: &str, wtok: &str) {
        self.register(cluster, secret, "n1", "manager").await;
        let c = self
            .call(
                Method::POST,
                &format!("/v1/clusters/{cluster}/claim"),
                secret,
                Some(json!({"node_id": "n1", "ttl_ms": 30_000})),
            )
            .await;
        assert_eq!(c["granted"], true, "claim on {cluster}: {c}");
        let fencing_token = c["lease"]["fencing_token"].as_u64().expect("fencing token");
        self.call(
            Method::POST,
            &format!("/v1/clusters/{cluster}/publish"),
            secret,
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
    let rules: [(&str, &str, bool); 8] = [
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
            with_fuzz_secret || carries(FUZZ_MANAGER_TOKEN),
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
    w.rt.block_on(async {
        for mut p in requests {
            note_disclosures(&p, admin);
            let request = std::mem::replace(&mut p.request, Request::new(Body::empty()));
            // Keep the path for the checks (the request is consumed).
            *p.request.uri_mut() = request.uri().clone();
            let resp = tokio::time::timeout(REQUEST_DEADLINE, w.app.clone().oneshot(request))
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
        }
        if admin_used {
            w.form_vault().await;
        }
    });
});
