//! Formation benchmark: seconds from "all engines up" to "all N Ready" with the
//! agents (coordinator backend, role=auto), beside the same for a script that already knows
//! everything (init, then parallel joins: `baseline_form`), and the ratio. Target: ≤ 1.25×.
//!
//! Both sides are measured the same way: the clock starts when the engines are up and the
//! first action is taken (the agents are started / `swarm init` is called) and stops when a
//! manager's node list shows every node Ready, polled every 10 ms.
//!
//! `--backend etcd` runs the agents through the lab's 3-member etcd cluster (real etcd members
//! on lab namespaces, TLS + auth, started before the clock starts) instead of the coordinator.
//!
//! Run as root after `bash scripts/build-static.sh`:
//! `cargo run --release -p swarmstrap-lab --example formation_bench -- [--sizes 3,5,9] [--runs 3] [--backend coordinator|etcd]`

use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant};
use swarmstrap_lab::cluster::{AgentOptions, Cluster};
use swarmstrap_lab::swarm::poll_swarm_shape;
use swarmstrap_lab::{baseline_form, Lab, LabConfig};

fn main() -> Result<()> {
    let mut sizes = vec![3usize, 5, 9];
    let mut runs = 3usize;
    let mut backend = "coordinator".to_string();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--sizes" => {
                sizes = value
                    .split(',')
                    .map(|s| s.trim().parse().with_context(|| format!("bad size {s:?}")))
                    .collect::<Result<_>>()?
            }
            "--runs" => runs = value.parse().context("--runs needs a number")?,
            "--backend" if value == "coordinator" || value == "etcd" => backend = value,
            "--backend" => bail!("--backend {value:?}: use `coordinator` or `etcd`"),
            other => bail!(
                "unknown argument {other:?}; usage: formation_bench [--sizes 3,5,9] [--runs N] \
                 [--backend coordinator|etcd]"
            ),
        }
    }
    println!("backend: {backend}");
    println!("nodes\tmanagers\trun\tbaseline_s\tagents_s\tratio");
    let mut summary = Vec::new();
    for &n in &sizes {
        let managers = if n >= 3 { 3 } else { 1 };
        let workers = n - managers;
        let (mut b_all, mut a_all) = (Vec::new(), Vec::new());
        for run in 0..runs {
            let lab = Lab::start(LabConfig::new(n))?;
            let b = baseline_form(&lab, managers, workers)?;
            lab.teardown()?;

            let lab = Lab::start(LabConfig::new(n))?;
            let options = AgentOptions {
                target_managers: managers as u8,
                ..AgentOptions::default()
            };
            let c = if backend == "etcd" {
                Cluster::new_etcd(lab, "bench", options)?
            } else {
                Cluster::new(lab, "bench", options)?
            };
            let apis: Vec<_> = c.lab.hosts().iter().map(|h| h.api()).collect();
            let t0 = Instant::now();
            c.start_agents()?;
            let a = poll_swarm_shape(
                &apis,
                managers,
                workers,
                t0,
                Duration::from_millis(10),
                Duration::from_secs(120),
            )
            .map_err(|e| anyhow::anyhow!("{e}\n{}", c.diagnostics()))?;
            drop(c);
            println!(
                "{n}\t{managers}\t{run}\t{:.3}\t{:.3}\t{:.2}",
                b.as_secs_f64(),
                a.as_secs_f64(),
                a.as_secs_f64() / b.as_secs_f64()
            );
            b_all.push(b.as_secs_f64());
            a_all.push(a.as_secs_f64());
        }
        summary.push((n, median(&mut b_all), median(&mut a_all)));
    }
    println!("\nmedians:\nnodes\tbaseline_s\tagents_s\tratio");
    for (n, b, a) in summary {
        println!("{n}\t{b:.3}\t{a:.3}\t{:.2}", a / b);
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
