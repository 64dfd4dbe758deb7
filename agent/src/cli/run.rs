//! `swarm-agent run`: bootstrap this node, then keep running until SIGTERM/SIGINT.

use crate::backend::BackendError;
use crate::bootstrap::{Bootstrap, Settings};
use crate::config::{Config, Overrides, ENV_DEBUG_HOLD_AFTER_CLAIM_FILE};
use crate::engine::BollardEngine;
use crate::lb::service::Lb;
use crate::lifecycle::keeper::Keeper;
use crate::lifecycle::supervise::Supervisor;
use crate::retry::Policy;
use crate::state::StateStore;
use crate::{advertise, backend, fsutil, state};
use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Per-request timeout of ordinary backend calls (long-polls get their wait + a margin).
const BACKEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-request timeout of engine calls: a manager join waits for raft and can take tens of
/// seconds; the engine itself times out a stuck join after ~20 s.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(120);
/// Per-request timeout of the load balancer's engine calls (node list, leader check, SIGHUP).
const LB_ENGINE_TIMEOUT: Duration = Duration::from_secs(15);
/// One long-poll for join tokens: below common idle timeouts of proxies and load balancers.
const LONG_POLL: Duration = Duration::from_secs(25);

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: Overrides,
}

impl RunArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let mut shutdown = Box::pin(shutdown_signal());
        // `swarm-agent upgrade` replaces the binary, then asks this process (SIGUSR2) to run
        // the new one: same pid (systemd keeps tracking it), same arguments and environment.
        let mut reexec = Box::pin(reexec_signal());
        let mut argv = std::env::args_os();
        // /proc/self/exe; without /proc (a bare chroot) the absolute path it was started as.
        let exe = std::env::current_exe()
            .ok()
            .or_else(|| argv.next().map(PathBuf::from).filter(|p| p.is_absolute()));
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        let cfg = Config::load(&self.config)?;
        // systemd (Type=notify): STATUS= lines follow the phase, READY=1 once joined.
        crate::notify::enable();
        crate::notify::status("starting");
        tracing::info!(
            "swarm-agent {} for cluster {} (backend {}, config {})",
            crate::VERSION,
            cfg.cluster,
            cfg.backend.as_str(),
            cfg.config_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "none".into())
        );
        fsutil::create_private_dir(&cfg.state_dir)?;
        // `[metrics] listen`: served from now on until the process ends (src/metrics.rs).
        tokio::spawn(crate::metrics::run(cfg.metrics.listen));
        match &exe {
            Some(exe) => state::write_run_record(
                &cfg.state_dir,
                &state::RunRecord {
                    pid: std::process::id(),
                    version: crate::VERSION.to_string(),
                    exe: exe.clone(),
                    started_at: state::rfc3339_now(),
                },
            )?,
            None => tracing::warn!(
                "cannot tell this program's path (no /proc/self/exe, started by a relative \
                 name): `swarm-agent upgrade` will not be able to restart it in place"
            ),
        }
        let node_id = state::load_or_create_node_id(&cfg.state_dir)?;
        // Opening may reach the rendezvous (etcd logs in and checks its prefix): an etcd
        // cluster electing a leader, or not up yet, is waited for; a refusal is final.
        let what = format!("open the {} backend", cfg.backend.as_str());
        let opened = tokio::select! {
            r = crate::retry::retry(Policy::RELAXED, &what, BackendError::is_transient, || {
                backend::open(&cfg, BACKEND_TIMEOUT)
            }) => r,
            _ = &mut shutdown => {
                crate::notify::stopping();
                return Ok(ExitCode::SUCCESS);
            }
            _ = &mut reexec => return reexec_self(&exe, &args),
        };
        let backend = opened
            .map_err(|f| f.into_inner())
            .with_context(|| format!("opening the {} backend", cfg.backend.as_str()))?;
        // The node's credential: the kept one, or a new one saved before it is first offered.
        backend.set_credential(&node_id, state::offer_credential(&cfg.state_dir, &node_id)?);
        // Warm the backend while the engine is awaited: the first TLS handshake of a process
        // pays the crypto library's one-time set-up (~90 ms here, more on a loaded VM), and
        // the pooled connection is then reused by `register`. The answer is not needed.
        let warm = backend.clone();
        tokio::spawn(async move {
            let _ = warm.status().await;
        });

        let advertise = tokio::select! {
            r = advertise::resolve(&cfg.advertise_addr) => r.with_context(|| {
                format!("finding the advertise address (advertise_addr = {})", cfg.advertise_addr)
            })?,
            _ = &mut shutdown => {
                crate::notify::stopping();
                return Ok(ExitCode::SUCCESS);
            }
            _ = &mut reexec => return reexec_self(&exe, &args),
        };
        tracing::info!("node id {node_id}, advertise address {advertise}");

        let mut boot = Bootstrap {
            engine: Arc::new(BollardEngine::new(&cfg.docker_host, ENGINE_TIMEOUT)),
            backend,
            store: StateStore::new(&cfg.state_dir),
            settings: Settings {
                cluster: cfg.cluster.clone(),
                node_id,
                advertise_addr: advertise.to_string(),
                requested_role: cfg.role,
                lease_ttl: cfg.lease_ttl,
                long_poll: LONG_POLL,
                policy: Policy::FAST,
                unauthorized_hint: backend::unauthorized_hint(&cfg),
                debug_hold_file: std::env::var_os(ENV_DEBUG_HOLD_AFTER_CLAIM_FILE)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from),
                record_joined_through: cfg.relay_port.is_none(),
            },
        };
        tokio::select! {
            r = boot.run_or_rename() => {
                let outcome = r?;
                // Part of the cluster's swarm: systemd may start what waits for this unit. A
                // restart of a joined node (or the re-exec after `upgrade`) gets here within
                // one engine check.
                crate::notify::ready(&format!(
                    "joined as {} (cluster {})",
                    outcome.role, cfg.cluster
                ));
            }
            _ = &mut shutdown => {
                tracing::info!("stopping on signal before the bootstrap finished");
                crate::notify::stopping();
                return Ok(ExitCode::SUCCESS);
            }
            // Every bootstrap step is safe to interrupt (it resumes from the state file).
            _ = &mut reexec => return reexec_self(&exe, &args),
        }

        tracing::info!("bootstrap complete; running until SIGTERM/SIGINT");
        let lb_engine = Arc::new(BollardEngine::new(&cfg.docker_host, LB_ENGINE_TIMEOUT));
        // On Secrets Manager the day-2 loops read through the relay (the managers' agents),
        // not a poll of AWS each (`relay` module docs).
        let relay = cfg.relay_port.map(|port| {
            let r = crate::relay::Relay::new(boot.backend.clone(), lb_engine.clone(), port);
            r.mark_serving();
            boot.backend = r.clone();
            tracing::info!(
                "relay on TCP port {port}: managers serve the cluster's documents to the \
                 swarm's nodes (mutual TLS with the swarm's node certificates)"
            );
            // This node registered: the managers read the cluster again, and learn which
            // manager its engine joined through.
            r.announce(None);
            if let Ok(Some(st)) = boot.store.load() {
                if let (Some(id), Some(through)) = (st.swarm_node_id, st.joined_through) {
                    r.announce_joined(id, through);
                }
            }
            r
        });
        let relay_server = async {
            match &relay {
                Some(r) => crate::relay::server::serve(r.clone(), r.port).await,
                None => std::future::pending().await,
            }
        };
        // The live load-balancer config (dropping it is safe: every file write is atomic).
        let lb = async {
            if cfg.lb.enabled {
                Lb {
                    cluster: cfg.cluster.clone(),
                    cfg: cfg.lb.clone(),
                    state_dir: cfg.state_dir.clone(),
                    engine: lb_engine.clone(),
                    backend: boot.backend.clone(),
                    node_id: boot.settings.node_id.clone(),
                }
                .run()
                .await
            } else {
                tracing::info!("[lb] enabled = false: no load-balancer config is written");
                std::future::pending().await
            }
        };
        // Quorum keeper and drain handler (acts on the raft leader only).
        let keeper = async {
            if !cfg.quorum.enabled {
                tracing::info!("[quorum] enabled = false: the quorum keeper does not change roles");
            }
            Keeper {
                engine: lb_engine.clone(),
                backend: boot.backend.clone(),
                cfg: cfg.quorum.clone(),
                target: cfg.target_managers,
                store: StateStore::new(&cfg.state_dir),
                node_id: boot.settings.node_id.clone(),
                sync_settle: if relay.is_some() {
                    crate::lifecycle::keeper::SYNC_SETTLE
                } else {
                    Duration::ZERO
                },
                sync_refresh: if relay.is_some() {
                    crate::lifecycle::keeper::SYNC_REFRESH_SLOW
                } else {
                    crate::lifecycle::keeper::SYNC_REFRESH
                },
                relay: relay.clone(),
                cloud: cfg.cloud.clone(),
            }
            .run()
            .await
        };
        // Rejoin after lost swarm state; total manager loss; an operator's recover.
        let supervisor = Supervisor {
            boot: &boot,
            engine: lb_engine.clone(),
        };
        tokio::select! {
            _ = lb => {}
            _ = keeper => {}
            _ = relay_server => {}
            _ = supervisor.run() => {}
            _ = &mut shutdown => {}
            _ = &mut reexec => return reexec_self(&exe, &args),
        }
        tracing::info!("stopping on signal");
        crate::notify::stopping();
        Ok(ExitCode::SUCCESS)
    }
}

