//! Prometheus metrics, kept in memory (they restart at zero with the process), encoded by the
//! official Prometheus Rust client (`prometheus-client`) in the OpenMetrics text format.
//!
//! One [`Registry`] per server (no process-global), so tests run many servers in one process.

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the request-duration histogram. Plain requests answer in
/// milliseconds (a store read) to tens of milliseconds (an fsync'd write); long-polls wait up to
/// [`swarmstrap_wire::MAX_WAIT_SECS`] (60 s), so the top buckets separate "answered by a change"
/// from "waited the whole time".
pub const DURATION_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Long-poll requests waiting right now (also the limit's count: read and changed under the
    /// long-poll lock).
    pub open_long_polls: Gauge<u64, AtomicU64>,
    pub auth_failures: Counter,
    /// Durable probe writes `/readyz` made (at most one per second).
    pub ready_probes: Counter,
    /// Connections closed at once: their address already had its most open connections.
    pub refused_connections: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        let open_long_polls = Gauge::<u64, AtomicU64>::default();
        let auth_failures = Counter::default();
        let ready_probes = Counter::default();
        let refused_connections = Counter::default();
        // Counter names get their `_total` suffix from the encoder.
        registry.register(
            "swarm_coordinator_requests",
            "HTTP requests by method, route template and status",
            requests.clone(),
        );
        registry.register(
            "swarm_coordinator_request_duration_seconds",
            "Time to answer by method and route template, including long-poll waits",
            durations.clone(),
        );
        registry.register(
            "swarm_coordinator_open_long_polls",
            "Long-poll requests waiting right now",
            open_long_polls.clone(),
        );
        registry.register(
            "swarm_coordinator_auth_failures",
            "Requests refused for a missing or wrong token",
            auth_failures.clone(),
        );
        registry.register(
            "swarm_coordinator_ready_probes",
            "Durable probe writes made by /readyz (at most one per second)",
            ready_probes.clone(),
        );
        registry.register(
            "swarm_coordinator_refused_connections",
            "Connections closed at once because their address held its most open connections",
            refused_connections.clone(),
        );
        Metrics {
            registry,
            requests,
            durations,
            open_long_polls,
            auth_failures,
            ready_probes,
            refused_connections,
        }
    }
}

