//! One race: a seeded plan, 3–9 nodes running the real [`Bootstrap`] concurrently against one
//! backend ([`SimBackend`]), with faults, crashes and backend restarts/outages; then the checks.

use super::backend::{Kind, SimBackend};
use super::faults::Step;
use super::faults::{EnginePlan, FaultMix, FaultyRendezvous, Incarnation, Rng, SimEngine, STEPS};
use crate::bootstrap::{Bootstrap, How, Outcome, Settings};
use crate::retry::Policy;
use crate::state::{AgentPhase, StateStore};
use crate::testing::{world, FakeEngine, SharedWorld};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swarmstrap_wire::{ClusterStatus, Phase, RequestedRole, Role};
use tracing::Instrument;

pub const CLUSTER: &str = "sim";
/// The rulebook's minimum lease TTL (`rules::MIN_LEASE_TTL_MS`): the shortest lease any
/// backend grants, so takeovers happen as fast as they can.
pub const LEASE_TTL: Duration = Duration::from_secs(1);
/// A race that has not converged by then has a stuck node (default of `Opts::deadline`).
pub const RACE_DEADLINE: Duration = Duration::from_secs(40);
/// Answers delayed past the lease TTL (`Opts::late_answers`).
const LATE_ANSWER: (u64, u64) = (1100, 1600);
/// Short retries: a race is about timing, not about waiting.
const POLICY: Policy = Policy {
    base_initial: Duration::from_millis(5),
    base_cap: Duration::from_millis(100),
    deadline: None,
};
/// systemd's RestartSec after the agent exits with an error.
const ERROR_RESTART: Duration = Duration::from_millis(100);
/// A node that fails this often in one race is given up (and reported).
const MAX_ERRORS: usize = 3;

/// Knobs from the environment (see `mod.rs`).
#[derive(Clone, Debug)]
pub struct Opts {
    /// Add the engine fault "the answer of a successful `swarm init` is lost".
    pub lost_init_answer: bool,
    /// Print every race's trace, not only failing ones.
    pub trace_all: bool,
    /// Add answers delayed past the lease TTL (a paused VM or a stalled connection).
    pub late_answers: bool,
    /// How long a race may take before its unfinished nodes count as stuck.
    pub deadline: Duration,
}

// ---------------------------------------------------------------------------------------------
// The plan

/// Everything random about a race, drawn from its seed before it starts. (The interleaving of
/// the nodes also depends on timing, so a seed reruns the same plan, not always the exact same
/// interleaving.)
#[derive(Clone, Debug)]
pub struct Plan {
    pub seed: u64,
    pub nodes: usize,
    pub target: u8,
    pub roles: Vec<RequestedRole>,
    pub start_at: Vec<Duration>,
    pub mix_name: &'static str,
    pub mix: FaultMix,
    /// (when, how long down): coordinator restarts, outages of the other backends.
    pub restarts: Vec<(Duration, Duration)>,
    /// The n-th time any node reaches `step` (counted after the previous entry fired), that
    /// node crashes. The first entry's step cycles with the seed, so consecutive seeds cover
    /// every step.
    pub step_crashes: Vec<(Step, u32)>,
    /// (node, when): kill the node's agent at that time, wherever it is.
    pub timed_crashes: Vec<(usize, Duration)>,
    /// How long a crashed node stays down, used in turn (some longer than the lease TTL).
    pub restart_delays: Vec<Duration>,
    pub engines: Vec<EnginePlan>,
    /// Nodes restarted once more after formation (must be a no-op).
    pub reboot_after: Vec<usize>,
    pub node_seeds: Vec<u64>,
}

