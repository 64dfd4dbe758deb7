//! [`Lab`]: N hosts on one bridge, created by [`Lab::start`] and torn down on drop (also when
//! a test panics).

use crate::cmd::which;
use crate::error::{LabError, Result};
use crate::host::{tail, Host};
use crate::image::{build_tar, busybox_entries, single_binary_entries, TarEntry};
use crate::lock::LabLock;
use crate::net::{self, lab_addr, Names, PREFIX};
use crate::proc::{
    all_pids, belongs_to_lab, cmdline, netns_inode as pid_netns, read_pidfile, signal_pid,
    wait_gone, Signal,
};
use crate::stale::{cleanup_stale_locked, lab_pidfiles};
use rand::Rng;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Set to `1` to keep the lab directory (logs, engine state) after teardown.
pub const KEEP_ENV: &str = "SWARMSTRAP_LAB_KEEP";
/// Overrides the docker CLI used by [`Host::docker`] (default: `docker` on PATH).
pub const DOCKER_CLI_ENV: &str = "SWARMSTRAP_DOCKER_CLI";
/// Marker file left in a kept lab directory; [`cleanup_stale`](crate::cleanup_stale) does
/// not delete directories that have it.
pub const KEEP_MARKER: &str = "KEPT";

#[derive(Debug, Clone)]
pub struct LabConfig {
    /// Number of hosts (1..=250): `node1` … `nodeN` at 198.18.<subnet>.1 … .N.
    pub hosts: usize,
    /// Start every host's dockerd in [`Lab::start`] and wait until all answer `/_ping`.
    pub start_engines: bool,
    /// Hostname prefix (default `node`).
    pub host_prefix: String,
    /// How long to wait for engines to answer `/_ping`.
    pub engine_timeout: Duration,
    /// How long a SIGTERMed dockerd or spawned process gets before SIGKILL.
    pub stop_grace: Duration,
    /// How long to wait for another lab (this or another process) to finish.
    pub lock_timeout: Duration,
    /// Extra dockerd arguments for every host.
    pub dockerd_args: Vec<String>,
    /// Longest a [`Host::docker`] CLI call may take before it is killed.
    pub docker_timeout: Duration,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            hosts: 3,
            start_engines: true,
            host_prefix: "node".into(),
            engine_timeout: Duration::from_secs(60),
            stop_grace: Duration::from_secs(20),
            lock_timeout: Duration::from_secs(30 * 60),
            dockerd_args: Vec::new(),
            docker_timeout: Duration::from_secs(120),
        }
    }
}

impl LabConfig {
    /// `hosts` hosts, engines started.
    pub fn new(hosts: usize) -> Self {
        LabConfig {
            hosts,
            ..LabConfig::default()
        }
    }

    /// `hosts` hosts, no engine started yet.
    pub fn without_engines(hosts: usize) -> Self {
        LabConfig {
            hosts,
            start_engines: false,
            ..LabConfig::default()
        }
    }
}

/// Everything a lab created, to check after teardown that nothing is left. `Send + Clone`, so
/// a test can keep it while the lab lives (and dies) in another thread.
#[derive(Debug, Clone)]
pub struct LabTraces {
    pub id: String,
    pub root: PathBuf,
    pub bridge: String,
    pub veths: Vec<String>,
    pub netns: Vec<String>,
    pub netns_inodes: Vec<u64>,
    pub keep: bool,
}

impl LabTraces {
    /// The traces of a lab known only by its id and host count (e.g. one that a crashed
    /// process left). Namespace inodes are read now, so call this while they exist.
    pub fn of(id: &str, hosts: usize) -> LabTraces {
        let names = Names { id: id.into() };
        let netns: Vec<String> = (1..=hosts).map(|i| names.netns(i)).collect();
        LabTraces {
            id: id.into(),
            root: names.root(),
            bridge: names.bridge(),
            veths: (1..=hosts).map(|i| names.veth(i)).collect(),
            netns_inodes: netns.iter().filter_map(|n| net::netns_inode(n)).collect(),
            netns,
            keep: false,
        }
    }

