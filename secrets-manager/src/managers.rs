//! The managers' secret, `<secret>/managers`: the manager join token, where only the managers'
//! IAM role can read it (a worker's instance role has no access; see the AWS Terraform module).
//!
//! The shared secret, which every node reads, stores in place of the manager token only a
//! reference to it: [`reference`], `swarmstrap:managers-secret:sha256:<hex>` (sha256 of the
//! token; join tokens carry ~128 random bits, so the digest reveals nothing). The rulebook
//! compares references as it compared tokens (an identical re-publish, a rotation), and a
//! manager's `wait_join` swaps the reference for the token read from this secret.
//!
//! This secret holds a short list of tokens by digest (the newest [`KEEP`]): the publisher
//! adds its token *before* the shared secret refers to it, so a reference never points at a
//! token that is not stored; a fenced-out publisher that adds its token too cannot push out
//! the real one. Writes go through the same chain compare-and-swap as the shared secret
//! ([`crate::aws::Store::cas_text`]); adding a token that is already listed writes nothing.

use crate::aws::{Store, WriteOutcome};
use crate::backoff;
use crate::rejected;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use swarmstrap_wire::rendezvous::{RendezvousError, Result};
use swarmstrap_wire::Secret;

/// Appended to the shared secret's name.
pub const SUFFIX: &str = "/managers";
/// How a reference to the manager token starts.
pub use swarmstrap_wire::rules::MANAGER_TOKEN_REFERENCE_PREFIX as REFERENCE_PREFIX;
/// How many tokens the secret keeps (newest last).
pub const KEEP: usize = 4;
const SCHEMA: u32 = 1;
const DEADLINE: Duration = Duration::from_secs(60);

/// sha256 of a token, hex.
fn digest(token: &Secret) -> String {
    swarmstrap_wire::rules::manager_token_digest(token)
}

/// What the shared secret stores instead of the manager token.
pub fn reference(token: &Secret) -> Secret {
    swarmstrap_wire::rules::manager_token_reference(token)
}

pub fn is_reference(token: &Secret) -> bool {
    swarmstrap_wire::rules::is_manager_token_reference(token)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    sha256: String,
    swarm_id: String,
    token: Secret,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ManagersDoc {
    schema: u32,
    cluster: String,
    tokens: Vec<Entry>,
}

/// The managers' secret of one cluster.
#[derive(Debug, Clone)]
pub struct ManagersSecret {
    pub store: Store,
}

impl ManagersSecret {
    pub fn name_for(shared_secret: &str) -> String {
        format!("{shared_secret}{SUFFIX}")
    }

    async fn read(&self) -> Result<Option<(String, ManagersDoc)>> {
        let name = &self.store.secret_name;
        let Some((version, text)) = self.store.read_text().await.map_err(|e| explain(e, name))?
        else {
            return Ok(None);
        };
        let doc: ManagersDoc = serde_json::from_str(&text).map_err(|e| {
            rejected(
                "foreign_secret",
                format!(
                    "secret {name} does not hold swarmstrap manager tokens (invalid at line {} \
                     column {}); use another secret name",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        if doc.schema != SCHEMA || doc.cluster != self.store.cluster {
            return Err(rejected(
                "foreign_secret",
                format!(
                    "secret {name} holds schema {} of cluster {:?}, not schema {SCHEMA} of {:?}",
                    doc.schema, doc.cluster, self.store.cluster
                ),
            ));
        }
        Ok(Some((version, doc)))
    }

    /// Make sure the secret lists `token` (of swarm `swarm_id`). Writes only when it does not.
    pub async fn ensure(&self, swarm_id: &str, token: &Secret) -> Result<()> {
        if is_reference(token) {
            return Err(rejected(
                "invalid_request",
                "a manager token reference is not a manager token",
            ));
        }
        let want = digest(token);
        let deadline = Instant::now() + DEADLINE;
        let mut backoff = backoff::cas_backoff();
        let mut lagging: Option<(Option<String>, String)> = None;
        let mut create_refused = false;
        loop {
            let cur = self.read().await?;
            if let Some((_, d)) = &cur {
                if d.tokens.iter().any(|e| e.sha256 == want) {
                    return Ok(());
                }
            }
            let current = cur.as_ref().map(|(v, _)| v.clone());
            if let Some((prev, next)) = lagging.take() {
                if prev == current {
                    self.store.promote(prev.as_deref(), &next).await?;
                    continue;
                }
            }
            let mut doc = cur.map(|(_, d)| d).unwrap_or(ManagersDoc {
                schema: SCHEMA,
                cluster: self.store.cluster.clone(),
                tokens: Vec::new(),
            });
            doc.tokens.push(Entry {
                sha256: want.clone(),
                swarm_id: swarm_id.to_string(),
                token: token.clone(),
            });
            let excess = doc.tokens.len().saturating_sub(KEEP);
            doc.tokens.drain(..excess);
            let text = serde_json::to_string(&doc)
                .map_err(|_| rejected("internal", "cannot encode the managers document"))?;
            let outcome = match &current {
                None if !create_refused => {
                    let o = self.store.create_text(text, "managers").await?;
                    create_refused = o == WriteOutcome::Lost;
                    o
                }
                prev => self.store.cas_text(prev.as_deref(), text).await?,
            };
            match outcome {
                WriteOutcome::Committed => {
                    tracing::info!(secret = %self.store.secret_name, swarm_id,
                        "manager join token stored in the managers' secret");
                    return Ok(());
                }
                WriteOutcome::Taken(next) => lagging = Some((current, next)),
                WriteOutcome::Lost | WriteOutcome::NameBlocked => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RendezvousError::Transient(format!(
                    "could not store the manager token in {} within {}s; retry",
                    self.store.secret_name,
                    DEADLINE.as_secs()
                )));
            }
            tokio::time::sleep(backoff.next_delay().min(deadline - now)).await;
        }
    }

    /// The token a reference names, when the secret (as read now) lists it.
    pub async fn resolve(&self, reference: &Secret) -> Result<Option<Secret>> {
        let Some(want) = reference.expose().strip_prefix(REFERENCE_PREFIX) else {
            return Ok(Some(reference.clone()));
        };
        let Some((_, doc)) = self.read().await? else {
            return Ok(None);
        };
        Ok(doc
            .tokens
            .into_iter()
            .find(|e| e.sha256 == want)
            .map(|e| e.token))
    }
}

/// Access denied on the managers' secret: say what that means.
fn explain(e: RendezvousError, name: &str) -> RendezvousError {
    match e {
        RendezvousError::Unauthorized(m) => RendezvousError::Unauthorized(format!(
            "{m}. The manager join token is in {name}, which only the managers' IAM role may \
             read: a node registered as a manager needs that role (in the AWS module, manager \
             instances have it and workers do not; a node started with role `auto` or \
             `manager` on a worker's role cannot become a manager)"
        )),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_hide_the_token_and_are_stable() {
        let t = Secret::new("SWMTKN-1-abc-def");
        let r = reference(&t);
        assert!(is_reference(&r));
        assert!(!r.expose().contains("abc-def"));
        assert_eq!(reference(&t), r, "deterministic");
        assert_eq!(reference(&r), r, "a reference stays itself");
        assert_ne!(reference(&Secret::new("SWMTKN-1-abc-deg")), r);
        assert_eq!(r.expose().len(), REFERENCE_PREFIX.len() + 64);
    }
}
