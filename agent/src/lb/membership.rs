//! The membership document: every swarm node (Ready or not) with its address, role and labels.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Name of the rendezvous document the leader's agent publishes.
pub const DOC_NAME: &str = "membership";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Docker's node id.
    pub id: String,
    pub hostname: String,
    /// The node's address (IP, no port).
    pub addr: String,
    /// `manager` | `worker`
    pub role: String,
    /// `ready` | `down` | `disconnected` | `unknown`
    pub state: String,
    /// `active` | `pause` | `drain`
    pub availability: String,
    #[serde(default)]
    pub leader: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Member {
    /// Takes traffic: Ready and not drained.
    pub fn is_ready(&self) -> bool {
        self.state == "ready" && self.availability != "drain"
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub nodes: Vec<Member>,
}

/// Sort key: by IP address (numerically), then by the address text, then by node id.
fn key(m: &Member) -> (Option<IpAddr>, String, String) {
    (m.addr.parse().ok(), m.addr.clone(), m.id.clone())
}

impl Membership {
    /// Canonical form: nodes sorted by address (then id), so equal swarms give equal documents.
    pub fn new(mut nodes: Vec<Member>) -> Membership {
        nodes.sort_by_key(key);
        Membership { nodes }
    }

    pub fn to_body(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("membership serializes")
    }

    /// Parse a document body; `null` (never written) is `None`.
    pub fn from_body(body: &serde_json::Value) -> Result<Option<Membership>, String> {
        if body.is_null() {
            return Ok(None);
        }
        serde_json::from_value::<Membership>(body.clone())
            .map(|m| Some(Membership::new(m.nodes)))
            .map_err(|e| format!("the {DOC_NAME} document is not a membership list: {e}"))
    }

    /// Right after a leader change, swarm marks every node `unknown` until it heartbeats to
    /// the new leader (and `down` if it never does). Publishing that would empty the
    /// upstreams for a few seconds, so an `unknown` node keeps its state from the previous
    /// document (a node not in it stays `unknown`, which takes no traffic).
    pub fn carry_unknown(mut self, previous: Option<&Membership>) -> Membership {
        if let Some(prev) = previous {
            for n in self.nodes.iter_mut().filter(|n| n.state == "unknown") {
                if let Some(p) = prev.nodes.iter().find(|p| p.id == n.id) {
                    n.state = p.state.clone();
                }
            }
        }
        self
    }

    /// Ready (and not drained) nodes, one per address, sorted by address.
    pub fn ready(&self) -> Vec<&Member> {
        let mut out: Vec<&Member> = Vec::new();
        for m in &self.nodes {
            if m.is_ready() && !m.addr.is_empty() && !out.iter().any(|o| o.addr == m.addr) {
                out.push(m);
            }
        }
        out
    }
}

#[cfg(test)]
pub(crate) fn member(addr: &str, host: &str, state: &str) -> Member {
    Member {
        id: format!("id-{host}"),
        hostname: host.into(),
        addr: addr.into(),
        role: "worker".into(),
        state: state.into(),
        availability: "active".into(),
        leader: false,
        labels: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_numerically_by_address_and_round_trips() {
        let m = Membership::new(vec![
            member("10.0.0.10", "c", "ready"),
            member("10.0.0.9", "b", "down"),
            member("10.0.0.2", "a", "ready"),
        ]);
        let addrs: Vec<_> = m.nodes.iter().map(|n| n.addr.as_str()).collect();
        assert_eq!(addrs, ["10.0.0.2", "10.0.0.9", "10.0.0.10"]);
        let ready: Vec<_> = m.ready().iter().map(|n| n.hostname.as_str()).collect();
        assert_eq!(ready, ["a", "c"]);
        assert_eq!(Membership::from_body(&m.to_body()).unwrap(), Some(m));
        assert_eq!(
            Membership::from_body(&serde_json::Value::Null).unwrap(),
            None
        );
        assert!(Membership::from_body(&serde_json::json!({"nodes": 3})).is_err());
    }

    #[test]
    fn unknown_after_a_leader_change_keeps_the_previous_state() {
        let prev = Membership::new(vec![
            member("10.0.0.1", "a", "ready"),
            member("10.0.0.2", "b", "down"),
        ]);
        let now = Membership::new(vec![
            member("10.0.0.1", "a", "unknown"),
            member("10.0.0.2", "b", "unknown"),
            member("10.0.0.3", "c", "unknown"),
            member("10.0.0.4", "d", "down"),
        ]);
        let m = now.clone().carry_unknown(Some(&prev));
        let states: Vec<_> = m.nodes.iter().map(|n| n.state.as_str()).collect();
        assert_eq!(states, ["ready", "down", "unknown", "down"]);
        assert_eq!(m.ready().len(), 1);
        assert_eq!(now.clone().carry_unknown(None), now);
    }
}
