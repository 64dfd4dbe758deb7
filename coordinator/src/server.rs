//! The server: [`prepare`] opens the data dir (store, TLS identity, admin token); [`run`]
//! serves a bound listener until the shutdown future resolves (mini-redis style, so tests
//! bind 127.0.0.1:0 and run it in-process).
//!
//! Connections are carried by hyper's HTTP/1 connection builder (header read timeout, bounded
//! buffers) over tokio-rustls; axum only routes. Graceful shutdown stops accepting, wakes
//! every long-poll, and waits (bounded) for open requests.
//!
//! Two listeners: the public one (agents, probes, metrics; `--listen`) and the admin one (the
//! `/v1/admin` API for the operator on the coordinator host; `--admin-listen`, loopback by
//! default), both with the same certificate. The public listener never serves the admin API.
//! Each caps its open connections in all and per client address (a connection over the
//! per-address cap is closed at once), and closes a connection whose TLS handshake does not
//! finish in time, so idle handshakes cannot hold every connection slot.

use crate::api::{self, AppState, Limits};
use crate::datadir::{DataDir, DataDirError, ServerInfo};
use crate::store::{OpenError, OpenMode, Store};
use crate::tls::{self, TlsError};
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use swarmstrap_wire::Secret;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;

/// How to serve TLS.
#[derive(Debug, Clone)]
pub enum TlsMode {
    /// PEM certificate chain and private key.
    Files { cert: PathBuf, key: PathBuf },
    /// Generate once into DATA_DIR/tls and reuse; extra subject alt names.
    SelfSigned { sans: Vec<String> },
    /// Plain HTTP (labs only).
    InsecureHttp,
}

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub data_dir: PathBuf,
    pub tls: TlsMode,
    pub limits: Limits,
    /// Where the admin API listens ([`DEFAULT_ADMIN_LISTEN`]; tests use 127.0.0.1:0). A
    /// non-loopback address is allowed but logged as a warning.
    pub admin_listen: SocketAddr,
}

/// The admin API's default address: loopback only, next to the public 8443.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8444";
/// Most open connections on the admin listener (the operator's CLI calls).
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("cannot read the listener's address: {0}")]
    Listener(std::io::Error),
    #[error("cannot listen for the admin API on {addr}: {source} (choose another --admin-listen)")]
    AdminListen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Everything [`run`] needs, opened and checked.
pub struct ServerConfig {
    pub store: Store,
    pub data_dir: DataDir,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `sha256:<hex>` of the served certificate (None for plain HTTP).
    pub fingerprint: Option<String>,
    pub admin_token: Secret,
    pub limits: Limits,
    /// The bound admin listener ([`ServeOptions::admin_listen`]).
    pub admin_listener: std::net::TcpListener,
    /// Its address (the port is known even when 0 was asked for).
    pub admin_addr: SocketAddr,
}

/// Open the data dir (creating it on first start), load or generate the TLS identity, and
/// read or create the admin token. Fails with a clear error on a foreign or damaged data dir.
pub fn prepare(opts: &ServeOptions) -> Result<ServerConfig, ServerError> {
    let data_dir = DataDir::new(&opts.data_dir);
    // Operator PEM files are checked before anything is created.
    let files = match &opts.tls {
        TlsMode::Files { cert, key } => Some(tls::load(cert, key)?),
        _ => None,
    };
    // The store validates the directory first, so nothing is written into a foreign one.
    let store = Store::open(&data_dir, OpenMode::CreateIfMissing)?;
    let identity = match &opts.tls {
        TlsMode::Files { .. } => files,
        TlsMode::SelfSigned { sans } => {
            let id = tls::self_signed(&data_dir, sans)?;
            if id.generated {
                tracing::info!(fingerprint = %id.fingerprint, "generated a self-signed certificate");
            }
            Some(id)
        }
        TlsMode::InsecureHttp => None,
    };
    let (tls, fingerprint) = match identity {
        Some(id) => (Some(tls::server_config(&id)?), Some(id.fingerprint)),
        None => (None, None),
    };
    let admin_token = data_dir.admin_token_or_create()?;
    let admin_err = |source| ServerError::AdminListen {
        addr: opts.admin_listen,
        source,
    };
    let admin_listener = std::net::TcpListener::bind(opts.admin_listen).map_err(admin_err)?;
    admin_listener.set_nonblocking(true).map_err(admin_err)?;
    let admin_addr = admin_listener.local_addr().map_err(admin_err)?;
    if !admin_addr.ip().is_loopback() {
        tracing::warn!(admin_listen = %admin_addr, "the admin API listens on a non-loopback address: anyone who reaches it may try the admin token");
    }
    Ok(ServerConfig {
        store,
        data_dir,
        tls,
        fingerprint,
        admin_token,
        limits: opts.limits.clone(),
        admin_listener,
        admin_addr,
    })
}

