//! The local Docker engine, behind one trait so the bootstrap state machine can be tested with
//! a fake. [`BollardEngine`] is the real implementation (bollard over the unix socket or tcp of
//! `docker_host`, API version negotiated on first contact: dockerd 20.10 speaks 1.41).

use async_trait::async_trait;
use bollard::models::{
    LocalNodeState, NodeSpecRoleEnum, NodeState, Reachability, SwarmInitRequest, SwarmJoinRequest,
};
use bollard::query_parameters::LeaveSwarmOptionsBuilder;
use bollard::Docker;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use std::time::Duration;
use swarmstrap_wire::{error_chain, Role, Secret};
use tokio::sync::Mutex;

/// Port of the swarm control plane.
pub const SWARM_PORT: u16 = 2377;
/// Where swarm listens on every node.
pub const LISTEN_ADDR: &str = "0.0.0.0:2377";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalSwarmState {
    Inactive,
    Pending,
    Active,
    Locked,
    Error,
}

impl LocalSwarmState {
    pub fn as_str(self) -> &'static str {
        match self {
            LocalSwarmState::Inactive => "inactive",
            LocalSwarmState::Pending => "pending",
            LocalSwarmState::Active => "active",
            LocalSwarmState::Locked => "locked",
            LocalSwarmState::Error => "error",
        }
    }
}

/// What `docker info` says about the local swarm membership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalSwarm {
    pub state: LocalSwarmState,
    /// Docker's id of this node in the swarm.
    pub node_id: Option<String>,
    pub node_addr: Option<String>,
    /// True on managers.
    pub control_available: bool,
    /// Swarm id (managers only).
    pub cluster_id: Option<String>,
    /// `ip:port` of the managers this node knows.
    pub remote_managers: Vec<String>,
    pub managers: Option<u64>,
    pub nodes: Option<u64>,
    pub error: Option<String>,
}

