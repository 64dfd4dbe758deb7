//! The coordinator backend: [`Rendezvous`] over the coordinator's `/v1` HTTPS API (reqwest +
//! rustls). The join secret is the bearer token; every call made for a node id carries that
//! node's credential ([`NODE_CREDENTIAL_HEADER`], kept in [`Credentials`]: the one `register` or
//! `adopt` returns, or the one the agent loaded from its state dir), and a reset the operator
//! credential ([`OPERATOR_CREDENTIAL_HEADER`]). Credentials never go into a URL. TLS trust is a
//! certificate pin (`swarmstrap_wire::pin`), a CA file, or the system roots; plain http only
//! when the config opts in (`insecure_http = true`, labs).

use crate::config::{CoordinatorConfig, CoordinatorTls};
use async_trait::async_trait;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;
use swarmstrap_wire::rendezvous::{Credentials, Rendezvous, RendezvousError, Result};
use swarmstrap_wire::rules::Code;
use swarmstrap_wire::{
    error_chain, AdoptRequest, AdoptResponse, ClaimRequest, ClaimResponse, ClusterStatus, Document,
    DocumentWrite, ErrorBody, JoinResponse, PublishRequest, PublishResponse, RegisterRequest,
    RegisterResponse, RenewRequest, ResetRequest, Secret, SyncRequest, SyncResponse, API_PREFIX,
    MAX_WAIT_SECS, NODE_CREDENTIAL_HEADER, OPERATOR_CREDENTIAL_HEADER,
};

/// Extra time a long-poll request may take beyond its `wait` (network, server scheduling).
const LONG_POLL_MARGIN: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read the coordinator CA file {path}: {source}")]
    CaFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the coordinator CA file {path} holds no usable PEM certificate: {message}")]
    CaPem {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("cannot build the HTTPS client: {0}")]
    Build(String),
}

pub struct CoordinatorClient {
    base: String,
    cluster: String,
    secret: Secret,
    http: reqwest::Client,
    request_timeout: Duration,
    credentials: Credentials,
}

impl CoordinatorClient {
    /// `request_timeout` bounds every call except long-polls (which get their wait + a margin).
    pub fn new(
        cfg: &CoordinatorConfig,
        cluster: &str,
        secret: Secret,
        request_timeout: Duration,
    ) -> std::result::Result<CoordinatorClient, ClientError> {
        swarmstrap_wire::pin::crypto_provider(); // reqwest has no provider of its own
        let builder = reqwest::Client::builder()
            // The coordinator sits on the private network; never send the secret to a proxy.
            .no_proxy()
            .connect_timeout(request_timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("swarm-agent/", env!("CARGO_PKG_VERSION")));
        let builder = match &cfg.tls {
            CoordinatorTls::Pinned(pin) => {
                builder.tls_backend_preconfigured(swarmstrap_wire::pin::pinned_client_config(*pin))
            }
            CoordinatorTls::CaFile(path) => {
                let pem = std::fs::read(path).map_err(|source| ClientError::CaFile {
                    path: path.clone(),
                    source,
                })?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    ClientError::CaPem {
                        path: path.clone(),
                        message: e.to_string(),
                    }
                })?;
                if certs.is_empty() {
                    return Err(ClientError::CaPem {
                        path: path.clone(),
                        message: "no certificate found".into(),
                    });
                }
                builder.tls_certs_only(certs)
            }
            CoordinatorTls::SystemRoots | CoordinatorTls::PlainHttp => builder,
        };
        let http = builder
            .build()
            .map_err(|e| ClientError::Build(error_chain(&e)))?;
        Ok(CoordinatorClient {
            base: cfg.url.trim_end_matches('/').to_string(),
            cluster: cluster.to_string(),
            secret,
            http,
            request_timeout,
            credentials: Credentials::default(),
        })
    }

    fn url(&self, tail: &str) -> String {
        format!(
            "{}{}/clusters/{}{}",
            self.base, API_PREFIX, self.cluster, tail
        )
    }

    fn request(&self, method: Method, url: &str, timeout: Duration) -> RequestBuilder {
        self.http
            .request(method, url)
            .bearer_auth(self.secret.expose())
            .timeout(timeout)
    }

    /// A request made for `node_id`: with its credential, when this client holds one.
    fn node_request(
        &self,
        method: Method,
        url: &str,
        timeout: Duration,
        node_id: &str,
    ) -> RequestBuilder {
        let req = self.request(method, url, timeout);
        match self.credentials.get(node_id) {
            Some(c) => req.header(NODE_CREDENTIAL_HEADER, sensitive(&c)),
            None => req,
        }
    }

    async fn call<T: DeserializeOwned>(&self, req: RequestBuilder, url: &str) -> Result<T> {
        let resp = req.send().await.map_err(|e| send_error(&e, url))?;
        let status = resp.status();
        if status.is_success() {
            return resp.json::<T>().await.map_err(|e| {
                if e.is_timeout() || e.is_body() {
                    RendezvousError::Transient(format!("{url}: {}", error_chain(&e)))
                } else {
                    RendezvousError::Rejected {
                        code: "bad_response".into(),
                        message: format!(
                            "{url} answered {status} with an unexpected body ({}): is this a \
                             swarm-coordinator of a compatible version?",
                            error_chain(&e)
                        ),
                    }
                }
            });
        }
        let text = resp.text().await.unwrap_or_default();
        Err(map_status(status, &text, url, &self.cluster))
    }

    /// POST for `node_id` (with its credential).
    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        tail: &str,
        node_id: &str,
        body: &B,
    ) -> Result<T> {
        let url = self.url(tail);
        let req = self
            .node_request(Method::POST, &url, self.request_timeout, node_id)
            .json(body);
        self.call(req, &url).await
    }
}

