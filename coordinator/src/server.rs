//! The server: [`prepare`] opens the data dir (store, TLS identity, admin token); [`run`]
//! serves a bound listener until the shutdown future resolves (mini-redis style, so tests
//! bind 127.0.0.1:0 and run it in-process).
//!
//! Connections are carried by hyper's HTTP/1 connection builder (header read timeout, bounded
//! buffers) over tokio-rustls; axum only routes. Graceful shutdown stops accepting, wakes
//! every long-poll, and waits (bounded) for open requests.

use crate::api::{self, AppState, Limits};
use crate::datadir::{DataDir, DataDirError, ServerInfo};
use crate::store::{OpenError, OpenMode, Store};
use crate::tls::{self, TlsError};
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
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
}

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
    Ok(ServerConfig {
        store,
        data_dir,
        tls,
        fingerprint,
        admin_token,
        limits: opts.limits.clone(),
    })
}

/// Serve `listener` until `shutdown` resolves, then shut down gracefully.
pub async fn run(
    listener: TcpListener,
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let local = listener.local_addr().map_err(ServerError::Listener)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = AppState::new(
        cfg.store.clone(),
        &cfg.admin_token,
        cfg.limits.clone(),
        stop_rx,
    );
    let router = api::router(state);
    let acceptor = cfg.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let limits = cfg.limits.clone();

    cfg.data_dir.write_server_info(&ServerInfo {
        listen: local,
        scheme: if acceptor.is_some() { "https" } else { "http" }.into(),
        fingerprint: cfg.fingerprint.clone(),
        pid: std::process::id(),
    })?;
    tracing::info!(
        listen = %local,
        scheme = if acceptor.is_some() { "https" } else { "http" },
        fingerprint = cfg.fingerprint.as_deref().unwrap_or("-"),
        data_dir = %cfg.data_dir.root().display(),
        "swarm-coordinator serving"
    );

    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // E.g. out of file descriptors: log, let others finish, try again.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let watcher = graceful.watcher();
        let router = router.clone();
        let acceptor = acceptor.clone();
        let limits = limits.clone();
        tokio::spawn(async move {
            let _permit = permit;
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

    tracing::info!("shutting down: no new connections; waking long-polls");
    drop(listener);
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