impl Metrics {
    /// One answered request. `method` and `route` must come from a bounded set (the standard
    /// methods, the route templates): every distinct pair is a series.
    pub fn record(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                route: route.to_string(),
                status,
            })
            .inc();
        self.durations
            .get_or_create(&RouteLabels {
                method: method.to_string(),
                route: route.to_string(),
            })
            .observe(seconds);
    }

    /// The OpenMetrics text ([`CONTENT_TYPE`]). `clusters` and `nodes` are read from the store
    /// per scrape; `None` (the store did not answer) leaves the series out.
    pub fn render(&self, clusters: Option<u64>, nodes: Option<u64>) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would be a label-set bug.
        encode_registry(&mut out, &self.registry).expect("encode metrics");
        let mut store = Registry::default();
        if let Some(c) = clusters {
            let g = Gauge::<u64, AtomicU64>::default();
            g.set(c);
            store.register("swarm_coordinator_clusters", "Clusters in the store", g);
        }
        if let Some(n) = nodes {
            let g = Gauge::<u64, AtomicU64>::default();
            g.set(n);
            store.register(
                "swarm_coordinator_nodes",
                "Registered nodes, all clusters",
                g,
            );
        }
        encode_registry(&mut out, &store).expect("encode metrics");
        encode_eof(&mut out).expect("encode metrics");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix).map(str::trim))
    }

    #[test]
    fn renders_names_types_and_labels() {
        let m = Metrics::default();
        m.record("GET", "/v1/clusters/{cluster}/nodes", 200, 0.003);
        m.record("GET", "/v1/clusters/{cluster}/nodes", 200, 0.2);
        m.record("POST", "/v1/clusters/{cluster}/nodes", 409, 0.02);
        m.open_long_polls.inc();
        m.auth_failures.inc();
        m.ready_probes.inc();
        m.refused_connections.inc();
        m.refused_connections.inc();
        let text = m.render(Some(3), Some(7));

        for (name, kind) in [
            ("swarm_coordinator_requests", "counter"),
            ("swarm_coordinator_request_duration_seconds", "histogram"),
            ("swarm_coordinator_open_long_polls", "gauge"),
            ("swarm_coordinator_auth_failures", "counter"),
            ("swarm_coordinator_ready_probes", "counter"),
            ("swarm_coordinator_refused_connections", "counter"),
            ("swarm_coordinator_clusters", "gauge"),
            ("swarm_coordinator_nodes", "gauge"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} {kind}:\n{text}"
            );
        }
        assert_eq!(
            line(
                &text,
                r#"swarm_coordinator_requests_total{method="GET",route="/v1/clusters/{cluster}/nodes",status="200"}"#
            ),
            Some("2"),
            "{text}"
        );
        assert_eq!(
            line(
                &text,
                r#"swarm_coordinator_requests_total{method="POST",route="/v1/clusters/{cluster}/nodes",status="409"}"#
            ),
            Some("1"),
            "{text}"
        );
        assert_eq!(line(&text, "swarm_coordinator_open_long_polls "), Some("1"));
        assert_eq!(
            line(&text, "swarm_coordinator_auth_failures_total "),
            Some("1")
        );
        assert_eq!(
            line(&text, "swarm_coordinator_ready_probes_total "),
            Some("1")
        );
        assert_eq!(
            line(&text, "swarm_coordinator_refused_connections_total "),
            Some("2")
        );
        assert_eq!(line(&text, "swarm_coordinator_clusters "), Some("3"));
        assert_eq!(line(&text, "swarm_coordinator_nodes "), Some("7"));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn request_duration_is_a_histogram_with_its_buckets() {
        let m = Metrics::default();
        m.record("GET", "/v1/x", 200, 0.003);
        m.record("GET", "/v1/x", 200, 0.2);
        m.record("GET", "/v1/x", 200, 59.0);
        let text = m.render(None, None);
        let prefix = r#"swarm_coordinator_request_duration_seconds_bucket{le=""#;
        // Every bucket, cumulative, in order, then +Inf.
        let buckets: Vec<(String, u64)> = text
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(prefix)?;
                let (le, rest) = rest.split_once('"')?;
                assert!(rest.starts_with(r#",method="GET",route="/v1/x"} "#), "{l}");
                Some((le.to_string(), rest.rsplit(' ').next()?.parse().ok()?))
            })
            .collect();
        let les: Vec<String> = buckets.iter().map(|(le, _)| le.clone()).collect();
        let mut want: Vec<String> = DURATION_BUCKETS.iter().map(|b| format!("{b:?}")).collect();
        want.push("+Inf".to_string());
        assert_eq!(les, want, "{text}");
        let count = |le: &str| buckets.iter().find(|(l, _)| l == le).unwrap().1;
        assert_eq!(count("0.001"), 0);
        assert_eq!(count("0.005"), 1);
        assert_eq!(count("0.25"), 2);
        assert_eq!(count("30.0"), 2);
        assert_eq!(count("60.0"), 3);
        assert_eq!(count("+Inf"), 3);
        assert_eq!(
            line(
                &text,
                r#"swarm_coordinator_request_duration_seconds_count{method="GET",route="/v1/x"}"#
            ),
            Some("3")
        );
        let sum: f64 = line(
            &text,
            r#"swarm_coordinator_request_duration_seconds_sum{method="GET",route="/v1/x"}"#,
        )
        .unwrap()
        .parse()
        .unwrap();
        assert!((sum - 59.203).abs() < 1e-9, "{sum}");
        // A store that did not answer: its series are left out, the rest is still served.
        assert!(!text.contains("swarm_coordinator_clusters"), "{text}");
        assert!(!text.contains("swarm_coordinator_nodes"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        m.record("GET", "a\"b\\c\nd", 404, 0.0);
        let text = m.render(None, None);
        assert!(
            text.contains(r#"route="a\"b\\c\nd""#),
            "a route template with quotes must not break the exposition:\n{text}"
        );
    }
}
