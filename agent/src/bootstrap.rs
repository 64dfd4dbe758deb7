//! The election → init/join state machine. It talks only to `dyn Engine` and `dyn Rendezvous`,
//! so every backend gets the same logic, and unit tests run it against fakes.
//!
//! ```text
//! wait for engine ──► engine in a swarm? ──yes──► ours? (state file, CA digest, backend) ──► no-op
//!        │                                           └─ initialised by us, not published ──► settle
//!        no
//!        ▼
//!     register ──► manager? ──► claim ──granted──► [intent record] init ► inspect ► publish
//!        │            │           └─refused─┐  (lease renewed every ttl/RENEW_DIVISOR = ttl/4;
//!        │            │                     │   lost ⇒ no publish)
//!        │          worker                  ▼
//!        └──────────────┴──────────► long-poll join info ──► join (each manager address in order)
//!                                      (lease expired ⇒ claim again: takeover)
//! ```
//!
//! "Settle" handles a swarm this agent initialised but whose publish is not confirmed (crash,
//! lost lease): if the backend says the cluster was formed with this swarm, nothing to do; if
//! it was formed with another swarm, leave ours (`leave --force`) and join the real one; if it
//! is not formed and this node can (re-)claim the lease, publish the swarm it already has.

use crate::engine::{
    Engine, EngineError, EngineInfo, JoinRequest, LocalSwarmState, SwarmDetails, SWARM_PORT,
};
use crate::retry::{self, Failure, Policy};
use crate::state::{
    rfc3339_now, AgentPhase, AgentState, InitRecord, LastError, StateError, StateStore,
};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swarmstrap_wire::rendezvous::{Rendezvous, RendezvousError};
use swarmstrap_wire::rules::{Code, RENEW_DIVISOR};
use swarmstrap_wire::{
    ClaimResponse, JoinInfo, Lease, Phase, PublishRequest, RegisterRequest, RequestedRole, Role,
};

/// How long `swarm init` may keep failing transiently before the agent gives up.
const INIT_DEADLINE: Duration = Duration::from_secs(120);
/// How long joining may keep failing transiently (managers still settling, network) before
/// the agent gives up (systemd restarts it).
const JOIN_DEADLINE: Duration = Duration::from_secs(300);
/// How long an engine may stay in the `pending` swarm state (a join finishing in the
/// background) before the agent calls it an error.
const PENDING_DEADLINE: Duration = Duration::from_secs(120);
/// Longest wait for one `docker info` while waiting for the engine (it answers in
/// milliseconds once up).
const ENGINE_PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Margin added to a lease's remaining time before claiming again, so the claim arrives after
/// the backend considers the lease expired.
const TAKEOVER_MARGIN: Duration = Duration::from_millis(250);

/// What the agent needs to know to bootstrap one node.
pub struct Settings {
    pub cluster: String,
    pub node_id: String,
    /// The IP advertised to the swarm (no port).
    pub advertise_addr: String,
    pub requested_role: RequestedRole,
    pub lease_ttl: Duration,
    /// Longest single long-poll for join info (~25 s: below proxies' idle timeouts).
    pub long_poll: Duration,
    /// Retry policy of every step (deadlines are added per step).
    pub policy: Policy,
    /// What to check when the backend refuses access, e.g. "check
    /// /etc/swarm-agent/join-secret (and the cluster name)".
    pub unauthorized_hint: String,
    /// Test-only fault injection, see README: hold forever after a granted claim when this
    /// file can be removed.
    pub debug_hold_file: Option<PathBuf>,
    /// Tell the rendezvous which manager the engine joined through (a registration write).
    /// Off with the relay (Secrets Manager: every write is a version of the secret): the hint
    /// goes to the managers' agents instead ([`crate::relay::Relay::announce_joined`]).
    pub record_joined_through: bool,
}

pub struct Bootstrap {
    pub engine: Arc<dyn Engine>,
    pub backend: Arc<dyn Rendezvous>,
    pub store: StateStore,
    pub settings: Settings,
}