/// A header value marked sensitive (hyper never logs it). A credential holds no byte a header
/// value refuses (the rendezvous issues hex/base64url); one that does is sent empty and refused.
fn sensitive(c: &Secret) -> reqwest::header::HeaderValue {
    let mut v = reqwest::header::HeaderValue::from_str(c.expose())
        .unwrap_or_else(|_| reqwest::header::HeaderValue::from_static(""));
    v.set_sensitive(true);
    v
}

/// Map an error status and its JSON body to what the caller should do.
pub fn map_status(status: StatusCode, body: &str, url: &str, cluster: &str) -> RendezvousError {
    let (code, message) = match serde_json::from_str::<ErrorBody>(body) {
        Ok(b) => (b.error, b.message),
        Err(_) => {
            let mut text: String = body.chars().take(200).collect();
            if text.trim().is_empty() {
                text = status.canonical_reason().unwrap_or("").to_string();
            }
            (format!("http_{}", status.as_u16()), text.trim().to_string())
        }
    };
    let s = status.as_u16();
    let code_of = Code::parse(&code);
    match s {
        // The rulebook's own 403s (a node credential, the operator credential, a quota): the
        // caller acts on the code, like on every other backend.
        403 if matches!(
            code_of,
            Some(Code::BadNodeCredential | Code::OperatorRequired | Code::QuotaExceeded)
        ) =>
        {
            RendezvousError::Rejected {
                code,
                message: format!("{message} (HTTP {s} from {url})"),
            }
        }
        401 | 403 => RendezvousError::Unauthorized(format!("{message} (HTTP {s} from {url})")),
        404 if code_of == Some(Code::UnknownCluster) => RendezvousError::Unauthorized(format!(
            "unknown cluster {cluster}: {message} (HTTP 404 from {url})"
        )),
        409 => RendezvousError::Conflict { code, message },
        408 | 429 => RendezvousError::Transient(format!("{url}: HTTP {s} {code}: {message}")),
        500..=599 => RendezvousError::Transient(format!("{url}: HTTP {s} {code}: {message}")),
        _ => RendezvousError::Rejected {
            code,
            message: format!("{message} (HTTP {s} from {url})"),
        },
    }
}

/// Network errors are transient, except a certificate the agent does not trust: that is a
/// configuration problem (wrong pin or CA file) that retrying cannot fix.
fn send_error(e: &reqwest::Error, url: &str) -> RendezvousError {
    let chain = error_chain(e);
    if chain.contains("certificate") {
        RendezvousError::Rejected {
            code: "tls_certificate".into(),
            message: format!(
                "{url}: the coordinator's TLS certificate is not trusted ({chain}): check \
                 [coordinator] tls_fingerprint / ca_file"
            ),
        }
    } else {
        RendezvousError::Transient(format!("{url}: {chain}"))
    }
}

