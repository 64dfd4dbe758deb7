use super::admin_client::AdminClient;
use crate::datadir::DataDir;
use crate::store::{OpenError, OpenMode, Store};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use std::io::Read;
use std::path::{Path, PathBuf};
use swarmstrap_wire::fsutil::write_atomic;
use swarmstrap_wire::{ClusterStatus, CreateCluster, CreatedCluster, Secret};

/// `swarm-coordinator cluster ...`: works on the data dir directly when no server runs, and
/// through the running server's admin API when the server holds the database.
#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Create a cluster; print its join secret and operator credential once (or write them to
    /// --out / --operator-credential-out).
    Create(Create),
    /// Allow exactly one new `swarm init` for a formed cluster (recorded in its `resets`).
    Reset(Named),
    /// Refuse init claims until the cluster's running swarm adopts it (the cluster was
    /// re-created, or restored from a backup taken before its swarm formed).
    AwaitAdoption(Named),
    /// Lift the adoption hold: no swarm runs for this cluster any more, let a new one form.
    AllowInit(Named),
    /// Ask for new swarm join tokens: the raft leader's agent rotates the swarm's worker and
    /// manager tokens and publishes them; nodes joining afterwards use them, the old ones no
    /// longer join (for a leaked token, or on a schedule).
    RotateTokens(Named),
    /// Give the cluster a new operator credential (the old one resets nothing any more); for a
    /// leaked credential, or a cluster created before operator credentials existed. Printed
    /// once on stdout, or written to --operator-credential-out.
    RotateOperatorCredential(RotateOperator),
    /// List the clusters.
    List(List),
    /// Show one cluster as JSON (no secrets).
    Show(Named),
}

#[derive(Debug, Args)]
pub struct DataDirArg {
    /// Data directory of the coordinator.
    #[arg(long, env = "SWARM_COORDINATOR_DATA_DIR")]
    pub data_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct Create {
    /// Cluster name: 1-63 of a-z, 0-9, '-'.
    pub name: String,
    /// Managers to keep (odd: 1, 3, 5 or 7).
    #[arg(long, default_value_t = swarmstrap_wire::default_target_managers())]
    pub target_managers: u8,
    /// Read the join secret from this file instead of generating one (e.g. Terraform's
    /// random_password written to a file).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// Write the generated join secret to this new file (mode 0600) instead of stdout. The
    /// file stays until you delete it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Read the operator credential (the one credential that resets the cluster: `swarm-agent
    /// recover`) from this file, or `-` for stdin, instead of generating one. Never put it in
    /// user-data.
    #[arg(long, conflicts_with = "operator_credential_out")]
    pub operator_credential_file: Option<PathBuf>,
    /// Write the generated operator credential to this new file (mode 0600) instead of
    /// stdout. The file stays until you delete it.
    #[arg(long)]
    pub operator_credential_out: Option<PathBuf>,
    /// Re-create the cluster of a running swarm (the coordinator lost its database, or is
    /// restored from a backup): refuse every init claim until that swarm's leader adopts it,
    /// so no new node can `swarm init` a second swarm meanwhile. Never for a brand-new cluster
    /// (it would wait for a swarm that does not exist; `cluster allow-init` lifts the hold).
    #[arg(long)]
    pub adopt: bool,
    #[command(flatten)]
    pub dir: DataDirArg,
}

#[derive(Debug, Args)]
pub struct RotateOperator {
    pub name: String,
    /// Read the new operator credential from this file (`-`: stdin) instead of generating one.
    #[arg(long, conflicts_with = "operator_credential_out")]
    pub operator_credential_file: Option<PathBuf>,
    /// Write the generated credential to this new file (mode 0600) instead of stdout. The file
    /// stays until you delete it.
    #[arg(long)]
    pub operator_credential_out: Option<PathBuf>,
    #[command(flatten)]
    pub dir: DataDirArg,
}

#[derive(Debug, Args)]
pub struct Named {
    pub name: String,
    #[command(flatten)]
    pub dir: DataDirArg,
}

#[derive(Debug, Args)]
pub struct List {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub dir: DataDirArg,
}

enum Backend {
    Direct(Store),
    Remote(AdminClient),
}

impl Backend {
    fn open(dir: &DataDirArg, mode: OpenMode) -> anyhow::Result<Self> {
        let dd = DataDir::new(&dir.data_dir);
        match Store::open(&dd, mode) {
            Ok(store) => Ok(Backend::Direct(store)),
            Err(OpenError::Locked { .. }) => {
                tracing::debug!("the database is locked; using the running server's admin API");
                Ok(Backend::Remote(AdminClient::from_data_dir(&dd)?))
            }
            Err(e) => Err(e).with_context(|| format!("cannot open {}", dd.root().display())),
        }
    }