impl Plan {
    pub fn new(seed: u64, opts: &Opts) -> Plan {
        let mut r = Rng::new(seed);
        let nodes = r.range(3, 9) as usize;
        let targets: Vec<u8> = [1u8, 3, 3, 3, 5, 7]
            .into_iter()
            .filter(|t| usize::from(*t) <= nodes)
            .collect();
        let target = targets[r.range(0, targets.len() as u64 - 1) as usize];
        let mut roles: Vec<RequestedRole> = (0..nodes)
            .map(|_| match r.range(0, 99) {
                0..=84 => RequestedRole::Auto,
                85..=94 => RequestedRole::Worker,
                _ => RequestedRole::Manager,
            })
            .collect();
        if roles.iter().all(|x| *x == RequestedRole::Worker) {
            roles[0] = RequestedRole::Auto;
        }
        let herd = r.chance(0.3);
        let start_at = (0..nodes)
            .map(|_| if herd { Duration::ZERO } else { r.ms(0, 400) })
            .collect();
        let (mix_name, mix) = match r.range(0, 9) {
            0..=1 => (
                "calm",
                FaultMix {
                    fail: 0.0,
                    lose: 0.0,
                    dup: 0.0,
                    delay: 0.0,
                    max_delay: Duration::ZERO,
                    late: 0.0,
                    late_range: LATE_ANSWER,
                },
            ),
            2..=6 => (
                "moderate",
                FaultMix {
                    fail: 0.05,
                    lose: 0.05,
                    dup: 0.05,
                    delay: 0.2,
                    max_delay: Duration::from_millis(50),
                    late: if opts.late_answers { 0.01 } else { 0.0 },
                    late_range: LATE_ANSWER,
                },
            ),
            _ => (
                "stormy",
                FaultMix {
                    fail: 0.15,
                    lose: 0.15,
                    dup: 0.1,
                    delay: 0.4,
                    max_delay: Duration::from_millis(120),
                    late: if opts.late_answers { 0.03 } else { 0.0 },
                    late_range: LATE_ANSWER,
                },
            ),
        };
        let restarts = match r.range(0, 9) {
            0..=4 => 0,
            5..=7 => 1,
            _ => 2,
        };
        let restarts = (0..restarts)
            .map(|_| {
                let at = r.ms(0, 2000);
                let down = if r.chance(0.2) {
                    r.ms(1100, 1600) // longer than the lease
                } else {
                    r.ms(0, 200)
                };
                (at, down)
            })
            .collect();
        let mut step_crashes = vec![(STEPS[(seed % STEPS.len() as u64) as usize], 1)];
        for _ in 0..r.range(0, 2) {
            let s = STEPS[r.range(0, STEPS.len() as u64 - 1) as usize];
            step_crashes.push((s, r.range(1, 3) as u32));
        }
        let timed = if r.chance(0.5) { 0 } else { r.range(1, 2) };
        let timed_crashes = (0..timed)
            .map(|_| (r.range(0, nodes as u64 - 1) as usize, r.ms(0, 1500)))
            .collect();
        let restart_delays: Vec<Duration> = (0..8)
            .map(|_| {
                if r.chance(0.25) {
                    r.ms(1100, 1800) // the lease expires meanwhile: takeover
                } else {
                    r.ms(0, 150)
                }
            })
            .collect();
        let engines: Vec<EnginePlan> = (0..nodes)
            .map(|_| EnginePlan {
                down_at_boot: if r.chance(0.2) {
                    r.range(1, 4) as u32
                } else {
                    0
                },
                join_transient: if r.chance(0.2) {
                    r.range(1, 3) as u32
                } else {
                    0
                },
                lose_join_answer: r.chance(0.15),
                slow_init: r.chance(0.3).then(|| r.ms(100, 900)),
                lose_init_answer: r.chance(0.25) && opts.lost_init_answer,
            })
            .collect();
        let reboot_after = (0..r.range(0, 2))
            .map(|_| r.range(0, nodes as u64 - 1) as usize)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let node_seeds = (0..nodes).map(|_| r.next_u64()).collect();
        // Shape the plan so that the rare steps are reached when the seed picks them.
        let (mut engines, mut restart_delays) = (engines, restart_delays);
        match step_crashes[0].0 {
            // Renewals happen every ttl / RENEW_DIVISOR while init runs (and write once half the
            // ttl is used up): make init slow.
            Step::RenewApplied => {
                for e in &mut engines {
                    e.slow_init = Some(r.ms(400, 900));
                }
            }
            // An orphan is left only after a takeover: crash the first initialiser right after
            // init and keep it down past the lease.
            Step::LeaveApplied => {
                step_crashes.insert(0, (Step::InitApplied, 1));
                restart_delays[0] = r.ms(2500, 3500);
            }
            _ => {}
        }
        Plan {
            seed,
            nodes,
            target,
            roles,
            start_at,
            mix_name,
            mix,
            restarts,
            step_crashes,
            timed_crashes,
            restart_delays,
            engines,
            reboot_after,
            node_seeds,
        }
    }

