//! Test support (feature `moto`): a real moto server as a child process, and backends pointed
//! at it. Used by this crate's tests, the conformance suite and the agent's race suite, so the
//! one way to run "Secrets Manager" in a test lives here.
//!
//! moto alone is one process with always-fresh reads, no versions quota and no throttling: it
//! checks the backend against the Secrets Manager API, not against AWS's behaviour. With an
//! [`AwsBehaviour`] ([`Moto::start_with`], or `SWARMSTRAP_AWS_BEHAVIOUR` for [`Moto::start`])
//! the SDK talks to moto through the fault-injecting proxy `aws-behaviour/proxy.py` instead,
//! which adds what AWS documents, deterministically from a seed: stale reads within a window,
//! the versions quota, write throttling, lost answers to applied writes, other error codes for
//! a refused stage move (optionally a non-atomic move), and a deleted name that stays taken
//! for a while. `aws-behaviour/README.md` describes each fault and flag.

use crate::backoff::Backoff;
use crate::{SecretsManagerConfig, SecretsManagerRendezvous};
use aws_sdk_secretsmanager::config::{Credentials, Region, SharedCredentialsProvider};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long moto may take to answer its first request.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// How long the proxy may take to print its `listening on` line.
const PROXY_DEADLINE: Duration = Duration::from_secs(20);

/// The faults the proxy knows (`--faults`).
pub const FAULTS: [&str; 6] = ["stale", "quota", "throttle", "lost", "stage", "deleted"];

/// What the AWS-behaviour proxy injects; each field is one `proxy.py` flag. `Default`: all six
/// faults on with the proxy's defaults (non-atomic stage moves off) and a random seed.
#[derive(Debug, Clone, PartialEq)]
pub struct AwsBehaviour {
    /// Seeds every random choice of the proxy (`--seed`): the same seed and the same request
    /// sequence give the same faults.
    pub seed: u64,
    /// The faults switched on, a subset of [`FAULTS`]; empty: the proxy only forwards (and
    /// counts).
    pub faults: Vec<String>,
    /// `stale`: reads may answer from a snapshot up to this old.
    pub stale_ms: u64,
    /// `stale`: probability that a read answers from a snapshot in the window.
    pub stale_prob: f64,
    /// `quota`: versions that may be created per secret in 24 h.
    pub version_quota: u32,
    /// `throttle`: writes allowed in any sliding 1 s window.
    pub write_tps: u32,
    /// `lost`: probability that an applied write's answer is lost (HTTP 500 or closed).
    pub lost_prob: f64,
    /// `stage`: the code a refused `UpdateSecretVersionStage` answers instead of moto's
    /// `InvalidParameterException`.
    pub stage_code: String,
    /// `stage`: probability that a conditional stage move is done non-atomically (check, wait,
    /// move). Stronger than anything AWS documents; 0 by default.
    pub stage_nonatomic_prob: f64,
    /// `stage`: the non-atomic move waits up to this long between its check and its move.
    pub stage_window_ms: u64,
    /// `deleted`: how long a deleted name refuses `CreateSecret`.
    pub deleted_ms: u64,
}

impl Default for AwsBehaviour {
    fn default() -> Self {
        AwsBehaviour {
            seed: rand::random(),
            faults: FAULTS.iter().map(|f| f.to_string()).collect(),
            stale_ms: 2000,
            stale_prob: 0.5,
            version_quota: 100,
            write_tps: 50,
            lost_prob: 0.05,
            stage_code: "InvalidRequestException".into(),
            stage_nonatomic_prob: 0.0,
            stage_window_ms: 200,
            deleted_ms: 3000,
        }
    }
}

impl AwsBehaviour {
    /// The defaults with only `faults` switched on (panics on an unknown name).
    pub fn only(faults: &[&str]) -> Self {
        AwsBehaviour {
            faults: parse_faults(&faults.join(",")),
            ..AwsBehaviour::default()
        }
    }