    async fn create(&self, req: CreateCluster) -> anyhow::Result<CreatedCluster> {
        match self {
            Backend::Direct(store) => crate::api::create_cluster(store, req)
                .await
                .map_err(|e| anyhow::anyhow!("{} ({})", e.message, e.code)),
            Backend::Remote(c) => c.create(&req).await,
        }
    }

    async fn reset(&self, name: &str) -> anyhow::Result<ClusterStatus> {
        match self {
            Backend::Direct(store) => Ok(store.reset(name.to_string()).await?),
            Backend::Remote(c) => c.reset(name).await,
        }
    }

    async fn request_token_rotation(&self, name: &str) -> anyhow::Result<ClusterStatus> {
        match self {
            Backend::Direct(store) => {
                Ok(store.request_token_rotation(name.to_string()).await?.value)
            }
            Backend::Remote(c) => c.request_token_rotation(name).await,
        }
    }

    async fn set_adoption_hold(&self, name: &str, hold: bool) -> anyhow::Result<ClusterStatus> {
        match self {
            Backend::Direct(store) => {
                let w = store.set_adoption_hold(name.to_string(), hold).await?;
                if w.changed {
                    tracing::info!(cluster = %name, hold, "adoption hold changed (data dir)");
                }
                Ok(w.value)
            }
            Backend::Remote(c) => c.set_adoption_hold(name, hold).await,
        }
    }

    async fn set_operator_credential(
        &self,
        name: &str,
        req: crate::api::OperatorCredentialChange,
    ) -> anyhow::Result<crate::api::OperatorCredentialChanged> {
        match self {
            Backend::Direct(store) => {
                crate::api::set_operator_credential(store, name.to_string(), req)
                    .await
                    .map_err(|e| anyhow::anyhow!("{} ({})", e.message, e.code))
            }
            Backend::Remote(c) => c.set_operator_credential(name, &req).await,
        }
    }

    async fn list(&self) -> anyhow::Result<Vec<ClusterStatus>> {
        match self {
            Backend::Direct(store) => Ok(store.list()?),
            Backend::Remote(c) => c.list().await,
        }
    }

    async fn show(&self, name: &str) -> anyhow::Result<ClusterStatus> {
        match self {
            Backend::Direct(store) => Ok(store.status(name)?),
            Backend::Remote(c) => c.show(name).await,
        }
    }
}

impl ClusterCmd {
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            ClusterCmd::Create(c) => c.run().await,
            ClusterCmd::Reset(n) => {
                let status = Backend::open(&n.dir, OpenMode::MustExist)?
                    .reset(&n.name)
                    .await?;
                eprintln!(
                    "cluster {} reset ({} reset(s) so far): the next claimant may run one new `swarm init`",
                    status.name, status.resets
                );
                println!("{}", serde_json::to_string_pretty(&status)?);
                Ok(())
            }
            ClusterCmd::AwaitAdoption(n) => {
                let status = Backend::open(&n.dir, OpenMode::MustExist)?
                    .set_adoption_hold(&n.name, true)
                    .await?;
                eprintln!(
                    "cluster {} awaits adoption: init claims are refused until its running swarm \
                     adopts it (`swarm-coordinator cluster allow-init {}` lifts the hold)",
                    status.name, status.name
                );
                println!("{}", serde_json::to_string_pretty(&status)?);
                Ok(())
            }
            ClusterCmd::AllowInit(n) => {
                let status = Backend::open(&n.dir, OpenMode::MustExist)?
                    .set_adoption_hold(&n.name, false)
                    .await?;
                eprintln!(
                    "cluster {}: init claims are allowed (no adoption hold){}",
                    status.name,
                    if status.phase == swarmstrap_wire::Phase::Formed {
                        "; it is formed, so none is granted until a reset"
                    } else {
                        ""
                    }
                );
                println!("{}", serde_json::to_string_pretty(&status)?);
                Ok(())
            }
            ClusterCmd::RotateTokens(n) => {
                let status = Backend::open(&n.dir, OpenMode::MustExist)?
                    .request_token_rotation(&n.name)
                    .await?;
                eprintln!(
                    "cluster {}: join-token rotation {} requested; the raft leader's agent rotates \
                     the swarm's tokens and publishes them within seconds (`cluster show {}`: \
                     token_rotation_pending clears, token_rotations counts it)",
                    status.name,
                    status.token_rotation_pending.unwrap_or_default(),
                    status.name
                );
                println!("{}", serde_json::to_string_pretty(&status)?);
                Ok(())
            }
            ClusterCmd::RotateOperatorCredential(r) => r.run().await,
            ClusterCmd::List(l) => {
                let clusters = Backend::open(&l.dir, OpenMode::MustExist)?.list().await?;
                if l.json {
                    println!("{}", serde_json::to_string_pretty(&clusters)?);
                } else {
                    println!(
                        "{:<24} {:<8} {:>7} {:>6} {:>9} {:>7} {:>9}  HOLD",
                        "NAME", "PHASE", "TARGET", "NODES", "MANAGERS", "RESETS", "ADOPTIONS"
                    );
                    for c in clusters {
                        let managers = c
                            .nodes
                            .iter()
                            .filter(|n| n.role == swarmstrap_wire::Role::Manager)
                            .count();
                        println!(
                            "{:<24} {:<8} {:>7} {:>6} {:>9} {:>7} {:>9}  {}",
                            c.name,
                            c.phase.to_string(),
                            c.target_managers,
                            c.nodes.len(),
                            managers,
                            c.resets,
                            c.adoptions,
                            if c.awaiting_adoption {
                                "awaiting-adoption"
                            } else {
                                "-"
                            }
                        );
                    }
                }
                Ok(())
            }
            ClusterCmd::Show(n) => {
                let status = Backend::open(&n.dir, OpenMode::MustExist)?
                    .show(&n.name)
                    .await?;
                println!("{}", serde_json::to_string_pretty(&status)?);
                Ok(())
            }
        }
    }
}

