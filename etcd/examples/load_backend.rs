//! Benchmark (not a test): the `load_vs_etcd` workload (coordinator/examples/load_vs_etcd.rs)
//! run through the etcd backend's own code path, [`EtcdRendezvous`], for N simulated agents.
//!
//! ```sh
//! bash scripts/bench-etcd.sh --through-backend [N] [flags]   # raises ulimit -n, builds, runs
//! cargo run --release -p swarmstrap-etcd --example load_backend -- [N] [--inflight K] ...
//! ```
//!
//! A separate example and not a mode of `load_vs_etcd`: that one lives in the coordinator
//! crate and speaks HTTP/1.1 to etcd's JSON gateway; this one needs this crate's backend and
//! its `testing::EtcdCluster` harness, which the coordinator crate does not depend on.
//!
//! etcd: the `EtcdCluster` harness, 3 real members (Debian etcd-server) on free loopback
//! ports, TLS for clients and peers with client certificates required, etcd auth on (each
//! agent logs in as user `swarmstrap`, role read-write on `/swarmstrap/`), WAL fsync on. This
//! is the only etcd measured (no single plain member).
//!
//! Per simulated agent (`node-NNNNN`), one `EtcdRendezvous`, so its own etcd client (its own
//! connections and login); at most `--inflight` agents are in steps 1–3 at once:
//! 1. connect: `EtcdRendezvous::new` (connects and logs in: etcd `Authenticate`, which checks
//!    the password with bcrypt; `--cert-auth-only` leaves user + password out of the config,
//!    so etcd takes the user from the client certificate's CN and there is no login);
//! 2. register (role auto: the first 3 become managers);
//! 3. claim (TTL 120 s): one wins; workers are refused `not_a_manager`, the other managers
//!    are told the lease is held;
//! 4. token wait: `wait_join` (60 s, called again until the join info is there). The winner
//!    publishes once every other agent is inside `wait_join` and etcd counts that many
//!    watchers (the sum of `etcd_debugging_mvcc_watcher_total` over the members' /metrics);
//! 5. membership: every other agent calls `get_doc("membership", after = v, 60 s)` until it
//!    holds each of the `--writes` versions; the winner writes with `put_doc` (expected
//!    version), each write once every watcher holds the previous version, called
//!    `get_doc` again and etcd counts the watchers. Delivery latency = from just before
//!    `put_doc` (or `publish`) is called to the watcher's call returning the new version.
//!
//! A call that fails `Transient` (the backend gives up after 30 s of lost races or 10 s
//! without a member) is called again by the simulated agent, as the agent does (backoff
//! 25 ms doubling to 500 ms, jittered, within the run's deadline); such calls are counted.
//!
//! Contention, counted from outside the backend: its `debug` events "lost a race; deciding
//! again on a fresh read" (field `operation`) are counted by a tracing layer here, per
//! operation; etcd's /metrics give the raft proposals committed, the gRPC Txn and Watch calls
//! and the logins per phase.
//!
//! Figures: per phase ops/s (samples / first start → last end) and p50/p99, deliveries, wall
//! times, etcd RSS (VmRSS of the 3 members summed, sampled every 20 ms, per phase; VmHWM
//! summed) and CPU (user + sys, summed), generator CPU, every other process's CPU (from
//! /proc/stat: other builds share the machine) and steal.
//!
//! Every wait is on a condition with a deadline (notify, else a poll of etcd's /metrics with
//! backoff); the members are killed by pid when the harness is dropped (also on error and on
//! SIGINT/SIGTERM); traffic stays on 127.0.0.1.

use anyhow::{bail, ensure, Context, Result};
use backon::BackoffBuilder;
use clap::Parser;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swarmstrap_etcd::testing::EtcdCluster;
use swarmstrap_etcd::{EtcdConfig, EtcdRendezvous};
use swarmstrap_wire::rendezvous::{Rendezvous, RendezvousError};
use swarmstrap_wire::rules::Code;
use swarmstrap_wire::{PublishRequest, RegisterRequest, RequestedRole, Secret};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

const CLUSTER: &str = "bench";
const TARGET_MANAGERS: u8 = 3;
/// Init lease TTL (as in load_vs_etcd).
const LEASE_TTL: Duration = Duration::from_secs(120);
/// Each wait call's wait (the rendezvous' maximum).
const WAIT: Duration = Duration::from_secs(swarmstrap_wire::MAX_WAIT_SECS);
const DOC: &str = "membership";

