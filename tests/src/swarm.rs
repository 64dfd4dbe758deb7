//! Swarm state as the lab sees it: parsers for `docker node ls --format '{{json .}}'`,
//! `docker info --format '{{json .Swarm}}'` and the Engine API's `/nodes`, a shape check, and
//! the baseline formation "script that already knows everything".

use crate::engine::EngineApi;
use crate::error::{LabError, Result};
use crate::wait::wait_for;
use crate::Lab;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use swarmstrap_wire::Secret;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeStatus {
    Ready,
    Down,
    Unknown,
    Disconnected,
    Other(String),
}

impl NodeStatus {
    fn parse(s: &str) -> Self {
        match s.to_ascii_lowercase().as_str() {
            "ready" => NodeStatus::Ready,
            "down" => NodeStatus::Down,
            "unknown" => NodeStatus::Unknown,
            "disconnected" => NodeStatus::Disconnected,
            _ => NodeStatus::Other(s.to_string()),
        }
    }
}

/// The MANAGER STATUS column: `None` for a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManagerStatus {
    None,
    Leader,
    Reachable,
    Unreachable,
    Other(String),
}

impl ManagerStatus {
    fn parse(s: &str) -> Self {
        match s.to_ascii_lowercase().as_str() {
            "" => ManagerStatus::None,
            "leader" => ManagerStatus::Leader,
            "reachable" => ManagerStatus::Reachable,
            "unreachable" => ManagerStatus::Unreachable,
            _ => ManagerStatus::Other(s.to_string()),
        }
    }

    pub fn is_manager(&self) -> bool {
        *self != ManagerStatus::None
    }
}

/// One node of `docker node ls` (or of the API's `/nodes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwarmNode {
    pub id: String,
    pub hostname: String,
    pub status: NodeStatus,
    /// Active / Pause / Drain (as printed).
    pub availability: String,
    pub manager_status: ManagerStatus,
    /// Whether this is the node the command ran on (CLI only; false from the API).
    pub is_self: bool,
}

/// Parse `docker node ls --format '{{json .}}'` (one JSON object per line).
pub fn parse_node_ls(stdout: &str) -> Result<Vec<SwarmNode>> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Row {
        #[serde(rename = "ID")]
        id: String,
        hostname: String,
        status: String,
        #[serde(default)]
        availability: String,
        #[serde(default)]
        manager_status: String,
        #[serde(rename = "Self", default)]
        is_self: Value,
    }
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let r: Row = serde_json::from_str(l).map_err(|e| LabError::Parse {
                what: format!("docker node ls line {l:?}"),
                message: e.to_string(),
            })?;
            Ok(SwarmNode {
                id: r.id,
                hostname: r.hostname,
                status: NodeStatus::parse(&r.status),
                availability: r.availability,
                manager_status: ManagerStatus::parse(&r.manager_status),
                is_self: r.is_self == Value::Bool(true) || r.is_self == json!("true"),
            })
        })
        .collect()
}

/// Nodes from the Engine API's `GET /nodes` answer.
pub fn parse_api_nodes(v: &Value) -> Result<Vec<SwarmNode>> {
    let arr = v.as_array().ok_or_else(|| LabError::Parse {
        what: "GET /nodes".into(),
        message: "not an array".into(),
    })?;
    let s = |v: &Value, p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    Ok(arr
        .iter()
        .map(|n| {
            let manager_status = match n.get("ManagerStatus") {
                Some(ms) if !ms.is_null() => {
                    if ms.get("Leader").and_then(Value::as_bool) == Some(true) {
                        ManagerStatus::Leader
                    } else {
                        ManagerStatus::parse(&s(ms, "/Reachability"))
                    }
                }
                _ => ManagerStatus::None,
            };
            SwarmNode {
                id: s(n, "/ID"),
                hostname: s(n, "/Description/Hostname"),
                status: NodeStatus::parse(&s(n, "/Status/State")),
                availability: s(n, "/Spec/Availability"),
                manager_status,
                is_self: false,
            }
        })
        .collect())
}

