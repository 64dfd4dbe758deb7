//! Watching a swarm's managers through a change (a manager killed, a manager leaving): a
//! background thread samples `GET /nodes` from whichever live manager answers, every few
//! hundred milliseconds, and records what the invariants are about:
//!
//! - **promotions in flight**: nodes whose desired role is manager (`Spec.Role`) and whose
//!   raft status is not Reachable/Leader (no `ManagerStatus` yet, or Unreachable), leaving out
//!   the nodes the test killed or took out on purpose (their ids are `excluded`);
//! - **even raft**: how many nodes are raft members (`ManagerStatus` present, any
//!   reachability; what `docker node ls` shows as managers), and how long each streak of an
//!   even count lasted.
//!
//! The sampling period is the rhythm of the watch, not a wait for a condition: the thread
//! blocks on its stop channel with that period as the timeout, so stopping is immediate.

use crate::engine::EngineApi;
use crate::error::{LabError, Result};
use crate::swarm::ManagerStatus;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest a sample's `GET /nodes` may take (a manager without a leader can hang in gRPC).
pub const SAMPLE_TIMEOUT: Duration = Duration::from_secs(3);

/// One node as the raft cares about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftNode {
    pub id: String,
    pub hostname: String,
    /// `Spec.Role == "manager"`: what the swarm was asked to make of the node.
    pub desired_manager: bool,
    /// `ManagerStatus` present: a raft member (any reachability).
    pub raft_member: bool,
    /// Leader / Reachable / Unreachable / None (no `ManagerStatus`).
    pub manager_status: ManagerStatus,
    /// `Status.State` as reported (ready, down, unknown, disconnected).
    pub state: String,
}

impl RaftNode {
    /// A raft member that is Leader or Reachable.
    pub fn healthy_manager(&self) -> bool {
        matches!(
            self.manager_status,
            ManagerStatus::Leader | ManagerStatus::Reachable
        )
    }
}

/// Parse the Engine API's `GET /nodes` answer, keeping the desired role and raft status apart.
pub fn parse_raft_nodes(v: &Value) -> Result<Vec<RaftNode>> {
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
            let ms = n.get("ManagerStatus").filter(|m| !m.is_null());
            let manager_status = match ms {
                Some(m) if m.get("Leader").and_then(Value::as_bool) == Some(true) => {
                    ManagerStatus::Leader
                }
                Some(m) => match s(m, "/Reachability").to_ascii_lowercase().as_str() {
                    "reachable" => ManagerStatus::Reachable,
                    "unreachable" => ManagerStatus::Unreachable,
                    other => ManagerStatus::Other(other.to_string()),
                },
                None => ManagerStatus::None,
            };
            RaftNode {
                id: s(n, "/ID"),
                hostname: s(n, "/Description/Hostname"),
                desired_manager: s(n, "/Spec/Role") == "manager",
                raft_member: ms.is_some(),
                manager_status,
                state: s(n, "/Status/State"),
            }
        })
        .collect())
}

/// `GET /nodes` with a short timeout (fails on a worker or a manager without a leader).
pub fn raft_nodes(api: &EngineApi) -> Result<Vec<RaftNode>> {
    let r = api.request("GET", "/nodes", None, SAMPLE_TIMEOUT)?;
    if !(200..300).contains(&r.status) {
        let msg = serde_json::from_slice::<Value>(&r.body)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&r.body).into_owned());
        return Err(LabError::Check(format!(
            "GET /nodes: status {}: {}",
            r.status,
            msg.trim()
        )));
    }
    let v: Value = serde_json::from_slice(&r.body).map_err(|e| LabError::Parse {
        what: "GET /nodes".into(),
        message: e.to_string(),
    })?;
    parse_raft_nodes(&v)
}

/// Counts of one node list, with the ids in `excluded` set aside.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RaftCounts {
    /// Raft members (any reachability, excluded nodes included: raft still holds them).
    pub raft_members: usize,
    /// Raft members that are Leader/Reachable and not excluded.
    pub healthy: usize,
    /// Hostnames of the promotions in flight (see the module doc).
    pub in_flight: Vec<String>,
    /// Excluded nodes still in the raft.
    pub excluded_members: usize,
    pub leaders: usize,
}