#[derive(Parser, Debug, Clone)]
#[command(
    about = "The load_vs_etcd workload through EtcdRendezvous on a 3-member etcd (TLS + auth)"
)]
struct Args {
    /// Simulated agents.
    #[arg(default_value_t = 1000)]
    agents: usize,
    /// Agents in their connect/register/claim sequence at once.
    #[arg(long, default_value_t = 1000)]
    inflight: usize,
    /// Compare-and-set writes of the membership document.
    #[arg(long, default_value_t = 5)]
    writes: u64,
    /// Nodes listed in the membership document (sets its size).
    #[arg(long, default_value_t = 32)]
    doc_nodes: usize,
    /// Deadline of the whole run, seconds.
    #[arg(long, default_value_t = 900)]
    deadline_secs: u64,
    /// Authenticate by the client certificate alone (etcd takes its CN, `swarmstrap`, as the
    /// user) instead of user + password: no login request (etcd checks a password with bcrypt).
    #[arg(long)]
    cert_auth_only: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.agents >= 2, "give at least 2 agents");
    ensure!(args.inflight >= 1, "--inflight must be at least 1");
    ensure!(
        (1..=1000).contains(&args.writes),
        "--writes must be 1 to 1000"
    );
    // Each agent's etcd client holds a connection to each of the 3 members.
    raise_nofile(args.agents * 3)?;
    let races = Arc::new(Races::default());
    init_tracing(races.clone());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        tokio::select! {
            r = run(args, races) => r,
            s = stop_signal() => bail!("interrupted by {s}; stopping etcd"),
        }
    })
}

async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

/// Raise the soft open-files limit up to the hard one when `sockets` + slack need it.
fn raise_nofile(sockets: usize) -> Result<()> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let need = sockets as u64 + 1024;
    let lim = getrlimit(Resource::Nofile);
    let (cur, max) = (
        lim.current.unwrap_or(u64::MAX),
        lim.maximum.unwrap_or(u64::MAX),
    );
    if cur >= need {
        return Ok(());
    }
    ensure!(
        max >= need,
        "{sockets} sockets need at least {need} open files; the hard limit is {max}: run as a \
         user allowed more (ulimit -Hn), or with fewer agents"
    );
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(max),
            maximum: lim.maximum,
        },
    )
    .context("cannot raise the soft open-files limit")
}

// ---------------------------------------------------------------------------------------------
// Counting the backend's lost races from its debug events

/// Lost races per operation (`register`, `claim`, `publish`, `put_doc`, other) and failover
/// resends, from the backend's tracing events.
#[derive(Default)]
struct Races {
    by_op: Mutex<BTreeMap<String, u64>>,
    resends: AtomicU64,
}

impl Races {
    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.by_op.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

struct RaceLayer(Arc<Races>);

#[derive(Default)]
struct Fields {
    message: String,
    operation: String,
}

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
        if f.name() == "operation" {
            self.operation = v.to_string();
        }
    }
    fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
        match f.name() {
            "message" => self.message = format!("{v:?}"),
            "operation" => self.operation = format!("{v:?}"),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RaceLayer {
    fn on_event(&self, ev: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut f = Fields::default();
        ev.record(&mut f);
        if f.message.starts_with("lost a race") {
            *self
                .0
                .by_op
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(f.operation)
                .or_default() += 1;
        } else if f.message.starts_with("etcd request failed, trying again") {
            self.0.resends.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The race counter sees the backend's debug events only; stderr gets `RUST_LOG` (default
/// warn).
fn init_tracing(races: Arc<Races>) {
    use tracing_subscriber::prelude::*;
    let counter = RaceLayer(races).with_filter(
        tracing_subscriber::filter::Targets::new()
            .with_target("swarmstrap_etcd", tracing::Level::DEBUG),
    );
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        );
    tracing_subscriber::registry()
        .with(counter)
        .with(fmt)
        .init();
}

// ---------------------------------------------------------------------------------------------
// The members' processes (/proc) and metrics (/metrics over TLS with the client certificate)

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU seconds of a process (`pid` "self" for this one).
fn cpu_secs(pid: &str, ticks: f64) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / ticks
}

/// The harness' members: `etcd` children of this process whose data dir is in the harness'
/// temp dir (the directory of its CA file).
fn member_pids(cluster: &EtcdCluster) -> Result<Vec<u32>> {
    let dir = cluster
        .ca_file
        .parent()
        .context("the CA file has no directory")?
        .display()
        .to_string();
    let me = std::process::id();
    let mut pids = vec![];
    for e in std::fs::read_dir("/proc")? {
        let Some(pid) = e?.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rfind(')')
                    .and_then(|i| s[i + 1..].split_whitespace().nth(1)?.parse::<u32>().ok())
            });
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if ppid == Some(me)
            && args.first().is_some_and(|a| a.ends_with("etcd"))
            && args.iter().any(|a| a.starts_with(&dir))
        {
            pids.push(pid);
        }
    }
    ensure!(
        pids.len() == 3,
        "found {} etcd members of the harness in /proc (expected 3): {pids:?}",
        pids.len()
    );
    Ok(pids)
}

/// Reads the members' /metrics (client certificate required, as for every client request).
struct Metrics {
    http: reqwest::Client,
    urls: Vec<String>,
}

/// The figures kept from one scrape of every member.
#[derive(Default, Clone, Copy)]
struct Scrape {
    /// Sum over the members of `etcd_debugging_mvcc_watcher_total`.
    watchers: f64,
    /// Max over the members of `etcd_server_proposals_committed_total` (raft entries).
    proposals: f64,
    /// Sums over the members of `grpc_server_handled_total` by method.
    txn: f64,
    range: f64,
    authenticate: f64,
    /// `grpc_server_started_total` of Watch streams.
    watch_streams: f64,
}