    /// What is still there: namespaces, links, processes (in a lab namespace or naming the
    /// lab root), mounts, the iptables rules, and the lab directory (unless kept).
    pub fn leftovers(&self) -> Vec<String> {
        let mut v = Vec::new();
        for ns in &self.netns {
            if net::netns_path(ns).exists() {
                v.push(format!("network namespace {ns}"));
            }
        }
        for l in std::iter::once(&self.bridge).chain(&self.veths) {
            if net::link_exists(l) {
                v.push(format!("link {l}"));
            }
        }
        for pid in lab_processes(&self.root, &self.netns_inodes) {
            v.push(format!(
                "process {pid} ({})",
                cmdline(pid).unwrap_or_default()
            ));
        }
        for m in net::mounts_under(&self.root) {
            v.push(format!("mount {}", m.display()));
        }
        for ns in &self.netns {
            if !net::mounts_under(&net::netns_path(ns)).is_empty() {
                v.push(format!("mount {}", net::netns_path(ns).display()));
            }
        }
        for rule in net::forward_rules_present(&self.bridge) {
            v.push(format!("iptables FORWARD rule {rule}"));
        }
        if !self.keep && self.root.exists() {
            v.push(format!("directory {}", self.root.display()));
        }
        v
    }
}

/// Live processes that belong to a lab: in one of its network namespaces, or naming its root
/// directory on their command line.
pub(crate) fn lab_processes(root: &Path, netns_inodes: &[u64]) -> Vec<i32> {
    let me = std::process::id() as i32;
    let root_s = root.to_string_lossy().into_owned();
    all_pids()
        .into_iter()
        .filter(|p| *p != me && crate::proc::pid_alive(*p))
        .filter(|p| {
            pid_netns(*p).is_some_and(|i| netns_inodes.contains(&i))
                || cmdline(*p).is_some_and(|c| c.contains(&root_s))
        })
        .collect()
}

/// What [`Lab::teardown`] did.
#[derive(Debug, Clone, Default)]
pub struct TeardownReport {
    pub took: Duration,
    /// Steps that failed, or processes that had to be killed outside the normal path.
    pub errors: Vec<String>,
    /// Objects still present afterwards (see [`LabTraces::leftovers`]).
    pub leftovers: Vec<String>,
    /// The kept lab directory, with `SWARMSTRAP_LAB_KEEP=1`.
    pub kept: Option<PathBuf>,
}

impl TeardownReport {
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty() && self.leftovers.is_empty()
    }
}

/// A running lab. Holds the machine-wide lab lock; dropping it tears everything down.
pub struct Lab {
    names: Names,
    subnet: u8,
    root: PathBuf,
    hosts: Vec<Host>,
    netns_inodes: Vec<u64>,
    keep: bool,
    config: LabConfig,
    engines_ready_in: Mutex<Option<Duration>>,
    bridge_up: bool,
    rule_added: bool,
    torn_down: bool,
    _lock: LabLock,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("id", &self.names.id)
            .field("root", &self.root)
            .field("subnet", &format!("198.18.{}.0/24", self.subnet))
            .field("hosts", &self.hosts)
            .finish()
    }
}

/// Fails with a clear message when this machine cannot run a lab.
pub fn preflight() -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        return Err(LabError::Precondition(
            "lab tests need root (network namespaces, bridges, iptables, dockerd); run them as \
             root, e.g. `sudo -E cargo test -p swarmstrap-lab`"
                .into(),
        ));
    }
    let docker_cli = docker_cli();
    let mut missing: Vec<String> = [
        "ip",
        "iptables",
        "nsenter",
        "unshare",
        "umount",
        "hostname",
        "dockerd",
        "containerd",
        "runc",
    ]
    .iter()
    .filter(|t| which(t).is_none())
    .map(|t| t.to_string())
    .collect();
    if which(&docker_cli.to_string_lossy()).is_none() {
        missing.push(format!("{} (docker CLI)", docker_cli.display()));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LabError::Precondition(format!(
            "missing tools: {}; install them with `tests/setup.sh` (as root)",
            missing.join(", ")
        )))
    }
}

