//! The `/v1` HTTP API: routes, extractors that turn every bad input into a JSON error, and the
//! handlers. Paths and bodies follow `swarmstrap_wire` (see its doc comments) and
//! `coordinator/openapi.yaml`, which a test checks against [`route_table`].

use crate::auth::{self, AuthBackoff};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use axum::extract::{
    ConnectInfo, FromRequest, FromRequestParts, MatchedPath, RawPathParams, Request, State,
};
use axum::http::{header, request::Parts, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put, MethodRouter};
use axum::{Json, Router};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swarmstrap_wire::rules::Code;
use swarmstrap_wire::{
    AdoptRequest, AdoptResponse, ClaimRequest, ClaimResponse, ClusterStatus, CreateCluster,
    CreatedCluster, Document, DocumentWrite, JoinResponse, PublishRequest, PublishResponse,
    RegisterRequest, RegisterResponse, RenewRequest, ResetRequest, Secret, SyncRequest,
    SyncResponse, MAX_WAIT_SECS, NODE_CREDENTIAL_HEADER, OPERATOR_CREDENTIAL_HEADER,
};
use tokio::sync::watch;

/// Largest request body of an API call.
pub const API_BODY_LIMIT: usize = 64 * 1024;
/// Largest document body (serialized JSON) stored under `/docs/{name}` (the rulebook's
/// `MAX_DOC_BYTES`: a membership of 10,000 nodes fits; larger: 403 `quota_exceeded`).
pub const DOC_LIMIT: usize = swarmstrap_wire::rules::MAX_DOC_BYTES;
/// Largest `PUT /docs/{name}` request: the document plus its envelope (413 beyond it).
pub const DOC_BODY_LIMIT: usize = DOC_LIMIT + 4096;
/// Largest `POST /sync` request: the rulebook allows `rules::MAX_SYNC_MEMBERS` (10,000)
/// members, each at most ~160 bytes of JSON (a 128-character node id), plus 64 manager
/// addresses; a swarm of a thousand nodes would not fit the ordinary 64 KiB.
pub const SYNC_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// Limits that protect the server from slow or hostile clients.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time allowed to receive a request's headers (also closes idle keep-alive connections).
    pub header_read_timeout: Duration,
    /// Time allowed to receive a whole request body.
    pub body_read_timeout: Duration,
    /// Time allowed to finish the TLS handshake (a connection that does not is closed).
    pub tls_handshake_timeout: Duration,
    /// Most open connections on the public listener (TLS handshakes included); beyond it new
    /// connections wait in the kernel's backlog. The service's `LimitNOFILE` must be above it.
    pub max_connections: usize,
    /// Most open connections from one client address; beyond it a new one is closed at once.
    pub max_connections_per_address: usize,
    /// Most open long-polls in all (503 `too_many_long_polls` beyond it).
    pub max_long_polls: u64,
    /// Most open long-polls of one cluster (503 `too_many_long_polls` beyond it), so one
    /// cluster's secret holder cannot take every long-poll of the server.
    pub max_long_polls_per_cluster: u64,
    /// Most open long-polls from one client address (429 `too_many_long_polls` beyond it).
    pub max_long_polls_per_address: u64,
    /// Failed authentications from one (address, cluster) before its failures are refused
    /// with 429. A valid credential is always accepted (checked first).
    pub auth_failures_before_backoff: u32,
    pub max_auth_backoff: Duration,
    /// How long a graceful shutdown waits for open requests.
    pub shutdown_grace: Duration,
}

/// The defaults are sized for 10,000 agents of one cluster: each holds at most one long-poll
/// (join, or a document watch) and one connection at a time.
impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(5),
            max_connections: 16_384,
            max_connections_per_address: 2_500,
            max_long_polls: 16_000,
            max_long_polls_per_cluster: 12_000,
            max_long_polls_per_address: 2_000,
            auth_failures_before_backoff: 5,
            max_auth_backoff: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

#[derive(Default)]
struct ClusterSignals {
    /// Bumped when the cluster's lease/formation/nodes change.
    state: Option<watch::Sender<u64>>,
    /// Bumped when any of the cluster's documents changes.
    docs: Option<watch::Sender<u64>>,
}

#[derive(Clone, Copy)]
enum Signal {
    State,
    Docs,
}

