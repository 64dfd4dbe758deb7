//! The two loops of the load-balancer feature, run by `swarm-agent run` after the bootstrap:
//!
//! - [`Lb::publish_loop`] (every agent; acts only while its engine is the raft leader): reads
//!   the swarm's nodes and publishes them as the membership document (compare-and-set, only
//!   when the content changed). Woken by the engine's node events; a resync every
//!   [`RESYNC`] catches what events miss and notices leadership moving to this node.
//! - [`Lb::apply_loop`] (every agent): long-polls the document ("newer than V"), renders,
//!   validates and writes the nginx config when it changed, then SIGHUPs the nginx containers.
//!
//! Both run until the future is dropped (SIGTERM): every write is atomic, so stopping at any
//! point leaves either the old or the new file.

use super::apply::{self, Outcome, Validator};
use super::docker;
use super::membership::{Membership, DOC_NAME};
use super::render;
use super::status::{self, LbState};
use crate::config::LbConfig;
use crate::engine::BollardEngine;
use crate::state::rfc3339_now;
use futures_util::StreamExt;
use rand::Rng;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarmstrap_wire::rendezvous::{Rendezvous, RendezvousError};
use swarmstrap_wire::Document;

/// Periodic re-read of the node list (and leadership check) besides the event stream.
pub const RESYNC: Duration = Duration::from_secs(5);
/// One long-poll for a newer membership document.
pub const LONG_POLL: Duration = Duration::from_secs(25);
/// Retry delays after failures: capped exponential with jitter.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub struct Lb {
    pub cluster: String,
    pub cfg: LbConfig,
    pub state_dir: PathBuf,
    pub engine: Arc<BollardEngine>,
    pub backend: Arc<dyn Rendezvous>,
    /// This agent's node id: the writer of the membership document (a manager's credential).
    pub node_id: String,
}

/// Capped exponential backoff with full jitter (never below half the step).
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { next: BACKOFF_MIN }
    }
    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
    fn delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let ms = step.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
    }
}

/// Log a message once until it changes (loops retry every few seconds).
#[derive(Default)]
struct Once(Option<String>);

impl Once {
    fn warn(&mut self, msg: String) {
        if self.0.as_deref() != Some(msg.as_str()) {
            tracing::warn!("{msg}");
            self.0 = Some(msg);
        }
    }
    fn error(&mut self, msg: String) {
        if self.0.as_deref() != Some(msg.as_str()) {
            tracing::error!("{msg}");
            self.0 = Some(msg);
        }
    }
    fn clear(&mut self) {
        self.0 = None;
    }
}

/// Whether "nothing to reload" was already said (once per process: it repeats on every change).
static NO_RELOAD_TARGET_WARNED: AtomicBool = AtomicBool::new(false);

impl Lb {
    /// A config was written but no running container matched the reload selectors: nginx keeps
    /// serving the old config. Said at warn once, with what to do; later ones at debug. Nothing
    /// is said when the operator chose no reload at all (both selectors empty).
    fn no_reload_target(&self) {
        let (label, service) = (
            self.cfg.reload_label.as_deref(),
            self.cfg.reload_service.as_deref(),
        );
        if label.is_none() && service.is_none() {
            return;
        }
        if NO_RELOAD_TARGET_WARNED.swap(true, Ordering::Relaxed) {
            tracing::debug!("no nginx container to reload");
            return;
        }
        let mut looked_for = Vec::new();
        if let Some(l) = label {
            looked_for.push(format!("label {l}"));
        }
        if let Some(s) = service {
            looked_for.push(format!("swarm service {s}"));
        }
        tracing::warn!(
            "load balancer: wrote {1} but no running container on this node has {2}, so nginx \
             was not reloaded and serves its old config. Give the nginx containers the label \
             (`labels: [\"{0}\"]` on the service in the stack file: container labels, not \
             `deploy.labels`; or `docker service update --container-label-add {0} <service>`) \
             or set [lb] reload_service to the nginx service's name; said once",
            label.unwrap_or("swarmstrap.lb=nginx"),
            self.cfg.path.display(),
            looked_for.join(" or "),
        );
    }

    /// Both loops, forever (until dropped).
    pub async fn run(&self) {
        tracing::info!(
            "load balancer: writing {} from the swarm's membership ({} service(s){})",
            self.cfg.path.display(),
            self.cfg.services.len(),
            self.cfg
                .template_file
                .as_ref()
                .map(|t| format!(", template {}", t.display()))
                .unwrap_or_default()
        );
        tokio::join!(self.publish_loop(), self.apply_loop());
    }

