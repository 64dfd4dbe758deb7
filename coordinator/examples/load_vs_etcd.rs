//! Benchmark (not a test): the coordinator and etcd under the same N simulated agents.
//!
//! ```sh
//! bash scripts/bench-etcd.sh [N]            # installs etcd-server if missing, raises ulimit -n
//! cargo run --release -p swarm-coordinator --example load_vs_etcd -- [N] [--etcd-tls] ...
//! ```
//!
//! One run drives the real release `swarm-coordinator` (self-signed certificate, pinned, temp
//! data dir) and then an `etcd` (Debian etcd-server 3.4, started here on 127.0.0.1 with free
//! ports and a temp data dir, talked to through its v3 JSON gateway over HTTP/1.1) with the
//! same workload, the same N, the same connection model and the same concurrency limit, and
//! prints a side-by-side table.
//!
//! Connection model (both systems): every simulated agent has its own HTTP/1.1 client and so
//! its own keep-alive connection; the agent's first request opens it. The lease winner also
//! writes the membership document, on its own connection. At most `--inflight` agents are in
//! their connect/register/claim sequence at once; waits (long-polls / watch streams) are not
//! limited: all N-1 are parked together.
//!
//! Per agent:
//! 1. connect: first request on a new connection (coordinator `GET /healthz` over TLS, etcd
//!    `GET /version`), i.e. TCP (+ TLS) handshake + a trivial request;
//! 2. register: coordinator `POST nodes` (durable; also assigns the role) / etcd put
//!    `/c/nodes/<id>`;
//! 3. claim: coordinator `POST claim` / etcd lease grant + txn (create_revision(`/c/lease`)==0
//!    → put with the lease, else range): one wins;
//! 4. token wait: coordinator long-poll `GET join?wait=60` / etcd range `/c/w/tokens` then a
//!    watch on the `/c/w/` prefix from the next revision. The winner publishes (fenced: the
//!    coordinator's fencing token / etcd compare on the lease key's create_revision) once all
//!    N-1 others are parked (coordinator: its `open_long_polls` gauge; etcd: watch `created`);
//! 5. membership watch: coordinator long-poll `GET docs/membership?after=V` / the same etcd
//!    watch stream; the winner writes the document `--writes` times by compare-and-set
//!    (coordinator `PUT` with expected_version, etcd txn on mod_revision), each write once every
//!    watcher saw the previous one and is parked again. Delivery latency = from just before the
//!    write request is sent to the watcher holding the new version.
//!
//! Transport: the coordinator always speaks TLS; etcd speaks plain HTTP on loopback unless
//! `--etcd-tls` (then a pinned self-signed certificate, like the coordinator's). The systems run
//! one after the other (`--etcd-first` swaps the order) on the same cores as the generator.
//!
//! Figures: per phase ops/s and p50/p99 latency, wall times, server RSS (VmRSS sampled every
//! 20 ms, per phase, and VmHWM), CPU seconds of the server, of the generator and of every other
//! process on the machine (from /proc; other builds share it), and CPU per operation, which is
//! less sensitive to that background load than wall time. `--coordinator-default-limits`
//! keeps the coordinator's 10,000-connection / 8,192-long-poll limits (otherwise both are
//! raised to N + 64 and the output says so).
//!
//! Every wait is on a condition with a deadline; the only sleeps are poll backoffs and the
//! coordinator's `Retry-After` on a 503. Child processes are killed on drop (also on error and
//! on SIGINT/SIGTERM); traffic stays on 127.0.0.1.

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::{Parser, ValueEnum};
use reqwest::{Client, RequestBuilder, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

const CLUSTER: &str = "bench";
/// Long-poll wait (the coordinator's maximum).
const WAIT_SECS: u64 = 60;
/// Init lease TTL, both systems.
const LEASE_TTL_SECS: u64 = 120;
/// Timeout of one unary request.
const UNARY_TIMEOUT: Duration = Duration::from_secs(120);

const KEY_LEASE: &str = "/c/lease";
const KEY_TOKENS: &str = "/c/w/tokens";
const KEY_MEMBERSHIP: &str = "/c/w/membership";
/// The watch range [`/c/w/`, `/c/w0`) holds exactly the tokens and the membership keys.
const WATCH_FROM: &str = "/c/w/";
const WATCH_TO: &str = "/c/w0";

#[derive(Parser, Debug, Clone)]
#[command(about = "Coordinator vs etcd under N simulated agents (a benchmark; prints figures)")]
struct Args {
    /// Simulated agents.
    #[arg(default_value_t = 10_000)]
    agents: usize,
    /// Agents in their connect/register/claim sequence at once (same for both systems).
    #[arg(long, default_value_t = 1000)]
    inflight: usize,
    /// Compare-and-set writes of the membership document.
    #[arg(long, default_value_t = 5)]
    writes: u64,
    /// Nodes listed in the membership document (sets its size).
    #[arg(long, default_value_t = 32)]
    doc_nodes: usize,
    /// Serve etcd over TLS too (self-signed certificate, pinned like the coordinator's).
    /// Default: plain HTTP on loopback.
    #[arg(long)]
    etcd_tls: bool,
    /// Keep the coordinator's default limits (16,384 connections, 16,000 long-polls) instead
    /// of raising them to N + 64.
    #[arg(long)]
    coordinator_default_limits: bool,
    /// Which systems to run.
    #[arg(long, value_enum, default_value_t = Only::Both)]
    only: Only,
    /// The etcd binary.
    #[arg(long, default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Run etcd first (default: the coordinator first).
    #[arg(long)]
    etcd_first: bool,
    /// Keep the temp dir (server logs, data dirs) and print its path.
    #[arg(long)]
    keep: bool,
    /// Deadline of one system's run, seconds.
    #[arg(long, default_value_t = 900)]
    deadline_secs: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Only {
    Both,
    Coordinator,
    Etcd,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.agents >= 2, "at least 2 agents");
    ensure!(args.inflight >= 1, "--inflight must be at least 1");
    ensure!(args.writes >= 1, "--writes must be at least 1");
    swarmstrap_wire::pin::crypto_provider();
    raise_nofile(args.agents)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        tokio::select! {
            r = run(args) => r,
            s = stop_signal() => bail!("interrupted by {s}; stopping the servers"),
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

/// Each side holds about N connections (client: N sockets; server: N sockets), so the soft
/// fd limit must exceed N plus some slack. Raise it up to the hard limit if needed.
fn raise_nofile(agents: usize) -> Result<()> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let need = agents as u64 + 1024;
    let lim = getrlimit(Resource::Nofile);
    let cur = lim.current.unwrap_or(u64::MAX);
    let max = lim.maximum.unwrap_or(u64::MAX);
    if cur >= need {
        return Ok(());
    }
    ensure!(
        max >= need,
        "{agents} agents need at least {need} open files per process; the hard limit is {max}: \
         run as a user allowed more (ulimit -Hn), or with fewer agents"
    );
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(max),
            maximum: lim.maximum,
        },
    )
    .context("cannot raise the soft open-files limit")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Processes and /proc

/// A child process killed (SIGKILL) and reaped on drop.
struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU seconds of a process (`pid` "self" for this one).
fn cpu_secs(pid: &str, ticks: f64) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return 0.0;
    };
    // Fields after the command: state(3) ... utime(14) stime(15).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / ticks
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Release binaries next to this example (built first when run through cargo).
fn coordinator_binary() -> Result<PathBuf> {
    if let Ok(cargo) = std::env::var("CARGO") {
        let st = Command::new(cargo)
            .args([
                "build",
                "--release",
                "-p",
                "swarm-coordinator",
                "--bin",
                "swarm-coordinator",
            ])
            .status()?;
        ensure!(st.success(), "cargo build of the binary failed");
    }
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected example location {}", exe.display()))?;
    let bin = dir.join("swarm-coordinator");
    ensure!(
        bin.exists(),
        "{} not found: build it with `cargo build --release -p swarm-coordinator`",
        bin.display()
    );
    Ok(bin)
}

