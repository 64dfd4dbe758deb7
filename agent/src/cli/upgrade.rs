//! `swarm-agent upgrade --version V`: install release V of swarm-agent in place and restart the
//! running agent on it.
//!
//! 1. Downloads `{base}/v{V}/SHA256SUMS` and its minisign signature and checks them with the
//!    trusted key ([`crate::release::verify_sums`]: key id, signature, trusted comment naming V).
//! 2. Downloads `swarm-agent-{V}-{arch}` and checks its sha256 against `SHA256SUMS`.
//! 3. Replaces the binary atomically, after the new file printed `swarm-agent V` for
//!    `--version` ([`crate::release::replace_binary`]).
//! 4. Sends SIGUSR2 to the running `swarm-agent run` (found through `<state>/agent.run`), which
//!    re-executes itself: same pid, same arguments; the engine and the swarm are not touched, so
//!    the node keeps its role. Waits until the process reports V.
//!
//! The base URL and key come from the config's `[release]` table (defaults: the project's
//! GitHub releases and `release/minisign.pub`), or `--base-url` / `--public-key-file`.

use crate::config::{Config, Overrides};
use crate::release::{self, ReleaseError};
use crate::retry::{self, Policy};
use crate::state;
use anyhow::{bail, Context};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long each download may take in all (retries included).
const DOWNLOAD_DEADLINE: Duration = Duration::from_secs(300);
/// How long the restarted agent has to report the new version.
const RESTART_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct UpgradeArgs {
    /// The release to install, e.g. 0.2.0 (its tag without the `v`).
    #[arg(long)]
    pub version: String,
    /// Directory holding `v<VERSION>/` (overrides [release] base_url), e.g. a mirror.
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// A minisign public key file to trust instead of [release] public_key.
    #[arg(long, value_name = "FILE")]
    pub public_key_file: Option<PathBuf>,
    /// The binary to replace (default: the running agent's, else this program's path).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Install only; do not restart the running agent.
    #[arg(long)]
    pub no_restart: bool,
    #[command(flatten)]
    pub config: Overrides,
}