/// Serve `listener` (the public API) and the admin listener of `cfg` until `shutdown`
/// resolves, then shut down gracefully.
pub async fn run(
    listener: TcpListener,
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let local = listener.local_addr().map_err(ServerError::Listener)?;
    let admin_listener =
        TcpListener::from_std(cfg.admin_listener).map_err(|source| ServerError::AdminListen {
            addr: cfg.admin_addr,
            source,
        })?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = AppState::new(
        cfg.store.clone(),
        &cfg.admin_token,
        cfg.limits.clone(),
        stop_rx,
    );
    let public_router = api::router(state.clone());
    let admin_router = api::admin_router(state.clone());
    let acceptor = cfg.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let limits = cfg.limits.clone();

    cfg.data_dir.write_server_info(&ServerInfo {
        listen: local,
        scheme: if acceptor.is_some() { "https" } else { "http" }.into(),
        fingerprint: cfg.fingerprint.clone(),
        pid: std::process::id(),
        admin_listen: Some(cfg.admin_addr),
    })?;
    tracing::info!(
        listen = %local,
        admin_listen = %cfg.admin_addr,
        scheme = if acceptor.is_some() { "https" } else { "http" },
        fingerprint = cfg.fingerprint.as_deref().unwrap_or("-"),
        data_dir = %cfg.data_dir.root().display(),
        max_connections = limits.max_connections,
        "swarm-coordinator serving"
    );

    let graceful = GracefulShutdown::new();
    let (accept_stop_tx, accept_stop) = watch::channel(false);
    let public = accept_loop(
        listener,
        public_router,
        acceptor.clone(),
        ConnLimits {
            max: limits.max_connections,
            per_address: limits.max_connections_per_address,
        },
        &limits,
        &graceful,
        accept_stop.clone(),
        &state,
    );
    let admin = accept_loop(
        admin_listener,
        admin_router,
        acceptor,
        ConnLimits {
            max: ADMIN_MAX_CONNECTIONS,
            per_address: ADMIN_MAX_CONNECTIONS,
        },
        &limits,
        &graceful,
        accept_stop,
        &state,
    );
    let stop = async {
        shutdown.await;
        let _ = accept_stop_tx.send(true);
    };
    tokio::join!(public, admin, stop);

    tracing::info!("shutting down: no new connections; waking long-polls");
    let _ = stop_tx.send(true);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_secs = limits.shutdown_grace.as_secs(),
            "open connections did not finish in time; closing them"
        );
    }
    cfg.data_dir.remove_server_info();
    tracing::info!("stopped");
    Ok(())
}

#[derive(Clone, Copy)]
struct ConnLimits {
    max: usize,
    per_address: usize,
}

/// Open connections per client address.
#[derive(Clone, Default)]
struct PerAddress(Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>);

struct AddressSlot {
    counts: PerAddress,
    ip: IpAddr,
}

impl PerAddress {
    fn acquire(&self, ip: IpAddr, most: usize) -> Option<AddressSlot> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_default();
        if *n >= most {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.counts.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Resolves once `stop` is true.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Accept connections on `listener` until `stop` turns true.
#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    listener: TcpListener,
    router: axum::Router,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    caps: ConnLimits,
    limits: &Limits,
    graceful: &GracefulShutdown,
    mut stop: watch::Receiver<bool>,
    state: &AppState,
) {
    let connections = Arc::new(Semaphore::new(caps.max.max(1)));
    let per_address = PerAddress::default();
    // Accept failures (e.g. out of file descriptors) are logged at most once per 10 s.
    let mut accept_errors: u64 = 0;
    let mut last_accept_log: Option<std::time::Instant> = None;
    loop {
        if *stop.borrow() {
            break;
        }
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = stopped(&mut stop) => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    accept_errors += 1;
                    if last_accept_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!(error = %e, failures = accept_errors, "accept failed (counted since the last such line)");
                        last_accept_log = Some(std::time::Instant::now());
                        accept_errors = 0;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let Some(slot) = per_address.acquire(peer.ip(), caps.per_address) else {
            // Over its address's cap: closed at once, before any TLS work.
            state.metrics.refused_connections.inc();
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let watcher = graceful.watcher();
        let router = router.clone();
        let acceptor = acceptor.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _slot = slot;
            match acceptor {
                Some(acceptor) => {
                    match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(tcp))
                        .await
                    {
                        Ok(Ok(tls)) => serve_connection(tls, peer, router, &limits, watcher).await,
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                    }
                }
                None => serve_connection(tcp, peer, router, &limits, watcher).await,
            }
        });
    }
    drop(listener);
}

async fn serve_connection<IO>(
    io: IO,
    peer: SocketAddr,
    router: axum::Router,
    limits: &Limits,
    watcher: hyper_util::server::graceful::Watcher,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        router.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .max_buf_size(64 * 1024);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
    }
}