pub struct Inner {
    pub store: Store,
    pub metrics: Metrics,
    pub limits: Limits,
    backoff: AuthBackoff,
    admin_token_sha256: [u8; 32],
    signals: Mutex<HashMap<String, ClusterSignals>>,
    shutdown: watch::Receiver<bool>,
    /// Join-secret digests of known clusters. A cluster's secret never changes while the
    /// server holds the database (no route changes it, clusters are never deleted), so the
    /// check of every request is a map lookup, not a read of the cluster's whole record (which
    /// grows with its reset log and formation). Only existing clusters are cached.
    secrets: std::sync::RwLock<HashMap<String, [u8; 32]>>,
    /// Open long-polls per cluster and per client address.
    polls: Mutex<PollCounts>,
    /// The last `/readyz` probe: at most one durable write per [`READY_PROBE_EVERY`].
    ready: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

/// `/readyz` answers from its last probe for this long (one durable write per second at
/// most, however many clients ask).
pub const READY_PROBE_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct PollCounts {
    by_cluster: HashMap<String, u64>,
    by_addr: HashMap<IpAddr, u64>,
}

/// Shared state of all handlers.
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(
        store: Store,
        admin_token: &Secret,
        limits: Limits,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        AppState(Arc::new(Inner {
            store,
            metrics: Metrics::default(),
            backoff: AuthBackoff::new(limits.auth_failures_before_backoff, limits.max_auth_backoff),
            limits,
            admin_token_sha256: auth::sha256(admin_token.expose().as_bytes()),
            signals: Mutex::new(HashMap::new()),
            shutdown,
            secrets: std::sync::RwLock::new(HashMap::new()),
            polls: Mutex::new(PollCounts::default()),
            ready: tokio::sync::Mutex::new(None),
        }))
    }

    /// The join-secret digest of `cluster` (None: no such cluster).
    fn secret_digest(&self, cluster: &str) -> Result<Option<[u8; 32]>, StoreError> {
        if let Some(d) = self
            .secrets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(cluster)
        {
            return Ok(Some(*d));
        }
        let d = self.store.cluster_secret_hash(cluster)?;
        if let Some(d) = d {
            self.secrets
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(cluster.to_string(), d);
        }
        Ok(d)
    }

    /// The durable write of `/readyz`, at most once per [`READY_PROBE_EVERY`]: concurrent
    /// callers wait for the one probe in flight and share its result.
    async fn ready(&self) -> Result<(), String> {
        let mut last = self.ready.lock().await;
        if let Some((at, r)) = last.as_ref() {
            if at.elapsed() < READY_PROBE_EVERY {
                return r.clone();
            }
        }
        self.metrics.ready_probes.inc();
        let r = match tokio::time::timeout(Duration::from_secs(5), self.store.probe_write()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("the store does not accept writes: {e}")),
            Err(_) => Err("a store write did not finish within 5 s".to_string()),
        };
        *last = Some((Instant::now(), r.clone()));
        r
    }

    fn subscribe(&self, cluster: &str, which: Signal) -> watch::Receiver<u64> {
        let mut map = self.signals.lock().expect("signals lock");
        let s = map.entry(cluster.to_string()).or_default();
        let slot = match which {
            Signal::State => &mut s.state,
            Signal::Docs => &mut s.docs,
        };
        slot.get_or_insert_with(|| watch::channel(0).0).subscribe()
    }

    fn notify(&self, cluster: &str, which: Signal) {
        let map = self.signals.lock().expect("signals lock");
        if let Some(s) = map.get(cluster) {
            let slot = match which {
                Signal::State => &s.state,
                Signal::Docs => &s.docs,
            };
            if let Some(tx) = slot {
                tx.send_modify(|v| *v = v.wrapping_add(1));
            }
        }
    }

    /// Wait up to `wait` for `check` to report done, re-checking whenever `which` fires.
    async fn long_poll<T>(
        &self,
        cluster: &str,
        peer: IpAddr,
        which: Signal,
        wait: u64,
        mut check: impl FnMut() -> Result<(T, bool), ApiError>,
    ) -> Result<T, ApiError> {
        // Subscribe before the first check so no change between the two is missed.
        let mut rx = self.subscribe(cluster, which);
        let (value, done) = check()?;
        if done || wait == 0 {
            return Ok(value);
        }
        let _slot = LongPollSlot::acquire(self, cluster, peer)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return check().map(|v| v.0);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return check().map(|v| v.0),
                _ = shutdown.wait_for(|stop| *stop) => return check().map(|v| v.0),
            }
            let (value, done) = check()?;
            if done {
                return Ok(value);
            }
        }
    }
}

/// One open long-poll, counted in all, per cluster and per client address until dropped.
struct LongPollSlot<'a> {
    state: &'a Inner,
    cluster: String,
    peer: IpAddr,
}