impl Metrics {
    fn new(cluster: &EtcdCluster) -> Result<Self> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&cluster.ca_file).context("the harness CA")? {
            roots.add(c?)?;
        }
        let certs = CertificateDer::pem_file_iter(&cluster.cert_file)
            .context("the harness client certificate")?
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(&cluster.key_file).context("the client key")?;
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http = reqwest::Client::builder()
            .no_proxy()
            .http1_only()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_secs(30))
            .build()?;
        let urls = cluster
            .endpoints
            .iter()
            .map(|e| format!("{e}/metrics"))
            .collect();
        Ok(Metrics { http, urls })
    }

    async fn scrape(&self) -> Result<Scrape> {
        let mut s = Scrape::default();
        for url in &self.urls {
            let text = self
                .http
                .get(url)
                .send()
                .await
                .with_context(|| format!("GET {url}"))?
                .error_for_status()?
                .text()
                .await?;
            let mut seen_watchers = false;
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                let Some((name, value)) = line.rsplit_once(' ') else {
                    continue;
                };
                let Ok(v) = value.parse::<f64>() else {
                    continue;
                };
                let method = |m: &str| name.contains(&format!("grpc_method=\"{m}\""));
                if name == "etcd_debugging_mvcc_watcher_total" {
                    s.watchers += v;
                    seen_watchers = true;
                } else if name == "etcd_server_proposals_committed_total" {
                    s.proposals = s.proposals.max(v);
                } else if name.starts_with("grpc_server_handled_total{") {
                    if method("Txn") {
                        s.txn += v;
                    } else if method("Range") {
                        s.range += v;
                    } else if method("Authenticate") {
                        s.authenticate += v;
                    }
                } else if name.starts_with("grpc_server_started_total{") && method("Watch") {
                    s.watch_streams += v;
                }
            }
            ensure!(
                seen_watchers,
                "{url} has no etcd_debugging_mvcc_watcher_total (another etcd version?)"
            );
        }
        Ok(s)
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state of the run

const P_IDLE: usize = 0;
const P_RAMP: usize = 1;
const P_TOKEN: usize = 2;
const P_MEMBERSHIP: usize = 3;
const P_DONE: usize = 4;

/// Counters at a phase boundary.
#[derive(Clone)]
struct Mark {
    at: Instant,
    etcd: f64,
    generator: f64,
    /// Machine-wide busy and stolen CPU seconds (/proc/stat).
    busy: f64,
    steal: f64,
    scrape: Scrape,
    races: BTreeMap<String, u64>,
    resends: u64,
}

struct Shared {
    pids: Vec<u32>,
    ticks: f64,
    metrics: Metrics,
    races: Arc<Races>,
    marks: Mutex<[Option<Mark>; 5]>,
    n: usize,
    writes: u64,
    doc_nodes: usize,
    inflight: Semaphore,
    notify: Notify,
    /// Agents connected (logged in) and registered.
    connected: AtomicUsize,
    registered: AtomicUsize,
    /// Agents that called `wait_join`.
    in_join: AtomicUsize,
    tokens_seen: AtomicUsize,
    /// Per k in 0..writes: agents that called `get_doc(after = k)`.
    in_doc: Vec<AtomicUsize>,
    /// Per version 1..=writes: watchers that hold it.
    seen: Vec<AtomicUsize>,
    /// Agents that failed (they will never wait again).
    failed: AtomicUsize,
    /// `Transient` answers the simulated agents called again after, per operation.
    retried: Mutex<BTreeMap<&'static str, u64>>,
    /// Those `Transient` answers by operation and message (node names left out).
    retry_msgs: Mutex<BTreeMap<String, u64>>,
    /// `wait_join` / `get_doc` calls that ended at their wait without the answer.
    empty_waits: AtomicU64,
    phase: AtomicUsize,
    rss_peak: [AtomicU64; 5],
    deadline: Instant,
}

impl Shared {
    fn etcd_cpu(&self) -> f64 {
        self.pids
            .iter()
            .map(|p| cpu_secs(&p.to_string(), self.ticks))
            .sum()
    }

    fn etcd_rss(&self) -> u64 {
        let v = self.pids.iter().map(|p| status_kib(*p, "VmRSS:")).sum();
        let p = self.phase.load(Ordering::SeqCst);
        self.rss_peak[p].fetch_max(v, Ordering::SeqCst);
        v
    }

    /// Enter `phase`: CPU, etcd counters and RSS peaks are kept per phase.
    async fn enter(&self, phase: usize) -> Result<()> {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let f: Vec<f64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let g = |i: usize| f.get(i).copied().unwrap_or(0.0);
        // user nice system idle iowait irq softirq steal
        let busy = (g(0) + g(1) + g(2) + g(5) + g(6)) / self.ticks;
        let m = Mark {
            at: Instant::now(),
            etcd: self.etcd_cpu(),
            generator: cpu_secs("self", self.ticks),
            busy,
            steal: g(7) / self.ticks,
            scrape: self.metrics.scrape().await?,
            races: self.races.snapshot(),
            resends: self.races.resends.load(Ordering::Relaxed),
        };
        self.marks.lock().unwrap_or_else(|e| e.into_inner())[phase] = Some(m);
        self.phase.store(phase, Ordering::SeqCst);
        Ok(())
    }