/// Read a secret from `path` (`-`: stdin), trailing newline removed, checked.
fn read_secret(path: &Path, what: &str) -> anyhow::Result<Secret> {
    let text = if path == Path::new("-") {
        let mut t = String::new();
        std::io::stdin()
            .read_to_string(&mut t)
            .with_context(|| format!("cannot read the {what} from stdin"))?;
        t
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the {what} file {}", path.display()))?
    };
    let s = Secret::new(text.trim_end_matches(['\n', '\r']));
    crate::auth::validate_secret(&s)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("bad {what} in {}", path.display()))?;
    Ok(s)
}

/// Refuse an output file that exists, or whose directory does not (checked before the cluster
/// is created, so a bad path creates nothing).
fn check_out(path: &Path, flag: &str) -> anyhow::Result<()> {
    if path.exists() {
        bail!(
            "{} already exists; refusing to overwrite a secret file (remove it or pick another {flag})",
            path.display()
        );
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "the directory of {flag} {} does not exist; nothing was created",
            path.display()
        );
    }
    Ok(())
}

impl Create {
    async fn run(self) -> anyhow::Result<()> {
        swarmstrap_wire::validate_name(&self.name).map_err(anyhow::Error::msg)?;
        swarmstrap_wire::validate_target_managers(self.target_managers)
            .map_err(anyhow::Error::msg)?;
        if self.secret_file.as_deref() == Some(Path::new("-")) {
            bail!("--secret-file - is not supported: name a file (stdin is for --operator-credential-file -)");
        }
        let secret = match &self.secret_file {
            Some(path) => Some(read_secret(path, "secret")?),
            None => None,
        };
        let operator = match &self.operator_credential_file {
            Some(path) => Some(read_secret(path, "operator credential")?),
            None => None,
        };
        if let Some(out) = &self.out {
            check_out(out, "--out")?;
        }
        if let Some(out) = &self.operator_credential_out {
            check_out(out, "--operator-credential-out")?;
            if self.out.as_ref() == Some(out) {
                bail!("--out and --operator-credential-out must name two different files");
            }
        }
        let backend = Backend::open(&self.dir, OpenMode::CreateIfMissing)?;
        let created = backend
            .create(CreateCluster {
                name: self.name.clone(),
                target_managers: self.target_managers,
                secret,
                await_adoption: self.adopt,
                operator_credential: operator,
            })
            .await?;
        eprintln!(
            "created cluster {} (target managers {}); the coordinator keeps only the sha256 of its \
             join secret and operator credential",
            created.name, created.target_managers
        );
        if self.adopt {
            eprintln!(
                "cluster {} awaits adoption: no node may run `swarm init` until the running \
                 swarm's leader adopts it; if no swarm runs for it any more, lift the hold with \
                 `swarm-coordinator cluster allow-init {}`",
                created.name, created.name
            );
        }
        // Each secret the operator did not bring goes to its file or, once, to stdout.
        let mut stdout: Vec<(&str, &Secret)> = vec![];
        let mut failed: Vec<String> = vec![];
        let outputs = [
            (
                "join secret (every node's user-data)",
                "SWARMSTRAP_CLUSTER_SECRET",
                &created.secret,
                self.secret_file.as_ref(),
                self.out.as_ref(),
            ),
            (
                "operator credential (resets the cluster: `swarm-agent recover`; keep it off the nodes)",
                "SWARMSTRAP_OPERATOR_CREDENTIAL",
                &created.operator_credential,
                self.operator_credential_file.as_ref(),
                self.operator_credential_out.as_ref(),
            ),
        ];
        for (what, key, value, from, out) in outputs {
            if let Some(from) = from {
                eprintln!("{what}: taken from {}", from.display());
                continue;
            }
            let Some(out) = out else {
                stdout.push((key, value));
                continue;
            };
            let mut bytes = value.expose().as_bytes().to_vec();
            bytes.push(b'\n');
            match write_atomic(out, &bytes, 0o600) {
                Ok(()) => eprintln!(
                    "{what}: written to {} (mode 0600). The file stays on disk until you delete \
                     it: store it where it belongs, then delete it (e.g. `shred -u {}`)",
                    out.display(),
                    out.display()
                ),
                Err(e) => {
                    // Not lost: it goes to stdout instead, and the command fails.
                    failed.push(format!("{what} not written to {} ({e})", out.display()));
                    stdout.push((key, value));
                }
            }
        }
        if !stdout.is_empty() {
            let keys: Vec<&str> = stdout.iter().map(|(k, _)| *k).collect();
            eprintln!(
                "shown once on stdout (KEY=value lines: {}); nothing else keeps them",
                keys.join(", ")
            );
            for (key, value) in &stdout {
                println!("{key}={}", value.expose());
            }
        }
        if !failed.is_empty() {
            bail!(
                "cluster {} was created, but: {} (printed on stdout instead)",
                created.name,
                failed.join("; ")
            );
        }
        Ok(())
    }
}