/// Resolves on SIGUSR2 (handler installed at the call, like [`shutdown_signal`]). Never
/// resolves if the handler cannot be installed (then `upgrade` finds no restart and says so).
fn reexec_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let usr2 = signal(SignalKind::user_defined2());
    async move {
        match usr2 {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot watch SIGUSR2 (restart after an upgrade): {e}");
                std::future::pending::<()>().await
            }
        }
    }
}

/// Replace this process with `exe` (the binary on disk now) and the same arguments. Files the
/// agent writes are all atomic, so stopping here is as safe as a crash, only tidier. Returns
/// only if the exec failed; the agent then exits with an error and systemd restarts it.
fn reexec_self(exe: &Option<PathBuf>, args: &[std::ffi::OsString]) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let Some(exe) = exe else {
        anyhow::bail!("SIGUSR2: cannot re-execute: this program's path is unknown; restart it");
    };
    tracing::info!(
        "SIGUSR2: re-executing {} (swarm-agent upgrade)",
        exe.display()
    );
    let err = std::process::Command::new(exe).args(args).exec();
    Err(anyhow::anyhow!(
        "cannot re-execute {}: {err}",
        exe.display()
    ))
}

/// Watches SIGTERM and SIGINT from the moment it is called (the handlers are installed here,
/// not at the first poll: a signal that arrives before the future is first polled must stop
/// the agent cleanly, not kill it with the default action). The future resolves on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            (term, int) => {
                if let Some(e) = term.as_ref().err().or(int.as_ref().err()) {
                    tracing::warn!("cannot watch SIGTERM/SIGINT: {e}");
                }
                if let Ok(mut s) = term.or(int) {
                    s.recv().await;
                } else {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}
