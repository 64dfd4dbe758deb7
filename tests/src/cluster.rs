//! A swarmstrap cluster in a lab: the real (static, release) `swarm-coordinator` in the root
//! namespace on the lab bridge, and the real `swarm-agent` in every host, configured with
//! exactly the `config.toml` our cloud-init node template writes (`tests/iac/render_node.py`),
//! with the VM paths overridden by `SWARM_AGENT_*` variables (env beats file).
//!
//! Blocking, like the rest of the harness. Every wait has a deadline.

use crate::etcd::{EtcdCreds, EtcdLab};
use crate::proc::{signal_pid, write_pidfile, Signal};
use crate::{wait_for, wait_until, Host, Lab, ProcHandle, Shape};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The static release binaries that `scripts/build-static.sh` builds. The lab runs the real
/// release artifacts, the same ones a VM gets.
#[derive(Debug, Clone)]
pub struct Bins {
    pub agent: PathBuf,
    pub coordinator: PathBuf,
}

/// Locate the static binaries (or `SWARMSTRAP_BIN_DIR`), refusing missing or stale ones with
/// the command that builds them.
pub fn bins() -> Result<&'static Bins> {
    static BINS: OnceLock<std::result::Result<Bins, String>> = OnceLock::new();
    BINS.get_or_init(|| find_bins().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

fn find_bins() -> Result<Bins> {
    let root = workspace_root();
    let dir = match std::env::var_os("SWARMSTRAP_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => root.join("target/x86_64-unknown-linux-musl/release"),
    };
    let bins = Bins {
        agent: dir.join("swarm-agent"),
        coordinator: dir.join("swarm-coordinator"),
    };
    for (bin, crate_dir) in [(&bins.agent, "agent"), (&bins.coordinator, "coordinator")] {
        let built = fs::metadata(bin)
            .and_then(|m| m.modified())
            .with_context(|| {
                format!(
                    "{} is missing: build the static release binaries first with `bash scripts/build-static.sh`",
                    bin.display()
                )
            })?;
        if std::env::var_os("SWARMSTRAP_BIN_DIR").is_none() {
            // The agent also links the backend crates: a change there makes it stale too.
            let mut srcs = vec![root.join(crate_dir).join("src"), root.join("wire/src")];
            if crate_dir == "agent" {
                srcs.extend([root.join("etcd/src"), root.join("secrets-manager/src")]);
            }
            for src in srcs {
                if let Some(newer) = newest_file(&src).filter(|(t, _)| *t > built) {
                    bail!(
                        "{} is older than {}: rebuild with `bash scripts/build-static.sh`",
                        bin.display(),
                        newer.1.display()
                    );
                }
            }
        }
    }
    Ok(bins)
}

fn newest_file(dir: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
    for e in fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let cand = if p.is_dir() {
            newest_file(&p)
        } else {
            e.metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .map(|t| (t, p))
        };
        if let Some(c) = cand {
            if best.as_ref().is_none_or(|b| c.0 > b.0) {
                best = Some(c);
            }
        }
    }
    best
}

/// The real coordinator, run in the root namespace and listening on the lab bridge, so every
/// host reaches it at `https://198.18.<k>.254:<port>`. Its pidfile lives under the lab root,
/// so a crashed test's coordinator is found and stopped by the next lab's stale cleanup.
pub struct Coordinator {
    bin: PathBuf,
    dir: PathBuf,
    data_dir: PathBuf,
    listen: SocketAddr,
    fingerprint: String,
    child: Mutex<Option<Child>>,
    starts: Mutex<u32>,
}

