//! Fault injection around one incarnation of one node (a process lifetime of the agent):
//! [`FaultyRendezvous`] in front of the backend and [`SimEngine`] in front of the node's
//! fake engine. Both report the crash points ([`Step`]) of the race's crash schedule; when one
//! fires, the incarnation is dead: that call and every later call of it (the lease-renewal task
//! included) never return, and the node's supervisor aborts the bootstrap future.

use super::backend::InitLease;
use super::race::RaceCtx;
use crate::engine::{Engine, EngineError, EngineInfo, JoinRequest, SwarmDetails, SwarmNode};
use crate::state::StateStore;
use crate::testing::FakeEngine;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swarmstrap_wire::rendezvous::{Rendezvous, RendezvousError, Result as RResult};
use swarmstrap_wire::{
    AdoptRequest, AdoptResponse, ClaimResponse, ClusterStatus, Document, JoinResponse,
    PublishRequest, PublishResponse, RegisterRequest, RegisterResponse, ResetRequest, Secret,
    SyncRequest, SyncResponse,
};
use tokio::sync::Notify;

/// SplitMix64: tiny, and the same sequence for a seed forever (no dependency on a crate's
/// algorithm choice), so a seed names the same race plan in every version.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    pub fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }

    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next_u64())
    }
}

/// Where a scheduled crash can hit. The node crashes right after the step took effect (or
/// right before, for `*Sent`/`InitIntent`), before the answer reaches the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    /// The backend registered the node.
    RegisterApplied,
    /// The backend granted the init lease.
    ClaimGranted,
    /// `swarm init` was called: the intent record is on disk, the swarm does not exist yet.
    InitIntent,
    /// The swarm exists.
    InitApplied,
    /// The new swarm was inspected (tokens, CA) but not yet published.
    InspectAfterInit,
    /// The backend extended the lease.
    RenewApplied,
    /// Publish is about to be sent.
    PublishSent,
    /// The backend accepted the publish (cluster formed).
    PublishApplied,
    /// A long-poll returned the join info.
    JoinInfoReceived,
    /// The engine joined the swarm.
    JoinApplied,
    /// The engine left an orphan swarm.
    LeaveApplied,
}

pub const STEPS: [Step; 11] = [
    Step::RegisterApplied,
    Step::ClaimGranted,
    Step::InitIntent,
    Step::InitApplied,
    Step::InspectAfterInit,
    Step::RenewApplied,
    Step::PublishSent,
    Step::PublishApplied,
    Step::JoinInfoReceived,
    Step::JoinApplied,
    Step::LeaveApplied,
];

/// Per-call fault probabilities of the rendezvous wrapper.
#[derive(Clone, Copy, Debug)]
pub struct FaultMix {
    /// `Transient` before the call reaches the backend.
    pub fail: f64,
    /// The backend applies the call, the answer is lost (`Transient`).
    pub lose: f64,
    /// The call is applied twice (a retried request that arrived twice); the second answer
    /// is returned.
    pub dup: f64,
    /// The request and/or the answer are delayed by up to `max_delay`.
    pub delay: f64,
    pub max_delay: Duration,
    /// The answer arrives after `late_range` ms (past the lease TTL).
    pub late: f64,
    pub late_range: (u64, u64),
}

/// One process lifetime of a node's agent.
pub struct Incarnation {
    pub name: String,
    pub n: u32,
    dead: AtomicBool,
    crashed: Notify,
    /// This incarnation's `swarm init` created a swarm.
    did_init: AtomicBool,
    rng: Mutex<Rng>,
    /// Crash points fire only while true (not in the post-formation reboot check).
    crashable: bool,
}

impl Incarnation {
    pub fn new(name: &str, n: u32, rng: Rng, crashable: bool) -> Arc<Incarnation> {
        Arc::new(Incarnation {
            name: name.into(),
            n,
            dead: AtomicBool::new(false),
            crashed: Notify::new(),
            did_init: AtomicBool::new(false),
            rng: Mutex::new(rng),
            crashable,
        })
    }

    pub fn tag(&self) -> String {
        format!("{}#{}", self.name, self.n)
    }

    /// Kill it (idempotent). Returns true the first time.
    pub fn kill(&self) -> bool {
        let first = !self.dead.swap(true, Ordering::SeqCst);
        if first {
            self.crashed.notify_one();
        }
        first
    }

    /// Resolves once a crash point killed this incarnation.
    pub async fn crashed(&self) {
        self.crashed.notified().await
    }

    /// A dead process makes no calls: park forever (the supervisor aborts the task).
    async fn gate(&self) {
        if self.dead.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }

    /// A crash point: if the schedule says so, die here.
    async fn step(&self, ctx: &RaceCtx, step: Step) {
        if self.crashable && ctx.crash_hit(step) && self.kill() {
            ctx.note_crashed(self.tag());
            ctx.note_crash(step);
            ctx.trace(format!("{} CRASH at {step:?}", self.tag()));
        }
        self.gate().await;
    }
}

/// What happened to one rendezvous call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    FailBefore,
    LoseAnswer,
    Duplicate,
}

pub struct FaultyRendezvous {
    pub inner: Arc<dyn Rendezvous>,
    pub inc: Arc<Incarnation>,
    pub ctx: Arc<RaceCtx>,
    pub mix: FaultMix,
}

impl FaultyRendezvous {
    fn decide(&self, dup_ok: bool) -> (Fault, Option<Duration>, Option<Duration>) {
        let m = self.mix;
        let mut r = self.inc.rng.lock().unwrap();
        let fault = if r.chance(m.fail) {
            Fault::FailBefore
        } else if r.chance(m.lose) {
            Fault::LoseAnswer
        } else if dup_ok && r.chance(m.dup) {
            Fault::Duplicate
        } else {
            Fault::None
        };
        let max = m.max_delay.as_millis() as u64;
        let mut delay = || {
            r.chance(m.delay)
                .then(|| Duration::from_millis(r.range(0, max)))
        };
        let before = delay();
        let mut after = delay();
        if m.late > 0.0 && r.chance(m.late) {
            after = Some(Duration::from_millis(
                r.range(m.late_range.0, m.late_range.1),
            ));
        }
        (fault, before, after)
    }

    /// Run one call through the faults. `before`/`after` name the crash points around it.
    async fn call<T, F, Fut>(
        &self,
        what: &'static str,
        dup_ok: bool,
        before: Option<Step>,
        after: impl Fn(&T) -> Option<Step>,
        op: F,
    ) -> RResult<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = RResult<T>>,
    {
        let (inc, ctx) = (&self.inc, &self.ctx);
        inc.gate().await;
        if let Some(s) = before {
            inc.step(ctx, s).await;
        }
        let (fault, delay_before, delay_after) = self.decide(dup_ok);
        if let Some(d) = delay_before {
            tokio::time::sleep(d).await;
        }
        if fault == Fault::FailBefore {
            ctx.count("fail_before");
            ctx.trace(format!("{} {what}: injected 503 (not applied)", inc.tag()));
            return Err(RendezvousError::Transient(
                "sim: injected HTTP 503 (the request was not applied)".into(),
            ));
        }
        let mut r = op().await;
        if fault == Fault::Duplicate {
            ctx.count("duplicate");
            ctx.trace(format!("{} {what}: applied twice", inc.tag()));
            r = op().await;
        }
        // A call in flight when the process died: applied or not, nobody reads the answer.
        inc.gate().await;
        if let Ok(v) = &r {
            if let Some(s) = after(v) {
                inc.step(ctx, s).await;
            }
        }
        if fault == Fault::LoseAnswer {
            ctx.count("lose_answer");
            let outcome = match &r {
                Ok(_) => "ok".to_string(),
                Err(e) => e.to_string(),
            };
            ctx.trace(format!(
                "{} {what}: applied ({outcome}), answer lost",
                inc.tag()
            ));
            return Err(RendezvousError::Transient(
                "sim: injected lost answer (the request was applied)".into(),
            ));
        }
        if let Some(d) = delay_after {
            if d.as_millis() as u64 >= self.mix.late_range.0 {
                ctx.count("late_answer");
                ctx.trace(format!("{} {what}: answer delayed {d:?}", inc.tag()));
            } else {
                ctx.count("delay");
            }
            tokio::time::sleep(d).await;
            inc.gate().await;
        }
        r
    }
}

#[async_trait::async_trait]
impl Rendezvous for FaultyRendezvous {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn set_credential(&self, node_id: &str, credential: Secret) {
        self.inner.set_credential(node_id, credential)
    }

    fn credential(&self, node_id: &str) -> Option<Secret> {
        self.inner.credential(node_id)
    }

    async fn register(&self, req: &RegisterRequest) -> RResult<RegisterResponse> {
        let r = self
            .call(
                "register",
                true,
                None,
                |_| Some(Step::RegisterApplied),
                || self.inner.register(req),
            )
            .await;
        if let Ok(v) = &r {
            self.ctx
                .trace(format!("{} registered as {}", self.inc.tag(), v.role));
        }
        r
    }