fn docker_cli() -> PathBuf {
    std::env::var_os(DOCKER_CLI_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("docker"))
}

impl Lab {
    /// Create a lab: take the lab lock, clean leftovers of crashed runs, then build the
    /// bridge, the FORWARD rule, one namespace per host, and (if asked) start and wait for
    /// every engine. Anything built before a failure is torn down again.
    pub fn start(config: LabConfig) -> Result<Lab> {
        preflight()?;
        if config.hosts == 0 || config.hosts > 250 {
            return Err(LabError::Check(format!(
                "a lab has 1 to 250 hosts, not {}",
                config.hosts
            )));
        }
        let lock = LabLock::acquire(config.lock_timeout)?;
        let stale = cleanup_stale_locked();
        check_free_space(config.hosts)?;
        for r in &stale.removed {
            eprintln!("swarmstrap-lab: removed a leftover of an earlier run: {r}");
        }
        for e in &stale.errors {
            eprintln!("swarmstrap-lab: cleaning leftovers: {e}");
        }

        let mut rng = rand::rng();
        let names = loop {
            let n = Names {
                id: format!("{:04x}", rng.random::<u16>()),
            };
            if !n.root().exists() && net::links_with_prefix(&format!("{PREFIX}{}", n.id)).is_empty()
            {
                break n;
            }
        };
        let used = net::used_subnets()?;
        let free: Vec<u8> = (1..=254).filter(|k| !used.contains(k)).collect();
        if free.is_empty() {
            return Err(LabError::Check("no free 198.18.x.0/24 subnet".into()));
        }
        let subnet = free[rng.random_range(0..free.len())];
        let root = names.root();
        fs::create_dir_all(root.join("docker-config"))
            .map_err(|e| LabError::io(format!("creating {}", root.display()), e))?;
        let keep = std::env::var(KEEP_ENV).is_ok_and(|v| v == "1");
        let docker_cli = docker_cli();
        let dockerd = which("dockerd").unwrap_or_else(|| PathBuf::from("dockerd"));

        let hosts = (1..=config.hosts)
            .map(|no| Host {
                index: no - 1,
                name: format!("{}{no}", config.host_prefix),
                ns: names.netns(no),
                veth: names.veth(no),
                addr: lab_addr(subnet, no as u8),
                dir: root.join(format!("{}{no}", config.host_prefix)),
                lab_root: root.clone(),
                docker_cli: docker_cli.clone(),
                dockerd: dockerd.clone(),
                dockerd_args: config.dockerd_args.clone(),
                grace: config.stop_grace,
                docker_timeout: config.docker_timeout,
                engine: Mutex::new(None),
                procs: Mutex::new(Vec::new()),
            })
            .collect();
        let mut lab = Lab {
            names,
            subnet,
            root,
            hosts,
            netns_inodes: Vec::new(),
            keep,
            config,
            engines_ready_in: Mutex::new(None),
            bridge_up: false,
            rule_added: false,
            torn_down: false,
            _lock: lock,
        };
        // From here on, an error drops `lab`, which tears down what was built.
        lab.build_network()?;
        if lab.config.start_engines {
            lab.start_engines()?;
        }
        Ok(lab)
    }

    fn build_network(&mut self) -> Result<()> {
        let info = format!(
            "{{\"id\":\"{}\",\"subnet\":\"198.18.{}.0/24\",\"bridge\":\"{}\",\"hosts\":{}}}\n",
            self.names.id,
            self.subnet,
            self.names.bridge(),
            self.hosts.len()
        );
        let _ = fs::write(self.root.join("lab.json"), info);
        let bridge = self.names.bridge();
        self.bridge_up = true;
        net::create_bridge(&bridge, self.bridge_addr())?;
        self.rule_added = true;
        net::add_forward_rules(&bridge)?;
        for h in &self.hosts {
            fs::create_dir_all(&h.dir)
                .map_err(|e| LabError::io(format!("creating {}", h.dir.display()), e))?;
            net::create_host_netns(&h.ns, &h.veth, &bridge, h.addr, self.bridge_addr())?;
            if let Some(ino) = net::netns_inode(&h.ns) {
                self.netns_inodes.push(ino);
            }
        }
        Ok(())
    }

