//! The engine calls of the load-balancer feature, on the agent's bollard client.

use super::membership::{Member, Membership};
use crate::engine::{BollardEngine, EngineError};
use bollard::models::{EventMessage, NodeSpecAvailabilityEnum, NodeSpecRoleEnum, NodeState};
use bollard::query_parameters::{EventsOptions, KillContainerOptions, ListContainersOptions};
use futures_util::Stream;
use std::collections::HashMap;

type Result<T> = std::result::Result<T, EngineError>;

/// Is the local engine the swarm's raft leader? (`docker info` ControlAvailable, then the own
/// node's ManagerStatus.Leader.) Workers and non-members answer `false`.
pub async fn is_leader(engine: &BollardEngine) -> Result<bool> {
    let c = engine.client().await?;
    let info = c.info().await.map_err(|e| engine.map_err(e))?;
    let Some(swarm) = info.swarm else {
        return Ok(false);
    };
    if !swarm.control_available.unwrap_or(false) {
        return Ok(false);
    }
    let Some(id) = swarm.node_id.filter(|i| !i.is_empty()) else {
        return Ok(false);
    };
    let node = c.inspect_node(&id).await.map_err(|e| engine.map_err(e))?;
    Ok(node.manager_status.and_then(|m| m.leader).unwrap_or(false))
}

/// Is the local engine a manager (can list nodes and see node events)?
pub async fn is_manager(engine: &BollardEngine) -> Result<bool> {
    let c = engine.client().await?;
    let info = c.info().await.map_err(|e| engine.map_err(e))?;
    Ok(info
        .swarm
        .and_then(|s| s.control_available)
        .unwrap_or(false))
}

/// Every node of the swarm (managers only).
pub async fn membership(engine: &BollardEngine) -> Result<Membership> {
    let c = engine.client().await?;
    let nodes = c
        .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
        .await
        .map_err(|e| engine.map_err(e))?;
    let members = nodes
        .into_iter()
        .map(|n| {
            let spec = n.spec.unwrap_or_default();
            let ms = n.manager_status;
            let status = n.status.unwrap_or_default();
            // A manager listening on 0.0.0.0 may report Status.Addr 0.0.0.0: its
            // ManagerStatus.Addr (ip:2377) has the real address.
            let addr = status
                .addr
                .filter(|a| !a.is_empty() && a != "0.0.0.0")
                .or_else(|| {
                    ms.as_ref()
                        .and_then(|m| m.addr.as_deref())
                        .and_then(|a| a.rsplit_once(':').map(|(h, _)| h.to_string()))
                })
                .unwrap_or_default();
            Member {
                id: n.id.unwrap_or_default(),
                hostname: n.description.and_then(|d| d.hostname).unwrap_or_default(),
                addr,
                role: match spec.role {
                    Some(NodeSpecRoleEnum::MANAGER) => "manager",
                    _ => "worker",
                }
                .into(),
                state: match status.state {
                    Some(NodeState::READY) => "ready",
                    Some(NodeState::DOWN) => "down",
                    Some(NodeState::DISCONNECTED) => "disconnected",
                    _ => "unknown",
                }
                .into(),
                availability: match spec.availability {
                    Some(NodeSpecAvailabilityEnum::PAUSE) => "pause",
                    Some(NodeSpecAvailabilityEnum::DRAIN) => "drain",
                    _ => "active",
                }
                .into(),
                leader: ms.and_then(|m| m.leader).unwrap_or(false),
                labels: spec.labels.unwrap_or_default().into_iter().collect(),
            }
        })
        .collect();
    Ok(Membership::new(members))
}

/// The engine's node events (create, update — including state changes — and remove).
pub async fn node_events(
    engine: &BollardEngine,
) -> Result<impl Stream<Item = std::result::Result<EventMessage, bollard::errors::Error>>> {
    let c = engine.client().await?;
    let filters = HashMap::from([("type".to_string(), vec!["node".to_string()])]);
    Ok(c.events(Some(EventsOptions {
        filters: Some(filters),
        ..Default::default()
    })))
}

/// SIGHUP (nginx: reload the config) every running container with `label` (`key=value`) or
/// belonging to swarm service `service`. Returns how many were signalled.
pub async fn reload_nginx(
    engine: &BollardEngine,
    label: Option<&str>,
    service: Option<&str>,
) -> Result<usize> {
    let c = engine.client().await?;
    let mut ids: Vec<String> = Vec::new();
    let mut selectors: Vec<String> = Vec::new();
    if let Some(l) = label {
        selectors.push(l.to_string());
    }
    if let Some(s) = service {
        selectors.push(format!("com.docker.swarm.service.name={s}"));
    }
    for sel in selectors {
        let filters = HashMap::from([
            ("label".to_string(), vec![sel]),
            ("status".to_string(), vec!["running".to_string()]),
        ]);
        let list = c
            .list_containers(Some(ListContainersOptions {
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| engine.map_err(e))?;
        for ct in list {
            if let Some(id) = ct.id {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
    }
    for id in &ids {
        c.kill_container(
            id,
            Some(KillContainerOptions {
                signal: "HUP".into(),
            }),
        )
        .await
        .map_err(|e| engine.map_err(e))?;
    }
    Ok(ids.len())
}