/// Poll `f` with backoff (5 ms doubling to 100 ms) until it yields, or fail at `deadline`.
async fn poll_until<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let end = Instant::now() + deadline;
    let mut delay = Duration::from_millis(5);
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        ensure!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(delay).await; // poll backoff
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn log_tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// The two systems

enum Kind {
    Coordinator { secret: String },
    Etcd { prefix: String },
}

/// A running server and how to reach it.
struct Target {
    name: &'static str,
    kind: Kind,
    base: String,
    /// Pinned rustls config when the server speaks TLS.
    tls: Option<rustls::ClientConfig>,
    pid: u32,
    transport: String,
    notes: Vec<String>,
}

impl Target {
    /// One agent's HTTP/1.1 client: one keep-alive connection at a time.
    fn client(&self) -> Client {
        let mut b = Client::builder()
            .http1_only()
            .no_proxy()
            .pool_max_idle_per_host(1)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(60));
        // Always a preconfigured rustls config: without one, reqwest builds a verifier from
        // the system's root certificates for every client, which costs the generator far more
        // CPU than the plain-HTTP requests themselves. A plain-HTTP client never uses it.
        b = b.tls_backend_preconfigured(self.tls.clone().unwrap_or_else(|| pinned([0; 32])));
        b.build().expect("an HTTP client")
    }

    fn coord(&self, rest: &str) -> String {
        format!("{}/v1/clusters/{CLUSTER}{rest}", self.base)
    }

    fn etcd(&self, rest: &str) -> String {
        match &self.kind {
            Kind::Etcd { prefix } => format!("{}{prefix}{rest}", self.base),
            Kind::Coordinator { .. } => unreachable!("etcd URL for the coordinator"),
        }
    }

    fn secret(&self) -> &str {
        match &self.kind {
            Kind::Coordinator { secret } => secret,
            Kind::Etcd { .. } => "",
        }
    }

    fn is_coordinator(&self) -> bool {
        matches!(self.kind, Kind::Coordinator { .. })
    }
}

fn pinned(pin: [u8; 32]) -> rustls::ClientConfig {
    let mut cfg = swarmstrap_wire::pin::pinned_client_config(pin);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg
}

struct Running {
    target: Target,
    /// Killed on drop.
    server: ChildGuard,
}

async fn start_coordinator(args: &Args, tmp: &Path) -> Result<Running> {
    let bin = coordinator_binary()?;
    let data = tmp.join("coordinator-data");
    let secret_file = tmp.join("secret");
    let out = Command::new(&bin)
        .args([
            "cluster",
            "create",
            CLUSTER,
            "--target-managers",
            "3",
            "--data-dir",
        ])
        .arg(&data)
        .arg("--out")
        .arg(&secret_file)
        .env("SWARM_COORDINATOR_LOG", "warn")
        .output()?;
    ensure!(
        out.status.success(),
        "cluster create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = std::fs::read_to_string(&secret_file)?.trim().to_string();

    let log_path = tmp.join("coordinator.log");
    let mut cmd = Command::new(&bin);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--tls-self-signed",
        // Every simulated agent connects from 127.0.0.1: lift the per-address caps (a real
        // fleet comes from one address per node).
        "--max-connections-per-address",
        "1000000",
        "--max-long-polls-per-address",
        "1000000",
        "--data-dir",
    ])
    .arg(&data);
    let mut notes = vec![];
    if args.coordinator_default_limits {
        notes.push("coordinator limits: defaults (16,384 connections, 16,000 long-polls, 12,000 per cluster)".into());
    } else {
        let defaults = swarm_coordinator::api::Limits::default();
        let conns = (args.agents + 64).max(defaults.max_connections);
        let polls = ((args.agents + 64) as u64).max(defaults.max_long_polls);
        cmd.arg("--max-connections")
            .arg(conns.to_string())
            .arg("--max-long-polls")
            .arg(polls.to_string())
            .arg("--max-long-polls-per-cluster")
            .arg(polls.to_string());
        notes.push(format!(
            "coordinator limits: --max-connections {conns} --max-long-polls {polls} \
             --max-long-polls-per-cluster {polls} (defaults 16,384 / 16,000 / 12,000)"
        ));
    }
    // The shipped default log level (one line per request) unless the caller set one.
    let level = std::env::var("SWARM_COORDINATOR_LOG").unwrap_or_else(|_| "info".into());
    notes.push(format!(
        "coordinator log level {level} (stderr to a file; one line per request at info)"
    ));
    let child = cmd
        .env("SWARM_COORDINATOR_LOG", &level)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let mut server = ChildGuard { child };
    let pid = server.pid();
    let info_path = data.join("server.json");
    let info: Value = poll_until(
        "the coordinator's server.json",
        Duration::from_secs(30),
        || {
            let exited = server.child.try_wait().ok().flatten();
            let info = std::fs::read(&info_path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .filter(|v| v["pid"].as_u64() == Some(u64::from(pid)));
            let log_path = log_path.clone();
            async move {
                if let Some(st) = exited {
                    bail!("the coordinator exited ({st}):\n{}", log_tail(&log_path));
                }
                Ok(info)
            }
        },
    )
    .await?;
    let base = format!(
        "https://{}",
        info["listen"].as_str().context("server.json: listen")?
    );
    let pin = swarmstrap_wire::parse_fingerprint(
        info["fingerprint"]
            .as_str()
            .context("server.json: fingerprint")?,
    )
    .map_err(|e| anyhow!(e))?;
    let target = Target {
        name: "coordinator",
        kind: Kind::Coordinator { secret },
        base,
        tls: Some(pinned(pin)),
        pid,
        transport: "HTTPS (TLS 1.3, pinned self-signed ECDSA P-256), HTTP/1.1".into(),
        notes,
    };
    {
        let probe = target.client();
        let url = format!("{}/readyz", target.base);
        poll_until("the coordinator's /readyz", Duration::from_secs(30), || {
            let req = probe.get(&url).timeout(Duration::from_secs(5)).send();
            async move {
                Ok(req
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ()))
            }
        })
        .await?;
    } // the probe's connection closes here
    Ok(Running { target, server })
}

