//! One lab host: a network namespace wired to the lab bridge, a UTS namespace with its own
//! hostname, and (when started) a dockerd with its own data root, exec root and socket.

use crate::cmd::{check, describe, exec, CmdOutput};
use crate::engine::EngineApi;
use crate::error::{LabError, Result};
use crate::net::netns_path;
use crate::proc::{
    belongs_to_lab, read_pidfile, signal_pid, wait_gone, write_pidfile, ProcHandle, ProcInner,
    Signal,
};
use crate::swarm::{parse_node_ls, parse_swarm_info, SwarmInfo, SwarmNode};
use crate::wait::Backoff;
use std::fs::{self, File, OpenOptions};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Sets the hostname in the fresh UTS namespace made by `unshare --uts`, then execs the rest
/// (`nsenter --net=… <program> …`). Every exec keeps the pid, so the pid we spawn is the pid
/// of the final program.
const UTS_WRAPPER: &str = r#"hostname "$1" && shift && exec "$@""#;

/// How a [`Host::stop_engine`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineStop {
    NotRunning,
    /// Exited after SIGTERM.
    Exited(Duration),
    /// Still running after the grace period; SIGKILLed.
    Killed(Duration),
}

pub struct Host {
    pub(crate) index: usize,
    pub(crate) name: String,
    pub(crate) ns: String,
    pub(crate) veth: String,
    pub(crate) addr: Ipv4Addr,
    pub(crate) dir: PathBuf,
    pub(crate) lab_root: PathBuf,
    pub(crate) docker_cli: PathBuf,
    pub(crate) dockerd: PathBuf,
    pub(crate) dockerd_args: Vec<String>,
    pub(crate) grace: Duration,
    pub(crate) docker_timeout: Duration,
    pub(crate) engine: Mutex<Option<Child>>,
    pub(crate) procs: Mutex<Vec<Arc<ProcInner>>>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .field("netns", &self.ns)
            .field("dir", &self.dir)
            .finish()
    }
}

impl Host {
    /// 0-based position in the lab (`node1` is index 0).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The hostname (`node1` …), which the swarm shows.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// 198.18.<lab subnet>.<index + 1>
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The network namespace's name (`ip netns exec <this> …`).
    pub fn netns(&self) -> &str {
        &self.ns
    }

    pub fn netns_path(&self) -> PathBuf {
        netns_path(&self.ns)
    }

