//! The agent's own Prometheus metrics (opt-in: `[metrics] listen`), encoded by the official
//! Prometheus Rust client (`prometheus-client`) in the OpenMetrics text format and served on
//! `GET /metrics` of a plain-HTTP listener that is loopback-only unless the operator allows
//! otherwise ([`crate::config::MetricsConfig`]).
//!
//! One set per process ([`agent`]): the bootstrap, the load balancer, the quorum keeper and the
//! backend wrapper each add a line where something happens, instead of a handle threaded
//! through every loop. Counting costs an atomic add whether or not the listener is on. Tests
//! that check values build their own [`AgentMetrics`].
//!
//! Nothing here carries a secret: label values are fixed words (phases, roles, step and action
//! kinds, backend operations and error kinds), never node names, addresses or tokens.

use crate::state::AgentPhase;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};
use swarmstrap_wire::rendezvous::RendezvousError;
use swarmstrap_wire::Role;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The content type of [`AgentMetrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Scrapes served at once (Prometheus scrapes one at a time; more is a misbehaving client).
const MAX_CONNECTIONS: usize = 16;

/// Every phase gets a `swarm_agent_phase` series (1 for the current phase, 0 for the others),
/// so a dashboard sees the whole set from the first scrape.
const PHASES: [AgentPhase; 12] = AgentPhase::ALL;

/// Phases that are steps of a bootstrap (timed into `swarm_agent_bootstrap_step_seconds`).
fn is_bootstrap_step(p: AgentPhase) -> bool {
    // Exhaustive on purpose: a new phase must be classified here.
    match p {
        AgentPhase::WaitingForEngine
        | AgentPhase::Registering
        | AgentPhase::Claiming
        | AgentPhase::Initialising
        | AgentPhase::Publishing
        | AgentPhase::WaitingForTokens
        | AgentPhase::Joining => true,
        AgentPhase::Starting
        | AgentPhase::Joined
        | AgentPhase::Failed
        | AgentPhase::Leaving
        | AgentPhase::Left => false,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    step: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeeperLabels {
    kind: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendErrorLabels {
    operation: &'static str,
    kind: &'static str,
}

type GaugeF64 = Gauge<f64, AtomicU64>;

/// The time spent in each step of the bootstrap that runs now (or ran last).
struct StepClock {
    current: Option<(AgentPhase, Instant)>,
    started: Option<Instant>,
}

pub struct AgentMetrics {
    registry: Registry,
    phase: Family<PhaseLabel, Gauge>,
    role: Family<RoleLabel, Gauge>,
    bootstrap_steps: Family<StepLabel, GaugeF64>,
    bootstrap_seconds: GaugeF64,
    keeper_actions: Family<KeeperLabels, Counter>,
    lb_renders: Family<OutcomeLabel, Counter>,
    lb_rejections: Family<ReasonLabel, Counter>,
    lb_publishes: Counter,
    backend_errors: Family<BackendErrorLabels, Counter>,
    clock: Mutex<StepClock>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        AgentMetrics::new()
    }
}

/// The process's metrics.
pub fn agent() -> &'static AgentMetrics {
    static METRICS: LazyLock<AgentMetrics> = LazyLock::new(AgentMetrics::new);
    &METRICS
}

impl AgentMetrics {
    pub fn new() -> AgentMetrics {
        let mut registry = Registry::default();
        let phase = Family::<PhaseLabel, Gauge>::default();
        let role = Family::<RoleLabel, Gauge>::default();
        let bootstrap_steps = Family::<StepLabel, GaugeF64>::default();
        let bootstrap_seconds = GaugeF64::default();
        let keeper_actions = Family::<KeeperLabels, Counter>::default();
        let lb_renders = Family::<OutcomeLabel, Counter>::default();
        let lb_rejections = Family::<ReasonLabel, Counter>::default();
        let lb_publishes = Counter::default();
        let backend_errors = Family::<BackendErrorLabels, Counter>::default();
        registry.register(
            "swarm_agent_build",
            "This agent's version",
            Info::new(vec![("version", crate::VERSION)]),
        );
        registry.register(
            "swarm_agent_phase",
            "1 for the agent's current phase (the phase `status` shows), 0 for the others",
            phase.clone(),
        );
        registry.register(
            "swarm_agent_role",
            "1 for this node's role in the swarm (manager or worker) once it is known",
            role.clone(),
        );
        registry.register(
            "swarm_agent_bootstrap_step_seconds",
            "Seconds spent in each step of the last bootstrap (a step entered twice adds up)",
            bootstrap_steps.clone(),
        );
        registry.register(
            "swarm_agent_bootstrap_duration_seconds",
            "Seconds the last finished bootstrap took, from start to part of the swarm",
            bootstrap_seconds.clone(),
        );
        // Counter names get their `_total` suffix from the encoder.
        registry.register(
            "swarm_agent_keeper_actions",
            "Quorum keeper actions by kind and result (taken on the raft leader's agent)",
            keeper_actions.clone(),
        );
        registry.register(
            "swarm_agent_lb_renders",
            "Load-balancer configs rendered and applied: written (changed) or unchanged",
            lb_renders.clone(),
        );
        registry.register(
            "swarm_agent_lb_rejections",
            "Load-balancer configs not applied, by reason (the old file stays)",
            lb_rejections.clone(),
        );
        registry.register(
            "swarm_agent_lb_membership_publishes",
            "Membership documents published by this agent (as the swarm leader's)",
            lb_publishes.clone(),
        );
        registry.register(
            "swarm_agent_backend_errors",
            "Rendezvous backend calls that failed, by operation and error kind",
            backend_errors.clone(),
        );
        let m = AgentMetrics {
            registry,
            phase,
            role,
            bootstrap_steps,
            bootstrap_seconds,
            keeper_actions,
            lb_renders,
            lb_rejections,
            lb_publishes,
            backend_errors,
            clock: Mutex::new(StepClock {
                current: None,
                started: None,
            }),
        };
        for p in PHASES {
            let _ = m.phase.get_or_create(&PhaseLabel { phase: p.as_str() });
        }
        m
    }

    /// The agent's phase changed (or is first known): the phase gauge, and the time of the
    /// bootstrap step it leaves.
    pub fn set_phase(&self, phase: AgentPhase) {
        for p in PHASES {
            self.phase
                .get_or_create(&PhaseLabel { phase: p.as_str() })
                .set(i64::from(p == phase));
        }
        let mut c = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if let Some((prev, since)) = c.current.take() {
            if prev == phase {
                c.current = Some((prev, since));
                return;
            }
            if is_bootstrap_step(prev) {
                self.bootstrap_steps
                    .get_or_create(&StepLabel {
                        step: prev.as_str(),
                    })
                    .inc_by(now.duration_since(since).as_secs_f64());
            }
        }
        if is_bootstrap_step(phase) && c.started.is_none() {
            // A new bootstrap: its steps replace the last one's.
            self.bootstrap_steps.clear();
            c.started = Some(now);
        }
        if phase == AgentPhase::Joined {
            if let Some(start) = c.started.take() {
                self.bootstrap_seconds
                    .set(now.duration_since(start).as_secs_f64());
            }
        }
        if matches!(phase, AgentPhase::Failed | AgentPhase::Starting) {
            c.started = None;
        }
        c.current = Some((phase, now));
    }

    /// This node's role in the swarm as its engine reports it.
    pub fn set_role(&self, role: Role) {
        for (r, name) in [(Role::Manager, "manager"), (Role::Worker, "worker")] {
            self.role
                .get_or_create(&RoleLabel { role: name })
                .set(i64::from(r == role));
        }
    }

    /// A quorum keeper action (`kind` as the keeper's history names it), carried out or not.
    pub fn keeper_action(&self, kind: &'static str, ok: bool) {
        self.keeper_actions
            .get_or_create(&KeeperLabels {
                kind,
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// A rendered load-balancer config was applied: `written` (it changed) or not.
    pub fn lb_render(&self, written: bool) {
        self.lb_renders
            .get_or_create(&OutcomeLabel {
                outcome: if written { "written" } else { "unchanged" },
            })
            .inc();
    }

    /// A load-balancer config that was not applied: `membership` (the document is unreadable),
    /// `render` (the template failed), `invalid` (`nginx -t` refused it), `validator` (nginx
    /// could not be run), `write` (the file could not be written), `reload` (written, but the
    /// nginx containers could not be signalled).
    pub fn lb_rejection(&self, reason: &'static str) {
        self.lb_rejections
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// A membership document this agent published.
    pub fn lb_publish(&self) {
        self.lb_publishes.inc();
    }

    /// A failed call to the rendezvous backend.
    pub fn backend_error(&self, operation: &'static str, e: &RendezvousError) {
        let kind = match e {
            RendezvousError::Unauthorized(_) => "unauthorized",
            RendezvousError::Conflict { .. } => "conflict",
            RendezvousError::Rejected { .. } => "rejected",
            RendezvousError::Transient(_) => "transient",
        };
        self.backend_errors
            .get_or_create(&BackendErrorLabels { operation, kind })
            .inc();
    }

    /// The OpenMetrics text ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an encoder error would be a label-set bug.
        encode(&mut out, &self.registry).expect("encode metrics");
        out
    }
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("response")
}

fn route(metrics: &AgentMetrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            text(StatusCode::OK, CONTENT_TYPE, metrics.render())
        }
        (_, "/metrics") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "use GET /metrics\n".into(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: the agent serves only GET /metrics\n".into(),
        ),
    }
}

/// Serve `metrics` on `listener` until the future is dropped (plain HTTP/1.1, `GET /metrics`).
pub async fn serve(listener: TcpListener, metrics: &'static AgentMetrics) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("metrics: accept: {e}");
                continue;
            }
        };
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req| async move {
                Ok::<_, std::convert::Infallible>(route(metrics, &req))
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc);
            if let Err(e) = conn.await {
                tracing::debug!("metrics: connection from {peer}: {e}");
            }
        });
    }
}

/// `swarm-agent run`'s metrics listener: bound on `addr` when `[metrics] listen` is set (else
/// never resolves). A listener that cannot be bound is logged and the agent runs on without
/// it (metrics are not worth stopping the cluster's bootstrap for).
pub async fn run(addr: Option<std::net::SocketAddr>) {
    let Some(addr) = addr else {
        return std::future::pending().await;
    };
    match TcpListener::bind(addr).await {
        Ok(l) => {
            tracing::info!("metrics: serving GET http://{addr}/metrics");
            serve(l, agent()).await
        }
        Err(e) => {
            tracing::error!(
                "metrics: cannot listen on {addr} ([metrics] listen): {e}; the agent runs \
                 without its metrics endpoint"
            );
            std::future::pending().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines().find_map(|l| {
            l.strip_prefix(series)
                .and_then(|r| r.strip_prefix(' '))
                .map(str::trim)
        })
    }

    #[test]
    fn renders_names_types_and_labels() {
        let m = AgentMetrics::new();
        m.set_phase(AgentPhase::Registering);
        m.set_phase(AgentPhase::Joined);
        m.set_role(Role::Manager);
        m.keeper_action("promote", true);
        m.keeper_action("promote", true);
        m.keeper_action("remove", false);
        m.lb_render(true);
        m.lb_render(false);
        m.lb_render(false);
        m.lb_rejection("invalid");
        m.lb_publish();
        m.backend_error("get_doc", &RendezvousError::Transient("timeout".into()));
        m.backend_error(
            "put_doc",
            &RendezvousError::Conflict {
                code: "version_conflict".into(),
                message: String::new(),
            },
        );
        let text = m.render();
        for (name, kind) in [
            ("swarm_agent_build", "info"),
            ("swarm_agent_phase", "gauge"),
            ("swarm_agent_role", "gauge"),
            ("swarm_agent_bootstrap_step_seconds", "gauge"),
            ("swarm_agent_bootstrap_duration_seconds", "gauge"),
            ("swarm_agent_keeper_actions", "counter"),
            ("swarm_agent_lb_renders", "counter"),
            ("swarm_agent_lb_rejections", "counter"),
            ("swarm_agent_lb_membership_publishes", "counter"),
            ("swarm_agent_backend_errors", "counter"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} {kind}:\n{text}"
            );
        }
        let want = [
            (
                format!(r#"swarm_agent_build_info{{version="{}"}}"#, crate::VERSION),
                "1",
            ),
            (r#"swarm_agent_phase{phase="joined"}"#.into(), "1"),
            (r#"swarm_agent_phase{phase="registering"}"#.into(), "0"),
            (r#"swarm_agent_phase{phase="left"}"#.into(), "0"),
            (r#"swarm_agent_role{role="manager"}"#.into(), "1"),
            (r#"swarm_agent_role{role="worker"}"#.into(), "0"),
            (
                r#"swarm_agent_keeper_actions_total{kind="promote",result="ok"}"#.into(),
                "2",
            ),
            (
                r#"swarm_agent_keeper_actions_total{kind="remove",result="error"}"#.into(),
                "1",
            ),
            (
                r#"swarm_agent_lb_renders_total{outcome="written"}"#.into(),
                "1",
            ),
            (
                r#"swarm_agent_lb_renders_total{outcome="unchanged"}"#.into(),
                "2",
            ),
            (
                r#"swarm_agent_lb_rejections_total{reason="invalid"}"#.into(),
                "1",
            ),
            ("swarm_agent_lb_membership_publishes_total".into(), "1"),
            (
                r#"swarm_agent_backend_errors_total{operation="get_doc",kind="transient"}"#.into(),
                "1",
            ),
            (
                r#"swarm_agent_backend_errors_total{operation="put_doc",kind="conflict"}"#.into(),
                "1",
            ),
        ];
        for (series, v) in want {
            assert_eq!(value(&text, &series), Some(v), "{series}:\n{text}");
        }
        // Every phase is listed, exactly one of them 1.
        let phases: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("swarm_agent_phase{"))
            .collect();
        assert_eq!(phases.len(), PHASES.len(), "{text}");
        assert_eq!(phases.iter().filter(|l| l.ends_with(" 1")).count(), 1);
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn a_fresh_agent_lists_every_phase_at_zero_and_no_role() {
        let text = AgentMetrics::new().render();
        for p in PHASES {
            assert_eq!(
                value(
                    &text,
                    &format!(r#"swarm_agent_phase{{phase="{}"}}"#, p.as_str())
                ),
                Some("0"),
                "{text}"
            );
        }
        assert!(!text.contains("swarm_agent_role{"), "{text}");
    }

    #[test]
    fn bootstrap_steps_are_timed_and_a_new_bootstrap_replaces_them() {
        let m = AgentMetrics::new();
        m.set_phase(AgentPhase::Starting);
        m.set_phase(AgentPhase::WaitingForEngine);
        std::thread::sleep(Duration::from_millis(20));
        m.set_phase(AgentPhase::Registering);
        m.set_phase(AgentPhase::Joining);
        std::thread::sleep(Duration::from_millis(20));
        m.set_phase(AgentPhase::Joined);
        let text = m.render();
        let secs = |step: &str| -> f64 {
            value(
                &text,
                &format!(r#"swarm_agent_bootstrap_step_seconds{{step="{step}"}}"#),
            )
            .unwrap_or_else(|| panic!("step {step}:\n{text}"))
            .parse()
            .unwrap()
        };
        assert!(secs("waiting_for_engine") >= 0.02, "{text}");
        assert!(secs("joining") >= 0.02, "{text}");
        assert!(secs("registering") < 0.02, "{text}");
        let total: f64 = value(&text, "swarm_agent_bootstrap_duration_seconds")
            .unwrap()
            .parse()
            .unwrap();
        assert!(total >= 0.04, "{text}");
        // Starting and Joined are not steps.
        assert!(!text.contains(r#"step="joined""#), "{text}");
        assert!(!text.contains(r#"step="starting""#), "{text}");

        // A second bootstrap (after a rejoin): only its own steps.
        m.set_phase(AgentPhase::Starting);
        m.set_phase(AgentPhase::Joining);
        m.set_phase(AgentPhase::Joined);
        let text = m.render();
        assert!(!text.contains(r#"step="waiting_for_engine""#), "{text}");
        assert!(text.contains(r#"step="joining""#), "{text}");
    }

    #[tokio::test]
    async fn serves_get_metrics_over_http_and_nothing_else() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        static M: LazyLock<AgentMetrics> = LazyLock::new(AgentMetrics::new);
        M.set_phase(AgentPhase::Joined);
        let server = tokio::spawn(serve(listener, &M));
        swarmstrap_wire::pin::crypto_provider(); // reqwest has no provider of its own
        let client = reqwest::Client::new();
        let r = client
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"].to_str().unwrap(), CONTENT_TYPE);
        let body = r.text().await.unwrap();
        assert_eq!(
            value(&body, r#"swarm_agent_phase{phase="joined"}"#),
            Some("1"),
            "{body}"
        );
        let r = client.get(format!("http://{addr}/")).send().await.unwrap();
        assert_eq!(r.status(), 404);
        let r = client
            .post(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405);
        server.abort();
    }
}