fn wait_secs(wait: Duration) -> u64 {
    // Round up so a short wait still waits; the API counts whole seconds.
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.min(MAX_WAIT_SECS)
}

#[async_trait]
impl Rendezvous for CoordinatorClient {
    fn describe(&self) -> String {
        format!("coordinator {}", self.base)
    }

    fn set_credential(&self, node_id: &str, credential: Secret) {
        self.credentials.set(node_id, credential);
    }

    fn credential(&self, node_id: &str) -> Option<Secret> {
        self.credentials.get(node_id)
    }

    async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse> {
        let r: RegisterResponse = self.post("/nodes", &req.node_id, req).await?;
        self.credentials.keep(&req.node_id, r.credential.as_ref());
        Ok(r)
    }

    async fn claim(&self, node_id: &str, ttl: Duration) -> Result<ClaimResponse> {
        let body = ClaimRequest {
            node_id: node_id.to_string(),
            ttl_ms: ttl.as_millis() as u64,
        };
        self.post("/claim", node_id, &body).await
    }

    async fn renew(
        &self,
        node_id: &str,
        fencing_token: u64,
        ttl: Duration,
    ) -> Result<ClaimResponse> {
        let body = RenewRequest {
            node_id: node_id.to_string(),
            fencing_token,
            ttl_ms: ttl.as_millis() as u64,
        };
        self.post("/claim/renew", node_id, &body).await
    }

    async fn publish(&self, req: &PublishRequest) -> Result<PublishResponse> {
        self.post("/publish", &req.node_id, req).await
    }

    async fn wait_join(&self, node_id: &str, wait: Duration) -> Result<JoinResponse> {
        let secs = wait_secs(wait);
        let url = self.url(&format!("/join?node_id={node_id}&wait={secs}"));
        let req = self.node_request(
            Method::GET,
            &url,
            Duration::from_secs(secs) + LONG_POLL_MARGIN,
            node_id,
        );
        self.call(req, &url).await
    }

    async fn status(&self) -> Result<ClusterStatus> {
        let url = self.url("");
        let req = self.request(Method::GET, &url, self.request_timeout);
        self.call(req, &url).await
    }

    async fn reset(&self, req: &ResetRequest, operator: Option<&Secret>) -> Result<ClusterStatus> {
        // The operator's call: its credential, never a node's.
        let url = self.url("/reset");
        let mut r = self
            .request(Method::POST, &url, self.request_timeout)
            .json(req);
        if let Some(op) = operator {
            r = r.header(OPERATOR_CREDENTIAL_HEADER, sensitive(op));
        }
        self.call(r, &url).await
    }

    async fn request_token_rotation(&self, operator: Option<&Secret>) -> Result<ClusterStatus> {
        // The operator's call: its credential, never a node's.
        let url = self.url("/rotate-tokens");
        let mut r = self
            .request(Method::POST, &url, self.request_timeout)
            .header("content-type", "application/json")
            .body("{}");
        if let Some(op) = operator {
            r = r.header(OPERATOR_CREDENTIAL_HEADER, sensitive(op));
        }
        self.call(r, &url).await
    }

    async fn sync(&self, req: &SyncRequest) -> Result<SyncResponse> {
        self.post("/sync", &req.node_id, req).await
    }

    async fn adopt(&self, req: &AdoptRequest) -> Result<AdoptResponse> {
        let r: AdoptResponse = self.post("/adopt", &req.node_id, req).await?;
        self.credentials.keep(&req.node_id, r.credential.as_ref());
        Ok(r)
    }

    async fn get_doc(&self, name: &str, after: Option<u64>, wait: Duration) -> Result<Document> {
        let (url, timeout) = match after {
            Some(v) => {
                let secs = wait_secs(wait);
                (
                    self.url(&format!("/docs/{name}?after={v}&wait={secs}")),
                    Duration::from_secs(secs) + LONG_POLL_MARGIN,
                )
            }
            None => (self.url(&format!("/docs/{name}")), self.request_timeout),
        };
        let req = self.request(Method::GET, &url, timeout);
        self.call(req, &url).await
    }