    async fn claim(&self, node_id: &str, ttl: Duration) -> RResult<ClaimResponse> {
        let r = self
            .call(
                "claim",
                true,
                None,
                |c: &ClaimResponse| c.granted.then_some(Step::ClaimGranted),
                || self.inner.claim(node_id, ttl),
            )
            .await;
        if let Ok(c) = &r {
            let lease = c
                .lease
                .as_ref()
                .map(|l| format!("token {} held by {}", l.fencing_token, l.holder))
                .unwrap_or_else(|| "no lease".into());
            self.ctx.trace(format!(
                "{} claim: granted={} phase={} ({lease})",
                self.inc.tag(),
                c.granted,
                c.phase
            ));
        }
        r
    }

    async fn renew(
        &self,
        node_id: &str,
        fencing_token: u64,
        ttl: Duration,
    ) -> RResult<ClaimResponse> {
        let r = self
            .call(
                "renew",
                true,
                None,
                |c: &ClaimResponse| c.granted.then_some(Step::RenewApplied),
                || self.inner.renew(node_id, fencing_token, ttl),
            )
            .await;
        if let Err(e) = &r {
            self.ctx.trace(format!(
                "{} renew token {fencing_token}: {e}",
                self.inc.tag()
            ));
        }
        r
    }

    async fn publish(&self, req: &PublishRequest) -> RResult<PublishResponse> {
        let r = self
            .call(
                "publish",
                true,
                Some(Step::PublishSent),
                |_| Some(Step::PublishApplied),
                || self.inner.publish(req),
            )
            .await;
        let how = match &r {
            Ok(_) => "accepted".to_string(),
            Err(e) => e.to_string(),
        };
        self.ctx.trace(format!(
            "{} publish {} under token {}: {how}",
            self.inc.tag(),
            req.swarm_id,
            req.fencing_token
        ));
        r
    }

    async fn wait_join(&self, node_id: &str, wait: Duration) -> RResult<JoinResponse> {
        let r = self
            .call(
                "wait_join",
                false,
                None,
                |j: &JoinResponse| j.join.is_some().then_some(Step::JoinInfoReceived),
                || self.inner.wait_join(node_id, wait),
            )
            .await;
        if let Ok(JoinResponse {
            join: Some(j),
            phase,
            ..
        }) = &r
        {
            self.ctx.trace(format!(
                "{} join info: {phase}, swarm {} as {}",
                self.inc.tag(),
                j.swarm_id,
                j.role
            ));
        }
        r
    }

    async fn status(&self) -> RResult<ClusterStatus> {
        self.call("status", true, None, |_| None, || self.inner.status())
            .await
    }

    async fn reset(&self, req: &ResetRequest, operator: Option<&Secret>) -> RResult<ClusterStatus> {
        self.call(
            "reset",
            true,
            None,
            |_| None,
            || self.inner.reset(req, operator),
        )
        .await
    }

    async fn sync(&self, req: &SyncRequest) -> RResult<SyncResponse> {
        self.call("sync", true, None, |_| None, || self.inner.sync(req))
            .await
    }

    async fn adopt(&self, req: &AdoptRequest) -> RResult<AdoptResponse> {
        let r = self
            .call("adopt", true, None, |_| None, || self.inner.adopt(req))
            .await;
        let how = match &r {
            Ok(a) => format!("adopted={} under token {}", a.adopted, a.fencing_token),
            Err(e) => e.to_string(),
        };
        self.ctx
            .trace(format!("{} adopt {}: {how}", self.inc.tag(), req.swarm_id));
        r
    }

    async fn get_doc(&self, name: &str, after: Option<u64>, wait: Duration) -> RResult<Document> {
        self.call(
            "get_doc",
            false,
            None,
            |_| None,
            || self.inner.get_doc(name, after, wait),
        )
        .await
    }

    async fn put_doc(
        &self,
        node_id: &str,
        name: &str,
        expected_version: u64,
        body: &serde_json::Value,
    ) -> RResult<Document> {
        self.call(
            "put_doc",
            false,
            None,
            |_| None,
            || self.inner.put_doc(node_id, name, expected_version, body),
        )
        .await
    }
}

/// Engine faults of one node, fixed by the race plan.
#[derive(Clone, Copy, Debug, Default)]
pub struct EnginePlan {
    /// `docker info` fails this many times when the node boots (and after each reboot).
    pub down_at_boot: u32,
    /// The first joins fail with a transient raft error.
    pub join_transient: u32,
    /// The first successful join answers with an error (lost response).
    pub lose_join_answer: bool,
    /// `swarm init` takes this long (lets lease renewals and lease loss happen during init).
    pub slow_init: Option<Duration>,
    /// The first successful `swarm init` answers with a transient error (lost response).
    pub lose_init_answer: bool,
}