    pub fn describe(&self) -> String {
        let roles: Vec<String> = self.roles.iter().map(|r| format!("{r:?}")).collect();
        let engines: Vec<String> = self
            .engines
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                e.down_at_boot > 0
                    || e.join_transient > 0
                    || e.lose_join_answer
                    || e.slow_init.is_some()
                    || e.lose_init_answer
            })
            .map(|(i, e)| {
                format!(
                    "n{}:{}{}{}{}{}",
                    i + 1,
                    if e.down_at_boot > 0 {
                        format!("down{} ", e.down_at_boot)
                    } else {
                        String::new()
                    },
                    if e.join_transient > 0 {
                        format!("joinfail{} ", e.join_transient)
                    } else {
                        String::new()
                    },
                    if e.lose_join_answer { "losejoin " } else { "" },
                    e.slow_init
                        .map(|d| format!("slowinit{}ms ", d.as_millis()))
                        .unwrap_or_default(),
                    if e.lose_init_answer { "loseinit" } else { "" },
                )
            })
            .collect();
        format!(
            "seed {} | {} nodes, target {} managers, roles {} | faults {} {:?} | backend \
             restarts {:?} | step crashes {:?} | timed crashes {:?} | restart delays {:?} | \
             engines [{}] | reboot after formation {:?}",
            self.seed,
            self.nodes,
            self.target,
            roles.join(","),
            self.mix_name,
            self.mix,
            self.restarts,
            self.step_crashes,
            self.timed_crashes
                .iter()
                .map(|(n, at)| (format!("n{}", n + 1), *at))
                .collect::<Vec<_>>(),
            self.restart_delays,
            engines.join(" "),
            self.reboot_after
                .iter()
                .map(|n| format!("n{}", n + 1))
                .collect::<Vec<_>>(),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state of a running race

struct ScheduledCrash {
    step: Step,
    remaining: u32,
}

pub struct RaceCtx {
    pub started: Instant,
    pub backend: Arc<dyn SimBackend>,
    pub world: SharedWorld,
    pub target: u8,
    schedule: Mutex<Vec<ScheduledCrash>>,
    trace: Mutex<Vec<String>>,
    violations: Mutex<Vec<String>>,
    counters: Mutex<BTreeMap<String, u64>>,
    /// (incarnation, fencing token from its intent record, swarm created)
    inits: Mutex<Vec<(String, Option<u64>, String)>>,
    /// Incarnations that crashed.
    crashed: Mutex<BTreeSet<String>>,
    restart_delays: Mutex<(Vec<Duration>, usize)>,
}

impl RaceCtx {
    pub fn trace(&self, line: String) {
        let t = self.started.elapsed().as_secs_f64();
        self.trace.lock().unwrap().push(format!("{t:7.3}s {line}"));
    }

    pub fn violation(&self, what: String) {
        self.trace(format!("VIOLATION: {what}"));
        self.violations.lock().unwrap().push(what);
    }

    pub fn count(&self, what: &str) {
        *self
            .counters
            .lock()
            .unwrap()
            .entry(what.to_string())
            .or_default() += 1;
    }

    /// True when a scheduled crash fires at this occurrence of `step`.
    pub fn crash_hit(&self, step: Step) -> bool {
        let mut s = self.schedule.lock().unwrap();
        match s.iter_mut().find(|c| c.step == step && c.remaining > 0) {
            Some(c) => {
                c.remaining -= 1;
                c.remaining == 0
            }
            None => false,
        }
    }

    pub fn note_crashed(&self, tag: String) {
        self.crashed.lock().unwrap().insert(tag);
    }

    pub fn note_crash(&self, step: Step) {
        self.count(&format!("crash {step:?}"));
    }

    pub fn record_init(&self, who: &str, token: Option<u64>, swarm: &str) {
        let mut inits = self.inits.lock().unwrap();
        if let Some(t) = token {
            if let Some((other, _, s)) = inits.iter().find(|(_, tok, _)| *tok == Some(t)) {
                let msg = format!(
                    "second `swarm init` under fencing token {t}: {who} created {swarm}, {other} \
                     had created {s}"
                );
                drop(inits);
                self.violation(msg);
                inits = self.inits.lock().unwrap();
            }
        }
        inits.push((who.to_string(), token, swarm.to_string()));
        let n = self.world.lock().unwrap().inits;
        drop(inits);
        self.trace(format!(
            "{who} INIT {swarm} under token {token:?} (world inits: {n})"
        ));
    }

    /// No swarm ever has more managers than the target.
    pub fn check_managers(&self) {
        let over: Vec<String> = {
            let w = self.world.lock().unwrap();
            w.swarms
                .iter()
                .filter_map(|s| {
                    let m = s.members.iter().filter(|m| m.role == Role::Manager).count();
                    (m > usize::from(self.target))
                        .then(|| format!("swarm {} has {m} managers", s.id))
                })
                .collect()
        };
        for o in over {
            self.violation(format!("{o}, more than the target {}", self.target));
        }
    }

    fn next_restart_delay(&self) -> Duration {
        let mut d = self.restart_delays.lock().unwrap();
        let v = d.0[d.1 % d.0.len()];
        d.1 += 1;
        v
    }
}

// ---------------------------------------------------------------------------------------------
// Nodes

struct Node {
    name: String,
    node_id: String,
    engine: Arc<FakeEngine>,
    dir: PathBuf,
}

#[derive(Debug, Default)]
struct NodeEnd {
    outcome: Option<Outcome>,
    incarnations: u32,
    errors: Vec<String>,
}

fn bootstrap(
    ctx: &Arc<RaceCtx>,
    plan: &Plan,
    i: usize,
    node: &Node,
    inc: &Arc<Incarnation>,
    init_answer_lost: &Arc<AtomicBool>,
) -> Bootstrap {
    let engine = SimEngine {
        inner: node.engine.clone(),
        inc: inc.clone(),
        ctx: ctx.clone(),
        state_dir: node.dir.clone(),
        node_id: node.node_id.clone(),
        plan: plan.engines[i],
        init_answer_lost: init_answer_lost.clone(),
    };
    let backend = FaultyRendezvous {
        inner: ctx.backend.client(i),
        inc: inc.clone(),
        ctx: ctx.clone(),
        mix: plan.mix,
    };
    Bootstrap {
        engine: Arc::new(engine),
        backend: Arc::new(backend),
        store: StateStore::new(&node.dir),
        settings: Settings {
            cluster: ctx.backend.cluster(),
            node_id: node.node_id.clone(),
            advertise_addr: node.engine.addr.clone(),
            requested_role: plan.roles[i],
            lease_ttl: LEASE_TTL,
            long_poll: Duration::from_secs(3),
            policy: POLICY,
            unauthorized_hint: "sim".into(),
            debug_hold_file: None,
            record_joined_through: true,
        },
    }
}

/// The node's "systemd": runs the agent, and after a crash (or an error exit) starts a new one
/// over the same state dir and engine.
async fn supervise(ctx: Arc<RaceCtx>, plan: Arc<Plan>, i: usize, node: Arc<Node>) -> NodeEnd {
    tokio::time::sleep(plan.start_at[i]).await;
    let mut rng = Rng::new(plan.node_seeds[i]);
    let init_answer_lost = Arc::new(AtomicBool::new(false));
    let mut timed: Vec<Instant> = plan
        .timed_crashes
        .iter()
        .filter(|(n, _)| *n == i)
        .map(|(_, at)| ctx.started + *at)
        .collect();
    timed.sort();
    let mut end = NodeEnd::default();
    loop {
        end.incarnations += 1;
        let inc = Incarnation::new(&node.name, end.incarnations, rng.fork(), true);
        node.engine
            .down_for_calls
            .store(plan.engines[i].down_at_boot, Ordering::SeqCst);
        let b = bootstrap(&ctx, &plan, i, &node, &inc, &init_answer_lost);
        ctx.trace(format!("{} start", inc.tag()));
        let span = tracing::info_span!("node", n = %inc.tag());
        let mut task = tokio::spawn(async move { b.run().await }.instrument(span));
        let next_timed = timed.first().copied();
        let far = ctx.started + Duration::from_secs(24 * 3600);
        tokio::select! {
            r = &mut task => match r {
                Ok(Ok(o)) => {
                    ctx.trace(format!("{} DONE {:?} as {} in {:?}", inc.tag(), o.how, o.role, o.swarm_id));
                    end.outcome = Some(o);
                    return end;
                }
                Ok(Err(e)) => {
                    ctx.trace(format!("{} EXIT with error: {e}", inc.tag()));
                    end.errors.push(format!("{}: {e}", inc.tag()));
                    if end.errors.len() >= MAX_ERRORS {
                        return end;
                    }
                    tokio::time::sleep(ERROR_RESTART).await;
                    continue;
                }
                Err(e) => {
                    end.errors.push(format!("{}: the bootstrap task failed: {e}", inc.tag()));
                    return end;
                }
            },
            _ = inc.crashed() => {}
            _ = tokio::time::sleep_until(next_timed.unwrap_or(far).into()) => {
                if !timed.is_empty() {
                    timed.remove(0);
                }
                if inc.kill() {
                    ctx.note_crashed(inc.tag());
                    ctx.count("crash timed");
                    ctx.trace(format!("{} CRASH (timed)", inc.tag()));
                }
            }
        }
        task.abort();
        let _ = task.await;
        let down = ctx.next_restart_delay();
        ctx.trace(format!("{} down for {down:?}", inc.tag()));
        tokio::time::sleep(down).await;
    }
}

// ---------------------------------------------------------------------------------------------
// A race

#[derive(Debug)]
pub struct RaceResult {
    pub seed: u64,
    pub plan: String,
    pub failures: Vec<String>,
    pub trace: Vec<String>,
    pub elapsed: Duration,
    pub counters: BTreeMap<String, u64>,
    pub inits: u32,
    pub tokens: usize,
    pub hows: Vec<How>,
}

fn sim_tempdir() -> tempfile::TempDir {
    // tmpfs when there is one: the store and the state files fsync on every write.
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new()
            .prefix("swarmstrap-race-")
            .tempdir_in(shm)
        {
            return d;
        }
    }
    tempfile::Builder::new()
        .prefix("swarmstrap-race-")
        .tempdir()
        .expect("a temp dir")
}

