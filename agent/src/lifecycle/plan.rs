//! The quorum keeper's decisions, as a pure function of what the leader sees: one action per
//! pass, re-planned from a fresh node list after every action.
//!
//! Rules, in order (T = `promote_after`):
//! 1. A manager unhealthy (Down or Unreachable) for T while fewer than `target` managers are
//!    healthy: promote a Ready, Active worker that is not leaving.
//! 2. A manager unhealthy for T once `target` healthy managers stand (its replacement is in),
//!    or when the manager count is even: demote it (raft forgets it; if it comes back it is a
//!    worker).
//! 3. While any manager is unhealthy for less than T: nothing else (it may be restarting).
//! 4. A wrong manager count that has persisted for T (joins settle first): fewer than target →
//!    promote; more than target → demote a healthy non-leader; even and nobody to promote →
//!    demote a healthy non-leader, so no even count above 1 stands.
//! 5. A Down worker whose hostname a Ready node now holds (the host lost its swarm state and
//!    joined again under a new node id): remove the stale entry once it has been Down for T.
//!    With `remove_down_after` (T2) set: remove any worker Down for T2.
//!
//! 0. (Before all) a Down manager that never joined raft (promoted, no manager status) for T:
//!    remove it; the engine cannot demote it, and it holds no raft vote.
//!
//! A worker that shares its address or hostname with another Ready entry (an engine that left
//! and joined again, whose old entry is not Down yet) is never a spare.
//!
//! A demotion is only planned when the healthy managers keep a majority of the managers left.

use super::nodes::{majority, Availability, NodeView};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use swarmstrap_wire::Role;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    pub target: u8,
    pub promote_after: Duration,
    pub remove_down_after: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Promote,
    Demote,
    Remove,
    /// A worker's agent leaves and joins again as a manager through a live manager (a promotion
    /// the engine cannot carry out: it would join raft through a dead manager).
    Rejoin,
    /// The rendezvous had lost the cluster's formation; the leader's agent published the
    /// running swarm again.
    Adopt,
}

impl Kind {
    /// The serialized name (`promote`, `demote`, `remove`, `rejoin`, `adopt`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Promote => "promote",
            Kind::Demote => "demote",
            Kind::Remove => "remove",
            Kind::Rejoin => "rejoin",
            Kind::Adopt => "adopt",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Action {
    pub kind: Kind,
    pub node_id: String,
    pub hostname: String,
    pub reason: String,
}

/// What the leader sees now.
pub struct View<'a> {
    pub nodes: &'a [NodeView],
    /// How long each unhealthy node has been unhealthy (by node id).
    pub unhealthy_for: &'a HashMap<String, Duration>,
    /// How long the manager count has been off target / even (zero when it is fine).
    pub imbalance_for: Duration,
    /// Nodes with a pending `swarm-agent leave` (never promoted, never counted as spares).
    pub leaving: &'a HashSet<String>,
    /// Workers whose promotion failed recently: not picked again for a while.
    pub avoid: &'a HashSet<String>,
    /// Workers the engine can promote in place (they joined through a manager that is alive):
    /// picked before the others.
    pub prefer: &'a HashSet<String>,
}

/// Is the manager count something rule 4 wants to change?
pub fn imbalanced(nodes: &[NodeView], target: u8) -> bool {
    let m = nodes.iter().filter(|n| n.role == Role::Manager).count();
    m != usize::from(target) || (m.is_multiple_of(2) && m > 1)
}

fn secs(d: Duration) -> u64 {
    d.as_secs()
}

