use crate::api::Limits;
use crate::server::{self, ServeOptions, TlsMode};
use anyhow::Context;
use clap::{ArgGroup, Args};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `swarm-coordinator serve`
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("tls_mode")
        .required(true)
        .args(["tls_cert", "tls_self_signed", "insecure_http"])
))]
pub struct Serve {
    /// Address to listen on.
    #[arg(long, env = "SWARM_COORDINATOR_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Data directory (database, admin token, self-signed certificate).
    #[arg(long, env = "SWARM_COORDINATOR_DATA_DIR")]
    pub data_dir: PathBuf,
    /// PEM certificate chain to serve (with --tls-key).
    #[arg(long, env = "SWARM_COORDINATOR_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "SWARM_COORDINATOR_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Generate a self-signed certificate into the data dir once and reuse it; its
    /// fingerprint is printed on stdout for clients to pin.
    #[arg(long, env = "SWARM_COORDINATOR_TLS_SELF_SIGNED")]
    pub tls_self_signed: bool,
    /// Extra subject alternative names (IPs or DNS names) for the self-signed certificate.
    #[arg(
        long,
        env = "SWARM_COORDINATOR_SAN",
        value_delimiter = ',',
        requires = "tls_self_signed"
    )]
    pub san: Vec<String>,
    /// Serve plain HTTP (labs only: join tokens then travel in clear text).
    #[arg(long, env = "SWARM_COORDINATOR_INSECURE_HTTP")]
    pub insecure_http: bool,
    /// Address of the admin API (`/v1/admin`: the `cluster` commands while the server runs).
    /// Keep it on loopback: the public --listen never serves the admin API.
    #[arg(long, env = "SWARM_COORDINATOR_ADMIN_LISTEN", default_value = server::DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: SocketAddr,
    /// Most concurrently open long-polls; beyond it, 503 with Retry-After.
    #[arg(long, env = "SWARM_COORDINATOR_MAX_LONG_POLLS", default_value_t = Limits::default().max_long_polls)]
    pub max_long_polls: u64,
    /// Most concurrently open long-polls of one cluster; beyond it, 503 with Retry-After.
    #[arg(long, env = "SWARM_COORDINATOR_MAX_LONG_POLLS_PER_CLUSTER", default_value_t = Limits::default().max_long_polls_per_cluster)]
    pub max_long_polls_per_cluster: u64,
    /// Most concurrently open long-polls from one client address; beyond it, 429 with
    /// Retry-After (raise it when many agents reach the coordinator through one NAT address).
    #[arg(long, env = "SWARM_COORDINATOR_MAX_LONG_POLLS_PER_ADDRESS", default_value_t = Limits::default().max_long_polls_per_address)]
    pub max_long_polls_per_address: u64,
    /// Most concurrently open connections (TLS handshakes included); beyond it, new
    /// connections wait in the backlog. The process needs more open files than this
    /// (the systemd unit sets LimitNOFILE=65536).
    #[arg(long, env = "SWARM_COORDINATOR_MAX_CONNECTIONS", default_value_t = Limits::default().max_connections)]
    pub max_connections: usize,
    /// Most concurrently open connections from one client address; a new one beyond it is
    /// closed at once.
    #[arg(long, env = "SWARM_COORDINATOR_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = Limits::default().max_connections_per_address)]
    pub max_connections_per_address: usize,
    /// Seconds a client has to finish its TLS handshake.
    #[arg(
        long,
        env = "SWARM_COORDINATOR_TLS_HANDSHAKE_TIMEOUT_SECS",
        default_value_t = Limits::default().tls_handshake_timeout.as_secs()
    )]
    pub tls_handshake_timeout_secs: u64,
    /// Seconds a client has to send its request headers (and to send a body).
    #[arg(
        long,
        env = "SWARM_COORDINATOR_READ_TIMEOUT_SECS",
        default_value_t = 10
    )]
    pub read_timeout_secs: u64,
}

impl Serve {
    pub async fn run(self) -> anyhow::Result<()> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => TlsMode::Files {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ if self.tls_self_signed => TlsMode::SelfSigned {
                sans: self.san.clone(),
            },
            _ => TlsMode::InsecureHttp,
        };
        let read_timeout = Duration::from_secs(self.read_timeout_secs.max(1));
        let limits = Limits {
            max_long_polls: self.max_long_polls,
            max_long_polls_per_cluster: self.max_long_polls_per_cluster,
            max_long_polls_per_address: self.max_long_polls_per_address,
            max_connections: self.max_connections.max(1),
            max_connections_per_address: self.max_connections_per_address.max(1),
            tls_handshake_timeout: Duration::from_secs(self.tls_handshake_timeout_secs.max(1)),
            header_read_timeout: read_timeout,
            body_read_timeout: read_timeout,
            ..Limits::default()
        };
        let opts = ServeOptions {
            data_dir: self.data_dir.clone(),
            tls,
            limits,
            admin_listen: self.admin_listen,
        };
        let cfg = server::prepare(&opts)
            .with_context(|| format!("cannot start with data dir {}", self.data_dir.display()))?;
        if let TlsMode::InsecureHttp = opts.tls {
            tracing::warn!(
                "--insecure-http: serving PLAIN HTTP. Join tokens and secrets cross the network \
                 unencrypted; use this only in an isolated lab"
            );
        }
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("cannot listen on {}", self.listen))?;
        if let Some(fp) = &cfg.fingerprint {
            // Machine output: the pin for user-data.
            println!("{fp}");
        }
        server::run(listener, cfg, shutdown_signal()).await?;
        Ok(())
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