    /// From the environment: `SWARMSTRAP_AWS_BEHAVIOUR` = `all`, `none` (the proxy without
    /// faults) or a comma list of [`FAULTS`] (unset or empty: `None`, plain moto), and
    /// `SWARMSTRAP_AWS_SEED` (default: random; [`Moto::start_with`] prints the seed so a
    /// failure can be rerun). Panics on an unknown fault or a seed that is not a `u64`.
    pub fn from_env() -> Option<Self> {
        let spec = std::env::var("SWARMSTRAP_AWS_BEHAVIOUR").ok()?;
        if spec.trim().is_empty() {
            return None;
        }
        let mut b = AwsBehaviour {
            faults: parse_faults(&spec),
            ..AwsBehaviour::default()
        };
        // The stale window scaled to a suite's time scale (the race suite's leases last 1 s,
        // production's a minute): `SWARMSTRAP_AWS_STALE_MS`.
        if let Ok(ms) = std::env::var("SWARMSTRAP_AWS_STALE_MS") {
            b.stale_ms = ms
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("SWARMSTRAP_AWS_STALE_MS={ms:?} is not a number"));
        }
        if let Ok(seed) = std::env::var("SWARMSTRAP_AWS_SEED") {
            b.seed = seed
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("SWARMSTRAP_AWS_SEED={seed:?} is not a u64"));
        }
        Some(b)
    }

    fn args(&self) -> Vec<String> {
        let faults = if self.faults.is_empty() {
            "none".to_string()
        } else {
            self.faults.join(",")
        };
        let mut args = vec![
            "--seed".to_string(),
            self.seed.to_string(),
            "--faults".into(),
            faults,
            "--stale-ms".into(),
            self.stale_ms.to_string(),
            "--stale-prob".into(),
            self.stale_prob.to_string(),
            "--version-quota".into(),
            self.version_quota.to_string(),
            "--write-tps".into(),
            self.write_tps.to_string(),
            "--lost-prob".into(),
            self.lost_prob.to_string(),
            "--stage-code".into(),
            self.stage_code.clone(),
            "--stage-nonatomic-prob".into(),
            self.stage_nonatomic_prob.to_string(),
            "--stage-window-ms".into(),
            self.stage_window_ms.to_string(),
            "--deleted-ms".into(),
            self.deleted_ms.to_string(),
        ];
        if let Some(log) = std::env::var_os("SWARMSTRAP_AWS_LOG") {
            args.push("--log".into());
            args.push(log.to_string_lossy().into_owned());
        }
        args
    }
}

fn parse_faults(spec: &str) -> Vec<String> {
    match spec.trim() {
        "all" => FAULTS.iter().map(|f| f.to_string()).collect(),
        "none" | "" => Vec::new(),
        list => list
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(|f| {
                assert!(
                    FAULTS.contains(&f),
                    "unknown AWS-behaviour fault {f:?}; known: {FAULTS:?}, all, none"
                );
                f.to_string()
            })
            .collect(),
    }
}

/// `GET /__proxy/stats` of the AWS-behaviour proxy: counters since start or the last
/// [`Moto::reset_proxy_stats`].
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ProxyStats {
    pub seed: u64,
    /// HTTP attempts received per operation (every attempt, also the refused ones).
    pub calls: BTreeMap<String, u64>,
    /// Write attempts received (every operation except `Get*`, `Describe*`, `List*`,
    /// `BatchGet*`).
    pub writes: u64,
    /// The most write attempts received in any sliding 1 s window.
    pub max_writes_in_1s: u64,
    /// The write attempts of that busiest second, by operation.
    #[serde(default)]
    pub peak_window_ops: BTreeMap<String, u64>,
    /// Versions created, per secret as the client named it (`SecretId` / `Name`).
    pub versions_created: BTreeMap<String, u64>,
    /// Faults injected.
    pub faults: FaultCounts,
}

/// Faults injected, by kind (`stale` counts answers that differed from moto's fresh one).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct FaultCounts {
    pub stale: u64,
    pub quota: u64,
    pub throttle: u64,
    pub lost: u64,
    pub stage: u64,
    pub stage_nonatomic: u64,
    pub deleted: u64,
}

