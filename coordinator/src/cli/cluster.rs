use super::admin_client::AdminClient;
use crate::datadir::DataDir;
use crate::store::{OpenError, OpenMode, Store};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use swarmstrap_wire::fsutil::write_atomic;
use swarmstrap_wire::{ClusterStatus, CreateCluster, CreatedCluster, Secret};

/// `swarm-coordinator cluster ...`: works on the data dir directly when no server runs, and
/// through the running server's admin API when the server holds the database.
#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Create a cluster and print its join secret (or write it to --out).
    Create(Create),
    /// Allow exactly one new `swarm init` for a formed cluster (recorded in its `resets`).
    Reset(Named),
    /// Refuse init claims until the cluster's running swarm adopts it (the cluster was
    /// re-created, or restored from a backup taken before its swarm formed).
    AwaitAdoption(Named),
    /// Lift the adoption hold: no swarm runs for this cluster any more, let a new one form.
    AllowInit(Named),
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
    /// Read the secret from this file instead of generating one (e.g. Terraform's
    /// random_password written to a file).
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// Write the generated secret to this file (mode 0600) instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
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

impl Create {
    async fn run(self) -> anyhow::Result<()> {
        swarmstrap_wire::validate_name(&self.name).map_err(anyhow::Error::msg)?;
        swarmstrap_wire::validate_target_managers(self.target_managers)
            .map_err(anyhow::Error::msg)?;
        let secret = match &self.secret_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the secret file {}", path.display()))?;
                let s = Secret::new(text.trim_end_matches(['\n', '\r']));
                crate::auth::validate_secret(&s)
                    .map_err(anyhow::Error::msg)
                    .with_context(|| format!("bad secret in {}", path.display()))?;
                Some(s)
            }
            None => None,
        };
        if let Some(out) = &self.out {
            if out.exists() {
                bail!(
                    "{} already exists; refusing to overwrite a secret file (remove it or pick another --out)",
                    out.display()
                );
            }
        }
        let from_file = secret.is_some();
        let backend = Backend::open(&self.dir, OpenMode::CreateIfMissing)?;
        let created = backend
            .create(CreateCluster {
                name: self.name.clone(),
                target_managers: self.target_managers,
                secret,
                await_adoption: self.adopt,
            })
            .await?;
        if self.adopt {
            eprintln!(
                "cluster {} awaits adoption: no node may run `swarm init` until the running \
                 swarm's leader adopts it; if no swarm runs for it any more, lift the hold with \
                 `swarm-coordinator cluster allow-init {}`",
                created.name, created.name
            );
        }
        match &self.out {
            Some(out) => {
                let mut bytes = created.secret.expose().as_bytes().to_vec();
                bytes.push(b'\n');
                write_atomic(out, &bytes, 0o600).with_context(|| {
                    format!(
                        "cluster created, but cannot write its secret to {}",
                        out.display()
                    )
                })?;
                eprintln!(
                    "created cluster {} (target managers {}); secret written to {} (mode 0600)",
                    created.name,
                    created.target_managers,
                    out.display()
                );
            }
            None if from_file => eprintln!(
                "created cluster {} (target managers {}) with the secret from {}",
                created.name,
                created.target_managers,
                self.secret_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
            None => {
                eprintln!(
                    "created cluster {} (target managers {}); its secret follows on stdout",
                    created.name, created.target_managers
                );
                println!("{}", created.secret.expose());
            }
        }
        Ok(())
    }
}
