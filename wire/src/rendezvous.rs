//! The rendezvous backend seen by the agent: one trait, implemented by the coordinator client
//! (agent crate) and by the AWS Secrets Manager backend (secrets-manager crate). The agent's
//! bootstrap state machine only talks to `dyn Rendezvous`, so every backend gets the same
//! election, join, role and membership logic.
//!
//! Semantics every implementation must keep (the coordinator is the reference):
//! - `register` is idempotent per node id and assigns roles so that the number of managers
//!   never exceeds the target (`auto` → manager while managers < target, else worker).
//! - `claim` grants at most one live lease per cluster; the holder claiming again gets the same
//!   fencing token; an expired lease of an unformed cluster can be taken over with a strictly
//!   larger fencing token; a formed cluster never grants a claim.
//! - `publish` succeeds only for the holder of a live lease with the current fencing token
//!   (else `Conflict`), and moves the cluster to `Formed`. Re-publishing the identical data is
//!   accepted.
//! - `wait_join` returns as soon as the cluster is formed, or after about `wait` with the
//!   current phase and lease.
//! - `reset` (operator recovery after total manager loss) succeeds only while the cluster is
//!   formed with the given swarm id (else `Conflict` `swarm_mismatch`); it clears the
//!   formation, the lease and the node registrations, and is recorded.
//! - `put_doc` is compare-and-set on the version; `get_doc` with `after` waits (up to `wait`)
//!   for a newer version.

use crate::{
    ClaimResponse, ClusterStatus, Document, JoinResponse, PublishRequest, PublishResponse,
    RegisterRequest, RegisterResponse, ResetRequest,
};
use std::time::Duration;

/// Errors of a rendezvous call, sorted by what the caller should do about them.
#[derive(Debug, thiserror::Error)]
pub enum RendezvousError {
    /// Wrong or missing join secret, unknown cluster, missing permission: retrying will not
    /// help, the operator must fix the configuration.
    #[error("not authorized: {0}")]
    Unauthorized(String),
    /// A compare-and-set or fencing check failed (`code` is e.g. `stale_fencing_token`,
    /// `not_lease_holder`, `lease_lost`, `version_conflict`): re-read state and decide again.
    #[error("conflict ({code}): {message}")]
    Conflict { code: String, message: String },
    /// The request was refused as invalid, or the backend is misconfigured: permanent.
    #[error("rejected ({code}): {message}")]
    Rejected { code: String, message: String },
    /// Network trouble, timeouts, 5xx, throttling: retry with backoff.
    #[error("temporarily unavailable: {0}")]
    Transient(String),
}

impl RendezvousError {
    /// True when retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, RendezvousError::Transient(_))
    }
}

pub type Result<T> = std::result::Result<T, RendezvousError>;

#[async_trait::async_trait]
pub trait Rendezvous: Send + Sync {
    /// Human-readable location for `status` and logs, e.g. `coordinator https://10.0.0.2:8443`
    /// or `secrets-manager swarmstrap/prod (eu-west-1)`. Never contains a secret.
    fn describe(&self) -> String;

    async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse>;

    async fn claim(&self, node_id: &str, ttl: Duration) -> Result<ClaimResponse>;

    async fn renew(
        &self,
        node_id: &str,
        fencing_token: u64,
        ttl: Duration,
    ) -> Result<ClaimResponse>;

    async fn publish(&self, req: &PublishRequest) -> Result<PublishResponse>;

    async fn wait_join(&self, node_id: &str, wait: Duration) -> Result<JoinResponse>;

    async fn status(&self) -> Result<ClusterStatus>;

    async fn reset(&self, req: &ResetRequest) -> Result<ClusterStatus>;

    async fn get_doc(&self, name: &str, after: Option<u64>, wait: Duration) -> Result<Document>;

    async fn put_doc(
        &self,
        name: &str,
        expected_version: u64,
        body: &serde_json::Value,
    ) -> Result<Document>;
}
