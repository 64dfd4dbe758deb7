//! Agent steady state: RSS and CPU of every `swarm-agent run` over a 60 s idle
//! window in a formed 5-node cluster (coordinator backend, load balancer off, quorum keeper
//! on). Reads /proc/<pid>/status (VmRSS, VmHWM) and /proc/<pid>/stat (utime + stime) at the
//! start and the end of the window; the window is the measurement, not a wait for anything.
//!
//! Run as root after `bash scripts/build-static.sh`:
//! `cargo run --release -p swarmstrap-lab --example agent_idle_bench -- [--secs 60] [--nodes 5]`

use anyhow::{bail, Context, Result};
use std::time::{Duration, Instant};
use swarmstrap_lab::cluster::{AgentOptions, Cluster};
use swarmstrap_lab::{Lab, LabConfig};

fn status_kib(pid: i32, key: &str) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// utime + stime in clock ticks.
fn cpu_ticks(pid: i32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the ")" of comm: state is field 3; utime 14, stime 15 (1-based).
    let rest = s.rsplit_once(')').context("bad stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn main() -> Result<()> {
    let (mut secs, mut nodes) = (60u64, 5usize);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--secs" => secs = v.parse()?,
            "--nodes" => nodes = v.parse()?,
            other => {
                bail!("unknown argument {other:?}; usage: agent_idle_bench [--secs 60] [--nodes 5]")
            }
        }
    }
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let lab = Lab::start(LabConfig::new(nodes))?;
    let c = Cluster::new(lab, "idle", AgentOptions::default())?;
    c.start_agents()?;
    let all: Vec<usize> = (0..nodes).collect();
    let managers = nodes.min(3);
    c.wait_formed(&all, managers, nodes - managers, Duration::from_secs(120))?;
    let pids: Vec<i32> = all.iter().map(|&i| c.agent(i).unwrap().pid()).collect();
    let before: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect::<Result<_>>()?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs)); // the measurement window itself
    let wall = t0.elapsed().as_secs_f64();
    println!("host\trole\trss_kib\thwm_kib\tcpu_s\tcpu_pct");
    let mut rss_all = Vec::new();
    let mut pct_all = Vec::new();
    for (k, &i) in all.iter().enumerate() {
        let p = pids[k];
        let rss = status_kib(p, "VmRSS:")?;
        let hwm = status_kib(p, "VmHWM:")?;
        let cpu = (cpu_ticks(p)? - before[k]) as f64 / ticks_per_sec;
        let role = if c.lab.host(i).swarm_info()?.control_available {
            "manager"
        } else {
            "worker"
        };
        let pct = 100.0 * cpu / wall;
        println!(
            "{}\t{role}\t{rss}\t{hwm}\t{cpu:.2}\t{pct:.3}",
            c.lab.host(i).name()
        );
        rss_all.push(rss);
        pct_all.push(pct);
    }
    println!(
        "summary: {nodes} agents idle for {wall:.1} s: RSS {}–{} KiB, CPU {:.3}–{:.3} % of one core",
        rss_all.iter().min().unwrap(),
        rss_all.iter().max().unwrap(),
        pct_all.iter().cloned().fold(f64::INFINITY, f64::min),
        pct_all.iter().cloned().fold(0.0, f64::max),
    );
    Ok(())
}