impl LocalSwarm {
    pub fn inactive() -> LocalSwarm {
        LocalSwarm {
            state: LocalSwarmState::Inactive,
            node_id: None,
            node_addr: None,
            control_available: false,
            cluster_id: None,
            remote_managers: vec![],
            managers: None,
            nodes: None,
            error: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineInfo {
    /// The engine's host name (`docker info` Name).
    pub hostname: String,
    pub server_version: String,
    pub swarm: LocalSwarm,
    /// `docker info` DockerRootDir (the swarm's node certificates are under `swarm/`).
    pub docker_root_dir: Option<String>,
}

/// `docker swarm inspect` (managers only), reduced to what the bootstrap needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwarmDetails {
    pub id: String,
    /// `sha256:<hex>` of the root CA certificate (DER).
    pub ca_digest: String,
    pub worker_token: Secret,
    pub manager_token: Secret,
}

#[derive(Clone, Debug)]
pub struct JoinRequest {
    /// `ip:2377` of a manager.
    pub remote_addr: String,
    pub token: Secret,
    pub advertise_addr: String,
}

/// One entry of `docker node ls` (managers only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwarmNode {
    pub id: String,
    pub hostname: String,
    pub role: Role,
    pub leader: bool,
    /// Manager reachability (managers only).
    pub reachable: Option<bool>,
    /// `ready`, `down`, …
    pub state: String,
    pub addr: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the Docker engine at {host} is not reachable: {message}")]
    Unreachable { host: String, message: String },
    #[error("the Docker engine at {host} answered {status}: {message}")]
    Api {
        host: String,
        status: u16,
        message: String,
    },
    #[error("unexpected answer from the Docker engine at {host}: {message}")]
    Protocol { host: String, message: String },
}

impl EngineError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, EngineError::Unreachable { .. })
    }

    /// The engine's message (Api errors), or the whole text.
    pub fn message(&self) -> String {
        match self {
            EngineError::Api { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    /// "This node is already part of a swarm" (join/init on a node in a swarm).
    pub fn is_already_in_swarm(&self) -> bool {
        self.message().contains("already part of a swarm")
    }

    /// Errors a concurrent manager join or a busy engine produces and that go away by
    /// retrying (raft still settling, timeouts, engine restarting).
    pub fn is_transient(&self) -> bool {
        match self {
            EngineError::Unreachable { .. } => true,
            EngineError::Protocol { .. } => false,
            EngineError::Api {
                status, message, ..
            } => {
                let m = message.to_ascii_lowercase();
                *status >= 500
                    || m.contains("rpc error")
                    || m.contains("deadline exceeded")
                    || m.contains("timeout")
                    || m.contains("try again")
                    || m.contains("unavailable")
            }
        }
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;

/// The local Docker engine.
#[async_trait]
pub trait Engine: Send + Sync {
    /// Where the engine is (for messages), e.g. `unix:///var/run/docker.sock`.
    fn describe(&self) -> String;
    async fn info(&self) -> Result<EngineInfo>;
    /// Managers only.
    async fn inspect_swarm(&self) -> Result<SwarmDetails>;
    /// `swarm init` listening on [`LISTEN_ADDR`]; returns this node's id in the new swarm
    /// (what the engine answers; the swarm id comes from [`Engine::inspect_swarm`]).
    async fn init(&self, advertise_addr: &str) -> Result<String>;
    /// `swarm join` through one manager, listening on [`LISTEN_ADDR`].
    async fn join(&self, req: &JoinRequest) -> Result<()>;
    async fn leave(&self, force: bool) -> Result<()>;
    /// Managers only.
    async fn nodes(&self) -> Result<Vec<SwarmNode>>;
}

/// `sha256:<hex>` of the first certificate in a PEM trust root (Docker's TLSInfo.TrustRoot).
pub fn ca_digest_from_pem(pem: &str) -> std::result::Result<String, String> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("the swarm trust root is not a PEM certificate: {e}"))?;
    let digest: [u8; 32] = Sha256::digest(der.as_ref()).into();
    Ok(swarmstrap_wire::format_fingerprint(&digest))
}

/// Replace swarm join tokens (`SWMTKN-…`) in an engine message, so none reaches a log line.
pub fn redact_tokens(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find("SWMTKN-") {
        out.push_str(&rest[..i]);
        out.push_str("SWMTKN-<redacted>");
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// The real engine, through bollard. Connects lazily (the socket may not exist yet when the
/// agent starts) and negotiates the API version on first contact.
pub struct BollardEngine {
    host: String,
    timeout: Duration,
    client: Mutex<Option<Docker>>,
}

impl BollardEngine {
    /// `timeout` bounds every request (a manager join can take tens of seconds, `status` wants
    /// an answer within ~2 s).
    pub fn new(host: &str, timeout: Duration) -> BollardEngine {
        BollardEngine {
            host: host.to_string(),
            timeout,
            client: Mutex::new(None),
        }
    }

    /// The bollard client (connected and version-negotiated once, then reused).
    pub async fn client(&self) -> Result<Docker> {
        let mut guard = self.client.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let secs = self.timeout.as_secs().max(1);
        let version = bollard::API_DEFAULT_VERSION;
        let docker = if self.host.starts_with("unix://") {
            Docker::connect_with_unix(&self.host, secs, version)
        } else {
            Docker::connect_with_http(&self.host, secs, version)
        }
        .map_err(|e| self.map_err(e))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| self.map_err(e))?;
        *guard = Some(docker.clone());
        Ok(docker)
    }

    pub fn map_err(&self, e: bollard::errors::Error) -> EngineError {
        use bollard::errors::Error as B;
        let host = self.host.clone();
        match e {
            B::DockerResponseServerError {
                status_code,
                message,
            } => EngineError::Api {
                host,
                status: status_code,
                message: redact_tokens(message.trim()),
            },
            B::SocketNotFoundError(path) => EngineError::Unreachable {
                host,
                message: format!("no socket at {path} (is dockerd running?)"),
            },
            B::RequestTimeoutError => EngineError::Unreachable {
                host,
                message: format!("no answer within {:?}", self.timeout),
            },
            e @ (B::HyperLegacyError { .. } | B::IOError { .. } | B::HyperResponseError { .. }) => {
                EngineError::Unreachable {
                    host,
                    message: redact_tokens(&error_chain(&e)),
                }
            }
            other => EngineError::Protocol {
                host,
                message: redact_tokens(&error_chain(&other)),
            },
        }
    }
}

#[async_trait]
impl Engine for BollardEngine {
    fn describe(&self) -> String {
        self.host.clone()
    }

    async fn info(&self) -> Result<EngineInfo> {
        let c = self.client().await?;
        let info = c.info().await.map_err(|e| self.map_err(e))?;
        let swarm = match info.swarm {
            None => LocalSwarm::inactive(),
            Some(s) => LocalSwarm {
                state: match s.local_node_state {
                    Some(LocalNodeState::ACTIVE) => LocalSwarmState::Active,
                    Some(LocalNodeState::PENDING) => LocalSwarmState::Pending,
                    Some(LocalNodeState::LOCKED) => LocalSwarmState::Locked,
                    Some(LocalNodeState::ERROR) => LocalSwarmState::Error,
                    _ => LocalSwarmState::Inactive,
                },
                node_id: s.node_id.filter(|v| !v.is_empty()),
                node_addr: s.node_addr.filter(|v| !v.is_empty()),
                control_available: s.control_available.unwrap_or(false),
                cluster_id: s.cluster.and_then(|c| c.id).filter(|v| !v.is_empty()),
                remote_managers: s
                    .remote_managers
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|p| p.addr)
                    .collect(),
                managers: s.managers.and_then(|n| u64::try_from(n).ok()),
                nodes: s.nodes.and_then(|n| u64::try_from(n).ok()),
                error: s.error.filter(|v| !v.is_empty()),
            },
        };
        Ok(EngineInfo {
            hostname: info.name.unwrap_or_default(),
            server_version: info.server_version.unwrap_or_default(),
            swarm,
            docker_root_dir: info.docker_root_dir.filter(|v| !v.is_empty()),
        })
    }

    async fn inspect_swarm(&self) -> Result<SwarmDetails> {
        let c = self.client().await?;
        let s = c.inspect_swarm().await.map_err(|e| self.map_err(e))?;
        let protocol = |message: &str| EngineError::Protocol {
            host: self.host.clone(),
            message: message.to_string(),
        };
        let id = s.id.ok_or_else(|| protocol("swarm inspect has no ID"))?;
        let pem = s
            .tls_info
            .and_then(|t| t.trust_root)
            .ok_or_else(|| protocol("swarm inspect has no TLSInfo.TrustRoot"))?;
        let ca_digest = ca_digest_from_pem(&pem).map_err(|m| protocol(&m))?;
        let tokens = s
            .join_tokens
            .ok_or_else(|| protocol("swarm inspect has no JoinTokens"))?;
        Ok(SwarmDetails {
            id,
            ca_digest,
            worker_token: Secret::new(tokens.worker.unwrap_or_default()),
            manager_token: Secret::new(tokens.manager.unwrap_or_default()),
        })
    }

    async fn init(&self, advertise_addr: &str) -> Result<String> {
        let c = self.client().await?;
        c.init_swarm(SwarmInitRequest {
            advertise_addr: Some(advertise_addr.to_string()),
            listen_addr: Some(LISTEN_ADDR.to_string()),
            ..Default::default()
        })
        .await
        .map_err(|e| self.map_err(e))
    }

    async fn join(&self, req: &JoinRequest) -> Result<()> {
        let c = self.client().await?;
        c.join_swarm(SwarmJoinRequest {
            advertise_addr: Some(req.advertise_addr.clone()),
            listen_addr: Some(LISTEN_ADDR.to_string()),
            remote_addrs: Some(vec![req.remote_addr.clone()]),
            join_token: Some(req.token.expose().to_string()),
            ..Default::default()
        })
        .await
        .map_err(|e| self.map_err(e))
    }

    async fn leave(&self, force: bool) -> Result<()> {
        let c = self.client().await?;
        c.leave_swarm(Some(
            LeaveSwarmOptionsBuilder::default().force(force).build(),
        ))
        .await
        .map_err(|e| self.map_err(e))
    }

    async fn nodes(&self) -> Result<Vec<SwarmNode>> {
        let c = self.client().await?;
        let nodes = c
            .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
            .await
            .map_err(|e| self.map_err(e))?;
        Ok(nodes
            .into_iter()
            .map(|n| {
                let ms = n.manager_status;
                SwarmNode {
                    id: n.id.unwrap_or_default(),
                    hostname: n.description.and_then(|d| d.hostname).unwrap_or_default(),
                    role: match n.spec.and_then(|s| s.role) {
                        Some(NodeSpecRoleEnum::MANAGER) => Role::Manager,
                        _ => Role::Worker,
                    },
                    leader: ms.as_ref().and_then(|m| m.leader).unwrap_or(false),
                    reachable: ms
                        .as_ref()
                        .and_then(|m| m.reachability)
                        .map(|r| r == Reachability::REACHABLE),
                    state: match n.status.as_ref().and_then(|s| s.state) {
                        Some(NodeState::READY) => "ready",
                        Some(NodeState::DOWN) => "down",
                        Some(NodeState::DISCONNECTED) => "disconnected",
                        _ => "unknown",
                    }
                    .to_string(),
                    addr: n.status.and_then(|s| s.addr),
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A P-256 self-signed CA like swarm's; digest computed independently with
    // `openssl x509 -outform der | sha256sum`.
    const TRUST_ROOT: &str = "-----BEGIN CERTIFICATE-----
MIIBejCCASGgAwIBAgIUYiG2rjwiDRwcRAheG1XOiJxfdYAwCgYIKoZIzj0EAwIw
EzERMA8GA1UEAwwIc3dhcm0tY2EwHhcNMjYxMTIxMjEwNTExWhcNMzYxMTE4MjEw
NTExWjATMREwDwYDVQQDDAhzd2FybS1jYTBZMBMGByqGSM49AgEGCCqGSM49AwEH
A0IABGkppX5yeEbJP86opQZiJX6tokAtlotjMQcepptTAIgiQlEQKGXdjDY9Wv40
MYrgfkZINxm796fF9Yrv6vqHUuWjUzBRMB0GA1UdDgQWBBSLp9EYg9h0FcoumfJd
5SFTXSG9hzAfBgNVHSMEGDAWgBSLp9EYg9h0FcoumfJd5SFTXSG9hzAPBgNVHRMB
Af8EBTADAQH/MAoGCCqGSM49BAMCA0cAMEQCIHtrofoEMCPzX8IIfvbnd3eY3Lya
BQyyKesFEReYOiQYAiBQgerD6PeuK9zfo8xuM/9zjB7CGLcSYsrCahjFvzRraw==
-----END CERTIFICATE-----
";
    const TRUST_ROOT_SHA256: &str =
        "sha256:255f91a48423228fa062d61f54fb61d4c315408dc731c5bbe6fc8cfe58189aa0";

    #[test]
    fn ca_digest_is_sha256_of_der() {
        assert_eq!(ca_digest_from_pem(TRUST_ROOT).unwrap(), TRUST_ROOT_SHA256);
        assert!(ca_digest_from_pem("not pem").is_err());
    }

    #[test]
    fn tokens_are_redacted() {
        let m = "invalid join token SWMTKN-1-3pu6hszjas19xyp7ghgosyx9k8atbfcr8p2is99znpy26u2lkl-1awxwuwd3z9j1z3puu7rcgdbx, retry";
        let r = redact_tokens(m);
        assert!(!r.contains("3pu6"), "{r}");
        assert_eq!(r, "invalid join token SWMTKN-<redacted>, retry");
        assert_eq!(redact_tokens("no token"), "no token");
    }

    #[test]
    fn transient_classification() {
        let api = |status, m: &str| EngineError::Api {
            host: "h".into(),
            status,
            message: m.into(),
        };
        assert!(api(500, "rpc error: code = Unavailable").is_transient());
        assert!(api(400, "context deadline exceeded").is_transient());
        assert!(!api(400, "invalid join token").is_transient());
        assert!(api(503, "This node is already part of a swarm.").is_already_in_swarm());
    }

    #[tokio::test]
    async fn missing_socket_is_unreachable() {
        let e = BollardEngine::new("unix:///nonexistent/docker.sock", Duration::from_secs(2));
        let err = e.info().await.unwrap_err();
        assert!(err.is_unreachable(), "{err}");
        assert!(
            err.to_string().contains("/nonexistent/docker.sock"),
            "{err}"
        );
    }
}
