//! The relay's server, on every node (it answers only while the node is a manager):
//!
//! - `GET /v1/docs/{name}?after=N&wait_ms=MS`: a long-poll of a cached document (at most
//!   [`super::MAX_WAIT`]); `200` with `{"version", "body"}`.
//! - `POST /v1/poke` `{"doc": NAME, "version": N}` (or `{}`): someone wrote; read the cluster
//!   again until that version is seen. `202`.
//!
//! Errors are JSON `{"error": CODE, "message": TEXT}`: `421 not_a_manager`, `400`, `404`,
//! `413`, `503` (the backend cannot be read). Only clients with a certificate of this swarm get
//! past the TLS handshake ([`super::tls`]). Two fixed routes: a `match`, no router crate.

use super::{Relay, MAX_WAIT};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use swarmstrap_wire::rendezvous::RendezvousError;
use tokio::sync::Semaphore;

/// Connections served at once (a long-poll per node and loop; beyond this, new ones wait).
const MAX_CONNECTIONS: usize = 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_POKE: usize = 4096;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Poke {
    #[serde(default)]
    doc: Option<String>,
    #[serde(default)]
    version: Option<u64>,
    /// With `joined_through`: the sender's Docker node id, which its client certificate
    /// must carry (swarm certificates name the node id), so no node speaks for another.
    #[serde(default)]
    swarm_node_id: Option<String>,
    #[serde(default)]
    joined_through: Option<String>,
}

/// Whether the client certificate `cert` was issued to Docker node `id`.
fn cert_names(cert: Option<&CertificateDer<'static>>, id: &str) -> bool {
    let (Some(cert), Ok(name)) = (cert, ServerName::try_from(id.to_string())) else {
        return false;
    };
    match rustls::server::ParsedCertificate::try_from(cert) {
        Ok(parsed) => rustls::client::verify_server_name(&parsed, &name).is_ok(),
        Err(_) => false,
    }
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(&v).expect("json"),
        )))
        .expect("response")
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response<Full<Bytes>> {
    json(
        status,
        serde_json::json!({"error": code, "message": message.into()}),
    )
}

fn query(q: Option<&str>) -> Result<(Option<u64>, Duration, bool), String> {
    let (mut after, mut wait, mut hop) = (None, Duration::ZERO, false);
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let n: u64 = v
            .parse()
            .map_err(|_| format!("query parameter {k}={v:?} is not a number"))?;
        match k {
            "after" => after = Some(n),
            "wait_ms" => wait = Duration::from_millis(n).min(MAX_WAIT),
            "hop" => hop = n > 0,
            _ => {
                return Err(format!(
                    "unknown query parameter {k:?} (after, wait_ms, hop)"
                ))
            }
        }
    }
    Ok((after, wait, hop))
}

pub async fn route(
    relay: Arc<Relay>,
    req: Request<Incoming>,
    client_cert: Option<CertificateDer<'static>>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let doc_name = path.strip_prefix("/v1/docs/").map(str::to_string);
    let known = matches!(
        (req.method(), doc_name.is_some(), path.as_str()),
        (&Method::GET, true, _) | (&Method::POST, false, "/v1/poke")
    );
    if !known {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no route {} {path} (GET /v1/docs/NAME, POST /v1/poke)",
                req.method()
            ),
        );
    }
    if relay.is_manager().await.is_none() {
        return error(
            StatusCode::MISDIRECTED_REQUEST,
            "not_a_manager",
            "this node is not a swarm manager (any more): ask another manager",
        );
    }
    if let Some(name) = doc_name {
        let (after, wait, hop) = match query(req.uri().query()) {
            Ok(q) => q,
            Err(m) => return error(StatusCode::BAD_REQUEST, "invalid_query", m),
        };
        let read = if super::LEADER_DOCS.contains(&name.as_str()) {
            relay.leader_get_doc(&name, after, wait, hop).await
        } else {
            relay.cache.get_doc(&name, after, wait).await
        };
        return match read {
            Err(RendezvousError::Conflict { code, message }) if code == super::NOT_LEADER => {
                error(StatusCode::MISDIRECTED_REQUEST, &code, message)
            }
            Ok(doc) => json(StatusCode::OK, serde_json::to_value(doc).expect("json")),
            Err(e)
                if e.code().is_some()
                    || matches!(
                        e,
                        swarmstrap_wire::rendezvous::RendezvousError::Rejected { .. }
                    ) =>
            {
                error(StatusCode::BAD_REQUEST, "rejected", e.to_string())
            }
            Err(e) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "backend_unavailable",
                e.to_string(),
            ),
        };
    }
    let body = match Limited::new(req.into_body(), MAX_POKE).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("a poke is at most {MAX_POKE} bytes"),
            )
        }
    };
    let poke: Poke = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("expected {{\"doc\": NAME, \"version\": N}} or {{}}: {e}"),
            )
        }
    };
    if let Some(through) = poke.joined_through {
        let id = poke.swarm_node_id.unwrap_or_default();
        if through.parse::<SocketAddr>().is_err() {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_poke",
                "joined_through is a manager's ip:port",
            );
        }
        if !cert_names(client_cert.as_ref(), &id) {
            return error(
                StatusCode::FORBIDDEN,
                "not_your_node",
                format!("the client certificate was not issued to node {id:?}"),
            );
        }
        relay.joined.lock().unwrap().insert(id, through);
        return json(StatusCode::ACCEPTED, serde_json::json!({"ok": true}));
    }
    match (poke.doc, poke.version) {
        (Some(d), Some(v)) if swarmstrap_wire::validate_name(&d).is_ok() => {
            relay.cache.poke(Some((d, v)))
        }
        (None, None) => relay.cache.poke(None),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_poke",
                "a poke names a valid document and its version, or nothing",
            )
        }
    }
    json(StatusCode::ACCEPTED, serde_json::json!({"ok": true}))
}

/// Serve the relay on `0.0.0.0:port` until the future is dropped. A port that cannot be bound
/// is logged (workers then fall back to Secrets Manager) and the agent goes on.
pub async fn serve(relay: Arc<Relay>, port: u16) {
    let listener = match tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await
    {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(
                "relay: cannot listen on TCP port {port}: {e}; the other nodes read Secrets \
                 Manager directly instead of through this manager"
            );
            return std::future::pending().await;
        }
    };
    serve_on(relay, listener).await
}

pub async fn serve_on(relay: Arc<Relay>, listener: tokio::net::TcpListener) {
    relay.mark_serving();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut tls_warned = false;
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("relay: accept: {e}");
                continue;
            }
        };
        // The node's certificates as the engine has them now (renewed, or a rotated CA).
        let cfg = match relay.engine.info().await.map(|i| super::cert_dir(&i)) {
            Ok(dir) => match super::tls::server_config(&dir) {
                Ok(c) => {
                    tls_warned = false;
                    c
                }
                Err(e) => {
                    if !tls_warned {
                        tracing::warn!("relay: cannot serve: {e}");
                        tls_warned = true;
                    }
                    continue;
                }
            },
            Err(_) => continue,
        };
        let relay = relay.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    tracing::debug!("relay: TLS handshake with {peer} refused: {e}");
                    return;
                }
                Err(_) => return,
            };
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.clone().into_owned());
            let svc = hyper::service::service_fn(move |req| {
                let relay = relay.clone();
                let cert = cert.clone();
                async move { Ok::<_, std::convert::Infallible>(route(relay, req, cert).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tls), svc);
            if let Err(e) = conn.await {
                tracing::debug!("relay: connection from {peer}: {e}");
            }
        });
    }
}
