//! Test support (feature `testing`): a real 3-member etcd cluster (Debian `etcd-server`) as
//! child processes on free loopback ports, with TLS everywhere (client and peer traffic, client
//! certificates required) and etcd auth on: a `root` user, a role `swarmstrap` granting
//! read-write on [`PREFIX_ROOT`] only, and a user `swarmstrap` with that role (the one the
//! backends use). Certificates come from a CA made here with rcgen; data, certificates and the
//! password file live in a temp dir removed on drop; each member is killed by its pid on drop.

use crate::{EtcdConfig, EtcdRendezvous};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, Permission, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Every test cluster lives under this prefix; the test user may touch nothing else.
pub const PREFIX_ROOT: &str = "/swarmstrap/";

/// The etcd user (and client certificate CN) the backends use.
pub const USER: &str = "swarmstrap";

/// How long the members may take to elect a leader and answer.
const START_DEADLINE: Duration = Duration::from_secs(60);

const MEMBERS: usize = 3;

pub struct EtcdCluster {
    dir: tempfile::TempDir,
    children: Vec<Child>,
    pub endpoints: Vec<String>,
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub password_file: PathBuf,
    root_cert: PathBuf,
    root_key: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("pick a free loopback port")
        .port()
}

fn write_private(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// A certificate for `cn` (and loopback names) signed by `issuer`: PEM cert, PEM key.
fn issue(cn: &str, issuer: &Issuer<'_, KeyPair>) -> (String, String) {
    let key = KeyPair::generate().expect("generate a key");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("certificate params");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    let cert = params.signed_by(&key, issuer).expect("sign a certificate");
    (cert.pem(), key.serialize_pem())
}

fn random_hex() -> String {
    (0..16)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

impl EtcdCluster {
    /// Start the members, wait until the cluster answers, set up auth. Panics (with the
    /// members' log tails) when etcd is missing or does not come up.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = |n: &str| dir.path().join(n);

        let ca_key = KeyPair::generate().expect("generate the CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign the CA");
        let issuer = Issuer::new(ca_params, ca_key);
        std::fs::write(p("ca.pem"), ca_cert.pem()).expect("write the CA");
        let (server_cert, server_key) = issue("etcd-member", &issuer);
        std::fs::write(p("server.pem"), server_cert).expect("write the member cert");
        write_private(&p("server-key.pem"), server_key.as_bytes());
        let (c, k) = issue(USER, &issuer);
        std::fs::write(p("client.pem"), c).expect("write the client cert");
        write_private(&p("client-key.pem"), k.as_bytes());
        let (c, k) = issue("root", &issuer);
        std::fs::write(p("root.pem"), c).expect("write the root cert");
        write_private(&p("root-key.pem"), k.as_bytes());
        let password = random_hex();
        write_private(&p("password"), format!("{password}\n").as_bytes());

        let ports: Vec<(u16, u16)> = (0..MEMBERS).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=https://127.0.0.1:{peer}"))
            .collect();
        let initial = initial.join(",");
        let mut children = Vec::new();
        let mut endpoints = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let client_url = format!("https://127.0.0.1:{client}");
            let peer_url = format!("https://127.0.0.1:{peer}");
            let s = |n: &str| p(n).display().to_string();
            let mut cmd = Command::new("etcd");
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("ETCD_") {
                    cmd.env_remove(k);
                }
            }
            cmd.args(["--name", &format!("m{i}")])
                .args(["--data-dir", &s(&format!("m{i}.etcd"))])
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "swarmstrap-test"])
                .args([
                    "--cert-file",
                    &s("server.pem"),
                    "--key-file",
                    &s("server-key.pem"),
                ])
                .args(["--trusted-ca-file", &s("ca.pem"), "--client-cert-auth"])
                .args(["--peer-cert-file", &s("server.pem")])
                .args(["--peer-key-file", &s("server-key.pem")])
                .args([
                    "--peer-trusted-ca-file",
                    &s("ca.pem"),
                    "--peer-client-cert-auth",
                ])
                .args(["--logger", "zap", "--log-outputs", "stderr"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(
                    std::fs::File::create(p(&format!("m{i}.log"))).expect("create the member log"),
                );
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start etcd (apt-get install etcd-server): {e}"));
            children.push(child);
            endpoints.push(client_url);
        }
        let cluster = EtcdCluster {
            ca_file: p("ca.pem"),
            cert_file: p("client.pem"),
            key_file: p("client-key.pem"),
            password_file: p("password"),
            root_cert: p("root.pem"),
            root_key: p("root-key.pem"),
            endpoints,
            children,
            dir,
        };
        cluster.set_up_auth(&password).await;
        cluster
    }

    fn log_tails(&self) -> String {
        (0..MEMBERS)
            .map(|i| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("m{i}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                format!(
                    "--- m{i}:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn tls(&self, cert: &Path, key: &Path) -> TlsOptions {
        let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca_file)))
            .identity(Identity::from_pem(read(cert), read(key)))
    }

    /// A client as etcd's `root` (by its client certificate; before auth is on, anyone).
    pub async fn root_client(&self) -> Client {
        let opts = ConnectOptions::new()
            .with_tls(self.tls(&self.root_cert, &self.root_key))
            .with_timeout(Duration::from_secs(5));
        Client::connect(&self.endpoints, Some(opts))
            .await
            .expect("connect to etcd as root")
    }

    /// Wait for a leader (a write commits), then: users root and swarmstrap, the role, auth on.
    async fn set_up_auth(&self, password: &str) {
        let deadline = Instant::now() + START_DEADLINE;
        let mut delay = Duration::from_millis(50);
        let mut client = loop {
            let mut c = self.root_client().await;
            match c.put("/swarmstrap-probe", "up", None).await {
                Ok(_) => break c,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("etcd not up yet: {e}");
                }
                Err(e) => panic!(
                    "etcd did not come up within {START_DEADLINE:?}: {e}\n{}",
                    self.log_tails()
                ),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        };
        client
            .delete("/swarmstrap-probe", None)
            .await
            .expect("delete the probe key");
        client
            .user_add("root", random_hex(), None)
            .await
            .expect("add user root");
        client
            .user_grant_role("root", "root")
            .await
            .expect("grant root");
        client.role_add(USER).await.expect("add the role");
        client
            .role_grant_permission(USER, Permission::read_write(PREFIX_ROOT).with_prefix())
            .await
            .expect("grant the role its prefix");
        client
            .user_add(USER, password, None)
            .await
            .expect("add the user");
        client
            .user_grant_role(USER, USER)
            .await
            .expect("grant the user its role");
        client.auth_enable().await.expect("enable auth");
    }

    /// A user whose role grants read-write on `prefix` only (the production role of
    /// README.md), with a random password; returns the password file (0600).
    pub async fn add_prefix_user(&self, user: &str, prefix: &str) -> PathBuf {
        self.add_user_with_prefixes(user, &[prefix]).await
    }

    /// A user (and a role of the same name) granted read-write on each of `prefixes`; returns
    /// the password file (0600). The managers' role of README.md "Security" is the cluster's
    /// prefix and its managers' prefix.
    pub async fn add_user_with_prefixes(&self, user: &str, prefixes: &[&str]) -> PathBuf {
        let mut root = self.root_client().await;
        root.role_add(user).await.expect("add the role");
        for prefix in prefixes {
            root.role_grant_permission(user, Permission::read_write(*prefix).with_prefix())
                .await
                .expect("grant the role its prefix");
        }
        let password = random_hex();
        root.user_add(user, password.as_str(), None)
            .await
            .expect("add the user");
        root.user_grant_role(user, user)
            .await
            .expect("grant the user its role");
        let file = self.dir.path().join(format!("{user}.password"));
        write_private(&file, format!("{password}\n").as_bytes());
        file
    }

    /// The backend's configuration for `cluster` (TLS, client certificate, user + password).
    pub fn config(&self, cluster: &str, target_managers: u8) -> EtcdConfig {
        EtcdConfig {
            ca_file: Some(self.ca_file.clone()),
            cert_file: Some(self.cert_file.clone()),
            key_file: Some(self.key_file.clone()),
            user: Some(USER.to_string()),
            password_file: Some(self.password_file.clone()),
            ..EtcdConfig::new(cluster, target_managers, self.endpoints.clone())
        }
    }

    pub async fn backend(&self, cluster: &str, target_managers: u8) -> EtcdRendezvous {
        EtcdRendezvous::new(self.config(cluster, target_managers))
            .await
            .expect("connect the etcd backend")
    }

    /// A client certificate and key (0600) signed by a CA the members do not trust.
    pub fn foreign_client_cert(&self) -> (PathBuf, PathBuf) {
        let ca_key = KeyPair::generate().expect("generate a key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = Issuer::new(params, ca_key);
        let (cert, key) = issue(USER, &issuer);
        let cert_file = self.dir.path().join("foreign-client.pem");
        let key_file = self.dir.path().join("foreign-client.key");
        std::fs::write(&cert_file, cert).expect("write the foreign certificate");
        write_private(&key_file, key.as_bytes());
        (cert_file, key_file)
    }

    /// Kill member `i` (by its pid), e.g. to test failover; its endpoint stops answering.
    pub fn kill_member(&mut self, i: usize) {
        let _ = self.children[i].kill();
        let _ = self.children[i].wait();
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        // Child::kill signals exactly this pid.
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