impl<'a> LongPollSlot<'a> {
    fn acquire(state: &'a Inner, cluster: &str, peer: IpAddr) -> Result<Self, ApiError> {
        let limits = &state.limits;
        let mut polls = state.polls.lock().expect("polls lock");
        let open = state.metrics.open_long_polls.get();
        let by_addr = polls.by_addr.get(&peer).copied().unwrap_or(0);
        let by_cluster = polls.by_cluster.get(cluster).copied().unwrap_or(0);
        let refuse = |status, msg: String| {
            Err(ApiError::new(status, "too_many_long_polls", msg).retry_after(1))
        };
        if by_addr >= limits.max_long_polls_per_address {
            return refuse(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this address already holds {by_addr} open long-polls (limit {} per address); \
                     retry with backoff",
                    limits.max_long_polls_per_address
                ),
            );
        }
        if by_cluster >= limits.max_long_polls_per_cluster {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "cluster {cluster:?} already holds {by_cluster} open long-polls (limit {} per \
                     cluster); retry with backoff",
                    limits.max_long_polls_per_cluster
                ),
            );
        }
        if open >= limits.max_long_polls {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the coordinator already holds {open} open long-polls (limit {}); retry with backoff",
                    limits.max_long_polls
                ),
            );
        }
        *polls.by_addr.entry(peer).or_default() += 1;
        *polls.by_cluster.entry(cluster.to_string()).or_default() += 1;
        state.metrics.open_long_polls.inc();
        Ok(LongPollSlot {
            state,
            cluster: cluster.to_string(),
            peer,
        })
    }
}

impl Drop for LongPollSlot<'_> {
    fn drop(&mut self) {
        let mut polls = self.state.polls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = polls.by_addr.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                polls.by_addr.remove(&self.peer);
            }
        }
        if let Some(n) = polls.by_cluster.get_mut(&self.cluster) {
            *n -= 1;
            if *n == 0 {
                polls.by_cluster.remove(&self.cluster);
            }
        }
        self.state.metrics.open_long_polls.dec();
    }
}

// ---------------------------------------------------------------------------------------------
// Extractors

fn peer_ip(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// Compare a bearer token against a stored digest, first: a valid token is always accepted,
/// whatever failures others sent from the same address. A failure is counted for (address,
/// `scope`) (the cluster, or the admin API), and refused with 429 while that pair is backed
/// off; a valid call never resets another pair's count.
fn check_bearer(
    state: &AppState,
    parts: &Parts,
    scope: &str,
    expected: Result<Option<[u8; 32]>, StoreError>,
) -> Result<(), ApiError> {
    let ip = peer_ip(parts);
    let token = auth::bearer(
        parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    let expected = expected.map_err(ApiError::from)?;
    // Hash and compare even for an unknown cluster, so both cost the same.
    let given = auth::sha256(token.unwrap_or("").as_bytes());
    let ok = match expected {
        Some(digest) => auth::digest_eq(&given, &digest) && token.is_some(),
        None => {
            let _ = auth::digest_eq(&given, &[0u8; 32]);
            false
        }
    };
    if ok {
        return Ok(());
    }
    state.metrics.auth_failures.inc();
    if let Some(left) = state.backoff.blocked(ip, scope) {
        let secs = left.as_secs_f64().ceil() as u64;
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_auth_failures",
            format!("too many failed authentications from this address; retry in {secs} s"),
        )
        .retry_after(secs));
    }
    if let Some(block) = state.backoff.failure(ip, scope) {
        tracing::warn!(peer = %ip, block_secs = block.as_secs(), "repeated authentication failures; backing off");
    }
    Err(ApiError::unauthorized())
}

fn path_param<'a>(params: &'a RawPathParams, name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
}

/// A request authenticated with the join secret of the cluster named in the path.
pub struct ClusterAuth {
    pub cluster: String,
}

impl FromRequestParts<AppState> for ClusterAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request("bad_path", e.body_text()))?;
        let cluster = path_param(&params, "cluster").unwrap_or("").to_string();
        // An invalid name cannot exist: answer exactly like an unknown cluster.
        let expected = if swarmstrap_wire::validate_name(&cluster).is_ok() {
            state.secret_digest(&cluster)
        } else {
            Ok(None)
        };
        // Failures for clusters that do not exist share one scope per address, so made-up
        // names cannot add entries to the backoff map.
        let scope = match &expected {
            Ok(Some(_)) => cluster.as_str(),
            _ => "",
        };
        check_bearer(state, parts, scope, expected)?;
        Ok(ClusterAuth { cluster })
    }
}

/// A request authenticated with the admin token.
pub struct AdminAuth;

impl FromRequestParts<AppState> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        check_bearer(state, parts, "/admin", Ok(Some(state.admin_token_sha256))).map_err(|mut e| {
            if e.code == "unauthorized" {
                e.message = "missing or wrong admin token: send `Authorization: Bearer <DATA_DIR/admin.token>`".into();
            }
            e
        })?;
        Ok(AdminAuth)
    }
}

fn header_secret(parts: &Parts, name: &str) -> Option<Secret> {
    parts
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(Secret::new)
}

