//! `swarm-agent status [--json] [--wait [--timeout SECS] [--expect-nodes N]]`: what the engine,
//! the swarm, the agent and the backend say. Works (and says so) when the engine or the backend
//! is down: every probe has a ~2 s timeout and they run concurrently. `--wait` repeats the probe
//! (capped backoff with jitter, [`crate::retry`]) until this node is joined and healthy (and,
//! with `--expect-nodes`, the swarm has that many Ready nodes) or the timeout passes.

use crate::backend;
use crate::config::{Config, Overrides};
use crate::engine::{BollardEngine, Engine, LocalSwarmState};
use crate::state::{self, AgentState, LastError, StateStore};
use serde::Serialize;
use std::process::ExitCode;
use std::time::Duration;
use swarmstrap_wire::Role;

pub const EXIT_HEALTHY: u8 = 0;
pub const EXIT_NOT_READY: u8 = 1;
pub const EXIT_ERROR: u8 = 2;

/// Probe timeout for the engine and the backend.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Version of the `--json` document's shape: raised when a field is removed or changes
/// meaning (new fields do not raise it).
pub const SCHEMA: u32 = 1;

/// `--wait`: the first re-probe after ~0.25–0.5 s, then at most every ~2–4 s (each probe is a
/// few engine and backend calls; a joining node needs seconds, a forming cluster minutes).
const WAIT_POLICY: crate::retry::Policy = crate::retry::Policy {
    base_initial: Duration::from_millis(250),
    base_cap: Duration::from_secs(2),
    deadline: None,
};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print one JSON object (stable field names, see README) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Wait until this node is joined and healthy (exit 0), or exit 1 with the reason once
    /// --timeout passes. Prints the final report.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 600, requires = "wait")]
    pub timeout: u64,
    /// With --wait, on a manager: also wait until the swarm has at least N nodes with status
    /// Ready.
    #[arg(long, value_name = "N", requires = "wait", value_parser = clap::value_parser!(u64).range(1..))]
    pub expect_nodes: Option<u64>,
    #[command(flatten)]
    pub config: Overrides,
}

/// The `--json` document. Field names are part of the interface (README).
#[derive(Debug, Serialize, PartialEq)]
pub struct StatusReport {
    /// [`SCHEMA`].
    pub schema: u32,
    pub cluster: String,
    /// Joined and healthy (exit code 0).
    pub healthy: bool,
    /// The engine is an active member of a swarm.
    pub joined: bool,
    pub engine: EngineStatus,
    pub swarm: SwarmStatus,
    pub agent: AgentStatus,
    pub backend: BackendStatus,
    pub lb: LbStatus,
    pub lifecycle: LifecycleStatus,
}

/// Quorum keeper, drains and manager loss (the cluster lifecycle after the bootstrap).
#[derive(Debug, Serialize, PartialEq, Default)]
pub struct LifecycleStatus {
    /// Healthy managers minus the raft majority (from this manager's node list, else from the
    /// keeper's report): how many more managers may fail. Negative: quorum lost.
    pub quorum_margin: Option<i64>,
    pub target_managers: Option<u8>,
    /// Hostname of the leader whose agent runs the keeper (from its report).
    pub keeper_leader: Option<String>,
    pub keeper_last_action: Option<crate::lifecycle::docs::RecordedAction>,
    /// The role change the keeper has in flight (it decides nothing else until it ends).
    pub keeper_inflight: Option<crate::lifecycle::docs::InflightStep>,
    /// The rendezvous awaits adoption by the running swarm (its formation was lost).
    pub awaiting_adoption: bool,
    /// Times the running swarm was adopted into the cluster again.
    pub adoptions: u64,
    /// Nodes being drained by `swarm-agent leave`: `hostname: state (N tasks left)`.
    pub pending_drains: Vec<String>,
    /// No manager of this node's swarm reachable (since when, if the agent recorded it).
    pub no_manager_reachable: bool,
    pub no_manager_since: Option<String>,
    /// What to do about it.
    pub advice: Option<String>,
}

/// The live load-balancer config (from `state_dir/lb.json` and the file on disk).
#[derive(Debug, Serialize, PartialEq, Default)]
pub struct LbStatus {
    pub enabled: bool,
    pub path: String,
    /// Membership document version the file was rendered from.
    pub version: Option<u64>,
    /// Newest document version seen (differs from `version` while a new one fails to apply).
    pub seen_version: Option<u64>,
    /// `sha256:<hex>` of the applied config.
    pub sha256: Option<String>,
    pub applied_at: Option<String>,
    pub ready_nodes: Option<usize>,
    /// The file on disk differs from what was applied (edited, removed).
    pub drift: Option<bool>,
    pub last_error: Option<LastError>,
}

#[derive(Debug, Serialize, PartialEq, Default)]
pub struct EngineStatus {
    pub host: String,
    pub reachable: bool,
    pub version: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, PartialEq, Default)]
pub struct SwarmStatus {
    /// inactive | pending | active | locked | error | unknown
    pub state: String,
    /// Docker's node id of this engine.
    pub node_id: Option<String>,
    pub hostname: Option<String>,
    pub role: Option<Role>,
    /// Managers only.
    pub leader: Option<bool>,
    pub managers_total: Option<u64>,
    pub managers_reachable: Option<u64>,
    pub nodes_total: Option<u64>,
    /// Managers only: nodes whose status is Ready.
    pub nodes_ready: Option<u64>,
    pub swarm_id: Option<String>,
    pub ca_digest: Option<String>,
    pub error: Option<String>,
    /// Workers: can this node reach any manager's swarm port?
    pub manager_reachable: Option<bool>,
}

