//! The main job of the README: a local demo cluster. Starts a 5-host lab (five real Docker
//! engines, one network namespace each), the coordinator and an agent per host, waits until
//! the swarm is formed, prints every host's `swarm-agent status` and `docker node ls`, and
//! tears everything down on exit (also on failure or Ctrl-C... via the lab's Drop).
//!
//! `cargo run -p swarmstrap-lab --bin demo -- [--hosts N] [--managers M] [--hold]`
//! (`scripts/demo.sh` builds the static binaries first.)

use std::time::{Duration, Instant};
use swarmstrap_lab::cluster::{AgentOptions, Cluster};
use swarmstrap_lab::{Lab, LabConfig};

fn main() -> anyhow::Result<()> {
    let mut hosts = 5usize;
    let mut managers = 3u8;
    let mut hold = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--hosts" => hosts = args.next().unwrap_or_default().parse()?,
            "--managers" => managers = args.next().unwrap_or_default().parse()?,
            "--hold" => hold = true,
            other => {
                anyhow::bail!("unknown argument {other:?} (use --hosts N, --managers M, --hold)")
            }
        }
    }
    swarmstrap_wire::validate_target_managers(managers).map_err(anyhow::Error::msg)?;
    let workers = hosts.saturating_sub(managers as usize);

    eprintln!("demo: starting {hosts} Docker engines, each in its own network namespace…");
    let lab = Lab::start(LabConfig::new(hosts))?;
    let c = Cluster::new(
        lab,
        "demo",
        AgentOptions {
            target_managers: managers,
            ..AgentOptions::default()
        },
    )?;
    eprintln!(
        "demo: coordinator at {} (certificate {}); starting {hosts} agents",
        c.coordinator().url(),
        c.coordinator().fingerprint()
    );
    let t0 = Instant::now();
    c.start_agents()?;
    let all: Vec<usize> = (0..hosts).collect();
    let swarm_id = c.wait_formed(
        &all,
        (managers as usize).min(hosts),
        workers,
        Duration::from_secs(120),
    )?;
    eprintln!(
        "demo: swarm {swarm_id} formed in {:.2} s after the agents started\n",
        t0.elapsed().as_secs_f64()
    );
    for (i, h) in c.lab.hosts().iter().enumerate() {
        println!("===== {} ({}) $ swarm-agent status", h.name(), h.addr());
        println!("{}", c.status_text(i)?);
    }
    let mgr = c
        .lab
        .hosts()
        .iter()
        .find(|h| h.swarm_info().map(|s| s.control_available).unwrap_or(false))
        .ok_or_else(|| anyhow::anyhow!("no manager answers"))?;
    println!("===== {} $ docker node ls", mgr.name());
    println!("{}", mgr.docker(&["node", "ls"])?);
    println!(
        "===== coordinator $ swarm-coordinator cluster show demo\n{}",
        serde_json::to_string_pretty(&c.coordinator().show("demo")?)?
    );
    if hold {
        eprintln!("demo: --hold: press Enter to tear down");
        let mut s = String::new();
        let _ = std::io::stdin().read_line(&mut s);
    }
    eprintln!("demo: tearing down");
    drop(c);
    Ok(())
}