pub struct SimEngine {
    pub inner: Arc<FakeEngine>,
    pub inc: Arc<Incarnation>,
    pub ctx: Arc<RaceCtx>,
    pub state_dir: PathBuf,
    pub node_id: String,
    pub plan: EnginePlan,
    /// Shared by all incarnations of the node: the lost init answer happens once.
    pub init_answer_lost: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl Engine for SimEngine {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn info(&self) -> crate::engine::Result<EngineInfo> {
        self.inc.gate().await;
        self.inner.info().await
    }

    async fn inspect_swarm(&self) -> crate::engine::Result<SwarmDetails> {
        self.inc.gate().await;
        let r = self.inner.inspect_swarm().await;
        if r.is_ok() && self.inc.did_init.load(Ordering::SeqCst) {
            self.inc.step(&self.ctx, Step::InspectAfterInit).await;
        }
        r
    }

    async fn init(&self, advertise_addr: &str) -> crate::engine::Result<String> {
        let (inc, ctx) = (&self.inc, &self.ctx);
        inc.gate().await;
        inc.step(ctx, Step::InitIntent).await;
        // Crash safety: the intent record (with the fencing token) is on disk before the
        // engine acts.
        let intent = StateStore::new(&self.state_dir)
            .load()
            .ok()
            .flatten()
            .and_then(|st| st.init);
        let token = match &intent {
            Some(i) => Some(i.fencing_token),
            None => {
                ctx.violation(format!(
                    "{}: `swarm init` called without an intent record in state.json",
                    inc.tag()
                ));
                None
            }
        };
        // The lease it inits under must be live at the backend when init starts (checked for
        // the init that creates a swarm; retries on an engine already in one change nothing).
        let lease_problem = match ctx.backend.init_lease(&self.node_id, token).await {
            InitLease::Live => None,
            InitLease::NotLive(what) => Some(format!(
                "{}: `swarm init` under token {token:?} started while at the {}: {what}",
                inc.tag(),
                ctx.backend.name()
            )),
            InitLease::Unknown(why) => {
                ctx.count(&format!("init lease check skipped: {why}"));
                None
            }
        };
        inc.gate().await;
        if let Some(d) = self.plan.slow_init {
            tokio::time::sleep(d).await;
            inc.gate().await;
        }
        let r = self.inner.init(advertise_addr).await;
        match &r {
            Ok(_) => {
                inc.did_init.store(true, Ordering::SeqCst);
                if let Some(p) = lease_problem {
                    ctx.violation(p);
                }
                let swarm = self.inner.membership().map(|m| m.0).unwrap_or_default();
                ctx.record_init(&inc.tag(), token, &swarm);
                ctx.check_managers();
                inc.step(ctx, Step::InitApplied).await;
                if self.plan.lose_init_answer && !self.init_answer_lost.swap(true, Ordering::SeqCst)
                {
                    ctx.count("engine_lose_init_answer");
                    ctx.trace(format!("{} init: applied, answer lost", inc.tag()));
                    return Err(EngineError::Api {
                        host: self.inner.name.clone(),
                        status: 500,
                        message: "context deadline exceeded".into(),
                    });
                }
            }
            Err(e) => ctx.trace(format!("{} init failed: {e}", inc.tag())),
        }
        r
    }

    async fn join(&self, req: &JoinRequest) -> crate::engine::Result<()> {
        let (inc, ctx) = (&self.inc, &self.ctx);
        inc.gate().await;
        let r = self.inner.join(req).await;
        let joined = self.inner.membership();
        match (&r, &joined) {
            (Ok(()), _) => {
                ctx.trace(format!("{} joined {:?}", inc.tag(), joined));
            }
            (Err(e), Some(m)) => {
                ctx.trace(format!(
                    "{} join answered `{e}`, engine is in {m:?}",
                    inc.tag()
                ));
            }
            (Err(e), None) => {
                ctx.trace(format!(
                    "{} join through {} failed: {e}",
                    inc.tag(),
                    req.remote_addr
                ));
            }
        }
        ctx.check_managers();
        if r.is_ok() {
            inc.step(ctx, Step::JoinApplied).await;
        }
        r
    }

    async fn leave(&self, force: bool) -> crate::engine::Result<()> {
        let (inc, ctx) = (&self.inc, &self.ctx);
        inc.gate().await;
        let before = self.inner.membership();
        let r = self.inner.leave(force).await;
        ctx.trace(format!("{} LEAVE {before:?}", inc.tag()));
        ctx.count("engine_leave");
        if r.is_ok() {
            inc.step(ctx, Step::LeaveApplied).await;
        }
        r
    }

    async fn nodes(&self) -> crate::engine::Result<Vec<SwarmNode>> {
        self.inc.gate().await;
        self.inner.nodes().await
    }
}