pub async fn run_race(seed: u64, opts: Opts, kind: Kind) -> RaceResult {
    let plan = Arc::new(Plan::new(seed, &opts));
    let tmp = sim_tempdir();
    let backend = kind.start(tmp.path(), seed, plan.target, plan.nodes).await;
    let w = world();
    let ctx = Arc::new(RaceCtx {
        started: Instant::now(),
        backend: backend.clone(),
        world: w.clone(),
        target: plan.target,
        schedule: Mutex::new(
            plan.step_crashes
                .iter()
                .map(|(step, n)| ScheduledCrash {
                    step: *step,
                    remaining: *n,
                })
                .collect(),
        ),
        trace: Mutex::new(vec![]),
        violations: Mutex::new(vec![]),
        counters: Mutex::new(BTreeMap::new()),
        inits: Mutex::new(vec![]),
        crashed: Mutex::new(BTreeSet::new()),
        restart_delays: Mutex::new((plan.restart_delays.clone(), 0)),
    });
    ctx.trace(plan.describe());

    let nodes: Vec<Arc<Node>> = (0..plan.nodes)
        .map(|i| {
            let name = format!("n{}", i + 1);
            let engine = FakeEngine::new(&w, &name, &format!("198.18.0.{}", i + 1));
            let e = plan.engines[i];
            engine
                .join_transient_failures
                .store(e.join_transient, Ordering::SeqCst);
            engine
                .lose_join_response
                .store(e.lose_join_answer, Ordering::SeqCst);
            let dir = tmp.path().join(&name);
            std::fs::create_dir_all(&dir).unwrap();
            Arc::new(Node {
                node_id: format!("node-{}", i + 1),
                name,
                engine,
                dir,
            })
        })
        .collect();

    // Backend restarts (coordinator) or outages (the others), until the nodes are done.
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
    let restarter = {
        let ctx = ctx.clone();
        let restarts = plan.restarts.clone();
        tokio::spawn(async move {
            let mut restarts = restarts;
            restarts.sort();
            for (at, down) in restarts {
                tokio::select! {
                    _ = tokio::time::sleep_until((ctx.started + at).into()) => {}
                    _ = done_rx.wait_for(|d| *d) => return,
                }
                let what = match ctx.backend.name() {
                    "coordinator" => "coordinator restart".to_string(),
                    other => format!("{other} outage"),
                };
                ctx.trace(format!("{} (down for {down:?})", what.to_uppercase()));
                ctx.count(&what);
                if let Err(e) = ctx.backend.restart(down).await {
                    ctx.violation(e);
                    return;
                }
                ctx.trace(format!("{} is back", ctx.backend.name()));
            }
        })
    };

    let mut handles: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| tokio::spawn(supervise(ctx.clone(), plan.clone(), i, n.clone())))
        .collect();
    let mut ends: Vec<Option<NodeEnd>> = (0..plan.nodes).map(|_| None).collect();
    let collect = async {
        for (i, h) in handles.iter_mut().enumerate() {
            ends[i] = Some(h.await.unwrap_or_else(|e| NodeEnd {
                errors: vec![format!("supervisor failed: {e}")],
                ..NodeEnd::default()
            }));
        }
    };
    let converged = tokio::time::timeout(opts.deadline, collect).await.is_ok();
    for h in &handles {
        h.abort();
    }
    let _ = done_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(20), restarter)
        .await
        .is_err()
    {
        ctx.violation("the backend restart did not finish".into());
    }

    let mut failures: Vec<String> = vec![];
    for (i, n) in nodes.iter().enumerate() {
        let st = StateStore::new(&n.dir).load().ok().flatten();
        let phase = st.as_ref().map(|s| s.phase.as_str()).unwrap_or("no state");
        let last = st
            .as_ref()
            .and_then(|s| s.last_error.as_ref())
            .map(|e| e.message.clone())
            .unwrap_or_default();
        match &ends[i] {
            None => failures.push(format!(
                "STUCK: {} did not finish within {:?} (phase {phase}, last error: \
                 {last:?})",
                n.name, opts.deadline
            )),
            Some(end) => {
                for e in &end.errors {
                    failures.push(format!("bootstrap error: {e}"));
                }
                if end.outcome.is_none() {
                    failures.push(format!("{} gave up (phase {phase})", n.name));
                }
            }
        }
    }
    let hows: Vec<How> = ends
        .iter()
        .filter_map(|e| e.as_ref().and_then(|e| e.outcome.as_ref().map(|o| o.how)))
        .collect();
    if converged && failures.is_empty() {
        check_end_state(&ctx, ctx.backend.peek().await, &plan, &nodes, &mut failures);
        if failures.is_empty() {
            reboot_check(&ctx, &plan, &nodes, &mut failures).await;
            check_end_state(&ctx, ctx.backend.peek().await, &plan, &nodes, &mut failures);
        }
    }
    failures.extend(ctx.violations.lock().unwrap().iter().cloned());
    failures.dedup();
    // Why each init that did not form the cluster happened: its initialiser crashed (and
    // stayed down past the lease), or it lost the lease while alive (renewals failing,
    // backend down) and was fenced.
    if let Some(formed) = backend.peek().await.and_then(|s| s.swarm_id) {
        let crashed = ctx.crashed.lock().unwrap().clone();
        for (who, _, swarm) in ctx.inits.lock().unwrap().iter() {
            if *swarm != formed {
                if crashed.contains(who) {
                    ctx.count("orphan init: its initialiser crashed");
                } else {
                    ctx.count("orphan init: its initialiser lost the lease alive");
                }
            }
        }
    }

    let inits = w.lock().unwrap().inits;
    let trace = ctx.trace.lock().unwrap().clone();
    let mut counters = ctx.counters.lock().unwrap().clone();
    for (what, n) in backend.events() {
        *counters.entry(what).or_default() += n;
    }
    RaceResult {
        seed,
        plan: plan.describe(),
        failures,
        trace,
        elapsed: ctx.started.elapsed(),
        counters,
        inits,
        tokens: backend.tokens_granted(),
        hows,
    }
}