/// The node credential presented in [`NODE_CREDENTIAL_HEADER`] (None: the header is absent,
/// empty or not text). The rulebook decides whether it matches.
pub struct NodeCredential(pub Option<Secret>);

impl FromRequestParts<AppState> for NodeCredential {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        Ok(NodeCredential(header_secret(parts, NODE_CREDENTIAL_HEADER)))
    }
}

/// The operator credential presented in [`OPERATOR_CREDENTIAL_HEADER`].
pub struct OperatorCredential(pub Option<Secret>);

impl FromRequestParts<AppState> for OperatorCredential {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        Ok(OperatorCredential(header_secret(
            parts,
            OPERATOR_CREDENTIAL_HEADER,
        )))
    }
}

/// The client's address (unspecified when unknown, e.g. in-process tests of the router).
pub struct Peer(pub IpAddr);

impl FromRequestParts<AppState> for Peer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        Ok(Peer(peer_ip(parts)))
    }
}

/// A validated `{name}` path parameter (document name).
pub struct DocName(pub String);

impl FromRequestParts<AppState> for DocName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request("bad_path", e.body_text()))?;
        let name = path_param(&params, "name").unwrap_or("").to_string();
        swarmstrap_wire::validate_name(&name).map_err(|m| {
            ApiError::bad_request(Code::InvalidName.as_str(), format!("document {m}"))
        })?;
        Ok(DocName(name))
    }
}

/// A validated `{cluster}` path parameter for admin routes.
pub struct ClusterName(pub String);

impl FromRequestParts<AppState> for ClusterName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request("bad_path", e.body_text()))?;
        let name = path_param(&params, "cluster").unwrap_or("").to_string();
        swarmstrap_wire::validate_name(&name).map_err(|m| {
            ApiError::bad_request(Code::InvalidName.as_str(), format!("cluster {m}"))
        })?;
        Ok(ClusterName(name))
    }
}

/// Query string, with a JSON 400 on anything malformed.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e| ApiError::bad_request("bad_query", e.body_text()))
    }
}

/// A JSON body of at most `LIMIT` bytes that must arrive within the body read timeout and
/// carry `Content-Type: application/json`.
pub struct ApiJson<T, const LIMIT: usize = API_BODY_LIMIT>(pub T);

impl<T: DeserializeOwned, const LIMIT: usize> FromRequest<AppState> for ApiJson<T, LIMIT> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("expected Content-Type: application/json, got {:?}", ct),
            ));
        }
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body exceeds {LIMIT} bytes"),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > LIMIT as u64) {
            return Err(too_large());
        }
        let body = Limited::new(req.into_body(), LIMIT);
        let bytes = match tokio::time::timeout(state.limits.body_read_timeout, body.collect()).await
        {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!(
                        "the request body did not arrive within {} s",
                        state.limits.body_read_timeout.as_secs_f64()
                    ),
                ))
            }
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
            Ok(Err(e)) => {
                return Err(ApiError::bad_request(
                    "bad_body",
                    format!("cannot read the request body: {e}"),
                ))
            }
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|e| {
            use serde_json::error::Category;
            match e.classify() {
                Category::Data => ApiError::bad_request(
                    Code::InvalidRequest.as_str(),
                    format!("the JSON body does not match the expected shape: {e}"),
                ),
                _ => ApiError::bad_request(
                    "malformed_json",
                    format!("the body is not valid JSON: {e}"),
                ),
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Routes

/// Which listener serves a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    /// The public listener (`--listen`): agents, probes, metrics.
    Public,
    /// The admin listener (`--admin-listen`, loopback by default): the operator on the
    /// coordinator host. The public listener answers 404 on these paths.
    Admin,
}

/// Every route: method, path template, handler. The routers are built from this list and the
/// OpenAPI test reads it, so the two cannot drift apart silently.
pub fn routes() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    surface_routes()
        .into_iter()
        .map(|(m, p, r, _)| (m, p, r))
        .collect()
}

