//! AWS Secrets Manager rendezvous backend: bootstrap a swarm on AWS with no extra server.
//!
//! One secret per cluster holds one JSON document (see [`doc::ClusterDoc`]): the whole cluster
//! as the rendezvous rulebook ([`swarmstrap_wire::rules`]) sees it — registered nodes, the init
//! lease with its fencing token, the published join data, named documents. This crate is
//! storage only: every decision (roles, lease, fencing, publish, join, reset, document
//! versions, validation) is the rulebook's. Every change is a compare-and-swap on the secret's
//! AWSCURRENT version (see [`aws::Store::cas`] and the README for why that is a correct CAS):
//! the rule runs on the freshly read document and its change is written only if nobody wrote
//! in between, else the rule runs again on the fresh document. Waiting (join tokens,
//! documents) polls GetSecretValue with capped exponential backoff and jitter — never a fixed
//! sleep.
//!
//! The secret may be missing (never created, or deleted and re-created by an operator): reads
//! then see an open, unformed cluster, and the first write — a registration, a claim, or the
//! running swarm's adoption — creates the secret (CreateSecret; a lost creation race re-reads
//! and runs the rule again). A sync on a missing secret is `swarm_mismatch`, which is how the
//! raft leader's agent learns that the secret forgot its swarm and adopts it.
//!
//! Writes are rare on purpose (Secrets Manager write APIs share ~50 TPS per account, and every
//! write adds a secret version): no heartbeats, and a rule whose change is empty writes nothing
//! — idempotent calls (re-register, re-claim by the holder, identical re-publish) and early
//! renewals. A renewal writes only once at most half of the lease's ttl is left
//! ([`swarmstrap_wire::rules::renewal_due`]): an agent renewing every ttl/4 writes about once
//! per ttl/2, and a bootstrap that publishes within the first half of its ttl never writes a
//! renewal.
//!
//! Node credentials: the rulebook issues each node id a credential at its first registration
//! (or adoption) and stores only its sha256 in the secret; this backend makes the fresh
//! credentials (32 bytes from the OS RNG, hex) and keeps the one it is issued
//! ([`Credentials`]), presenting it on every later call for that node id (the agent also
//! stores it and hands it back with [`Rendezvous::set_credential`]). The check runs inside
//! the rulebook on the freshly read document, like every other rule: a node cannot register
//! again, claim, renew, publish, join, sync, adopt or write documents under another node's id.
//! A registration (or adoption) whose write committed but whose answer was lost (a timeout,
//! a failed read after the write) must not lock the node out of its own id: the fresh
//! credential an instance offers for a node id stays the same until it holds one for that id,
//! and a call refused with `bad_node_credential` is judged once more with that offered
//! credential (see `Presenting`).
//! Documents are typed (`rules::put_doc`): only managers write the membership and keeper
//! documents, a worker changes only its own drains/rejoins entries.
//!
//! Trust boundary: on Secrets Manager every node reads and writes the secret itself, so
//! whoever holds IAM write access to the secret can rewrite the whole document, digests
//! included. The credentials stop a node from acting under another node's id through this
//! client (a bug, a confused or compromised agent that only has this API), not a principal
//! with raw `secretsmanager:PutSecretValue`; scope the IAM policy to the instances that run
//! the agent (see the README).
//!
//! Reset (`swarm-agent recover`): on Secrets Manager the operator is whoever may write the
//! secret (IAM), so [`Rendezvous::reset`] does not require the operator credential. When the
//! stored cluster has an operator credential digest (`operator_sha256`) and the caller passes
//! an operator credential, it is checked (`rules::check_operator`): a wrong one is refused with
//! `operator_required`.

pub mod aws;
pub mod backoff;
pub mod doc;
pub mod managers;
#[cfg(feature = "moto")]
pub mod moto;

use aws::{CallCounter, CountingInterceptor, Store, WriteOutcome};
use aws_sdk_secretsmanager::config::timeout::TimeoutConfig;
use aws_sdk_secretsmanager::config::Region;
use doc::{ClusterDoc, Step};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use swarmstrap_wire::rendezvous::{
    Credentials, Offered, Presenting, Rendezvous, RendezvousError, Result, Snapshot,
};
use swarmstrap_wire::rules::{self, Code, Memory, Outcome, RuleError};
use swarmstrap_wire::{
    AdoptRequest, AdoptResponse, ClaimResponse, ClusterStatus, Document, DocumentWrite,
    JoinResponse, PublishRequest, PublishResponse, RegisterRequest, RegisterResponse, RenewRequest,
    ResetRequest, Secret, SyncRequest, SyncResponse,
};

/// Default prefix of the secret name: the secret of cluster `prod` is `swarmstrap/prod`.
pub const DEFAULT_NAME_PREFIX: &str = "swarmstrap/";

/// How long one mutation may keep losing compare-and-swap races before it gives up with a
/// `Transient` error (the agent then retries the whole call).
const CAS_DEADLINE: Duration = Duration::from_secs(60);

/// How long a read that is older than what this instance has already seen is retried before
/// it is taken as it is (AWS: eventually consistent reads; a cached value times out within
/// seconds). Taking it is safe for writes (the chain refuses a write on a stale version) and
/// covers a secret that really was deleted or rolled back.
const FRESH_WAIT: Duration = Duration::from_secs(8);

/// At most this many versions past AWSCURRENT are followed by one read.
const MAX_WALK: usize = 16;