#[derive(Debug, Serialize, PartialEq, Default)]
pub struct AgentStatus {
    pub node_id: Option<String>,
    pub phase: Option<String>,
    pub role: Option<Role>,
    pub joined_at: Option<String>,
    pub last_error: Option<LastError>,
    pub state_file: String,
    /// The version of the running `swarm-agent run` (from `<state>/agent.run`, if that
    /// process is alive): after `swarm-agent upgrade`, the version that really runs.
    pub running_version: Option<String>,
    pub running_pid: Option<u32>,
    /// This program's version (the binary on disk, which may be newer than the running one).
    pub installed_version: String,
}

#[derive(Debug, Serialize, PartialEq, Default)]
pub struct BackendStatus {
    /// coordinator | secrets-manager
    pub kind: String,
    pub description: Option<String>,
    pub reachable: bool,
    /// open | claimed | formed
    pub phase: Option<String>,
    pub lease_holder: Option<String>,
    pub swarm_id: Option<String>,
    pub ca_digest: Option<String>,
    /// Init claims are refused until the running swarm adopts the cluster.
    pub awaiting_adoption: bool,
    pub adoptions: u64,
    pub error: Option<String>,
    #[serde(skip)]
    pub keeper: Option<crate::lifecycle::docs::KeeperReport>,
    #[serde(skip)]
    pub drains: Option<crate::lifecycle::docs::Drains>,
}

impl StatusArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let cfg = Config::load(&self.config)?;
        let engine = BollardEngine::new(&cfg.docker_host, PROBE_TIMEOUT);
        let (report, verdict) = if self.wait {
            let timeout = Duration::from_secs(self.timeout);
            let (report, verdict) = wait_ready(&cfg, &engine, timeout, self.expect_nodes).await;
            (report, Some(verdict))
        } else {
            (collect(&cfg, &engine).await, None)
        };
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", render_text(&report));
        }
        match verdict {
            None => Ok(ExitCode::from(if report.healthy {
                EXIT_HEALTHY
            } else {
                EXIT_NOT_READY
            })),
            Some(Ok(())) => Ok(ExitCode::from(EXIT_HEALTHY)),
            Some(Err(WaitError::Timeout(reason))) => {
                eprintln!(
                    "swarm-agent: status --wait: not ready after {} s: {reason}",
                    self.timeout
                );
                Ok(ExitCode::from(EXIT_NOT_READY))
            }
            Some(Err(WaitError::Usage(reason))) => Err(anyhow::anyhow!(reason)),
        }
    }
}

/// Why `--wait` stopped without success.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum WaitError {
    /// The timeout passed; the last reason the node was not ready.
    #[error("{0}")]
    Timeout(String),
    /// Waiting cannot succeed (e.g. `--expect-nodes` on a worker).
    #[error("{0}")]
    Usage(String),
}

/// Why the report is not what `--wait` waits for, or `None` when it is. `Err`: waiting cannot
/// help.
pub fn not_ready_reason(
    r: &StatusReport,
    expect_nodes: Option<u64>,
) -> Result<Option<String>, String> {
    if !r.engine.reachable {
        return Ok(Some(format!(
            "the Docker engine ({}) is not reachable: {}",
            r.engine.host,
            opt(&r.engine.error)
        )));
    }
    if !r.joined {
        let mut why = format!(
            "not joined yet (swarm {}, agent phase {})",
            r.swarm.state,
            opt(&r.agent.phase)
        );
        if let Some(e) = &r.agent.last_error {
            why.push_str(&format!("; agent's last error: {}", e.message));
        }
        return Ok(Some(why));
    }
    if !r.healthy {
        let why = if let Some(advice) = &r.lifecycle.advice {
            advice.clone()
        } else if let Some(e) = &r.swarm.error {
            format!("swarm error: {e}")
        } else if r.swarm.role == Some(Role::Manager)
            && !matches!((r.swarm.managers_total, r.swarm.managers_reachable), (Some(t), Some(re)) if re * 2 > t)
        {
            format!(
                "no reachable majority of managers ({} of {} reachable)",
                opt(&r.swarm.managers_reachable),
                opt(&r.swarm.managers_total)
            )
        } else {
            "the swarm's CA digest differs from the one recorded at join time or published by \
             the backend"
                .to_string()
        };
        return Ok(Some(format!("joined but not healthy: {why}")));
    }
    if let Some(n) = expect_nodes {
        if r.swarm.role != Some(Role::Manager) {
            return Err(format!(
                "--expect-nodes {n}: this node is a {}, and only a manager sees the swarm's \
                 node list; run it on a manager, or drop --expect-nodes",
                opt(&r.swarm.role)
            ));
        }
        let ready = r.swarm.nodes_ready.unwrap_or(0);
        if ready < n {
            return Ok(Some(format!(
                "{ready} of the {n} expected nodes are Ready ({} in the swarm)",
                opt(&r.swarm.nodes_total)
            )));
        }
    }
    Ok(None)
}