async fn start_etcd(args: &Args, tmp: &Path) -> Result<Running> {
    let version = Command::new(&args.etcd_bin)
        .arg("--version")
        .output()
        .with_context(|| {
            format!(
                "cannot run {} (apt-get install etcd-server)",
                args.etcd_bin.display()
            )
        })?;
    let version = String::from_utf8_lossy(&version.stdout)
        .lines()
        .next()
        .unwrap_or("etcd ?")
        .trim()
        .to_string();
    let name = format!("swarmstrap-bench-{}", std::process::id());
    let data = tmp.join("etcd-data");
    let scheme = if args.etcd_tls { "https" } else { "http" };
    let mut tls = None;
    let mut tls_args: Vec<String> = vec![];
    if args.etcd_tls {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])?;
        let (cert, key) = (tmp.join("etcd-cert.pem"), tmp.join("etcd-key.pem"));
        std::fs::write(&cert, ck.cert.pem())?;
        std::fs::write(&key, ck.signing_key.serialize_pem())?;
        tls = Some(pinned(swarmstrap_wire::pin::cert_sha256(ck.cert.der())));
        tls_args = vec![
            "--cert-file".into(),
            cert.display().to_string(),
            "--key-file".into(),
            key.display().to_string(),
        ];
    }
    let log_path = tmp.join("etcd.log");
    // Free ports picked by binding :0, so a system etcd on 2379/2380 is never touched. Another
    // process could take a port in between: then etcd exits and we try new ports.
    for attempt in 1..=3 {
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let client_url = format!("{scheme}://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new(&args.etcd_bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("--name")
            .arg(&name)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("{name}={peer_url}")])
            .args(["--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .args(&tls_args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", args.etcd_bin.display()))?;
        let mut server = ChildGuard { child };
        let pid = server.pid();
        let probe = {
            Client::builder()
                .no_proxy()
                .http1_only()
                .tls_backend_preconfigured(tls.clone().unwrap_or_else(|| pinned([0; 32])))
                .build()?
        };
        let url = format!("{client_url}/version");
        let up = poll_until("etcd's /version", Duration::from_secs(30), || {
            let exited = server.child.try_wait().ok().flatten();
            let req = probe.get(&url).timeout(Duration::from_secs(5)).send();
            async move {
                if let Some(st) = exited {
                    return Ok(Some(Err(st)));
                }
                Ok(req.await.ok().filter(|r| r.status().is_success()).map(Ok))
            }
        })
        .await?;
        if let Err(st) = up {
            if attempt < 3 {
                eprintln!("etcd exited ({st}) at start; trying other ports");
                continue;
            }
            bail!("etcd exited ({st}):\n{}", log_tail(&log_path));
        }
        // The JSON gateway's prefix: /v3 in 3.4 (/v3beta in 3.3). Probe it.
        let mut prefix = None;
        for p in ["/v3", "/v3beta"] {
            let r = probe
                .post(format!("{client_url}{p}/kv/range"))
                .json(&json!({"key": b64(b"probe")}))
                .timeout(Duration::from_secs(10))
                .send()
                .await?;
            if r.status().is_success() {
                prefix = Some(p.to_string());
                break;
            }
        }
        let prefix =
            prefix.ok_or_else(|| anyhow!("etcd's JSON gateway answers neither /v3 nor /v3beta"))?;
        // Make sure this is our etcd (the member name), not one that happens to listen there.
        let members: Value = probe
            .post(format!("{client_url}{prefix}/cluster/member/list"))
            .json(&json!({}))
            .send()
            .await?
            .json()
            .await?;
        ensure!(
            members["members"][0]["name"].as_str() == Some(name.as_str()),
            "the etcd at {client_url} is not the one started here: {members}"
        );
        let transport = if args.etcd_tls {
            "HTTPS (TLS 1.3, pinned self-signed ECDSA P-256), HTTP/1.1, v3 JSON gateway"
        } else {
            "plain HTTP/1.1 on loopback (no TLS), v3 JSON gateway"
        };
        return Ok(Running {
            target: Target {
                name: "etcd",
                kind: Kind::Etcd {
                    prefix: prefix.clone(),
                },
                base: client_url,
                tls,
                pid,
                transport: transport.into(),
                notes: vec![format!(
                    "{version}, gateway prefix {prefix}, default flags (WAL fsync on), log level info"
                )],
            },
            server,
        });
    }
    unreachable!("the loop returns or fails")
}

// ---------------------------------------------------------------------------------------------
// Shared state of one run

const P_IDLE: usize = 0;
const P_RAMP: usize = 1;
const P_TOKEN: usize = 2;
const P_MEMBERSHIP: usize = 3;
const P_DONE: usize = 4;

/// CPU counters at a phase boundary.
#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    server: f64,
    generator: f64,
    /// Machine-wide busy CPU seconds (all processes) and stolen seconds, from /proc/stat.
    busy: f64,
    steal: f64,
}

fn mark(pid: u32, ticks: f64) -> Mark {
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
    // user nice system idle iowait irq softirq steal (guest time is included in user)
    let busy = g(0) + g(1) + g(2) + g(5) + g(6);
    Mark {
        at: Instant::now(),
        server: cpu_secs(&pid.to_string(), ticks),
        generator: cpu_secs("self", ticks),
        busy: busy / ticks,
        steal: g(7) / ticks,
    }
}

struct Shared {
    pid: u32,
    ticks: f64,
    marks: std::sync::Mutex<[Option<Mark>; 5]>,
    n: usize,
    writes: u64,
    inflight: Semaphore,
    notify: Notify,
    /// etcd: watches created (parked).
    created: AtomicUsize,
    /// Agents that got their token.
    tokens_seen: AtomicUsize,
    /// Per membership version (1..=writes): watchers that saw it.
    seen: Vec<AtomicUsize>,
    /// Losers that failed (they will never park again).
    failed: AtomicUsize,
    /// Coordinator: agents sleeping out a 503's Retry-After.
    backing_off: AtomicUsize,
    refused_503: AtomicU64,
    repolls: AtomicU64,
    skipped_versions: AtomicU64,
    phase: AtomicUsize,
    rss_peak: [AtomicU64; 5],
    deadline: Instant,
    doc_nodes: usize,
}

impl Shared {
    /// Enter `phase`: RSS peaks and CPU marks are kept per phase.
    fn enter(&self, phase: usize) {
        let m = mark(self.pid, self.ticks);
        self.marks.lock().expect("marks")[phase] = Some(m);
        self.phase.store(phase, Ordering::SeqCst);
    }

    fn bump(&self, c: &AtomicUsize) {
        c.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Losers still expected to take part.
    fn live_losers(&self) -> usize {
        (self.n - 1).saturating_sub(self.failed.load(Ordering::SeqCst))
    }

    /// Wait until `cond` holds and, for the coordinator, every live loser is parked on the
    /// server (its open-long-polls gauge, plus agents sleeping out a 503) — polled with backoff.
    async fn wait_for(
        &self,
        what: &str,
        cond: impl Fn() -> bool,
        gauge: Option<(&Target, &Client)>,
    ) -> Result<()> {
        let mut delay = Duration::from_millis(5);
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let client_ok = cond();
            if client_ok {
                match gauge {
                    None => return Ok(()),
                    Some((t, c)) => {
                        let parked = open_long_polls(t, c).await?;
                        let off = self.backing_off.load(Ordering::SeqCst) as u64;
                        if parked + off >= self.live_losers() as u64 {
                            return Ok(());
                        }
                    }
                }
            }
            let now = Instant::now();
            ensure!(now < self.deadline, "deadline reached waiting for {what}");
            if client_ok {
                tokio::time::sleep(delay.min(self.deadline - now)).await; // gauge poll backoff
                delay = (delay * 2).min(Duration::from_millis(100));
            } else {
                let _ = tokio::time::timeout_at(self.deadline.into(), notified).await;
            }
        }
    }
}

fn sample_rss(shared: &Shared, pid: u32) -> u64 {
    let v = status_kib(pid, "VmRSS:");
    let p = shared.phase.load(Ordering::SeqCst);
    shared.rss_peak[p].fetch_max(v, Ordering::SeqCst);
    v
}

