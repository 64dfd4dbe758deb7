//! Baseline formation benchmark: how long a script that already knows everything (init on
//! node1, then every other node joins in parallel) takes from "all engines up" to "all N
//! Ready", for N = 3, 5, 9. The agent's formation time is compared with this floor.
//!
//! Run as root: `cargo run -p swarmstrap-lab --example baseline_bench -- [--sizes 3,5,9]
//! [--runs 3] [--managers 3]`. Prints one tab-separated line per run on stdout.

use anyhow::{bail, Context, Result};
use swarmstrap_lab::{baseline_form, Lab, LabConfig};

struct Args {
    sizes: Vec<usize>,
    runs: usize,
    managers: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        sizes: vec![3, 5, 9],
        runs: 1,
        managers: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--sizes" => {
                a.sizes = value()?
                    .split(',')
                    .map(|s| s.trim().parse().with_context(|| format!("bad size {s:?}")))
                    .collect::<Result<_>>()?
            }
            "--runs" => a.runs = value()?.parse().context("--runs needs a number")?,
            "--managers" => a.managers = value()?.parse().context("--managers needs a number")?,
            other => bail!(
                "unknown argument {other:?}; usage: baseline_bench [--sizes 3,5,9] [--runs N] \
                 [--managers M]"
            ),
        }
    }
    if a.managers % 2 != 1 {
        bail!("--managers must be odd (a swarm keeps an odd manager count)");
    }
    Ok(a)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("baseline_bench: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args = parse_args()?;
    println!("nodes\tmanagers\tworkers\tengines_up_s\tformation_s");
    for &n in &args.sizes {
        // At most --managers, at most n, and odd.
        let managers = args.managers.min(n);
        let managers = managers - (1 - managers % 2);
        for _ in 0..args.runs {
            let lab = Lab::start(LabConfig::new(n))
                .with_context(|| format!("starting a {n}-host lab"))?;
            let up = lab.engines_ready_in().context("engines were started")?;
            let formed = baseline_form(&lab, managers, n - managers)
                .with_context(|| format!("forming {n} nodes"))?;
            println!(
                "{n}\t{managers}\t{}\t{:.3}\t{:.3}",
                n - managers,
                up.as_secs_f64(),
                formed.as_secs_f64()
            );
            lab.teardown().context("tearing the lab down")?;
        }
    }
    Ok(())
}