/// Probe until [`not_ready_reason`] is `None` (capped backoff with jitter between probes) or
/// `timeout` passes. Returns the last report and the verdict.
pub async fn wait_ready(
    cfg: &Config,
    engine: &dyn Engine,
    timeout: Duration,
    expect_nodes: Option<u64>,
) -> (StatusReport, Result<(), WaitError>) {
    let last: std::sync::Mutex<Option<StatusReport>> = std::sync::Mutex::new(None);
    let probe = crate::retry::retry(
        WAIT_POLICY.with_deadline(timeout),
        "waiting for this node to be ready",
        |e: &WaitError| matches!(e, WaitError::Timeout(_)),
        || async {
            let r = collect(cfg, engine).await;
            let verdict = not_ready_reason(&r, expect_nodes);
            *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
            match verdict {
                Ok(None) => Ok(()),
                Ok(Some(why)) => Err(WaitError::Timeout(why)),
                Err(usage) => Err(WaitError::Usage(usage)),
            }
        },
    );
    // The deadline also bounds a probe in progress (each probe is bounded too, ~2.5 s a step).
    let verdict = match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(f)) => Err(f.into_inner()),
        Err(_) => Err(WaitError::Timeout(String::new())),
    };
    let report = last.into_inner().unwrap_or_else(|p| p.into_inner());
    let report = match report {
        Some(r) => r,
        None => collect(cfg, engine).await,
    };
    let verdict = match verdict {
        // Timed out inside a probe: the reason is the last finished probe's.
        Err(WaitError::Timeout(why)) if why.is_empty() => Err(WaitError::Timeout(
            not_ready_reason(&report, expect_nodes)
                .ok()
                .flatten()
                .unwrap_or_else(|| "no probe finished within the timeout".into()),
        )),
        v => v,
    };
    (report, verdict)
}

async fn with_timeout<T, E: std::fmt::Display>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(PROBE_TIMEOUT + Duration::from_millis(500), fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("{what}: no answer within {PROBE_TIMEOUT:?}")),
    }
}