/// The invariants at the end of a race.
fn check_end_state(
    ctx: &RaceCtx,
    status: Option<ClusterStatus>,
    plan: &Plan,
    nodes: &[Arc<Node>],
    failures: &mut Vec<String>,
) {
    let Some(status) = status else {
        failures.push(format!(
            "the {} cannot be read at the end",
            ctx.backend.name()
        ));
        return;
    };
    let (Phase::Formed, Some(swarm), Some(ca)) =
        (&status.phase, &status.swarm_id, &status.ca_digest)
    else {
        failures.push(format!("the cluster is not formed: {}", status.phase));
        return;
    };
    let w = ctx.world.lock().unwrap();
    // One init per cluster: with a single fencing token ever granted, exactly one init; with
    // takeovers, at most one init per token (checked as they happen), never more inits than
    // tokens, and every orphan left.
    let tokens = ctx.backend.tokens_granted();
    if w.inits == 0 || (tokens <= 1 && w.inits != 1) || w.inits as usize > tokens {
        failures.push(format!(
            "{} `swarm init`s in the world for {tokens} fencing token(s) granted",
            w.inits
        ));
    }
    match w.swarms.iter().find(|s| s.id == *swarm) {
        None => failures.push(format!("the published swarm {swarm} does not exist")),
        Some(s) => {
            if s.ca_digest != *ca {
                failures.push(format!(
                    "swarm {swarm} has CA {}, the backend published {ca}",
                    s.ca_digest
                ));
            }
            let managers = s.members.iter().filter(|m| m.role == Role::Manager).count();
            if managers > usize::from(plan.target) {
                failures.push(format!(
                    "{managers} managers in the swarm, target {}",
                    plan.target
                ));
            }
        }
    }
    for s in w
        .swarms
        .iter()
        .filter(|s| s.id != *swarm && !s.members.is_empty())
    {
        let who: Vec<&str> = s.members.iter().map(|m| m.engine.as_str()).collect();
        failures.push(format!("orphan swarm {} still has members {who:?}", s.id));
    }
    for n in nodes {
        let member = w.swarms.iter().find_map(|s| {
            s.members
                .iter()
                .find(|m| m.engine == n.name)
                .map(|m| (s.id.clone(), m.role))
        });
        let assigned = status
            .nodes
            .iter()
            .find(|x| x.node_id == n.node_id)
            .map(|x| x.role);
        match member {
            None => failures.push(format!("{} is in no swarm", n.name)),
            Some((id, _)) if id != *swarm => failures.push(format!(
                "{} is in {id}, not in the cluster's {swarm}",
                n.name
            )),
            Some((_, role)) if Some(role) != assigned => failures.push(format!(
                "{} is a {role} in the swarm, the backend assigned {assigned:?}",
                n.name
            )),
            Some(_) => {}
        }
        match StateStore::new(&n.dir).load() {
            Ok(Some(st)) => {
                if st.phase != AgentPhase::Joined
                    || st.swarm_id.as_deref() != Some(swarm.as_str())
                    || (st.ca_digest.is_some() && st.ca_digest.as_deref() != Some(ca.as_str()))
                {
                    failures.push(format!(
                        "{}: state.json says phase {}, swarm {:?}, CA {:?}",
                        n.name,
                        st.phase.as_str(),
                        st.swarm_id,
                        st.ca_digest
                    ));
                }
            }
            other => failures.push(format!("{}: state.json unreadable: {other:?}", n.name)),
        }
    }
}

