//! Rendezvous backends. The trait is `swarmstrap_wire::rendezvous::Rendezvous`; this module is
//! the single place that picks the implementation by name.

pub mod coordinator;

use crate::config::{BackendKind, Config};
use std::sync::Arc;
use std::time::Duration;
use swarmstrap_wire::rendezvous::Rendezvous;
use swarmstrap_wire::Secret;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Coordinator(#[from] coordinator::ClientError),
    #[error(
        "backend \"secrets-manager\" is not built into this swarm-agent yet: use \
         backend = \"coordinator\""
    )]
    NotBuilt,
}

/// Open the configured backend. `request_timeout` bounds each ordinary call (long-polls get
/// their wait plus a margin).
pub fn open(
    cfg: &Config,
    secret: Secret,
    request_timeout: Duration,
) -> Result<Arc<dyn Rendezvous>, BackendError> {
    match cfg.backend {
        BackendKind::Coordinator => {
            let c = cfg
                .coordinator
                .as_ref()
                .expect("config validation requires [coordinator] for this backend");
            Ok(Arc::new(coordinator::CoordinatorClient::new(
                c,
                &cfg.cluster,
                secret,
                request_timeout,
            )?))
        }
        BackendKind::SecretsManager => {
            let _ = (&cfg.secrets_manager, secret);
            Err(BackendError::NotBuilt)
        }
    }
}