/// `docker info --format '{{json .Swarm}}'` (also the `Swarm` member of `GET /info`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct SwarmInfo {
    #[serde(rename = "NodeID", default)]
    pub node_id: String,
    #[serde(default)]
    pub node_addr: String,
    /// inactive / pending / active / error / locked
    #[serde(default)]
    pub local_node_state: String,
    #[serde(default)]
    pub control_available: bool,
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub nodes: Option<u64>,
    #[serde(default)]
    pub managers: Option<u64>,
    #[serde(default)]
    pub cluster: Option<ClusterInfo>,
}

/// Only present on managers.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ClusterInfo {
    #[serde(rename = "ID")]
    pub id: String,
}

impl SwarmInfo {
    /// The swarm cluster id (managers only).
    pub fn cluster_id(&self) -> Option<&str> {
        self.cluster
            .as_ref()
            .map(|c| c.id.as_str())
            .filter(|s| !s.is_empty())
    }

    pub fn is_active(&self) -> bool {
        self.local_node_state == "active"
    }
}

pub fn parse_swarm_info(stdout: &str) -> Result<SwarmInfo> {
    serde_json::from_str(stdout.trim()).map_err(|e| LabError::Parse {
        what: "docker info --format '{{json .Swarm}}'".into(),
        message: e.to_string(),
    })
}

/// Counts of a node list, for checks and progress messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shape {
    pub nodes: usize,
    pub ready: usize,
    pub managers: usize,
    pub leaders: usize,
    pub reachable_managers: usize,
    pub workers: usize,
}

impl Shape {
    pub fn of(nodes: &[SwarmNode]) -> Shape {
        let mut s = Shape {
            nodes: nodes.len(),
            ..Shape::default()
        };
        for n in nodes {
            if n.status == NodeStatus::Ready {
                s.ready += 1;
            }
            match n.manager_status {
                ManagerStatus::None => s.workers += 1,
                ManagerStatus::Leader => {
                    s.managers += 1;
                    s.leaders += 1;
                    s.reachable_managers += 1;
                }
                ManagerStatus::Reachable => {
                    s.managers += 1;
                    s.reachable_managers += 1;
                }
                _ => s.managers += 1,
            }
        }
        s
    }

    /// `managers` managers (all reachable, exactly one Leader) + `workers` workers, all Ready.
    pub fn is(&self, managers: usize, workers: usize) -> bool {
        self.nodes == managers + workers
            && self.ready == self.nodes
            && self.managers == managers
            && self.reachable_managers == managers
            && self.leaders == 1
            && self.workers == workers
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} nodes, {} Ready, {} managers ({} reachable, {} leader), {} workers",
            self.nodes,
            self.ready,
            self.managers,
            self.reachable_managers,
            self.leaders,
            self.workers
        )
    }
}

/// Nodes as seen by the manager behind `api` (`GET /nodes`).
pub fn api_nodes(api: &EngineApi) -> Result<Vec<SwarmNode>> {
    parse_api_nodes(&api.get_json::<Value>("/nodes")?)
}

/// Wait until the manager behind `api` sees exactly `managers` managers (one Leader, all
/// reachable) and `workers` workers, all Ready.
pub fn wait_swarm_shape(
    api: &EngineApi,
    managers: usize,
    workers: usize,
    timeout: Duration,
) -> Result<Vec<SwarmNode>> {
    wait_for(
        timeout,
        &format!("a swarm of {managers} managers + {workers} workers, all Ready"),
        || {
            let nodes = api_nodes(api)?;
            let shape = Shape::of(&nodes);
            Ok(if shape.is(managers, workers) {
                Ok(nodes)
            } else {
                Err(shape.to_string())
            })
        },
    )
}

