//! The relay's client: a node asks the managers its engine knows (`docker info`
//! RemoteManagers) over mutual TLS ([`super::tls`]).

use super::tls;
use crate::engine::EngineInfo;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rand::seq::SliceRandom;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swarmstrap_wire::Document;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Beyond the long-poll's own wait.
const ANSWER_MARGIN: Duration = Duration::from_secs(10);
/// Largest answer taken (a document is at most 64 KiB in Secrets Manager).
const MAX_ANSWER: usize = 1 << 20;

/// The relay address of each manager the engine knows: the manager's swarm address with the
/// relay's port. `skip_self`: leave out this node's own address.
pub fn manager_addrs(info: &EngineInfo, port: u16, skip_self: bool) -> Vec<SocketAddr> {
    let me = info
        .swarm
        .node_addr
        .as_deref()
        .and_then(|a| a.parse::<std::net::IpAddr>().ok());
    let mut out: Vec<SocketAddr> = info
        .swarm
        .remote_managers
        .iter()
        .filter_map(|a| a.parse::<SocketAddr>().ok())
        .filter(|a| !(skip_self && Some(a.ip()) == me))
        .map(|mut a| {
            a.set_port(port);
            a
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// One HTTPS request to a manager's agent; the answer's status and body.
pub(crate) async fn request(
    cfg: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), String> {
    let work = async {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(tls::manager_name(), tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let conn = tokio::spawn(conn);
        let builder = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, tls::MANAGER_NAME);
        let resp = match body {
            Some(b) => {
                let req = builder
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(b)).boxed())
                    .map_err(|e| e.to_string())?;
                send.send_request(req).await
            }
            None => {
                let req = builder
                    .body(Empty::<Bytes>::new().boxed())
                    .map_err(|e| e.to_string())?;
                send.send_request(req).await
            }
        }
        .map_err(|e| format!("HTTP: {e}"))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        conn.abort();
        Ok((status, bytes))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("no answer within {}s", timeout.as_secs()))?
}

/// The manager that answered last (asked first next time).
#[derive(Default)]
pub struct Peers {
    preferred: Mutex<Option<SocketAddr>>,
}

impl Peers {
    /// A long-poll of document `name` from the first of `addrs` that answers (the one that
    /// answered last time first). `hop`: the request was forwarded once already (a manager
    /// does not forward it again). `Err`: why none answered.
    #[allow(clippy::too_many_arguments)]
    pub async fn get_doc(
        &self,
        info: &EngineInfo,
        mut addrs: Vec<SocketAddr>,
        name: &str,
        after: Option<u64>,
        wait: Duration,
        hop: bool,
    ) -> Result<Document, String> {
        if addrs.is_empty() {
            return Err("the engine knows no manager (not in a swarm?)".into());
        }
        addrs.shuffle(&mut rand::rng());
        let preferred = *self.preferred.lock().unwrap();
        if let Some(p) = preferred {
            if let Some(i) = addrs.iter().position(|a| *a == p) {
                addrs.swap(0, i);
            }
        }
        let cfg =
            tls::client_config(&super::cert_dir(info)).map_err(|e| format!("swarm TLS: {e}"))?;
        let mut path = format!("/v1/docs/{name}?wait_ms={}", wait.as_millis());
        if let Some(a) = after {
            path.push_str(&format!("&after={a}"));
        }
        if hop {
            path.push_str("&hop=1");
        }
        let mut errors = Vec::new();
        for addr in addrs {
            match request(
                cfg.clone(),
                addr,
                Method::GET,
                &path,
                None,
                wait + ANSWER_MARGIN,
            )
            .await
            {
                Ok((StatusCode::OK, body)) => match serde_json::from_slice::<Document>(&body) {
                    Ok(doc) => {
                        *self.preferred.lock().unwrap() = Some(addr);
                        return Ok(doc);
                    }
                    Err(e) => errors.push(format!("{addr}: unreadable answer: {e}")),
                },
                Ok((status, body)) => errors.push(format!(
                    "{addr}: {status} {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)])
                )),
                Err(e) => errors.push(format!("{addr}: {e}")),
            }
        }
        *self.preferred.lock().unwrap() = None;
        Err(errors.join("; "))
    }
}

/// Tell every other manager's agent that this node wrote (`doc`: the document and version).
/// Best effort: a manager that misses it reads again within [`super::SLOW_REFRESH`].
pub async fn poke_all(info: &EngineInfo, port: u16, doc: Option<(String, u64)>) {
    let body = match &doc {
        Some((name, version)) => serde_json::json!({"doc": name, "version": version}),
        None => serde_json::json!({}),
    };
    poke_all_with(info, port, body).await
}

/// [`poke_all`] with a given body (see `server`).
pub async fn poke_all_with(info: &EngineInfo, port: u16, body: serde_json::Value) {
    if let Some(p) = Poker::new(info, port) {
        p.send(body).await
    }
}

/// The other managers' relay addresses and this node's TLS set-up, taken while the node is in
/// the swarm (`leave` pokes after the engine left, when both are gone).
pub struct Poker {
    addrs: Vec<SocketAddr>,
    cfg: Arc<rustls::ClientConfig>,
}

impl Poker {
    pub fn new(info: &EngineInfo, port: u16) -> Option<Poker> {
        let addrs = manager_addrs(info, port, true);
        if addrs.is_empty() {
            return None;
        }
        match tls::client_config(&super::cert_dir(info)) {
            Ok(cfg) => Some(Poker { addrs, cfg }),
            Err(e) => {
                tracing::debug!("relay: no poke can be sent: {e}");
                None
            }
        }
    }

    /// A generic poke (`{}`): read the cluster again.
    pub async fn send_generic(&self) {
        self.send(serde_json::json!({})).await
    }

    pub async fn send(&self, body: serde_json::Value) {
        send(self.addrs.clone(), self.cfg.clone(), body).await
    }
}

async fn send(addrs: Vec<SocketAddr>, cfg: Arc<rustls::ClientConfig>, body: serde_json::Value) {
    let body = serde_json::to_vec(&body).expect("json");
    let pokes = addrs.into_iter().map(|addr| {
        let cfg = cfg.clone();
        let body = body.clone();
        async move {
            let r = request(
                cfg,
                addr,
                Method::POST,
                "/v1/poke",
                Some(body),
                Duration::from_secs(5),
            )
            .await;
            match r {
                Ok((s, _)) if s.is_success() => {}
                Ok((s, b)) => tracing::debug!(
                    "relay: poke to {addr}: {s} {}",
                    String::from_utf8_lossy(&b[..b.len().min(200)])
                ),
                Err(e) => tracing::debug!("relay: poke to {addr}: {e}"),
            }
        }
    });
    futures_util::future::join_all(pokes).await;
}
