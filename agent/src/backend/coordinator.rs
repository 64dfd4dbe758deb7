//! The coordinator backend: [`Rendezvous`] over the coordinator's `/v1` HTTPS API (reqwest +
//! rustls). The join secret is the bearer token. TLS trust is a certificate pin
//! (`swarmstrap_wire::pin`), a CA file, or the system roots; plain http only when the URL says
//! so (labs).

use crate::config::{CoordinatorConfig, CoordinatorTls};
use async_trait::async_trait;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;
use swarmstrap_wire::rendezvous::{Rendezvous, RendezvousError, Result};
use swarmstrap_wire::{
    ClaimRequest, ClaimResponse, ClusterStatus, Document, DocumentWrite, ErrorBody, JoinResponse,
    PublishRequest, PublishResponse, RegisterRequest, RegisterResponse, RenewRequest, Secret,
    API_PREFIX, MAX_WAIT_SECS,
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
}

impl CoordinatorClient {
    /// `request_timeout` bounds every call except long-polls (which get their wait + a margin).
    pub fn new(
        cfg: &CoordinatorConfig,
        cluster: &str,
        secret: Secret,
        request_timeout: Duration,
    ) -> std::result::Result<CoordinatorClient, ClientError> {
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

    async fn call<T: DeserializeOwned>(&self, req: RequestBuilder, url: &str) -> Result<T> {
        let resp = req
            .send()
            .await
            .map_err(|e| RendezvousError::Transient(format!("{url}: {}", error_chain(&e))))?;
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

    async fn post<B: Serialize, T: DeserializeOwned>(&self, tail: &str, body: &B) -> Result<T> {
        let url = self.url(tail);
        let req = self
            .request(Method::POST, &url, self.request_timeout)
            .json(body);
        self.call(req, &url).await
    }
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
    match s {
        401 | 403 => RendezvousError::Unauthorized(format!(
            "the coordinator rejected the join secret for cluster {cluster} ({message}; HTTP {s} \
             from {url})"
        )),
        404 if code.contains("cluster") => RendezvousError::Unauthorized(format!(
            "the coordinator does not know cluster {cluster} ({message}; HTTP 404 from {url})"
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

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
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

    async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse> {
        self.post("/nodes", req).await
    }

    async fn claim(&self, node_id: &str, ttl: Duration) -> Result<ClaimResponse> {
        let body = ClaimRequest {
            node_id: node_id.to_string(),
            ttl_ms: ttl.as_millis() as u64,
        };
        self.post("/claim", &body).await
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
        self.post("/claim/renew", &body).await
    }

    async fn publish(&self, req: &PublishRequest) -> Result<PublishResponse> {
        self.post("/publish", req).await
    }

    async fn wait_join(&self, node_id: &str, wait: Duration) -> Result<JoinResponse> {
        let secs = wait_secs(wait);
        let url = self.url(&format!("/join?node_id={node_id}&wait={secs}"));
        let req = self.request(
            Method::GET,
            &url,
            Duration::from_secs(secs) + LONG_POLL_MARGIN,
        );
        self.call(req, &url).await
    }

    async fn status(&self) -> Result<ClusterStatus> {
        let url = self.url("");
        let req = self.request(Method::GET, &url, self.request_timeout);
        self.call(req, &url).await
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
        name: &str,
        expected_version: u64,
        body: &serde_json::Value,
    ) -> Result<Document> {
        let url = self.url(&format!("/docs/{name}"));
        let req = self
            .request(Method::PUT, &url, self.request_timeout)
            .json(&DocumentWrite {
                expected_version,
                body: body.clone(),
            });
        self.call(req, &url).await
    }
}