/// A `moto_server` child process on a free loopback port, optionally behind the AWS-behaviour
/// proxy (a second child); both are killed (by pid, the proxy first) when dropped.
pub struct Moto {
    child: Mutex<Child>,
    proxy: Option<Mutex<Child>>,
    /// What the proxy injects (`None`: no proxy, `endpoint` is moto itself).
    pub behaviour: Option<AwsBehaviour>,
    /// `http://127.0.0.1:PORT`: what the SDK talks to — the proxy when there is one.
    pub endpoint: String,
    /// `http://127.0.0.1:PORT` of moto itself (bypasses the proxy).
    pub moto_endpoint: String,
}

impl Moto {
    /// [`Moto::start_with`] the behaviour from the environment ([`AwsBehaviour::from_env`]):
    /// plain moto unless `SWARMSTRAP_AWS_BEHAVIOUR` is set.
    pub fn start() -> Moto {
        Moto::start_with(AwsBehaviour::from_env())
    }

    /// Start moto and wait (capped backoff, 30 s deadline) until it answers HTTP; with a
    /// behaviour, then start `python3 aws-behaviour/proxy.py` in front of it and wait for its
    /// `listening on` line (20 s deadline); `endpoint` is then the proxy. The seed is printed
    /// (stderr) so a failure can be rerun with `SWARMSTRAP_AWS_SEED`. moto's request log and
    /// the proxy's stderr go to `$SWARMSTRAP_MOTO_LOG` (appended) when set; the proxy's fault
    /// events to `$SWARMSTRAP_AWS_LOG`. Panics with what to install when `moto_server` is not
    /// on PATH.
    pub fn start_with(behaviour: Option<AwsBehaviour>) -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("pick a free port")
            .port();
        let child = match Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_target())
            .spawn()
        {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "moto_server not found on PATH: these tests need a real moto server; install it \
                 with `pip install \"moto[server]\"` (scripts/setup.sh does)"
            ),
            Err(e) => panic!("cannot start moto_server: {e}"),
        };
        let moto_endpoint = format!("http://127.0.0.1:{port}");
        let mut moto = Moto {
            child: Mutex::new(child),
            proxy: None,
            behaviour: None,
            endpoint: moto_endpoint.clone(),
            moto_endpoint,
        };
        let deadline = Instant::now() + START_DEADLINE;
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(500));
        loop {
            if http_ok(port) {
                break;
            }
            if let Ok(Some(status)) = moto.child.lock().unwrap().try_wait() {
                panic!("moto_server exited during startup with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on port {port} within {START_DEADLINE:?}"
            );
            std::thread::sleep(backoff.next_delay());
        }
        if let Some(b) = behaviour {
            let (proxy, endpoint) = start_proxy(&moto.moto_endpoint, &b);
            moto.proxy = Some(Mutex::new(proxy));
            moto.endpoint = endpoint;
            moto.behaviour = Some(b);
        }
        moto
    }

    /// The proxy's counters (`GET /__proxy/stats`); `None` without a proxy or when it does not
    /// answer.
    pub fn proxy_stats(&self) -> Option<ProxyStats> {
        self.proxy.as_ref()?;
        let body = http_call(&self.endpoint, "GET", "/__proxy/stats")?;
        serde_json::from_str(&body).ok()
    }

    /// Zero the proxy's counters (`POST /__proxy/reset`; the versions-quota window stays).
    /// Returns whether the proxy answered.
    pub fn reset_proxy_stats(&self) -> bool {
        self.proxy.is_some() && http_call(&self.endpoint, "POST", "/__proxy/reset").is_some()
    }

    /// An SDK config for moto: region us-east-1, dummy static credentials.
    pub fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .http_client(crate::https_client())
            .region(Region::new("us-east-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "testing", "testing", None, None, "static",
            )))
            .endpoint_url(&self.endpoint)
            .build()
    }

    /// A plain SDK client for test-side setup and raw reads: straight to moto, past the
    /// AWS-behaviour proxy (a test's own checks see the truth, not a stale or lost answer).
    pub fn client(&self) -> aws_sdk_secretsmanager::Client {
        let conf = aws_sdk_secretsmanager::config::Builder::from(&self.sdk_config())
            .endpoint_url(&self.moto_endpoint)
            .build();
        aws_sdk_secretsmanager::Client::from_conf(conf)
    }

    /// A backend of `cluster` with its own SDK client, as a separate node would have. Its
    /// registrations do not spread their first write (tests of semantics; see
    /// [`Moto::backend_with`] for the production setting).
    pub fn backend(&self, cluster: &str, target_managers: u8) -> SecretsManagerRendezvous {
        self.backend_with(SecretsManagerConfig {
            first_write_spread: std::time::Duration::ZERO,
            ..SecretsManagerConfig::new(cluster, target_managers)
        })
    }

    /// A backend that talks to moto directly, past the AWS-behaviour proxy: for a test's own
    /// observations (the truth, not a stale or lost answer).
    pub fn direct_backend(&self, cluster: &str, target_managers: u8) -> SecretsManagerRendezvous {
        let cfg = SecretsManagerConfig {
            first_write_spread: std::time::Duration::ZERO,
            endpoint_url: Some(self.moto_endpoint.clone()),
            ..SecretsManagerConfig::new(cluster, target_managers)
        };
        self.backend_with(cfg)
    }

    /// A backend with this configuration (endpoint and credentials: this moto).
    pub fn backend_with(&self, cfg: SecretsManagerConfig) -> SecretsManagerRendezvous {
        SecretsManagerRendezvous::with_sdk_config(cfg, &self.sdk_config())
            .expect("a Secrets Manager backend for moto")
    }
}