// ---------------------------------------------------------------------------------------------
// Requests

fn b64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// An int64 from etcd's JSON (strings) or plain numbers.
fn num(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// Send; Ok((status, body as JSON or Null)).
async fn call(req: RequestBuilder) -> Result<(StatusCode, Value)> {
    let r = req.timeout(UNARY_TIMEOUT).send().await?;
    let st = r.status();
    let body = r.bytes().await?;
    Ok((st, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

async fn call_ok(req: RequestBuilder, what: &str) -> Result<Value> {
    let (st, v) = call(req).await?;
    ensure!(st.is_success(), "{what}: HTTP {st}: {v}");
    Ok(v)
}

async fn open_long_polls(t: &Target, c: &Client) -> Result<u64> {
    let r = c
        .get(format!("{}/metrics", t.base))
        .timeout(UNARY_TIMEOUT)
        .send()
        .await?;
    let text = r.text().await?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("swarm_coordinator_open_long_polls ")
                .and_then(|v| v.trim().parse().ok())
        })
        .ok_or_else(|| anyhow!("/metrics has no swarm_coordinator_open_long_polls"))
}

fn register_body(node: &str) -> Value {
    json!({"node_id": node, "hostname": node, "advertise_addr": "198.18.1.1", "role": "auto"})
}

fn tokens_body(node: &str, fence: u64) -> Value {
    json!({"node_id": node, "fencing_token": fence, "swarm_id": "bench-swarm",
        "ca_digest": format!("sha256:{}", "cd".repeat(32)),
        "manager_addrs": ["198.18.1.1:2377"],
        "manager_token": "SWMTKN-1-bench-manager", "worker_token": "SWMTKN-1-bench-worker"})
}

/// A membership document as the leader's agent writes it (the coordinator validates its typed
/// schema: wire/src/rules/docs.rs); write `k` is told apart by a label of the first node.
fn membership_body(k: u64, nodes: usize) -> Value {
    let list: Vec<Value> = (0..nodes)
        .map(|i| {
            let mut n = json!({"id": format!("node{i:05}"), "hostname": format!("node-{i:05}"),
                "addr": format!("198.18.{}.{}", i / 250, i % 250 + 1),
                "role": if i < 3 { "manager" } else { "worker" }, "state": "ready",
                "availability": "active", "leader": i == 0});
            if i == 0 {
                n["labels"] = json!({"generation": k.to_string()});
            }
            n
        })
        .collect();
    json!({"nodes": list})
}

/// The header of a node's own credential (issued by its registration).
const CRED: &str = swarmstrap_wire::NODE_CREDENTIAL_HEADER;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    Won(u64),
    Lost,
    /// Coordinator: 409 not_a_manager (a worker claimed before any lease existed).
    NotManager,
}

async fn op_connect(t: &Target, c: &Client) -> Result<()> {
    let url = match t.kind {
        Kind::Coordinator { .. } => format!("{}/healthz", t.base),
        Kind::Etcd { .. } => format!("{}/version", t.base),
    };
    call_ok(c.get(url), "connect").await.map(|_| ())
}

/// Register; the coordinator answers the node's credential (etcd: none, empty).
async fn op_register(t: &Target, c: &Client, node: &str) -> Result<String> {
    match t.kind {
        Kind::Coordinator { .. } => call_ok(
            c.post(t.coord("/nodes"))
                .bearer_auth(t.secret())
                .json(&register_body(node)),
            "register",
        )
        .await
        .map(|v| v["credential"].as_str().unwrap_or_default().to_string()),
        Kind::Etcd { .. } => {
            let key = format!("/c/nodes/{node}");
            let value = register_body(node).to_string();
            call_ok(
                c.post(t.etcd("/kv/put"))
                    .json(&json!({"key": b64(key.as_bytes()), "value": b64(value.as_bytes())})),
                "put",
            )
            .await
            .map(|_| String::new())
        }
    }
}

async fn op_claim(t: &Target, c: &Client, node: &str, cred: &str) -> Result<Claim> {
    match t.kind {
        Kind::Coordinator { .. } => {
            let (st, v) = call(
                c.post(t.coord("/claim"))
                    .bearer_auth(t.secret())
                    .header(CRED, cred)
                    .json(&json!({"node_id": node, "ttl_ms": LEASE_TTL_SECS * 1000})),
            )
            .await?;
            if st == StatusCode::CONFLICT && v["error"] == "not_a_manager" {
                return Ok(Claim::NotManager);
            }
            ensure!(st.is_success(), "claim: HTTP {st}: {v}");
            if v["granted"] == true {
                let fence = num(&v["lease"]["fencing_token"]).context("claim: no fencing token")?;
                Ok(Claim::Won(fence))
            } else {
                Ok(Claim::Lost)
            }
        }
        Kind::Etcd { .. } => {
            let g = call_ok(
                c.post(t.etcd("/lease/grant"))
                    .json(&json!({"TTL": LEASE_TTL_SECS})),
                "lease grant",
            )
            .await?;
            let id = num(&g["ID"]).context("lease grant: no ID")?;
            let key = b64(KEY_LEASE.as_bytes());
            let v = call_ok(
                c.post(t.etcd("/kv/txn")).json(&json!({
                    "compare": [{"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
                    "success": [{"request_put": {"key": key, "value": b64(node.as_bytes()), "lease": id.to_string()}}],
                    "failure": [{"request_range": {"key": key}}],
                })),
                "claim txn",
            )
            .await?;
            if v["succeeded"] == true {
                // The lease key's create revision is the fencing token.
                let fence = num(&v["header"]["revision"]).context("txn: no revision")?;
                Ok(Claim::Won(fence))
            } else {
                Ok(Claim::Lost)
            }
        }
    }
}

async fn op_publish(t: &Target, c: &Client, node: &str, cred: &str, fence: u64) -> Result<()> {
    match t.kind {
        Kind::Coordinator { .. } => call_ok(
            c.post(t.coord("/publish"))
                .bearer_auth(t.secret())
                .header(CRED, cred)
                .json(&tokens_body(node, fence)),
            "publish",
        )
        .await
        .map(|_| ()),
        Kind::Etcd { .. } => {
            let v = call_ok(
                c.post(t.etcd("/kv/txn")).json(&json!({
                    "compare": [{"key": b64(KEY_LEASE.as_bytes()), "target": "CREATE", "result": "EQUAL",
                        "create_revision": fence.to_string()}],
                    "success": [{"request_put": {"key": b64(KEY_TOKENS.as_bytes()),
                        "value": b64(tokens_body(node, fence).to_string().as_bytes())}}],
                })),
                "publish txn",
            )
            .await?;
            ensure!(v["succeeded"] == true, "publish txn refused: {v}");
            Ok(())
        }
    }
}

/// Compare-and-set write number `k` (1-based). `prev`: coordinator version / etcd mod_revision.
/// Compare-and-set write number `k` (1-based) by the leader `node`. `prev`: coordinator version
/// / etcd mod_revision.
async fn op_write(
    t: &Target,
    c: &Client,
    (node, cred): (&str, &str),
    k: u64,
    prev: &mut u64,
    nodes: usize,
) -> Result<()> {
    let body = membership_body(k, nodes);
    match t.kind {
        Kind::Coordinator { .. } => {
            let v = call_ok(
                c.put(t.coord("/docs/membership"))
                    .bearer_auth(t.secret())
                    .header(CRED, cred)
                    .json(&json!({"node_id": node, "expected_version": *prev, "body": body})),
                "membership PUT",
            )
            .await?;
            *prev = num(&v["version"]).context("PUT: no version")?;
            ensure!(*prev == k, "membership version {prev} after write {k}");
        }
        Kind::Etcd { .. } => {
            let key = b64(KEY_MEMBERSHIP.as_bytes());
            let v = call_ok(
                c.post(t.etcd("/kv/txn")).json(&json!({
                    "compare": [{"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": prev.to_string()}],
                    "success": [{"request_put": {"key": key, "value": b64(body.to_string().as_bytes())}}],
                })),
                "membership txn",
            )
            .await?;
            ensure!(v["succeeded"] == true, "membership CAS refused: {v}");
            *prev = num(&v["header"]["revision"]).context("txn: no revision")?;
        }
    }
    Ok(())
}

/// A coordinator long-poll; a 503 (too many long-polls) is retried after its Retry-After, as
/// the agent does.
async fn coord_long_poll(
    t: &Target,
    c: &Client,
    shared: &Shared,
    url: &str,
    cred: &str,
) -> Result<Value> {
    loop {
        let r = c
            .get(url)
            .bearer_auth(t.secret())
            .header(CRED, cred)
            .timeout(Duration::from_secs(WAIT_SECS + 60))
            .send()
            .await?;
        let st = r.status();
        if st == StatusCode::SERVICE_UNAVAILABLE {
            let after = r
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1);
            let _ = r.bytes().await;
            shared.refused_503.fetch_add(1, Ordering::Relaxed);
            shared.backing_off.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(after)).await; // the server's Retry-After
            shared.backing_off.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let body = r.bytes().await?;
        ensure!(
            st.is_success(),
            "long-poll: HTTP {st}: {}",
            String::from_utf8_lossy(&body)
        );
        return Ok(serde_json::from_slice(&body)?);
    }
}

// ---------------------------------------------------------------------------------------------
// One agent

#[derive(Default)]
struct AgentOut {
    connect: Option<(Instant, Instant)>,
    register: Option<(Instant, Instant)>,
    claim: Option<(Instant, Instant)>,
    outcome: Option<Claim>,
    token_at: Option<Instant>,
    /// When this agent saw membership version k (index k-1).
    seen: Vec<Option<Instant>>,
    leader: Option<LeaderOut>,
    error: Option<String>,
}

#[derive(Default, Clone)]
struct LeaderOut {
    parked_at: Option<Instant>,
    rss_parked_kib: u64,
    publish: Option<(Instant, Instant)>,
    writes: Vec<(Instant, Instant)>,
}

async fn timed<T>(
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<(T, (Instant, Instant))> {
    let t0 = Instant::now();
    let v = f.await?;
    Ok((v, (t0, Instant::now())))
}

async fn agent(i: usize, t: Arc<Target>, shared: Arc<Shared>) -> AgentOut {
    let mut out = AgentOut {
        seen: vec![None; shared.writes as usize],
        ..AgentOut::default()
    };
    if let Err(e) = agent_steps(i, &t, &shared, &mut out).await {
        out.error = Some(format!("{e:#}"));
        if out.leader.is_none() && !matches!(out.outcome, Some(Claim::Won(_))) {
            shared.bump(&shared.failed);
        }
    }
    out
}

async fn agent_steps(i: usize, t: &Target, shared: &Shared, out: &mut AgentOut) -> Result<()> {
    let node = format!("node-{i:05}");
    let permit = shared.inflight.acquire().await?;
    let c = t.client();
    out.connect = Some(timed(op_connect(t, &c)).await.context("connect")?.1);
    let (cred, at) = timed(op_register(t, &c, &node)).await.context("register")?;
    out.register = Some(at);
    let (claim, at) = timed(op_claim(t, &c, &node, &cred))
        .await
        .context("claim")?;
    out.claim = Some(at);
    out.outcome = Some(claim);
    drop(permit);
    if let Claim::Won(fence) = claim {
        out.leader = Some(LeaderOut::default());
        return lead(
            t,
            &c,
            shared,
            (&node, &cred),
            fence,
            out.leader.as_mut().expect("set"),
        )
        .await;
    }
    match t.kind {
        Kind::Coordinator { .. } => {
            loop {
                let url = t.coord(&format!("/join?node_id={node}&wait={WAIT_SECS}"));
                let v = coord_long_poll(t, &c, shared, &url, &cred)
                    .await
                    .context("join long-poll")?;
                if !v["join"].is_null() {
                    out.token_at = Some(Instant::now());
                    shared.bump(&shared.tokens_seen);
                    break;
                }
                shared.repolls.fetch_add(1, Ordering::Relaxed);
            }
            let mut have = 0u64;
            while have < shared.writes {
                let url = t.coord(&format!("/docs/membership?after={have}&wait={WAIT_SECS}"));
                let v = coord_long_poll(t, &c, shared, &url, &cred)
                    .await
                    .context("membership long-poll")?;
                let version = num(&v["version"]).context("document without a version")?;
                if version > have {
                    let now = Instant::now();
                    shared
                        .skipped_versions
                        .fetch_add(version - have - 1, Ordering::Relaxed);
                    if let Some(slot) = out.seen.get_mut(version as usize - 1) {
                        *slot = Some(now);
                        shared.bump(&shared.seen[version as usize - 1]);
                    }
                    have = version;
                } else {
                    shared.repolls.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        }
        Kind::Etcd { .. } => etcd_watch(t, &c, shared, out).await,
    }
}

/// Range the tokens key, then watch `/c/w/` from the next revision on one streaming request:
/// the tokens, then every membership version.
async fn etcd_watch(t: &Target, c: &Client, shared: &Shared, out: &mut AgentOut) -> Result<()> {
    let tokens_key = b64(KEY_TOKENS.as_bytes());
    let membership_key = b64(KEY_MEMBERSHIP.as_bytes());
    let r = call_ok(
        c.post(t.etcd("/kv/range"))
            .json(&json!({"key": tokens_key})),
        "range tokens",
    )
    .await?;
    let rev = num(&r["header"]["revision"]).context("range: no revision")?;
    if r["kvs"].as_array().is_some_and(|k| !k.is_empty()) {
        out.token_at = Some(Instant::now());
        shared.bump(&shared.tokens_seen);
    }
    let send = c
        .post(t.etcd("/watch"))
        .json(
            &json!({"create_request": {"key": b64(WATCH_FROM.as_bytes()),
            "range_end": b64(WATCH_TO.as_bytes()), "start_revision": (rev + 1).to_string()}}),
        )
        .send();
    // The stream has no overall timeout, but its response headers must come.
    let mut resp = tokio::time::timeout(UNARY_TIMEOUT, send)
        .await
        .map_err(|_| anyhow!("watch: no response within {UNARY_TIMEOUT:?}"))?
        .context("watch")?;
    ensure!(resp.status().is_success(), "watch: HTTP {}", resp.status());
    let mut buf: Vec<u8> = Vec::new();
    let mut have = 0u64;
    loop {
        let chunk = resp
            .chunk()
            .await
            .context("watch stream")?
            .ok_or_else(|| anyhow!("the watch stream ended"))?;
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let v: Value = serde_json::from_slice(&line).context("watch message")?;
            if !v["error"].is_null() {
                bail!("watch error: {}", v["error"]);
            }
            let res = &v["result"];
            if res["created"] == true {
                shared.bump(&shared.created);
            }
            if res["canceled"] == true {
                bail!("watch canceled: {res}");
            }
            for ev in res["events"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                let kv = &ev["kv"];
                let now = Instant::now();
                if kv["key"] == tokens_key.as_str() && out.token_at.is_none() {
                    out.token_at = Some(now);
                    shared.bump(&shared.tokens_seen);
                } else if kv["key"] == membership_key.as_str() {
                    let version = num(&kv["version"]).context("event without a version")?;
                    if version > have {
                        shared
                            .skipped_versions
                            .fetch_add(version - have - 1, Ordering::Relaxed);
                        if let Some(slot) = out.seen.get_mut(version as usize - 1) {
                            *slot = Some(now);
                            shared.bump(&shared.seen[version as usize - 1]);
                        }
                        have = version;
                    }
                }
            }
            if have >= shared.writes {
                return Ok(()); // dropping the response closes the stream
            }
        }
    }
}

/// The lease winner: publish once every other agent is parked, then write the membership
/// document `writes` times, each once every watcher saw the previous version and is parked.
async fn lead(
    t: &Target,
    c: &Client,
    shared: &Shared,
    (node, cred): (&str, &str),
    fence: u64,
    out: &mut LeaderOut,
) -> Result<()> {
    let gauge = t.is_coordinator().then_some((t, c));
    let parked =
        || t.is_coordinator() || shared.created.load(Ordering::SeqCst) >= shared.live_losers();
    shared.wait_for("every agent parked", parked, gauge).await?;
    out.parked_at = Some(Instant::now());
    out.rss_parked_kib = sample_rss(shared, t.pid);
    shared.enter(P_TOKEN);
    out.publish = Some(timed(op_publish(t, c, node, cred, fence)).await?.1);
    let mut prev = 0u64;
    for k in 1..=shared.writes {
        let ready = || {
            let live = shared.live_losers();
            shared.tokens_seen.load(Ordering::SeqCst) >= live
                && (k == 1 || shared.seen[k as usize - 2].load(Ordering::SeqCst) >= live)
        };
        shared
            .wait_for(
                &format!("membership write {k}: watchers ready"),
                ready,
                gauge,
            )
            .await?;
        if k == 1 {
            shared.enter(P_MEMBERSHIP);
        }
        out.writes.push(
            timed(op_write(t, c, (node, cred), k, &mut prev, shared.doc_nodes))
                .await?
                .1,
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Running one system and the figures

#[derive(Default, Clone)]
struct Stat {
    n: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    /// ops/s over `window`.
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

/// Latencies and the span from the first start to the last end.
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

/// CPU seconds spent in one phase.
#[derive(Default, Clone, Copy)]
struct PhaseCpu {
    wall: f64,
    server: f64,
    generator: f64,
    /// Every other process on the machine (other builds and tests share it).
    other: f64,
    steal: f64,
}

fn phase_cpu(a: Option<Mark>, b: Option<Mark>) -> PhaseCpu {
    let (Some(a), Some(b)) = (a, b) else {
        return PhaseCpu::default();
    };
    let (server, generator) = (b.server - a.server, b.generator - a.generator);
    PhaseCpu {
        wall: (b.at - a.at).as_secs_f64(),
        server,
        generator,
        other: (b.busy - a.busy - server - generator).max(0.0),
        steal: b.steal - a.steal,
    }
}

#[derive(Default, Clone)]
struct Report {
    name: String,
    transport: String,
    notes: Vec<String>,
    connect: Stat,
    register: Stat,
    claim: Stat,
    claim_outcomes: BTreeMap<&'static str, usize>,
    park_wall: Duration,
    publish: Duration,
    token: Stat,
    membership: Stat,
    fanouts: Vec<Duration>,
    writes: Stat,
    wall: Duration,
    rss_idle: u64,
    rss_ramp: u64,
    rss_parked: u64,
    rss_token: u64,
    rss_membership: u64,
    hwm: u64,
    cpu: f64,
    generator_cpu: f64,
    /// ramp, token, membership, whole run
    cpu_phases: [PhaseCpu; 4],
    errors: BTreeMap<String, usize>,
    failed_agents: usize,
    refused_503: u64,
    repolls: u64,
    skipped: u64,
}

async fn run_system(args: &Args, t: Target, ticks: f64) -> Result<Report> {
    let t = Arc::new(t);
    let n = args.agents;
    let shared = Arc::new(Shared {
        n,
        writes: args.writes,
        inflight: Semaphore::new(args.inflight),
        notify: Notify::new(),
        created: AtomicUsize::new(0),
        tokens_seen: AtomicUsize::new(0),
        seen: (0..args.writes).map(|_| AtomicUsize::new(0)).collect(),
        failed: AtomicUsize::new(0),
        backing_off: AtomicUsize::new(0),
        refused_503: AtomicU64::new(0),
        repolls: AtomicU64::new(0),
        skipped_versions: AtomicU64::new(0),
        phase: AtomicUsize::new(P_IDLE),
        rss_peak: Default::default(),
        pid: t.pid,
        ticks,
        marks: std::sync::Mutex::new([None; 5]),
        deadline: Instant::now() + Duration::from_secs(args.deadline_secs),
        doc_nodes: args.doc_nodes,
    });
    let mut rep = Report {
        name: t.name.into(),
        transport: t.transport.clone(),
        notes: t.notes.clone(),
        ..Report::default()
    };
    rep.rss_idle = sample_rss(&shared, t.pid);
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (shared, on, pid) = (shared.clone(), sampling.clone(), t.pid);
        tokio::spawn(async move {
            while on.load(Ordering::Relaxed) {
                sample_rss(&shared, pid);
                tokio::time::sleep(Duration::from_millis(20)).await; // sampling period
            }
        })
    };
    eprintln!(
        "[{}] {n} agents, inflight {}, {} writes ...",
        t.name, args.inflight, args.writes
    );
    shared.enter(P_RAMP);
    let start = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..n {
        set.spawn(agent(i, t.clone(), shared.clone()));
    }
    let mut outs: Vec<AgentOut> = Vec::with_capacity(n);
    let status = |outs: &[AgentOut], unfinished: usize| {
        let waits = if t.is_coordinator() {
            format!("503 refusals {}", shared.refused_503.load(Ordering::SeqCst))
        } else {
            format!("watches created {}", shared.created.load(Ordering::SeqCst))
        };
        format!(
            "{} agents finished, {unfinished} unfinished; {waits}, tokens seen {}, \
             failed agents {}, errors {:?}",
            outs.len(),
            shared.tokens_seen.load(Ordering::SeqCst),
            shared.failed.load(Ordering::SeqCst),
            error_summary(outs)
        )
    };
    let mut progress = Instant::now() + Duration::from_secs(10);
    loop {
        let wake = progress.min(shared.deadline);
        let next = tokio::time::timeout_at(wake.into(), set.join_next()).await;
        let out = match next {
            Err(_) if Instant::now() >= shared.deadline => bail!(
                "[{}] deadline of {} s reached: {}",
                t.name,
                args.deadline_secs,
                status(&outs, set.len())
            ),
            Err(_) => {
                eprintln!("[{}] {}", t.name, status(&outs, set.len()));
                progress = Instant::now() + Duration::from_secs(10);
                continue;
            }
            Ok(None) => break,
            Ok(Some(r)) => r.context("agent task")?,
        };
        if let (Some(_), Some(e)) = (&out.leader, &out.error) {
            bail!("[{}] the lease winner failed: {e}", t.name);
        }
        outs.push(out);
    }
    rep.wall = start.elapsed();
    shared.enter(P_DONE);
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    let m = *shared.marks.lock().expect("marks");
    rep.cpu_phases = [
        phase_cpu(m[P_RAMP], m[P_TOKEN]),
        phase_cpu(m[P_TOKEN], m[P_MEMBERSHIP]),
        phase_cpu(m[P_MEMBERSHIP], m[P_DONE]),
        phase_cpu(m[P_RAMP], m[P_DONE]),
    ];
    rep.cpu = rep.cpu_phases[3].server;
    rep.generator_cpu = rep.cpu_phases[3].generator;
    rep.hwm = status_kib(t.pid, "VmHWM:");
    rep.rss_ramp = shared.rss_peak[P_RAMP].load(Ordering::SeqCst);
    rep.rss_token = shared.rss_peak[P_TOKEN].load(Ordering::SeqCst);
    rep.rss_membership = shared.rss_peak[P_MEMBERSHIP].load(Ordering::SeqCst);

    let spans = |f: fn(&AgentOut) -> Option<(Instant, Instant)>| -> Vec<(Instant, Instant)> {
        outs.iter().filter_map(f).collect()
    };
    rep.connect = span_stat(&spans(|o| o.connect));
    rep.register = span_stat(&spans(|o| o.register));
    rep.claim = span_stat(&spans(|o| o.claim));
    for o in &outs {
        let k = match o.outcome {
            Some(Claim::Won(_)) => "granted",
            Some(Claim::Lost) => "refused: held by another",
            Some(Claim::NotManager) => "refused: 409 not_a_manager",
            None => "no answer",
        };
        *rep.claim_outcomes.entry(k).or_default() += 1;
    }
    rep.errors = error_summary(&outs);
    let winners = rep.claim_outcomes.get("granted").copied().unwrap_or(0);
    ensure!(
        winners == 1,
        "[{}] {winners} claims granted (expected exactly 1)",
        t.name
    );
    let leader = outs
        .iter()
        .find_map(|o| o.leader.clone())
        .context("no leader report")?;
    let (pub0, pub1) = leader.publish.context("no publish")?;
    rep.publish = pub1 - pub0;
    rep.park_wall = leader.parked_at.context("never parked")? - start;
    rep.rss_parked = leader.rss_parked_kib;
    let tokens: Vec<Duration> = outs
        .iter()
        .filter_map(|o| o.token_at.map(|a| a.saturating_duration_since(pub0)))
        .collect();
    let window = tokens.iter().max().copied().unwrap_or_default();
    rep.token = stat(tokens, window);
    let mut deliveries = vec![];
    for (k, (w0, _)) in leader.writes.iter().enumerate() {
        let lat: Vec<Duration> = outs
            .iter()
            .filter_map(|o| o.seen.get(k).copied().flatten())
            .map(|a| a.saturating_duration_since(*w0))
            .collect();
        rep.fanouts
            .push(lat.iter().max().copied().unwrap_or_default());
        deliveries.extend(lat);
    }
    let total_fanout = rep.fanouts.iter().sum();
    rep.membership = stat(deliveries, total_fanout);
    rep.writes = span_stat(&leader.writes);
    rep.failed_agents = shared.failed.load(Ordering::SeqCst);
    rep.refused_503 = shared.refused_503.load(Ordering::SeqCst);
    rep.repolls = shared.repolls.load(Ordering::SeqCst);
    rep.skipped = shared.skipped_versions.load(Ordering::SeqCst);
    eprintln!("[{}] done in {:.2} s", t.name, rep.wall.as_secs_f64());
    Ok(rep)
}

/// Agents' errors grouped by message (node names left out), with counts.
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

fn machine(etcd_bin: &Path) -> String {
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
    let etcd = Command::new(etcd_bin)
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_else(|| "etcd not found".into());
    let nofile = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    format!(
        "nproc {} ({cpu}), RAM {mem}, kernel {}, Debian {}, {etcd}, open files limit {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        read("/proc/sys/kernel/osrelease").trim(),
        read("/etc/debian_version").trim(),
        nofile.current.map_or("unlimited".into(), |v| v.to_string()),
    )
}

fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1000.0;
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

/// The side-by-side table (markdown).
fn table(args: &Args, reps: &[Report]) -> String {
    let mut s = String::new();
    let w = |s: &mut String, cells: Vec<String>| {
        let _ = writeln!(s, "| {} |", cells.join(" | "));
    };
    let mut head = vec!["phase".to_string()];
    for r in reps {
        head.push(format!("{} ops/s", r.name));
        head.push(format!("{} p50 / p99", r.name));
    }
    if reps.len() == 2 {
        head.push("ratio ops/s (coord/etcd)".into());
        head.push("ratio p99 (coord/etcd)".into());
    }
    w(&mut s, head.clone());
    w(&mut s, head.iter().map(|_| "---".to_string()).collect());
    type Pick = fn(&Report) -> &Stat;
    let rows: [(&str, Pick); 6] = [
        ("connect (first request, new connection)", |r| &r.connect),
        ("register", |r| &r.register),
        ("claim", |r| &r.claim),
        ("token delivery after publish", |r| &r.token),
        ("membership delivery after write", |r| &r.membership),
        ("membership CAS write", |r| &r.writes),
    ];
    for (name, pick) in rows {
        let mut cells = vec![name.to_string()];
        let cas = name.starts_with("membership CAS");
        for r in reps {
            let st = pick(r);
            cells.push(if cas {
                "–".into()
            } else {
                format!("{:.0}", st.rate)
            });
            cells.push(format!("{} / {}", ms(st.p50), ms(st.p99)));
        }
        if let [c, e] = reps {
            cells.push(if cas {
                "–".into()
            } else {
                ratio(pick(c).rate, pick(e).rate)
            });
            cells.push(ratio(pick(c).p99.as_secs_f64(), pick(e).p99.as_secs_f64()));
        }
        w(&mut s, cells);
    }
    let _ = writeln!(s);
    let mut head = vec!["figure".to_string()];
    head.extend(reps.iter().map(|r| r.name.clone()));
    if reps.len() == 2 {
        head.push("ratio (coord/etcd)".into());
    }
    w(&mut s, head.clone());
    w(&mut s, head.iter().map(|_| "---".to_string()).collect());
    type Fig = fn(&Report) -> (String, f64);
    let figs: Vec<(&str, Fig)> = vec![
        ("wall time, whole run", |r| {
            (
                format!("{:.2} s", r.wall.as_secs_f64()),
                r.wall.as_secs_f64(),
            )
        }),
        ("wall: connect window", |r| {
            (
                format!("{:.2} s", r.connect.window.as_secs_f64()),
                r.connect.window.as_secs_f64(),
            )
        }),
        ("wall: register window", |r| {
            (
                format!("{:.2} s", r.register.window.as_secs_f64()),
                r.register.window.as_secs_f64(),
            )
        }),
        ("wall: claim window", |r| {
            (
                format!("{:.2} s", r.claim.window.as_secs_f64()),
                r.claim.window.as_secs_f64(),
            )
        }),
        ("wall: start → all N-1 parked", |r| {
            (
                format!("{:.2} s", r.park_wall.as_secs_f64()),
                r.park_wall.as_secs_f64(),
            )
        }),
        ("publish latency (fenced write)", |r| {
            (ms(r.publish), r.publish.as_secs_f64())
        }),
        ("token fan-out (publish → last agent)", |r| {
            (ms(r.token.window), r.token.window.as_secs_f64())
        }),
        (
            "membership fan-out per write (write → last watcher), mean",
            |r| {
                let m = r.fanouts.iter().sum::<Duration>() / r.fanouts.len().max(1) as u32;
                (ms(m), m.as_secs_f64())
            },
        ),
        ("membership delivery max", |r| {
            (ms(r.membership.max), r.membership.max.as_secs_f64())
        }),
        ("server RSS idle", |r| (mib(r.rss_idle), r.rss_idle as f64)),
        ("server RSS peak, ramp (connect/register/claim)", |r| {
            (mib(r.rss_ramp), r.rss_ramp as f64)
        }),
        ("server RSS, all N-1 parked", |r| {
            (mib(r.rss_parked), r.rss_parked as f64)
        }),
        ("server RSS peak, token fan-out", |r| {
            (mib(r.rss_token), r.rss_token as f64)
        }),
        ("server RSS peak, membership", |r| {
            (mib(r.rss_membership), r.rss_membership as f64)
        }),
        ("server VmHWM (peak RSS)", |r| (mib(r.hwm), r.hwm as f64)),
        ("server CPU time (user+sys)", |r| {
            (format!("{:.1} s", r.cpu), r.cpu)
        }),
        ("generator CPU time (same cores)", |r| {
            (format!("{:.1} s", r.generator_cpu), r.generator_cpu)
        }),
        (
            "server CPU per agent, ramp (connect+register+claim+park)",
            |r| {
                let v = r.cpu_phases[0].server / r.connect.n.max(1) as f64;
                (format!("{:.2} ms", v * 1e3), v)
            },
        ),
        (
            "server CPU per token delivery (incl. the next long-poll)",
            |r| {
                let v = r.cpu_phases[1].server / r.token.n.max(1) as f64;
                (format!("{:.0} µs", v * 1e6), v)
            },
        ),
        (
            "server CPU per membership delivery (incl. the re-poll)",
            |r| {
                let v = r.cpu_phases[2].server / r.membership.n.max(1) as f64;
                (format!("{:.0} µs", v * 1e6), v)
            },
        ),
        ("generator CPU per agent, ramp", |r| {
            let v = r.cpu_phases[0].generator / r.connect.n.max(1) as f64;
            (format!("{:.2} ms", v * 1e3), v)
        }),
        ("generator CPU per membership delivery", |r| {
            let v = r.cpu_phases[2].generator / r.membership.n.max(1) as f64;
            (format!("{:.0} µs", v * 1e6), v)
        }),
        ("other processes' CPU during the run (not ours)", |r| {
            let p = r.cpu_phases[3];
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            let share = 100.0 * p.other / (p.wall * cores).max(1e-9);
            (
                format!("{:.1} s ({share:.0}% of the machine)", p.other),
                p.other,
            )
        }),
        ("CPU stolen by the hypervisor during the run", |r| {
            (
                format!("{:.1} s", r.cpu_phases[3].steal),
                r.cpu_phases[3].steal,
            )
        }),
    ];
    for (name, f) in figs {
        let mut cells = vec![name.to_string()];
        let vals: Vec<(String, f64)> = reps.iter().map(f).collect();
        cells.extend(vals.iter().map(|v| v.0.clone()));
        if let [c, e] = vals.as_slice() {
            cells.push(ratio(c.1, e.1));
        }
        w(&mut s, cells);
    }
    let _ = writeln!(s);
    for r in reps {
        let _ = writeln!(
            s,
            "- {}: {}; claims {:?}; errors {} ({:?}); failed agents {}; 503 refusals {}; \
             empty re-polls {}; skipped versions {}; samples: connect {}, register {}, claim {}, \
             tokens {}, membership deliveries {} of {}",
            r.name,
            r.transport,
            r.claim_outcomes,
            r.errors.values().sum::<usize>(),
            r.errors,
            r.failed_agents,
            r.refused_503,
            r.repolls,
            r.skipped,
            r.connect.n,
            r.register.n,
            r.claim.n,
            r.token.n,
            r.membership.n,
            (args.agents - 1) as u64 * args.writes,
        );
        for n in &r.notes {
            let _ = writeln!(s, "  - {n}");
        }
    }
    s
}

enum Tmp {
    Auto(tempfile::TempDir),
    Kept(PathBuf),
}

impl Tmp {
    fn path(&self) -> &Path {
        match self {
            Tmp::Auto(t) => t.path(),
            Tmp::Kept(p) => p,
        }
    }
}

/// Prints where the kept temp dir is, also when the run fails.
struct KeepNotice(PathBuf);

impl Drop for KeepNotice {
    fn drop(&mut self) {
        eprintln!("kept {} (logs and data dirs)", self.0.display());
    }
}

async fn run(args: Args) -> Result<()> {
    let ticks = clock_ticks();
    let tmp = tempfile::Builder::new()
        .prefix("swarmstrap-load-vs-etcd-")
        .tempdir()?;
    let machine = machine(&args.etcd_bin);
    eprintln!("machine: {machine}");
    let tmp_path = tmp.path().to_path_buf();
    let _keep = args.keep.then(|| KeepNotice(tmp_path.clone()));
    let tmp = if args.keep {
        Tmp::Kept(tmp.keep())
    } else {
        Tmp::Auto(tmp)
    };
    let mut reps = vec![];
    let mut order = vec![];
    if args.only != Only::Etcd {
        order.push(Only::Coordinator);
    }
    if args.only != Only::Coordinator {
        order.push(Only::Etcd);
    }
    if args.etcd_first {
        order.reverse();
    }
    for which in order {
        let Running { target, server } = match which {
            Only::Etcd => start_etcd(&args, tmp.path()).await?,
            _ => start_coordinator(&args, tmp.path()).await?,
        };
        reps.push(run_system(&args, target, ticks).await?);
        drop(server);
    }
    // The table always shows the coordinator first.
    reps.sort_by_key(|r| r.name != "coordinator");
    let doc = membership_body(1, args.doc_nodes).to_string().len();
    println!();
    println!("## {} simulated agents", args.agents);
    println!();
    println!("machine: {machine}");
    println!(
        "workload: N={} agents, each its own HTTP/1.1 connection (N+0 connections: the lease \
         winner publishes and writes on its own); at most {} agents in connect/register/claim \
         at once; N-1 parked waits; {} membership CAS writes of a {doc}-byte document; \
         long-poll wait {WAIT_SECS} s; lease TTL {LEASE_TTL_SECS} s; generator and server share \
         the machine's cores",
        args.agents, args.inflight, args.writes
    );
    println!(
        "ops/s: samples / (first start → last end) of that phase (phases overlap while agents \
         ramp); deliveries/s: deliveries / fan-out time. Latency ratios < 1 and throughput \
         ratios > 1 favour the coordinator."
    );
    println!();
    print!("{}", table(&args, &reps));
    println!(
        "- generator: {:.1} s CPU, VmHWM {}",
        cpu_secs("self", ticks),
        mib(status_kib(std::process::id(), "VmHWM:"))
    );
    Ok(())
}