impl Coordinator {
    /// Prepare the data dir (TLS certificate generated once by `serve --tls-self-signed`) and
    /// pick a free port on the bridge address. Does not start the server.
    pub fn new(lab: &Lab) -> Result<Coordinator> {
        let bins = bins()?;
        let dir = lab.root().join("coordinator");
        let data_dir = dir.join("data");
        fs::create_dir_all(&data_dir)?;
        fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o700))?;
        // Port 0 would be picked anew at every restart; agents need a stable URL.
        let port = TcpListener::bind((lab.bridge_addr(), 0))?
            .local_addr()?
            .port();
        Ok(Coordinator {
            bin: bins.coordinator.clone(),
            dir,
            data_dir,
            listen: SocketAddr::from((lab.bridge_addr(), port)),
            fingerprint: String::new(),
            child: Mutex::new(None),
            starts: Mutex::new(0),
        })
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.listen)
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("coordinator.log")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn cli(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("SWARM_COORDINATOR_DATA_DIR", &self.data_dir);
        c
    }

    /// Where `cluster create NAME` wrote the cluster's operator credential (0600): the one
    /// credential that resets it (`swarm-agent recover --operator-credential-file`).
    pub fn operator_credential_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.operator"))
    }

    /// `cluster create NAME` with the secret written to `<dir>/<name>.secret` and the operator
    /// credential to [`operator_credential_file`](Self::operator_credential_file) (both 0600).
    /// Works with the server stopped (direct) or running (admin API).
    pub fn create_cluster(&self, name: &str, target_managers: u8) -> Result<PathBuf> {
        let out = self.dir.join(format!("{name}.secret"));
        let op = self.operator_credential_file(name);
        let o = self
            .cli()
            .args(["cluster", "create", name, "--target-managers"])
            .arg(target_managers.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--out")
            .arg(&out)
            .arg("--operator-credential-out")
            .arg(&op)
            .output()?;
        if !o.status.success() {
            bail!(
                "swarm-coordinator cluster create {name} failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(out)
    }

    /// `cluster create NAME --secret-file FILE` (an operator re-creating a cluster whose
    /// secret it kept, e.g. Terraform's random_password), with `--adopt` when `adopt`: the
    /// cluster is created awaiting adoption by the running swarm's leader and refuses init
    /// claims until then. Works with the server stopped (direct) or running (admin API).
    pub fn create_cluster_with_secret(
        &self,
        name: &str,
        target_managers: u8,
        secret_file: &Path,
        adopt: bool,
    ) -> Result<()> {
        // The re-created cluster gets a new operator credential (the old one went with the
        // database): it replaces the file.
        let op = self.operator_credential_file(name);
        let _ = fs::remove_file(&op);
        let mut cmd = self.cli();
        cmd.args(["cluster", "create", name, "--target-managers"])
            .arg(target_managers.to_string())
            .arg("--secret-file")
            .arg(secret_file)
            .arg("--operator-credential-out")
            .arg(&op)
            .arg("--data-dir")
            .arg(&self.data_dir);
        if adopt {
            cmd.arg("--adopt");
        }
        let o = cmd.output()?;
        if !o.status.success() {
            bail!(
                "swarm-coordinator cluster create {name} --secret-file …{} failed ({}): {}",
                if adopt { " --adopt" } else { "" },
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(())
    }

    /// The database is lost but the machine keeps its identity (a VM rebuilt from the same
    /// Terraform: same certificate, same cluster secret, empty store). With the server stopped:
    /// remove everything in the data dir (store, marker, admin token, server.json), keeping the
    /// TLS certificate and key aside, so the fingerprint the agents pin stays the same.
    ///
    /// Then create the cluster again ([`Coordinator::create_cluster_with_secret`]: a data dir
    /// holding only `tls/` has no marker and would be refused as foreign, so the certificate is
    /// not put back yet) and [`Coordinator::start`], which restores the kept certificate first
    /// ([`Coordinator::restore_tls`]) and fails if the fingerprint changed.
    pub fn wipe_store_keep_tls(&self) -> Result<()> {
        if self.is_running() {
            bail!("wipe_store_keep_tls: stop or kill the coordinator first");
        }
        let tls = self.data_dir.join("tls");
        let kept = self.kept_tls_dir();
        let have = |d: &Path| ["cert.pem", "key.pem"].iter().all(|f| d.join(f).exists());
        if have(&tls) {
            if kept.exists() {
                fs::remove_dir_all(&kept)?;
            }
            fs::create_dir_all(&kept)?;
            fs::set_permissions(&kept, fs::Permissions::from_mode(0o700))?;
            for f in ["cert.pem", "key.pem"] {
                fs::copy(tls.join(f), kept.join(f))
                    .with_context(|| format!("keeping {}", tls.join(f).display()))?;
            }
        } else if !have(&kept) {
            // (An earlier wipe whose restart failed leaves the kept copy as the only one.)
            bail!(
                "{} holds no certificate and key, and none were kept: the coordinator never \
                 generated its certificate here",
                tls.display()
            );
        }
        fs::remove_dir_all(&self.data_dir)
            .with_context(|| format!("removing {}", self.data_dir.display()))?;
        fs::create_dir_all(&self.data_dir)?;
        fs::set_permissions(&self.data_dir, fs::Permissions::from_mode(0o700))?;
        Ok(())
    }

    fn kept_tls_dir(&self) -> PathBuf {
        self.dir.join("tls-kept")
    }

    /// Put the certificate and key kept by [`Coordinator::wipe_store_keep_tls`] back into the
    /// data dir (no-op when there is nothing kept or the data dir has its certificate).
    pub fn restore_tls(&self) -> Result<()> {
        let kept = self.kept_tls_dir();
        let tls = self.data_dir.join("tls");
        if !kept.join("cert.pem").exists() || tls.join("cert.pem").exists() {
            return Ok(());
        }
        fs::create_dir_all(&tls)?;
        for f in ["cert.pem", "key.pem"] {
            fs::copy(kept.join(f), tls.join(f))
                .with_context(|| format!("restoring {}", tls.join(f).display()))?;
        }
        fs::set_permissions(tls.join("key.pem"), fs::Permissions::from_mode(0o600))?;
        fs::set_permissions(tls.join("cert.pem"), fs::Permissions::from_mode(0o644))?;
        Ok(())
    }

    /// Whether `serve` was started and has not been stopped or killed by the harness (it may
    /// still have exited on its own).
    pub fn is_running(&self) -> bool {
        self.child.lock().unwrap().is_some()
    }

    /// `cluster show NAME` (JSON, no secrets).
    pub fn show(&self, name: &str) -> Result<Value> {
        let o = self
            .cli()
            .args(["cluster", "show", name, "--data-dir"])
            .arg(&self.data_dir)
            .output()?;
        if !o.status.success() {
            bail!(
                "swarm-coordinator cluster show {name}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(serde_json::from_slice(&o.stdout)?)
    }

    /// `cluster rotate-tokens NAME` (through the admin API when the server runs): the cluster's
    /// status after the request (JSON).
    pub fn rotate_tokens(&self, name: &str) -> Result<Value> {
        let o = self
            .cli()
            .args(["cluster", "rotate-tokens", name, "--data-dir"])
            .arg(&self.data_dir)
            .output()?;
        if !o.status.success() {
            bail!(
                "swarm-coordinator cluster rotate-tokens {name}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(serde_json::from_slice(&o.stdout)?)
    }

    /// `cluster reset NAME`.
    pub fn reset(&self, name: &str) -> Result<()> {
        let o = self
            .cli()
            .args(["cluster", "reset", name, "--data-dir"])
            .arg(&self.data_dir)
            .output()?;
        if !o.status.success() {
            bail!(
                "swarm-coordinator cluster reset {name}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(())
    }

    /// Start `serve` and wait (deadline) until it accepts TCP connections.
    pub fn start(&mut self) -> Result<()> {
        self.restore_tls()?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = self.cli();
        cmd.arg("serve")
            .arg("--listen")
            .arg(self.listen.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--tls-self-signed", "--san"])
            .arg(self.listen.ip().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = cmd.spawn().context("spawning swarm-coordinator serve")?;
        let procs = self.dir.join("procs");
        fs::create_dir_all(&procs)?;
        write_pidfile(&procs.join("coordinator.pid"), child.id() as i32)?;
        // `serve --tls-self-signed` prints the fingerprint on stdout first thing.
        let stdout = child.stdout.take().expect("piped stdout");
        *self.child.lock().unwrap() = Some(child);
        *self.starts.lock().unwrap() += 1;
        let fp = read_first_line(stdout, Duration::from_secs(20))
            .with_context(|| format!("coordinator printed no fingerprint; log:\n{}", self.log()))?;
        let fp = fp.trim().to_string();
        swarmstrap_wire::parse_fingerprint(&fp)
            .map_err(|e| anyhow!("coordinator printed {fp:?}: {e}"))?;
        if !self.fingerprint.is_empty() && self.fingerprint != fp {
            bail!("the coordinator's certificate changed across a restart ({} → {fp}): it must be reused from the data dir", self.fingerprint);
        }
        self.fingerprint = fp;
        let addr = self.listen;
        wait_until(Duration::from_secs(20), "coordinator accepting", || {
            let exited = self.child.lock().unwrap().as_mut().unwrap().try_wait();
            if let Some(st) =
                exited.map_err(|e| crate::LabError::io("waiting for the coordinator", e))?
            {
                return Err(crate::LabError::Check(format!(
                    "coordinator exited ({st}); log:\n{}",
                    self.log()
                )));
            }
            Ok(
                TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                    .ok()
                    .map(|_| ()),
            )
        })?;
        // The listener is bound before `server.json` (how the CLI reaches the running server's
        // admin API) is written: until then `cluster show` fails. Wait for this server's.
        let pid = self.child.lock().unwrap().as_ref().map(|c| c.id());
        let info = self.data_dir.join("server.json");
        wait_until(Duration::from_secs(20), "coordinator server.json", || {
            Ok(fs::read(&info)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .filter(|v| v["pid"].as_u64().map(|p| p as u32) == pid)
                .map(|_| ()))
        })?;
        Ok(())
    }

    /// SIGKILL the server (a crash) and reap it.
    pub fn kill(&self) -> Result<()> {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            signal_pid(c.id() as i32, Signal::KILL)?;
            c.wait()?;
        }
        Ok(())
    }

    /// SIGTERM (graceful), wait with a deadline, SIGKILL if still there.
    pub fn stop(&self) -> Result<()> {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = signal_pid(c.id() as i32, Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            let mut backoff = crate::Backoff::default();
            while c.try_wait()?.is_none() {
                if !backoff.sleep_until_next(deadline) {
                    let _ = signal_pid(c.id() as i32, Signal::KILL);
                    c.wait()?;
                    break;
                }
            }
        }
        Ok(())
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = fs::remove_file(self.dir.join("procs/coordinator.pid"));
    }
}

fn read_first_line(stdout: std::process::ChildStdout, timeout: Duration) -> Result<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = std::io::BufReader::new(stdout);
        let mut line = String::new();
        let res = r.read_line(&mut line).map(|_| line.clone());
        let _ = tx.send(res);
        // Keep draining so the server never blocks on a full pipe.
        let mut sink = String::new();
        while r.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    let line = rx.recv_timeout(timeout).context("waiting for a line")??;
    if line.is_empty() {
        bail!("stdout closed");
    }
    Ok(line)
}

/// How the agents of a [`Cluster`] are configured.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub role: &'static str,
    pub target_managers: u8,
    pub lease_ttl_secs: u32,
    /// Extra environment for every agent.
    pub env: Vec<(String, String)>,
    /// Give every host its own copy of the agent binary (`<host>/agent/bin/swarm-agent`), as
    /// on a VM, so `swarm-agent upgrade` on one host replaces only that host's.
    pub own_binary: bool,
    /// Run every agent command in a chroot (`<host>/root`) that holds only the agent binary,
    /// `/etc/resolv.conf` with this content, the config, the join secret, the state directory
    /// and the engine's socket (bind-mounted): no NSS modules, no /etc/hosts, no libc.
    pub chroot_resolv_conf: Option<String>,
    /// Render the config with this coordinator URL instead of the coordinator's IP URL;
    /// `{port}` is replaced with the coordinator's port.
    pub coordinator_url: Option<String>,
    /// Render the config with this Secrets Manager endpoint instead of moto's IP URL; `{port}`
    /// is replaced with moto's port.
    pub endpoint_url: Option<String>,
    /// Extra environment for one agent: `(host index, name, value)` (e.g. its own
    /// `NOTIFY_SOCKET`).
    pub host_env: Vec<(usize, String, String)>,
    /// Extra arguments of one agent's `swarm-agent run`: `(host index, argument)`, in order.
    pub run_args: Vec<(usize, String)>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            role: "auto",
            target_managers: 3,
            lease_ttl_secs: 30,
            env: Vec::new(),
            own_binary: false,
            chroot_resolv_conf: None,
            coordinator_url: None,
            endpoint_url: None,
            host_env: Vec::new(),
            run_args: Vec::new(),
        }
    }
}

/// A coordinator + a configured agent per lab host. Drop order: agents (via the lab), then the
/// coordinator, then the lab.
pub struct Cluster {
    pub name: String,
    backend: Backend,
    pub options: AgentOptions,
    agents: Mutex<Vec<Option<ProcHandle>>>,
    pub lab: Lab,
}

/// The rendezvous the agents of a [`Cluster`] meet at.
pub enum Backend {
    /// The real coordinator; the cluster's join secret is in `secret_file`.
    Coordinator {
        coordinator: Coordinator,
        secret_file: PathBuf,
    },
    /// The Secrets Manager backend, with moto's server standing in for AWS.
    SecretsManager { moto: Moto, secret_name: String },
    /// The etcd backend: the lab's own 3-member etcd cluster on lab namespaces
    /// ([`EtcdLab`]); `creds[i]` is what host `i`'s agent config names (user, password
    /// file, CA, client certificate and key).
    Etcd {
        etcd: EtcdLab,
        creds: Mutex<Vec<EtcdCreds>>,
    },
}

/// The files `render_node.py --backend etcd` copies into its output directory, and the agent
/// variables that point the agent at them in the lab.
const ETCD_FILES: [(&str, &str); 4] = [
    ("SWARM_AGENT_ETCD_CA_FILE", "etcd-ca.pem"),
    ("SWARM_AGENT_ETCD_CERT_FILE", "etcd-client.pem"),
    ("SWARM_AGENT_ETCD_KEY_FILE", "etcd-client.key"),
    ("SWARM_AGENT_ETCD_PASSWORD_FILE", "etcd-password"),
];

/// Which backend a lab test runs on when it can run on several: `SWARMSTRAP_LAB_BACKEND`
/// (`coordinator`, the default, or `etcd`).
pub const LAB_BACKEND_ENV: &str = "SWARMSTRAP_LAB_BACKEND";

/// The backend [`LAB_BACKEND_ENV`] picks: `"coordinator"` (unset) or `"etcd"`; anything else
/// is an error saying what is accepted.
pub fn lab_backend() -> Result<&'static str> {
    match std::env::var(LAB_BACKEND_ENV).as_deref() {
        Err(_) | Ok("") | Ok("coordinator") => Ok("coordinator"),
        Ok("etcd") => Ok("etcd"),
        Ok(other) => {
            bail!("{LAB_BACKEND_ENV}={other:?}: use `coordinator` (the default) or `etcd`")
        }
    }
}

/// Dummy credentials for moto (never real ones); the region the lab uses.
pub const MOTO_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_SESSION_TOKEN", "testing"),
    // Never ask the instance metadata service (169.254.169.254) from the lab.
    ("AWS_EC2_METADATA_DISABLED", "true"),
];
pub const MOTO_REGION: &str = "us-east-1";

/// moto's Secrets Manager server (`moto_server`, PyPI `moto[server]`), in the root namespace
/// on the lab bridge, so agents in every host reach it. Stopped by pid on drop; its pidfile is
/// under the lab root for the stale cleanup.
pub struct Moto {
    dir: PathBuf,
    listen: SocketAddr,
    child: Mutex<Option<Child>>,
    /// The AWS-behaviour proxy in front of moto (`secrets-manager/aws-behaviour/proxy.py`),
    /// when started with faults: then `listen` is the proxy's.
    proxy: Mutex<Option<Child>>,
}

impl Moto {
    pub fn start(lab: &Lab) -> Result<Moto> {
        Moto::start_with(lab, None)
    }

    /// moto, and with `faults` (`all`, or a comma list: see the proxy's README) the
    /// AWS-behaviour proxy in front of it on the bridge, moto itself then on loopback only.
    /// The proxy's seed is `$SWARMSTRAP_AWS_SEED` or random, printed for a rerun.
    pub fn start_with(lab: &Lab, faults: Option<&str>) -> Result<Moto> {
        let bin = crate::cmd::which("moto_server").ok_or_else(|| {
            anyhow!(
                "moto_server is missing: `pip install \"moto[server]\"` (scripts/setup.sh does)"
            )
        })?;
        let dir = lab.root().join("moto");
        fs::create_dir_all(dir.join("procs"))?;
        let moto_ip = if faults.is_some() {
            Ipv4Addr::LOCALHOST
        } else {
            lab.bridge_addr()
        };
        let port = TcpListener::bind((moto_ip, 0))?.local_addr()?.port();
        let moto_addr = SocketAddr::from((moto_ip, port));
        let log = fs::File::create(dir.join("moto.log"))?;
        let child = Command::new(bin)
            .args(["-H", &moto_ip.to_string(), "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning moto_server")?;
        write_pidfile(&dir.join("procs/moto.pid"), child.id() as i32)?;
        let mut m = Moto {
            dir,
            listen: moto_addr,
            child: Mutex::new(Some(child)),
            proxy: Mutex::new(None),
        };
        wait_until(Duration::from_secs(30), "moto_server accepting", || {
            Ok(
                TcpStream::connect_timeout(&moto_addr, Duration::from_millis(200))
                    .ok()
                    .map(|_| ()),
            )
        })?;
        if let Some(faults) = faults {
            let seed: u64 = match std::env::var("SWARMSTRAP_AWS_SEED") {
                Ok(s) => s.trim().parse().context("SWARMSTRAP_AWS_SEED")?,
                Err(_) => {
                    use std::hash::{BuildHasher, Hasher};
                    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                    h.write_u64(u64::from(std::process::id()));
                    h.finish() % 1_000_000
                }
            };
            eprintln!("lab AWS-behaviour proxy: faults {faults}, seed {seed} (rerun with SWARMSTRAP_AWS_SEED={seed})");
            let pport = TcpListener::bind((lab.bridge_addr(), 0))?
                .local_addr()?
                .port();
            let listen = SocketAddr::from((lab.bridge_addr(), pport));
            let plog = fs::File::create(m.dir.join("proxy.log"))?;
            let script = workspace_root().join("secrets-manager/aws-behaviour/proxy.py");
            let proxy = Command::new("python3")
                .arg(script)
                .args(["--upstream", &format!("http://{moto_addr}")])
                .args(["--listen-host", &lab.bridge_addr().to_string()])
                .args(["--listen-port", &pport.to_string()])
                .args(["--seed", &seed.to_string()])
                .args(["--faults", faults])
                .stdin(Stdio::null())
                .stdout(plog.try_clone()?)
                .stderr(plog)
                .spawn()
                .context("spawning the AWS-behaviour proxy (python3)")?;
            write_pidfile(&m.dir.join("procs/proxy.pid"), proxy.id() as i32)?;
            *m.proxy.get_mut().unwrap() = Some(proxy);
            m.listen = listen;
            wait_until(
                Duration::from_secs(20),
                "AWS-behaviour proxy accepting",
                || {
                    Ok(
                        TcpStream::connect_timeout(&listen, Duration::from_millis(200))
                            .ok()
                            .map(|_| ()),
                    )
                },
            )?;
        }
        Ok(m)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("moto.log")).unwrap_or_default()
    }

    /// Zero the proxy's counters (`POST /__proxy/reset`); false without a proxy.
    pub fn reset_proxy_stats(&self) -> bool {
        self.proxy_request("POST", "/__proxy/reset").is_some()
    }

    /// The proxy's counters (`GET /__proxy/stats`: calls per operation, write calls, the
    /// busiest second, versions created per secret, faults injected); `None` without a proxy.
    pub fn proxy_stats(&self) -> Option<Value> {
        serde_json::from_str(&self.proxy_request("GET", "/__proxy/stats")?).ok()
    }

    fn proxy_request(&self, method: &str, path: &str) -> Option<String> {
        use std::io::{Read, Write};
        self.proxy.lock().unwrap().as_ref()?;
        let mut s = TcpStream::connect_timeout(&self.listen, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.listen
        )
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        Some(text.split_once("\r\n\r\n")?.1.to_string())
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        for (slot, pidfile) in [
            (&self.proxy, "procs/proxy.pid"),
            (&self.child, "procs/moto.pid"),
        ] {
            if let Some(mut c) = slot.lock().unwrap().take() {
                let _ = signal_pid(c.id() as i32, Signal::TERM);
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut backoff = crate::Backoff::default();
                while matches!(c.try_wait(), Ok(None)) {
                    if !backoff.sleep_until_next(deadline) {
                        let _ = signal_pid(c.id() as i32, Signal::KILL);
                        let _ = c.wait();
                        break;
                    }
                }
            }
            let _ = fs::remove_file(self.dir.join(pidfile));
        }
    }
}

impl Cluster {
    /// Create the cluster on a fresh coordinator and start the coordinator. Agents are not
    /// started yet: see [`Cluster::start_agent`] / [`Cluster::start_agents`].
    pub fn new(lab: Lab, name: &str, options: AgentOptions) -> Result<Cluster> {
        let mut coordinator = Coordinator::new(&lab)?;
        let secret_file = coordinator.create_cluster(name, options.target_managers)?;
        coordinator.start()?;
        Cluster::with_backend(
            lab,
            name,
            options,
            Backend::Coordinator {
                coordinator,
                secret_file,
            },
        )
    }

    /// The same, with the Secrets Manager backend (no coordinator) against moto.
    pub fn new_secrets_manager(lab: Lab, name: &str, options: AgentOptions) -> Result<Cluster> {
        Cluster::new_secrets_manager_with(lab, name, options, None)
    }

    /// The same, with moto behind the AWS-behaviour proxy injecting `faults` (see
    /// [`Moto::start_with`]).
    pub fn new_secrets_manager_with(
        lab: Lab,
        name: &str,
        options: AgentOptions,
        faults: Option<&str>,
    ) -> Result<Cluster> {
        let moto = Moto::start_with(&lab, faults)?;
        let secret_name = format!("swarmstrap/{name}-{}", lab.id());
        Cluster::with_backend(
            lab,
            name,
            options,
            Backend::SecretsManager { moto, secret_name },
        )
    }

    /// The same, with the etcd backend: the lab's 3-member etcd cluster ([`EtcdLab`]), the
    /// cluster's two roles, and one manager-role user for every agent (role `auto` may make
    /// any node a manager, so every node needs the managers' prefix).
    pub fn new_etcd(lab: Lab, name: &str, options: AgentOptions) -> Result<Cluster> {
        crate::etcd::preflight()?;
        if options.chroot_resolv_conf.is_some() {
            bail!("the etcd backend's files are not copied into a chroot: run without one");
        }
        let etcd = EtcdLab::start(&lab)?;
        eprintln!(
            "swarmstrap-lab: cluster {name} on the etcd backend (members {})",
            etcd.endpoints.join(", ")
        );
        let (_, manager_role) = etcd.add_cluster_roles(name)?;
        let creds = etcd.add_user(&manager_role, &[&manager_role])?;
        let n = lab.hosts().len();
        Cluster::with_backend(
            lab,
            name,
            options,
            Backend::Etcd {
                etcd,
                creds: Mutex::new(vec![creds; n]),
            },
        )
    }

    /// [`Cluster::new`] or [`Cluster::new_etcd`], as [`lab_backend`] says (for the tests that
    /// do not depend on the coordinator).
    pub fn new_from_env(lab: Lab, name: &str, options: AgentOptions) -> Result<Cluster> {
        match lab_backend()? {
            "etcd" => Cluster::new_etcd(lab, name, options),
            _ => Cluster::new(lab, name, options),
        }
    }

    /// The lab's etcd cluster (etcd backend only).
    pub fn etcd(&self) -> Option<&EtcdLab> {
        match &self.backend {
            Backend::Etcd { etcd, .. } => Some(etcd),
            _ => None,
        }
    }

    /// Give hosts `hosts` other etcd credentials and render their configs again (etcd backend
    /// only). Takes effect at the next start of their agents.
    pub fn set_etcd_creds(&self, hosts: &[usize], new: &EtcdCreds) -> Result<()> {
        let Backend::Etcd { creds, .. } = &self.backend else {
            bail!("set_etcd_creds: this cluster's backend is not etcd");
        };
        for &i in hosts {
            creds.lock().unwrap()[i] = new.clone();
        }
        for &i in hosts {
            self.render_config(self.lab.host(i))?;
        }
        Ok(())
    }

    /// Render every host's config again (e.g. after changing [`Cluster::name`]).
    pub fn render_configs(&self) -> Result<()> {
        for h in self.lab.hosts() {
            self.render_config(h)?;
        }
        Ok(())
    }

    fn with_backend(
        lab: Lab,
        name: &str,
        options: AgentOptions,
        backend: Backend,
    ) -> Result<Cluster> {
        let n = lab.hosts().len();
        let c = Cluster {
            name: name.to_string(),
            backend,
            options,
            agents: Mutex::new((0..n).map(|_| None).collect()),
            lab,
        };
        for h in c.lab.hosts() {
            c.render_config(h)?;
            c.install_binary(h)?;
        }
        Ok(c)
    }

    /// The chroot of host `h` (see [`AgentOptions::chroot_resolv_conf`]).
    pub fn chroot_dir(&self, h: &Host) -> PathBuf {
        h.dir().join("root")
    }

    /// The agent binary host `h` runs (outside any chroot).
    pub fn agent_binary(&self, h: &Host) -> Result<PathBuf> {
        Ok(if self.options.chroot_resolv_conf.is_some() {
            self.chroot_dir(h).join("swarm-agent")
        } else if self.options.own_binary {
            h.dir().join("agent/bin/swarm-agent")
        } else {
            bins()?.agent.clone()
        })
    }

    fn install_binary(&self, h: &Host) -> Result<()> {
        if let Some(resolv) = &self.options.chroot_resolv_conf {
            let root = self.chroot_dir(h);
            fs::create_dir_all(root.join("etc"))?;
            fs::write(root.join("etc/resolv.conf"), resolv)?;
            fs::copy(&bins()?.agent, root.join("swarm-agent"))?;
            fs::copy(self.config_path(h), root.join("config.toml"))?;
            let secret = h.dir().join("agent/join-secret");
            if secret.exists() {
                fs::copy(&secret, root.join("join-secret"))?;
            }
            let sock = h.docker_host().trim_start_matches("unix://").to_string();
            fs::write(root.join("docker.sock"), b"")?;
            crate::cmd::run(
                Command::new("mount")
                    .arg("--bind")
                    .arg(&sock)
                    .arg(root.join("docker.sock")),
            )?;
        } else if self.options.own_binary {
            let bin = h.dir().join("agent/bin");
            fs::create_dir_all(&bin)?;
            fs::copy(&bins()?.agent, bin.join("swarm-agent"))?;
        }
        Ok(())
    }

    /// `swarm-agent ARGS` for host `h`: the program, its arguments and the agent's environment
    /// (paths as the agent sees them, inside the chroot if there is one).
    fn agent_command(&self, h: &Host, args: &[&str]) -> Result<Command> {
        let mut cmd = if self.options.chroot_resolv_conf.is_some() {
            // `env -i`: the agent gets only its own environment, nothing of the test's.
            let mut c = Command::new("env");
            c.arg("-i");
            for (k, v) in self.agent_env(h) {
                c.arg(format!("{k}={v}"));
            }
            c.arg("/usr/sbin/chroot") // coreutils; `env -i` leaves no PATH to search
                .arg(self.chroot_dir(h))
                .arg("/swarm-agent")
                .args(args)
                .args(["--config", "/config.toml"]);
            return Ok(c);
        } else {
            let mut c = Command::new(self.agent_binary(h)?);
            c.args(args).arg("--config").arg(self.config_path(h));
            c
        };
        for (k, v) in self.agent_env(h) {
            cmd.env(k, v);
        }
        Ok(cmd)
    }

    /// [`Self::agent_command`] in host `h`'s network namespace, run to completion.
    fn agent_command_in_netns(&self, h: &Host, args: &[&str]) -> Result<Command> {
        let inner = self.agent_command(h, args)?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", h.netns_path().display()))
            .arg("--")
            .arg(inner.get_program())
            .args(inner.get_args());
        for (k, v) in inner.get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        Ok(cmd)
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The file holding the cluster's join secret (coordinator backend only).
    pub fn secret_file(&self) -> Option<&Path> {
        match &self.backend {
            Backend::Coordinator { secret_file, .. } => Some(secret_file),
            Backend::SecretsManager { .. } | Backend::Etcd { .. } => None,
        }
    }

    /// The coordinator (panics for a Secrets Manager cluster: a test bug).
    pub fn coordinator(&self) -> &Coordinator {
        match &self.backend {
            Backend::Coordinator { coordinator, .. } => coordinator,
            Backend::SecretsManager { .. } | Backend::Etcd { .. } => {
                panic!("this cluster has no coordinator")
            }
        }
    }

    pub fn coordinator_mut(&mut self) -> &mut Coordinator {
        match &mut self.backend {
            Backend::Coordinator { coordinator, .. } => coordinator,
            Backend::SecretsManager { .. } | Backend::Etcd { .. } => {
                panic!("this cluster has no coordinator")
            }
        }
    }

    /// `<host dir>/agent/config.toml`, rendered by the cloud-init node template.
    pub fn config_path(&self, h: &Host) -> PathBuf {
        h.dir().join("agent/config.toml")
    }

    pub fn state_dir(&self, h: &Host) -> PathBuf {
        h.dir().join("agent/state")
    }

    fn render_config(&self, h: &Host) -> Result<()> {
        let out = h.dir().join("agent");
        fs::create_dir_all(&out)?;
        let mut cmd = Command::new("python3");
        cmd.arg(workspace_root().join("tests/iac/render_node.py"))
            .arg("--out-dir")
            .arg(&out)
            .args(["--cluster", &self.name]);
        match &self.backend {
            Backend::Coordinator {
                coordinator,
                secret_file,
            } => {
                let url = match &self.options.coordinator_url {
                    Some(u) => u.replace("{port}", &coordinator.listen.port().to_string()),
                    None => coordinator.url(),
                };
                cmd.args(["--coordinator-url", &url])
                    .args(["--fingerprint", coordinator.fingerprint()])
                    .arg("--join-secret-file")
                    .arg(secret_file);
            }
            Backend::SecretsManager { moto, secret_name } => {
                cmd.args(["--backend", "secrets-manager"])
                    .args(["--secret-name", secret_name])
                    .args(["--region", MOTO_REGION])
                    .args([
                        "--endpoint-url",
                        &match &self.options.endpoint_url {
                            Some(u) => u.replace("{port}", &moto.listen.port().to_string()),
                            None => moto.url(),
                        },
                    ]);
            }
            Backend::Etcd { etcd, creds } => {
                let cr = creds.lock().unwrap()[h.index()].clone();
                cmd.args(["--backend", "etcd"]);
                for e in &etcd.endpoints {
                    cmd.args(["--etcd-endpoint", e]);
                }
                cmd.arg("--etcd-ca-file")
                    .arg(&cr.ca_file)
                    .arg("--etcd-cert-file")
                    .arg(&cr.cert_file)
                    .arg("--etcd-key-file")
                    .arg(&cr.key_file)
                    .args(["--etcd-user", &cr.user])
                    .arg("--etcd-password-file")
                    .arg(&cr.password_file);
            }
        }
        let o = cmd
            .args(["--advertise", &h.addr().to_string()])
            .args(["--role", self.options.role])
            .args([
                "--target-managers",
                &self.options.target_managers.to_string(),
            ])
            .arg("--no-lb")
            .output()
            .context("running tests/iac/render_node.py")?;
        if !o.status.success() {
            bail!(
                "render_node.py failed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Ok(())
    }

    /// Environment that maps the VM paths of the rendered config onto the lab host.
    fn agent_env(&self, h: &Host) -> Vec<(String, String)> {
        if self.options.chroot_resolv_conf.is_some() {
            let mut env: Vec<(String, String)> = vec![
                (
                    "SWARM_AGENT_DOCKER_HOST".into(),
                    "unix:///docker.sock".into(),
                ),
                ("SWARM_AGENT_STATE_DIR".into(), "/state".into()),
                ("SWARM_AGENT_JOIN_SECRET_FILE".into(), "/join-secret".into()),
                (
                    "SWARM_AGENT_LEASE_TTL_SECS".into(),
                    self.options.lease_ttl_secs.to_string(),
                ),
                ("SWARM_AGENT_LOG".into(), "info".into()),
            ];
            if let Backend::SecretsManager { .. } = self.backend {
                env.extend(MOTO_ENV.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            }
            env.extend(self.options.env.iter().cloned());
            env.extend(self.host_env(h));
            return env;
        }
        let mut env = vec![
            ("SWARM_AGENT_DOCKER_HOST".into(), h.docker_host()),
            (
                "SWARM_AGENT_STATE_DIR".into(),
                self.state_dir(h).display().to_string(),
            ),
            (
                "SWARM_AGENT_JOIN_SECRET_FILE".into(),
                h.dir().join("agent/join-secret").display().to_string(),
            ),
            (
                "SWARM_AGENT_LEASE_TTL_SECS".into(),
                self.options.lease_ttl_secs.to_string(),
            ),
            ("SWARM_AGENT_LOG".into(), "info".into()),
        ];
        if let Backend::SecretsManager { .. } = self.backend {
            env.extend(MOTO_ENV.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        }
        env.extend(self.etcd_file_env(h));
        env.extend(self.options.env.iter().cloned());
        env.extend(self.host_env(h));
        env
    }

    /// Etcd backend: the variables that point host `h`'s agent (and its CLI commands) at the
    /// etcd files the node template copies next to the config (on a VM: /etc/swarm-agent/…,
    /// which the rendered config names). Empty for the other backends.
    pub fn etcd_file_env(&self, h: &Host) -> Vec<(String, String)> {
        let Backend::Etcd { .. } = self.backend else {
            return Vec::new();
        };
        let agent = h.dir().join("agent");
        ETCD_FILES
            .iter()
            .map(|(k, f)| (k.to_string(), agent.join(f).display().to_string()))
            .collect()
    }

    /// [`AgentOptions::host_env`] of host `h`.
    fn host_env(&self, h: &Host) -> Vec<(String, String)> {
        self.options
            .host_env
            .iter()
            .filter(|(i, _, _)| *i == h.index())
            .map(|(_, k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Start `swarm-agent run` inside host `i`'s network namespace.
    pub fn start_agent(&self, i: usize) -> Result<ProcHandle> {
        let h = self.lab.host(i);
        let mut args = vec!["run"];
        args.extend(
            self.options
                .run_args
                .iter()
                .filter(|(host, _)| *host == i)
                .map(|(_, a)| a.as_str()),
        );
        let cmd = self.agent_command(h, &args)?;
        let p = h.spawn_in_netns("agent", cmd)?;
        self.agents.lock().unwrap()[i] = Some(p.clone());
        Ok(p)
    }

    pub fn start_agents(&self) -> Result<()> {
        for i in 0..self.lab.hosts().len() {
            self.start_agent(i)?;
        }
        Ok(())
    }

    pub fn agent(&self, i: usize) -> Option<ProcHandle> {
        self.agents.lock().unwrap()[i].clone()
    }

    /// `GET http://127.0.0.1:{port}/metrics` from inside host `i`'s network namespace (the
    /// agent's `[metrics] listen` is loopback-only): the body of a 200, else an error saying
    /// what failed. A thread of this process joins the namespace (`setns`) for the request and
    /// ends with it, so no other thread leaves the lab's root namespace.
    pub fn scrape_metrics(&self, i: usize, port: u16) -> Result<String> {
        use std::io::{Read, Write};
        let h = self.lab.host(i);
        let netns = h.netns_path();
        let name = h.name().to_string();
        std::thread::scope(|s| {
            s.spawn(|| -> Result<String> {
                let ns = fs::File::open(&netns)
                    .with_context(|| format!("opening {}", netns.display()))?;
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&ns),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .with_context(|| format!("setns into {}", netns.display()))?;
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                    .with_context(|| format!("connecting to {addr} in {name}'s namespace"))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
                let mut resp = String::new();
                s.read_to_string(&mut resp)
                    .with_context(|| format!("reading {addr}/metrics in {name}'s namespace"))?;
                let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
                if head.split_whitespace().nth(1) != Some("200") {
                    bail!("GET {addr}/metrics in {name}'s namespace: {head}");
                }
                Ok(body.to_string())
            })
            .join()
            .map_err(|_| anyhow!("the metrics scrape thread panicked"))?
        })
    }

    /// `swarm-agent status --json` on host `i` (run in its network namespace): exit code and
    /// the parsed report.
    pub fn status(&self, i: usize) -> Result<(i32, Value)> {
        let h = self.lab.host(i);
        let mut cmd = self.agent_command_in_netns(h, &["status", "--json"])?;
        let o = crate::cmd::run_unchecked(&mut cmd)?;
        let code = o.status.code().unwrap_or(-1);
        let v: Value = serde_json::from_str(&o.stdout).with_context(|| {
            format!(
                "status --json on {} printed no JSON (exit {code}): {}{}",
                h.name(),
                o.stdout,
                o.stderr
            )
        })?;
        Ok((code, v))
    }

    /// Run `swarm-agent ARGS --config …` on host `i` (in its network namespace, with the
    /// agent's environment), to completion: an operator's command (`leave`, `recover`).
    pub fn agent_cmd(&self, i: usize, args: &[&str]) -> Result<crate::cmd::CmdOutput> {
        let h = self.lab.host(i);
        let mut cmd = self.agent_command_in_netns(h, args)?;
        Ok(crate::cmd::run_unchecked(&mut cmd)?)
    }

    /// The human `swarm-agent status` of host `i` (for the demo and failure messages).
    pub fn status_text(&self, i: usize) -> Result<String> {
        let h = self.lab.host(i);
        let mut cmd = self.agent_command_in_netns(h, &["status"])?;
        let o = crate::cmd::run_unchecked(&mut cmd)?;
        Ok(format!("{}{}", o.stdout, o.stderr))
    }

    /// Wait until the hosts in `hosts` form one swarm of `managers` + `workers` nodes, all
    /// Ready, one leader, every agent's status healthy (exit 0) and reporting the same swarm id.
    /// Returns the swarm id.
    pub fn wait_formed(
        &self,
        hosts: &[usize],
        managers: usize,
        workers: usize,
        timeout: Duration,
    ) -> Result<String> {
        let what = format!(
            "{} hosts to form one swarm of {managers} managers + {workers} workers",
            hosts.len()
        );
        let r = wait_for(timeout, &what, || {
            let mut ids = BTreeSet::new();
            for &i in hosts {
                let (code, v) = match self.status(i) {
                    Ok(s) => s,
                    Err(e) => return Ok(Err(format!("{}: {e:#}", self.lab.host(i).name()))),
                };
                if code != 0 {
                    return Ok(Err(format!(
                        "{} status exit {code}: swarm {}",
                        self.lab.host(i).name(),
                        v["swarm"]
                    )));
                }
                ids.insert(v["swarm"]["swarm_id"].as_str().unwrap_or("").to_string());
            }
            if ids.len() != 1 || ids.contains("") {
                return Ok(Err(format!("swarm ids differ: {ids:?}")));
            }
            let Some(mgr) = hosts.iter().find(|&&i| {
                self.lab
                    .host(i)
                    .swarm_info()
                    .map(|s| s.control_available)
                    .unwrap_or(false)
            }) else {
                return Ok(Err("no manager answers".into()));
            };
            let nodes = match self.lab.host(*mgr).node_ls() {
                Ok(n) => n,
                Err(e) => return Ok(Err(format!("node ls: {e}"))),
            };
            let shape = Shape::of(&nodes);
            if !shape.is(managers, workers) {
                return Ok(Err(format!("shape {shape:?}")));
            }
            Ok(Ok(ids.into_iter().next().unwrap()))
        });
        r.map_err(|e| anyhow!("{e}\n{}", self.diagnostics()))
    }

    fn backend_log(&self) -> String {
        match &self.backend {
            Backend::Coordinator { coordinator, .. } => coordinator.log(),
            Backend::SecretsManager { moto, .. } => moto.log(),
            Backend::Etcd { etcd, .. } => etcd.log_tails(),
        }
    }

    /// Agent and coordinator log tails, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut s = String::new();
        for (i, h) in self.lab.hosts().iter().enumerate() {
            if let Some(p) = self.agent(i) {
                s.push_str(&format!(
                    "--- {} agent log (tail)\n{}\n",
                    h.name(),
                    tail_lines(&p.log(), 15)
                ));
            }
        }
        s.push_str(&format!(
            "--- rendezvous log (tail)\n{}\n",
            tail_lines(&self.backend_log(), 15)
        ));
        s
    }

    /// How many times any agent ran `swarm init` (from the agents' own logs).
    pub fn init_count(&self) -> usize {
        (0..self.lab.hosts().len())
            .filter_map(|i| self.agent(i))
            .map(|p| count_inits(&p.log()))
            .sum()
    }

    /// The cluster's operator credential file (coordinator backend only).
    pub fn operator_credential_file(&self) -> Option<PathBuf> {
        match &self.backend {
            Backend::Coordinator { coordinator, .. } => {
                Some(coordinator.operator_credential_file(&self.name))
            }
            Backend::SecretsManager { .. } | Backend::Etcd { .. } => None,
        }
    }

    /// Every secret this cluster used (the join secret, the operator credential, each agent's
    /// node credential and the swarm's join tokens), for the leak check of the logs.
    pub fn secrets(&self) -> Result<Vec<String>> {
        let mut v = Vec::new();
        if let Backend::Coordinator { secret_file, .. } = &self.backend {
            v.push(fs::read_to_string(secret_file)?.trim().to_string());
        }
        if let Backend::Etcd { etcd, .. } = &self.backend {
            // Every user's password, also of users no host uses any more.
            v.extend(etcd.passwords()?);
            v.extend(etcd.key_lines()?);
        }
        if let Some(op) = self.operator_credential_file() {
            if let Ok(s) = fs::read_to_string(op) {
                v.push(s.trim().to_string());
            }
        }
        for h in self.lab.hosts() {
            // `<state dir>/node-credential`: {"node_id", "credential", "confirmed"}.
            let f = self.state_dir(h).join("node-credential");
            if let Ok(text) = fs::read_to_string(f) {
                let rec: Value = serde_json::from_str(&text)?;
                if let Some(c) = rec["credential"].as_str() {
                    v.push(c.to_string());
                }
            }
        }
        for h in self.lab.hosts() {
            if let Ok(t) = crate::swarm::join_tokens(&h.api()) {
                v.push(t.worker.expose().to_string());
                v.push(t.manager.expose().to_string());
                break;
            }
        }
        Ok(v)
    }

    /// Fail if any agent or coordinator log contains a secret.
    pub fn assert_no_secret_in_logs(&self) -> Result<()> {
        let secrets = self.secrets()?;
        let mut logs = vec![("rendezvous".to_string(), self.backend_log())];
        for (i, h) in self.lab.hosts().iter().enumerate() {
            if let Some(p) = self.agent(i) {
                logs.push((h.name().to_string(), p.log()));
            }
        }
        for (who, log) in logs {
            for s in &secrets {
                if !s.is_empty() && log.contains(s.as_str()) {
                    bail!("a secret leaked into the {who} log");
                }
            }
        }
        Ok(())
    }
}

/// Lines a `swarm-agent run` log has per `swarm init` it ran.
pub fn count_inits(log: &str) -> usize {
    log.lines().filter(|l| l.contains(INIT_MARKER)).count()
}

/// Lines of `log` that contain `pattern`, compared case-insensitively.
pub fn lines_matching<'a>(log: &'a str, pattern: &str) -> Vec<&'a str> {
    let p = pattern.to_ascii_lowercase();
    log.lines()
        .filter(|l| l.to_ascii_lowercase().contains(&p))
        .collect()
}

/// What the agent logs right after a successful `swarm init`.
pub const INIT_MARKER: &str = "swarm init done";

pub fn tail_lines(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

/// The lab's bridge address as the coordinator's listen IP.
pub fn listen_ip(lab: &Lab) -> Ipv4Addr {
    lab.bridge_addr()
}
