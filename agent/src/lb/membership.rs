//! The membership document: every swarm node (Ready or not) with its address, role and labels.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
// The rendezvous's own checks of the membership document's values: one definition.
use swarmstrap_wire::rules::{is_hostname, is_label_key, is_label_value};

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

/// A node id of the membership document: 1-64 letters and digits (Docker's node ids).
fn is_node_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl Member {
    /// Why this member must not reach a config, if it must not: every value a template can
    /// print is checked as the rendezvous checks the membership document
    /// (`swarmstrap_wire::rules`, typed documents), so a value that is nginx syntax never
    /// renders even if a document got past the rendezvous.
    pub fn problem(&self) -> Option<String> {
        if !is_node_id(&self.id) {
            return Some(format!(
                "node id {:?} is not 1-64 letters and digits",
                self.id
            ));
        }
        // Empty hostname or address: not reported by the engine (a node that never reached
        // the manager). Allowed, as in the document; such a node takes no traffic.
        if !self.hostname.is_empty() && !is_hostname(&self.hostname) {
            return Some(format!(
                "hostname {:?} is not an RFC 1123 host name",
                self.hostname
            ));
        }
        if !self.addr.is_empty() && self.addr.parse::<IpAddr>().is_err() {
            return Some(format!("address {:?} is not an IP address", self.addr));
        }
        for (key, v, allowed) in [
            ("role", &self.role, &["manager", "worker"][..]),
            (
                "state",
                &self.state,
                &["ready", "down", "disconnected", "unknown"],
            ),
            (
                "availability",
                &self.availability,
                &["active", "pause", "drain"],
            ),
        ] {
            if !allowed.contains(&v.as_str()) {
                return Some(format!("{key} {v:?} is not one of {allowed:?}"));
            }
        }
        if let Some((k, v)) = self
            .labels
            .iter()
            .find(|(k, v)| !is_label_key(k) || !is_label_value(v))
        {
            return Some(format!(
                "label {k:?} = {v:?} is refused (keys [A-Za-z0-9._/-]{{1,128}}, values at most \
                 256 of [A-Za-z0-9 ._:/=,@+-])"
            ));
        }
        None
    }

    /// Drop the labels the membership document refuses (a Docker label may hold any text);
    /// the dropped keys are returned.
    pub fn drop_bad_labels(&mut self) -> Vec<String> {
        let bad: Vec<String> = self
            .labels
            .iter()
            .filter(|(k, v)| !is_label_key(k) || !is_label_value(v))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &bad {
            self.labels.remove(k);
        }
        bad
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

    /// Only the members that may reach a config ([`Member::problem`]); each skipped one is
    /// returned with its reason (for the log). The safe form is what every rendering uses.
    pub fn checked(&self) -> (Membership, Vec<String>) {
        let mut skipped = Vec::new();
        let nodes = self
            .nodes
            .iter()
            .filter(|m| match m.problem() {
                None => true,
                Some(why) => {
                    // Debug-escaped: the log line stays one line whatever the value holds.
                    skipped.push(format!("node {:?}: {why}", m.id));
                    false
                }
            })
            .cloned()
            .collect();
        (Membership { nodes }, skipped)
    }

    /// What the leader publishes: labels the document refuses are dropped, a member the
    /// document refuses (a host name that is not RFC 1123, say) is left out; each returned
    /// with its reason.
    pub fn publishable(mut self) -> (Membership, Vec<String>) {
        let mut notes = Vec::new();
        for m in &mut self.nodes {
            for k in m.drop_bad_labels() {
                notes.push(format!(
                    "node {:?}: label {k:?} left out (not a safe label)",
                    m.id
                ));
            }
        }
        let (m, skipped) = self.checked();
        notes.extend(skipped);
        (m, notes)
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
        id: format!(
            "id{}",
            host.replace(|c: char| !c.is_ascii_alphanumeric(), "")
        ),
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
    fn members_with_values_that_are_not_safe_are_skipped() {
        let good = member("10.0.0.1", "a", "ready");
        assert_eq!(good.problem(), None);
        let mut v6 = member("fd00::1", "b-2.example", "ready");
        v6.labels.insert("zone".into(), "eu-west-1a".into());
        v6.labels
            .insert("io.x/k_1".into(), "a b:c/d=e,f@g+h".into());
        assert_eq!(v6.problem(), None);
        let mut unreported = member("", "", "unknown");
        unreported.id = "x1".into();
        assert_eq!(unreported.problem(), None);
        let bad = |f: &dyn Fn(&mut Member)| {
            let mut m = member("10.0.0.9", "z", "ready");
            f(&mut m);
            m
        };
        let cases = [
            bad(&|m| m.addr = "10.0.0.7; } server { listen 8081; }".into()),
            bad(&|m| m.addr = "10.0.0.300".into()),
            bad(&|m| m.hostname = "a;b".into()),
            bad(&|m| m.hostname = "under_score".into()),
            bad(&|m| m.id = "x y".into()),
            bad(&|m| m.role = "manager;".into()),
            bad(&|m| m.state = "ready }".into()),
            bad(&|m| m.availability = "active\n".into()),
            bad(&|m| {
                m.labels
                    .insert("zone".into(), "a; include /etc/passwd".into());
            }),
            bad(&|m| {
                m.labels.insert("k{".into(), "v".into());
            }),
            bad(&|m| {
                m.labels.insert("k".into(), "$host".into());
            }),
        ];
        for c in &cases {
            assert!(c.problem().is_some(), "{c:?}");
        }
        let mut nodes = cases.to_vec();
        nodes.push(good.clone());
        let (safe, skipped) = Membership::new(nodes).checked();
        assert_eq!(safe.nodes, std::slice::from_ref(&good));
        assert_eq!(skipped.len(), cases.len());
        // Publishing drops a bad label but keeps the node.
        let mut labelled = good.clone();
        labelled.labels.insert("zone".into(), "a\"b".into());
        labelled.labels.insert("ok".into(), "yes".into());
        let (p, notes) = Membership::new(vec![labelled, cases[2].clone()]).publishable();
        assert_eq!(p.nodes.len(), 1);
        assert_eq!(p.nodes[0].labels.len(), 1);
        assert_eq!(notes.len(), 2, "{notes:?}");
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