/// Reboot some nodes after formation: each must find itself a member and change nothing.
async fn reboot_check(
    ctx: &Arc<RaceCtx>,
    plan: &Plan,
    nodes: &[Arc<Node>],
    failures: &mut Vec<String>,
) {
    for &i in &plan.reboot_after {
        let node = &nodes[i];
        let mut rng = Rng::new(plan.node_seeds[i] ^ 0xB007);
        let inc = Incarnation::new(&node.name, 100, rng.fork(), false);
        let lost = Arc::new(AtomicBool::new(true));
        let b = bootstrap(ctx, plan, i, node, &inc, &lost);
        let before = node.engine.calls().len();
        ctx.trace(format!("{} reboot after formation", inc.tag()));
        match tokio::time::timeout(Duration::from_secs(20), b.run()).await {
            Ok(Ok(o)) if o.how == How::AlreadyMember => {}
            Ok(Ok(o)) => failures.push(format!(
                "{} rebooted: {:?}, not AlreadyMember",
                node.name, o.how
            )),
            Ok(Err(e)) => failures.push(format!("{} rebooted: error {e}", node.name)),
            Err(_) => failures.push(format!("{} rebooted: stuck", node.name)),
        }
        let mutations: Vec<String> = node.engine.calls()[before..]
            .iter()
            .filter(|c| matches!(c.as_str(), "init" | "join" | "leave"))
            .cloned()
            .collect();
        if !mutations.is_empty() {
            failures.push(format!("{} rebooted and called {mutations:?}", node.name));
        }
    }
}
