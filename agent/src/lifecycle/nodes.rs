//! Node management calls on the local engine (managers only): the node list with what the
//! keeper needs, role and availability changes (read-modify-write with the node's version),
//! removal, and the count of tasks still meant to run on a node.

use crate::engine::{BollardEngine, Engine, EngineError};
use bollard::models::{NodeSpecAvailabilityEnum, NodeSpecRoleEnum, NodeState, Reachability};
use bollard::query_parameters::{
    DeleteNodeOptionsBuilder, ListNodesOptions, ListTasksOptionsBuilder, UpdateNodeOptionsBuilder,
    UpdateSwarmOptionsBuilder,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use swarmstrap_wire::Role;

type Result<T> = std::result::Result<T, EngineError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    Active,
    Pause,
    Drain,
}

/// One node of `docker node ls`, reduced to what the lifecycle code decides on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub id: String,
    pub hostname: String,
    pub role: Role,
    pub availability: Availability,
    /// Status.State == ready.
    pub ready: bool,
    /// `ready`, `down`, `disconnected`, `unknown`.
    pub state: String,
    pub leader: bool,
    /// Managers: ManagerStatus.Reachability == reachable.
    pub reachable: Option<bool>,
    /// Managers: `ip:2377`.
    pub manager_addr: Option<String>,
    /// Status.Addr: the node's IP as the managers see it (its advertise address).
    pub addr: Option<String>,
}

impl NodeView {
    /// What is wrong with it, in a word for log lines: `down`, `unreachable`, `ready`, ...
    pub fn condition(&self) -> &str {
        if self.ready && self.role == Role::Manager && !self.reachable_manager() {
            if self.outside_raft() {
                "not in raft"
            } else {
                "unreachable"
            }
        } else {
            &self.state
        }
    }

    /// A manager that takes part in raft, or a worker that runs tasks. The leader always
    /// counts: right after an election its engine reports its own status and reachability as
    /// `unknown` for several seconds (every node is `unknown` until it heartbeats to the new
    /// leader), yet it leads raft and answers this very call.
    pub fn healthy(&self) -> bool {
        match self.role {
            Role::Manager => self.leader || (self.ready && self.reachable == Some(true)),
            Role::Worker => self.ready,
        }
    }

    fn reachable_manager(&self) -> bool {
        self.reachable == Some(true) || self.leader
    }

    /// A node whose role is manager but that is not a raft member (no manager status: it was
    /// promoted and never joined raft). The engine refuses to demote it (`can't find manager in
    /// raft memberlist`); once it is down it can only be removed.
    pub fn outside_raft(&self) -> bool {
        self.role == Role::Manager && self.reachable.is_none()
    }
}

pub async fn list(engine: &BollardEngine) -> Result<Vec<NodeView>> {
    let c = engine.client().await?;
    let nodes = c
        .list_nodes(None::<ListNodesOptions>)
        .await
        .map_err(|e| engine.map_err(e))?;
    Ok(nodes
        .into_iter()
        .map(|n| {
            let spec = n.spec.unwrap_or_default();
            let ms = n.manager_status;
            let state = n.status.as_ref().and_then(|s| s.state);
            let status_addr = n.status.as_ref().and_then(|s| s.addr.clone());
            NodeView {
                id: n.id.unwrap_or_default(),
                hostname: n.description.and_then(|d| d.hostname).unwrap_or_default(),
                role: match spec.role {
                    Some(NodeSpecRoleEnum::MANAGER) => Role::Manager,
                    _ => Role::Worker,
                },
                availability: match spec.availability {
                    Some(NodeSpecAvailabilityEnum::DRAIN) => Availability::Drain,
                    Some(NodeSpecAvailabilityEnum::PAUSE) => Availability::Pause,
                    _ => Availability::Active,
                },
                ready: state == Some(NodeState::READY),
                state: match state {
                    Some(NodeState::READY) => "ready",
                    Some(NodeState::DOWN) => "down",
                    Some(NodeState::DISCONNECTED) => "disconnected",
                    _ => "unknown",
                }
                .to_string(),
                leader: ms.as_ref().and_then(|m| m.leader).unwrap_or(false),
                reachable: ms
                    .as_ref()
                    .and_then(|m| m.reachability)
                    .map(|r| r == Reachability::REACHABLE),
                manager_addr: ms.and_then(|m| m.addr).filter(|a| !a.is_empty()),
                addr: status_addr.filter(|a| !a.is_empty() && a != "0.0.0.0"),
            }
        })
        .collect())
}

/// Read the node's spec and version, change it, write it back (the engine refuses a write
/// based on an old version; callers retry on their next pass).
async fn update(
    engine: &BollardEngine,
    id: &str,
    change: impl FnOnce(&mut bollard::models::NodeSpec),
) -> Result<()> {
    let c = engine.client().await?;
    let node = c.inspect_node(id).await.map_err(|e| engine.map_err(e))?;
    let version = node
        .version
        .and_then(|v| v.index)
        .ok_or_else(|| EngineError::Protocol {
            host: engine.describe(),
            message: format!("node {id} has no version"),
        })?;
    let mut spec = node.spec.unwrap_or_default();
    change(&mut spec);
    c.update_node(
        id,
        spec,
        UpdateNodeOptionsBuilder::default()
            .version(version as i64)
            .build(),
    )
    .await
    .map_err(|e| engine.map_err(e))
}