    // -----------------------------------------------------------------------------------------
    // Leader side.

    pub async fn publish_loop(&self) {
        let mut known: Option<Document> = None;
        let mut events = None;
        let mut backoff = Backoff::new();
        let mut log = Once::default();
        let mut was_leader = false;
        loop {
            let ok = match self.publish_once(&mut known, &mut was_leader).await {
                Ok(()) => {
                    log.clear();
                    backoff.reset();
                    true
                }
                Err(e) => {
                    log.warn(format!("load balancer: membership publish: {e}"));
                    known = None;
                    false
                }
            };
            if events.is_none() && matches!(docker::is_manager(&self.engine).await, Ok(true)) {
                match docker::node_events(&self.engine).await {
                    Ok(s) => events = Some(Box::pin(s)),
                    Err(e) => log.warn(format!("load balancer: node events: {e}")),
                }
            }
            let wait = if ok { RESYNC } else { backoff.delay() };
            match events.as_mut() {
                Some(stream) => {
                    tokio::select! {
                        item = stream.next() => match item {
                            Some(Ok(ev)) => tracing::debug!(
                                "node event {:?} {:?}",
                                ev.action,
                                ev.actor.and_then(|a| a.id)
                            ),
                            Some(Err(e)) => {
                                tracing::debug!("node event stream: {e}");
                                events = None;
                                tokio::time::sleep(backoff.delay()).await;
                            }
                            None => {
                                events = None;
                                tokio::time::sleep(backoff.delay()).await;
                            }
                        },
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                None => tokio::time::sleep(wait).await,
            }
        }
    }

    /// If this engine is the leader: publish the node list when it differs from the document.
    async fn publish_once(
        &self,
        known: &mut Option<Document>,
        was_leader: &mut bool,
    ) -> anyhow::Result<()> {
        let leader = docker::is_leader(&self.engine).await?;
        if leader != *was_leader {
            if leader {
                tracing::info!(
                    "load balancer: this engine is the swarm leader: publishing the membership"
                );
            } else {
                tracing::info!("load balancer: this engine is not the swarm leader (anymore)");
            }
            *was_leader = leader;
            *known = None;
        }
        if !leader {
            return Ok(());
        }
        // Only what the typed membership document accepts (the rendezvous refuses the whole
        // document otherwise): unsafe labels dropped, a node whose host name is not RFC 1123
        // left out (logged when the document changes).
        let (listed, notes) = docker::membership(&self.engine).await?.publishable();
        for _ in 0..5 {
            let doc = match known.take() {
                Some(d) => d,
                None => self.backend.get_doc(DOC_NAME, None, Duration::ZERO).await?,
            };
            let previous = Membership::from_body(&doc.body).ok().flatten();
            let m = listed.clone().carry_unknown(previous.as_ref());
            let body = m.to_body();
            if doc.body == body {
                *known = Some(doc);
                return Ok(());
            }
            for n in &notes {
                tracing::warn!("load balancer: membership: {n}");
            }
            match self
                .backend
                .put_doc(&self.node_id, DOC_NAME, doc.version, &body)
                .await
            {
                Ok(d) => {
                    crate::metrics::agent().lb_publish();
                    tracing::info!(
                        "load balancer: published membership version {}: {} nodes, {} ready",
                        d.version,
                        m.nodes.len(),
                        m.ready().len()
                    );
                    *known = Some(d);
                    return Ok(());
                }
                // Another (old or new) leader wrote in between: re-read and compare again.
                Err(RendezvousError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        anyhow::bail!("the membership document kept changing under us (5 conflicts)")
    }

    // -----------------------------------------------------------------------------------------
    // Every node.

    pub async fn apply_loop(&self) {
        let mut st = match status::load(&self.state_dir) {
            Ok(Some(s)) if s.path == self.cfg.path.display().to_string() => s,
            _ => LbState {
                path: self.cfg.path.display().to_string(),
                ..Default::default()
            },
        };
        let mut log = Once::default();
        let validator =
            match Validator::from_config(self.cfg.validate, self.cfg.nginx_bin.as_deref()) {
                Ok(v) => Some(v),
                Err(e) => {
                    crate::metrics::agent().lb_rejection("validator");
                    self.fail(&mut st, &mut log, e.to_string());
                    None
                }
            };
        let mut after: Option<u64> = None;
        let mut backoff = Backoff::new();
        let mut backend_log = Once::default();
        loop {
            let started = Instant::now();
            let doc = match self.backend.get_doc(DOC_NAME, after, LONG_POLL).await {
                Ok(d) => {
                    backend_log.clear();
                    d
                }
                Err(e) => {
                    backend_log.warn(format!("load balancer: reading the membership: {e}"));
                    tokio::time::sleep(backoff.delay()).await;
                    continue;
                }
            };
            let same = after == Some(doc.version);
            after = Some(doc.version);
            if same && started.elapsed() < Duration::from_secs(1) {
                // A backend that answers a long-poll at once without news: do not spin.
                tokio::time::sleep(backoff.delay()).await;
            } else {
                backoff.reset();
            }
            let m = match Membership::from_body(&doc.body) {
                Ok(Some(m)) => m,
                Ok(None) => continue, // nothing published yet
                Err(e) => {
                    crate::metrics::agent().lb_rejection("membership");
                    self.fail(&mut st, &mut log, e);
                    continue;
                }
            };
            st.seen_version = Some(doc.version);
            let Some(validator) = &validator else {
                continue;
            };
            // Also on a long-poll timeout (same version): re-render and re-apply, which
            // repairs a hand-edited file and picks up template edits.
            self.apply_membership(doc.version, &m, validator, &mut st, &mut log)
                .await;
        }
    }

    fn fail(&self, st: &mut LbState, log: &mut Once, message: String) {
        log.error(format!("load balancer: {message}"));
        st.last_error = Some(status::error_now(message));
        if let Err(e) = status::save(&self.state_dir, st) {
            tracing::warn!("load balancer: saving {}: {e}", status::FILE_NAME);
        }
    }

    async fn apply_membership(
        &self,
        version: u64,
        m: &Membership,
        validator: &Validator,
        st: &mut LbState,
        log: &mut Once,
    ) {
        let metrics = crate::metrics::agent();
        let rendered = match render::render(&self.cluster, m, &self.cfg) {
            Ok(r) => r,
            Err(e) => {
                metrics.lb_rejection("render");
                return self.fail(st, log, e.to_string());
            }
        };
        let sha = status::sha256_hex(rendered.as_bytes());
        match apply::apply(&self.cfg.path, &rendered, validator).await {
            Ok(Outcome::Unchanged) => {
                metrics.lb_render(false);
                if st.sha256.as_deref() == Some(sha.as_str())
                    && st.version == Some(version)
                    && st.last_error.is_none()
                {
                    return;
                }
                if st.sha256.as_deref() != Some(sha.as_str()) {
                    st.applied_at = Some(rfc3339_now());
                }
                st.version = Some(version);
                st.sha256 = Some(sha);
                st.ready_nodes = Some(m.ready().len());
                st.last_error = None;
                log.clear();
            }
            Ok(Outcome::Written { validated }) => {
                metrics.lb_render(true);
                tracing::info!(
                    "load balancer: wrote {} (membership version {version}, {} ready nodes, {sha}{})",
                    self.cfg.path.display(),
                    m.ready().len(),
                    if validated { ", nginx -t ok" } else { ", not validated" }
                );
                st.version = Some(version);
                st.sha256 = Some(sha);
                st.applied_at = Some(rfc3339_now());
                st.ready_nodes = Some(m.ready().len());
                st.last_error = None;
                log.clear();
                match docker::reload_nginx(
                    &self.engine,
                    self.cfg.reload_label.as_deref(),
                    self.cfg.reload_service.as_deref(),
                )
                .await
                {
                    Ok(0) => self.no_reload_target(),
                    Ok(n) => {
                        tracing::info!("load balancer: reloaded {n} nginx container(s) (SIGHUP)")
                    }
                    Err(e) => {
                        metrics.lb_rejection("reload");
                        let msg = format!("config written, but reloading nginx failed: {e}");
                        log.error(format!("load balancer: {msg}"));
                        st.last_error = Some(status::error_now(msg));
                    }
                }
            }
            Err(e) => {
                metrics.lb_rejection(match e {
                    apply::ApplyError::Invalid { .. } => "invalid",
                    apply::ApplyError::NoNginx | apply::ApplyError::Validator { .. } => "validator",
                    apply::ApplyError::Fs(_) => "write",
                });
                return self.fail(st, log, e.to_string());
            }
        }
        if let Err(e) = status::save(&self.state_dir, st) {
            tracing::warn!("load balancer: saving {}: {e}", status::FILE_NAME);
        }
    }
}