/// Like [`wait_swarm_shape`], but across all `apis` (whichever is a manager answers) and
/// polled at a fixed short `interval` instead of backing off: for benchmarks, where the
/// polling must not add up to half a second to what is measured. Returns the elapsed time
/// since `since`.
pub fn poll_swarm_shape(
    apis: &[EngineApi],
    managers: usize,
    workers: usize,
    since: Instant,
    interval: Duration,
    timeout: Duration,
) -> Result<Duration> {
    let deadline = since + timeout;
    let mut last = String::from("no manager answered");
    loop {
        for api in apis {
            match api_nodes(api) {
                Ok(nodes) => {
                    let shape = Shape::of(&nodes);
                    if shape.is(managers, workers) {
                        return Ok(since.elapsed());
                    }
                    last = shape.to_string();
                }
                Err(_) => continue,
            }
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout {
                what: format!("a swarm of {managers} managers + {workers} workers, all Ready"),
                waited: since.elapsed(),
                last,
            });
        }
        std::thread::sleep(interval);
    }
}

/// The swarm's join tokens (`GET /swarm` on a manager).
#[derive(Debug, Clone)]
pub struct JoinTokens {
    pub worker: Secret,
    pub manager: Secret,
}

pub fn join_tokens(api: &EngineApi) -> Result<JoinTokens> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Swarm {
        join_tokens: Tokens,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Tokens {
        worker: Secret,
        manager: Secret,
    }
    let s: Swarm = api.get_json("/swarm")?;
    Ok(JoinTokens {
        worker: s.join_tokens.worker,
        manager: s.join_tokens.manager,
    })
}

/// `docker swarm init --advertise-addr <addr>` through the API. Returns the node id.
pub fn swarm_init(api: &EngineApi, advertise_addr: &str) -> Result<String> {
    let body = api.post_json(
        "/swarm/init",
        &json!({"ListenAddr": "0.0.0.0:2377", "AdvertiseAddr": advertise_addr}),
        Duration::from_secs(60),
    )?;
    Ok(serde_json::from_slice::<String>(&body).unwrap_or_default())
}

/// `docker swarm join --token … --advertise-addr <addr> <remote>` through the API, so the
/// token travels in a request body, not on a command line. Transient failures are retried
/// (capped backoff) until `timeout`; "already part of a swarm" after a retry counts as joined.
pub fn swarm_join(
    api: &EngineApi,
    advertise_addr: &str,
    remote: &str,
    token: &Secret,
    timeout: Duration,
) -> Result<()> {
    let body = json!({
        "ListenAddr": "0.0.0.0:2377",
        "AdvertiseAddr": advertise_addr,
        "RemoteAddrs": [remote],
        "JoinToken": token.expose(),
    });
    let mut attempts = 0;
    crate::wait::wait_until(
        timeout,
        &format!("{advertise_addr} to join {remote}"),
        || {
            attempts += 1;
            match api.post_json("/swarm/join", &body, Duration::from_secs(60)) {
                Ok(_) => Ok(Some(())),
                Err(e) if attempts > 1 && e.to_string().contains("already part of a swarm") => {
                    Ok(Some(()))
                }
                Err(e) => Err(e),
            }
        },
    )
}

/// The baseline: a script that already knows everything. On the lab's first
/// `managers + workers` hosts (engines running): init on host 0, then every other host joins
/// in parallel (hosts 1..managers as managers, the rest as workers); returns when host 0
/// sees `managers` managers (one Leader) and `workers` workers, all Ready.
///
/// Returns the time from the `init` call to "all Ready". This is the floor the agent's
/// formation time is compared with (see `examples/baseline_bench.rs`).
pub fn baseline_form(lab: &Lab, managers: usize, workers: usize) -> Result<Duration> {
    let n = managers + workers;
    if managers == 0 || n > lab.hosts().len() {
        return Err(LabError::Check(format!(
            "baseline_form: {managers} managers + {workers} workers needs at least 1 manager and \
             at most {} hosts (the lab has {})",
            lab.hosts().len(),
            lab.hosts().len()
        )));
    }
    let hosts = &lab.hosts()[..n];
    let first = &hosts[0];
    let first_addr = first.addr().to_string();
    let t0 = Instant::now();
    swarm_init(&first.api(), &first_addr)?;
    let tokens = join_tokens(&first.api())?;
    let remote = format!("{first_addr}:2377");
    std::thread::scope(|s| {
        let joins: Vec<_> = hosts[1..]
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let token = if i + 1 < managers {
                    &tokens.manager
                } else {
                    &tokens.worker
                };
                let remote = &remote;
                s.spawn(move || {
                    swarm_join(
                        &h.api(),
                        &h.addr().to_string(),
                        remote,
                        token,
                        Duration::from_secs(60),
                    )
                    .map_err(|e| LabError::Check(format!("{} could not join: {e}", h.name())))
                })
            })
            .collect();
        joins
            .into_iter()
            .try_for_each(|j| j.join().expect("join thread panicked"))
    })?;
    poll_swarm_shape(
        &[first.api()],
        managers,
        workers,
        t0,
        Duration::from_millis(10),
        Duration::from_secs(60),
    )
}