/// How the node ended up in the cluster's swarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum How {
    /// This node ran `swarm init` and published the tokens.
    Initialised,
    /// This node joined with the published token.
    Joined,
    /// Already a member (reboot / rerun): nothing changed.
    AlreadyMember,
    /// This node had initialised a swarm earlier and published it now (after a restart).
    PublishedExisting,
    /// This node left an orphan swarm it had initialised and joined the cluster's swarm.
    LeftOrphanAndJoined,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub how: How,
    pub role: Role,
    pub swarm_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{backend}: {hint} — {detail}")]
    Unauthorized {
        backend: String,
        cluster: String,
        hint: String,
        detail: String,
    },
    #[error("{backend} refused to {step}: {source}")]
    Backend {
        backend: String,
        step: &'static str,
        #[source]
        source: Failure<RendezvousError>,
    },
    #[error("the Docker engine failed to {step}: {source}")]
    Engine {
        step: &'static str,
        #[source]
        source: Failure<EngineError>,
    },
    #[error(
        "this engine is already in a swarm (swarm id {swarm_id}, CA {ca_digest}) that swarm-agent \
         did not create for cluster {cluster}{detail}: nothing was changed. If that swarm is not \
         needed, run `docker swarm leave --force` on this host and restart swarm-agent; otherwise \
         point the agent at the cluster that swarm belongs to"
    )]
    ForeignSwarm {
        cluster: String,
        swarm_id: String,
        ca_digest: String,
        detail: String,
    },
    #[error(
        "after joining, the swarm's CA is {actual} but cluster {cluster} was published with \
         {expected}: the backend's cluster record does not match the swarm its managers run"
    )]
    CaMismatch {
        cluster: String,
        expected: String,
        actual: String,
    },
    #[error(
        "the swarm on this engine is {state}{detail}: fix it first (`docker swarm unlock`, or \
         `docker swarm leave --force` to start over) and restart swarm-agent"
    )]
    SwarmUnusable { state: &'static str, detail: String },
    #[error(
        "{backend} holds a registration of node id {node_id} whose credential this node no \
         longer has (its state dir was lost or restored from elsewhere while the registration \
         stayed): only the node that registered an id may act for it — {detail}"
    )]
    LostCredential {
        backend: String,
        node_id: String,
        detail: String,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

impl BootstrapError {
    /// Unauthorized / foreign swarm / CA mismatch: the operator must change something.
    /// (A lost credential is not: the agent continues under a new node id.)
    pub fn needs_operator(&self) -> bool {
        !matches!(
            self,
            BootstrapError::State(_) | BootstrapError::LostCredential { .. }
        )
    }
}

/// The lease this node holds while it initialises, kept alive by a renewal task.
struct LeaseKeeper {
    shared: Arc<Mutex<LeaseView>>,
    task: tokio::task::JoinHandle<()>,
}

struct LeaseView {
    fencing_token: u64,
    valid_until: Instant,
    lost: bool,
}

impl LeaseKeeper {
    fn start(
        backend: Arc<dyn Rendezvous>,
        node_id: String,
        lease: &Lease,
        sent: Instant,
        ttl: Duration,
    ) -> LeaseKeeper {
        let shared = Arc::new(Mutex::new(LeaseView {
            fencing_token: lease.fencing_token,
            valid_until: sent + Duration::from_millis(lease.expires_in_ms),
            lost: false,
        }));
        let view = shared.clone();
        let token = lease.fencing_token;
        let task = tokio::spawn(async move {
            // Each extension leaves RENEW_DIVISOR / 2 periods of margin (see the rulebook).
            let period = ttl / RENEW_DIVISOR;
            loop {
                tokio::time::sleep(period).await;
                let sent = Instant::now();
                match backend.renew(&node_id, token, ttl).await {
                    Ok(ClaimResponse {
                        granted: true,
                        lease: Some(l),
                        ..
                    }) if l.fencing_token == token => {
                        let mut v = view.lock().unwrap();
                        v.valid_until = sent + Duration::from_millis(l.expires_in_ms);
                        tracing::debug!("init lease renewed ({} ms)", l.expires_in_ms);
                    }
                    Ok(_) | Err(RendezvousError::Conflict { .. }) => {
                        tracing::warn!("the init lease was lost (renewal refused)");
                        view.lock().unwrap().lost = true;
                        return;
                    }
                    Err(e) => {
                        let mut v = view.lock().unwrap();
                        if Instant::now() >= v.valid_until {
                            tracing::warn!("the init lease expired while renewal failed: {e}");
                            v.lost = true;
                            return;
                        }
                        tracing::warn!("renewing the init lease failed (will retry): {e}");
                    }
                }
            }
        });
        LeaseKeeper { shared, task }
    }

    /// True while the lease is held for sure (not refused, not past its expiry).
    fn held(&self) -> bool {
        let v = self.shared.lock().unwrap();
        !v.lost && Instant::now() < v.valid_until
    }

    fn fencing_token(&self) -> u64 {
        self.shared.lock().unwrap().fencing_token
    }

    fn stop(self) {
        self.task.abort();
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn backend_transient(e: &RendezvousError) -> bool {
    e.is_transient()
}

fn engine_transient(e: &EngineError) -> bool {
    e.is_transient()
}

impl Bootstrap {
    fn s(&self) -> &Settings {
        &self.settings
    }

    fn save(&self, st: &mut AgentState) -> Result<(), BootstrapError> {
        self.store.save(st)?;
        Ok(())
    }

    fn set_phase(&self, st: &mut AgentState, phase: AgentPhase) -> Result<(), BootstrapError> {
        if st.phase != phase {
            tracing::info!("phase: {}", phase.as_str());
            st.phase = phase;
            crate::metrics::agent().set_phase(phase);
        }
        self.save(st)
    }

    /// Persist a transient error for `status` (only when the text changes).
    fn note_error(&self, st: &mut AgentState, message: String) {
        if st.last_error.as_ref().map(|e| &e.message) != Some(&message) {
            st.last_error = Some(LastError {
                message,
                at: rfc3339_now(),
            });
            if let Err(e) = self.store.save(st) {
                tracing::warn!("cannot save the state file: {e}");
            }
        }
    }

    fn backend_err(&self, step: &'static str, f: Failure<RendezvousError>) -> BootstrapError {
        match f {
            Failure::Permanent(e) if e.code() == Some(Code::BadNodeCredential) => {
                BootstrapError::LostCredential {
                    backend: self.backend.describe(),
                    node_id: self.s().node_id.clone(),
                    detail: e.to_string(),
                }
            }
            Failure::Permanent(RendezvousError::Unauthorized(detail)) => {
                BootstrapError::Unauthorized {
                    backend: self.backend.describe(),
                    cluster: self.s().cluster.clone(),
                    hint: self.s().unauthorized_hint.clone(),
                    detail,
                }
            }
            other => BootstrapError::Backend {
                backend: self.backend.describe(),
                step,
                source: other,
            },
        }
    }

    /// Run the bootstrap to the end. Records the outcome (or the error) in the state file.
    pub async fn run(&self) -> Result<Outcome, BootstrapError> {
        let mut st = self.initial_state()?;
        let result = self.run_inner(&mut st).await;
        match &result {
            Ok(o) => {
                crate::metrics::agent().set_role(o.role);
                tracing::info!(
                    "node is part of cluster {} as {} ({:?}), swarm {}",
                    self.s().cluster,
                    o.role,
                    o.how,
                    o.swarm_id.as_deref().unwrap_or("?")
                );
            }
            Err(e) => {
                st.phase = AgentPhase::Failed;
                crate::metrics::agent().set_phase(AgentPhase::Failed);
                st.last_error = Some(LastError {
                    message: e.to_string(),
                    at: rfc3339_now(),
                });
                if let Err(se) = self.store.save(&mut st) {
                    tracing::warn!("cannot save the state file: {se}");
                }
            }
        }
        result
    }

    /// [`Bootstrap::run`]; when the rendezvous refuses this node id's credential
    /// ([`BootstrapError::LostCredential`]: the state dir lost it while the registration
    /// stayed), warn and run again under a NEW node id, saved in the state dir (once: a refusal
    /// of a brand-new id is not a lost file, and is returned).
    pub async fn run_or_rename(&mut self) -> Result<Outcome, BootstrapError> {
        match self.run().await {
            Err(e @ BootstrapError::LostCredential { .. }) => {
                let dir = self
                    .store
                    .path()
                    .parent()
                    .map(std::path::Path::to_path_buf)
                    .unwrap_or_default();
                let new_id = crate::state::replace_node_id(&dir)?;
                self.backend
                    .set_credential(&new_id, crate::state::offer_credential(&dir, &new_id)?);
                tracing::warn!(
                    "{e}. Continuing under the NEW node id {new_id} (saved in {}); the old \
                     registration is dropped once the leader's sync no longer sees it",
                    dir.display()
                );
                self.settings.node_id = new_id;
                self.run().await
            }
            r => r,
        }
    }

    fn initial_state(&self) -> Result<AgentState, BootstrapError> {
        let s = self.s();
        let mut st = match self.store.load()? {
            Some(st) if st.cluster == s.cluster && st.node_id == s.node_id => st,
            Some(old) => {
                tracing::warn!(
                    "the state file {} belongs to cluster {} / node {}: starting a new record",
                    self.store.path().display(),
                    old.cluster,
                    old.node_id
                );
                AgentState::default()
            }
            None => AgentState::default(),
        };
        st.cluster = s.cluster.clone();
        st.node_id = s.node_id.clone();
        st.advertise_addr = Some(s.advertise_addr.clone());
        st.backend = Some(self.backend.describe());
        if st.phase != AgentPhase::Joined {
            st.phase = AgentPhase::Starting;
        }
        crate::metrics::agent().set_phase(st.phase);
        Ok(st)
    }

    async fn run_inner(&self, st: &mut AgentState) -> Result<Outcome, BootstrapError> {
        let was_joined = st.phase == AgentPhase::Joined;
        if !was_joined {
            self.set_phase(st, AgentPhase::WaitingForEngine)?;
        }
        let info = self.wait_engine_settled(st).await?;
        st.hostname = Some(info.hostname.clone());
        match info.swarm.state {
            LocalSwarmState::Active => {
                let out = self.existing_swarm(st, info.clone()).await?;
                self.ensure_credential(st, &info).await?;
                Ok(out)
            }
            LocalSwarmState::Inactive => {
                if was_joined {
                    tracing::warn!(
                        "the state file says this node had joined, but the engine is in no \
                         swarm: bootstrapping again"
                    );
                }
                self.fresh(st, &info).await
            }
            LocalSwarmState::Locked => Err(BootstrapError::SwarmUnusable {
                state: "locked",
                detail: String::new(),
            }),
            LocalSwarmState::Error | LocalSwarmState::Pending => {
                Err(BootstrapError::SwarmUnusable {
                    state: info.swarm.state.as_str(),
                    detail: info
                        .swarm
                        .error
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default(),
                })
            }
        }
    }

    /// `docker info` bounded by [`ENGINE_PROBE_TIMEOUT`]: a half-started dockerd that accepts
    /// connections but does not answer yet counts as unreachable, and is retried.
    async fn engine_info(&self) -> Result<EngineInfo, EngineError> {
        match tokio::time::timeout(ENGINE_PROBE_TIMEOUT, self.engine.info()).await {
            Ok(r) => r,
            Err(_) => Err(EngineError::Unreachable {
                host: self.engine.describe(),
                message: format!("`docker info` did not answer within {ENGINE_PROBE_TIMEOUT:?}"),
            }),
        }
    }

    /// Wait until the engine answers and its swarm state is not `pending`.
    async fn wait_engine_settled(&self, st: &mut AgentState) -> Result<EngineInfo, BootstrapError> {
        let mut logged_up = false;
        let started = Instant::now();
        let mut delays = self.s().policy.delays();
        loop {
            let info = retry::retry_notify(
                self.s().policy,
                &format!("reach the Docker engine at {}", self.engine.describe()),
                engine_transient,
                |e| self.note_error(st, e.to_string()),
                || self.engine_info(),
            )
            .await
            .map_err(|source| BootstrapError::Engine {
                step: "answer `docker info`",
                source,
            })?;
            if !logged_up {
                tracing::info!(
                    "Docker engine {} is up (version {}, host {}, swarm {})",
                    self.engine.describe(),
                    info.server_version,
                    info.hostname,
                    info.swarm.state.as_str()
                );
                logged_up = true;
            }
            if info.swarm.state != LocalSwarmState::Pending || started.elapsed() > PENDING_DEADLINE
            {
                return Ok(info);
            }
            tracing::debug!("swarm state is pending; waiting for it to settle");
            tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))).await;
        }
    }

    // -----------------------------------------------------------------------------------------
    // The engine is already in a swarm.

    async fn existing_swarm(
        &self,
        st: &mut AgentState,
        info: EngineInfo,
    ) -> Result<Outcome, BootstrapError> {
        let local = &info.swarm;
        let details = if local.control_available {
            Some(self.inspect(st).await?)
        } else {
            None
        };
        let role = if local.control_available {
            Role::Manager
        } else {
            Role::Worker
        };

        // 1. A swarm this agent initialised?
        if let Some(init) = st.init.clone() {
            let ours = match (&details, &init.swarm_id) {
                (Some(d), Some(id)) => *id == d.id,
                // Intent written, crash before the swarm id was recorded: the single-node
                // swarm on this manager is the one that init created.
                (Some(_), None) => local.nodes == Some(1),
                (None, _) => false,
            };
            if ours {
                let d = details.clone().expect("ours implies manager details");
                if init.published && init.ca_digest.as_deref() == Some(d.ca_digest.as_str()) {
                    return self.already_member(st, role, &info, Some(d.id.clone()), &d.ca_digest);
                }
                return self.settle_own_swarm(st, d).await;
            }
        }

        // 2. A swarm this agent joined (or had confirmed)?
        if st.phase == AgentPhase::Joined
            && st.swarm_node_id.is_some()
            && st.swarm_node_id == local.node_id
        {
            let same_ca = match (&details, &st.ca_digest) {
                (Some(d), Some(recorded)) => d.ca_digest == *recorded,
                _ => true, // workers: the node id in that swarm is the identity
            };
            if same_ca {
                let digest = st.ca_digest.clone().unwrap_or_default();
                let id = details
                    .as_ref()
                    .map(|d| d.id.clone())
                    .or(st.swarm_id.clone());
                return self.already_member(st, role, &info, id, &digest);
            }
        }

        // 3. Unknown to the state file: is it the cluster's swarm anyway (e.g. state dir lost,
        //    or a join whose answer was lost)? Ask the backend, change nothing on the engine.
        let status = retry::retry_notify(
            self.s().policy,
            "read the cluster status",
            backend_transient,
            |e| self.note_error(st, e.to_string()),
            || self.backend.status(),
        )
        .await
        .map_err(|f| self.backend_err("read the cluster status", f))?;
        let swarm_id = details
            .as_ref()
            .map(|d| d.id.clone())
            .unwrap_or_else(|| "unknown (worker)".into());
        let ca = details
            .as_ref()
            .map(|d| d.ca_digest.clone())
            .unwrap_or_else(|| "unknown (worker)".into());
        if status.phase == Phase::Formed {
            let matches = match &details {
                Some(d) => status.ca_digest.as_deref() == Some(d.ca_digest.as_str()),
                None => local
                    .remote_managers
                    .iter()
                    .any(|m| status.manager_addrs.contains(m)),
            };
            if matches {
                tracing::info!(
                    "the engine is already in cluster {}'s swarm",
                    self.s().cluster
                );
                let digest = status.ca_digest.clone().unwrap_or_default();
                return self.already_member(st, role, &info, status.swarm_id.clone(), &digest);
            }
        }
        Err(BootstrapError::ForeignSwarm {
            cluster: self.s().cluster.clone(),
            swarm_id,
            ca_digest: ca,
            detail: if status.phase == Phase::Formed {
                format!(
                    " (the cluster was formed with CA {})",
                    status.ca_digest.as_deref().unwrap_or("?")
                )
            } else {
                format!(" (the cluster is {})", status.phase)
            },
        })
    }

    fn already_member(
        &self,
        st: &mut AgentState,
        role: Role,
        info: &EngineInfo,
        swarm_id: Option<String>,
        ca_digest: &str,
    ) -> Result<Outcome, BootstrapError> {
        st.role = Some(role);
        if swarm_id.is_some() {
            st.swarm_id = swarm_id.clone();
        }
        if !ca_digest.is_empty() {
            st.ca_digest = Some(ca_digest.to_string());
        }
        st.swarm_node_id = info.swarm.node_id.clone();
        if st.joined_at.is_none() {
            st.joined_at = Some(rfc3339_now());
        }
        self.set_phase(st, AgentPhase::Joined)?;
        Ok(Outcome {
            how: How::AlreadyMember,
            role,
            swarm_id: st.swarm_id.clone(),
        })
    }

    async fn inspect(&self, st: &mut AgentState) -> Result<SwarmDetails, BootstrapError> {
        retry::retry_notify(
            self.s().policy,
            "inspect the local swarm",
            engine_transient,
            |e| self.note_error(st, e.to_string()),
            || self.engine.inspect_swarm(),
        )
        .await
        .map_err(|source| BootstrapError::Engine {
            step: "inspect the swarm",
            source,
        })
    }

    /// A member that holds no accepted credential for its node id (an agent upgraded from a
    /// version before node credentials, whose registration has none yet; or one whose
    /// registration was dropped) registers once, as the role its engine has, so its later calls (sync,
    /// documents) carry one. A registration whose credential was lost is
    /// [`BootstrapError::LostCredential`].
    async fn ensure_credential(
        &self,
        st: &mut AgentState,
        info: &EngineInfo,
    ) -> Result<(), BootstrapError> {
        let dir = self
            .store
            .path()
            .parent()
            .unwrap_or(std::path::Path::new("."));
        if self.backend.credential(&self.s().node_id).is_some()
            && !crate::state::credential_unconfirmed(dir, &self.s().node_id)
        {
            return Ok(());
        }
        let req = RegisterRequest {
            node_id: self.s().node_id.clone(),
            hostname: info.hostname.clone(),
            advertise_addr: self.s().advertise_addr.clone(),
            role: if info.swarm.control_available {
                RequestedRole::Manager
            } else {
                RequestedRole::Worker
            },
            joined_through: st.joined_through.clone(),
            labels: None,
        };
        retry::retry_notify(
            self.s().policy,
            "register with the backend (for this node's credential)",
            backend_transient,
            |e| self.note_error(st, e.to_string()),
            || self.backend.register(&req),
        )
        .await
        .map_err(|f| self.backend_err("register this node", f))?;
        tracing::info!("registered this member node for its rendezvous credential");
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // The engine is in no swarm.

    async fn register(
        &self,
        st: &mut AgentState,
        info: &EngineInfo,
    ) -> Result<Role, BootstrapError> {
        self.set_phase(st, AgentPhase::Registering)?;
        let req = RegisterRequest {
            node_id: self.s().node_id.clone(),
            hostname: info.hostname.clone(),
            advertise_addr: self.s().advertise_addr.clone(),
            role: self.s().requested_role,
            joined_through: st.joined_through.clone(),
            labels: None,
        };
        let resp = retry::retry_notify(
            self.s().policy,
            "register with the backend",
            backend_transient,
            |e| self.note_error(st, e.to_string()),
            || self.backend.register(&req),
        )
        .await
        .map_err(|f| self.backend_err("register this node", f))?;
        if st.role != Some(resp.role) {
            tracing::info!(
                "registered as {} (cluster phase {}, {} managers wanted)",
                resp.role,
                resp.phase,
                resp.target_managers
            );
        }
        st.role = Some(resp.role);
        self.save(st)?;
        Ok(resp.role)
    }

    async fn fresh(
        &self,
        st: &mut AgentState,
        info: &EngineInfo,
    ) -> Result<Outcome, BootstrapError> {
        if st.init.take().is_some() {
            tracing::info!("the swarm this agent initialised earlier is gone from the engine");
        }
        st.swarm_id = None;
        st.ca_digest = None;
        st.swarm_node_id = None;
        st.joined_at = None;
        st.joined_through = None;
        let mut role = self.register(st, info).await?;

        // When to claim next: now for a manager, never for a worker.
        let mut claim_at = (role == Role::Manager).then(Instant::now);
        loop {
            if let Some(at) = claim_at {
                if Instant::now() >= at {
                    self.set_phase(st, AgentPhase::Claiming)?;
                    let Some((resp, sent)) = self.claim(st).await? else {
                        // Awaiting adoption, or no longer a manager: wait for the join info.
                        claim_at = Some(Instant::now() + self.s().long_poll);
                        self.set_phase(st, AgentPhase::WaitingForTokens)?;
                        let resp = self
                            .wait_join_registered(st, info, self.s().long_poll)
                            .await?;
                        if let Some(join) = resp.join {
                            return self.join(st, join, How::Joined).await;
                        }
                        continue;
                    };
                    if resp.granted {
                        let lease = resp.lease.clone().unwrap_or(Lease {
                            holder: self.s().node_id.clone(),
                            fencing_token: 0,
                            expires_in_ms: self.s().lease_ttl.as_millis() as u64,
                        });
                        if let Some(outcome) = self.initialise(st, lease, sent).await? {
                            return Ok(outcome);
                        }
                        // The lease ran out before `swarm init`: nothing was done; decide again.
                        claim_at = Some(Instant::now());
                        continue;
                    }
                    claim_at = self.next_claim(&resp.phase, resp.lease.as_ref());
                }
            }
            self.set_phase(st, AgentPhase::WaitingForTokens)?;
            let wait = match claim_at {
                Some(at) => at
                    .saturating_duration_since(Instant::now())
                    .min(self.s().long_poll),
                None => self.s().long_poll,
            };
            let resp = self.wait_join_registered(st, info, wait).await?;
            if let Some(join) = resp.join {
                return self.join(st, join, How::Joined).await;
            }
            // The registration may have been dropped and made again with another role.
            if st.role != Some(role) {
                role = st.role.unwrap_or(role);
                claim_at = (role == Role::Manager).then(Instant::now);
                continue;
            }
            if role == Role::Manager {
                claim_at = self.next_claim(&resp.phase, resp.lease.as_ref());
            }
        }
    }

    /// When a manager should claim again, given the phase and lease it saw.
    fn next_claim(&self, phase: &Phase, lease: Option<&Lease>) -> Option<Instant> {
        match (phase, lease) {
            (Phase::Formed, _) => None,
            (Phase::Claimed, Some(l)) if l.holder != self.s().node_id => {
                Some(Instant::now() + Duration::from_millis(l.expires_in_ms) + TAKEOVER_MARGIN)
            }
            // Open (or a lease without details): claim again right away.
            _ => Some(Instant::now()),
        }
    }

    /// Claim the lease. Also returns when the answered attempt was sent: a lease's remaining
    /// time counts from then, not from a (possibly late) answer. `None`: the cluster awaits
    /// adoption by its running swarm (no node may init; wait for its join info), or the
    /// rendezvous has made this node a worker since it registered (wait for the join info).
    async fn claim(
        &self,
        st: &mut AgentState,
    ) -> Result<Option<(ClaimResponse, Instant)>, BootstrapError> {
        let sent = Mutex::new(Instant::now());
        let resp = retry::retry_notify(
            self.s().policy,
            "claim the init lease",
            backend_transient,
            |e| self.note_error(st, e.to_string()),
            || {
                *sent.lock().unwrap() = Instant::now();
                self.backend.claim(&self.s().node_id, self.s().lease_ttl)
            },
        )
        .await;
        let resp = match resp {
            Err(Failure::Permanent(e)) if e.code() == Some(Code::AwaitingAdoption) => {
                let msg = format!(
                    "not initialising: cluster {} awaits adoption by its running swarm; waiting \
                     for that swarm's join info ({e})",
                    self.s().cluster
                );
                if st.last_error.as_ref().map(|l| &l.message) != Some(&msg) {
                    tracing::warn!("{msg}");
                }
                self.note_error(st, msg);
                return Ok(None);
            }
            // Registered as a manager, but the rendezvous has made this node a worker since
            // (the swarm already has its managers: the leader's sync reassigns a registration
            // that has not joined yet). Not an error: wait for the join info, which carries
            // the role to join with.
            Err(Failure::Permanent(e)) if e.code() == Some(Code::NotAManager) => {
                tracing::info!(
                    "not claiming: the rendezvous now has this node as a worker ({e}); waiting \
                     for the join info"
                );
                return Ok(None);
            }
            r => r.map_err(|f| self.backend_err("claim the init lease", f))?,
        };
        match (&resp.granted, &resp.lease) {
            (true, Some(l)) => {
                tracing::info!("init lease granted (fencing token {})", l.fencing_token)
            }
            (false, Some(l)) => tracing::info!(
                "init lease held by {} for {} ms more; waiting for its tokens",
                l.holder,
                l.expires_in_ms
            ),
            _ => tracing::debug!("claim answered: phase {}", resp.phase),
        }
        let sent = *sent.lock().unwrap();
        Ok(Some((resp, sent)))
    }

    /// [`Bootstrap::wait_join`], registering again when the rendezvous no longer knows this node
    /// (its registration was dropped, or the rendezvous lost it).
    async fn wait_join_registered(
        &self,
        st: &mut AgentState,
        info: &EngineInfo,
        wait: Duration,
    ) -> Result<swarmstrap_wire::JoinResponse, BootstrapError> {
        match self.wait_join(st, wait).await {
            Err(BootstrapError::Backend {
                source: Failure::Permanent(e),
                ..
            }) if e.code() == Some(Code::NodeNotRegistered) => {
                tracing::warn!("the rendezvous no longer knows this node: registering again");
                self.register(st, info).await?;
                self.wait_join(st, Duration::ZERO).await
            }
            r => r,
        }
    }

    async fn wait_join(
        &self,
        st: &mut AgentState,
        wait: Duration,
    ) -> Result<swarmstrap_wire::JoinResponse, BootstrapError> {
        retry::retry_notify(
            self.s().policy,
            "wait for the join tokens",
            backend_transient,
            |e| self.note_error(st, e.to_string()),
            || self.backend.wait_join(&self.s().node_id, wait),
        )
        .await
        .map_err(|f| self.backend_err("hand out the join tokens", f))
        .and_then(|resp| {
            if resp.phase == Phase::Formed && resp.join.is_none() {
                // Would otherwise spin: formed, yet nothing to join with.
                Err(self.backend_err(
                    "hand out the join tokens",
                    Failure::Permanent(RendezvousError::Rejected {
                        code: "no_join_info".into(),
                        message: "the cluster is formed but the answer holds no join info".into(),
                    }),
                ))
            } else {
                Ok(resp)
            }
        })
    }

    /// Holding a granted lease: init, inspect, publish (unless the lease was lost).
    /// `Ok(None)`: the lease ran out before any `swarm init` took effect; nothing changed.
    async fn initialise(
        &self,
        st: &mut AgentState,
        lease: Lease,
        sent: Instant,
    ) -> Result<Option<Outcome>, BootstrapError> {
        if let Some(hold) = &self.s().debug_hold_file {
            if std::fs::remove_file(hold).is_ok() {
                tracing::warn!(
                    "debug hold after claim ({} removed): not initialising, not renewing, \
                     waiting until killed",
                    hold.display()
                );
                std::future::pending::<()>().await;
            }
        }

        // Crash safety: the intent (with the fencing token) is on disk before the engine acts.
        st.init = Some(InitRecord {
            fencing_token: lease.fencing_token,
            intent_at: rfc3339_now(),
            swarm_id: None,
            ca_digest: None,
            published: false,
        });
        self.set_phase(st, AgentPhase::Initialising)?;
        let keeper = LeaseKeeper::start(
            self.backend.clone(),
            self.s().node_id.clone(),
            &lease,
            sent,
            self.s().lease_ttl,
        );

        let advertise = self.s().advertise_addr.clone();
        // Every attempt first checks that the lease is still held (a late claim answer, or
        // renewals failing while init is retried): never init under an expired lease.
        let init = retry::retry_notify(
            self.s().policy.with_deadline(INIT_DEADLINE),
            "swarm init",
            // "Already part of a swarm" comes as a 503: a retried init whose first answer was
            // lost. Not transient: handled below. A lost lease is never transient.
            |e: &InitAttemptError| match e {
                InitAttemptError::LeaseLost => false,
                InitAttemptError::Engine(e) => engine_transient(e) && !e.is_already_in_swarm(),
            },
            |e| self.note_error(st, e.to_string()),
            || async {
                if !keeper.held() {
                    return Err(InitAttemptError::LeaseLost);
                }
                Ok(self.engine.init(&advertise).await?)
            },
        )
        .await;
        let init = match init {
            Ok(node) => Ok(node),
            Err(
                Failure::Permanent(InitAttemptError::LeaseLost)
                | Failure::Deadline {
                    last: InitAttemptError::LeaseLost,
                    ..
                },
            ) => {
                keeper.stop();
                tracing::warn!("the init lease ran out before `swarm init`: not initialising");
                // An earlier attempt may have taken effect with its answer lost.
                let info = self.wait_engine_settled(st).await?;
                if info.swarm.state == LocalSwarmState::Active {
                    let details = self.inspect(st).await?;
                    return self.settle_own_swarm(st, details).await.map(Some);
                }
                st.init = None;
                self.save(st)?;
                return Ok(None);
            }
            Err(Failure::Permanent(InitAttemptError::Engine(e))) => Err(Failure::Permanent(e)),
            Err(Failure::Deadline {
                elapsed,
                last: InitAttemptError::Engine(last),
            }) => Err(Failure::Deadline { elapsed, last }),
        };
        // The engine answers `swarm init` with this node's id; the swarm id comes from inspect.
        let node = match init {
            Ok(node) => node,
            // A retried init whose first answer was lost: the swarm exists, inspect it below.
            Err(Failure::Permanent(e)) if e.is_already_in_swarm() => {
                let again = self.engine.info().await;
                match again {
                    Ok(i) if i.swarm.control_available && i.swarm.nodes == Some(1) => {
                        i.swarm.node_id.unwrap_or_default()
                    }
                    _ => {
                        return Err(BootstrapError::Engine {
                            step: "run swarm init",
                            source: Failure::Permanent(e),
                        })
                    }
                }
            }
            Err(source) => {
                return Err(BootstrapError::Engine {
                    step: "run swarm init",
                    source,
                })
            }
        };
        tracing::info!("swarm init done (this node is {node} in the new swarm)");
        let details = self.inspect(st).await?;
        if let Some(i) = st.init.as_mut() {
            i.swarm_id = Some(details.id.clone());
            i.ca_digest = Some(details.ca_digest.clone());
        }
        self.save(st)?;

        if !keeper.held() {
            tracing::warn!(
                "the init lease was lost before publishing: not publishing this swarm (fencing)"
            );
            keeper.stop();
            return self.settle_own_swarm(st, details).await.map(Some);
        }
        let token = keeper.fencing_token();
        let published = self.publish(st, &details, token).await;
        keeper.stop();
        match published {
            Ok(()) => self
                .finish_initialiser(st, details, How::Initialised)
                .await
                .map(Some),
            Err(PublishError::Fenced(msg)) => {
                tracing::warn!("publish refused ({msg}): another node holds the lease now");
                self.settle_own_swarm(st, details).await.map(Some)
            }
            Err(PublishError::Fatal(e)) => Err(e),
        }
    }

    async fn publish(
        &self,
        st: &mut AgentState,
        details: &SwarmDetails,
        fencing_token: u64,
    ) -> Result<(), PublishError> {
        self.set_phase(st, AgentPhase::Publishing)
            .map_err(PublishError::Fatal)?;
        let req = PublishRequest {
            node_id: self.s().node_id.clone(),
            fencing_token,
            swarm_id: details.id.clone(),
            ca_digest: details.ca_digest.clone(),
            manager_addrs: vec![format!("{}:{SWARM_PORT}", self.s().advertise_addr)],
            manager_token: details.manager_token.clone(),
            worker_token: details.worker_token.clone(),
        };
        match retry::retry_notify(
            self.s().policy.with_deadline(self.s().lease_ttl),
            "publish the join tokens",
            backend_transient,
            |e| self.note_error(st, e.to_string()),
            || self.backend.publish(&req),
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(Failure::Permanent(RendezvousError::Conflict { code, message })) => {
                Err(PublishError::Fenced(format!("{code}: {message}")))
            }
            // Still unreachable after a whole lease TTL: whoever holds the lease now decides;
            // settle against the backend.
            Err(Failure::Deadline { last, .. }) => Err(PublishError::Fenced(last.to_string())),
            Err(f) => Err(PublishError::Fatal(
                self.backend_err("publish the join tokens", f),
            )),
        }
    }

    async fn finish_initialiser(
        &self,
        st: &mut AgentState,
        details: SwarmDetails,
        how: How,
    ) -> Result<Outcome, BootstrapError> {
        if let Some(i) = st.init.as_mut() {
            i.published = true;
            i.swarm_id = Some(details.id.clone());
            i.ca_digest = Some(details.ca_digest.clone());
        }
        let info = self.engine.info().await.ok();
        st.role = Some(Role::Manager);
        st.swarm_id = Some(details.id.clone());
        st.ca_digest = Some(details.ca_digest.clone());
        st.swarm_node_id = info.and_then(|i| i.swarm.node_id);
        st.joined_at = Some(rfc3339_now());
        self.set_phase(st, AgentPhase::Joined)?;
        tracing::info!(
            "published swarm {} for cluster {}",
            details.id,
            self.s().cluster
        );
        Ok(Outcome {
            how,
            role: Role::Manager,
            swarm_id: Some(details.id),
        })
    }

    /// This engine runs a swarm the agent initialised, not (yet) confirmed as the cluster's.
    async fn settle_own_swarm(
        &self,
        st: &mut AgentState,
        details: SwarmDetails,
    ) -> Result<Outcome, BootstrapError> {
        tracing::info!(
            "this engine runs swarm {} initialised by this agent; checking it against the cluster",
            details.id
        );
        let info = self.wait_engine_settled(st).await?;
        self.register(st, &info).await?;
        let mut claim_at = Some(Instant::now());
        loop {
            self.set_phase(st, AgentPhase::WaitingForTokens)?;
            let wait = match claim_at {
                Some(at) => at.saturating_duration_since(Instant::now()),
                None => self.s().long_poll,
            }
            .min(self.s().long_poll);
            let resp = self.wait_join(st, wait).await?;
            if let Some(join) = resp.join {
                if join.ca_digest == details.ca_digest {
                    // Our publish went through before the crash / lost answer.
                    return self
                        .finish_initialiser(st, details, How::PublishedExisting)
                        .await;
                }
                tracing::warn!(
                    "cluster {} was formed by swarm {} (CA {}); leaving the orphan swarm {} that \
                     this agent initialised",
                    self.s().cluster,
                    join.swarm_id,
                    join.ca_digest,
                    details.id
                );
                retry::retry_notify(
                    self.s().policy.with_deadline(INIT_DEADLINE),
                    "leave the orphan swarm",
                    engine_transient,
                    |e| self.note_error(st, e.to_string()),
                    || self.engine.leave(true),
                )
                .await
                .map_err(|source| BootstrapError::Engine {
                    step: "leave the orphan swarm",
                    source,
                })?;
                st.init = None;
                self.save(st)?;
                return self.join(st, join, How::LeftOrphanAndJoined).await;
            }
            if let Some(at) = claim_at {
                if Instant::now() >= at && resp.phase != Phase::Formed {
                    self.set_phase(st, AgentPhase::Claiming)?;
                    let Some((c, _)) = self.claim(st).await? else {
                        claim_at = Some(Instant::now() + self.s().long_poll);
                        continue;
                    };
                    if c.granted {
                        let token = c.lease.as_ref().map(|l| l.fencing_token).unwrap_or(0);
                        if let Some(i) = st.init.as_mut() {
                            i.fencing_token = token;
                        }
                        self.save(st)?;
                        match self.publish(st, &details, token).await {
                            Ok(()) => {
                                return self
                                    .finish_initialiser(st, details, How::PublishedExisting)
                                    .await
                            }
                            Err(PublishError::Fenced(msg)) => {
                                tracing::warn!("publish refused ({msg}); checking again");
                                claim_at = Some(Instant::now());
                                continue;
                            }
                            Err(PublishError::Fatal(e)) => return Err(e),
                        }
                    }
                    claim_at = self.next_claim(&c.phase, c.lease.as_ref());
                    continue;
                }
            }
            claim_at = self.next_claim(&resp.phase, resp.lease.as_ref());
        }
    }

    /// Join the published swarm with the token of this node's role, through each manager
    /// address in order, retrying transient failures (managers joining concurrently).
    async fn join(
        &self,
        st: &mut AgentState,
        join: JoinInfo,
        how: How,
    ) -> Result<Outcome, BootstrapError> {
        st.role = Some(join.role);
        self.set_phase(st, AgentPhase::Joining)?;
        tracing::info!(
            "joining swarm {} as {} through {}",
            join.swarm_id,
            join.role,
            join.manager_addrs.join(", ")
        );
        let advertise = self.s().advertise_addr.clone();
        // Start at a random manager: the engine joins raft through the address it joined
        // through if it is ever promoted, so spreading the joins means no one manager's death
        // strands every promotion.
        let mut addrs = join.manager_addrs.clone();
        if !addrs.is_empty() {
            let start = rand::random_range(0..addrs.len());
            addrs.rotate_left(start);
        }
        let through: Mutex<Option<String>> = Mutex::new(None);
        let attempt = || async {
            let mut last: Option<EngineError> = None;
            for addr in &addrs {
                let req = JoinRequest {
                    remote_addr: addr.clone(),
                    token: join.token.clone(),
                    advertise_addr: advertise.clone(),
                };
                match self.engine.join(&req).await {
                    Ok(()) => {
                        *through.lock().unwrap() = Some(addr.clone());
                        return Ok(());
                    }
                    Err(e) if e.is_already_in_swarm() => return Ok(()),
                    Err(e) => {
                        tracing::debug!("join through {addr} failed: {e}");
                        let transient = e.is_transient();
                        last = Some(e);
                        if !transient {
                            break;
                        }
                    }
                }
            }
            Err(last.unwrap_or_else(|| EngineError::Protocol {
                host: self.engine.describe(),
                message: "the cluster published no manager address".into(),
            }))
        };
        retry::retry_notify(
            self.s().policy.with_deadline(JOIN_DEADLINE),
            "join the swarm",
            engine_transient,
            |e| self.note_error(st, e.to_string()),
            attempt,
        )
        .await
        .map_err(|source| BootstrapError::Engine {
            step: "join the swarm",
            source,
        })?;

        // A join can finish in the background (pending); wait for it and check the result.
        let info = self.wait_engine_settled(st).await?;
        if info.swarm.state != LocalSwarmState::Active {
            return Err(BootstrapError::SwarmUnusable {
                state: info.swarm.state.as_str(),
                detail: info
                    .swarm
                    .error
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default(),
            });
        }
        if info.swarm.control_available {
            let d = self.inspect(st).await?;
            if d.ca_digest != join.ca_digest {
                return Err(BootstrapError::CaMismatch {
                    cluster: self.s().cluster.clone(),
                    expected: join.ca_digest,
                    actual: d.ca_digest,
                });
            }
        }
        st.swarm_id = Some(join.swarm_id.clone());
        st.ca_digest = Some(join.ca_digest.clone());
        st.swarm_node_id = info.swarm.node_id.clone();
        st.joined_at = Some(rfc3339_now());
        let through = through.lock().unwrap().clone();
        if through.is_some() {
            st.joined_through = through;
        }
        self.set_phase(st, AgentPhase::Joined)?;
        // Tell the rendezvous which manager the engine joined through (a hint for the quorum
        // keeper). Best effort: one attempt, the join is done either way.
        if st.joined_through.is_some() && self.s().record_joined_through {
            let req = RegisterRequest {
                node_id: self.s().node_id.clone(),
                hostname: info.hostname.clone(),
                advertise_addr: self.s().advertise_addr.clone(),
                role: self.s().requested_role,
                joined_through: st.joined_through.clone(),
                labels: None,
            };
            if let Err(e) = self.backend.register(&req).await {
                tracing::debug!("could not record the join address with the rendezvous: {e}");
            }
        }
        Ok(Outcome {
            how,
            role: join.role,
            swarm_id: Some(join.swarm_id),
        })
    }
}

/// Why one `swarm init` attempt failed, or was not made.
#[derive(Debug, thiserror::Error)]
enum InitAttemptError {
    /// The init lease is no longer held for sure: the attempt was not made.
    #[error("the init lease is no longer held: not running `swarm init`")]
    LeaseLost,
    #[error(transparent)]
    Engine(#[from] EngineError),
}

enum PublishError {
    /// The backend refused under fencing (or stayed unreachable for a whole TTL).
    Fenced(String),
    Fatal(BootstrapError),
}

#[cfg(test)]
#[path = "bootstrap_tests.rs"]
mod tests;
