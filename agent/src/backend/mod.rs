//! Rendezvous backends. The trait is `swarmstrap_wire::rendezvous::Rendezvous`; this module is
//! the single place that picks the implementation by name.

pub mod coordinator;

use crate::config::{BackendKind, Config};
use crate::fsutil::{self, FsError};
use crate::state::{self, StateError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use swarmstrap_etcd::EtcdRendezvous;
use swarmstrap_secrets_manager::SecretsManagerRendezvous;
use swarmstrap_wire::rendezvous::{Rendezvous, RendezvousError, Result as RResult};
use swarmstrap_wire::rules::Code;
use swarmstrap_wire::{
    AdoptRequest, AdoptResponse, ClaimResponse, ClusterStatus, Document, JoinResponse,
    PublishRequest, PublishResponse, RegisterRequest, RegisterResponse, RequestedRole,
    ResetRequest, Role, Secret, SyncRequest, SyncResponse,
};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Secret(#[from] FsError),
    #[error(transparent)]
    Coordinator(#[from] coordinator::ClientError),
    #[error("cannot set up the secrets-manager backend")]
    SecretsManager(#[source] RendezvousError),
    #[error("cannot set up the etcd backend")]
    Etcd(#[source] RendezvousError),
    #[error(transparent)]
    State(#[from] StateError),
}

impl BackendError {
    /// Opening again later may succeed (an etcd member electing a leader, not reachable yet).
    pub fn is_transient(&self) -> bool {
        match self {
            BackendError::Etcd(e) | BackendError::SecretsManager(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// Open the configured backend. `request_timeout` bounds each ordinary coordinator call
/// (long-polls get their wait plus a margin). The coordinator authenticates with the join
/// secret (read here from `join_secret_file`); Secrets Manager with the instance's AWS
/// credentials (no join secret).
///
/// The node's own credential: loaded from the state dir (when this node has one) and handed to
/// the backend before any call; one the backend issues later (`register`, `adopt`) is written
/// to the state dir ([`Persisted`]).
pub async fn open(
    cfg: &Config,
    request_timeout: Duration,
) -> Result<Arc<dyn Rendezvous>, BackendError> {
    let inner = open_inner(cfg, request_timeout).await?;
    if let Some(id) = state::read_node_id(&cfg.state_dir) {
        if let Some(c) = state::load_credential(&cfg.state_dir, &id)? {
            inner.set_credential(&id, c);
        }
    }
    Ok(Arc::new(Persisted {
        inner,
        state_dir: cfg.state_dir.clone(),
    }))
}

async fn open_inner(
    cfg: &Config,
    request_timeout: Duration,
) -> Result<Arc<dyn Rendezvous>, BackendError> {
    match cfg.backend {
        BackendKind::Coordinator => {
            let c = cfg
                .coordinator
                .as_ref()
                .expect("config validation requires [coordinator] for this backend");
            if c.tls == crate::config::CoordinatorTls::PlainHttp {
                tracing::warn!(
                    "the coordinator URL {} is plain http (insecure_http = true): the join \
                     secret and this node's credential travel in clear text; use https outside \
                     a lab",
                    c.url
                );
            }
            let secret = fsutil::read_secret_file(&cfg.join_secret_file)?;
            Ok(Arc::new(coordinator::CoordinatorClient::new(
                c,
                &cfg.cluster,
                secret,
                request_timeout,
            )?))
        }
        BackendKind::SecretsManager => {
            let backend = SecretsManagerRendezvous::new(cfg.secrets_manager.clone())
                .await
                .map_err(BackendError::SecretsManager)?;
            Ok(Arc::new(backend))
        }
        BackendKind::Etcd => {
            let c = cfg
                .etcd
                .as_ref()
                .expect("config validation requires [etcd] for this backend");
            if c.endpoints.iter().any(|e| e.starts_with("http://")) {
                tracing::warn!(
                    "an etcd endpoint is plain http: the etcd password and this node's \
                     credential travel in clear text; use https outside a lab"
                );
            }
            let backend = EtcdRendezvous::new(c.clone())
                .await
                .map_err(BackendError::Etcd)?;
            Ok(Arc::new(backend))
        }
    }
}

/// What the operator should check when the backend refuses access.
pub fn unauthorized_hint(cfg: &Config) -> String {
    match cfg.backend {
        BackendKind::Coordinator => format!(
            "the join secret was rejected for cluster {}: check {} (and the cluster name)",
            cfg.cluster,
            cfg.join_secret_file.display()
        ),
        BackendKind::SecretsManager => format!(
            "access to cluster {} was denied: check the instance's AWS credentials and its IAM \
             permissions on secret {}",
            cfg.cluster,
            cfg.secrets_manager.resolved_secret_name()
        ),
        BackendKind::Etcd => match cfg.etcd.as_ref() {
            Some(e) => format!(
                "etcd refused access for cluster {}: check the etcd user {} and its password \
                 file, and that the user's role grants readwrite on the prefix {} (etcd/README.md \
                 \"Security\")",
                cfg.cluster,
                e.user.as_deref().unwrap_or("(none: no [etcd] user set)"),
                e.resolved_prefix()
            ),
            None => format!("etcd refused access for cluster {}", cfg.cluster),
        },
    }
}

/// A backend whose issued node credentials are kept in the state dir
/// ([`state::save_credential`], mode 0600) the moment `register` or `adopt` returns one, so a
/// restarted agent presents it again. A document write refused with `node_not_registered`
/// (the rendezvous lost its registrations: a wiped coordinator, a deleted secret) registers
/// this node again from its state file, with the same credential, and is tried once more.
/// Everything else is passed through.
pub struct Persisted {
    pub inner: Arc<dyn Rendezvous>,
    pub state_dir: PathBuf,
}

impl Persisted {
    /// Register `node_id` again as its state file describes it (same role as its engine had).
    async fn register_again(&self, node_id: &str) -> bool {
        let Ok(Some(st)) = state::StateStore::new(&self.state_dir).load() else {
            return false;
        };
        let (Some(hostname), Some(addr), Some(role)) =
            (st.hostname.clone(), st.advertise_addr.clone(), st.role)
        else {
            return false;
        };
        if st.node_id != node_id {
            return false;
        }
        tracing::warn!(
            "{} no longer knows node {node_id} (it lost its registrations): registering it again",
            self.inner.describe()
        );
        let req = RegisterRequest {
            node_id: node_id.to_string(),
            hostname,
            advertise_addr: addr,
            role: match role {
                Role::Manager => RequestedRole::Manager,
                Role::Worker => RequestedRole::Worker,
            },
            joined_through: st.joined_through.clone(),
            labels: None,
        };
        match self.register(&req).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!("registering node {node_id} again failed: {e}");
                false
            }
        }
    }

    /// After an accepted registration or adoption: the credential it issued, else the one
    /// presented (accepted, so confirmed).
    fn keep(&self, node_id: &str, issued: Option<&Secret>) {
        let held = self.inner.credential(node_id);
        if let Some(c) = issued.or(held.as_ref()) {
            if let Err(e) = state::save_credential(&self.state_dir, node_id, c) {
                // The client holds it for this run; after a restart this node id is lost and
                // the agent registers under a new one.
                tracing::error!(
                    "cannot keep this node's rendezvous credential in {}: {e}",
                    self.state_dir.display()
                );
            }
        }
    }
}

/// `r`, counted in the agent's metrics (`swarm_agent_backend_errors_total`) when it failed.
fn counted<T>(operation: &'static str, r: RResult<T>) -> RResult<T> {
    if let Err(e) = &r {
        crate::metrics::agent().backend_error(operation, e);
    }
    r
}

#[async_trait::async_trait]
impl Rendezvous for Persisted {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn set_credential(&self, node_id: &str, credential: Secret) {
        self.inner.set_credential(node_id, credential)
    }

    fn credential(&self, node_id: &str) -> Option<Secret> {
        self.inner.credential(node_id)
    }

    async fn register(&self, req: &RegisterRequest) -> RResult<RegisterResponse> {
        let r = counted("register", self.inner.register(req).await)?;
        self.keep(&req.node_id, r.credential.as_ref());
        Ok(r)
    }

    async fn claim(&self, node_id: &str, ttl: Duration) -> RResult<ClaimResponse> {
        counted("claim", self.inner.claim(node_id, ttl).await)
    }

    async fn renew(
        &self,
        node_id: &str,
        fencing_token: u64,
        ttl: Duration,
    ) -> RResult<ClaimResponse> {
        counted("renew", self.inner.renew(node_id, fencing_token, ttl).await)
    }

    async fn publish(&self, req: &PublishRequest) -> RResult<PublishResponse> {
        counted("publish", self.inner.publish(req).await)
    }

    async fn wait_join(&self, node_id: &str, wait: Duration) -> RResult<JoinResponse> {
        counted("wait_join", self.inner.wait_join(node_id, wait).await)
    }

    async fn status(&self) -> RResult<ClusterStatus> {
        counted("status", self.inner.status().await)
    }

    async fn reset(&self, req: &ResetRequest, operator: Option<&Secret>) -> RResult<ClusterStatus> {
        counted("reset", self.inner.reset(req, operator).await)
    }

    async fn request_token_rotation(&self, operator: Option<&Secret>) -> RResult<ClusterStatus> {
        counted(
            "request_token_rotation",
            self.inner.request_token_rotation(operator).await,
        )
    }

    async fn sync(&self, req: &SyncRequest) -> RResult<SyncResponse> {
        counted("sync", self.inner.sync(req).await)
    }

    async fn adopt(&self, req: &AdoptRequest) -> RResult<AdoptResponse> {
        let r = counted("adopt", self.inner.adopt(req).await)?;
        self.keep(&req.node_id, r.credential.as_ref());
        Ok(r)
    }

    async fn get_doc(
        &self,
        name: &str,
        after: Option<u64>,
        wait: std::time::Duration,
    ) -> RResult<Document> {
        counted("get_doc", self.inner.get_doc(name, after, wait).await)
    }

    async fn snapshot(&self) -> RResult<Option<swarmstrap_wire::rendezvous::Snapshot>> {
        counted("snapshot", self.inner.snapshot().await)
    }

    async fn put_doc(
        &self,
        node_id: &str,
        name: &str,
        expected_version: u64,
        body: &serde_json::Value,
    ) -> RResult<Document> {
        let r = match self
            .inner
            .put_doc(node_id, name, expected_version, body)
            .await
        {
            Err(e)
                if e.code() == Some(Code::NodeNotRegistered)
                    && self.register_again(node_id).await =>
            {
                self.inner
                    .put_doc(node_id, name, expected_version, body)
                    .await
            }
            r => r,
        };
        counted("put_doc", r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeBackend;
    use swarmstrap_wire::RequestedRole;

    #[tokio::test]
    async fn an_issued_credential_is_kept_in_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeBackend::new(1);
        let b = Persisted {
            inner: fake.clone(),
            state_dir: dir.path().to_path_buf(),
        };
        let req = RegisterRequest {
            node_id: "n1".into(),
            hostname: "h1".into(),
            advertise_addr: "198.18.0.1".into(),
            role: RequestedRole::Auto,
            joined_through: None,
            labels: None,
        };
        b.register(&req).await.unwrap();
        let kept = state::load_credential(dir.path(), "n1").unwrap().unwrap();
        assert_eq!(Some(kept), fake.credential("n1"));
        // A later registration (no credential issued) leaves the file as it is.
        b.register(&req).await.unwrap();
        assert_eq!(
            state::load_credential(dir.path(), "n1").unwrap(),
            fake.credential("n1")
        );
    }

    #[tokio::test]
    async fn a_document_write_after_the_rendezvous_forgot_the_node_registers_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeBackend::new(1);
        let b = Persisted {
            inner: fake.clone(),
            state_dir: dir.path().to_path_buf(),
        };
        for id in ["m", "w"] {
            b.register(&RegisterRequest {
                node_id: id.into(),
                hostname: id.into(),
                advertise_addr: "198.18.0.1".into(),
                role: RequestedRole::Auto,
                joined_through: None,
                labels: None,
            })
            .await
            .unwrap();
        }
        let mut st = state::AgentState {
            cluster: "test".into(),
            node_id: "w".into(),
            role: Some(Role::Worker),
            hostname: Some("w".into()),
            advertise_addr: Some("198.18.0.1".into()),
            ..Default::default()
        };
        state::StateStore::new(dir.path()).save(&mut st).unwrap();
        let held = fake.credential("w").unwrap();
        fake.wipe();
        let drain = serde_json::json!({"requests": {"dn-w": {"agent_node_id": "w"}}});
        b.put_doc("w", "drains", 0, &drain).await.unwrap();
        // Registered again as the worker it is, with the same credential.
        assert_eq!(fake.credential("w"), Some(held));
        let s = fake.status().await.unwrap();
        assert_eq!(s.nodes.len(), 1);
        assert_eq!(s.nodes[0].role, Role::Worker);
        // A node the state file does not describe is not registered.
        let e = b.put_doc("m", "keeper", 0, &serde_json::json!({})).await;
        assert_eq!(e.unwrap_err().code(), Some(Code::NodeNotRegistered));
    }
}
