//! The rendezvous backend seen by the agent: one trait, implemented by the coordinator client
//! (agent crate) and by the AWS Secrets Manager backend (secrets-manager crate). The agent's
//! bootstrap state machine only talks to `dyn Rendezvous`, so every backend gets the same
//! election, join, role and membership logic.
//!
//! Semantics every implementation must keep are not written here but in one place, the
//! rulebook [`crate::rules`] (feature `rules`): role assignment, the init lease and its bounds,
//! fencing, renewal, publish, join, reset and document compare-and-set, with the reason for
//! each rule. Every backend (the coordinator's store, Secrets Manager, the test fake) is
//! storage that runs those rules inside its own atomic step, and the conformance suite
//! (`conformance/`) checks each backend against them through this trait. In short:
//! - `register` is idempotent per node id; managers up to the target, then workers.
//! - `claim` grants at most one live lease; the holder's re-claim gets the same token and
//!   expiry; an expired lease is taken over under a strictly larger fencing token; a worker may
//!   not claim; a formed cluster never grants a claim.
//! - `renew` and `publish` are fenced by holder and token (expiry only opens the lease to
//!   takeover); an identical re-publish by the publisher is accepted.
//! - `wait_join` returns as soon as the cluster is formed, or after about `wait`.
//! - `reset` is compare-and-set on the swarm id and clears formation, lease and registrations.
//! - `sync` (formed with that swarm only) makes manager addresses, roles, registrations and the
//!   manager count follow the swarm; `adopt` re-forms a cluster that forgot its running swarm
//!   under a fresh fencing token; a cluster awaiting adoption refuses init claims.
//! - `put_doc` is compare-and-set on the document's version; `get_doc` with `after` waits (up
//!   to `wait`) for a newer version.
//!
//! Refusals carry a [`crate::rules::Code`] spelled by `Code::as_str` in `Conflict`/`Rejected`.
//!
//! Node credentials: `register` (and `adopt`, when it registers the caller) returns the node's
//! credential once; the implementation keeps it ([`Credentials`]) and presents it on every later
//! call for that node id. The agent also stores it in its state dir and hands it back with
//! [`Rendezvous::set_credential`] after a restart. `reset` needs the operator credential.

use crate::Secret;
use crate::{
    AdoptRequest, AdoptResponse, ClaimResponse, ClusterStatus, Document, JoinResponse,
    PublishRequest, PublishResponse, RegisterRequest, RegisterResponse, ResetRequest, SyncRequest,
    SyncResponse,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

/// Everything the day-2 loops follow, as of one read ([`Rendezvous::snapshot`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub status: ClusterStatus,
    /// Every document the cluster holds, by name (a name not here is at version 0).
    pub docs: BTreeMap<String, Document>,
    /// Where the stored cluster stands (Secrets Manager: its chain position): a later write
    /// makes it larger. `None`: the backend cannot tell.
    pub revision: Option<u64>,
}

/// The node credentials a client holds, by node id (a client usually acts for one node; the
/// test fake for many).
#[derive(Default)]
pub struct Credentials(Mutex<HashMap<String, Secret>>);

impl Credentials {
    pub fn set(&self, node_id: &str, credential: Secret) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node_id.to_string(), credential);
    }

    pub fn get(&self, node_id: &str) -> Option<Secret> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node_id)
            .cloned()
    }

    /// Keep the credential an answer carried (register, adopt).
    pub fn keep(&self, node_id: &str, issued: Option<&Secret>) {
        if let Some(c) = issued {
            self.set(node_id, c.clone());
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map(|m| m.len()).unwrap_or(0);
        write!(f, "Credentials(<{n} redacted>)")
    }
}

/// The fresh credential a client offers for each node id it holds no credential for yet: the
/// same one on every attempt, so an attempt whose write committed but whose answer was lost
/// is not a lockout (the next attempt presents it). Used by the backends whose rules run in
/// the client (Secrets Manager, etcd).
#[derive(Default)]
pub struct Offered(Mutex<HashMap<String, Secret>>);

impl Offered {
    pub fn get(&self, node_id: &str) -> Option<Secret> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(node_id)
            .cloned()
    }

    /// The credential offered for `node_id`, made by `make` the first time.
    pub fn get_or_make<E>(
        &self,
        node_id: &str,
        make: impl FnOnce() -> std::result::Result<Secret, E>,
    ) -> std::result::Result<Secret, E> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = m.get(node_id) {
            return Ok(c.clone());
        }
        let c = make()?;
        m.insert(node_id.to_string(), c.clone());
        Ok(c)
    }

    pub fn forget(&self, node_id: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node_id);
    }
}

impl std::fmt::Debug for Offered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map(|m| m.len()).unwrap_or(0);
        write!(f, "Offered(<{n} redacted>)")
    }
}

/// The credentials one call may present for its node id: the one held, and the one offered
/// in an earlier registration or adoption whose answer never arrived.
#[cfg(feature = "rules")]
pub struct Presenting {
    pub held: Option<Secret>,
    pub offered: Option<Secret>,
    /// The last judgement accepted the offered credential (it is the node's now).
    pub offered_accepted: std::sync::atomic::AtomicBool,
}

