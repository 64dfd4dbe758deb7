use crate::datadir::{DataDir, SELF_SIGNED_CERT};
use anyhow::Context;
use clap::{ArgGroup, Args};
use std::path::PathBuf;

/// `swarm-coordinator fingerprint`
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("source").required(true).multiple(true).args(["data_dir", "tls_cert"])))]
pub struct Fingerprint {
    /// Data dir whose self-signed certificate to read (DATA_DIR/tls/cert.pem).
    #[arg(long, env = "SWARM_COORDINATOR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// A PEM certificate file (the first certificate is the one served).
    #[arg(long, env = "SWARM_COORDINATOR_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
}

impl Fingerprint {
    pub fn run(self) -> anyhow::Result<()> {
        let path = match (self.tls_cert, self.data_dir) {
            (Some(cert), _) => cert,
            (None, Some(dir)) => DataDir::new(dir).path(SELF_SIGNED_CERT),
            (None, None) => unreachable!("clap requires one of the two"),
        };
        let fp = crate::tls::fingerprint_of_file(&path).with_context(|| {
            format!(
                "cannot compute the fingerprint of {} (for a self-signed certificate, start \
                 `serve --tls-self-signed` once to generate it)",
                path.display()
            )
        })?;
        println!("{fp}");
        Ok(())
    }
}
