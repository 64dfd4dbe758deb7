//! Load-balancer propagation benchmark: how long from the swarm marking a node
//! Down / Ready to the new config file on every (other) host. Target: ≤ 2 s.
//!
//! dockerd marks a stopped node Down only after its heartbeat period (default 5 s), so two
//! clocks are printed per event:
//! - `propagation_s`: from the moment the leader's node list shows the change (polled through
//!   the leader's API every few ms) to the moment every host's file has changed;
//! - `from_engine_s`: from the engine stop (SIGTERM) / start to every host's file.
//!
//! Run as root after `bash scripts/build-static.sh`:
//! `cargo run --release -p swarmstrap-lab --example lb_bench -- [--runs 3]`

use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant};
use swarmstrap_lab::cluster::{AgentOptions, Cluster};
use swarmstrap_lab::nginx;
use swarmstrap_lab::swarm::{api_nodes, ManagerStatus, NodeStatus};
use swarmstrap_lab::{Backoff, Lab, LabConfig};

const PORT: u16 = 8080;

/// Poll `check` with a tight capped backoff (1 → 5 ms, jittered) until it is true or the
/// deadline passes; the instant it first held.
fn poll(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    let mut b = Backoff::new(Duration::from_millis(1), Duration::from_millis(5));
    loop {
        if check() {
            return Ok(Instant::now());
        }
        if !b.sleep_until_next(deadline) {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
    }
}

fn main() -> Result<()> {
    let mut runs = 3usize;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--runs" => runs = value.parse().context("--runs needs a number")?,
            other => bail!("unknown argument {other:?}; usage: lb_bench [--runs N]"),
        }
    }
    let lab = Lab::start(LabConfig::new(5))?;
    let c = Cluster::new(lab, "lbbench", AgentOptions::default())?;
    nginx::enable_lb(&c, &[])?;
    c.start_agents()?;
    let all: Vec<usize> = (0..5).collect();
    c.wait_formed(&all, 3, 2, Duration::from_secs(90))?;
    let addrs: Vec<_> = c.lab.hosts().iter().map(|h| h.addr()).collect();
    nginx::wait_identical(
        &c,
        &all,
        Duration::from_secs(60),
        "all 5 hosts listed",
        nginx::lists_every(&addrs, PORT),
    )?;
    // The worker to stop, and the leader whose node list is the reference.
    let w = (0..5)
        .rev()
        .find(|&i| {
            !c.lab
                .host(i)
                .swarm_info()
                .map(|s| s.control_available)
                .unwrap_or(true)
        })
        .context("no worker")?;
    let wh = c.lab.host(w);
    let leader_name = api_nodes(&c.lab.host(0).api())?
        .into_iter()
        .find(|n| n.manager_status == ManagerStatus::Leader)
        .context("no leader")?
        .hostname;
    let leader = c.lab.host_by_name(&leader_name).context("leader host")?;
    let others: Vec<_> = all.iter().copied().filter(|&i| i != w).collect();
    let line = nginx::server_line(wh.addr(), PORT);
    let leader_sees = |want: NodeStatus| {
        move || {
            api_nodes(&leader.api())
                .map(|ns| {
                    ns.iter()
                        .any(|n| n.hostname == wh.name() && n.status == want)
                })
                .unwrap_or(false)
        }
    };
    let files = |hosts: &[usize], present: bool| {
        let hosts = hosts.to_vec();
        let line = line.clone();
        let c = &c;
        move || {
            hosts.iter().all(|&i| {
                nginx::read_lb(c.lab.host(i)).is_some_and(|t| t.contains(&line) == present)
            })
        }
    };
    println!(
        "stopping/starting {} (worker); leader {leader_name}",
        wh.name()
    );
    println!("run\tevent\tengine_to_swarm_s\tpropagation_s\tfrom_engine_s");
    let mut worst: f64 = 0.0;
    for run in 1..=runs {
        for (event, down) in [("down", true), ("ready", false)] {
            let t0 = Instant::now();
            let (t_swarm, t_files) = std::thread::scope(|s| -> Result<(Instant, Instant)> {
                let want = if down {
                    NodeStatus::Down
                } else {
                    NodeStatus::Ready
                };
                let swarm = s.spawn(move || {
                    poll(
                        Duration::from_secs(90),
                        "the leader's node list",
                        leader_sees(want),
                    )
                });
                if down {
                    wh.stop_engine()?;
                } else {
                    wh.start_engine()?;
                }
                let t_files = if down {
                    poll(
                        Duration::from_secs(90),
                        "the other hosts' files",
                        files(&others, false),
                    )?
                } else {
                    poll(
                        Duration::from_secs(90),
                        "every host's file",
                        files(&all, true),
                    )?
                };
                let t_swarm = swarm.join().expect("poll thread")?;
                Ok((t_swarm, t_files))
            })?;
            let prop = t_files.saturating_duration_since(t_swarm).as_secs_f64();
            worst = worst.max(prop);
            println!(
                "{run}\t{event}\t{:.3}\t{prop:.3}\t{:.3}",
                (t_swarm - t0).as_secs_f64(),
                (t_files - t0).as_secs_f64()
            );
            if !down {
                wh.wait_engine_ready(Duration::from_secs(60))?;
            }
        }
    }
    println!("worst propagation: {worst:.3} s (target ≤ 2 s)");
    c.lab.teardown()?;
    Ok(())
}