    async fn put_doc(
        &self,
        node_id: &str,
        name: &str,
        expected_version: u64,
        body: &serde_json::Value,
    ) -> Result<Document> {
        let url = self.url(&format!("/docs/{name}"));
        let req = self
            .node_request(Method::PUT, &url, self.request_timeout, node_id)
            .json(&DocumentWrite {
                expected_version,
                body: body.clone(),
                node_id: node_id.to_string(),
            });
        self.call(req, &url).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;
    use axum::extract::Request;
    use axum::http::StatusCode as AxStatus;
    use axum::response::IntoResponse;
    use axum::Router;
    use std::sync::{Arc, Mutex};
    use swarmstrap_wire::{Phase, RequestedRole, Role};

    #[derive(Clone, Debug)]
    struct Seen {
        method: String,
        path_query: String,
        auth: Option<String>,
        credential: Option<String>,
        operator: Option<String>,
        body: String,
    }

    /// A server answering every request with `status` and `body`, recording what it saw.
    async fn mock(status: u16, body: &'static str) -> (CoordinatorClient, Arc<Mutex<Vec<Seen>>>) {
        let seen = Arc::new(Mutex::new(vec![]));
        let s2 = seen.clone();
        let app = Router::new().fallback(move |req: Request| {
            let seen = s2.clone();
            async move {
                let (parts, b) = req.into_parts();
                let bytes = to_bytes(b, usize::MAX).await.unwrap();
                seen.lock().unwrap().push(Seen {
                    method: parts.method.to_string(),
                    path_query: parts.uri.path_and_query().unwrap().to_string(),
                    auth: parts
                        .headers
                        .get("authorization")
                        .map(|v| v.to_str().unwrap().to_string()),
                    credential: parts
                        .headers
                        .get(NODE_CREDENTIAL_HEADER)
                        .map(|v| v.to_str().unwrap().to_string()),
                    operator: parts
                        .headers
                        .get(OPERATOR_CREDENTIAL_HEADER)
                        .map(|v| v.to_str().unwrap().to_string()),
                    body: String::from_utf8_lossy(&bytes).into_owned(),
                });
                (
                    AxStatus::from_u16(status).unwrap(),
                    [("content-type", "application/json")],
                    body,
                )
                    .into_response()
            }
        });
        let base = crate::cloud::mock::serve(app).await;
        (client(&base, CoordinatorTls::PlainHttp), seen)
    }

    fn client(base: &str, tls: CoordinatorTls) -> CoordinatorClient {
        CoordinatorClient::new(
            &CoordinatorConfig {
                url: base.to_string(),
                tls,
            },
            "prod",
            Secret::new("the-join-secret"),
            Duration::from_secs(2),
        )
        .unwrap()
    }

    fn reg() -> RegisterRequest {
        RegisterRequest {
            node_id: "n1".into(),
            hostname: "h1".into(),
            advertise_addr: "198.18.0.1".into(),
            role: RequestedRole::Auto,
            joined_through: None,
            labels: None,
        }
    }

    #[tokio::test]
    async fn register_sends_bearer_path_and_body() {
        let (c, seen) = mock(
            200,
            r#"{"node_id":"n1","role":"manager","target_managers":3,"phase":"open"}"#,
        )
        .await;
        let r = c.register(&reg()).await.unwrap();
        assert_eq!(r.role, Role::Manager);
        assert_eq!(r.phase, Phase::Open);
        let s = seen.lock().unwrap()[0].clone();
        assert_eq!(s.method, "POST");
        assert_eq!(s.path_query, "/v1/clusters/prod/nodes");
        assert_eq!(s.auth.as_deref(), Some("Bearer the-join-secret"));
        let body: RegisterRequest = serde_json::from_str(&s.body).unwrap();
        assert_eq!(body, reg());
    }

    #[tokio::test]
    async fn register_keeps_the_issued_credential_and_every_node_call_carries_it() {
        let (c, seen) = mock(
            200,
            r#"{"node_id":"n1","role":"manager","target_managers":3,"phase":"open","credential":"cred-n1"}"#,
        )
        .await;
        // Nothing held yet: the first registration carries no credential.
        c.register(&reg()).await.unwrap();
        assert_eq!(c.credential("n1").unwrap().expose(), "cred-n1");
        assert!(c.credential("n2").is_none());
        let _ = c.claim("n1", Duration::from_secs(30)).await;
        let _ = c.renew("n1", 1, Duration::from_secs(30)).await;
        let _ = c.wait_join("n1", Duration::ZERO).await;
        let _ = c.put_doc("n1", "drains", 0, &serde_json::json!({})).await;
        let _ = c.status().await;
        let _ = c.get_doc("drains", None, Duration::ZERO).await;
        let _ = c.claim("n2", Duration::from_secs(30)).await;
        let _ = c
            .reset(
                &ResetRequest {
                    node_id: "n1".into(),
                    swarm_id: "s".into(),
                    reason: String::new(),
                },
                Some(&Secret::new("op-cred")),
            )
            .await;
        let s = seen.lock().unwrap().clone();
        assert_eq!(s[0].credential, None);
        for x in &s[1..5] {
            assert_eq!(x.credential.as_deref(), Some("cred-n1"), "{x:?}");
            assert!(!x.path_query.contains("cred-"), "{x:?}");
        }
        // The document write names its writer.
        let w: DocumentWrite = serde_json::from_str(&s[4].body).unwrap();
        assert_eq!(w.node_id, "n1");
        // Reads carry none; another node id gets none; a reset carries the operator's only.
        assert_eq!(s[5].credential, None);
        assert_eq!(s[6].credential, None);
        assert_eq!(s[7].credential, None);
        assert_eq!(
            (s[8].credential.as_deref(), s[8].operator.as_deref()),
            (None, Some("op-cred"))
        );
        assert_eq!(s[8].path_query, "/v1/clusters/prod/reset");
        // A credential set from the state dir is presented too.
        c.set_credential("n2", Secret::new("cred-n2"));
        let _ = c.claim("n2", Duration::from_secs(30)).await;
        assert_eq!(
            seen.lock().unwrap()[9].credential.as_deref(),
            Some("cred-n2")
        );
        // Debug output of the client's credentials is redacted.
        assert!(!format!("{:?}", c.credentials).contains("cred-"));
    }

    #[tokio::test]
    async fn rulebook_403s_keep_their_code() {
        for code in [
            Code::BadNodeCredential,
            Code::OperatorRequired,
            Code::QuotaExceeded,
        ] {
            let (c, _) = mock(403, body(code.as_str())).await;
            let e = c.register(&reg()).await.unwrap_err();
            assert_eq!(e.code(), Some(code), "{e}");
            assert!(matches!(e, RendezvousError::Rejected { .. }), "{e}");
        }
        let (c, _) = mock(403, body("forbidden")).await;
        assert!(matches!(
            c.register(&reg()).await.unwrap_err(),
            RendezvousError::Unauthorized(_)
        ));
    }

    #[tokio::test]
    async fn routes_of_every_call() {
        let (c, seen) = mock(200, r#"{"granted":true,"phase":"claimed","lease":null}"#).await;
        c.claim("n1", Duration::from_secs(30)).await.unwrap();
        c.renew("n1", 7, Duration::from_secs(30)).await.unwrap();
        let s = seen.lock().unwrap().clone();
        assert_eq!(s[0].path_query, "/v1/clusters/prod/claim");
        assert!(s[0].body.contains("\"ttl_ms\":30000"), "{}", s[0].body);
        assert_eq!(s[1].path_query, "/v1/clusters/prod/claim/renew");
        assert!(s[1].body.contains("\"fencing_token\":7"), "{}", s[1].body);

        let (c, seen) = mock(200, r#"{"phase":"open","lease":null,"join":null}"#).await;
        let r = c
            .wait_join("n1", Duration::from_millis(2500))
            .await
            .unwrap();
        assert!(r.join.is_none());
        assert_eq!(
            seen.lock().unwrap()[0].path_query,
            "/v1/clusters/prod/join?node_id=n1&wait=3"
        );
    }

    #[tokio::test]
    async fn sync_and_adopt_post_their_routes_and_map_errors_like_publish() {
        let (c, seen) = mock(
            200,
            r#"{"pruned":["gone"],"manager_count":3,"node_count":5,"changed":true}"#,
        )
        .await;
        let sync = SyncRequest {
            node_id: "n1".into(),
            swarm_id: "s".into(),
            manager_addrs: vec!["198.18.0.1:2377".into()],
            managers: 3,
            members: vec![swarmstrap_wire::Member {
                node_id: "n1".into(),
                role: Role::Manager,
            }],
        };
        let r = c.sync(&sync).await.unwrap();
        assert_eq!(r.pruned, ["gone"]);
        let s = seen.lock().unwrap()[0].clone();
        assert_eq!(
            (s.method.as_str(), s.path_query.as_str()),
            ("POST", "/v1/clusters/prod/sync")
        );
        assert_eq!(s.auth.as_deref(), Some("Bearer the-join-secret"));
        assert_eq!(serde_json::from_str::<SyncRequest>(&s.body).unwrap(), sync);

        let (c, seen) = mock(
            200,
            r#"{"adopted":true,"fencing_token":9,"phase":"formed"}"#,
        )
        .await;
        let adopt = AdoptRequest {
            node_id: "n1".into(),
            hostname: "h1".into(),
            advertise_addr: "198.18.0.1".into(),
            swarm_id: "s".into(),
            ca_digest: format!("sha256:{}", "ab".repeat(32)),
            manager_addrs: vec!["198.18.0.1:2377".into()],
            manager_token: Secret::new("SWMTKN-1-m"),
            worker_token: Secret::new("SWMTKN-1-w"),
            managers: 3,
        };
        let r = c.adopt(&adopt).await.unwrap();
        assert!(r.adopted && r.fencing_token == 9);
        let s = seen.lock().unwrap()[0].clone();
        assert_eq!(s.path_query, "/v1/clusters/prod/adopt");
        assert_eq!(
            serde_json::from_str::<AdoptRequest>(&s.body).unwrap(),
            adopt
        );

        for (status, code, conflict) in [
            (409, Code::SwarmMismatch, true),
            (409, Code::SwarmRetired, true),
            (409, Code::AwaitingAdoption, true),
            (400, Code::InvalidRequest, false),
        ] {
            let (c, _) = mock(status, body(code.as_str())).await;
            for e in [
                c.sync(&sync).await.unwrap_err(),
                c.adopt(&adopt).await.unwrap_err(),
            ] {
                assert_eq!(e.code(), Some(code), "{e}");
                assert_eq!(
                    matches!(e, RendezvousError::Conflict { .. }),
                    conflict,
                    "{e}"
                );
                assert!(!e.to_string().contains("SWMTKN"), "{e}");
            }
        }
        let (c, _) = mock(401, body("unauthorized")).await;
        assert!(matches!(
            c.adopt(&adopt).await.unwrap_err(),
            RendezvousError::Unauthorized(_)
        ));
        let (c, _) = mock(503, body("storage_unavailable")).await;
        assert!(c.sync(&sync).await.unwrap_err().is_transient());
    }

    #[tokio::test]
    async fn long_poll_outlives_the_ordinary_timeout() {
        // The server answers after 3 s; ordinary calls time out after 2 s, a long-poll with
        // wait=3 gets 3 s + margin.
        let app = Router::new().fallback(|| async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            (
                [("content-type", "application/json")],
                r#"{"phase":"claimed","lease":null,"join":null}"#,
            )
        });
        let base = crate::cloud::mock::serve(app).await;
        let c = client(&base, CoordinatorTls::PlainHttp);
        let r = c.wait_join("n1", Duration::from_secs(3)).await.unwrap();
        assert_eq!(r.phase, Phase::Claimed);
        let err = c.status().await.unwrap_err();
        assert!(err.is_transient(), "{err}");
    }

    fn body(code: &str) -> &'static str {
        Box::leak(format!(r#"{{"error":"{code}","message":"m-{code}"}}"#).into_boxed_str())
    }

    #[tokio::test]
    async fn errors_map_by_status_and_code() {
        let (c, _) = mock(401, body("unauthorized")).await;
        let e = c.register(&reg()).await.unwrap_err();
        assert!(matches!(e, RendezvousError::Unauthorized(_)), "{e}");
        assert!(!e.to_string().contains("the-join-secret"));

        let (c, _) = mock(404, body(Code::UnknownCluster.as_str())).await;
        assert!(matches!(
            c.register(&reg()).await.unwrap_err(),
            RendezvousError::Unauthorized(_)
        ));

        let (c, _) = mock(409, body(Code::StaleFencingToken.as_str())).await;
        match c.renew("n1", 1, Duration::from_secs(1)).await.unwrap_err() {
            e @ RendezvousError::Conflict { .. } => {
                assert_eq!(e.code(), Some(Code::StaleFencingToken), "{e}")
            }
            e => panic!("{e}"),
        }

        let (c, _) = mock(404, body(Code::NodeNotRegistered.as_str())).await;
        assert!(matches!(
            c.wait_join("n1", Duration::ZERO).await.unwrap_err(),
            RendezvousError::Rejected { .. }
        ));

        for (status, code) in [
            (503, "storage_unavailable"),
            (429, "too_many_auth_failures"),
            (500, "x"),
        ] {
            let (c, _) = mock(status, body(code)).await;
            assert!(c.status().await.unwrap_err().is_transient(), "{status}");
        }
        let (c, _) = mock(502, "<html>bad gateway</html>").await;
        let e = c.status().await.unwrap_err();
        assert!(
            e.is_transient() && e.to_string().contains("http_502"),
            "{e}"
        );

        let (c, _) = mock(400, body(Code::InvalidRequest.as_str())).await;
        assert!(matches!(
            c.register(&reg()).await.unwrap_err(),
            RendezvousError::Rejected { .. }
        ));

        let (c, _) = mock(200, r#"{"unexpected":true}"#).await;
        assert!(matches!(
            c.status().await.unwrap_err(),
            RendezvousError::Rejected { .. }
        ));
    }

    #[tokio::test]
    async fn nothing_listening_is_transient() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let c = client(&format!("http://{addr}"), CoordinatorTls::PlainHttp);
        assert!(c.status().await.unwrap_err().is_transient());
    }

    // ---- TLS: a real rustls server with rcgen certificates.

    const STATUS_JSON: &str = r#"{"name":"prod","phase":"formed","target_managers":3,"lease":null,"swarm_id":"s","ca_digest":"sha256:00","manager_addrs":[],"nodes":[],"formed_at_ms":1,"resets":0}"#;

    type Der = rustls::pki_types::CertificateDer<'static>;
    type Key = rustls::pki_types::PrivateKeyDer<'static>;

    /// Serve one canned HTTP response per connection over TLS.
    async fn tls_server(chain: Vec<Der>, key: Key) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{STATUS_JSON}",
                        STATUS_JSON.len()
                    );
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        format!("https://{addr}")
    }

    fn self_signed() -> (Der, Key, String) {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let key = Key::Pkcs8(ck.signing_key.serialize_der().into());
        (ck.cert.der().clone(), key, ck.cert.pem())
    }

    #[tokio::test]
    async fn pinned_certificate_is_trusted_and_others_are_not() {
        let (cert, key, _) = self_signed();
        let pin = swarmstrap_wire::pin::cert_sha256(cert.as_ref());
        let base = tls_server(vec![cert], key).await;

        let ok = client(&base, CoordinatorTls::Pinned(pin));
        assert_eq!(ok.status().await.unwrap().phase, Phase::Formed);

        let wrong = client(&base, CoordinatorTls::Pinned([7u8; 32]));
        let e = wrong.status().await.unwrap_err();
        assert!(
            !e.is_transient(),
            "a wrong pin is a configuration error: {e}"
        );
        assert!(e.to_string().contains("tls_fingerprint"), "{e}");

        // A self-signed certificate is in no CA store either.
        let system = client(&base, CoordinatorTls::SystemRoots);
        assert!(system.status().await.is_err());
    }

    #[tokio::test]
    async fn ca_file_trusts_certificates_it_signed() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let srv_key = KeyPair::generate().unwrap();
        let srv_cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&srv_key, &issuer)
            .unwrap();
        let key = Key::Pkcs8(srv_key.serialize_der().into());
        let base = tls_server(vec![srv_cert.der().clone()], key).await;

        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        let c = client(&base, CoordinatorTls::CaFile(ca_file));
        assert_eq!(c.status().await.unwrap().phase, Phase::Formed);

        let other = dir.path().join("other.pem");
        std::fs::write(&other, self_signed().2).unwrap();
        let c = client(&base, CoordinatorTls::CaFile(other));
        assert!(!c.status().await.unwrap_err().is_transient());

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = CoordinatorClient::new(
            &CoordinatorConfig {
                url: base,
                tls: CoordinatorTls::CaFile(empty),
            },
            "prod",
            Secret::new("s"),
            Duration::from_secs(1),
        )
        .err()
        .expect("an empty CA file is refused");
        assert!(err.to_string().contains("empty.pem"), "{err}");
    }
}
