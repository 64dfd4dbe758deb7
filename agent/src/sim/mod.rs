//! Race suite: a randomized simulation of the bootstrap under faults, asserting one `swarm
//! init` per cluster (issue 8).
//!
//! Each race runs the REAL [`crate::bootstrap::Bootstrap`] for 3–9 nodes of one cluster at
//! once, against the fake engine world of `testing.rs` (which counts every `swarm init`) and
//! the REAL coordinator store (`swarm_coordinator::store::Store`, redb in a temp dir) behind an
//! in-process `Rendezvous` adapter (`coord.rs`). A seeded plan (`race.rs`) decides:
//!
//! - per call faults in front of the coordinator (`faults.rs`): `Transient` before applying,
//!   answer lost after applying, call applied twice, request/answer delayed;
//! - coordinator restarts (the store is dropped and reopened from its data dir; calls during
//!   the outage fail, answers across it are lost; some outages outlast the lease);
//! - crashes: the n-th time any node reaches a [`faults::Step`] (after register, after claim,
//!   intent on disk, after init, after inspect, after renew, before/after publish, after join
//!   info, after join, after leave) it dies there; the first crash step cycles with the seed so
//!   consecutive seeds hit every step; plus crashes at random times. A crashed node restarts
//!   with a NEW `Bootstrap` over the SAME state dir and engine, after a delay that is sometimes
//!   longer than the lease (takeover);
//! - engine faults: engine down at boot, transient join failures, lost join answer, slow init;
//! - some nodes reboot once more after formation (must be a no-op).
//!
//! Checked for every race: it converges within 40 s (no stuck node) without any bootstrap
//! error; the cluster is formed; with one fencing token ever granted exactly one `swarm init`
//! happened in the world, with takeovers at most one init per token (and never more inits than
//! tokens); every init had its intent record on disk and a live lease at the coordinator; every
//! node is in the published swarm (same CA), in the role the coordinator assigned; no swarm
//! ever has more managers than the target; no orphan swarm keeps members; every state file says
//! `joined` with the published swarm; reboots change nothing.
//!
//! Environment:
//! - `SWARMSTRAP_RACES=N`: number of races (default [`CI_RACES`]);
//! - `SWARMSTRAP_RACE_SEED=S`: run only seed S (decimal or 0x-hex) and print its trace;
//! - `SWARMSTRAP_RACE_BASE=S`: the first seed (default 1; race i uses seed S+i);
//! - `SWARMSTRAP_RACE_PARALLEL=P`: races run at once (default 12);
//! - `SWARMSTRAP_RACE_TRACE=1`: print every race's trace;
//! - `SWARMSTRAP_RACE_LOG=<filter>`: the agent's own log lines (e.g. `swarm_agent=debug`);
//! - `SWARMSTRAP_RACE_DEADLINE_SECS=S`: when an unfinished race counts as stuck (default 40);
//! - `SWARMSTRAP_RACE_LOST_INIT_ANSWER=0`: leave out the engine fault "the answer of a
//!   successful `swarm init` is lost" (on by default);
//! - `SWARMSTRAP_RACE_LATE_ANSWERS=0`: leave out coordinator answers delayed past the lease
//!   TTL (on by default).

mod coord;
mod faults;
mod race;

use race::{Opts, RaceResult};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Races of a plain `cargo test` (the CI subset).
const CI_RACES: u64 = 200;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn env_u64(name: &str) -> Option<u64> {
    env(name).map(|v| {
        let v = v.trim();
        let parsed = match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => v.parse(),
        };
        parsed.unwrap_or_else(|e| panic!("{name}={v:?}: {e}"))
    })
}

/// On unless set to `0`.
fn env_flag(name: &str) -> bool {
    env(name).is_none_or(|v| v != "0")
}

fn rerun(seed: u64, opts: &Opts) -> String {
    let mut env = format!("SWARMSTRAP_RACE_SEED={seed}");
    if !opts.lost_init_answer {
        env += " SWARMSTRAP_RACE_LOST_INIT_ANSWER=0";
    }
    if !opts.late_answers {
        env += " SWARMSTRAP_RACE_LATE_ANSWERS=0";
    }
    format!("{env} cargo test -p swarm-agent --lib sim::races -- --nocapture")
}

fn print_trace(r: &RaceResult) {
    println!("---- trace of seed {} ({:.2?}) ----", r.seed, r.elapsed);
    for line in &r.trace {
        println!("{line}");
    }
}

async fn run_suite(seeds: Vec<u64>, parallel: usize, opts: Opts, verbose: bool) -> Vec<RaceResult> {
    use futures_util::StreamExt;
    let results: Vec<RaceResult> = futures_util::stream::iter(seeds)
        .map(|seed| {
            let opts = opts.clone();
            async move {
                tokio::spawn(race::run_race(seed, opts))
                    .await
                    .expect("a race panicked")
            }
        })
        .buffer_unordered(parallel.max(1))
        .inspect(|r| {
            if verbose || !r.failures.is_empty() {
                print_trace(r);
            }
        })
        .collect()
        .await;
    results
}

