//! `swarm-agent lb render`: print the load-balancer config this node would write now (from the
//! current membership document in the backend), for debugging. Writes nothing.

use crate::backend;
use crate::config::{Config, Overrides};
use crate::lb::membership::{Membership, DOC_NAME};
use crate::lb::render;
use anyhow::Context;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct LbArgs {
    #[command(subcommand)]
    pub command: LbCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum LbCommand {
    /// Print the config that would be written now (stdout); the document version on stderr.
    Render {
        #[command(flatten)]
        config: Overrides,
    },
}

impl LbArgs {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            LbCommand::Render { config } => {
                let cfg = Config::load(&config)?;
                let backend = backend::open(&cfg, Duration::from_secs(10))
                    .await
                    .with_context(|| format!("opening the {} backend", cfg.backend.as_str()))?;
                let backend = crate::relay::for_command(&cfg, backend);
                let doc = backend
                    .get_doc(DOC_NAME, None, Duration::ZERO)
                    .await
                    .with_context(|| {
                        format!(
                            "reading the {DOC_NAME} document from {}",
                            backend.describe()
                        )
                    })?;
                let m = Membership::from_body(&doc.body)
                    .map_err(anyhow::Error::msg)?
                    .with_context(|| {
                        format!(
                            "no membership has been published yet for cluster {} (the agent on the swarm leader publishes it once the swarm is formed)",
                            cfg.cluster
                        )
                    })?;
                let out = render::render(&cfg.cluster, &m, &cfg.lb)?;
                eprintln!(
                    "# membership version {}: {} nodes, {} ready",
                    doc.version,
                    m.nodes.len(),
                    m.ready().len()
                );
                print!("{out}");
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}