pub fn plan(v: &View<'_>, r: &Rules) -> Option<Action> {
    let target = usize::from(r.target);
    let managers: Vec<&NodeView> = v.nodes.iter().filter(|n| n.role == Role::Manager).collect();
    let healthy = managers.iter().filter(|n| n.healthy()).count();
    let down_for = |n: &NodeView| v.unhealthy_for.get(&n.id).copied().unwrap_or_default();
    let mut dead: Vec<&NodeView> = managers
        .iter()
        .copied()
        .filter(|n| !n.healthy() && down_for(n) >= r.promote_after)
        .collect();
    dead.sort_by(|a, b| {
        down_for(b)
            .cmp(&down_for(a))
            .then(a.hostname.cmp(&b.hostname))
    });
    let mut spares: Vec<&NodeView> = v
        .nodes
        .iter()
        .filter(|n| {
            n.role == Role::Worker
                && n.healthy()
                && n.availability == Availability::Active
                && !v.leaving.contains(&n.id)
                && !v.avoid.contains(&n.id)
                && !duplicated(v.nodes, n)
        })
        .collect();
    spares.sort_by(|a, b| {
        v.prefer
            .contains(&b.id)
            .cmp(&v.prefer.contains(&a.id))
            .then(a.hostname.cmp(&b.hostname))
            .then(a.id.cmp(&b.id))
    });
    // Demoting a healthy manager must leave a majority of healthy managers among the rest.
    let can_demote_healthy = healthy > 1 && healthy > majority(managers.len() - 1);
    // Demoting an unhealthy one: raft must have quorum now to apply it.
    let can_demote_dead = healthy >= majority(managers.len());
    let demotable = |ms: &[&NodeView]| -> Option<NodeView> {
        let mut c: Vec<&NodeView> = ms
            .iter()
            .copied()
            .filter(|n| n.healthy() && !n.leader)
            .collect();
        c.sort_by(|a, b| b.hostname.cmp(&a.hostname).then(b.id.cmp(&a.id)));
        c.first().map(|n| (*n).clone())
    };

    // Rule 0: a Down manager that never joined raft cannot be demoted (the engine refuses);
    // it is removed. It holds no raft vote, so this never touches quorum.
    if let Some(d) = dead.iter().find(|n| n.outside_raft() && !n.ready) {
        return Some(Action {
            kind: Kind::Remove,
            node_id: d.id.clone(),
            hostname: d.hostname.clone(),
            reason: format!(
                "manager {} was promoted but never joined raft, and has been {} for {} s",
                d.hostname,
                d.state,
                secs(down_for(d))
            ),
        });
    }

    if let Some(d) = dead.first() {
        // Rule 1.
        if healthy < target {
            if let Some(s) = spares.first() {
                return Some(Action {
                    kind: Kind::Promote,
                    node_id: s.id.clone(),
                    hostname: s.hostname.clone(),
                    reason: format!(
                        "manager {} has been {} for {} s (T = {} s); {healthy} of {target} \
                         managers healthy",
                        d.hostname,
                        d.condition(),
                        secs(down_for(d)),
                        secs(r.promote_after)
                    ),
                });
            }
        }
        // Rule 2.
        if can_demote_dead && (healthy >= target || managers.len().is_multiple_of(2)) {
            return Some(Action {
                kind: Kind::Demote,
                node_id: d.id.clone(),
                hostname: d.hostname.clone(),
                reason: format!(
                    "manager {} has been {} for {} s and {healthy} healthy managers stand \
                     ({} in raft)",
                    d.hostname,
                    d.condition(),
                    secs(down_for(d)),
                    managers.len()
                ),
            });
        }
    }

    // Rule 3.
    let settling = managers
        .iter()
        .any(|n| !n.healthy() && down_for(n) < r.promote_after);
    if !settling && dead.is_empty() && v.imbalance_for >= r.promote_after {
        let m = managers.len();
        // Rule 4.
        if m < target {
            if let Some(s) = spares.first() {
                return Some(Action {
                    kind: Kind::Promote,
                    node_id: s.id.clone(),
                    hostname: s.hostname.clone(),
                    reason: format!("{m} managers, {target} wanted"),
                });
            }
        }
        if m > target && can_demote_healthy {
            if let Some(n) = demotable(&managers) {
                return Some(Action {
                    kind: Kind::Demote,
                    node_id: n.id.clone(),
                    hostname: n.hostname.clone(),
                    reason: format!("{m} managers, {target} wanted"),
                });
            }
        }
        if m.is_multiple_of(2) && m > 1 && can_demote_healthy {
            if let Some(n) = demotable(&managers) {
                return Some(Action {
                    kind: Kind::Demote,
                    node_id: n.id.clone(),
                    hostname: n.hostname.clone(),
                    reason: format!(
                        "{m} managers is an even count and no Ready worker can be promoted"
                    ),
                });
            }
        }
    }

    // Rule 5.
    let mut stale: Vec<&NodeView> = v
        .nodes
        .iter()
        .filter(|n| {
            n.role == Role::Worker
                && n.state == "down"
                && down_for(n) >= r.promote_after
                && v.nodes
                    .iter()
                    .any(|o| o.id != n.id && o.ready && o.hostname == n.hostname)
        })
        .collect();
    stale.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
    if let Some(n) = stale.first() {
        return Some(Action {
            kind: Kind::Remove,
            node_id: n.id.clone(),
            hostname: n.hostname.clone(),
            reason: format!(
                "stale entry: {} joined again under a new node id (this one has been down for {} s)",
                n.hostname,
                secs(down_for(n))
            ),
        });
    }
    if let Some(t2) = r.remove_down_after {
        let mut gone: Vec<&NodeView> = v
            .nodes
            .iter()
            .filter(|n| n.role == Role::Worker && n.state == "down" && down_for(n) >= t2)
            .collect();
        gone.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        if let Some(n) = gone.first() {
            return Some(Action {
                kind: Kind::Remove,
                node_id: n.id.clone(),
                hostname: n.hostname.clone(),
                reason: format!(
                    "down for {} s (remove_down_after = {} s)",
                    secs(down_for(n)),
                    secs(t2)
                ),
            });
        }
    }
    None
}