/// What [`SecretsManagerRendezvous::read_fresh`] found: the chain's newest document, and the
/// version AWSCURRENT was on.
struct Fresh {
    snap: Option<aws::Snapshot>,
    current: Option<String>,
}

/// A refusal that another node's write could lift (the caller's registration, a lease it
/// claimed through another process, the formation) may come from a stale read: it is read
/// again for this long before it is answered. Never an acceptance without a fresh read that
/// allows it: the chain decides every write.
const REFUSAL_RECHECK: Duration = Duration::from_secs(4);

fn refusal_may_be_stale(e: &RendezvousError) -> bool {
    matches!(
        e.code(),
        Some(
            Code::NodeNotRegistered
                | Code::NotLeaseHolder
                | Code::NotAManager
                | Code::SwarmMismatch
                | Code::BadNodeCredential
                | Code::AwaitingAdoption
        )
    )
}

async fn recheck_pause(attempt: &mut u32) {
    let ms = (250u64 << (*attempt).min(2)).min(1000);
    *attempt += 1;
    tokio::time::sleep(Duration::from_millis(rand::random_range(ms / 2..=ms))).await;
}

/// How long a call waits for a secret name that a recent deletion blocks before it reports
/// `secret_scheduled_for_deletion` (what to do).
const NAME_BLOCKED_DEADLINE: Duration = Duration::from_secs(120);

/// Where the cluster's secret lives and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretsManagerConfig {
    /// Cluster name (`[a-z0-9-]`, 1–63).
    pub cluster: String,
    /// Full secret name; when `None`, `name_prefix + cluster`.
    pub secret_name: Option<String>,
    pub name_prefix: String,
    /// AWS region; when `None`, the default chain (AWS_REGION, profile, instance metadata).
    pub region: Option<String>,
    /// KMS key (id, ARN or alias) to encrypt the secret with when this node creates it; when
    /// `None`, the account's `aws/secretsmanager` key.
    pub kms_key_id: Option<String>,
    /// Endpoint override (tests against moto, VPC endpoints with custom DNS).
    pub endpoint_url: Option<String>,
    /// Manager target written into the document by whoever creates it (1, 3, 5 or 7).
    pub target_managers: u8,
    /// The window over which a registration's first write is spread (random part of it):
    /// nodes booted together by one `terraform apply` write one after the other instead of as
    /// one herd (every write call counts against the account's ~50 TPS write budget). Default
    /// [`backoff::FIRST_WRITE_SPREAD`]; tests of semantics rather than budgets set zero.
    pub first_write_spread: Duration,
}

impl SecretsManagerConfig {
    pub fn new(cluster: impl Into<String>, target_managers: u8) -> Self {
        SecretsManagerConfig {
            cluster: cluster.into(),
            secret_name: None,
            name_prefix: DEFAULT_NAME_PREFIX.to_string(),
            region: None,
            kms_key_id: None,
            endpoint_url: None,
            target_managers,
            first_write_spread: backoff::FIRST_WRITE_SPREAD,
        }
    }

    /// The secret's name: `secret_name`, or `name_prefix + cluster`.
    pub fn resolved_secret_name(&self) -> String {
        self.secret_name
            .clone()
            .unwrap_or_else(|| format!("{}{}", self.name_prefix, self.cluster))
    }

    pub fn validate(&self) -> Result<()> {
        swarmstrap_wire::validate_name(&self.cluster)
            .map_err(|m| rejected("invalid_cluster", m))?;
        swarmstrap_wire::validate_target_managers(self.target_managers)
            .map_err(|m| rejected("invalid_target_managers", m))?;
        let name = self.resolved_secret_name();
        let ok = !name.is_empty()
            && name.len() <= 512
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c));
        if !ok {
            return Err(rejected(
                "invalid_secret_name",
                format!(
                    "secret name {name:?} is invalid: use 1-512 characters of A-Z a-z 0-9 / _ + = . @ -"
                ),
            ));
        }
        Ok(())
    }
}

/// API calls made so far by one backend instance: HTTP attempts as sent to AWS, SDK retries
/// included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApiCallCounts {
    pub get_secret_value: u64,
    pub create_secret: u64,
    pub put_secret_value: u64,
    pub update_secret_version_stage: u64,
    pub other: u64,
}

impl ApiCallCounts {
    pub fn reads(&self) -> u64 {
        self.get_secret_value
    }

    /// Calls that count against the shared write budget (~50 TPS per account).
    pub fn writes(&self) -> u64 {
        self.create_secret + self.put_secret_value + self.update_secret_version_stage
    }
}

/// The Secrets Manager implementation of [`Rendezvous`].
#[derive(Debug)]
pub struct SecretsManagerRendezvous {
    store: Store,
    /// `<secret>/managers`: the manager join token, readable by managers only.
    managers: managers::ManagersSecret,
    target_managers: u8,
    first_write_spread: Duration,
    region: String,
    calls: Arc<CallCounter>,
    credentials: Credentials,
    offered: Offered,
    polls: Polls,
    /// The highest chain position (`ClusterDoc::seq`) this instance has read or written.
    seen: AtomicU64,
}

/// The SDK's HTTP(S) client: hyper + rustls on ring, the workspace's one crypto provider (the
/// SDK's default client is built without, see the workspace Cargo.toml). Every SDK config this
/// crate builds carries it; the credential providers (IMDS, STS, web identity) use it too.
pub fn https_client() -> aws_sdk_secretsmanager::config::SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