pub async fn set_role(engine: &BollardEngine, id: &str, role: Role) -> Result<()> {
    update(engine, id, |s| {
        s.role = Some(match role {
            Role::Manager => NodeSpecRoleEnum::MANAGER,
            Role::Worker => NodeSpecRoleEnum::WORKER,
        })
    })
    .await
}

pub async fn set_availability(engine: &BollardEngine, id: &str, a: Availability) -> Result<()> {
    update(engine, id, |s| {
        s.availability = Some(match a {
            Availability::Active => NodeSpecAvailabilityEnum::ACTIVE,
            Availability::Pause => NodeSpecAvailabilityEnum::PAUSE,
            Availability::Drain => NodeSpecAvailabilityEnum::DRAIN,
        })
    })
    .await
}

/// `docker swarm join-token --rotate` for both roles: the swarm's worker and manager join
/// tokens are replaced (the spec is written back unchanged, with its version).
pub async fn rotate_join_tokens(engine: &BollardEngine) -> Result<()> {
    let c = engine.client().await?;
    let swarm = c.inspect_swarm().await.map_err(|e| engine.map_err(e))?;
    let version = swarm
        .version
        .and_then(|v| v.index)
        .ok_or_else(|| EngineError::Protocol {
            host: engine.describe(),
            message: "the swarm has no version".into(),
        })?;
    c.update_swarm(
        swarm.spec.unwrap_or_default(),
        UpdateSwarmOptionsBuilder::default()
            .version(version as i64)
            .rotate_worker_token(true)
            .rotate_manager_token(true)
            .build(),
    )
    .await
    .map_err(|e| engine.map_err(e))
}

pub async fn remove(engine: &BollardEngine, id: &str, force: bool) -> Result<()> {
    let c = engine.client().await?;
    c.delete_node(
        id,
        Some(DeleteNodeOptionsBuilder::default().force(force).build()),
    )
    .await
    .map_err(|e| engine.map_err(e))
}

/// Tasks of services that the orchestrator still wants running on node `id` (after a drain
/// they are moved elsewhere and this drops to 0; global services' tasks on a drained node are
/// shut down too).
pub async fn tasks_on(engine: &BollardEngine, id: &str) -> Result<usize> {
    let c = engine.client().await?;
    let mut filters: HashMap<&str, Vec<&str>> = HashMap::new();
    filters.insert("node", vec![id]);
    filters.insert("desired-state", vec!["running"]);
    let tasks = c
        .list_tasks(Some(
            ListTasksOptionsBuilder::default().filters(&filters).build(),
        ))
        .await
        .map_err(|e| engine.map_err(e))?;
    Ok(tasks.len())
}

/// Majority of `n` raft members.
pub fn majority(n: usize) -> usize {
    n / 2 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The engine's swarm is updated with its own version and both rotate flags (a mock
    /// Docker API).
    #[tokio::test]
    async fn rotating_join_tokens_updates_the_swarm_at_its_version() {
        use axum::extract::Request;
        use axum::response::IntoResponse;
        use std::sync::{Arc, Mutex};
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let s2 = seen.clone();
        let app = axum::Router::new().fallback(move |req: Request| {
            let seen = s2.clone();
            async move {
                let path = req.uri().path().to_string();
                seen.lock().unwrap().push(format!(
                    "{} {}",
                    req.method(),
                    req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("")
                ));
                let body = if path.ends_with("/version") {
                    r#"{"ApiVersion":"1.44","MinAPIVersion":"1.24","Version":"25.0.0"}"#
                } else if path.ends_with("/swarm") {
                    r#"{"ID":"s1","Version":{"Index":42},"Spec":{"Name":"default"},"JoinTokens":{"Worker":"SWMTKN-1-w","Manager":"SWMTKN-1-m"}}"#
                } else {
                    ""
                };
                ([("content-type", "application/json")], body).into_response()
            }
        });
        let base = crate::cloud::mock::serve(app).await;
        let engine = BollardEngine::new(
            &base.replace("http://", "tcp://"),
            std::time::Duration::from_secs(5),
        );
        rotate_join_tokens(&engine).await.unwrap();
        let seen = seen.lock().unwrap().clone();
        let update = seen
            .iter()
            .find(|r| r.starts_with("POST") && r.contains("/swarm/update"))
            .unwrap_or_else(|| panic!("no swarm update: {seen:?}"));
        for q in [
            "version=42",
            "rotateWorkerToken=true",
            "rotateManagerToken=true",
        ] {
            assert!(update.contains(q), "{update}");
        }
        assert!(!update.contains("rotateManagerUnlockKey=true"), "{update}");
    }

    #[test]
    fn majority_of_raft_sizes() {
        assert_eq!(majority(1), 1);
        assert_eq!(majority(2), 2);
        assert_eq!(majority(3), 2);
        assert_eq!(majority(4), 3);
        assert_eq!(majority(5), 3);
    }
}