impl UpgradeArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let cfg = Config::load(&self.config)?;
        let version = release::parse_version(&self.version)?;
        let arch = release::release_arch(std::env::consts::ARCH)?;
        let base = match &self.base_url {
            Some(u) => u.trim().trim_end_matches('/').to_string(),
            None => cfg.release.base_url.clone(),
        };
        let public_key = match &self.public_key_file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading the public key file {}", p.display()))?;
                text.lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
                    .unwrap_or_default()
                    .to_string()
            }
            None => cfg.release.public_key.clone(),
        };
        let running = state::running_agent(&cfg.state_dir);
        let target = match (&self.binary, &running) {
            (Some(p), _) => p.clone(),
            (None, Some(r)) => r.exe.clone(),
            (None, None) => std::env::current_exe().context("finding this program's path")?,
        };

        swarmstrap_wire::pin::crypto_provider(); // reqwest has no provider of its own
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .build()
            .context("building the HTTP client")?;
        let sums_url = release::artifact_url(&base, &version, "SHA256SUMS");
        let sig_url = format!("{sums_url}.minisig");
        let sums = fetch(&http, &sums_url, release::MAX_SUMS_BYTES).await?;
        let sig = fetch(&http, &sig_url, release::MAX_SUMS_BYTES).await?;
        let sig = String::from_utf8(sig).map_err(|_| ReleaseError::BadSignatureFile {
            url: sig_url.clone(),
            detail: "not text".into(),
        })?;
        let table = release::verify_sums(&sums, &sig, &public_key, &version, &sums_url)?;
        let file = release::artifact_name("swarm-agent", &version, arch);
        let want = table.get(&file).ok_or_else(|| ReleaseError::NotListed {
            version: version.clone(),
            file: file.clone(),
        })?;
        println!("{sums_url}: signature verified (swarmstrap {version})");

        let current = std::fs::read(&target).ok();
        if current.as_deref().map(release::sha256_hex).as_ref() == Some(want) {
            println!("{} is already {file}", target.display());
        } else {
            let url = release::artifact_url(&base, &version, &file);
            let bytes = fetch(&http, &url, release::MAX_BINARY_BYTES).await?;
            release::check_hash(&file, &bytes, want)?;
            let target2 = target.clone();
            let v2 = version.clone();
            tokio::task::spawn_blocking(move || release::replace_binary(&target2, &bytes, &v2))
                .await
                .context("installing the binary")??;
            println!("installed {file} as {} (sha256 {want})", target.display());
        }

        if self.no_restart {
            println!("--no-restart: the running agent keeps its version until it restarts");
            return Ok(ExitCode::SUCCESS);
        }
        let Some(rec) = running else {
            println!(
                "no running swarm-agent found (no live process in {}): the new version runs \
                 at its next start (`systemctl restart swarm-agent`)",
                cfg.state_dir.join(state::RUN_RECORD_FILE).display()
            );
            return Ok(ExitCode::SUCCESS);
        };
        if rec.version == version {
            println!("the running agent (pid {}) already runs {version}", rec.pid);
            return Ok(ExitCode::SUCCESS);
        }
        if rec.exe != target {
            bail!(
                "installed {file} at {}, but the running agent (pid {}) runs {}: restart it \
                 on the new binary yourself",
                target.display(),
                rec.pid,
                rec.exe.display()
            );
        }
        signal_reexec(rec.pid)?;
        println!(
            "asked the running agent (pid {}, {}) to restart on {version}",
            rec.pid, rec.version
        );
        let deadline = Instant::now() + RESTART_DEADLINE;
        for delay in Policy::RELAXED.delays() {
            if let Some(now) = state::running_agent(&cfg.state_dir) {
                if now.version == version && now.pid == rec.pid {
                    println!(
                        "the agent runs {version} (pid {}, since {})",
                        now.pid, now.started_at
                    );
                    return Ok(ExitCode::SUCCESS);
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(delay.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
        bail!(
            "the new binary is installed, but the agent did not report {version} within {}s \
             after SIGUSR2: check `journalctl -u swarm-agent` and restart it \
             (`systemctl restart swarm-agent`)",
            RESTART_DEADLINE.as_secs()
        )
    }
}

fn signal_reexec(pid: u32) -> anyhow::Result<()> {
    let p = i32::try_from(pid)
        .ok()
        .filter(|p| *p > 1)
        .and_then(rustix::process::Pid::from_raw)
        .with_context(|| format!("the run record names pid {pid}, which is not an agent's"))?;
    rustix::process::kill_process(p, rustix::process::Signal::USR2)
        .with_context(|| format!("signalling the running agent (pid {pid})"))
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("{url}: {detail}")]
    Transient { url: String, detail: String },
    #[error("{url}: {detail}")]
    Permanent { url: String, detail: String },
}

/// GET `url` (at most `max` bytes), retrying network errors and 5xx/429 with backoff until
/// [`DOWNLOAD_DEADLINE`].
async fn fetch(http: &reqwest::Client, url: &str, max: usize) -> anyhow::Result<Vec<u8>> {
    let policy = Policy::RELAXED.with_deadline(DOWNLOAD_DEADLINE);
    retry::retry(
        policy,
        &format!("download {url}"),
        |e: &FetchError| matches!(e, FetchError::Transient { .. }),
        || fetch_once(http, url, max),
    )
    .await
    .map_err(|f| anyhow::anyhow!("{f}"))
}

async fn fetch_once(http: &reqwest::Client, url: &str, max: usize) -> Result<Vec<u8>, FetchError> {
    let transient = |detail: String| FetchError::Transient {
        url: url.to_string(),
        detail,
    };
    let mut resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| transient(format!("{e}")))?;
    let status = resp.status();
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(transient(format!("answered {status}")));
    }
    if !status.is_success() {
        return Err(FetchError::Permanent {
            url: url.to_string(),
            detail: format!(
                "answered {status}{}",
                if status == reqwest::StatusCode::NOT_FOUND {
                    " (no such release or file: check the version and the base URL)"
                } else {
                    ""
                }
            ),
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| transient(format!("reading the body: {e}")))?
    {
        if body.len() + chunk.len() > max {
            return Err(FetchError::Permanent {
                url: url.to_string(),
                detail: format!("larger than {max} bytes: not a release file"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
