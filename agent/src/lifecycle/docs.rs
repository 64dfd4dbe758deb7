//! The lifecycle documents in the rendezvous backend (versioned, compare-and-set):
//!
//! - [`DRAINS_DOC`]: pending `swarm-agent leave` requests, keyed by Docker node id. A worker
//!   cannot drain itself, so it asks here; the leader's agent drains the node, marks it
//!   `drained` once no task is meant to run there, and removes it from the swarm after it
//!   left (`left`).
//! - [`KEEPER_DOC`]: the quorum keeper's report (managers, quorum margin, the step in flight,
//!   recent actions), so `swarm-agent status` on any node can show it.
//! - [`REJOINS_DOC`]: the keeper's requests that a worker's agent leave the swarm and join again
//!   as a manager (a promotion the engine cannot carry out), keyed by the agent's node id.

use super::plan::Action;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use swarmstrap_wire::rendezvous::{Rendezvous, RendezvousError};

pub const DRAINS_DOC: &str = "drains";
pub const KEEPER_DOC: &str = "keeper";
pub const REJOINS_DOC: &str = "rejoins";
/// Actions kept in the keeper report.
pub const KEEPER_HISTORY: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrainState {
    /// `leave` asked; the leader drains the node.
    Requested,
    /// No task is meant to run on the node any more: it may leave.
    Drained,
    /// The node left the swarm: the leader removes its entry.
    Left,
}

impl DrainState {
    pub fn as_str(self) -> &'static str {
        match self {
            DrainState::Requested => "requested",
            DrainState::Drained => "drained",
            DrainState::Left => "left",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRequest {
    pub hostname: String,
    /// The agent's node id (backend registration).
    pub agent_node_id: String,
    pub state: DrainState,
    /// RFC 3339.
    pub requested_at: String,
    pub updated_at: String,
    /// `updated_at` in ms since the epoch (for expiry).
    #[serde(default)]
    pub updated_ms: u64,
    /// Tasks still meant to run there, as last seen by the leader.
    #[serde(default)]
    pub tasks_left: Option<usize>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drains {
    #[serde(default)]
    pub requests: BTreeMap<String, DrainRequest>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedAction {
    #[serde(flatten)]
    pub action: Action,
    /// RFC 3339.
    pub at: String,
    /// The engine's answer when the action failed.
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownNode {
    pub hostname: String,
    pub role: String,
    pub state: String,
    /// RFC 3339: first seen unhealthy by this leader.
    pub since: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RejoinState {
    /// The keeper asks the node's agent to leave and join again as a manager.
    Requested,
    /// The agent left the swarm and is joining again.
    Rejoining,
    /// The agent joined again as a manager.
    Rejoined,
    /// The agent could not (see `message`).
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejoinRequest {
    pub hostname: String,
    /// The node's Docker node id when the request was made (as a worker).
    pub swarm_node_id: String,
    pub state: RejoinState,
    /// RFC 3339.
    pub requested_at: String,
    pub updated_ms: u64,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejoins {
    /// By the agent's node id (its registration).
    #[serde(default)]
    pub requests: BTreeMap<String, RejoinRequest>,
}

/// The one role change the keeper has in flight (it decides nothing else until it ends).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InflightStep {
    pub kind: super::plan::Kind,
    pub hostname: String,
    /// RFC 3339.
    pub since: String,
    /// The step is undone (or given up) after this many seconds.
    pub bound_secs: u64,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeeperReport {
    /// Hostname of the leader whose agent wrote this.
    pub leader: String,
    pub target: u8,
    pub managers: usize,
    pub managers_healthy: usize,
    /// Healthy managers minus the raft majority: how many more managers may fail.
    pub quorum_margin: i64,
    /// `ip:2377` of every healthy manager (a late joiner can join through any of them).
    #[serde(default)]
    pub manager_addrs: Vec<String>,
    #[serde(default)]
    pub down: Vec<DownNode>,
    #[serde(default)]
    pub actions: Vec<RecordedAction>,
    /// The role change in flight, if any.
    #[serde(default)]
    pub inflight: Option<InflightStep>,
}

impl KeeperReport {
    pub fn last_action(&self) -> Option<&RecordedAction> {
        self.actions.last()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A document's body as `T` (absent or `null` → default), with its version.
pub async fn read<T: DeserializeOwned + Default>(
    backend: &dyn Rendezvous,
    name: &str,
) -> Result<(u64, T), RendezvousError> {
    let d = backend.get_doc(name, None, Duration::ZERO).await?;
    Ok((d.version, parse(name, d.body)?))
}

fn parse<T: DeserializeOwned + Default>(
    name: &str,
    body: serde_json::Value,
) -> Result<T, RendezvousError> {
    if body.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(body).map_err(|e| RendezvousError::Rejected {
        code: "bad_document".into(),
        message: format!("the {name:?} document does not parse: {e}"),
    })
}

/// Longest string a document may hold (the rulebook's limit, `wire/src/rules/docs.rs`).
const MAX_STRING: usize = 4096;

/// Make every string in `v` one the rulebook accepts: control characters (an engine error
/// with a newline) become spaces, and over-long strings are cut at a character boundary. A
/// refused write would stop the keeper report or a rejoin update altogether.
pub fn printable(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::String(s) => {
            if s.chars().any(char::is_control) {
                *s = s
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
            }
            if s.len() > MAX_STRING {
                let mut end = MAX_STRING;
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                s.truncate(end);
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(printable),
        serde_json::Value::Object(o) => o.values_mut().for_each(printable),
        _ => {}
    }
}

/// Compare-and-set update by node `writer` (this agent's node id: the write carries its
/// credential): read, apply `change` (returns false for "nothing to change"), write with the
/// read version; on a version conflict read again (bounded, with jitter). Returns the document
/// as written (or as read when unchanged).
pub async fn update<T, F>(
    backend: &dyn Rendezvous,
    writer: &str,
    name: &str,
    mut change: F,
) -> Result<T, RendezvousError>
where
    T: DeserializeOwned + Serialize + Default,
    F: FnMut(&mut T) -> bool,
{
    let mut delay = Duration::from_millis(20);
    for _ in 0..20 {
        let (version, mut doc) = read::<T>(backend, name).await?;
        if !change(&mut doc) {
            return Ok(doc);
        }
        let mut body = serde_json::to_value(&doc).expect("documents serialize");
        printable(&mut body);
        match backend.put_doc(writer, name, version, &body).await {
            Ok(_) => return Ok(doc),
            Err(RendezvousError::Conflict { .. }) => {
                let ms = delay.as_millis() as u64;
                let jitter = rand::random_range(0..=ms);
                tokio::time::sleep(Duration::from_millis(ms / 2 + jitter)).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
    Err(RendezvousError::Transient(format!(
        "the {name:?} document kept changing under 20 compare-and-set attempts"
    )))
}

#[cfg(test)]
mod printable_tests {
    use super::*;

    #[test]
    fn document_strings_are_made_printable_and_bounded() {
        let mut v = serde_json::json!({
            "a": "rpc error:\n  code = NotFound\tdesc",
            "b": ["ok", "x".repeat(5000)],
            "c": {"d": "é".repeat(3000)},
            "n": 3
        });
        printable(&mut v);
        assert_eq!(v["a"], "rpc error:   code = NotFound desc");
        assert_eq!(v["b"][0], "ok");
        assert_eq!(v["b"][1].as_str().unwrap().len(), MAX_STRING);
        let d = v["c"]["d"].as_str().unwrap();
        assert!(d.len() <= MAX_STRING && d.chars().all(|c| c == 'é'));
        assert_eq!(v["n"], 3);
    }
}