#[cfg(feature = "rules")]
impl Presenting {
    /// What a call for `node_id` presents; `offer`: make (with `make`) a fresh credential to
    /// offer if none is on offer yet (registration, adoption), returned as the second value.
    pub fn start<E>(
        credentials: &Credentials,
        offered: &Offered,
        node_id: &str,
        offer: bool,
        make: impl FnOnce() -> std::result::Result<Secret, E>,
    ) -> std::result::Result<(Presenting, Option<Secret>), E> {
        let fresh = if offer {
            Some(offered.get_or_make(node_id, make)?)
        } else {
            None
        };
        Ok((
            Presenting {
                held: credentials.get(node_id),
                offered: fresh.clone().or_else(|| offered.get(node_id)),
                offered_accepted: std::sync::atomic::AtomicBool::new(false),
            },
            fresh,
        ))
    }

    /// After a call succeeded: keep the credential it issued, or the offered one it accepted.
    pub fn settle(
        &self,
        credentials: &Credentials,
        offered: &Offered,
        node_id: &str,
        issued: Option<&Secret>,
    ) {
        let kept = issued.cloned().or_else(|| {
            self.offered_accepted
                .load(std::sync::atomic::Ordering::Relaxed)
                .then(|| self.offered.clone())
                .flatten()
        });
        if let Some(c) = kept {
            credentials.set(node_id, c);
            offered.forget(node_id);
        }
    }

    /// Judge `rule` with the held credential (or, holding none, the offered one); when that is
    /// refused with `bad_node_credential` and an offered credential exists, once more with it.
    pub fn judge<T>(
        &self,
        rule: impl Fn(Option<&Secret>) -> crate::rules::Result<T>,
    ) -> crate::rules::Result<T> {
        let first = self.held.as_ref().or(self.offered.as_ref());
        let r = rule(first);
        let (r, by_offered) = match (&r, &self.held, &self.offered) {
            (Err(e), Some(h), Some(o))
                if e.code == crate::rules::Code::BadNodeCredential && h != o =>
            {
                match rule(Some(o)) {
                    Ok(t) => (Ok(t), true),
                    Err(_) => (r, false),
                }
            }
            _ => {
                let by_offered = r.is_ok() && self.held.is_none() && self.offered.is_some();
                (r, by_offered)
            }
        };
        self.offered_accepted
            .store(by_offered, std::sync::atomic::Ordering::Relaxed);
        r
    }
}

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

    /// The rulebook's code of a `Conflict` or `Rejected`, when it is one of the rulebook's
    /// (`None` for other errors and for codes outside the rulebook, e.g. `tls_certificate`).
    #[cfg(feature = "rules")]
    pub fn code(&self) -> Option<crate::rules::Code> {
        match self {
            RendezvousError::Conflict { code, .. } | RendezvousError::Rejected { code, .. } => {
                crate::rules::Code::parse(code)
            }
            RendezvousError::Unauthorized(_) | RendezvousError::Transient(_) => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, RendezvousError>;

#[async_trait::async_trait]
pub trait Rendezvous: Send + Sync {
    /// Human-readable location for `status` and logs, e.g. `coordinator https://10.0.0.2:8443`
    /// or `secrets-manager swarmstrap/prod (eu-west-1)`. Never contains a secret.
    fn describe(&self) -> String;

    /// Present `credential` for `node_id` on every later call (the agent loads it from its state
    /// dir). `register` and `adopt` keep a credential they are issued themselves.
    fn set_credential(&self, node_id: &str, credential: Secret);

    /// The credential this client holds for `node_id`.
    fn credential(&self, node_id: &str) -> Option<Secret>;

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

    /// The operator's reset (`swarm-agent recover`). `operator` is the cluster's operator
    /// credential (never a node's): the coordinator refuses without it (`operator_required`).
    /// On Secrets Manager the operator is whoever may write the secret (IAM).
    async fn reset(&self, req: &ResetRequest, operator: Option<&Secret>) -> Result<ClusterStatus>;

    /// The operator asks for new swarm join tokens (`swarm-agent rotate-tokens`; see
    /// `rules::request_token_rotation`): the raft leader's agent rotates them and publishes the
    /// new ones. `operator` as for [`reset`](Rendezvous::reset). Backends without it refuse.
    async fn request_token_rotation(&self, operator: Option<&Secret>) -> Result<ClusterStatus> {
        let _ = operator;
        Err(RendezvousError::Rejected {
            code: "unsupported".into(),
            message: format!("{} cannot ask for a join-token rotation", self.describe()),
        })
    }

    /// The raft leader's agent reports the live swarm ([`SyncRequest`]).
    async fn sync(&self, req: &SyncRequest) -> Result<SyncResponse>;

    /// The raft leader's agent publishes its running swarm into a cluster that lost or rolled
    /// back its formation ([`AdoptRequest`]).
    async fn adopt(&self, req: &AdoptRequest) -> Result<AdoptResponse>;

    async fn get_doc(&self, name: &str, after: Option<u64>, wait: Duration) -> Result<Document>;

    /// The cluster's status and every document in one read, for backends where each read is
    /// billed (Secrets Manager: one `GetSecretValue`). `None`: the backend has no such read
    /// (ask for each document with [`get_doc`](Rendezvous::get_doc)).
    async fn snapshot(&self) -> Result<Option<Snapshot>> {
        Ok(None)
    }

    /// Compare-and-set a document, written by node `node_id` (with its credential).
    async fn put_doc(
        &self,
        node_id: &str,
        name: &str,
        expected_version: u64,
        body: &serde_json::Value,
    ) -> Result<Document>;
}