/// [`routes`] with the listener that serves each.
pub fn surface_routes() -> Vec<(Method, &'static str, MethodRouter<AppState>, Surface)> {
    let public = [
        (Method::GET, "/healthz", get(healthz)),
        (Method::GET, "/readyz", get(readyz)),
        (Method::GET, "/metrics", get(metrics)),
        (Method::GET, "/v1/clusters/{cluster}", get(cluster_status)),
        (Method::POST, "/v1/clusters/{cluster}/nodes", post(register)),
        (Method::POST, "/v1/clusters/{cluster}/claim", post(claim)),
        (
            Method::POST,
            "/v1/clusters/{cluster}/claim/renew",
            post(renew),
        ),
        (
            Method::POST,
            "/v1/clusters/{cluster}/publish",
            post(publish),
        ),
        (Method::GET, "/v1/clusters/{cluster}/join", get(join)),
        (Method::POST, "/v1/clusters/{cluster}/reset", post(recover)),
        (
            Method::POST,
            "/v1/clusters/{cluster}/rotate-tokens",
            post(rotate_tokens),
        ),
        (Method::POST, "/v1/clusters/{cluster}/sync", post(sync)),
        (Method::POST, "/v1/clusters/{cluster}/adopt", post(adopt)),
        (
            Method::GET,
            "/v1/clusters/{cluster}/docs/{name}",
            get(get_doc),
        ),
        (
            Method::PUT,
            "/v1/clusters/{cluster}/docs/{name}",
            put(put_doc),
        ),
    ];
    let admin = [
        (Method::GET, "/v1/admin/clusters", get(admin_list)),
        (Method::POST, "/v1/admin/clusters", post(admin_create)),
        (Method::GET, "/v1/admin/clusters/{cluster}", get(admin_show)),
        (
            Method::POST,
            "/v1/admin/clusters/{cluster}/reset",
            post(admin_reset),
        ),
        (
            Method::POST,
            "/v1/admin/clusters/{cluster}/adoption-hold",
            post(admin_adoption_hold),
        ),
        (
            Method::POST,
            "/v1/admin/clusters/{cluster}/rotate-tokens",
            post(admin_rotate_tokens),
        ),
        (
            Method::POST,
            "/v1/admin/clusters/{cluster}/operator-credential",
            post(admin_operator_credential),
        ),
    ];
    public
        .into_iter()
        .map(|(m, p, r)| (m, p, r, Surface::Public))
        .chain(admin.into_iter().map(|(m, p, r)| (m, p, r, Surface::Admin)))
        .collect()
}

/// (method, path) of every route, both listeners.
pub fn route_table() -> Vec<(Method, &'static str)> {
    routes().into_iter().map(|(m, p, _)| (m, p)).collect()
}

fn surface_router(state: AppState, surface: Surface) -> Router {
    let mut r = Router::new();
    for (_, path, mr, s) in surface_routes() {
        if s == surface {
            r = r.route(path, mr);
        }
    }
    let r = r.method_not_allowed_fallback(method_not_allowed);
    let r = match surface {
        Surface::Public => r.fallback(not_found_public),
        Surface::Admin => r.fallback(not_found),
    };
    r.layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// The public listener's routes (no admin API: see [`admin_router`]).
pub fn router(state: AppState) -> Router {
    surface_router(state, Surface::Public)
}

/// The admin listener's routes (`/v1/admin/...`).
pub fn admin_router(state: AppState) -> Router {
    surface_router(state, Surface::Admin)
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found_route(method.as_str(), uri.path())
}

async fn not_found_public(method: Method, uri: Uri) -> ApiError {
    if uri.path() == "/v1/admin" || uri.path().starts_with("/v1/admin/") {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the admin API is not served on this listener: it listens on the coordinator host \
             only (`serve --admin-listen`, loopback by default); use `swarm-coordinator cluster ...` \
             there",
        );
    }
    not_found(method, uri).await
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}

/// One log line and one metrics sample per request: method, route template, status, latency.
/// Never bodies or headers.
async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let elapsed = start.elapsed();
    // Any token is a valid HTTP method: label only the standard ones, so a client cannot add a
    // metrics series (and text every /metrics reader sees) per made-up method.
    let standard = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::OPTIONS,
        Method::PATCH,
        Method::CONNECT,
        Method::TRACE,
    ];
    let method_label = if standard.contains(&method) {
        method.as_str()
    } else {
        "other"
    };
    state
        .metrics
        .record(method_label, &route, status, elapsed.as_secs_f64());
    tracing::info!(
        method = %method,
        route = %route,
        status,
        latency_ms = format_args!("{:.3}", elapsed.as_secs_f64() * 1000.0),
        peer = %peer,
        "request"
    );
    resp
}

// ---------------------------------------------------------------------------------------------
// Handlers

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Ready when the store takes a durable write: one probe write per second at most (the
/// answer is the last probe's within [`READY_PROBE_EVERY`]), so unauthenticated probes cannot
/// turn into an fsync each.
async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    match state.ready().await {
        Ok(()) => Ok(Json(serde_json::json!({"status": "ready"}))),
        Err(m) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            m,
        )),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let (clusters, nodes) = match state.store.counts() {
        Ok((c, n)) => (Some(c), Some(n)),
        Err(_) => (None, None),
    };
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.metrics.render(clusters, nodes),
    )
        .into_response()
}

async fn cluster_status(
    State(state): State<AppState>,
    auth: ClusterAuth,
) -> Result<Json<ClusterStatus>, ApiError> {
    Ok(Json(state.store.status(&auth.cluster)?))
}