impl SecretsManagerRendezvous {
    /// Build from the default AWS credential chain (env, profile, instance role via IMDSv2)
    /// and the default region chain unless `cfg.region` is set.
    pub async fn new(cfg: SecretsManagerConfig) -> Result<Self> {
        cfg.validate()?;
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(https_client());
        if let Some(region) = &cfg.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &cfg.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let sdk = loader.load().await;
        Self::with_sdk_config(cfg, &sdk)
    }

    /// Build from an explicit SDK configuration (credentials, region, HTTP client); the
    /// config's `region` and `endpoint_url`, when set, override the SDK config's.
    pub fn with_sdk_config(cfg: SecretsManagerConfig, sdk: &aws_config::SdkConfig) -> Result<Self> {
        cfg.validate()?;
        let calls = Arc::new(CallCounter::default());
        let mut b = aws_sdk_secretsmanager::config::Builder::from(sdk)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(10))
                    .operation_timeout(Duration::from_secs(30))
                    .build(),
            )
            .interceptor(CountingInterceptor(calls.clone()));
        if let Some(region) = &cfg.region {
            b = b.region(Region::new(region.clone()));
        }
        if let Some(url) = &cfg.endpoint_url {
            b = b.endpoint_url(url);
        }
        let conf = b.build();
        let Some(region) = conf.region().map(|r| r.to_string()) else {
            return Err(rejected(
                "no_region",
                "no AWS region: set the region in the swarm-agent config or AWS_REGION (on EC2 \
                 the instance metadata provides it)",
            ));
        };
        let client = aws_sdk_secretsmanager::Client::from_conf(conf);
        let secret_name = cfg.resolved_secret_name();
        let store = Store {
            client,
            secret_name,
            cluster: cfg.cluster.clone(),
            kms_key_id: cfg.kms_key_id.clone(),
        };
        let managers = managers::ManagersSecret {
            store: Store {
                secret_name: managers::ManagersSecret::name_for(&store.secret_name),
                ..store.clone()
            },
        };
        Ok(SecretsManagerRendezvous {
            store,
            managers,
            target_managers: cfg.target_managers,
            first_write_spread: cfg.first_write_spread,
            region,
            calls,
            credentials: Credentials::default(),
            offered: Offered::default(),
            polls: Polls::default(),
            seen: AtomicU64::new(0),
        })
    }

    pub fn secret_name(&self) -> &str {
        &self.store.secret_name
    }

    /// AWS API calls made so far by this instance (for the README's call budget and tests).
    pub fn api_calls(&self) -> ApiCallCounts {
        self.calls.snapshot()
    }

    /// Set or lift the adoption hold (`swarmstrap_wire::rules::set_adoption_hold`): while set,
    /// init claims are refused with `awaiting_adoption` until the running swarm adopts the
    /// cluster. For an operator (or a test) whose secret was deleted and re-created while its
    /// swarm runs; a formed cluster refuses the hold (`already_formed`). Creates the secret when
    /// it is missing.
    ///
    /// An operator's one-shot call has no earlier read to compare with, so a read that already
    /// shows the wanted hold may be stale (the hold was lifted since). "Nothing to do" is
    /// therefore confirmed by a write on the chain: the same state written as the head's
    /// successor lands only when the read was the head, else the call reads again and decides
    /// again. One version per call; an operator sets the hold rarely.
    pub async fn set_adoption_hold(&self, hold: bool) -> Result<ClusterStatus> {
        let r = self
            .mutate("set_adoption_hold", |m, now| {
                let mut outcome = rules::set_adoption_hold(&m.state, hold)?;
                if outcome.change.is_empty() {
                    outcome.change.state = Some(m.state.clone());
                }
                let mut after = m.clone();
                after.apply(outcome.change.clone());
                Ok(Outcome {
                    answer: after.status(now),
                    change: outcome.change,
                })
            })
            .await?;
        if let Mutated::Written(_) = r {
            tracing::info!(
                secret = %self.store.secret_name,
                hold,
                "adoption hold {}",
                if hold { "set" } else { "lifted" }
            );
        }
        Ok(r.into_inner())
    }

    /// What a call for `node_id` presents; `offer`: make a fresh credential to offer if none
    /// is on offer yet (registration, adoption), returned as the second value.
    fn presenting(&self, node_id: &str, offer: bool) -> Result<(Presenting, Option<Secret>)> {
        Presenting::start(
            &self.credentials,
            &self.offered,
            node_id,
            offer,
            new_credential,
        )
    }

    fn settle(&self, node_id: &str, p: &Presenting, issued: Option<&Secret>) {
        p.settle(&self.credentials, &self.offered, node_id, issued);
    }

    /// The document of this cluster before anyone wrote it (the target is written by whoever
    /// creates the secret; later nodes use the stored one).
    fn empty_doc(&self) -> Result<ClusterDoc> {
        ClusterDoc::new(&self.store.cluster, self.target_managers)
    }

    /// Read → rule → compare-and-swap, until the rule's change is empty (no write), a write
    /// commits, or the rule refuses. A lost race backs off (capped exponential, jittered) and
    /// runs the rule again on the fresh document.
    async fn mutate<T>(
        &self,
        op: &'static str,
        mut rule: impl FnMut(&Memory, u64) -> rules::Result<Outcome<T>>,
    ) -> Result<Mutated<T>> {
        let started = Instant::now();
        let deadline = started + CAS_DEADLINE;
        let mut backoff = backoff::cas_backoff();
        // Every attempt whose outcome is unknown (a failed or timed-out stage move, a lost
        // answer), remembered until the call ends: a later read that is that write, or
        // descends from it (its write id is in `recent_writes`), means it committed. Not just
        // the last one: an earlier attempt can be the one that committed (its version was
        // created and promoted by the next writer).
        let mut pending: Vec<(String, T)> = Vec::new();
        let mut conflicts = 0u32;
        // CreateSecret said the secret exists, yet reading AWSCURRENT finds nothing: it exists
        // without a value, so the first value goes in through PutSecretValue.
        let mut create_refused = false;
        let mut blocked_since: Option<Instant> = None;
        let mut spread = false;
        let mut decorrelated = false;
        // Versions this call knows to have a successor (its write came back `Taken`): a read
        // that still ends there is stale, and writing on it again would only waste a write
        // call, so the call waits and reads again instead.
        let mut taken: Vec<String> = Vec::new();
        let started = Instant::now();
        let mut rechecks = 0u32;
        loop {
            // A read that finds the secret "marked deleted" is final: the secret is in its
            // recovery window and the name will not free by itself.
            let Fresh { snap, current } = self.read_fresh().await?;
            if let Some(s) = &snap {
                if let Some(i) = pending.iter().position(|(id, _)| s.doc.includes_write(id)) {
                    tracing::debug!(operation = op, "an ambiguous write turned out committed");
                    if current.as_deref() != Some(s.version_id.as_str()) {
                        // AWSCURRENT lags behind the chain (this write's own move failed):
                        // move it, so that readers need not walk. Best effort.
                        let _ = self.store.promote(current.as_deref(), &s.version_id).await;
                    }
                    return Ok(Mutated::Written(pending.swap_remove(i).1));
                }
            }
            let head = snap.as_ref().map(|s| s.version_id.clone());
            let stale_head = head.as_ref().is_some_and(|h| taken.contains(h));
            let empty;
            let cur = match &snap {
                Some(s) => &s.doc,
                None => {
                    empty = self.empty_doc()?;
                    &empty
                }
            };
            let now = now_ms();
            let step = match doc::decide(cur, |m| rule(m, now)) {
                Err(e) if refusal_may_be_stale(&e) && started.elapsed() < REFUSAL_RECHECK => {
                    recheck_pause(&mut rechecks).await;
                    continue;
                }
                other => other?,
            };
            match step {
                Step::Keep(t) => return Ok(Mutated::Unchanged(t)),
                Step::Write(_, _) if stale_head => {}
                Step::Write(_, _) if conflicts > 0 && !decorrelated => {
                    // After a lost race, every contender sees the new head at about the same
                    // moment (when its write becomes visible): a random pause before writing,
                    // then a fresh read, keeps them from writing as one herd.
                    decorrelated = true;
                    let ms = 1000 * u64::from(conflicts.min(8));
                    tokio::time::sleep(Duration::from_millis(rand::random_range(0..ms))).await;
                    continue;
                }
                Step::Write(_, _)
                    if op == "register" && !spread && !self.first_write_spread.is_zero() =>
                {
                    // A registration's first write waits a random part of a short window
                    // and decides again on a fresh read: nodes booted together spread out.
                    spread = true;
                    let ms = self.first_write_spread.as_millis() as u64;
                    let wait = Duration::from_millis(rand::random_range(0..ms.max(1)));
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Step::Write(mut doc, t) => {
                    decorrelated = false;
                    let id = aws::request_token();
                    doc.note_write(&id);
                    let seq = doc.seq;
                    let outcome = match &head {
                        None if !create_refused => {
                            let outcome = self.store.create(&doc).await?;
                            create_refused = outcome == WriteOutcome::Lost;
                            outcome
                        }
                        prev => self.store.cas(prev.as_deref(), &doc).await?,
                    };
                    match outcome {
                        WriteOutcome::Committed => {
                            self.seen.fetch_max(seq, Ordering::Relaxed);
                            return Ok(Mutated::Written(t));
                        }
                        WriteOutcome::Lost => pending.push((id, t)),
                        // Someone wrote on top of the version read: the chain is at least one
                        // longer than what was read, so the next read walks to it.
                        WriteOutcome::Taken(_) => {
                            let seq = snap.as_ref().map_or(0, |s| s.doc.seq);
                            self.seen.fetch_max(seq + 1, Ordering::Relaxed);
                            taken.extend(head);
                        }
                        WriteOutcome::NameBlocked => {
                            let e = aws::scheduled_for_deletion(&self.store.secret_name);
                            self.wait_name_unblocked(op, &mut blocked_since, &mut backoff, e)
                                .await?;
                            continue;
                        }
                    }
                }
            }
            conflicts += 1;
            tracing::debug!(
                operation = op,
                conflicts,
                "compare-and-swap lost a race; retrying"
            );
            let now = Instant::now();
            if now >= deadline {
                return Err(RendezvousError::Transient(format!(
                    "{op}: {conflicts} compare-and-swap conflicts on secret {} within {}s; \
                     too many concurrent writers, retry later",
                    self.store.secret_name,
                    CAS_DEADLINE.as_secs()
                )));
            }
            tokio::time::sleep(backoff.next_delay().min(deadline - now)).await;
        }
    }

    /// CreateSecret found the name blocked by a deletion ("scheduled for deletion") although
    /// reading found no secret: it was force-deleted moments ago, and AWS frees such a name
    /// within seconds to minutes. Wait with backoff (saying so once) until
    /// [`NAME_BLOCKED_DEADLINE`], then answer `err` (what to do). (A secret in its 7–30 day
    /// recovery window reads as "marked deleted", which is answered at once: that name does
    /// not free by itself.)
    async fn wait_name_unblocked(
        &self,
        op: &'static str,
        since: &mut Option<Instant>,
        backoff: &mut backoff::Backoff,
        err: RendezvousError,
    ) -> Result<()> {
        let first_time = since.is_none();
        let waited = since.get_or_insert_with(Instant::now).elapsed();
        if waited >= NAME_BLOCKED_DEADLINE {
            return Err(err);
        }
        if first_time {
            tracing::warn!(
                operation = op,
                secret = %self.store.secret_name,
                "the secret's name is blocked by a recent deletion; retrying for up to {}s \
                 (a force-deleted name frees within minutes; one scheduled for deletion needs \
                 `aws secretsmanager restore-secret` or another name)",
                NAME_BLOCKED_DEADLINE.as_secs()
            );
        }
        let left = NAME_BLOCKED_DEADLINE - waited;
        tokio::time::sleep(
            backoff
                .next_delay()
                .max(Duration::from_millis(500))
                .min(left),
        )
        .await;
        Ok(())
    }

    /// Read the newest document of the chain, with read-your-writes and monotonic reads for
    /// this instance. AWSCURRENT is read first; when it is older than what this instance has
    /// seen, the chain is walked by version id (`successor(V)`, immutable versions) while a
    /// successor exists, so a lagging AWSCURRENT (a writer that died between its two calls, a
    /// move that failed) or a stale read of it is no obstacle. While the
    /// result is older in the chain than one this instance has already read or written (a
    /// stale read: the cache of an eventually consistent service), read again with backoff, up
    /// to [`FRESH_WAIT`]; after that the read is taken as it is (a deleted or restored secret
    /// is older for good) and becomes the new reference.
    async fn read_fresh(&self) -> Result<Fresh> {
        let deadline = Instant::now() + FRESH_WAIT;
        let mut backoff = backoff::Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            let mut snap = self.store.read().await?;
            let current = snap.as_ref().map(|s| s.version_id.clone());
            // Walk only when the read is older than seen: a steady-state poll costs one call.
            if let Some(s) = snap.as_mut() {
                let mut steps = 0;
                while s.doc.seq < self.seen.load(Ordering::Relaxed) && steps < MAX_WALK {
                    steps += 1;
                    let next = aws::successor_token(&self.store.secret_name, Some(&s.version_id));
                    match self.store.read_version(&next).await? {
                        Some(n) => *s = n,
                        None => break,
                    }
                }
            }
            let seen = self.seen.load(Ordering::Relaxed);
            let seq = snap.as_ref().map_or(0, |s| s.doc.seq);
            // seq 0 on a stored document: written by a version that did not count (judge
            // nothing). No document while this instance saw one: stale or deleted.
            let fresh = seq >= seen || (seq == 0 && snap.is_some());
            let now = Instant::now();
            if fresh || now >= deadline {
                if fresh {
                    self.seen.fetch_max(seq, Ordering::Relaxed);
                } else {
                    tracing::debug!(
                        seq,
                        seen,
                        "the secret still reads older than seen before; taking it as it is"
                    );
                    self.seen.store(seq, Ordering::Relaxed);
                }
                return Ok(Fresh { snap, current });
            }
            tracing::trace!(seq, seen, "stale read; reading again");
            tokio::time::sleep(backoff.next_delay().min(deadline - now)).await;
        }
    }

    /// Run `rule` on the document as read now, for its verdict only (no write): a refusal is
    /// returned. For calls that must not touch the managers' secret when they will be refused.
    async fn precheck(&self, rule: impl Fn(&Memory, u64) -> rules::Result<()>) -> Result<()> {
        let started = Instant::now();
        let mut rechecks = 0u32;
        loop {
            let doc = match self.read_fresh().await?.snap {
                Some(s) => s.doc,
                None => self.empty_doc()?,
            };
            match rule(&doc.cluster, now_ms()).map_err(RendezvousError::from) {
                Err(e) if refusal_may_be_stale(&e) && started.elapsed() < REFUSAL_RECHECK => {
                    recheck_pause(&mut rechecks).await;
                }
                other => return other,
            }
        }
    }

    /// A manager's join answer carries a reference to the manager token (see `managers`):
    /// swap in the token from the managers' secret, polling it until `deadline` (a stale read
    /// may not show a token just added). Not found by then: `Transient` (the caller retries).
    /// Workers' answers carry the worker token and pass unchanged.
    async fn with_manager_token(
        &self,
        mut j: JoinResponse,
        deadline: Instant,
    ) -> Result<JoinResponse> {
        let Some(info) = j.join.as_mut() else {
            return Ok(j);
        };
        if !managers::is_reference(&info.token) {
            return Ok(j);
        }
        let mut backoff = backoff::poll_backoff();
        loop {
            if let Some(t) = self.managers.resolve(&info.token).await? {
                info.token = t;
                return Ok(j);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RendezvousError::Transient(format!(
                    "the cluster is formed, but its manager token is not (yet) in {}",
                    self.managers.store.secret_name
                )));
            }
            tokio::time::sleep(backoff.next_delay().min(left)).await;
        }
    }

    /// Poll the document until `view` says it is done or `wait` (at most MAX_WAIT_SECS) has
    /// passed. Transient read failures (and a name blocked by a recent deletion) are retried
    /// inside the wait; the last one is returned if the wait ends without a successful read.
    ///
    /// The backoff does not restart at every call: a caller that long-polls in a loop (the
    /// agent waits for documents 25 s at a time) continues where its last wait, which saw no
    /// change, left off — `key` names the thing waited for. A wait that sees the change starts
    /// the next one fast again.
    async fn poll<T>(
        &self,
        key: &str,
        wait: Duration,
        mut view: impl FnMut(&Memory, u64) -> Result<(bool, T)>,
    ) -> Result<T> {
        let wait = wait.min(Duration::from_secs(swarmstrap_wire::MAX_WAIT_SECS));
        let deadline = Instant::now() + wait;
        let mut backoff = self.polls.take(key);
        let started = Instant::now();
        let mut rechecks = 0u32;
        let r = loop {
            match self.read_fresh().await.map(|f| f.snap) {
                Ok(snap) => {
                    let doc = match snap {
                        Some(s) => s.doc,
                        None => self.empty_doc()?,
                    };
                    let (done, t) = match view(&doc.cluster, now_ms()) {
                        Err(e)
                            if refusal_may_be_stale(&e) && started.elapsed() < REFUSAL_RECHECK =>
                        {
                            recheck_pause(&mut rechecks).await;
                            continue;
                        }
                        other => other?,
                    };
                    if done {
                        return Ok(t);
                    }
                    if Instant::now() >= deadline {
                        break Ok(t);
                    }
                }
                Err(e) if e.is_transient() && Instant::now() < deadline => {
                    tracing::debug!(error = %e, "read failed while waiting; retrying");
                }
                Err(e) => break Err(e),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(backoff.next_delay().min(left)).await;
        };
        self.polls.keep(key, backoff);
        r
    }
}