impl RotateOperator {
    async fn run(self) -> anyhow::Result<()> {
        swarmstrap_wire::validate_name(&self.name).map_err(anyhow::Error::msg)?;
        let given = match &self.operator_credential_file {
            Some(path) => Some(read_secret(path, "operator credential")?),
            None => None,
        };
        if let Some(out) = &self.operator_credential_out {
            check_out(out, "--operator-credential-out")?;
        }
        let changed = Backend::open(&self.dir, OpenMode::MustExist)?
            .set_operator_credential(
                &self.name,
                crate::api::OperatorCredentialChange {
                    operator_credential: given,
                },
            )
            .await?;
        eprintln!(
            "cluster {}: new operator credential (the previous one resets nothing any more; \
             only its sha256 is stored)",
            changed.name
        );
        if self.operator_credential_file.is_some() {
            return Ok(());
        }
        let value = &changed.operator_credential;
        if let Some(out) = &self.operator_credential_out {
            let mut bytes = value.expose().as_bytes().to_vec();
            bytes.push(b'\n');
            match write_atomic(out, &bytes, 0o600) {
                Ok(()) => {
                    eprintln!(
                        "operator credential: written to {} (mode 0600). The file stays on disk \
                         until you delete it: store it where it belongs, then delete it (e.g. \
                         `shred -u {}`)",
                        out.display(),
                        out.display()
                    );
                    return Ok(());
                }
                Err(e) => {
                    println!("SWARMSTRAP_OPERATOR_CREDENTIAL={}", value.expose());
                    bail!(
                        "the credential was changed, but not written to {} ({e}): printed on \
                         stdout instead",
                        out.display()
                    );
                }
            }
        }
        eprintln!(
            "shown once on stdout (SWARMSTRAP_OPERATOR_CREDENTIAL=...); nothing else keeps it"
        );
        println!("SWARMSTRAP_OPERATOR_CREDENTIAL={}", value.expose());
        Ok(())
    }
}