    /// Start every host's engine that is not running and wait until all answer `/_ping`.
    /// Returns (and remembers, see [`engines_ready_in`](Self::engines_ready_in)) the time
    /// from the first start to the last ready engine.
    pub fn start_engines(&self) -> Result<Duration> {
        let start = Instant::now();
        for h in &self.hosts {
            if !h.engine_running() {
                h.start_engine()?;
            }
        }
        self.wait_engines_ready(self.config.engine_timeout)?;
        let took = start.elapsed();
        *self
            .engines_ready_in
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(took);
        Ok(took)
    }

    /// Wait until every host's engine answers `/_ping`.
    pub fn wait_engines_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        for h in &self.hosts {
            h.wait_engine_ready(deadline.saturating_duration_since(Instant::now()))?;
        }
        Ok(())
    }

    /// How long the last [`start_engines`](Self::start_engines) took.
    pub fn engines_ready_in(&self) -> Option<Duration> {
        *self
            .engines_ready_in
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The short random id in every name of this lab.
    pub fn id(&self) -> &str {
        &self.names.id
    }

    /// `/tmp/swarmstrap-lab-<id>`
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The lab's subnet is 198.18.<this>.0/24.
    pub fn subnet(&self) -> u8 {
        self.subnet
    }

    pub fn bridge(&self) -> String {
        self.names.bridge()
    }

    /// 198.18.<subnet>.254, the root namespace's address on the lab bridge: a service
    /// listening here (e.g. a coordinator) is reachable from every host.
    pub fn bridge_addr(&self) -> Ipv4Addr {
        lab_addr(self.subnet, 254)
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host by 0-based index: `host(0)` is `node1`.
    pub fn host(&self, index: usize) -> &Host {
        &self.hosts[index]
    }

    pub fn host_by_name(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    pub fn config(&self) -> &LabConfig {
        &self.config
    }

    /// Whether the lab directory will be kept at teardown (`SWARMSTRAP_LAB_KEEP=1`).
    pub fn keeps_logs(&self) -> bool {
        self.keep
    }

    pub fn traces(&self) -> LabTraces {
        LabTraces {
            id: self.names.id.clone(),
            root: self.root.clone(),
            bridge: self.names.bridge(),
            veths: self.hosts.iter().map(|h| h.veth.clone()).collect(),
            netns: self.hosts.iter().map(|h| h.ns.clone()).collect(),
            netns_inodes: self.netns_inodes.clone(),
            keep: self.keep,
        }
    }

    /// Write `<lab root>/images/<file_name>` from `entries` and return its path.
    pub fn build_image_tar(&self, file_name: &str, entries: &[TarEntry]) -> Result<PathBuf> {
        let dir = self.root.join("images");
        fs::create_dir_all(&dir)
            .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
        let out = dir.join(file_name);
        build_tar(&out, entries)?;
        Ok(out)
    }

    /// `docker import <tar> <name>` on `host`.
    pub fn import_image(&self, host: &Host, name: &str, tar: &Path) -> Result<()> {
        host.import_image(name, tar)
    }

    /// Import `tar` as `name` on every host whose engine runs, in parallel.
    pub fn import_image_everywhere(&self, name: &str, tar: &Path) -> Result<()> {
        std::thread::scope(|s| {
            let jobs: Vec<_> = self
                .hosts
                .iter()
                .filter(|h| h.engine_running())
                .map(|h| s.spawn(move || h.import_image(name, tar)))
                .collect();
            jobs.into_iter()
                .try_for_each(|j| j.join().expect("import thread panicked"))
        })
    }

    /// A busybox image (`/bin/busybox` + sh, httpd, hostname, …; see
    /// [`BUSYBOX_APPLETS`](crate::image::BUSYBOX_APPLETS)) imported as `name` on every host
    /// whose engine runs.
    pub fn import_busybox(&self, name: &str) -> Result<()> {
        let tar = self.build_image_tar(&format!("{}.tar", file_stem(name)), &busybox_entries()?)?;
        self.import_image_everywhere(name, &tar)
    }

    /// An image holding only `bin` at `path_in_image`, imported as `name` on every host whose
    /// engine runs. A container of it can run only if `bin` is static.
    pub fn import_single_binary(&self, name: &str, bin: &Path, path_in_image: &str) -> Result<()> {
        let tar = self.build_image_tar(
            &format!("{}.tar", file_stem(name)),
            &single_binary_entries(bin, path_in_image),
        )?;
        self.import_image_everywhere(name, &tar)
    }

    /// Tear the lab down now and report what was left. Dropping a lab does the same (and
    /// prints the report's problems); call this to assert a clean teardown.
    pub fn teardown(mut self) -> Result<TeardownReport> {
        let r = self.teardown_inner();
        if r.is_clean() {
            Ok(r)
        } else {
            Err(LabError::Check(format!(
                "lab {} teardown was not clean: errors {:?}; leftovers {:?}",
                self.names.id, r.errors, r.leftovers
            )))
        }
    }

    fn print_logs_on_failure(&self) {
        eprintln!(
            "swarmstrap-lab: lab {} is being torn down during a panic; logs in {}{}",
            self.names.id,
            self.root.display(),
            if self.keep {
                " (kept)"
            } else {
                " (deleted after this; set SWARMSTRAP_LAB_KEEP=1 to keep them)"
            }
        );
        for h in &self.hosts {
            let log = h.dockerd_log();
            if log.exists() {
                eprintln!("--- {} (last lines) ---\n{}", log.display(), tail(&log, 15));
            }
            for p in h.processes() {
                eprintln!(
                    "--- {} (last lines) ---\n{}",
                    p.log_path().display(),
                    tail(p.log_path(), 30)
                );
            }
        }
    }

    fn teardown_inner(&mut self) -> TeardownReport {
        if self.torn_down {
            return TeardownReport::default();
        }
        self.torn_down = true;
        let start = Instant::now();
        if std::thread::panicking() {
            self.print_logs_on_failure();
        }
        let mut errors = Vec::new();

        // 1. Processes spawned in the namespaces.
        for h in &self.hosts {
            errors.extend(h.stop_processes(Duration::from_secs(5)));
        }

        // 2. Engines: SIGTERM all at once, wait (a swarm engine takes a few seconds), SIGKILL.
        let mut pids = Vec::new();
        for h in &self.hosts {
            pids.extend(h.signal_engine(Signal::TERM));
        }
        let reap_all = || {
            for h in &self.hosts {
                h.reap_engine();
            }
        };
        let left = wait_gone(&pids, self.config.stop_grace, reap_all);
        if !left.is_empty() {
            errors.push(format!(
                "dockerd pids {left:?} did not exit within {:?} of SIGTERM; SIGKILLed",
                self.config.stop_grace
            ));
            for p in &left {
                let _ = signal_pid(*p, Signal::KILL);
            }
            let still = wait_gone(&left, Duration::from_secs(10), reap_all);
            if !still.is_empty() {
                errors.push(format!("dockerd pids {still:?} survived SIGKILL"));
            }
        }

        // 3. What the engines left (containerd, shims, container processes after a SIGKILL),
        //    by the pidfiles under the lab root.
        let swept: Vec<i32> = lab_pidfiles(&self.root)
            .into_iter()
            .filter_map(|f| read_pidfile(&f))
            .filter(|(pid, st)| belongs_to_lab(*pid, *st, &self.root, &self.netns_inodes))
            .map(|(pid, _)| pid)
            .collect();
        for p in &swept {
            let _ = signal_pid(*p, Signal::KILL);
        }
        let still = wait_gone(&swept, Duration::from_secs(10), || {});
        if !still.is_empty() {
            errors.push(format!("pids {still:?} from lab pidfiles survived SIGKILL"));
        }

        // 4. Anything else still in a lab namespace is ours too, but should not exist: kill
        //    and report it.
        let strays = lab_processes(&self.root, &self.netns_inodes);
        if !strays.is_empty() {
            for p in &strays {
                errors.push(format!(
                    "killed stray lab process {p} ({})",
                    cmdline(*p).unwrap_or_default()
                ));
                let _ = signal_pid(*p, Signal::KILL);
            }
            wait_gone(&strays, Duration::from_secs(10), || {});
        }

        // 5. Mounts (overlay, docker's netns files, ...) under the lab root.
        let mounts = net::unmount_all_under(&self.root);
        if !mounts.is_empty() {
            errors.push(format!("could not unmount {mounts:?}"));
        }

        // 6. Namespaces, veths, bridge, FORWARD rule.
        for h in &self.hosts {
            if let Err(e) = net::delete_netns(&h.ns) {
                errors.push(e.to_string());
            }
            if let Err(e) = net::delete_link(&h.veth) {
                errors.push(e.to_string());
            }
        }
        if self.bridge_up {
            if let Err(e) = net::delete_link(&self.names.bridge()) {
                errors.push(e.to_string());
            }
        }
        if self.rule_added {
            if let Err(e) = net::remove_forward_rules(&self.names.bridge()) {
                errors.push(e.to_string());
            }
        }

        // 7. The directory.
        let mut kept = None;
        if self.keep {
            let _ = fs::write(
                self.root.join(KEEP_MARKER),
                "kept by SWARMSTRAP_LAB_KEEP=1\n",
            );
            eprintln!(
                "swarmstrap-lab: kept lab {} logs and state in {}",
                self.names.id,
                self.root.display()
            );
            kept = Some(self.root.clone());
        } else if self.root.exists() {
            if let Err(e) = fs::remove_dir_all(&self.root) {
                errors.push(format!("removing {}: {e}", self.root.display()));
            }
        }
        let leftovers = self.traces().leftovers();
        TeardownReport {
            took: start.elapsed(),
            errors,
            leftovers,
            kept,
        }
    }
}

/// Each host's engine keeps its own image store and, on a manager, raft's write-ahead log
/// (64 MiB segments, preallocated). A lab on a nearly full disk fails deep inside dockerd
/// ("failed to create WAL: no space left on device"); refuse up front instead, saying why.
const LAB_BYTES_PER_HOST: u64 = 256 << 20;

fn check_free_space(hosts: usize) -> Result<()> {
    let dir = Path::new("/tmp");
    let st = rustix::fs::statvfs(dir)
        .map_err(|e| LabError::io(format!("statvfs {}", dir.display()), e.into()))?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    let need = LAB_BYTES_PER_HOST * hosts as u64 + (512 << 20);
    if free < need {
        return Err(LabError::Check(format!(
            "{} has {} MiB free; a {hosts}-host lab needs about {} MiB (engines' image stores \
             and raft logs). Free disk space (old target/ directories, leftover \
             /tmp/swarmstrap-lab-* of runs with SWARMSTRAP_LAB_KEEP=1) and run again",
            dir.display(),
            free >> 20,
            need >> 20
        )));
    }
    Ok(())
}

fn file_stem(image: &str) -> String {
    image
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Drop for Lab {
    fn drop(&mut self) {
        let r = self.teardown_inner();
        if !r.is_clean() {
            eprintln!(
                "swarmstrap-lab: lab {} teardown problems: errors {:?}; leftovers {:?}",
                self.names.id, r.errors, r.leftovers
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lab_is_send_and_sync() {
        fn f<T: Send + Sync>() {}
        f::<super::Lab>();
        f::<super::LabTraces>();
        f::<crate::ProcHandle>();
    }
}