    /// The host's directory under the lab root (logs, engine state).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn docker_sock(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// `unix:///…/docker.sock`, for `DOCKER_HOST` or bollard.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.docker_sock().display())
    }

    pub fn dockerd_log(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    /// dockerd's own pidfile (`--pidfile`).
    pub fn dockerd_pidfile(&self) -> PathBuf {
        self.dir.join("docker.pid")
    }

    fn engine_pidfile(&self) -> PathBuf {
        self.dir.join("engine.pid")
    }

    pub fn api(&self) -> EngineApi {
        EngineApi::new(self.docker_sock())
    }

    /// Start this host's dockerd (does not wait: see [`wait_engine_ready`](Self::wait_engine_ready)).
    pub fn start_engine(&self) -> Result<()> {
        let mut engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(child) = engine.as_mut() {
            if child.try_wait().ok().flatten().is_none() {
                return Err(LabError::Check(format!(
                    "the engine of {} is already running (pid {})",
                    self.name,
                    child.id()
                )));
            }
        }
        let data = self.dir.join("data");
        let exec = self.dir.join("exec");
        for d in [&data, &exec] {
            fs::create_dir_all(d)
                .map_err(|e| LabError::io(format!("creating {}", d.display()), e))?;
        }
        self.clear_dead_pidfiles();
        let config = self.dir.join("daemon.json");
        if !config.exists() {
            // An empty config, so a /etc/docker/daemon.json on the machine does not leak in.
            fs::write(&config, "{}\n")
                .map_err(|e| LabError::io(format!("writing {}", config.display()), e))?;
        }
        let (out, err) = self.log_files(&self.dockerd_log())?;
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--uts",
            "sh",
            "-c",
            UTS_WRAPPER,
            "sh",
            &self.name,
            "nsenter",
        ])
        .arg(format!("--net={}", self.netns_path().display()))
        .arg("--")
        .arg(&self.dockerd)
        .arg("--data-root")
        .arg(&data)
        .arg("--exec-root")
        .arg(&exec)
        .arg("-H")
        .arg(self.docker_host())
        .arg("--pidfile")
        .arg(self.dockerd_pidfile())
        .arg("--config-file")
        .arg(&config)
        .args(&self.dockerd_args)
        // Swarm tasks otherwise try to pull their image from a registry first, even when it
        // is present: there is no registry here, and the lab must not reach out.
        .env("DOCKER_SERVICE_PREFER_OFFLINE_IMAGE", "1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
        let child = cmd.spawn().map_err(|e| {
            LabError::io(
                format!("starting dockerd for {}: `{}`", self.name, describe(&cmd)),
                e,
            )
        })?;
        write_pidfile(&self.engine_pidfile(), child.id() as i32)?;
        *engine = Some(child);
        Ok(())
    }

    fn log_files(&self, path: &Path) -> Result<(File, File)> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| LabError::io(format!("opening log {}", path.display()), e))?;
        let g = f
            .try_clone()
            .map_err(|e| LabError::io(format!("opening log {}", path.display()), e))?;
        Ok((f, g))
    }

    fn containerd_pidfile(&self) -> PathBuf {
        self.dir.join("exec/containerd/containerd.pid")
    }

    /// dockerd 20.10 takes any pid that `kill(pid, 0)` accepts as running, zombies included;
    /// after a crash here the dead containerd can stay a zombie for a while (the machine's
    /// init reaps lazily), and dockerd would then wait for it and give up. A real host's init
    /// reaps at once, so remove pidfiles whose process is dead or a zombie.
    fn clear_dead_pidfiles(&self) {
        for f in [self.containerd_pidfile(), self.dockerd_pidfile()] {
            if let Some((pid, _)) = read_pidfile(&f) {
                if !crate::proc::pid_alive(pid) {
                    let _ = fs::remove_file(&f);
                }
            }
        }
    }

    /// The pid of the running dockerd, if any.
    pub fn engine_pid(&self) -> Option<i32> {
        self.engine_pids().into_iter().next()
    }

    pub fn engine_running(&self) -> bool {
        self.engine_pid().is_some()
    }

    /// Live dockerd pids of this host: the child we spawned, and the pid in dockerd's
    /// pidfile when it is ours (its command line names this host's directory).
    fn engine_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        if let Some(child) = self
            .engine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            if child.try_wait().ok().flatten().is_none() {
                pids.push(child.id() as i32);
            }
        }
        if let Some((pid, _)) = read_pidfile(&self.dockerd_pidfile()) {
            if !pids.contains(&pid) && belongs_to_lab(pid, None, &self.dir, &[]) {
                pids.push(pid);
            }
        }
        pids
    }

    pub(crate) fn reap_engine(&self) {
        if let Some(child) = self
            .engine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            let _ = child.try_wait();
        }
    }

    /// Signal the engine (by pidfile and by our child's pid) without waiting.
    pub(crate) fn signal_engine(&self, sig: Signal) -> Vec<i32> {
        let pids = self.engine_pids();
        for p in &pids {
            let _ = signal_pid(*p, sig);
        }
        pids
    }

    /// SIGTERM dockerd, wait up to the lab's grace period for it to exit, SIGKILL it if it
    /// has not. (containerd and shims left behind by a SIGKILL are swept at lab teardown.)
    pub fn stop_engine(&self) -> Result<EngineStop> {
        let start = Instant::now();
        let pids = self.signal_engine(Signal::TERM);
        if pids.is_empty() {
            return Ok(EngineStop::NotRunning);
        }
        let left = wait_gone(&pids, self.grace, || self.reap_engine());
        if left.is_empty() {
            return Ok(EngineStop::Exited(start.elapsed()));
        }
        for p in &left {
            signal_pid(*p, Signal::KILL)?;
        }
        let still = wait_gone(&left, Duration::from_secs(10), || self.reap_engine());
        if !still.is_empty() {
            return Err(LabError::Check(format!(
                "dockerd of {} (pids {still:?}) survived SIGKILL",
                self.name
            )));
        }
        Ok(EngineStop::Killed(start.elapsed()))
    }

    /// SIGKILL dockerd (a crash). As after a real crash, the containerd it manages dies with
    /// it (dockerd starts it with a parent-death signal) and the container shims keep running;
    /// a restarted dockerd finds them, lab teardown kills them.
    pub fn kill_engine(&self) -> Result<()> {
        let containerd = read_pidfile(&self.containerd_pidfile())
            .map(|(p, _)| p)
            .filter(|p| belongs_to_lab(*p, None, &self.dir, &[]));
        let pids = self.signal_engine(Signal::KILL);
        let left = wait_gone(&pids, Duration::from_secs(10), || self.reap_engine());
        if !left.is_empty() {
            return Err(LabError::Check(format!(
                "dockerd of {} (pids {left:?}) survived SIGKILL",
                self.name
            )));
        }
        // Let containerd's parent-death signal land, so a restart right away does not find it
        // half-dead. If it outlives this (some other dockerd build), a restart adopts it.
        if let Some(c) = containerd {
            wait_gone(&[c], Duration::from_secs(5), || {});
        }
        Ok(())
    }

    /// Poll `/_ping` on the socket (capped backoff) until it answers, at most `timeout`.
    /// Fails at once, with the end of dockerd.log, if dockerd exits.
    pub fn wait_engine_ready(&self, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut backoff = Backoff::default();
        let api = self.api();
        loop {
            let exited = {
                let mut engine = self.engine.lock().unwrap_or_else(|p| p.into_inner());
                match engine.as_mut() {
                    None => Some("was never started".to_string()),
                    Some(c) => c.try_wait().ok().flatten().map(|s| format!("exited ({s})")),
                }
            };
            if let Some(why) = exited {
                return Err(LabError::Check(format!(
                    "dockerd of {} {why}; end of {}:\n{}",
                    self.name,
                    self.dockerd_log().display(),
                    tail(&self.dockerd_log(), 20)
                )));
            }
            let last = match api.ping() {
                Ok(()) => return Ok(start.elapsed()),
                Err(e) => e.to_string(),
            };
            if !backoff.sleep_until_next(deadline) {
                return Err(LabError::Timeout {
                    what: format!("the engine of {} to answer /_ping", self.name),
                    waited: start.elapsed(),
                    last: format!(
                        "{last}; end of {}:\n{}",
                        self.dockerd_log().display(),
                        tail(&self.dockerd_log(), 20)
                    ),
                });
            }
        }
    }

    fn docker_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.docker_cli);
        c.env("DOCKER_CONFIG", self.lab_root.join("docker-config"));
        for v in [
            "DOCKER_HOST",
            "DOCKER_CONTEXT",
            "DOCKER_TLS_VERIFY",
            "DOCKER_CERT_PATH",
        ] {
            c.env_remove(v);
        }
        c.arg("-H").arg(self.docker_host()).args(args);
        c
    }

    /// `docker -H unix://<sock> <args>`; a non-zero exit is an error. Returns stdout.
    /// Killed (and an error) after [`LabConfig::docker_timeout`](crate::LabConfig).
    /// Never pass a secret (join token) in `args`: use [`api`](Self::api) for those.
    pub fn docker(&self, args: &[&str]) -> Result<String> {
        self.docker_with_timeout(args, self.docker_timeout)
    }

    /// [`docker`](Self::docker) with its own timeout.
    pub fn docker_with_timeout(&self, args: &[&str], timeout: Duration) -> Result<String> {
        let mut cmd = self.docker_cmd(args);
        let out = exec(&mut cmd, None, Some(timeout))?;
        Ok(check(&cmd, out)?.stdout)
    }

    /// Like [`docker`](Self::docker) but returns the full output whatever the exit status.
    pub fn docker_output(&self, args: &[&str]) -> Result<CmdOutput> {
        exec(&mut self.docker_cmd(args), None, Some(self.docker_timeout))
    }

    /// `docker … <args>` with `input` on stdin.
    pub fn docker_stdin(&self, args: &[&str], input: &[u8]) -> Result<String> {
        let mut cmd = self.docker_cmd(args);
        let out = exec(&mut cmd, Some(input), Some(self.docker_timeout))?;
        Ok(check(&cmd, out)?.stdout)
    }

    /// `docker node ls` parsed (this host must be a manager).
    pub fn node_ls(&self) -> Result<Vec<SwarmNode>> {
        parse_node_ls(&self.docker(&["node", "ls", "--format", "{{json .}}"])?)
    }

    /// `docker info --format '{{json .Swarm}}'` parsed.
    pub fn swarm_info(&self) -> Result<SwarmInfo> {
        parse_swarm_info(&self.docker(&["info", "--format", "{{json .Swarm}}"])?)
    }

    /// `docker import <tar> <name>` on this host.
    pub fn import_image(&self, name: &str, tar: &Path) -> Result<()> {
        let tar_s = tar.to_string_lossy();
        self.docker(&["import", &tar_s, name]).map(|_| ())
    }

    /// Spawn `cmd` inside this host's network namespace, with the host's hostname (a fresh
    /// UTS namespace, like its dockerd), stdin from /dev/null and stdout+stderr appended to
    /// `<host dir>/<name>.log`. Program, arguments, environment changes and working directory
    /// of `cmd` are kept (`env_clear` is not). The lab stops the process at teardown.
    pub fn spawn_in_netns(&self, name: &str, cmd: Command) -> Result<ProcHandle> {
        if name.is_empty() || name.contains('/') {
            return Err(LabError::Check(format!(
                "process name {name:?} must be non-empty and without '/'"
            )));
        }
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        let n = procs.len();
        let stem = if procs.iter().any(|p| p.name == name) {
            format!("{name}-{n}")
        } else {
            name.to_string()
        };
        let log = self.dir.join(format!("{stem}.log"));
        let pid_dir = self.dir.join("procs");
        fs::create_dir_all(&pid_dir)
            .map_err(|e| LabError::io(format!("creating {}", pid_dir.display()), e))?;
        let pidfile = pid_dir.join(format!("{stem}.pid"));
        let (out, err) = self.log_files(&log)?;
        let mut w = Command::new("unshare");
        w.args([
            "--uts",
            "sh",
            "-c",
            UTS_WRAPPER,
            "sh",
            &self.name,
            "nsenter",
        ])
        .arg(format!("--net={}", self.netns_path().display()))
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => w.env(k, v),
                None => w.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            w.current_dir(d);
        }
        w.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = w.spawn().map_err(|e| {
            LabError::io(
                format!("spawning {name} in {}: `{}`", self.name, describe(&cmd)),
                e,
            )
        })?;
        let pid = child.id() as i32;
        write_pidfile(&pidfile, pid)?;
        let inner = Arc::new(ProcInner {
            name: format!("{}/{stem}", self.name),
            pid,
            log,
            pidfile,
            child: Mutex::new(child),
            status: Mutex::new(None),
        });
        procs.push(inner.clone());
        Ok(ProcHandle { inner })
    }

    /// Every process spawned with [`spawn_in_netns`](Self::spawn_in_netns).
    pub fn processes(&self) -> Vec<ProcHandle> {
        self.procs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|inner| ProcHandle {
                inner: inner.clone(),
            })
            .collect()
    }

    /// Stop every spawned process still running: SIGTERM, wait up to `grace`, SIGKILL.
    pub(crate) fn stop_processes(&self, grace: Duration) -> Vec<String> {
        let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut errors = Vec::new();
        let running: Vec<&Arc<ProcInner>> = procs
            .iter()
            .filter(|p| matches!(p.try_wait(), Ok(None)))
            .collect();
        for p in &running {
            let _ = signal_pid(p.pid, Signal::TERM);
        }
        let pids: Vec<i32> = running.iter().map(|p| p.pid).collect();
        let reap = || {
            for p in &running {
                let _ = p.try_wait();
            }
        };
        let left = wait_gone(&pids, grace, reap);
        for pid in &left {
            let _ = signal_pid(*pid, Signal::KILL);
        }
        let still = wait_gone(&left, Duration::from_secs(10), reap);
        for pid in still {
            errors.push(format!("process {pid} of {} survived SIGKILL", self.name));
        }
        errors
    }
}

/// The last `n` lines of a file (empty if unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let Ok(b) = fs::read(path) else {
        return String::new();
    };
    let s = String::from_utf8_lossy(&b);
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