async fn register(
    State(state): State<AppState>,
    auth: ClusterAuth,
    NodeCredential(cred): NodeCredential,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<Json<RegisterResponse>, ApiError> {
    // No wakeup: a registration changes nothing a join long-poll answers, and waking every
    // parked node on each registration would cost O(nodes²) reads while a cluster boots.
    let w = state.store.register(auth.cluster, req, cred).await?;
    Ok(Json(w.value))
}

async fn claim(
    State(state): State<AppState>,
    auth: ClusterAuth,
    NodeCredential(cred): NodeCredential,
    ApiJson(req): ApiJson<ClaimRequest>,
) -> Result<Json<ClaimResponse>, ApiError> {
    let w = state
        .store
        .claim(auth.cluster.clone(), req.node_id, req.ttl_ms, cred)
        .await?;
    if w.changed {
        state.notify(&auth.cluster, Signal::State);
    }
    Ok(Json(w.value))
}

async fn renew(
    State(state): State<AppState>,
    auth: ClusterAuth,
    NodeCredential(cred): NodeCredential,
    ApiJson(req): ApiJson<RenewRequest>,
) -> Result<Json<ClaimResponse>, ApiError> {
    let w = state.store.renew(auth.cluster.clone(), req, cred).await?;
    if w.changed {
        state.notify(&auth.cluster, Signal::State);
    }
    Ok(Json(w.value))
}

async fn publish(
    State(state): State<AppState>,
    auth: ClusterAuth,
    NodeCredential(cred): NodeCredential,
    ApiJson(req): ApiJson<PublishRequest>,
) -> Result<Json<PublishResponse>, ApiError> {
    let w = state.store.publish(auth.cluster.clone(), req, cred).await?;
    if w.changed {
        tracing::info!(cluster = %auth.cluster, "cluster formed: join tokens published");
        state.notify(&auth.cluster, Signal::State);
    }
    Ok(Json(PublishResponse { phase: w.value }))
}

async fn recover(
    State(state): State<AppState>,
    auth: ClusterAuth,
    OperatorCredential(operator): OperatorCredential,
    ApiJson(req): ApiJson<ResetRequest>,
) -> Result<Json<ClusterStatus>, ApiError> {
    let (node, swarm) = (req.node_id.clone(), req.swarm_id.clone());
    let status = state
        .store
        .recover(auth.cluster.clone(), req, operator)
        .await
        .inspect_err(|e| {
            if e.code() == Some(Code::OperatorRequired) {
                state.metrics.auth_failures.inc();
                tracing::warn!(cluster = %auth.cluster, "reset refused: no or a wrong operator credential");
            }
        })?;
    tracing::warn!(cluster = %auth.cluster, node = %node, lost_swarm = %swarm, resets = status.resets,
        "cluster reset by the operator (`swarm-agent recover`): one new init is allowed");
    state.notify(&auth.cluster, Signal::State);
    Ok(Json(status))
}

/// `swarm-agent rotate-tokens`: the operator (its credential in the operator header) asks for
/// new join tokens.
async fn rotate_tokens(
    State(state): State<AppState>,
    auth: ClusterAuth,
    OperatorCredential(operator): OperatorCredential,
) -> Result<Json<ClusterStatus>, ApiError> {
    let w = state
        .store
        .request_token_rotation_by_operator(auth.cluster.clone(), operator)
        .await
        .inspect_err(|e| {
            if e.code() == Some(Code::OperatorRequired) {
                state.metrics.auth_failures.inc();
                tracing::warn!(cluster = %auth.cluster, "token rotation refused: no or a wrong operator credential");
            }
        })?;
    if w.changed {
        tracing::info!(cluster = %auth.cluster, rotation = ?w.value.token_rotation_pending, "join-token rotation requested by the operator (`swarm-agent rotate-tokens`)");
    }
    Ok(Json(w.value))
}

async fn sync(
    State(state): State<AppState>,
    auth: ClusterAuth,
    NodeCredential(cred): NodeCredential,
    ApiJson(req): ApiJson<SyncRequest, SYNC_BODY_LIMIT>,
) -> Result<Json<SyncResponse>, ApiError> {
    // No wakeup: a sync needs a formed cluster, whose join long-polls have answered already.
    let node = req.node_id.clone();
    let w = state.store.sync(auth.cluster.clone(), req, cred).await?;
    if !w.value.pruned.is_empty() {
        tracing::info!(cluster = %auth.cluster, node = %node, pruned = ?w.value.pruned,
            managers = w.value.manager_count, "registrations of nodes that left the swarm dropped");
    }
    Ok(Json(w.value))
}

async fn adopt(
    State(state): State<AppState>,
    auth: ClusterAuth,
    NodeCredential(cred): NodeCredential,
    ApiJson(req): ApiJson<AdoptRequest>,
) -> Result<Json<AdoptResponse>, ApiError> {
    let (node, swarm) = (req.node_id.clone(), req.swarm_id.clone());
    let w = state.store.adopt(auth.cluster.clone(), req, cred).await?;
    if w.value.adopted {
        tracing::info!(
            "cluster {} adopted swarm {swarm} from node {node} under fencing token {}",
            auth.cluster,
            w.value.fencing_token
        );
    }
    if w.changed {
        // Nodes parked waiting for join info get the adopted swarm's.
        state.notify(&auth.cluster, Signal::State);
    }
    Ok(Json(w.value))
}

fn check_wait(wait: Option<u64>) -> Result<u64, ApiError> {
    let wait = wait.unwrap_or(0);
    if wait > MAX_WAIT_SECS {
        return Err(ApiError::bad_request(
            "bad_query",
            format!("wait={wait} is longer than the maximum of {MAX_WAIT_SECS} seconds"),
        ));
    }
    Ok(wait)
}

#[derive(Deserialize)]
struct JoinQuery {
    node_id: String,
    wait: Option<u64>,
}

async fn join(
    State(state): State<AppState>,
    auth: ClusterAuth,
    Peer(peer): Peer,
    NodeCredential(cred): NodeCredential,
    ApiQuery(q): ApiQuery<JoinQuery>,
) -> Result<Json<JoinResponse>, ApiError> {
    let wait = check_wait(q.wait)?;
    let store = state.store.clone();
    let resp = state
        .long_poll(&auth.cluster, peer, Signal::State, wait, || {
            let r = store.join(&auth.cluster, &q.node_id, cred.as_ref())?;
            let done = r.join.is_some();
            Ok((r, done))
        })
        .await?;
    Ok(Json(resp))
}

#[derive(Deserialize)]
struct DocQuery {
    after: Option<u64>,
    wait: Option<u64>,
}

async fn get_doc(
    State(state): State<AppState>,
    auth: ClusterAuth,
    Peer(peer): Peer,
    DocName(name): DocName,
    ApiQuery(q): ApiQuery<DocQuery>,
) -> Result<Json<Document>, ApiError> {
    let wait = check_wait(q.wait)?;
    let store = state.store.clone();
    let after = q.after;
    let doc = state
        .long_poll(
            &auth.cluster,
            peer,
            Signal::Docs,
            if after.is_some() { wait } else { 0 },
            || {
                let d = store.get_doc(&auth.cluster, &name)?;
                let done = swarmstrap_wire::rules::doc_answers(&d, after);
                Ok((d, done))
            },
        )
        .await?;
    Ok(Json(doc))
}

async fn put_doc(
    State(state): State<AppState>,
    auth: ClusterAuth,
    NodeCredential(cred): NodeCredential,
    DocName(name): DocName,
    ApiJson(write): ApiJson<DocumentWrite, DOC_BODY_LIMIT>,
) -> Result<Json<Document>, ApiError> {
    // Typed documents: the rulebook decides who may write what, and bounds the size
    // (`rules::put_doc`: 403 quota_exceeded above DOC_LIMIT).
    let doc = state
        .store
        .put_doc(auth.cluster.clone(), name, write, cred)
        .await?;
    state.notify(&auth.cluster, Signal::Docs);
    Ok(Json(doc))
}

async fn admin_list(
    State(state): State<AppState>,
    _: AdminAuth,
) -> Result<Json<Vec<ClusterStatus>>, ApiError> {
    Ok(Json(state.store.list()?))
}

async fn admin_create(
    State(state): State<AppState>,
    _: AdminAuth,
    ApiJson(req): ApiJson<CreateCluster>,
) -> Result<(StatusCode, Json<CreatedCluster>), ApiError> {
    let created = create_cluster(&state.store, req).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Create a cluster with the given or a generated join secret and operator credential (shared
/// by the admin API and the CLI's direct mode). Only their digests are stored; the answer
/// carries both, once.
pub async fn create_cluster(store: &Store, req: CreateCluster) -> Result<CreatedCluster, ApiError> {
    let secret = match req.secret {
        Some(s) => {
            auth::validate_secret(&s).map_err(|m| ApiError::bad_request("invalid_secret", m))?;
            s
        }
        None => auth::generate_secret(),
    };
    let operator = match req.operator_credential {
        Some(s) => {
            auth::validate_secret(&s).map_err(|m| {
                ApiError::bad_request("invalid_secret", format!("operator credential: {m}"))
            })?;
            if s == secret {
                return Err(ApiError::bad_request(
                    "invalid_secret",
                    "the operator credential must differ from the join secret (every node holds \
                     the join secret; only the operator may reset the cluster)",
                ));
            }
            s
        }
        None => auth::generate_secret(),
    };
    let status = store
        .create_cluster(
            req.name,
            req.target_managers,
            auth::sha256(secret.expose().as_bytes()),
            req.await_adoption,
            swarmstrap_wire::rules::credential_sha256(&operator),
        )
        .await?;
    if status.awaiting_adoption {
        tracing::info!(cluster = %status.name, target_managers = status.target_managers,
            "cluster created awaiting adoption: init claims are refused until its running swarm adopts it");
    } else {
        tracing::info!(cluster = %status.name, target_managers = status.target_managers, "cluster created");
    }
    Ok(CreatedCluster {
        name: status.name,
        target_managers: status.target_managers,
        secret,
        operator_credential: operator,
    })
}

async fn admin_show(
    State(state): State<AppState>,
    _: AdminAuth,
    ClusterName(name): ClusterName,
) -> Result<Json<ClusterStatus>, ApiError> {
    Ok(Json(state.store.status(&name)?))
}

async fn admin_reset(
    State(state): State<AppState>,
    _: AdminAuth,
    ClusterName(name): ClusterName,
) -> Result<Json<ClusterStatus>, ApiError> {
    let status = state.store.reset(name.clone()).await?;
    tracing::warn!(cluster = %name, resets = status.resets, "cluster reset by the operator: one new init is allowed");
    state.notify(&name, Signal::State);
    Ok(Json(status))
}

/// `POST /v1/admin/clusters/{cluster}/operator-credential` body: the new credential, or none
/// (generate one).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OperatorCredentialChange {
    #[serde(default)]
    pub operator_credential: Option<Secret>,
}

/// Its answer: the cluster and its new operator credential (shown once).
#[derive(serde::Serialize, Deserialize)]
pub struct OperatorCredentialChanged {
    pub name: String,
    pub operator_credential: Secret,
}

/// Set a new operator credential for a cluster (given or generated; only its sha256 is
/// stored). Shared by the admin API and the CLI's direct mode.
pub async fn set_operator_credential(
    store: &Store,
    name: String,
    req: OperatorCredentialChange,
) -> Result<OperatorCredentialChanged, ApiError> {
    let operator = match req.operator_credential {
        Some(s) => {
            auth::validate_secret(&s).map_err(|m| {
                ApiError::bad_request("invalid_secret", format!("operator credential: {m}"))
            })?;
            let join = store.cluster_secret_hash(&name)?;
            if join.is_some_and(|d| auth::digest_eq(&auth::sha256(s.expose().as_bytes()), &d)) {
                return Err(ApiError::bad_request(
                    "invalid_secret",
                    "the operator credential must differ from the join secret",
                ));
            }
            s
        }
        None => auth::generate_secret(),
    };
    let status = store
        .set_operator_credential(name, swarmstrap_wire::rules::credential_sha256(&operator))
        .await?;
    tracing::warn!(cluster = %status.name, "operator credential replaced by the operator: the previous one resets nothing any more");
    Ok(OperatorCredentialChanged {
        name: status.name,
        operator_credential: operator,
    })
}

async fn admin_operator_credential(
    State(state): State<AppState>,
    _: AdminAuth,
    ClusterName(name): ClusterName,
    ApiJson(req): ApiJson<OperatorCredentialChange>,
) -> Result<Json<OperatorCredentialChanged>, ApiError> {
    Ok(Json(
        set_operator_credential(&state.store, name, req).await?,
    ))
}

async fn admin_rotate_tokens(
    State(state): State<AppState>,
    _: AdminAuth,
    ClusterName(name): ClusterName,
) -> Result<Json<ClusterStatus>, ApiError> {
    let w = state.store.request_token_rotation(name.clone()).await?;
    if w.changed {
        tracing::info!(cluster = %name, rotation = ?w.value.token_rotation_pending, "join-token rotation requested by the operator: the raft leader's agent rotates and publishes the new tokens");
    }
    Ok(Json(w.value))
}

/// `POST /v1/admin/clusters/{cluster}/adoption-hold` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdoptionHold {
    hold: bool,
}

async fn admin_adoption_hold(
    State(state): State<AppState>,
    _: AdminAuth,
    ClusterName(name): ClusterName,
    ApiJson(req): ApiJson<AdoptionHold>,
) -> Result<Json<ClusterStatus>, ApiError> {
    let w = state
        .store
        .set_adoption_hold(name.clone(), req.hold)
        .await?;
    if w.changed {
        if req.hold {
            tracing::info!(cluster = %name, "adoption hold set by the operator: init claims are refused until the running swarm adopts the cluster");
        } else {
            tracing::info!(cluster = %name, "adoption hold lifted by the operator: the next claimant may run `swarm init`");
        }
    }
    Ok(Json(w.value))
}
