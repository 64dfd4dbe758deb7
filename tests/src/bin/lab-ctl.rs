//! `lab-ctl`: small operator tool around the lab.
//!
//! - `lab-ctl cleanup`: remove leftovers of crashed lab runs (our own objects only).
//! - `lab-ctl abandon N`: start an N-host lab, print `id=<id> root=<root>`, wait for stdin to
//!   close, then exit WITHOUT teardown (what a crashed test leaves; used by the stale-cleanup
//!   test).

use anyhow::{bail, Context, Result};
use std::io::Read;
use swarmstrap_lab::{cleanup_stale, Lab, LabConfig};

fn main() {
    if let Err(e) = run() {
        eprintln!("lab-ctl: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["cleanup"] => {
            let r = cleanup_stale().context("cleaning up lab leftovers")?;
            for x in &r.removed {
                println!("removed {x}");
            }
            for e in &r.errors {
                eprintln!("lab-ctl: {e}");
            }
            if !r.errors.is_empty() {
                bail!("{} cleanup steps failed", r.errors.len());
            }
            Ok(())
        }
        ["abandon", n] => {
            let n: usize = n.parse().context("abandon N: N must be a host count")?;
            let lab = Lab::start(LabConfig::new(n)).context("starting the lab")?;
            println!("id={} root={}", lab.id(), lab.root().display());
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            // Exit without running Drop: everything stays behind, as after a crash.
            std::process::exit(0);
        }
        _ => bail!("usage: lab-ctl cleanup | lab-ctl abandon <hosts>"),
    }
}