impl RaftCounts {
    pub fn of(nodes: &[RaftNode], excluded: &BTreeSet<String>) -> RaftCounts {
        let mut c = RaftCounts::default();
        for n in nodes {
            let out = excluded.contains(&n.id);
            if n.raft_member {
                c.raft_members += 1;
                if out {
                    c.excluded_members += 1;
                }
            }
            if n.manager_status == ManagerStatus::Leader {
                c.leaders += 1;
            }
            if out {
                continue;
            }
            if n.raft_member && n.healthy_manager() {
                c.healthy += 1;
            }
            if n.desired_manager && !n.healthy_manager() {
                c.in_flight.push(n.hostname.clone());
            }
        }
        c
    }

    /// Exactly `n` raft members, all healthy, none excluded, one leader.
    pub fn is_settled(&self, n: usize) -> bool {
        self.raft_members == n
            && self.healthy == n
            && self.excluded_members == 0
            && self.in_flight.is_empty()
            && self.leaders == 1
    }
}

/// A one-line picture of the managers, e.g. `raft=3 node2:L node3:R node4:pending node1:U(x)`.
pub fn describe(nodes: &[RaftNode], excluded: &BTreeSet<String>) -> String {
    let mut by_name: BTreeMap<&str, usize> = BTreeMap::new();
    for n in nodes {
        *by_name.entry(n.hostname.as_str()).or_default() += 1;
    }
    let mut parts: Vec<String> = nodes
        .iter()
        .filter(|n| n.raft_member || n.desired_manager)
        .map(|n| {
            let mut name = n.hostname.clone();
            if by_name.get(n.hostname.as_str()).copied().unwrap_or(0) > 1 {
                name.push('#');
                name.push_str(&n.id[..n.id.len().min(4)]);
            }
            let st = match &n.manager_status {
                ManagerStatus::Leader => "L".to_string(),
                ManagerStatus::Reachable => "R".to_string(),
                ManagerStatus::Unreachable => "U".to_string(),
                ManagerStatus::None => "pending".to_string(),
                ManagerStatus::Other(o) => o.clone(),
            };
            let mut flags = String::new();
            if !n.desired_manager {
                flags.push_str("->worker,");
            }
            if !n.state.eq_ignore_ascii_case("ready") {
                flags.push_str(&n.state);
                flags.push(',');
            }
            if excluded.contains(&n.id) {
                flags.push_str("out,");
            }
            if flags.is_empty() {
                format!("{name}:{st}")
            } else {
                format!("{name}:{st}({})", flags.trim_end_matches(','))
            }
        })
        .collect();
    parts.sort();
    let members = nodes.iter().filter(|n| n.raft_member).count();
    format!("raft={members} {}", parts.join(" "))
}

/// One even-count streak: when it started (since the watch started), how long it lasted, the
/// count. A streak still open when the watch stops lasts until then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvenStreak {
    pub start: Duration,
    pub length: Duration,
    pub members: usize,
}

/// What a watch saw.
#[derive(Debug, Clone, Default)]
pub struct WatchReport {
    pub samples: usize,
    /// Samples where no live manager answered (elections, a dead leader).
    pub failed_samples: usize,
    pub max_in_flight: usize,
    /// When the largest number of promotions in flight was seen, and the picture then.
    pub max_in_flight_at: Option<(Duration, String)>,
    pub even_streaks: Vec<EvenStreak>,
    pub max_raft_members: usize,
    /// The picture each time it changed: `(since start, description)`.
    pub timeline: Vec<(Duration, String)>,
    pub elapsed: Duration,
    /// Longest time between two successful samples.
    pub longest_gap: Duration,
}

impl WatchReport {
    pub fn longest_even_streak(&self) -> Duration {
        self.even_streaks
            .iter()
            .map(|s| s.length)
            .max()
            .unwrap_or_default()
    }

