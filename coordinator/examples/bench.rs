//! Benchmark (not a test): `cargo run --release -p swarm-coordinator --example bench [CLIENTS]`
//!
//! Starts the real `swarm-coordinator` binary (release) with a self-signed certificate on a
//! temp data dir, prints its idle RSS, then runs CLIENTS (default 1000) concurrent simulated
//! nodes, each with its own pinned TLS client: register, claim the init lease, and long-poll
//! for its join token. The one lease holder publishes once every other node is waiting. Workers
//! claim too (real agents do not): a worker whose claim arrives before any manager's is
//! refused (409 `not_a_manager`), which is counted apart and is not an error.
//! Prints throughput, latency percentiles and RSS under load.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let clients: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1000);
    swarmstrap_wire::pin::crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(clients))
}

/// The release binary next to this example (built first when run through cargo).
fn binary() -> anyhow::Result<PathBuf> {
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
        anyhow::ensure!(st.success(), "cargo build of the binary failed");
    }
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow::anyhow!("unexpected example location {}", exe.display()))?;
    let bin = dir.join("swarm-coordinator");
    anyhow::ensure!(
        bin.exists(),
        "{} not found: build it with `cargo build --release -p swarm-coordinator`",
        bin.display()
    );
    Ok(bin)
}

fn rss_kib(pid: u32, field: &str) -> u64 {
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

/// User + system CPU seconds of `pid` so far (/proc/PID/stat, clock ticks of 1/100 s).
fn cpu_secs(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which is in parentheses and may hold spaces).
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0)
        })
        .unwrap_or(0.0)
}

struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn poll_until<T>(
    what: &str,
    deadline: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let end = Instant::now() + deadline;
    let mut delay = Duration::from_millis(5);
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        anyhow::ensure!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

async fn run(clients: usize) -> anyhow::Result<()> {
    let bin = binary()?;
    let tmp = std::env::temp_dir().join(format!("swarm-coordinator-bench-{}", std::process::id()));
    let data = tmp.join("data");
    std::fs::create_dir_all(&tmp)?;
    let secret_file = tmp.join("secret");
    let out = Command::new(&bin)
        .args([
            "cluster",
            "create",
            "bench",
            "--target-managers",
            "3",
            "--data-dir",
        ])
        .arg(&data)
        .arg("--out")
        .arg(&secret_file)
        .env("SWARM_COORDINATOR_LOG", "warn")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "cluster create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = std::fs::read_to_string(&secret_file)?.trim().to_string();

    let log = std::fs::File::create(tmp.join("server.log"))?;
    let child = Command::new(&bin)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--tls-self-signed",
            // Every simulated node connects from 127.0.0.1: lift the per-address caps (a real
            // fleet comes from one address per node).
            "--max-connections-per-address",
            "1000000",
            "--max-long-polls-per-address",
            "1000000",
            "--data-dir",
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let pid = child.id();
    let server = Server { child };
    let info_path = data.join("server.json");
    let info: Value = poll_until("server.json", Duration::from_secs(30), || {
        let v: Value = serde_json::from_slice(&std::fs::read(&info_path).ok()?).ok()?;
        (v["pid"].as_u64() == Some(pid as u64)).then_some(v)
    })
    .await?;
    let base = format!("https://{}", info["listen"].as_str().unwrap());
    let pin = swarmstrap_wire::parse_fingerprint(info["fingerprint"].as_str().unwrap())
        .map_err(anyhow::Error::msg)?;
    let make_client = move || {
        reqwest::Client::builder()
            .tls_backend_preconfigured(swarmstrap_wire::pin::pinned_client_config(pin))
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("client")
    };
    let probe = make_client();
    let mut up = false;
    for _ in 0..100 {
        if probe
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await; // retry delay while the server starts
    }
    anyhow::ensure!(up, "the server did not become ready");
    let idle = rss_kib(pid, "VmRSS:");
    let cpu_before = cpu_secs(pid);
    println!("swarm-coordinator pid {pid}, binary {}", bin.display());
    println!("idle RSS: {:.1} MiB ({idle} KiB)", idle as f64 / 1024.0);

    // Sample RSS while the load runs.
    let peak_rss = Arc::new(AtomicU64::new(idle));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, on) = (peak_rss.clone(), sampling.clone());
        tokio::spawn(async move {
            while on.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid, "VmRSS:"), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // [register (opens the connection: TCP + TLS handshake), claim, publish]
    let latencies = Arc::new(Mutex::new([Vec::<Duration>::new(), Vec::new(), Vec::new()]));
    let delivery = Arc::new(Mutex::new(Vec::<Instant>::with_capacity(clients)));
    let published_at = Arc::new(Mutex::new(None::<Instant>));
    let requests = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let granted = Arc::new(AtomicU64::new(0));
    let rss_parked = Arc::new(AtomicU64::new(0));

    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        let client = make_client();
        let (base, secret) = (base.clone(), secret.clone());
        let (latencies, delivery, published_at) =
            (latencies.clone(), delivery.clone(), published_at.clone());
        let (requests, errors, granted, rss_parked, refused) = (
            requests.clone(),
            errors.clone(),
            granted.clone(),
            rss_parked.clone(),
            refused.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let node = format!("node-{i:04}");
            let url = |rest: &str| format!("{base}/v1/clusters/bench{rest}");
            let timed = |kind: usize, req: reqwest::RequestBuilder| {
                let (latencies, requests, errors) = (latencies.clone(), requests.clone(), errors.clone());
                async move {
                    let t = Instant::now();
                    let r = req.send().await;
                    let out = match r {
                        Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
                        // A worker that claims before any manager did is refused by the rules
                        // (409 not_a_manager): an answer, not an error; it goes on to wait for
                        // its token like every worker.
                        Ok(r) if r.status() == reqwest::StatusCode::CONFLICT => r
                            .json::<Value>()
                            .await
                            .ok()
                            .filter(|b| b["error"] == "not_a_manager"),
                        _ => None,
                    };
                    requests.fetch_add(1, Ordering::Relaxed);
                    match &out {
                        Some(_) => latencies.lock().unwrap()[kind].push(t.elapsed()),
                        None => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    out
                }
            };
            let reg = timed(0, client.post(url("/nodes")).bearer_auth(&secret).json(&json!({
                "node_id": node, "hostname": node, "advertise_addr": "198.18.1.1", "role": "auto"})))
            .await;
            let Some(reg) = reg else { return };
            // The node's own credential, issued by its registration, on every later call.
            let cred = reg["credential"].as_str().unwrap_or_default().to_string();
            const CRED: &str = swarmstrap_wire::NODE_CREDENTIAL_HEADER;
            let claim = timed(1, client.post(url("/claim")).bearer_auth(&secret).header(CRED, &cred)
                .json(&json!({"node_id": node, "ttl_ms": 120_000})))
            .await;
            let Some(claim) = claim else { return };
            if claim["error"] == "not_a_manager" {
                refused.fetch_add(1, Ordering::Relaxed);
            }
            if claim["granted"] == true {
                granted.fetch_add(1, Ordering::Relaxed);
                // The init node: publish once every other node waits for its token.
                // Watch the server's gauge until every other node's long-poll is parked.
                let others = clients as u64 - 1;
                let end = Instant::now() + Duration::from_secs(120);
                let mut delay = Duration::from_millis(5);
                loop {
                    let parked = match client.get(format!("{base}/metrics")).send().await {
                        Ok(r) => r.text().await.unwrap_or_default().lines().find_map(|l| {
                            l.strip_prefix("swarm_coordinator_open_long_polls ")
                                .and_then(|v| v.trim().parse::<u64>().ok())
                        }),
                        Err(_) => None,
                    };
                    if parked.unwrap_or(0) >= others || Instant::now() >= end {
                        break;
                    }
                    tokio::time::sleep(delay).await; // backoff delay of this watch loop
                    delay = (delay * 2).min(Duration::from_millis(100));
                }
                rss_parked.store(rss_kib(pid, "VmRSS:"), Ordering::Relaxed);
                let token = claim["lease"]["fencing_token"].as_u64().unwrap();
                *published_at.lock().unwrap() = Some(Instant::now());
                let r = timed(2, client.post(url("/publish")).bearer_auth(&secret).header(CRED, &cred).json(&json!({
                    "node_id": node, "fencing_token": token, "swarm_id": "bench-swarm",
                    "ca_digest": format!("sha256:{}", "cd".repeat(32)),
                    "manager_addrs": ["198.18.1.1:2377"],
                    "manager_token": "SWMTKN-1-bench-manager", "worker_token": "SWMTKN-1-bench-worker"})))
                .await;
                assert!(r.is_some(), "publish failed");
                return;
            }
            loop {
                let r = client.get(url(&format!("/join?node_id={node}&wait=60"))).bearer_auth(&secret).header(CRED, &cred).send().await;
                requests.fetch_add(1, Ordering::Relaxed);
                let body = match r {
                    Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
                    _ => None,
                };
                let Some(body) = body else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                if !body["join"].is_null() {
                    delivery.lock().unwrap().push(Instant::now());
                    return;
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let wall = start.elapsed();
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;

    let mut lat = latencies.lock().unwrap().clone();
    for l in lat.iter_mut() {
        l.sort();
    }
    let published = published_at.lock().unwrap().expect("someone published");
    let mut deliv: Vec<Duration> = delivery
        .lock()
        .unwrap()
        .iter()
        .map(|t| t.saturating_duration_since(published))
        .collect();
    deliv.sort();
    let total = requests.load(Ordering::Relaxed);
    println!(
        "clients: {clients} (each its own TLS connection), granted init leases: {}",
        granted.load(Ordering::Relaxed)
    );
    println!(
        "errors: {} (claims answered 409 not_a_manager, a worker ahead of every manager: {})",
        errors.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed)
    );
    println!(
        "requests: {total} in {:.2} s wall = {:.0} req/s overall (includes the long-poll wait until every node parked)",
        wall.as_secs_f64(),
        total as f64 / wall.as_secs_f64()
    );
    let busy = published.duration_since(start);
    let fast = lat[0].len() + lat[1].len();
    println!(
        "register+claim phase: {fast} requests in {:.2} s until the publish = {:.0} req/s (incl. {clients} TLS handshakes)",
        busy.as_secs_f64(),
        fast as f64 / busy.as_secs_f64()
    );
    for (name, l) in [
        ("register (new connection: TCP+TLS handshake)", &lat[0]),
        ("claim (warm connection)", &lat[1]),
    ] {
        println!(
            "latency {name}: p50 {}  p99 {}  max {}",
            ms(pct(l, 0.50)),
            ms(pct(l, 0.99)),
            ms(*l.last().unwrap_or(&Duration::ZERO))
        );
    }
    println!(
        "latency publish: {}",
        ms(*lat[2].first().unwrap_or(&Duration::ZERO))
    );
    println!(
        "token delivery after publish ({} long-polls): p50 {}  p99 {}  max {}",
        deliv.len(),
        ms(pct(&deliv, 0.50)),
        ms(pct(&deliv, 0.99)),
        ms(*deliv.last().unwrap_or(&Duration::ZERO))
    );
    let parked = rss_parked.load(Ordering::Relaxed);
    println!(
        "RSS with {} long-polls parked: {:.1} MiB; peak sampled RSS under load: {:.1} MiB; VmHWM: {:.1} MiB",
        clients - 1,
        parked as f64 / 1024.0,
        peak_rss.load(Ordering::Relaxed) as f64 / 1024.0,
        rss_kib(pid, "VmHWM:") as f64 / 1024.0
    );
    println!(
        "server CPU (user+system) for the run: {:.2} s",
        cpu_secs(pid) - cpu_before
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