fn log_target() -> Stdio {
    match std::env::var_os("SWARMSTRAP_MOTO_LOG") {
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null()),
        None => Stdio::null(),
    }
}

fn http_ok(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    matches!(s.read(&mut buf), Ok(n) if n >= 12 && buf.starts_with(b"HTTP/1."))
}

/// Start the proxy in front of `upstream`; its child and `http://127.0.0.1:PORT`.
fn start_proxy(upstream: &str, b: &AwsBehaviour) -> (Child, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/aws-behaviour/proxy.py");
    eprintln!(
        "AWS-behaviour proxy: seed {} (rerun with SWARMSTRAP_AWS_SEED={}), faults {:?}",
        b.seed, b.seed, b.faults
    );
    let mut child = match Command::new("python3")
        .arg(script)
        .args(["--upstream", upstream, "--listen-port", "0"])
        .args(b.args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_target())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("cannot start python3 {script}: {e}"),
    };
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // keep draining so the proxy never blocks on (or dies of) a closed stdout
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    let line = match rx.recv_timeout(PROXY_DEADLINE) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the AWS-behaviour proxy printed no `listening on` line within {PROXY_DEADLINE:?}"
            );
        }
    };
    match line.trim().strip_prefix("listening on ") {
        Some(addr) if addr.starts_with("127.0.0.1:") => (child, format!("http://{addr}")),
        _ => {
            let _ = child.kill();
            let status = child.wait();
            panic!("the AWS-behaviour proxy did not start: {line:?} ({status:?})");
        }
    }
}

/// One plain HTTP/1.1 request to `endpoint` (`http://HOST:PORT`); the body of a 200 answer.
fn http_call(endpoint: &str, method: &str, path: &str) -> Option<String> {
    let addr = endpoint.strip_prefix("http://")?;
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

impl Drop for Moto {
    fn drop(&mut self) {
        // Child::kill signals exactly this pid: the proxy first, then moto.
        if let Some(proxy) = self.proxy.as_mut() {
            let proxy = proxy.get_mut().unwrap_or_else(|p| p.into_inner());
            let _ = proxy.kill();
            let _ = proxy.wait();
        }
        let child = self.child.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}