/// Gather everything; never fails (each part reports its own error).
pub async fn collect(cfg: &Config, engine: &dyn Engine) -> StatusReport {
    let store = StateStore::new(&cfg.state_dir);
    let (agent_state, state_error) = match store.load() {
        Ok(s) => (s, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let (engine_part, backend_part) = tokio::join!(probe_engine(engine), probe_backend(cfg));
    let (engine_status, mut swarm) = engine_part;

    let running = state::running_agent(&cfg.state_dir);
    let mut agent = AgentStatus {
        node_id: state::read_node_id(&cfg.state_dir),
        state_file: store.path().display().to_string(),
        running_version: running.as_ref().map(|r| r.version.clone()),
        running_pid: running.as_ref().map(|r| r.pid),
        installed_version: crate::VERSION.to_string(),
        ..Default::default()
    };
    if let Some(st) = &agent_state {
        agent.phase = Some(st.phase.as_str().to_string());
        agent.role = st.role;
        agent.joined_at = st.joined_at.clone();
        agent.last_error = st.last_error.clone();
        // Workers cannot read the CA through the API: report what was recorded at join time.
        if swarm.state == "active" && swarm.ca_digest.is_none() {
            swarm.ca_digest = st.ca_digest.clone();
            if swarm.swarm_id.is_none() {
                swarm.swarm_id = st.swarm_id.clone();
            }
        }
    }
    if let Some(e) = state_error {
        agent.last_error = Some(LastError {
            message: e,
            at: state::rfc3339_now(),
        });
    }

    let joined = swarm.state == "active";
    let lifecycle = lifecycle_status(&swarm, agent_state.as_ref(), &backend_part);
    let healthy = joined
        && !lifecycle.no_manager_reachable
        && swarm_healthy(&swarm, agent_state.as_ref(), &backend_part);
    let lb = lb_status(cfg);
    StatusReport {
        schema: SCHEMA,
        cluster: cfg.cluster.clone(),
        healthy,
        joined,
        engine: engine_status,
        swarm,
        agent,
        backend: backend_part,
        lb,
        lifecycle,
    }
}

fn lifecycle_status(
    swarm: &SwarmStatus,
    st: Option<&AgentState>,
    b: &BackendStatus,
) -> LifecycleStatus {
    let mut l = LifecycleStatus::default();
    if let Some(k) = &b.keeper {
        l.quorum_margin = Some(k.quorum_margin);
        l.target_managers = Some(k.target);
        l.keeper_leader = Some(k.leader.clone()).filter(|s| !s.is_empty());
        l.keeper_last_action = k.last_action().cloned();
        l.keeper_inflight = k.inflight.clone();
    }
    l.awaiting_adoption = b.awaiting_adoption;
    l.adoptions = b.adoptions;
    if let (Some(t), Some(r)) = (swarm.managers_total, swarm.managers_reachable) {
        l.quorum_margin = Some(r as i64 - crate::lifecycle::nodes::majority(t as usize) as i64);
    }
    if let Some(d) = &b.drains {
        l.pending_drains = d
            .requests
            .values()
            .map(|r| {
                format!(
                    "{}: {}{}",
                    r.hostname,
                    r.state.as_str(),
                    r.tasks_left
                        .map(|n| format!(" ({n} tasks left)"))
                        .unwrap_or_default()
                )
            })
            .collect();
    }
    let lost = swarm.state == "active"
        && (swarm.manager_reachable == Some(false)
            || (swarm.role == Some(Role::Manager) && l.quorum_margin.is_some_and(|m| m < 0)));
    l.no_manager_since = st.and_then(|s| s.no_manager_since.clone());
    l.no_manager_reachable = lost || (swarm.state == "active" && l.no_manager_since.is_some());
    if l.no_manager_reachable {
        let id = swarm.swarm_id.clone().unwrap_or_else(|| "SWARM_ID".into());
        l.advice = Some(format!(
            "no manager of swarm {id} is reachable (quorum lost). swarmstrap never \
             re-initialises by itself. If the managers come back, wait; if every manager is \
             lost for good, run `swarm-agent recover --swarm-id {id}` on one node (allows \
             exactly one new swarm init)"
        ));
    }
    l
}

fn lb_status(cfg: &Config) -> LbStatus {
    let mut lb = LbStatus {
        enabled: cfg.lb.enabled,
        path: cfg.lb.path.display().to_string(),
        ..Default::default()
    };
    match crate::lb::status::load(&cfg.state_dir) {
        Ok(Some(st)) => {
            lb.drift = crate::lb::status::drift(&st);
            lb.version = st.version;
            lb.seen_version = st.seen_version;
            lb.sha256 = st.sha256;
            lb.applied_at = st.applied_at;
            lb.ready_nodes = st.ready_nodes;
            lb.last_error = st.last_error;
        }
        Ok(None) => {}
        Err(e) => {
            lb.last_error = Some(LastError {
                message: format!("cannot read the load-balancer state: {e}"),
                at: state::rfc3339_now(),
            })
        }
    }
    lb
}

/// Active, no swarm error, a manager quorum (on managers), and the CA this agent recorded
/// (or the backend published) is the one the swarm runs.
fn swarm_healthy(s: &SwarmStatus, st: Option<&AgentState>, b: &BackendStatus) -> bool {
    if s.error.is_some() {
        return false;
    }
    if s.role == Some(Role::Manager) {
        match (s.managers_total, s.managers_reachable) {
            (Some(t), Some(r)) if r * 2 > t => {}
            _ => return false,
        }
    }
    if let Some(actual) = &s.ca_digest {
        if let Some(recorded) = st.and_then(|st| st.ca_digest.as_ref()) {
            if recorded != actual {
                return false;
            }
        }
        if let Some(published) = &b.ca_digest {
            if published != actual {
                return false;
            }
        }
    }
    true
}

async fn probe_engine(engine: &dyn Engine) -> (EngineStatus, SwarmStatus) {
    let mut es = EngineStatus {
        host: engine.describe(),
        ..Default::default()
    };
    let mut ss = SwarmStatus {
        state: "unknown".into(),
        ..Default::default()
    };
    let info = match with_timeout("docker info", engine.info()).await {
        Ok(i) => i,
        Err(e) => {
            es.error = Some(e);
            return (es, ss);
        }
    };
    es.reachable = true;
    es.version = Some(info.server_version.clone());
    let sw = &info.swarm;
    ss.state = sw.state.as_str().to_string();
    ss.hostname = Some(info.hostname.clone());
    ss.node_id = sw.node_id.clone();
    ss.error = sw.error.clone();
    if sw.state != LocalSwarmState::Active {
        return (es, ss);
    }
    ss.nodes_total = sw.nodes;
    ss.managers_total = sw.managers;
    if !sw.control_available {
        ss.role = Some(Role::Worker);
        ss.manager_reachable =
            Some(crate::lifecycle::supervise::any_reachable(&sw.remote_managers).await);
        return (es, ss);
    }
    ss.role = Some(Role::Manager);
    ss.swarm_id = sw.cluster_id.clone();
    match with_timeout("docker swarm inspect", engine.inspect_swarm()).await {
        Ok(d) => {
            ss.swarm_id = Some(d.id);
            ss.ca_digest = Some(d.ca_digest);
        }
        Err(e) => ss.error = Some(e),
    }
    match with_timeout("docker node ls", engine.nodes()).await {
        Ok(nodes) => {
            let managers: Vec<_> = nodes.iter().filter(|n| n.role == Role::Manager).collect();
            ss.managers_total = Some(managers.len() as u64);
            ss.managers_reachable = Some(
                managers
                    .iter()
                    .filter(|n| n.reachable == Some(true))
                    .count() as u64,
            );
            ss.nodes_total = Some(nodes.len() as u64);
            ss.nodes_ready = Some(nodes.iter().filter(|n| n.state == "ready").count() as u64);
            ss.leader = Some(
                nodes
                    .iter()
                    .any(|n| Some(&n.id) == sw.node_id.as_ref() && n.leader),
            );
        }
        Err(e) => ss.error = Some(e),
    }
    (es, ss)
}

async fn probe_backend(cfg: &Config) -> BackendStatus {
    let mut bs = BackendStatus {
        kind: cfg.backend.as_str().to_string(),
        ..Default::default()
    };
    let backend = match with_timeout("open the backend", backend::open(cfg, PROBE_TIMEOUT)).await {
        Ok(b) => crate::relay::for_command(cfg, b),
        Err(e) => {
            bs.error = Some(e);
            return bs;
        }
    };
    bs.description = Some(backend.describe());
    match with_timeout("cluster status", backend.status()).await {
        Ok(s) => {
            bs.reachable = true;
            bs.phase = Some(s.phase.to_string());
            bs.lease_holder = s.lease.map(|l| l.holder);
            bs.swarm_id = s.swarm_id;
            bs.ca_digest = s.ca_digest;
            bs.awaiting_adoption = s.awaiting_adoption;
            bs.adoptions = s.adoptions;
        }
        Err(e) => bs.error = Some(e),
    }
    if bs.reachable {
        use crate::lifecycle::docs;
        let (k, d) = tokio::join!(
            with_timeout(
                "keeper report",
                docs::read::<docs::KeeperReport>(backend.as_ref(), docs::KEEPER_DOC)
            ),
            with_timeout(
                "drains",
                docs::read::<docs::Drains>(backend.as_ref(), docs::DRAINS_DOC)
            ),
        );
        bs.keeper = k.ok().map(|(_, r)| r).filter(|r| r.managers > 0);
        bs.drains = d.ok().map(|(_, r)| r);
    }
    bs
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".into())
}

/// The compact aligned `key: value` list.
pub fn render_text(r: &StatusReport) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let mut rows: Vec<(&str, String)> = vec![
        ("cluster", r.cluster.clone()),
        ("healthy", yes_no(r.healthy).into()),
        (
            "engine",
            if r.engine.reachable {
                format!("reachable, {} ({})", opt(&r.engine.version), r.engine.host)
            } else {
                format!("UNREACHABLE ({}): {}", r.engine.host, opt(&r.engine.error))
            },
        ),
        ("swarm", r.swarm.state.clone()),
        ("swarm node id", opt(&r.swarm.node_id)),
        ("hostname", opt(&r.swarm.hostname)),
        (
            "role",
            match (&r.swarm.role, r.swarm.leader) {
                (Some(role), Some(true)) => format!("{role} (leader)"),
                (Some(role), _) => role.to_string(),
                (None, _) => "-".into(),
            },
        ),
        (
            "managers",
            match (r.swarm.managers_total, r.swarm.managers_reachable) {
                (Some(t), Some(re)) => format!("{t} total, {re} reachable"),
                (Some(t), None) => format!("{t} total"),
                _ => "-".into(),
            },
        ),
        (
            "nodes",
            match (r.swarm.nodes_total, r.swarm.nodes_ready) {
                (Some(t), Some(ready)) => format!("{t} ({ready} Ready)"),
                (t, _) => opt(&t),
            },
        ),
        ("swarm id", opt(&r.swarm.swarm_id)),
        ("ca digest", opt(&r.swarm.ca_digest)),
    ];
    if let Some(e) = &r.swarm.error {
        rows.push(("swarm error", e.clone()));
    }
    rows.push(("agent node id", opt(&r.agent.node_id)));
    rows.push((
        "agent version",
        match (&r.agent.running_version, r.agent.running_pid) {
            (Some(v), Some(pid)) if *v == r.agent.installed_version => {
                format!("{v} (running, pid {pid})")
            }
            (Some(v), Some(pid)) => format!(
                "{v} running (pid {pid}); {} installed: restart the agent to run it",
                r.agent.installed_version
            ),
            _ => format!(
                "{} installed; no running agent found",
                r.agent.installed_version
            ),
        },
    ));
    rows.push((
        "agent phase",
        match (&r.agent.phase, &r.agent.joined_at) {
            (Some(p), Some(at)) if p == "joined" => format!("{p} (since {at})"),
            (Some(p), _) => p.clone(),
            (None, _) => format!("- (no state file at {})", r.agent.state_file),
        },
    ));
    rows.push((
        "backend",
        match (&r.backend.description, r.backend.reachable) {
            (Some(d), true) => format!("{d} (reachable)"),
            (Some(d), false) => format!("{d} (UNREACHABLE: {})", opt(&r.backend.error)),
            (None, _) => format!("{} ({})", r.backend.kind, opt(&r.backend.error)),
        },
    ));
    rows.push(("cluster phase", opt(&r.backend.phase)));
    rows.push(("lease holder", opt(&r.backend.lease_holder)));
    rows.push((
        "last error",
        match &r.agent.last_error {
            Some(e) => format!("{} ({})", e.message, e.at),
            None => "-".into(),
        },
    ));
    let l = &r.lifecycle;
    rows.push((
        "quorum",
        match (l.quorum_margin, l.target_managers) {
            (Some(m), Some(t)) if m < 0 => format!("LOST (margin {m}, target {t} managers)"),
            (Some(m), Some(t)) => format!("margin {m} (more managers may fail: {m}; target {t})"),
            (Some(m), None) => format!("margin {m}"),
            _ => "-".into(),
        },
    ));
    rows.push((
        "keeper",
        match (&l.keeper_leader, &l.keeper_last_action) {
            (Some(h), Some(a)) => format!(
                "on {h}; last action: {} {} at {} ({}){}",
                kind_word(a.action.kind),
                a.action.hostname,
                a.at,
                a.action.reason,
                a.error
                    .as_ref()
                    .map(|e| format!(", FAILED: {e}"))
                    .unwrap_or_default()
            ),
            (Some(h), None) => format!("on {h}; no action taken yet"),
            _ => "-".into(),
        },
    ));
    if let Some(f) = &l.keeper_inflight {
        rows.push((
            "keeper step",
            format!(
                "{} {} since {} (bound {} s): {}",
                kind_word(f.kind),
                f.hostname,
                f.since,
                f.bound_secs,
                f.reason
            ),
        ));
    }
    if l.awaiting_adoption || l.adoptions > 0 {
        rows.push((
            "adoption",
            if l.awaiting_adoption {
                format!(
                    "the rendezvous AWAITS ADOPTION by the running swarm (adopted {} times before)",
                    l.adoptions
                )
            } else {
                format!(
                    "the running swarm was adopted again {} time(s) after the rendezvous lost it",
                    l.adoptions
                )
            },
        ));
    }
    rows.push((
        "pending drains",
        if l.pending_drains.is_empty() {
            "-".into()
        } else {
            l.pending_drains.join(", ")
        },
    ));
    if let Some(advice) = &l.advice {
        rows.push((
            "ALL MANAGERS LOST",
            format!(
                "{}{advice}",
                l.no_manager_since
                    .as_ref()
                    .map(|s| format!("since {s}: "))
                    .unwrap_or_default()
            ),
        ));
    }
    if r.lb.enabled {
        rows.push((
            "lb config",
            match (&r.lb.version, &r.lb.sha256) {
                (Some(v), Some(sha)) => format!(
                    "{} (membership v{v}, {} ready nodes, {sha}, applied {}{})",
                    r.lb.path,
                    opt(&r.lb.ready_nodes),
                    opt(&r.lb.applied_at),
                    if r.lb.drift == Some(true) {
                        ", DRIFT: the file differs"
                    } else {
                        ""
                    }
                ),
                _ => format!("{} (not written yet)", r.lb.path),
            },
        ));
        rows.push((
            "lb error",
            match &r.lb.last_error {
                Some(e) => format!("{} ({})", e.message, e.at),
                None => "-".into(),
            },
        ));
    } else {
        rows.push(("lb config", "disabled".into()));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{:<width$} {v}\n", format!("{k}:")));
    }
    out
}

fn kind_word(k: crate::lifecycle::plan::Kind) -> &'static str {
    use crate::lifecycle::plan::Kind;
    match k {
        Kind::Promote => "promote",
        Kind::Demote => "demote",
        Kind::Remove => "remove",
        Kind::Rejoin => "rejoin as manager",
        Kind::Adopt => "adopt",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootstrap::{Bootstrap, Settings};
    use crate::config::{CoordinatorConfig, CoordinatorTls, FileConfig};
    use crate::retry::Policy;
    use crate::testing::{world, FakeBackend, FakeEngine};
    use std::os::unix::fs::PermissionsExt;
    use swarmstrap_wire::RequestedRole;

    fn config(dir: &std::path::Path, coordinator_url: &str) -> Config {
        let secret = dir.join("secret");
        std::fs::write(&secret, "s3cret-s3cret-s3cret").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut c = Config::resolve(
            FileConfig::parse(
                &format!(
                    "cluster = \"test\"\n[coordinator]\nurl = \"{coordinator_url}\"\n\
                     insecure_http = true\n"
                ),
                std::path::Path::new("t.toml"),
            )
            .unwrap(),
            None,
            &Overrides::default(),
            &Overrides::default(),
        )
        .unwrap();
        c.state_dir = dir.to_path_buf();
        c.join_secret_file = secret;
        c.coordinator = Some(CoordinatorConfig {
            url: coordinator_url.into(),
            tls: CoordinatorTls::PlainHttp,
        });
        c
    }

    fn closed_port_url() -> String {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    }

    #[tokio::test]
    async fn engine_and_backend_down_is_reported_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &closed_port_url());
        let w = world();
        let e = FakeEngine::new(&w, "node1", "198.18.0.1");
        e.down_for_calls
            .store(100, std::sync::atomic::Ordering::SeqCst);
        let started = std::time::Instant::now();
        let r = collect(&cfg, e.as_ref()).await;
        assert!(started.elapsed() < Duration::from_secs(4));
        assert!(!r.healthy && !r.joined);
        assert!(!r.engine.reachable && r.engine.error.is_some());
        assert!(!r.backend.reachable && r.backend.error.is_some());
        assert_eq!(r.swarm.state, "unknown");
        let text = render_text(&r);
        assert!(text.contains("UNREACHABLE"), "{text}");
        assert!(text.contains("no state file"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        for key in [
            "cluster", "healthy", "joined", "engine", "swarm", "agent", "backend", "lb",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn healthy_manager_after_bootstrap() {
        let w = world();
        let backend = FakeBackend::new(3);
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let engines: Vec<_> = (1..=3)
            .map(|i| FakeEngine::new(&w, &format!("node{i}"), &format!("198.18.0.{i}")))
            .collect();
        let mut tasks = vec![];
        for (i, e) in engines.iter().enumerate() {
            let b = Bootstrap {
                engine: e.clone(),
                backend: backend.clone(),
                store: StateStore::new(dirs[i].path()),
                settings: Settings {
                    cluster: "test".into(),
                    node_id: format!("id{i}"),
                    advertise_addr: e.addr.clone(),
                    requested_role: RequestedRole::Auto,
                    lease_ttl: Duration::from_secs(5),
                    long_poll: Duration::from_secs(25),
                    policy: Policy::FAST,
                    unauthorized_hint: "check /s".into(),
                    debug_hold_file: None,
                    record_joined_through: true,
                },
            };
            tasks.push(tokio::spawn(async move { b.run().await.unwrap() }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let leader = engines
            .iter()
            .position(|e| e.calls().contains(&"init".to_string()))
            .unwrap();
        let cfg = config(dirs[leader].path(), &closed_port_url());
        let r = collect(&cfg, engines[leader].as_ref()).await;
        assert!(r.joined && r.healthy, "{r:#?}");
        assert_eq!(r.swarm.role, Some(Role::Manager));
        assert_eq!(r.swarm.leader, Some(true));
        assert_eq!(r.swarm.managers_total, Some(3));
        assert_eq!(r.swarm.managers_reachable, Some(3));
        assert_eq!(r.agent.phase.as_deref(), Some("joined"));
        assert!(r.swarm.ca_digest.is_some());
        assert!(render_text(&r).contains("manager (leader)"));
        // The node's credential (kept in the state dir) is in neither form of the report.
        let node_id = format!("id{leader}");
        let cred = swarmstrap_wire::rendezvous::Rendezvous::credential(backend.as_ref(), &node_id)
            .expect("issued");
        crate::state::save_credential(dirs[leader].path(), &node_id, &cred).unwrap();
        let r = collect(&cfg, engines[leader].as_ref()).await;
        let json = serde_json::to_string(&r).unwrap();
        for shown in [render_text(&r), json] {
            assert!(
                !shown.contains(cred.expose()),
                "status shows the credential"
            );
            assert!(!shown.contains("credential_sha256"), "{shown}");
        }

        // A worker-less state: a manager whose swarm CA differs from the recorded one is not
        // healthy.
        let mut st = StateStore::new(dirs[leader].path())
            .load()
            .unwrap()
            .unwrap();
        st.ca_digest = Some("sha256:other".into());
        StateStore::new(dirs[leader].path()).save(&mut st).unwrap();
        let r = collect(&cfg, engines[leader].as_ref()).await;
        assert!(r.joined && !r.healthy);
    }

    /// The keys of the README's `--json` table: backticked names in the first column; names in
    /// parentheses are the keys of the object the preceding field holds.
    fn documented_fields(readme: &str) -> std::collections::BTreeSet<String> {
        let section = readme
            .split("`--json` fields")
            .nth(1)
            .expect("agent/README.md has the `--json` fields table");
        let mut out = std::collections::BTreeSet::new();
        let rows = section
            .lines()
            .skip_while(|l| !l.starts_with("| field |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'));
        for row in rows {
            let cell = row.split('|').nth(1).unwrap();
            let (mut depth, mut last) = (0, String::new());
            let mut parts = cell.split('`');
            let mut outside = parts.next().unwrap_or("");
            loop {
                depth += outside.matches('(').count() as i32;
                depth -= outside.matches(')').count() as i32;
                let Some(name) = parts.next() else { break };
                if depth > 0 {
                    out.insert(format!("{last}.{name}"));
                } else {
                    last = name.to_string();
                    out.insert(last.clone());
                }
                outside = parts.next().unwrap_or("");
            }
        }
        out
    }

    /// Every key path of a JSON document (objects are recursed into; their own path counts too
    /// when they sit inside another object, as the table names `agent.last_error` itself).
    fn json_fields(
        v: &serde_json::Value,
        prefix: &str,
        out: &mut std::collections::BTreeSet<String>,
    ) {
        if let serde_json::Value::Object(m) = v {
            for (k, v) in m {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                // `engine`, `swarm`, ... are sections: the table names only their keys.
                let section = prefix.is_empty() && v.is_object();
                if !section {
                    out.insert(path.clone());
                }
                json_fields(v, &path, out);
            }
        }
    }

    /// A report with every optional part present, so every key the document can have shows.
    fn representative_report() -> StatusReport {
        use crate::lifecycle::docs::{InflightStep, RecordedAction};
        use crate::lifecycle::plan::{Action, Kind};
        let err = || {
            Some(LastError {
                message: "m".into(),
                at: "2026-01-01T00:00:00Z".into(),
            })
        };
        let s = || Some("x".to_string());
        StatusReport {
            schema: SCHEMA,
            cluster: "c".into(),
            healthy: true,
            joined: true,
            engine: EngineStatus {
                host: "unix:///var/run/docker.sock".into(),
                reachable: true,
                version: s(),
                error: s(),
            },
            swarm: SwarmStatus {
                state: "active".into(),
                node_id: s(),
                hostname: s(),
                role: Some(Role::Manager),
                leader: Some(true),
                managers_total: Some(3),
                managers_reachable: Some(3),
                nodes_total: Some(5),
                nodes_ready: Some(5),
                swarm_id: s(),
                ca_digest: s(),
                error: s(),
                manager_reachable: Some(true),
            },
            agent: AgentStatus {
                node_id: s(),
                phase: s(),
                role: Some(Role::Manager),
                joined_at: s(),
                last_error: err(),
                state_file: "/var/lib/swarm-agent/state.json".into(),
                running_version: s(),
                running_pid: Some(1),
                installed_version: "0.1.0".into(),
            },
            backend: BackendStatus {
                kind: "coordinator".into(),
                description: s(),
                reachable: true,
                phase: s(),
                lease_holder: s(),
                swarm_id: s(),
                ca_digest: s(),
                awaiting_adoption: false,
                adoptions: 0,
                error: s(),
                keeper: None,
                drains: None,
            },
            lb: LbStatus {
                enabled: true,
                path: "/etc/nginx/conf.d/swarm.conf".into(),
                version: Some(1),
                seen_version: Some(1),
                sha256: s(),
                applied_at: s(),
                ready_nodes: Some(5),
                drift: Some(false),
                last_error: err(),
            },
            lifecycle: LifecycleStatus {
                quorum_margin: Some(1),
                target_managers: Some(3),
                keeper_leader: s(),
                keeper_last_action: Some(RecordedAction {
                    action: Action {
                        kind: Kind::Promote,
                        node_id: "n".into(),
                        hostname: "h".into(),
                        reason: "r".into(),
                    },
                    at: "t".into(),
                    error: s(),
                }),
                keeper_inflight: Some(InflightStep {
                    kind: Kind::Promote,
                    hostname: "h".into(),
                    since: "t".into(),
                    bound_secs: 60,
                    reason: "r".into(),
                }),
                awaiting_adoption: false,
                adoptions: 0,
                pending_drains: vec!["h: draining (1 tasks left)".into()],
                no_manager_reachable: false,
                no_manager_since: s(),
                advice: s(),
            },
        }
    }

    #[test]
    fn readme_table_lists_exactly_the_json_fields() {
        let documented = documented_fields(include_str!("../../README.md"));
        let json = serde_json::to_value(representative_report()).unwrap();
        assert_eq!(json["schema"], 1);
        let mut emitted = std::collections::BTreeSet::new();
        json_fields(&json, "", &mut emitted);
        let missing: Vec<_> = emitted.difference(&documented).collect();
        let stale: Vec<_> = documented.difference(&emitted).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "agent/README.md `--json` table: not documented {missing:?}; documented but not \
             emitted {stale:?}"
        );
        // The parser itself: a nested key is read as a child of the field before it.
        assert!(documented.contains("agent.last_error.message"));
        assert!(documented.contains("lifecycle.keeper_inflight.bound_secs"));
    }

    #[test]
    fn not_ready_reasons() {
        let mut r = representative_report();
        r.lifecycle.advice = None;
        r.swarm.error = None;
        assert_eq!(not_ready_reason(&r, Some(5)), Ok(None));
        let why = not_ready_reason(&r, Some(6)).unwrap().unwrap();
        assert!(why.contains("5 of the 6 expected nodes are Ready"), "{why}");
        r.swarm.role = Some(Role::Worker);
        let e = not_ready_reason(&r, Some(6)).unwrap_err();
        assert!(e.contains("run it on a manager"), "{e}");
        assert_eq!(not_ready_reason(&r, None), Ok(None));
        r.healthy = false;
        r.swarm.role = Some(Role::Manager);
        r.swarm.managers_reachable = Some(1);
        let why = not_ready_reason(&r, None).unwrap().unwrap();
        assert!(
            why.contains("no reachable majority of managers (1 of 3"),
            "{why}"
        );
        r.joined = false;
        r.swarm.state = "inactive".into();
        r.agent.phase = Some("waiting_for_tokens".into());
        let why = not_ready_reason(&r, None).unwrap().unwrap();
        assert!(
            why.contains("not joined yet (swarm inactive, agent phase waiting_for_tokens)"),
            "{why}"
        );
        r.engine.reachable = false;
        let why = not_ready_reason(&r, None).unwrap().unwrap();
        assert!(why.contains("is not reachable"), "{why}");
    }

    /// `--wait` against an engine that stays down gives up at the timeout with the reason,
    /// after several probes (backoff, not one try).
    #[tokio::test]
    async fn wait_times_out_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &closed_port_url());
        let w = world();
        let e = FakeEngine::new(&w, "node1", "198.18.0.1");
        e.down_for_calls
            .store(1000, std::sync::atomic::Ordering::SeqCst);
        let started = std::time::Instant::now();
        let (r, verdict) = wait_ready(&cfg, e.as_ref(), Duration::from_secs(3), None).await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(4), "{took:?}");
        assert!(!r.engine.reachable);
        match verdict {
            Err(WaitError::Timeout(why)) => assert!(why.contains("not reachable"), "{why}"),
            v => panic!("{v:?}"),
        }
        let calls = 1000 - e.down_for_calls.load(std::sync::atomic::Ordering::SeqCst);
        assert!(calls >= 2, "probed {calls} times");
    }

    /// `--wait` returns as soon as the node is joined and the swarm has the expected nodes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wait_returns_once_joined_with_the_expected_nodes() {
        let w = world();
        let backend = FakeBackend::new(3);
        let dir = tempfile::tempdir().unwrap();
        let e = FakeEngine::new(&w, "node1", "198.18.0.1");
        let b = Bootstrap {
            engine: e.clone(),
            backend: backend.clone(),
            store: StateStore::new(dir.path()),
            settings: Settings {
                cluster: "test".into(),
                node_id: "id0".into(),
                advertise_addr: e.addr.clone(),
                requested_role: RequestedRole::Auto,
                lease_ttl: Duration::from_secs(5),
                long_poll: Duration::from_secs(25),
                policy: Policy::FAST,
                unauthorized_hint: "check /s".into(),
                debug_hold_file: None,
                record_joined_through: true,
            },
        };
        let cfg = config(dir.path(), &closed_port_url());
        // Waiting starts before the node has joined; the bootstrap runs meanwhile.
        let waiter = {
            let e = e.clone();
            let cfg = cfg.clone();
            tokio::spawn(async move {
                wait_ready(&cfg, e.as_ref(), Duration::from_secs(30), Some(1)).await
            })
        };
        b.run().await.unwrap();
        let (r, verdict) = waiter.await.unwrap();
        assert_eq!(verdict, Ok(()));
        assert!(r.joined && r.healthy);
        assert_eq!(r.swarm.nodes_ready, Some(1));
        // Two nodes never come: the wait ends at its timeout, saying how many are Ready.
        let (_, verdict) = wait_ready(&cfg, e.as_ref(), Duration::from_secs(2), Some(2)).await;
        match verdict {
            Err(WaitError::Timeout(why)) => {
                assert!(why.contains("1 of the 2 expected nodes are Ready"), "{why}")
            }
            v => panic!("{v:?}"),
        }
    }
}