fn summary(results: &[RaceResult], wall: Duration) -> String {
    let mut counters: BTreeMap<String, u64> = BTreeMap::new();
    let mut hows: BTreeMap<String, u64> = BTreeMap::new();
    for r in results {
        for (k, v) in &r.counters {
            *counters.entry(k.clone()).or_default() += v;
        }
        for h in &r.hows {
            *hows.entry(format!("{h:?}")).or_default() += 1;
        }
    }
    let mut times: Vec<Duration> = results.iter().map(|r| r.elapsed).collect();
    times.sort();
    let pct = |p: usize| times.get((times.len() * p / 100).min(times.len().saturating_sub(1)));
    let takeovers = results.iter().filter(|r| r.tokens > 1).count();
    let multi = results.iter().filter(|r| r.inits > 1).count();
    let failed = results.iter().filter(|r| !r.failures.is_empty()).count();
    let mut s = format!(
        "race suite: {} races, {failed} failed, wall {wall:.1?}; per race median {:?}, p90 {:?}, \
         max {:?}\n",
        results.len(),
        pct(50).copied().unwrap_or_default(),
        pct(90).copied().unwrap_or_default(),
        times.last().copied().unwrap_or_default(),
    );
    s += &format!(
        "  races with a lease takeover (>1 fencing token): {takeovers}; with >1 `swarm init` \
         (orphan left, allowed only after a takeover): {multi}\n"
    );
    s += &format!("  outcomes: {hows:?}\n");
    s += "  events:\n";
    for (k, v) in &counters {
        s += &format!("    {k}: {v}\n");
    }
    s
}

#[test]
fn races() {
    if let Some(filter) = env("SWARMSTRAP_RACE_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let opts = Opts {
        lost_init_answer: env_flag("SWARMSTRAP_RACE_LOST_INIT_ANSWER"),
        trace_all: env_flag("SWARMSTRAP_RACE_TRACE"),
        late_answers: env_flag("SWARMSTRAP_RACE_LATE_ANSWERS"),
        deadline: Duration::from_secs(
            env_u64("SWARMSTRAP_RACE_DEADLINE_SECS").unwrap_or(race::RACE_DEADLINE.as_secs()),
        ),
    };
    let (seeds, verbose) = match env_u64("SWARMSTRAP_RACE_SEED") {
        Some(seed) => (vec![seed], true),
        None => {
            let n = env_u64("SWARMSTRAP_RACES").unwrap_or(CI_RACES);
            let base = env_u64("SWARMSTRAP_RACE_BASE").unwrap_or(1);
            (
                (0..n).map(|i| base.wrapping_add(i)).collect(),
                opts.trace_all,
            )
        }
    };
    let parallel = env_u64("SWARMSTRAP_RACE_PARALLEL").unwrap_or(12) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let results = rt.block_on(run_suite(seeds, parallel, opts.clone(), verbose));
    let report = summary(&results, started.elapsed());
    println!("{report}");
    let failed: Vec<&RaceResult> = results.iter().filter(|r| !r.failures.is_empty()).collect();
    if !failed.is_empty() {
        let mut msg = format!("{} of {} races failed\n", failed.len(), results.len());
        for r in &failed {
            msg += &format!("\nseed {}: {}\n", r.seed, r.plan);
            for f in &r.failures {
                msg += &format!("  - {f}\n");
            }
            msg += &format!("  rerun: {}\n", rerun(r.seed, &opts));
        }
        msg += "\n(the traces are printed above; run with --nocapture to see them)\n";
        msg += &report;
        panic!("{msg}");
    }
}

/// The adapter keeps the coordinator's semantics across a restart, and answers across it are
/// lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_restart_keeps_the_lease_and_fails_calls_in_between() {
    use swarmstrap_wire::rendezvous::Rendezvous;
    use swarmstrap_wire::{Phase, RegisterRequest, RequestedRole};
    let dir = tempfile::tempdir().unwrap();
    let c = std::sync::Arc::new(coord::Coordinator::start(dir.path(), "sim", 1).await);
    c.register(&RegisterRequest {
        node_id: "a".into(),
        hostname: "a".into(),
        advertise_addr: "198.18.0.1".into(),
        role: RequestedRole::Auto,
    })
    .await
    .unwrap();
    let granted = c.claim("a", Duration::from_secs(30)).await.unwrap();
    assert!(granted.granted);
    let token = granted.lease.unwrap().fencing_token;

    // A long-poll in flight when the coordinator goes down loses its answer.
    let c2 = c.clone();
    let poll = tokio::spawn(async move { c2.wait_join("a", Duration::from_secs(30)).await });
    let c3 = c.clone();
    let restart = tokio::spawn(async move { c3.restart(Duration::from_millis(50)).await });
    let polled = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the long-poll ends at the restart")
        .unwrap();
    assert!(polled.unwrap_err().is_transient());
    tokio::time::timeout(Duration::from_secs(10), restart)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // Same lease, same token after the restart; another node is refused.
    let again = c.claim("a", Duration::from_secs(30)).await.unwrap();
    assert!(again.granted);
    assert_eq!(again.lease.unwrap().fencing_token, token);
    let other = c.claim("b", Duration::from_secs(30)).await.unwrap();
    assert!(!other.granted);
    assert_eq!(other.phase, Phase::Claimed);
    // Fencing answers as over HTTP: a stale token is a Conflict.
    let stale = c.renew("a", token + 7, Duration::from_secs(30)).await;
    assert!(
        matches!(
            stale,
            Err(swarmstrap_wire::rendezvous::RendezvousError::Conflict { .. })
        ),
        "{stale:?}"
    );
}