    pub fn timeline_text(&self) -> String {
        self.timeline
            .iter()
            .map(|(t, d)| format!("  {:>6.1}s {d}", t.as_secs_f64()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn summary(&self) -> String {
        format!(
            "{} samples ({} without a manager answering, longest gap {:.1}s) over {:.1}s; \
             max promotions in flight {}; max raft members {}; even streaks {:?}; longest even \
             streak {:.1}s",
            self.samples,
            self.failed_samples,
            self.longest_gap.as_secs_f64(),
            self.elapsed.as_secs_f64(),
            self.max_in_flight,
            self.max_raft_members,
            self.even_streaks
                .iter()
                .map(|s| format!(
                    "{} members at {:.1}s for {:.1}s",
                    s.members,
                    s.start.as_secs_f64(),
                    s.length.as_secs_f64()
                ))
                .collect::<Vec<_>>(),
            self.longest_even_streak().as_secs_f64()
        )
    }
}

/// A running watch; [`QuorumWatch::stop`] ends it and returns the report.
pub struct QuorumWatch {
    stop: mpsc::Sender<()>,
    handle: Option<JoinHandle<WatchReport>>,
    started: Instant,
    samples: Arc<AtomicUsize>,
}

impl QuorumWatch {
    /// Start sampling every `period` from the first of `apis` that answers (named, for the
    /// record), with the node ids in `excluded` set aside.
    pub fn start(
        apis: Vec<(String, EngineApi)>,
        excluded: BTreeSet<String>,
        period: Duration,
    ) -> QuorumWatch {
        let (tx, rx) = mpsc::channel::<()>();
        let started = Instant::now();
        let samples = Arc::new(AtomicUsize::new(0));
        let counter = samples.clone();
        let handle =
            std::thread::spawn(move || watch(apis, excluded, period, started, rx, counter));
        QuorumWatch {
            stop: tx,
            handle: Some(handle),
            started,
            samples,
        }
    }

    /// Samples taken so far (answered or not).
    pub fn samples_taken(&self) -> usize {
        self.samples.load(Ordering::SeqCst)
    }

    /// Since the watch started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn stop(mut self) -> WatchReport {
        let _ = self.stop.send(());
        self.handle
            .take()
            .expect("stopped once")
            .join()
            .expect("the watch thread panicked")
    }
}

impl Drop for QuorumWatch {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

const NO_ANSWER: &str = "no manager answers";

fn watch(
    apis: Vec<(String, EngineApi)>,
    excluded: BTreeSet<String>,
    period: Duration,
    started: Instant,
    stop: mpsc::Receiver<()>,
    counter: Arc<AtomicUsize>,
) -> WatchReport {
    let mut r = WatchReport::default();
    let mut preferred = 0usize;
    let mut even_since: Option<(Duration, usize)> = None;
    let mut last_ok: Option<Duration> = None;
    let mut last_desc = String::new();
    loop {
        r.samples += 1;
        let mut got = None;
        for k in 0..apis.len() {
            let i = (preferred + k) % apis.len();
            if let Ok(nodes) = raft_nodes(&apis[i].1) {
                preferred = i;
                got = Some(nodes);
                break;
            }
        }
        let at = started.elapsed();
        match got {
            None => {
                r.failed_samples += 1;
                if last_desc != NO_ANSWER {
                    last_desc = NO_ANSWER.into();
                    r.timeline.push((at, last_desc.clone()));
                }
            }
            Some(nodes) => {
                let gap = at - last_ok.unwrap_or_default();
                r.longest_gap = r.longest_gap.max(gap);
                last_ok = Some(at);
                let c = RaftCounts::of(&nodes, &excluded);
                let desc = describe(&nodes, &excluded);
                let picture = format!("{desc} (via {})", apis[preferred].0);
                if desc != last_desc {
                    r.timeline.push((at, picture.clone()));
                    last_desc = desc;
                }
                r.max_raft_members = r.max_raft_members.max(c.raft_members);
                if c.in_flight.len() > r.max_in_flight {
                    r.max_in_flight = c.in_flight.len();
                    r.max_in_flight_at = Some((at, picture));
                }
                let even = c.raft_members.is_multiple_of(2);
                match (even, even_since) {
                    (true, None) => even_since = Some((at, c.raft_members)),
                    (false, Some((start, members))) => {
                        r.even_streaks.push(EvenStreak {
                            start,
                            length: at - start,
                            members,
                        });
                        even_since = None;
                    }
                    _ => {}
                }
            }
        }
        counter.store(r.samples, Ordering::SeqCst);
        match stop.recv_timeout(period) {
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            _ => break,
        }
    }
    r.elapsed = started.elapsed();
    if let Some((start, members)) = even_since {
        r.even_streaks.push(EvenStreak {
            start,
            length: r.elapsed - start,
            members,
        });
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_promotions_in_flight_and_raft_members() {
        let v = json!([
            {"ID":"a","Description":{"Hostname":"node1"},"Spec":{"Role":"manager"},
             "Status":{"State":"down"},"ManagerStatus":{"Reachability":"unreachable"}},
            {"ID":"b","Description":{"Hostname":"node2"},"Spec":{"Role":"manager"},
             "Status":{"State":"ready"},"ManagerStatus":{"Leader":true,"Reachability":"reachable"}},
            {"ID":"c","Description":{"Hostname":"node3"},"Spec":{"Role":"manager"},
             "Status":{"State":"ready"},"ManagerStatus":{"Reachability":"reachable"}},
            {"ID":"d","Description":{"Hostname":"node4"},"Spec":{"Role":"manager"},
             "Status":{"State":"ready"}},
            {"ID":"e","Description":{"Hostname":"node5"},"Spec":{"Role":"manager"},
             "Status":{"State":"down"},"ManagerStatus":{"Reachability":"unreachable"}},
            {"ID":"f","Description":{"Hostname":"node6"},"Spec":{"Role":"worker"},
             "Status":{"State":"ready"}}
        ]);
        let nodes = parse_raft_nodes(&v).unwrap();
        let excluded: BTreeSet<String> = ["a".to_string()].into();
        let c = RaftCounts::of(&nodes, &excluded);
        assert_eq!(c.raft_members, 4);
        assert_eq!(c.healthy, 2);
        assert_eq!(c.in_flight, vec!["node4".to_string(), "node5".to_string()]);
        assert_eq!(c.excluded_members, 1);
        assert!(!c.is_settled(3));
        let d = describe(&nodes, &excluded);
        assert!(d.starts_with("raft=4 "), "{d}");
        assert!(d.contains("node1:U(down,out)"), "{d}");
        assert!(d.contains("node4:pending"), "{d}");
        assert!(!d.contains("node6"), "{d}");

        // The dead one demoted and gone from the raft, the promotion done.
        let v = json!([
            {"ID":"a","Description":{"Hostname":"node1"},"Spec":{"Role":"worker"},
             "Status":{"State":"down"}},
            {"ID":"b","Description":{"Hostname":"node2"},"Spec":{"Role":"manager"},
             "Status":{"State":"ready"},"ManagerStatus":{"Leader":true,"Reachability":"reachable"}},
            {"ID":"c","Description":{"Hostname":"node3"},"Spec":{"Role":"manager"},
             "Status":{"State":"ready"},"ManagerStatus":{"Reachability":"reachable"}},
            {"ID":"d","Description":{"Hostname":"node4"},"Spec":{"Role":"manager"},
             "Status":{"State":"ready"},"ManagerStatus":{"Reachability":"reachable"}}
        ]);
        let c = RaftCounts::of(&parse_raft_nodes(&v).unwrap(), &excluded);
        assert!(c.is_settled(3), "{c:?}");
    }

    #[test]
    fn a_watch_without_any_manager_records_failed_samples_and_stops_at_once() {
        let w = QuorumWatch::start(
            vec![("none".into(), EngineApi::new("/nonexistent/docker.sock"))],
            BTreeSet::new(),
            Duration::from_millis(50),
        );
        crate::wait_until(Duration::from_secs(5), "three samples", || {
            Ok((w.samples_taken() >= 3).then_some(()))
        })
        .unwrap();
        let t = Instant::now();
        let r = w.stop();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "stopping is immediate"
        );
        assert!(r.samples >= 3, "{r:?}");
        assert_eq!(r.samples, r.failed_samples);
        assert_eq!(r.timeline.len(), 1);
        assert!(r.even_streaks.is_empty());
    }
}
