//! Rendezvous backends. The trait is `swarmstrap_wire::rendezvous::Rendezvous`; this module is
//! the single place that picks the implementation by name.

pub mod coordinator;

use crate::config::{BackendKind, Config};
use crate::fsutil::{self, FsError};
use std::sync::Arc;
use std::time::Duration;
use swarmstrap_secrets_manager::SecretsManagerRendezvous;
use swarmstrap_wire::rendezvous::{Rendezvous, RendezvousError};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Secret(#[from] FsError),
    #[error(transparent)]
    Coordinator(#[from] coordinator::ClientError),
    #[error("cannot set up the secrets-manager backend: {0}")]
    SecretsManager(#[source] RendezvousError),
}

/// Open the configured backend. `request_timeout` bounds each ordinary coordinator call
/// (long-polls get their wait plus a margin). The coordinator authenticates with the join
/// secret (read here from `join_secret_file`); Secrets Manager with the instance's AWS
/// credentials (no join secret).
pub async fn open(
    cfg: &Config,
    request_timeout: Duration,
) -> Result<Arc<dyn Rendezvous>, BackendError> {
    match cfg.backend {
        BackendKind::Coordinator => {
            let c = cfg
                .coordinator
                .as_ref()
                .expect("config validation requires [coordinator] for this backend");
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
    }
}