/// The poll backoff of each thing waited for, kept between calls (see `poll`).
#[derive(Debug, Default)]
struct Polls(Mutex<HashMap<String, (backoff::Backoff, Instant)>>);

impl Polls {
    /// A backoff kept within this long after the last wait ended continues; older ones restart
    /// (the caller stopped waiting for a while).
    const KEEP_FOR: Duration = Duration::from_secs(60);

    fn take(&self, key: &str) -> backoff::Backoff {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match m.remove(key) {
            Some((b, at)) if at.elapsed() < Self::KEEP_FOR => b,
            _ => backoff::poll_backoff(),
        }
    }

    fn keep(&self, key: &str, b: backoff::Backoff) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(key.to_string(), (b, Instant::now()));
    }
}

enum Mutated<T> {
    Unchanged(T),
    Written(T),
}

impl<T> Mutated<T> {
    fn into_inner(self) -> T {
        match self {
            Mutated::Unchanged(t) | Mutated::Written(t) => t,
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch. Lease expiry is compared against this on
/// every node, so clocks must agree (NTP / Amazon Time Sync; see the README).
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh node credential: 32 bytes from the OS RNG, as 64 hex characters.
pub fn new_credential() -> Result<Secret> {
    use rand::TryRngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut b).map_err(|e| {
        RendezvousError::Transient(format!("the OS random number generator failed: {e}"))
    })?;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(Secret::new(hex))
}

/// A lease ttl in milliseconds (the rulebook clamps it).
fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

pub(crate) fn rejected(code: &str, message: impl Into<String>) -> RendezvousError {
    RendezvousError::Rejected {
        code: code.to_string(),
        message: message.into(),
    }
}

#[async_trait::async_trait]
impl Rendezvous for SecretsManagerRendezvous {
    fn describe(&self) -> String {
        format!(
            "secrets-manager {} ({})",
            self.store.secret_name, self.region
        )
    }

    fn set_credential(&self, node_id: &str, credential: Secret) {
        self.credentials.set(node_id, credential);
    }

    fn credential(&self, node_id: &str) -> Option<Secret> {
        self.credentials.get(node_id)
    }

    async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse> {
        rules::validate_register(req)?;
        let (p, fresh) = self.presenting(&req.node_id, true)?;
        let fresh = fresh.expect("offered");
        let r = self
            .mutate("register", |m, now| {
                p.judge(|c| m.register(now, req, c, &fresh))
            })
            .await?
            .into_inner();
        self.settle(&req.node_id, &p, r.credential.as_ref());
        Ok(r)
    }

    async fn claim(&self, node_id: &str, ttl: Duration) -> Result<ClaimResponse> {
        rules::validate_node_id(node_id)?;
        let ttl_ms = ttl_ms(ttl);
        let (p, _) = self.presenting(node_id, false)?;
        let r = self
            .mutate("claim", |m, now| {
                p.judge(|c| m.claim(now, node_id, ttl_ms, c))
            })
            .await?;
        self.settle(node_id, &p, None);
        match r {
            Mutated::Unchanged(r) => Ok(r),
            Mutated::Written(answer) => {
                // Committed means this grant is in the secret's one chain of versions (see
                // `aws::Store::cas`): computed from the document it follows, and everything
                // written later descends from it. No read-back is needed (a read could be stale).
                if answer.granted {
                    tracing::info!(
                        node = node_id,
                        fencing_token = answer.lease.as_ref().map_or(0, |l| l.fencing_token),
                        "init lease granted"
                    );
                }
                Ok(answer)
            }
        }
    }

    async fn renew(
        &self,
        node_id: &str,
        fencing_token: u64,
        ttl: Duration,
    ) -> Result<ClaimResponse> {
        rules::validate_node_id(node_id)?;
        let req = RenewRequest {
            node_id: node_id.to_string(),
            fencing_token,
            ttl_ms: ttl_ms(ttl),
        };
        let (p, _) = self.presenting(node_id, false)?;
        let r = self
            .mutate("renew", |m, now| p.judge(|c| m.renew(now, &req, c)))
            .await?;
        self.settle(node_id, &p, None);
        Ok(r.into_inner())
    }

    async fn publish(&self, req: &PublishRequest) -> Result<PublishResponse> {
        rules::validate_publish(req)?;
        let (p, _) = self.presenting(&req.node_id, false)?;
        // The manager token goes into the managers' secret first; the shared secret refers to
        // it by digest (see `managers`). Only once the rule, on the document as read now,
        // would accept the publish: a refused publisher adds nothing there.
        let checked = PublishRequest {
            manager_token: managers::reference(&req.manager_token),
            ..req.clone()
        };
        self.precheck(|m, now| p.judge(|c| m.publish(now, &checked, c)).map(|_| ()))
            .await?;
        self.managers
            .ensure(&req.swarm_id, &req.manager_token)
            .await?;
        let req = &checked;
        let r = self
            .mutate("publish", |m, now| p.judge(|c| m.publish(now, req, c)))
            .await?;
        self.settle(&req.node_id, &p, None);
        if let Mutated::Written(_) = r {
            tracing::info!(node = %req.node_id, swarm_id = %req.swarm_id, "join data published");
        }
        Ok(r.into_inner())
    }

    async fn wait_join(&self, node_id: &str, wait: Duration) -> Result<JoinResponse> {
        let started = Instant::now();
        let wait = wait.min(Duration::from_secs(swarmstrap_wire::MAX_WAIT_SECS));
        let (p, _) = self.presenting(node_id, false)?;
        let j = self
            .poll("join", wait, |m, now| {
                let j = p.judge(|c| m.join(now, node_id, c))?;
                Ok((j.join.is_some(), j))
            })
            .await?;
        self.settle(node_id, &p, None);
        self.with_manager_token(j, started + wait).await
    }

    async fn status(&self) -> Result<ClusterStatus> {
        let doc = match self.read_fresh().await?.snap {
            Some(snap) => snap.doc,
            None => self.empty_doc()?,
        };
        Ok(doc.cluster.status(now_ms()))
    }

    /// One `GetSecretValue` (plus a chain walk only when it is older than what this client
    /// has seen): the status and every document.
    async fn snapshot(&self) -> Result<Option<Snapshot>> {
        let doc = match self.read_fresh().await?.snap {
            Some(snap) => snap.doc,
            None => self.empty_doc()?,
        };
        Ok(Some(Snapshot {
            status: doc.cluster.status(now_ms()),
            docs: doc.cluster.docs.clone(),
            revision: Some(doc.seq),
        }))
    }

    /// On Secrets Manager the operator is whoever may write the secret (IAM): `operator` is not
    /// required. When the stored cluster has an operator credential digest and `operator` is
    /// given, it must match (`rules::check_operator`).
    async fn reset(&self, req: &ResetRequest, operator: Option<&Secret>) -> Result<ClusterStatus> {
        rules::validate_reset(req)?;
        let r = self
            .mutate("reset", |m, now| {
                if m.state.operator_sha256.is_some() && operator.is_some() {
                    rules::check_operator(&m.state, operator)?;
                }
                rules::recover(&m.state, now, req)
            })
            .await?;
        tracing::warn!(node = %req.node_id, lost_swarm = %req.swarm_id,
            "cluster reset by `swarm-agent recover`: one new init is allowed");
        Ok(r.into_inner())
    }

    async fn request_token_rotation(&self, operator: Option<&Secret>) -> Result<ClusterStatus> {
        // As for reset: the operator is whoever may write the secret (IAM); a stored operator
        // credential is checked when one is given.
        let r = self
            .mutate("rotate-tokens", |m, now| {
                if m.state.operator_sha256.is_some() && operator.is_some() {
                    rules::check_operator(&m.state, operator)?;
                }
                let o = rules::request_token_rotation(&m.state)?;
                let mut after = m.clone();
                after.apply(o.change.clone());
                Ok(rules::Outcome {
                    answer: after.status(now),
                    change: o.change,
                })
            })
            .await?;
        let st = r.into_inner();
        tracing::info!(rotation = ?st.token_rotation_pending,
            "join-token rotation requested: the raft leader's agent rotates and publishes the tokens");
        Ok(st)
    }

    async fn sync(&self, req: &SyncRequest) -> Result<SyncResponse> {
        rules::validate_sync(req)?;
        let (p, _) = self.presenting(&req.node_id, false)?;
        let r = self
            .mutate("sync", |m, now| p.judge(|c| m.sync(now, req, c)))
            .await?;
        self.settle(&req.node_id, &p, None);
        if let Mutated::Written(a) = &r {
            if !a.pruned.is_empty() {
                tracing::info!(node = %req.node_id, pruned = ?a.pruned, managers = a.manager_count,
                    "registrations of nodes that left the swarm dropped from the secret");
            }
        }
        Ok(r.into_inner())
    }

    async fn adopt(&self, req: &AdoptRequest) -> Result<AdoptResponse> {
        rules::validate_adopt(req)?;
        self.managers
            .ensure(&req.swarm_id, &req.manager_token)
            .await?;
        let req = &AdoptRequest {
            manager_token: managers::reference(&req.manager_token),
            ..req.clone()
        };
        let (p, fresh) = self.presenting(&req.node_id, true)?;
        let fresh = fresh.expect("offered");
        let r = self
            .mutate("adopt", |m, now| p.judge(|c| m.adopt(now, req, c, &fresh)))
            .await?;
        let (Mutated::Written(a) | Mutated::Unchanged(a)) = &r;
        self.settle(&req.node_id, &p, a.credential.as_ref());
        if let Mutated::Written(a) = &r {
            if a.adopted {
                tracing::info!(
                    "secret {} adopted swarm {} from node {} under fencing token {}",
                    self.store.secret_name,
                    req.swarm_id,
                    req.node_id,
                    a.fencing_token
                );
            }
        }
        Ok(r.into_inner())
    }

    async fn get_doc(&self, name: &str, after: Option<u64>, wait: Duration) -> Result<Document> {
        swarmstrap_wire::validate_name(name).map_err(|m| RuleError::new(Code::InvalidName, m))?;
        let wait = if after.is_some() {
            wait
        } else {
            Duration::ZERO
        };
        // Long-poll: done once the stored document is newer than the caller's `after`.
        self.poll(&format!("doc:{name}"), wait, |m, _| {
            let d = m.doc(name);
            Ok((rules::doc_answers(&d, after), d))
        })
        .await
    }

    async fn put_doc(
        &self,
        node_id: &str,
        name: &str,
        expected_version: u64,
        body: &serde_json::Value,
    ) -> Result<Document> {
        let write = DocumentWrite {
            expected_version,
            body: body.clone(),
            node_id: node_id.to_string(),
        };
        let (p, _) = self.presenting(node_id, false)?;
        let r = self
            .mutate("put_doc", |m, _| p.judge(|c| m.put_doc(name, &write, c)))
            .await?;
        self.settle(node_id, &p, None);
        Ok(r.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmstrap_wire::RequestedRole;

    fn reg(id: &str) -> RegisterRequest {
        RegisterRequest {
            node_id: id.into(),
            hostname: format!("host-{id}"),
            advertise_addr: "198.18.0.1".into(),
            role: RequestedRole::Auto,
            joined_through: None,
            labels: None,
        }
    }

    fn presenting(held: Option<&Secret>, offered: Option<&Secret>) -> Presenting {
        Presenting {
            held: held.cloned(),
            offered: offered.cloned(),
            offered_accepted: std::sync::atomic::AtomicBool::new(false),
        }
    }

    const NOW: u64 = 1_700_000_000_000;

    #[test]
    fn fresh_credentials_are_32_random_bytes_in_hex() {
        let (a, b) = (new_credential().unwrap(), new_credential().unwrap());
        assert_eq!(a.expose().len(), 64);
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(!format!("{a:?}").contains(a.expose()));
    }

    #[test]
    fn a_lost_answer_is_no_lockout() {
        let offered = Offered::default();
        let p1 = offered.get_or_make("n", new_credential).unwrap();
        assert_eq!(
            offered.get_or_make("n", new_credential).unwrap(),
            p1,
            "the same on every attempt"
        );
        assert!(!format!("{offered:?}").contains(p1.expose()));
        // The registration committed, its answer was lost.
        let mut m = Memory::new(rules::ClusterState::new("prod", 3).unwrap());
        let first = presenting(None, Some(&p1));
        let o = first.judge(|c| m.register(NOW, &reg("n"), c, &p1)).unwrap();
        m.apply(o.change);
        // The retry presents the offered credential: accepted, and kept.
        let retry = presenting(None, Some(&p1));
        let o = retry.judge(|c| m.register(NOW, &reg("n"), c, &p1)).unwrap();
        assert_eq!(o.answer.credential, None);
        assert!(retry.offered_accepted.load(Ordering::Relaxed));
        // Holding a stale credential (the node's from before its registration was lost), the
        // adoption / registration that re-registered it under the offered one: accepted too.
        let stale = Secret::new("stale");
        let p = presenting(Some(&stale), Some(&p1));
        assert!(p.judge(|c| m.join(NOW, "n", c)).is_ok());
        assert!(p.offered_accepted.load(Ordering::Relaxed));
        // The held credential is right: used, the offered one not accepted.
        let p = presenting(Some(&p1), Some(&stale));
        assert!(p.judge(|c| m.join(NOW, "n", c)).is_ok());
        assert!(!p.offered_accepted.load(Ordering::Relaxed));
        // Neither is: the first refusal.
        let p = presenting(Some(&stale), Some(&Secret::new("other")));
        let e = p.judge(|c| m.join(NOW, "n", c)).unwrap_err();
        assert_eq!(e.code, Code::BadNodeCredential);
        assert!(!p.offered_accepted.load(Ordering::Relaxed));
    }
}