/// Another Ready entry has this node's address or hostname: one of the two is the stale entry of
/// an engine that left and joined again (the old entry stays Ready until its heartbeat times
/// out). Promoting the stale one would make a manager that never joins raft, so neither is a
/// spare until the stale entry is Down.
fn duplicated(nodes: &[NodeView], n: &NodeView) -> bool {
    nodes.iter().any(|o| {
        o.id != n.id
            && o.ready
            && (o.hostname == n.hostname || (o.addr.is_some() && o.addr == n.addr))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_the_serialized_ones() {
        for k in [
            Kind::Promote,
            Kind::Demote,
            Kind::Remove,
            Kind::Rejoin,
            Kind::Adopt,
        ] {
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::Value::String(k.as_str().into())
            );
        }
    }

    fn node(id: &str, role: Role, healthy: bool) -> NodeView {
        NodeView {
            id: id.into(),
            hostname: format!("host-{id}"),
            role,
            availability: Availability::Active,
            ready: healthy,
            state: if healthy { "ready" } else { "down" }.into(),
            leader: false,
            reachable: (role == Role::Manager).then_some(healthy),
            manager_addr: None,
            addr: None,
        }
    }

    const T: Duration = Duration::from_secs(10);

    fn rules() -> Rules {
        Rules {
            target: 3,
            promote_after: T,
            remove_down_after: None,
        }
    }

    fn run(
        nodes: &[NodeView],
        down: &[(&str, u64)],
        imbalance: u64,
        leaving: &[&str],
        r: &Rules,
    ) -> Option<Action> {
        let unhealthy_for: HashMap<String, Duration> = down
            .iter()
            .map(|(i, s)| (i.to_string(), Duration::from_secs(*s)))
            .collect();
        let leaving: HashSet<String> = leaving.iter().map(|s| s.to_string()).collect();
        let none = HashSet::new();
        plan(
            &View {
                nodes,
                unhealthy_for: &unhealthy_for,
                imbalance_for: Duration::from_secs(imbalance),
                leaving: &leaving,
                avoid: &none,
                prefer: &none,
            },
            r,
        )
    }

    fn five(dead_manager: bool) -> Vec<NodeView> {
        let mut n = vec![
            node("a", Role::Manager, true),
            node("b", Role::Manager, true),
            node("c", Role::Manager, !dead_manager),
            node("d", Role::Worker, true),
            node("e", Role::Worker, true),
        ];
        n[0].leader = true;
        n
    }

    #[test]
    fn a_healthy_cluster_is_left_alone() {
        assert_eq!(run(&five(false), &[], 0, &[], &rules()), None);
    }

    #[test]
    fn a_manager_down_shorter_than_t_is_waited_for() {
        assert_eq!(run(&five(true), &[("c", 9)], 100, &[], &rules()), None);
    }

    #[test]
    fn a_manager_down_for_t_is_replaced_then_demoted() {
        let a = run(&five(true), &[("c", 10)], 0, &[], &rules()).unwrap();
        assert_eq!((a.kind, a.node_id.as_str()), (Kind::Promote, "d"));
        assert!(a.reason.contains("host-c"), "{}", a.reason);
        // After the promotion: 4 managers, one dead → demote the dead one.
        let mut n = five(true);
        n[3].role = Role::Manager;
        n[3].reachable = Some(true);
        let a = run(&n, &[("c", 12)], 0, &[], &rules()).unwrap();
        assert_eq!((a.kind, a.node_id.as_str()), (Kind::Demote, "c"));
        // Then 3 healthy managers: nothing more.
        n[2].role = Role::Worker;
        n[2].reachable = None;
        assert_eq!(run(&n, &[("c", 14)], 0, &[], &rules()), None);
    }

    #[test]
    fn a_leader_whose_own_reachability_is_still_unknown_counts_as_healthy() {
        // Just after an election the leader reports itself `unknown` for a few seconds (its
        // status too, not only its reachability).
        let mut n = five(true);
        n[0].reachable = Some(false);
        n[0].ready = false;
        n[0].state = "unknown".into();
        n[3].role = Role::Manager;
        n[3].reachable = Some(true);
        let a = run(&n, &[("c", 12)], 0, &[], &rules()).unwrap();
        assert_eq!((a.kind, a.node_id.as_str()), (Kind::Demote, "c"), "{a:?}");
        // Not the leader: it is unhealthy, and a worker is promoted.
        n[0].leader = false;
        n[1].leader = true;
        let a = run(&n, &[("c", 12), ("a", 12)], 0, &[], &rules()).unwrap();
        assert_eq!((a.kind, a.node_id.as_str()), (Kind::Promote, "e"), "{a:?}");
    }

    #[test]
    fn the_stale_ready_entry_of_an_engine_that_joined_again_is_not_promoted() {
        // d left and joined again as manager d2; its old worker entry is still Ready.
        let mut n = five(true);
        n[0].reachable = Some(false); // the new leader, still `unknown`
        let mut d2 = node("d2", Role::Manager, true);
        d2.hostname = "host-d".into();
        d2.addr = Some("10.0.0.4".into());
        n[3].addr = Some("10.0.0.4".into());
        n.push(d2);
        // 3 healthy managers (a leads): the dead one is demoted, nobody promoted.
        let a = run(&n, &[("c", 12)], 0, &[], &rules()).unwrap();
        assert_eq!((a.kind, a.node_id.as_str()), (Kind::Demote, "c"), "{a:?}");
        // With a fourth manager wanted, e is promoted, never the stale d.
        let mut r = rules();
        r.target = 5;
        let a = run(&n, &[("c", 12)], 0, &[], &r).unwrap();
        assert_eq!((a.kind, a.node_id.as_str()), (Kind::Promote, "e"), "{a:?}");
        // By address alone (another hostname) it is still a duplicate.
        n[5].hostname = "renamed".into();
        let a = run(&n, &[("c", 12)], 0, &[], &r).unwrap();
        assert_eq!((a.kind, a.node_id.as_str()), (Kind::Promote, "e"), "{a:?}");
        // A worker sharing a hostname with a Down entry is a spare (the host lost its swarm
        // state; the Down entry is the stale one).
        n[3].ready = false;
        n[3].state = "down".into();
        n[4].hostname = "host-d".into();
        let a = run(&n, &[("c", 12), ("d", 12)], 0, &[], &r).unwrap();
        assert_eq!((a.kind, a.node_id.as_str()), (Kind::Promote, "e"), "{a:?}");
    }

    #[test]
    fn a_down_manager_that_never_joined_raft_is_removed_not_demoted() {
        let mut n = five(false);
        let mut p = node("p", Role::Manager, false);
        p.reachable = None; // promoted, no manager status
        n.push(p);
        assert_eq!(run(&n, &[("p", 9)], 0, &[], &rules()), None);
        let a = run(&n, &[("p", 10)], 0, &[], &rules()).unwrap();
        assert_eq!((a.kind, a.node_id.as_str()), (Kind::Remove, "p"), "{a:?}");
        assert!(a.reason.contains("never joined raft"), "{}", a.reason);
        // Ready but outside raft (a promotion in progress or stuck): not removed by the plan.
        n[5].ready = true;
        n[5].state = "ready".into();
        assert_ne!(
            run(&n, &[("p", 30)], 0, &[], &rules()).map(|a| a.kind),
            Some(Kind::Remove)
        );
    }

    #[test]
    fn leaving_and_unready_workers_are_not_promoted() {
        let mut n = five(true);
        n[4].ready = false;
        n[4].state = "down".into();
        assert_eq!(run(&n, &[("c", 30), ("e", 30)], 0, &["d"], &rules()), None);
    }

    #[test]
    fn a_dead_manager_without_spares_stays_in_an_odd_raft() {
        let n = vec![
            node("a", Role::Manager, true),
            node("b", Role::Manager, true),
            node("c", Role::Manager, false),
        ];
        assert_eq!(run(&n, &[("c", 60)], 0, &[], &rules()), None);
    }

    #[test]
    fn a_dead_manager_in_an_even_raft_is_demoted() {
        let n = vec![
            node("a", Role::Manager, true),
            node("b", Role::Manager, true),
            node("c", Role::Manager, true),
            node("d", Role::Manager, false),
        ];
        let r = Rules {
            target: 5,
            ..rules()
        };
        let a = run(&n, &[("d", 60)], 60, &[], &r).unwrap();
        assert_eq!((a.kind, a.node_id.as_str()), (Kind::Demote, "d"));
    }

    #[test]
    fn no_demotion_without_quorum() {
        let n = vec![
            node("a", Role::Manager, true),
            node("b", Role::Manager, false),
            node("c", Role::Manager, false),
            node("d", Role::Manager, true),
        ];
        assert_eq!(run(&n, &[("b", 60), ("c", 60)], 60, &[], &rules()), None);
    }

    #[test]
    fn imbalance_waits_for_t_then_fixes_one_step_at_a_time() {
        // 1 manager, 4 workers, target 3.
        let mut n = vec![node("a", Role::Manager, true)];
        for i in ["b", "c", "d", "e"] {
            n.push(node(i, Role::Worker, true));
        }
        assert_eq!(run(&n, &[], 5, &[], &rules()), None);
        let a = run(&n, &[], 10, &[], &rules()).unwrap();
        assert_eq!((a.kind, a.node_id.as_str()), (Kind::Promote, "b"));
    }

    #[test]
    fn extras_and_even_counts_are_demoted_never_the_leader() {
        let mut n: Vec<NodeView> = ["a", "b", "c", "d"]
            .iter()
            .map(|i| node(i, Role::Manager, true))
            .collect();
        n[3].leader = true;
        let a = run(&n, &[], 10, &[], &rules()).unwrap();
        assert_eq!((a.kind, a.node_id.as_str()), (Kind::Demote, "c"));
        // Two managers, target 3, nobody to promote: back to one.
        let mut n = vec![
            node("a", Role::Manager, true),
            node("b", Role::Manager, true),
        ];
        n[0].leader = true;
        let a = run(&n, &[], 10, &[], &rules()).unwrap();
        assert_eq!((a.kind, a.node_id.as_str()), (Kind::Demote, "b"));
        assert!(a.reason.contains("even"), "{}", a.reason);
        // ... but with a spare, promote instead.
        n.push(node("w", Role::Worker, true));
        let a = run(&n, &[], 10, &[], &rules()).unwrap();
        assert_eq!((a.kind, a.node_id.as_str()), (Kind::Promote, "w"));
    }

    #[test]
    fn removal_is_off_by_default_and_applies_to_down_workers_after_t2() {
        let mut n = five(false);
        n[4].ready = false;
        n[4].state = "down".into();
        assert_eq!(run(&n, &[("e", 9999)], 0, &[], &rules()), None);
        let r = Rules {
            remove_down_after: Some(Duration::from_secs(60)),
            ..rules()
        };
        assert_eq!(run(&n, &[("e", 59)], 0, &[], &r), None);
        let a = run(&n, &[("e", 60)], 0, &[], &r).unwrap();
        assert_eq!((a.kind, a.node_id.as_str()), (Kind::Remove, "e"));
    }

    #[test]
    fn a_stale_entry_of_a_host_that_joined_again_is_removed_after_t() {
        let mut n = five(false);
        let mut old = node("e-old", Role::Worker, false);
        old.hostname = n[4].hostname.clone();
        n.push(old);
        assert_eq!(run(&n, &[("e-old", 9)], 0, &[], &rules()), None);
        let a = run(&n, &[("e-old", 10)], 0, &[], &rules()).unwrap();
        assert_eq!((a.kind, a.node_id.as_str()), (Kind::Remove, "e-old"));
        // Not while the host's new node is not Ready.
        n[4].ready = false;
        n[4].state = "down".into();
        assert_eq!(run(&n, &[("e-old", 60), ("e", 1)], 0, &[], &rules()), None);
    }

    #[test]
    fn promotable_workers_go_first_and_failed_ones_are_avoided() {
        let n = five(true);
        let unhealthy_for: HashMap<String, Duration> = [("c".to_string(), T)].into();
        let none = HashSet::new();
        let e: HashSet<String> = ["e".to_string()].into();
        let d: HashSet<String> = ["d".to_string()].into();
        let view = |avoid, prefer| View {
            nodes: &n,
            unhealthy_for: &unhealthy_for,
            imbalance_for: Duration::ZERO,
            leaving: &none,
            avoid,
            prefer,
        };
        assert_eq!(plan(&view(&none, &none), &rules()).unwrap().node_id, "d");
        assert_eq!(plan(&view(&none, &e), &rules()).unwrap().node_id, "e");
        assert_eq!(plan(&view(&d, &none), &rules()).unwrap().node_id, "e");
    }

    #[test]
    fn imbalanced_counts() {
        let n = five(false);
        assert!(!imbalanced(&n, 3));
        assert!(imbalanced(&n, 5));
        assert!(imbalanced(&n[..2], 3));
        assert!(!imbalanced(&n[..1], 1));
    }
}
