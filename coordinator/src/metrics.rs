//! Prometheus text metrics, kept in memory (they restart at zero with the process).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    /// (method, route template, status) → count
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    /// (method, route template) → (sum of seconds, count)
    durations: Mutex<BTreeMap<(String, String), (f64, u64)>>,
    pub open_long_polls: AtomicU64,
    pub auth_failures: AtomicU64,
    /// Durable probe writes `/readyz` made (at most one per second).
    pub ready_probes: AtomicU64,
    /// Connections closed at once: their address already had its most open connections.
    pub refused_connections: AtomicU64,
}

impl Metrics {
    pub fn record(&self, method: &str, route: &str, status: u16, seconds: f64) {
        *self
            .requests
            .lock()
            .expect("metrics lock")
            .entry((method.to_string(), route.to_string(), status))
            .or_default() += 1;
        let mut d = self.durations.lock().expect("metrics lock");
        let e = d
            .entry((method.to_string(), route.to_string()))
            .or_default();
        e.0 += seconds;
        e.1 += 1;
    }

    pub fn render(&self, clusters: Option<u64>, nodes: Option<u64>) -> String {
        let mut out = String::new();
        out.push_str("# HELP swarm_coordinator_requests_total HTTP requests by method, route template and status.\n");
        out.push_str("# TYPE swarm_coordinator_requests_total counter\n");
        for ((m, r, s), n) in self.requests.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "swarm_coordinator_requests_total{{method=\"{m}\",route=\"{}\",status=\"{s}\"}} {n}",
                escape(r)
            );
        }
        out.push_str("# HELP swarm_coordinator_request_duration_seconds Time to answer, including long-poll waits.\n");
        out.push_str("# TYPE swarm_coordinator_request_duration_seconds summary\n");
        for ((m, r), (sum, count)) in self.durations.lock().expect("metrics lock").iter() {
            let labels = format!("method=\"{m}\",route=\"{}\"", escape(r));
            let _ = writeln!(
                out,
                "swarm_coordinator_request_duration_seconds_sum{{{labels}}} {sum}"
            );
            let _ = writeln!(
                out,
                "swarm_coordinator_request_duration_seconds_count{{{labels}}} {count}"
            );
        }
        out.push_str(
            "# HELP swarm_coordinator_open_long_polls Long-poll requests waiting right now.\n",
        );
        out.push_str("# TYPE swarm_coordinator_open_long_polls gauge\n");
        let _ = writeln!(
            out,
            "swarm_coordinator_open_long_polls {}",
            self.open_long_polls.load(Ordering::Relaxed)
        );
        out.push_str("# HELP swarm_coordinator_auth_failures_total Requests refused for a missing or wrong token.\n");
        out.push_str("# TYPE swarm_coordinator_auth_failures_total counter\n");
        let _ = writeln!(
            out,
            "swarm_coordinator_auth_failures_total {}",
            self.auth_failures.load(Ordering::Relaxed)
        );
        out.push_str("# HELP swarm_coordinator_ready_probes_total Durable probe writes made by /readyz (at most one per second).\n");
        out.push_str("# TYPE swarm_coordinator_ready_probes_total counter\n");
        let _ = writeln!(
            out,
            "swarm_coordinator_ready_probes_total {}",
            self.ready_probes.load(Ordering::Relaxed)
        );
        out.push_str("# HELP swarm_coordinator_refused_connections_total Connections closed at once because their address held its most open connections.\n");
        out.push_str("# TYPE swarm_coordinator_refused_connections_total counter\n");
        let _ = writeln!(
            out,
            "swarm_coordinator_refused_connections_total {}",
            self.refused_connections.load(Ordering::Relaxed)
        );
        if let Some(c) = clusters {
            out.push_str("# HELP swarm_coordinator_clusters Clusters in the store.\n");
            out.push_str("# TYPE swarm_coordinator_clusters gauge\n");
            let _ = writeln!(out, "swarm_coordinator_clusters {c}");
        }
        if let Some(n) = nodes {
            out.push_str("# HELP swarm_coordinator_nodes Registered nodes, all clusters.\n");
            out.push_str("# TYPE swarm_coordinator_nodes gauge\n");
            let _ = writeln!(out, "swarm_coordinator_nodes {n}");
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
