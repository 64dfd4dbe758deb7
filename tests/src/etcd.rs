//! A real 3-member etcd cluster (Debian `etcd-server`, `/usr/bin/etcd`) on the lab's network:
//! each member in its own network namespace wired to the lab bridge (198.18.<k>.201–.203, no
//! dockerd there), so the agents' hosts reach the members at lab addresses and one member can
//! be partitioned away from everything in its own namespace.
//!
//! TLS for clients and peers with client certificates required (a CA and certificates made
//! here with rcgen), etcd auth on: `root` (the harness's own calls, by its client certificate's
//! CN), and per swarmstrap cluster the roles of the manager-token split (etcd/README.md):
//! `swarmstrap-<c>-worker` (read-write on `/swarmstrap/<c>/`) and `swarmstrap-<c>-manager`
//! (that and `/swarmstrap/<c>.managers/`), with users made by [`EtcdLab::add_user`].
//!
//! The certificate code follows `etcd/src/testing.rs` (the loopback harness of the etcd crate,
//! which is async and binds loopback only); the minimum is copied here: CA, a certificate
//! signed by it, 0600 key files. Admin calls (roles, users, leader) go through `etcdctl`
//! (Debian `etcd-client`) as root by client certificate; passwords go to it on stdin, never
//! in argv.
//!
//! Members are killed by pid on drop (and listed in pidfiles under the lab root, so a crashed
//! test's members are stopped by the next lab's stale cleanup); the namespaces and veths are
//! deleted on drop (the stale cleanup removes them too: they carry the lab's name prefix).
//! Everything waits on conditions with deadlines ([`crate::wait_until`]).

use crate::cmd::{run, run_stdin, run_unchecked};
use crate::net::{self, Names};
use crate::proc::{signal_pid, write_pidfile, Signal};
use crate::{wait_for, Lab};
use anyhow::{anyhow, bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
};
use serde_json::Value;
use std::fs;
use std::io::BufRead;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Members of the lab's etcd cluster.
pub const MEMBERS: usize = 3;
/// Host numbers of the members' namespaces (addresses 198.18.<k>.201…), above any lab host.
const FIRST_MEMBER_NO: usize = 201;
/// etcd's client and peer ports (each member has its own address).
const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;
/// How long the members may take to elect a leader (also after a restart or a heal).
pub const START_DEADLINE: Duration = Duration::from_secs(60);

/// The prefix of cluster `c` (the agent's default `/swarmstrap/<c>/`).
pub fn cluster_prefix(c: &str) -> String {
    format!("/swarmstrap/{c}/")
}

/// The managers-only prefix of cluster `c` (`/swarmstrap/<c>.managers/`).
pub fn managers_prefix(c: &str) -> String {
    format!("/swarmstrap/{c}.managers/")
}

/// The role names of cluster `c`: (worker, manager).
pub fn role_names(c: &str) -> (String, String) {
    (
        format!("swarmstrap-{c}-worker"),
        format!("swarmstrap-{c}-manager"),
    )
}

/// What an agent needs to reach the lab's etcd as one user: the files its config names.
#[derive(Clone)]
pub struct EtcdCreds {
    pub user: String,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub password_file: PathBuf,
}

impl std::fmt::Debug for EtcdCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Paths only: the password and the key stay in their files.
        f.debug_struct("EtcdCreds")
            .field("user", &self.user)
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("password_file", &self.password_file)
            .finish()
    }
}

struct Member {
    name: String,
    ns: String,
    veth: String,
    addr: Ipv4Addr,
    child: Mutex<Option<Child>>,
}

/// The 3-member etcd cluster of a lab. See the module doc.
pub struct EtcdLab {
    dir: PathBuf,
    members: Vec<Member>,
    initial_cluster: String,
    /// `https://198.18.<k>.20x:2379`, one per member.
    pub endpoints: Vec<String>,
    pub ca_file: PathBuf,
    /// The client certificate every agent presents (its CN is no etcd user: agents log in with
    /// a user and password).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    root_cert: PathBuf,
    root_key: PathBuf,
    partitioned: Mutex<Vec<usize>>,
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    fs::write(path, data).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 600 {}", path.display()))
}