    fn bump(&self, c: &AtomicUsize) {
        c.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    fn live_losers(&self) -> usize {
        (self.n - 1).saturating_sub(self.failed.load(Ordering::SeqCst))
    }

    /// Wait until `cond` holds (woken by the agents) and etcd counts at least as many
    /// watchers as live losers (polled with backoff, 5 ms doubling to 200 ms).
    async fn wait_parked(&self, what: &str, cond: impl Fn() -> bool) -> Result<()> {
        let mut delay = Duration::from_millis(5);
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let client_ok = cond();
            if client_ok {
                let s = self.metrics.scrape().await?;
                if s.watchers >= self.live_losers() as f64 {
                    return Ok(());
                }
            }
            let now = Instant::now();
            ensure!(now < self.deadline, "deadline reached waiting for {what}");
            if client_ok {
                tokio::time::sleep(delay.min(self.deadline - now)).await; // metrics poll backoff
                delay = (delay * 2).min(Duration::from_millis(200));
            } else {
                let _ = tokio::time::timeout_at(self.deadline.into(), notified).await;
            }
        }
    }

    /// `f` until it answers other than `Transient`, as the agent retries (25 ms doubling to
    /// 500 ms, jittered), within the run's deadline; each retry counted under `op`.
    async fn call<T, F, Fut>(&self, op: &'static str, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, RendezvousError>>,
    {
        let mut backoff = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(25))
            .with_max_delay(Duration::from_millis(500))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            match f().await {
                Ok(t) => return Ok(t),
                Err(e) if e.is_transient() && Instant::now() < self.deadline => {
                    *self
                        .retried
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(op)
                        .or_default() += 1;
                    let msg: String = e
                        .to_string()
                        .split_whitespace()
                        .filter(|w| !w.contains("node-"))
                        .collect::<Vec<_>>()
                        .join(" ");
                    *self
                        .retry_msgs
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(format!(
                            "{op}: {}",
                            msg.chars().take(200).collect::<String>()
                        ))
                        .or_default() += 1;
                    let d = backoff.next().unwrap_or(Duration::from_millis(500));
                    tokio::time::sleep(d).await; // the agent's retry backoff
                }
                Err(e) => return Err(anyhow::Error::new(e).context(op)),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One agent

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    Won(u64),
    Held,
    NotManager,
}

#[derive(Default)]
struct AgentOut {
    connect: Option<(Instant, Instant)>,
    register: Option<(Instant, Instant)>,
    claim: Option<(Instant, Instant)>,
    outcome: Option<Claim>,
    token_at: Option<Instant>,
    /// When this agent got membership version k (index k-1).
    seen: Vec<Option<Instant>>,
    leader: Option<LeaderOut>,
    error: Option<String>,
}

#[derive(Default, Clone)]
struct LeaderOut {
    parked_at: Option<Instant>,
    rss_parked_kib: u64,
    watchers_parked: f64,
    publish: Option<(Instant, Instant)>,
    writes: Vec<(Instant, Instant)>,
}

fn membership_body(k: u64, nodes: usize) -> serde_json::Value {
    let list: Vec<serde_json::Value> = (0..nodes)
        .map(|i| {
            let mut n = serde_json::json!({"id": format!("node{i:05}"),
                "hostname": format!("node-{i:05}"),
                "addr": format!("198.18.{}.{}", i / 250, i % 250 + 1),
                "role": if i < 3 { "manager" } else { "worker" }, "state": "ready",
                "availability": "active", "leader": i == 0});
            if i == 0 {
                n["labels"] = serde_json::json!({"generation": k.to_string()});
            }
            n
        })
        .collect();
    serde_json::json!({ "nodes": list })
}

async fn agent(i: usize, cfg: Arc<EtcdConfig>, shared: Arc<Shared>) -> AgentOut {
    let mut out = AgentOut {
        seen: vec![None; shared.writes as usize],
        ..AgentOut::default()
    };
    if let Err(e) = agent_steps(i, &cfg, &shared, &mut out).await {
        out.error = Some(format!("{e:#}"));
        if out.leader.is_none() {
            shared.bump(&shared.failed);
        }
    }
    out
}

async fn agent_steps(
    i: usize,
    cfg: &EtcdConfig,
    shared: &Shared,
    out: &mut AgentOut,
) -> Result<()> {
    let node = format!("node-{i:05}");
    let permit = shared.inflight.acquire().await?;
    let t0 = Instant::now();
    let be = shared
        .call("connect", || EtcdRendezvous::new(cfg.clone()))
        .await?;
    out.connect = Some((t0, Instant::now()));
    shared.connected.fetch_add(1, Ordering::Relaxed);
    let req = RegisterRequest {
        node_id: node.clone(),
        hostname: node.clone(),
        advertise_addr: format!("198.18.{}.{}", i / 250 % 256, i % 250 + 1),
        role: RequestedRole::Auto,
        joined_through: None,
        labels: None,
    };
    let t0 = Instant::now();
    shared.call("register", || be.register(&req)).await?;
    out.register = Some((t0, Instant::now()));
    shared.registered.fetch_add(1, Ordering::Relaxed);
    let t0 = Instant::now();
    let claim = match shared.call("claim", || be.claim(&node, LEASE_TTL)).await {
        Ok(c) if c.granted => Claim::Won(c.lease.context("granted without a lease")?.fencing_token),
        Ok(_) => Claim::Held,
        Err(e)
            if e.downcast_ref::<RendezvousError>()
                .and_then(RendezvousError::code)
                == Some(Code::NotAManager) =>
        {
            Claim::NotManager
        }
        Err(e) => return Err(e),
    };
    out.claim = Some((t0, Instant::now()));
    out.outcome = Some(claim);
    drop(permit);
    if let Claim::Won(fence) = claim {
        out.leader = Some(LeaderOut::default());
        let l = out.leader.as_mut().expect("set");
        return lead(&be, shared, &node, fence, l).await;
    }
    shared.bump(&shared.in_join);
    loop {
        let j = shared
            .call("wait_join", || be.wait_join(&node, WAIT))
            .await?;
        if j.join.is_some() {
            out.token_at = Some(Instant::now());
            shared.bump(&shared.tokens_seen);
            break;
        }
        shared.empty_waits.fetch_add(1, Ordering::Relaxed);
    }
    let mut have = 0u64;
    let mut entered = None;
    while have < shared.writes {
        if entered != Some(have) {
            shared.bump(&shared.in_doc[have as usize]);
            entered = Some(have);
        }
        let d = shared
            .call("get_doc", || be.get_doc(DOC, Some(have), WAIT))
            .await?;
        if d.version > have {
            let now = Instant::now();
            for v in have + 1..=d.version.min(shared.writes) {
                out.seen[v as usize - 1] = Some(now);
                shared.bump(&shared.seen[v as usize - 1]);
            }
            have = d.version;
        } else {
            shared.empty_waits.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// The lease winner: publish once every other agent waits, then write the membership
/// document `writes` times, each once every watcher holds the previous version and waits.
async fn lead(
    be: &EtcdRendezvous,
    shared: &Shared,
    node: &str,
    fence: u64,
    out: &mut LeaderOut,
) -> Result<()> {
    shared
        .wait_parked("every agent in wait_join", || {
            shared.in_join.load(Ordering::SeqCst) >= shared.live_losers()
        })
        .await?;
    out.parked_at = Some(Instant::now());
    out.rss_parked_kib = shared.etcd_rss();
    shared.enter(P_TOKEN).await?;
    out.watchers_parked = shared.marks.lock().unwrap_or_else(|e| e.into_inner())[P_TOKEN]
        .as_ref()
        .map_or(0.0, |m| m.scrape.watchers);
    let req = PublishRequest {
        node_id: node.to_string(),
        fencing_token: fence,
        swarm_id: "benchswarm0123456789abcd".into(),
        ca_digest: format!("sha256:{}", "cd".repeat(32)),
        manager_addrs: vec!["198.18.0.1:2377".into()],
        manager_token: Secret::new("SWMTKN-1-bench-manager"),
        worker_token: Secret::new("SWMTKN-1-bench-worker"),
    };
    let t0 = Instant::now();
    shared.call("publish", || be.publish(&req)).await?;
    out.publish = Some((t0, Instant::now()));
    let mut version = 0u64;
    for k in 1..=shared.writes {
        let ready = || {
            let live = shared.live_losers();
            shared.tokens_seen.load(Ordering::SeqCst) >= live
                && shared.in_doc[k as usize - 1].load(Ordering::SeqCst) >= live
                && (k == 1 || shared.seen[k as usize - 2].load(Ordering::SeqCst) >= live)
        };
        shared
            .wait_parked(&format!("membership write {k}: watchers waiting"), ready)
            .await?;
        if k == 1 {
            shared.enter(P_MEMBERSHIP).await?;
        }
        let body = membership_body(k, shared.doc_nodes);
        let t0 = Instant::now();
        let d = shared
            .call("put_doc", || be.put_doc(node, DOC, version, &body))
            .await?;
        out.writes.push((t0, Instant::now()));
        ensure!(
            d.version == k,
            "membership version {} after write {k}",
            d.version
        );
        version = d.version;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Figures

#[derive(Default, Clone)]
struct Stat {
    n: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    rate: f64,
    window: Duration,
}

fn stat(mut v: Vec<Duration>, window: Duration) -> Stat {
    v.sort();
    let pct = |p: f64| {
        if v.is_empty() {
            Duration::ZERO
        } else {
            v[((v.len() as f64 - 1.0) * p).round() as usize]
        }
    };
    Stat {
        n: v.len(),
        p50: pct(0.50),
        p99: pct(0.99),
        max: v.last().copied().unwrap_or_default(),
        rate: if window.is_zero() {
            0.0
        } else {
            v.len() as f64 / window.as_secs_f64()
        },
        window,
    }
}

fn span_stat(spans: &[(Instant, Instant)]) -> Stat {
    let lat = spans.iter().map(|(a, b)| *b - *a).collect();
    let window = match (
        spans.iter().map(|s| s.0).min(),
        spans.iter().map(|s| s.1).max(),
    ) {
        (Some(a), Some(b)) => b - a,
        _ => Duration::ZERO,
    };
    stat(lat, window)
}

fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1000.0;
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn lat(s: &Stat) -> String {
    format!("{} / {}", ms(s.p50), ms(s.p99))
}

/// Figures of one phase between two marks.
struct Phase {
    wall: f64,
    etcd: f64,
    generator: f64,
    other: f64,
    steal: f64,
    proposals: f64,
    txn: f64,
    range: f64,
    authenticate: f64,
    watch_streams: f64,
    races: BTreeMap<String, u64>,
    resends: u64,
}

fn phase(a: &Mark, b: &Mark) -> Phase {
    let (etcd, generator) = (b.etcd - a.etcd, b.generator - a.generator);
    let races = b
        .races
        .iter()
        .map(|(k, v)| (k.clone(), v - a.races.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect();
    Phase {
        wall: (b.at - a.at).as_secs_f64(),
        etcd,
        generator,
        other: (b.busy - a.busy - etcd - generator).max(0.0),
        steal: b.steal - a.steal,
        proposals: b.scrape.proposals - a.scrape.proposals,
        txn: b.scrape.txn - a.scrape.txn,
        range: b.scrape.range - a.scrape.range,
        authenticate: b.scrape.authenticate - a.scrape.authenticate,
        watch_streams: b.scrape.watch_streams - a.scrape.watch_streams,
        races,
        resends: b.resends - a.resends,
    }
}

fn error_summary(outs: &[AgentOut]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in outs.iter().filter_map(|o| o.error.as_deref()) {
        let key: String = e
            .split_whitespace()
            .filter(|w| !w.contains("node-"))
            .collect::<Vec<_>>()
            .join(" ");
        *m.entry(key.chars().take(300).collect()).or_default() += 1;
    }
    m
}

fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let mem = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|k| format!("{:.1} GiB", k / 1024.0 / 1024.0))
        .unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    let etcd = std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "etcd not found".into());
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    format!(
        "nproc {} ({cpu}), RAM {mem}, kernel {}, Debian {}, {etcd}, open files limit {}, load {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        read("/proc/sys/kernel/osrelease").trim(),
        read("/etc/debian_version").trim(),
        nofile.current.map_or("unlimited".into(), |v| v.to_string()),
        read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

// ---------------------------------------------------------------------------------------------
// The run

async fn run(args: Args, races: Arc<Races>) -> Result<()> {
    let ticks = clock_ticks();
    let machine = machine();
    eprintln!("machine: {machine}");
    eprintln!("starting 3 etcd members (TLS, client certificates, auth) ...");
    let cluster = EtcdCluster::start().await;
    let pids = member_pids(&cluster)?;
    let mut cfg = cluster.config(CLUSTER, TARGET_MANAGERS);
    if args.cert_auth_only {
        cfg.user = None;
        cfg.password_file = None;
    }
    let cfg = Arc::new(cfg);
    let metrics = Metrics::new(&cluster)?;
    let n = args.agents;
    let shared = Arc::new(Shared {
        pids,
        ticks,
        metrics,
        races,
        marks: Mutex::new([None, None, None, None, None]),
        n,
        writes: args.writes,
        doc_nodes: args.doc_nodes,
        inflight: Semaphore::new(args.inflight),
        notify: Notify::new(),
        connected: AtomicUsize::new(0),
        registered: AtomicUsize::new(0),
        in_join: AtomicUsize::new(0),
        tokens_seen: AtomicUsize::new(0),
        in_doc: (0..args.writes).map(|_| AtomicUsize::new(0)).collect(),
        seen: (0..args.writes).map(|_| AtomicUsize::new(0)).collect(),
        failed: AtomicUsize::new(0),
        retried: Mutex::new(BTreeMap::new()),
        retry_msgs: Mutex::new(BTreeMap::new()),
        empty_waits: AtomicU64::new(0),
        phase: AtomicUsize::new(P_IDLE),
        rss_peak: Default::default(),
        deadline: Instant::now() + Duration::from_secs(args.deadline_secs),
    });
    let idle = shared.metrics.scrape().await?;
    ensure!(
        idle.watchers == 0.0,
        "etcd counts {} watchers before the run (expected none)",
        idle.watchers
    );
    let rss_idle = shared.etcd_rss();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (shared, on) = (shared.clone(), sampling.clone());
        tokio::spawn(async move {
            while on.load(Ordering::Relaxed) {
                shared.etcd_rss();
                tokio::time::sleep(Duration::from_millis(20)).await; // RSS sampling period
            }
        })
    };
    eprintln!(
        "{n} agents, inflight {}, {} writes ...",
        args.inflight, args.writes
    );
    shared.enter(P_RAMP).await?;
    let start = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..n {
        set.spawn(agent(i, cfg.clone(), shared.clone()));
    }
    let mut outs: Vec<AgentOut> = Vec::with_capacity(n);
    let status = |outs: &[AgentOut], left: usize| {
        format!(
            "{} agents finished, {left} unfinished; connected {}, registered {}, in wait_join {}, \
             tokens {}, failed {}, lost races {:?}, agent retries {:?}, errors {:?}",
            outs.len(),
            shared.connected.load(Ordering::Relaxed),
            shared.registered.load(Ordering::Relaxed),
            shared.in_join.load(Ordering::SeqCst),
            shared.tokens_seen.load(Ordering::SeqCst),
            shared.failed.load(Ordering::SeqCst),
            shared.races.snapshot(),
            shared.retried.lock().unwrap_or_else(|e| e.into_inner()),
            error_summary(outs)
        )
    };
    let mut progress = Instant::now() + Duration::from_secs(10);
    loop {
        let wake = progress.min(shared.deadline);
        let out = match tokio::time::timeout_at(wake.into(), set.join_next()).await {
            Err(_) if Instant::now() >= shared.deadline => bail!(
                "deadline of {} s reached: {}",
                args.deadline_secs,
                status(&outs, set.len())
            ),
            Err(_) => {
                eprintln!("{}", status(&outs, set.len()));
                progress = Instant::now() + Duration::from_secs(10);
                continue;
            }
            Ok(None) => break,
            Ok(Some(r)) => r.context("agent task")?,
        };
        if let (Some(_), Some(e)) = (&out.leader, &out.error) {
            bail!("the lease winner failed: {e}");
        }
        outs.push(out);
    }
    let wall = start.elapsed();
    shared.enter(P_DONE).await?;
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    let hwm: u64 = shared.pids.iter().map(|p| status_kib(*p, "VmHWM:")).sum();

    // Figures.
    let marks = shared
        .marks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let m = |p: usize| marks[p].clone().context("a phase mark is missing");
    let (ramp, token, member, whole) = (
        phase(&m(P_RAMP)?, &m(P_TOKEN)?),
        phase(&m(P_TOKEN)?, &m(P_MEMBERSHIP)?),
        phase(&m(P_MEMBERSHIP)?, &m(P_DONE)?),
        phase(&m(P_RAMP)?, &m(P_DONE)?),
    );
    let spans = |f: fn(&AgentOut) -> Option<(Instant, Instant)>| -> Vec<(Instant, Instant)> {
        outs.iter().filter_map(f).collect()
    };
    let connect = span_stat(&spans(|o| o.connect));
    let register = span_stat(&spans(|o| o.register));
    let claim = span_stat(&spans(|o| o.claim));
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for o in &outs {
        let k = match o.outcome {
            Some(Claim::Won(_)) => "granted",
            Some(Claim::Held) => "refused: held by another",
            Some(Claim::NotManager) => "refused: not_a_manager",
            None => "no answer",
        };
        *outcomes.entry(k).or_default() += 1;
    }
    let errors = error_summary(&outs);
    let winners = outcomes.get("granted").copied().unwrap_or(0);
    ensure!(
        winners == 1,
        "{winners} claims granted (expected exactly 1)"
    );
    let leader = outs
        .iter()
        .find_map(|o| o.leader.clone())
        .context("no leader report")?;
    let (pub0, pub1) = leader.publish.context("no publish")?;
    let park_wall = leader.parked_at.context("never parked")? - start;
    let tokens: Vec<Duration> = outs
        .iter()
        .filter_map(|o| o.token_at.map(|a| a.saturating_duration_since(pub0)))
        .collect();
    let token_window = tokens.iter().max().copied().unwrap_or_default();
    let tok = stat(tokens, token_window);
    let mut deliveries = vec![];
    let mut fanouts = vec![];
    for (k, (w0, _)) in leader.writes.iter().enumerate() {
        let l: Vec<Duration> = outs
            .iter()
            .filter_map(|o| o.seen.get(k).copied().flatten())
            .map(|a| a.saturating_duration_since(*w0))
            .collect();
        fanouts.push(l.iter().max().copied().unwrap_or_default());
        deliveries.extend(l);
    }
    let mem = stat(deliveries, fanouts.iter().sum());
    let writes = span_stat(&leader.writes);
    let retried = shared
        .retried
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let peak = |p: usize| shared.rss_peak[p].load(Ordering::SeqCst);
    let per = |v: u64, n: usize| v as f64 / n.max(1) as f64;
    let races_of = |p: &Phase, op: &str| p.races.get(op).copied().unwrap_or(0);

    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n## etcd backend (EtcdRendezvous), {n} simulated agents\n"
    );
    let _ = writeln!(s, "machine: {machine}");
    let _ = writeln!(
        s,
        "etcd: 3 members (EtcdCluster harness), TLS + client certificates + auth ({}), one \
         EtcdRendezvous (own client) per agent; inflight {}; {} membership writes of a {}-byte \
         document; run {:.2} s\n",
        if args.cert_auth_only {
            "user from the client certificate's CN, no login"
        } else {
            "user + password: one login per agent"
        },
        args.inflight,
        args.writes,
        membership_body(1, args.doc_nodes).to_string().len(),
        wall.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "| phase | ops/s | p50 / p99 | max | samples | lost races (per op) | agent retries |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- |");
    let rows: [(&str, &Stat, &str); 3] = [
        (
            "connect (new client; login unless cert-only)",
            &connect,
            "connect",
        ),
        ("register", &register, "register"),
        ("claim", &claim, "claim"),
    ];
    for (name, st, op) in rows {
        let r = races_of(&whole, op);
        let _ = writeln!(
            s,
            "| {name} | {:.0} | {} | {} | {} | {r} ({:.2}) | {} |",
            st.rate,
            lat(st),
            ms(st.max),
            st.n,
            per(r, st.n),
            retried.get(op).copied().unwrap_or(0)
        );
    }
    let _ = writeln!(
        s,
        "| publish (fenced) | – | {} | – | 1 | {} | {} |",
        ms(pub1 - pub0),
        races_of(&whole, "publish"),
        retried.get("publish").copied().unwrap_or(0)
    );
    let _ = writeln!(
        s,
        "| token delivery after publish | {:.0}/s | {} | {} | {} | – | {} |",
        tok.rate,
        lat(&tok),
        ms(tok.max),
        tok.n,
        retried.get("wait_join").copied().unwrap_or(0)
    );
    let _ = writeln!(
        s,
        "| membership put_doc | – | {} | {} | {} | {} | {} |",
        lat(&writes),
        ms(writes.max),
        writes.n,
        races_of(&whole, "put_doc"),
        retried.get("put_doc").copied().unwrap_or(0)
    );
    let _ = writeln!(
        s,
        "| membership delivery after put_doc | {:.0}/s | {} | {} | {} of {} | – | {} |",
        mem.rate,
        lat(&mem),
        ms(mem.max),
        mem.n,
        (n as u64 - 1) * args.writes,
        retried.get("get_doc").copied().unwrap_or(0)
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| figure | ramp (connect → all parked) | token fan-out | membership | whole run |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- |");
    let row = |s: &mut String, name: &str, f: &dyn Fn(&Phase) -> String| {
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} |",
            f(&ramp),
            f(&token),
            f(&member),
            f(&whole)
        );
    };
    row(&mut s, "wall", &|p| format!("{:.2} s", p.wall));
    row(&mut s, "etcd CPU (3 members, user+sys)", &|p| {
        format!("{:.1} s", p.etcd)
    });
    row(&mut s, "generator CPU (same cores)", &|p| {
        format!("{:.1} s", p.generator)
    });
    row(&mut s, "other processes' CPU (not ours)", &|p| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        format!(
            "{:.1} s ({:.0}%)",
            p.other,
            100.0 * p.other / (p.wall * cores).max(1e-9)
        )
    });
    row(&mut s, "CPU stolen", &|p| format!("{:.1} s", p.steal));
    row(&mut s, "raft proposals committed", &|p| {
        format!("{:.0}", p.proposals)
    });
    row(&mut s, "gRPC Txn calls (reads + writes)", &|p| {
        format!("{:.0}", p.txn)
    });
    row(&mut s, "gRPC Range calls", &|p| format!("{:.0}", p.range));
    row(&mut s, "gRPC Watch streams opened", &|p| {
        format!("{:.0}", p.watch_streams)
    });
    row(&mut s, "logins (Authenticate)", &|p| {
        format!("{:.0}", p.authenticate)
    });
    row(&mut s, "lost races (all operations)", &|p| {
        format!("{}", p.races.values().sum::<u64>())
    });
    row(&mut s, "failover resends", &|p| format!("{}", p.resends));
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "- start → all {} parked: {:.2} s (etcd watchers then: {:.0}); token fan-out (publish → \
         last agent) {}; membership fan-out per write (put_doc → last watcher): mean {}, max {}",
        n - 1,
        park_wall.as_secs_f64(),
        leader.watchers_parked,
        ms(tok.window),
        ms(fanouts.iter().sum::<Duration>() / fanouts.len().max(1) as u32),
        ms(fanouts.iter().max().copied().unwrap_or_default()),
    );
    let _ = writeln!(
        s,
        "- etcd RSS (3 members summed): idle {}, ramp peak {}, all parked {}, token peak {}, \
         membership peak {}, VmHWM sum {}",
        mib(rss_idle),
        mib(peak(P_RAMP)),
        mib(leader.rss_parked_kib),
        mib(peak(P_TOKEN)),
        mib(peak(P_MEMBERSHIP)),
        mib(hwm)
    );
    let _ = writeln!(
        s,
        "- etcd CPU per agent in the ramp {:.2} ms; per token delivery {:.0} µs; per membership \
         delivery {:.0} µs; generator CPU per agent in the ramp {:.2} ms, per membership \
         delivery {:.0} µs",
        ramp.etcd * 1e3 / connect.n.max(1) as f64,
        token.etcd * 1e6 / tok.n.max(1) as f64,
        member.etcd * 1e6 / mem.n.max(1) as f64,
        ramp.generator * 1e3 / connect.n.max(1) as f64,
        member.generator * 1e6 / mem.n.max(1) as f64,
    );
    let _ = writeln!(
        s,
        "- claims {outcomes:?}; lost races by operation {:?}; agent retries {retried:?}; \
         empty waits (a wait ended without the answer) {}; errors {} {errors:?}; failed agents {}",
        whole.races,
        shared.empty_waits.load(Ordering::Relaxed),
        errors.values().sum::<usize>(),
        shared.failed.load(Ordering::SeqCst),
    );
    for (msg, count) in shared
        .retry_msgs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        let _ = writeln!(s, "  - retried after `Transient` ×{count}: {msg}");
    }
    let _ = writeln!(
        s,
        "- generator: {:.1} s CPU in all, VmHWM {}",
        cpu_secs("self", ticks),
        mib(status_kib(std::process::id(), "VmHWM:"))
    );
    print!("{s}");
    drop(cluster);
    Ok(())
}