/// `GET /info`'s `Swarm` member.
pub fn api_swarm_info(api: &EngineApi) -> Result<SwarmInfo> {
    let v: Value = api.get_json("/info")?;
    serde_json::from_value(v.get("Swarm").cloned().unwrap_or(Value::Null)).map_err(|e| {
        LabError::Parse {
            what: "GET /info .Swarm".into(),
            message: e.to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_node_ls_json_lines() {
        let out = r#"{"Availability":"Active","EngineVersion":"20.10.24+dfsg1","Hostname":"node1","ID":"abc","ManagerStatus":"Leader","Self":true,"Status":"Ready","TLSStatus":"Ready"}
{"Availability":"Active","EngineVersion":"20.10.24+dfsg1","Hostname":"node4","ID":"def","ManagerStatus":"","Self":false,"Status":"Down","TLSStatus":"Ready"}
"#;
        let nodes = parse_node_ls(out).unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].manager_status, ManagerStatus::Leader);
        assert!(nodes[0].is_self);
        assert_eq!(nodes[1].status, NodeStatus::Down);
        assert_eq!(nodes[1].manager_status, ManagerStatus::None);
        let shape = Shape::of(&nodes);
        assert_eq!((shape.managers, shape.workers, shape.ready), (1, 1, 1));
        assert!(!shape.is(1, 1), "a Down node is not a formed swarm");
        assert!(parse_node_ls("not json").is_err());
    }

    #[test]
    fn parses_swarm_info() {
        let worker = r#"{"NodeID":"n1","NodeAddr":"198.18.3.4","LocalNodeState":"active","ControlAvailable":false,"Error":"","RemoteManagers":[{"NodeID":"m","Addr":"198.18.3.1:2377"}],"Nodes":0,"Managers":0}"#;
        let i = parse_swarm_info(worker).unwrap();
        assert!(i.is_active() && !i.control_available && i.cluster_id().is_none());
        let mgr = r#"{"NodeID":"n2","LocalNodeState":"active","ControlAvailable":true,"Nodes":5,"Managers":3,"Cluster":{"ID":"cid","Version":{"Index":10}}}"#;
        let i = parse_swarm_info(mgr).unwrap();
        assert_eq!(i.cluster_id(), Some("cid"));
        assert_eq!((i.nodes, i.managers), (Some(5), Some(3)));
        let inactive = r#"{"NodeID":"","NodeAddr":"","LocalNodeState":"inactive","ControlAvailable":false,"Error":"","RemoteManagers":null}"#;
        assert!(!parse_swarm_info(inactive).unwrap().is_active());
    }

    #[test]
    fn parses_api_nodes() {
        let v = json!([
            {"ID":"a","Description":{"Hostname":"node1"},"Spec":{"Role":"manager","Availability":"active"},
             "Status":{"State":"ready"},"ManagerStatus":{"Leader":true,"Reachability":"reachable"}},
            {"ID":"b","Description":{"Hostname":"node2"},"Spec":{"Role":"manager","Availability":"active"},
             "Status":{"State":"ready"},"ManagerStatus":{"Reachability":"reachable"}},
            {"ID":"c","Description":{"Hostname":"node3"},"Spec":{"Role":"worker","Availability":"active"},
             "Status":{"State":"ready"}}
        ]);
        let nodes = parse_api_nodes(&v).unwrap();
        let s = Shape::of(&nodes);
        assert!(s.is(2, 1), "{s}");
        assert!(!s.is(3, 0));
    }
}