fn new_ca() -> Result<(String, Issuer<'static, KeyPair>)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "swarmstrap lab etcd CA");
    params.distinguished_name = dn;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

/// A certificate for `cn` with `sans` (IP addresses or names) signed by `issuer`: PEM
/// certificate, PEM key.
fn issue(cn: &str, sans: &[String], issuer: &Issuer<'_, KeyPair>) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn random_hex() -> String {
    (0..16)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

impl EtcdLab {
    /// Create the members' namespaces on `lab`'s bridge, the certificates, start the members,
    /// wait for a leader, and turn auth on (root only; add roles and users afterwards).
    pub fn start(lab: &Lab) -> Result<EtcdLab> {
        if lab.hosts().len() >= FIRST_MEMBER_NO {
            bail!(
                "the lab's etcd members use host numbers {FIRST_MEMBER_NO}+: a lab with etcd has \
                 at most {} hosts",
                FIRST_MEMBER_NO - 1
            );
        }
        let dir = lab.root().join("etcd");
        fs::create_dir_all(dir.join("procs"))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        let names = Names {
            id: lab.id().to_string(),
        };
        let members: Vec<Member> = (0..MEMBERS)
            .map(|i| {
                let no = FIRST_MEMBER_NO + i;
                Member {
                    name: format!("etcd{}", i + 1),
                    ns: names.netns(no),
                    veth: names.veth(no),
                    addr: net::lab_addr(lab.subnet(), no as u8),
                    child: Mutex::new(None),
                }
            })
            .collect();
        let p = |n: &str| dir.join(n);
        let (ca_pem, issuer) = new_ca()?;
        fs::write(p("ca.pem"), ca_pem)?;
        let mut sans: Vec<String> = members.iter().map(|m| m.addr.to_string()).collect();
        sans.push("127.0.0.1".into());
        let (c, k) = issue("etcd-member", &sans, &issuer)?;
        fs::write(p("member.pem"), c)?;
        write_private(&p("member-key.pem"), k.as_bytes())?;
        let (c, k) = issue("root", &[], &issuer)?;
        fs::write(p("root.pem"), c)?;
        write_private(&p("root-key.pem"), k.as_bytes())?;
        let (c, k) = issue("swarmstrap-agent", &[], &issuer)?;
        fs::write(p("client.pem"), c)?;
        write_private(&p("client-key.pem"), k.as_bytes())?;
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=https://{}:{PEER_PORT}", m.name, m.addr))
            .collect::<Vec<_>>()
            .join(",");
        let e = EtcdLab {
            endpoints: members
                .iter()
                .map(|m| format!("https://{}:{CLIENT_PORT}", m.addr))
                .collect(),
            members,
            initial_cluster,
            ca_file: p("ca.pem"),
            client_cert: p("client.pem"),
            client_key: p("client-key.pem"),
            root_cert: p("root.pem"),
            root_key: p("root-key.pem"),
            partitioned: Mutex::new(Vec::new()),
            dir,
        };
        // From here on, an error drops `e`, which stops what started and removes the
        // namespaces.
        let bridge = lab.bridge();
        for m in &e.members {
            net::create_host_netns(&m.ns, &m.veth, &bridge, m.addr, lab.bridge_addr())?;
        }
        for i in 0..MEMBERS {
            e.spawn_member(i)?;
        }
        e.wait_healthy(START_DEADLINE)?;
        e.set_up_auth()?;
        Ok(e)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The address member `i` listens on (clients and peers).
    pub fn member_addr(&self, i: usize) -> Ipv4Addr {
        self.members[i].addr
    }

    fn member_log(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.log", self.members[i].name))
    }

    fn pidfile(&self, i: usize) -> PathBuf {
        self.dir
            .join("procs")
            .join(format!("{}.pid", self.members[i].name))
    }

    /// Start member `i` in its namespace (`nsenter` execs etcd: the pid is etcd's). With its
    /// data dir already there (a restart), etcd ignores the initial-cluster flags.
    fn spawn_member(&self, i: usize) -> Result<()> {
        let m = &self.members[i];
        let s = |n: &str| self.dir.join(n).display().to_string();
        let client_url = format!("https://{}:{CLIENT_PORT}", m.addr);
        let peer_url = format!("https://{}:{PEER_PORT}", m.addr);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.member_log(i))?;
        let mut cmd = Command::new("nsenter");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg(format!("--net={}", net::netns_path(&m.ns).display()))
            .args(["--", "etcd", "--name", &m.name])
            .args(["--data-dir", &s(&format!("{}.data", m.name))])
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "swarmstrap-lab"])
            .args(["--cert-file", &s("member.pem")])
            .args(["--key-file", &s("member-key.pem")])
            .args(["--trusted-ca-file", &s("ca.pem"), "--client-cert-auth"])
            .args(["--peer-cert-file", &s("member.pem")])
            .args(["--peer-key-file", &s("member-key.pem")])
            .args(["--peer-trusted-ca-file", &s("ca.pem")])
            .arg("--peer-client-cert-auth")
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd
            .spawn()
            .context("starting etcd (apt-get install etcd-server)")?;
        write_pidfile(&self.pidfile(i), child.id() as i32)?;
        *m.child.lock().unwrap() = Some(child);
        Ok(())
    }

    /// Whether member `i` runs (started and not killed; it may have exited on its own).
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i]
            .child
            .lock()
            .unwrap()
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL member `i` by its pid and reap it.
    pub fn kill_member(&self, i: usize) -> Result<()> {
        if let Some(mut c) = self.members[i].child.lock().unwrap().take() {
            // (It may have exited on its own: then only the reaping is left.)
            let _ = signal_pid(c.id() as i32, Signal::KILL);
            c.wait()?;
        }
        let _ = fs::remove_file(self.pidfile(i));
        Ok(())
    }

    /// Start a killed member again (same data dir) and wait until all running members answer
    /// with one leader.
    pub fn restart_member(&self, i: usize) -> Result<()> {
        if self.is_running(i) {
            bail!(
                "etcd member {} is running: kill it first",
                self.members[i].name
            );
        }
        self.spawn_member(i)?;
        self.wait_healthy(START_DEADLINE).map(|_| ())
    }

    /// `etcdctl` as root (by its client certificate) against `endpoints`.
    fn etcdctl(&self, endpoints: &[String]) -> Command {
        let mut c = Command::new("etcdctl");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCDCTL_") {
                c.env_remove(k);
            }
        }
        c.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg(format!("--cacert={}", self.ca_file.display()))
            .arg(format!("--cert={}", self.root_cert.display()))
            .arg(format!("--key={}", self.root_key.display()))
            .arg("--dial-timeout=2s")
            .arg("--command-timeout=5s");
        c
    }

    /// Members that should answer: running and not partitioned away.
    fn reachable(&self) -> Vec<usize> {
        let cut = self.partitioned.lock().unwrap().clone();
        (0..MEMBERS)
            .filter(|i| self.is_running(*i) && !cut.contains(i))
            .collect()
    }

    /// `endpoint status` of member `i`: (its member id, the leader it knows).
    fn status_of(&self, i: usize) -> Result<(u64, u64)> {
        let out = run(self
            .etcdctl(&self.endpoints[i..=i])
            .args(["endpoint", "status", "-w", "json"]))?;
        let v: Value = serde_json::from_str(&out.stdout)
            .with_context(|| format!("etcdctl endpoint status printed {:?}", out.stdout))?;
        let st = &v[0]["Status"];
        let id = st["header"]["member_id"].as_u64();
        let leader = st["leader"].as_u64();
        match (id, leader) {
            (Some(id), Some(l)) if l != 0 => Ok((id, l)),
            _ => bail!("{} has no leader: {st}", self.endpoints[i]),
        }
    }

    /// Wait until every reachable member answers and they agree on a leader that is one of
    /// them. Returns the leader's index.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<usize> {
        let r = wait_for(timeout, "the etcd members to agree on a leader", || {
            let want = self.reachable();
            let mut ids = Vec::new();
            let mut leaders = Vec::new();
            for &i in &want {
                match self.status_of(i) {
                    Ok((id, l)) => {
                        ids.push((i, id));
                        leaders.push(l);
                    }
                    Err(e) => return Ok(Err(format!("{}: {e:#}", self.members[i].name))),
                }
            }
            leaders.dedup();
            if leaders.len() != 1 {
                return Ok(Err(format!("leaders differ: {leaders:?}")));
            }
            match ids.iter().find(|(_, id)| *id == leaders[0]) {
                Some((i, _)) => Ok(Ok(*i)),
                None => Ok(Err(format!(
                    "the leader {:x} is not a reachable member",
                    leaders[0]
                ))),
            }
        });
        r.map_err(|e| anyhow!("{e}\n{}", self.log_tails()))
    }

    /// The index of the current leader (among the reachable members).
    pub fn leader(&self) -> Result<usize> {
        self.wait_healthy(START_DEADLINE)
    }

    /// Root user (random password, never used: root authenticates by certificate), auth on.
    fn set_up_auth(&self) -> Result<()> {
        let ep = &self.endpoints;
        run_stdin(
            self.etcdctl(ep)
                .args(["user", "add", "root", "--interactive=false"]),
            format!("{}\n", random_hex()).as_bytes(),
        )?;
        run(self
            .etcdctl(ep)
            .args(["user", "grant-role", "root", "root"]))?;
        run(self.etcdctl(ep).args(["auth", "enable"]))?;
        Ok(())
    }

    /// A role granting read-write on each of `prefixes` (prefix permissions).
    pub fn add_role(&self, role: &str, prefixes: &[String]) -> Result<()> {
        let ep = &self.endpoints;
        run(self.etcdctl(ep).args(["role", "add", role]))?;
        for p in prefixes {
            run(self.etcdctl(ep).args([
                "role",
                "grant-permission",
                "--prefix=true",
                role,
                "readwrite",
                p,
            ]))?;
        }
        Ok(())
    }

    /// The two roles of cluster `c` (see the module doc): (worker role, manager role).
    pub fn add_cluster_roles(&self, c: &str) -> Result<(String, String)> {
        let (worker, manager) = role_names(c);
        self.add_role(&worker, &[cluster_prefix(c)])?;
        self.add_role(&manager, &[cluster_prefix(c), managers_prefix(c)])?;
        Ok((worker, manager))
    }

    /// A user with `roles` and a random password (given to etcdctl on stdin): the credentials
    /// an agent uses, with the lab's agent client certificate.
    pub fn add_user(&self, user: &str, roles: &[&str]) -> Result<EtcdCreds> {
        let ep = &self.endpoints;
        let password = random_hex();
        run_stdin(
            self.etcdctl(ep)
                .args(["user", "add", user, "--interactive=false"]),
            format!("{password}\n").as_bytes(),
        )?;
        for r in roles {
            run(self.etcdctl(ep).args(["user", "grant-role", user, r]))?;
        }
        let password_file = self.dir.join(format!("{user}.password"));
        write_private(&password_file, format!("{password}\n").as_bytes())?;
        Ok(EtcdCreds {
            user: user.to_string(),
            ca_file: self.ca_file.clone(),
            cert_file: self.client_cert.clone(),
            key_file: self.client_key.clone(),
            password_file,
        })
    }

    /// The passwords of every user [`EtcdLab::add_user`] made (for the leak checks of logs).
    pub fn passwords(&self) -> Result<Vec<String>> {
        let mut v = Vec::new();
        for e in fs::read_dir(&self.dir)?.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "password") {
                v.push(fs::read_to_string(&p)?.trim().to_string());
            }
        }
        Ok(v)
    }

    /// The base64 lines of every client key made here (the agents' and the foreign one), for
    /// the leak checks of logs.
    pub fn key_lines(&self) -> Result<Vec<String>> {
        let mut v = Vec::new();
        for f in [&self.client_key, &self.dir.join("foreign-client-key.pem")] {
            if let Ok(text) = fs::read_to_string(f) {
                v.extend(
                    text.lines()
                        .filter(|l| !l.starts_with("-----") && l.len() >= 40)
                        .map(str::to_string),
                );
            }
        }
        Ok(v)
    }

    /// `creds` with a client certificate signed by another CA (same CN): what a node
    /// configured with the wrong cluster's certificate presents.
    pub fn foreign_client_cert(&self, creds: &EtcdCreds) -> Result<EtcdCreds> {
        let (_, other) = new_ca()?;
        let (c, k) = issue("swarmstrap-agent", &[], &other)?;
        let cert_file = self.dir.join("foreign-client.pem");
        let key_file = self.dir.join("foreign-client-key.pem");
        fs::write(&cert_file, c)?;
        write_private(&key_file, k.as_bytes())?;
        Ok(EtcdCreds {
            cert_file,
            key_file,
            ..creds.clone()
        })
    }

    /// The value of `key` (root's view), `None` when absent. For tests that look at what the
    /// backend stored; the value may hold join tokens: do not print it.
    pub fn get(&self, key: &str) -> Result<Option<String>> {
        let out = run(self
            .etcdctl(&self.endpoints)
            .args(["get", key, "--print-value-only"]))?;
        let v = out.stdout.trim_end_matches('\n');
        Ok((!v.is_empty()).then(|| v.to_string()))
    }

    /// Every key under `prefix` (root's view).
    pub fn keys(&self, prefix: &str) -> Result<Vec<String>> {
        let out =
            run(self
                .etcdctl(&self.endpoints)
                .args(["get", prefix, "--prefix", "--keys-only"]))?;
        Ok(out
            .stdout
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Watch `key` (an etcd watch through `etcdctl watch`, root's view) and return once a
    /// value put there satisfies `pred`, or fail at `timeout`. The watch starts before this
    /// returns the [`KeyWatch`]; call [`KeyWatch::wait`] to block.
    pub fn watch(&self, key: &str) -> Result<KeyWatch> {
        let mut child = self
            .etcdctl(&self.endpoints)
            .args(["watch", key])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting etcdctl watch")?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(KeyWatch { child, lines: rx })
    }

    /// Drop all traffic of member `i` in its namespace (iptables INPUT/OUTPUT on its `eth0`):
    /// it can reach neither its peers nor the agents, and they cannot reach it. Undone by
    /// [`EtcdLab::heal`] or on drop (the namespace goes).
    pub fn partition(&self, i: usize) -> Result<()> {
        for args in [
            ["-I", "INPUT", "-i", "eth0", "-j", "DROP"],
            ["-I", "OUTPUT", "-o", "eth0", "-j", "DROP"],
        ] {
            run(self
                .in_member_ns(i, "iptables")
                .args(["-w", "30"])
                .args(args))?;
        }
        self.partitioned.lock().unwrap().push(i);
        Ok(())
    }

    /// Undo every [`EtcdLab::partition`] and wait until all running members agree on a
    /// leader.
    pub fn heal(&self) -> Result<()> {
        let cut: Vec<usize> = std::mem::take(&mut *self.partitioned.lock().unwrap());
        for i in cut {
            for args in [
                ["-D", "INPUT", "-i", "eth0", "-j", "DROP"],
                ["-D", "OUTPUT", "-o", "eth0", "-j", "DROP"],
            ] {
                run(self
                    .in_member_ns(i, "iptables")
                    .args(["-w", "30"])
                    .args(args))?;
            }
        }
        self.wait_healthy(START_DEADLINE).map(|_| ())
    }

    fn in_member_ns(&self, i: usize, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!(
            "--net={}",
            net::netns_path(&self.members[i].ns).display()
        ))
        .args(["--", program]);
        c
    }

    /// The last lines of every member's log, for failure messages.
    pub fn log_tails(&self) -> String {
        (0..MEMBERS)
            .map(|i| {
                format!(
                    "--- {} log (tail)\n{}",
                    self.members[i].name,
                    crate::host::tail(&self.member_log(i), 8)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for EtcdLab {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            let _ = self.kill_member(i);
        }
        for m in &self.members {
            // Deleting the namespace deletes its end of the veth pair, and with it the pair.
            let _ = net::delete_netns(&m.ns);
            let _ = net::delete_link(&m.veth);
        }
    }
}

/// An `etcdctl watch` of one key, started by [`EtcdLab::watch`]; killed by pid on drop.
pub struct KeyWatch {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl KeyWatch {
    /// Block until a value put to the key satisfies `pred` (`etcdctl watch` prints the event
    /// type, the key and the value, one per line; values here are one-line JSON), at most
    /// `timeout`.
    pub fn wait(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if pred(&line) => return Ok(()),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("watching for {what}: not seen within {timeout:?}")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let st = self.child.try_wait().ok().flatten();
                    bail!("watching for {what}: etcdctl watch ended ({st:?})")
                }
            }
        }
    }
}

impl Drop for KeyWatch {
    fn drop(&mut self) {
        let _ = signal_pid(self.child.id() as i32, Signal::KILL);
        let _ = self.child.wait();
    }
}

/// `etcdctl` is the harness's admin client: fail early with the package to install.
pub fn preflight() -> Result<()> {
    for (bin, pkg) in [("etcd", "etcd-server"), ("etcdctl", "etcd-client")] {
        if crate::cmd::which(bin).is_none() {
            bail!("{bin} is missing: apt-get install -y {pkg}");
        }
    }
    let _ = run_unchecked(Command::new("etcd").arg("--version"))?;
    Ok(())
}
