//! Fakes for unit tests: a world of Docker engines sharing swarms ([`FakeEngine`]) and an
//! in-memory rendezvous that runs the rendezvous rulebook ([`FakeBackend`]). Both record what
//! they were asked, so tests can assert what did NOT happen (no init, no join, no leave).

use crate::engine::{
    Engine, EngineError, EngineInfo, JoinRequest, LocalSwarm, LocalSwarmState, SwarmDetails,
    SwarmNode, SWARM_PORT,
};
use async_trait::async_trait;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use swarmstrap_wire::rendezvous::{Credentials, Rendezvous, RendezvousError, Result as RResult};
use swarmstrap_wire::rules::{self, ClusterState, Code, LeaseState, Memory, Outcome, RuleError};
use swarmstrap_wire::{
    AdoptRequest, AdoptResponse, ClaimResponse, ClusterStatus, Document, DocumentWrite,
    JoinResponse, PublishRequest, PublishResponse, RegisterRequest, RegisterResponse, RenewRequest,
    ResetRequest, Role, Secret, SyncRequest, SyncResponse,
};

// ---------------------------------------------------------------------------------------------
// Engines

#[derive(Clone, Debug)]
pub struct Member {
    pub engine: String,
    pub docker_node_id: String,
    pub role: Role,
    pub addr: String,
}

#[derive(Clone, Debug)]
pub struct FakeSwarm {
    pub id: String,
    pub ca_digest: String,
    pub worker_token: String,
    pub manager_token: String,
    pub members: Vec<Member>,
}

#[derive(Default)]
pub struct World {
    pub swarms: Vec<FakeSwarm>,
    pub inits: u32,
    next: u64,
}

impl World {
    fn membership(&self, engine: &str) -> Option<(&FakeSwarm, &Member)> {
        self.swarms.iter().find_map(|s| {
            s.members
                .iter()
                .find(|m| m.engine == engine)
                .map(|m| (s, m))
        })
    }
}

pub type SharedWorld = Arc<Mutex<World>>;

pub fn world() -> SharedWorld {
    Arc::new(Mutex::new(World::default()))
}

type Hook = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

pub struct FakeEngine {
    pub name: String,
    pub addr: String,
    world: SharedWorld,
    pub calls: Mutex<Vec<String>>,
    /// `info` answers "unreachable" this many times first (engine starting late).
    pub down_for_calls: AtomicU32,
    /// The next N joins fail with a transient raft error.
    pub join_transient_failures: AtomicU32,
    /// The next join succeeds but answers with an error (lost response).
    pub lose_join_response: AtomicBool,
    /// Runs inside `init`, before the swarm is created.
    pub init_hook: Mutex<Option<Hook>>,
}

impl FakeEngine {
    pub fn new(world: &SharedWorld, name: &str, addr: &str) -> Arc<FakeEngine> {
        Arc::new(FakeEngine {
            name: name.into(),
            addr: addr.into(),
            world: world.clone(),
            calls: Mutex::new(vec![]),
            down_for_calls: AtomicU32::new(0),
            join_transient_failures: AtomicU32::new(0),
            lose_join_response: AtomicBool::new(false),
            init_hook: Mutex::new(None),
        })
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn record(&self, call: &str) {
        self.calls.lock().unwrap().push(call.into());
    }

    fn api(&self, status: u16, message: &str) -> EngineError {
        EngineError::Api {
            host: self.name.clone(),
            status,
            message: message.into(),
        }
    }

    /// (swarm id, role) of this engine.
    pub fn membership(&self) -> Option<(String, Role)> {
        let w = self.world.lock().unwrap();
        w.membership(&self.name)
            .map(|(s, m)| (s.id.clone(), m.role))
    }
}

#[async_trait]
impl Engine for FakeEngine {
    fn describe(&self) -> String {
        format!("fake:{}", self.name)
    }

    async fn info(&self) -> crate::engine::Result<EngineInfo> {
        self.record("info");
        if self
            .down_for_calls
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(EngineError::Unreachable {
                host: self.name.clone(),
                message: "connection refused".into(),
            });
        }
        let w = self.world.lock().unwrap();
        let swarm = match w.membership(&self.name) {
            None => LocalSwarm::inactive(),
            Some((s, m)) => LocalSwarm {
                state: LocalSwarmState::Active,
                node_id: Some(m.docker_node_id.clone()),
                node_addr: Some(m.addr.clone()),
                control_available: m.role == Role::Manager,
                cluster_id: (m.role == Role::Manager).then(|| s.id.clone()),
                remote_managers: s
                    .members
                    .iter()
                    .filter(|x| x.role == Role::Manager)
                    .map(|x| format!("{}:{SWARM_PORT}", x.addr))
                    .collect(),
                managers: Some(s.members.iter().filter(|x| x.role == Role::Manager).count() as u64),
                nodes: Some(s.members.len() as u64),
                error: None,
            },
        };
        Ok(EngineInfo {
            hostname: self.name.clone(),
            server_version: "20.10.24-fake".into(),
            swarm,
            docker_root_dir: None,
        })
    }

    async fn inspect_swarm(&self) -> crate::engine::Result<SwarmDetails> {
        self.record("inspect_swarm");
        let w = self.world.lock().unwrap();
        match w.membership(&self.name) {
            Some((s, m)) if m.role == Role::Manager => Ok(SwarmDetails {
                id: s.id.clone(),
                ca_digest: s.ca_digest.clone(),
                worker_token: Secret::new(s.worker_token.clone()),
                manager_token: Secret::new(s.manager_token.clone()),
            }),
            _ => Err(self.api(503, "This node is not a swarm manager.")),
        }
    }

    async fn init(&self, advertise_addr: &str) -> crate::engine::Result<String> {
        self.record("init");
        let hook = self.init_hook.lock().unwrap().take();
        if let Some(h) = hook {
            h().await;
        }
        let mut w = self.world.lock().unwrap();
        if w.membership(&self.name).is_some() {
            return Err(self.api(503, "This node is already part of a swarm."));
        }
        w.next += 1;
        w.inits += 1;
        let n = w.next;
        let id = format!("swarm{n}");
        let node_id = format!("dn-{}-{n}", self.name);
        w.swarms.push(FakeSwarm {
            id: id.clone(),
            ca_digest: format!("sha256:{n:064x}"),
            worker_token: format!("SWMTKN-1-{id}-worker"),
            manager_token: format!("SWMTKN-1-{id}-manager"),
            members: vec![Member {
                engine: self.name.clone(),
                docker_node_id: node_id.clone(),
                role: Role::Manager,
                addr: advertise_addr.into(),
            }],
        });
        // Like dockerd: the answer is the node id, not the swarm id.
        Ok(node_id)
    }

    async fn join(&self, req: &JoinRequest) -> crate::engine::Result<()> {
        self.record("join");
        if self
            .join_transient_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(self.api(500, "rpc error: code = Unavailable desc = raft not ready"));
        }
        let mut w = self.world.lock().unwrap();
        if w.membership(&self.name).is_some() {
            return Err(self.api(503, "This node is already part of a swarm."));
        }
        w.next += 1;
        let n = w.next;
        let Some(s) = w.swarms.iter_mut().find(|s| {
            s.members.iter().any(|m| {
                m.role == Role::Manager && format!("{}:{SWARM_PORT}", m.addr) == req.remote_addr
            })
        }) else {
            return Err(self.api(
                500,
                "rpc error: code = Unavailable desc = connection refused",
            ));
        };
        let role = if req.token.expose() == s.manager_token {
            Role::Manager
        } else if req.token.expose() == s.worker_token {
            Role::Worker
        } else {
            return Err(self.api(400, "invalid join token"));
        };
        s.members.push(Member {
            engine: self.name.clone(),
            docker_node_id: format!("dn-{}-{n}", self.name),
            role,
            addr: req.advertise_addr.clone(),
        });
        if self.lose_join_response.swap(false, Ordering::SeqCst) {
            return Err(self.api(500, "context deadline exceeded"));
        }
        Ok(())
    }

    async fn leave(&self, _force: bool) -> crate::engine::Result<()> {
        self.record("leave");
        let mut w = self.world.lock().unwrap();
        for s in w.swarms.iter_mut() {
            s.members.retain(|m| m.engine != self.name);
        }
        Ok(())
    }

    async fn nodes(&self) -> crate::engine::Result<Vec<SwarmNode>> {
        self.record("nodes");
        let w = self.world.lock().unwrap();
        match w.membership(&self.name) {
            Some((s, m)) if m.role == Role::Manager => Ok(s
                .members
                .iter()
                .enumerate()
                .map(|(i, m)| SwarmNode {
                    id: m.docker_node_id.clone(),
                    hostname: m.engine.clone(),
                    role: m.role,
                    leader: i == 0,
                    reachable: (m.role == Role::Manager).then_some(true),
                    state: "ready".into(),
                    addr: Some(m.addr.clone()),
                })
                .collect()),
            _ => Err(self.api(503, "This node is not a swarm manager.")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Backend

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishAttempt {
    pub node_id: String,
    pub fencing_token: u64,
    pub swarm_id: String,
    pub accepted: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdoptAttempt {
    pub node_id: String,
    pub swarm_id: String,
    /// The rules accepted it (`adopted` or a refresh of the same swarm).
    pub accepted: bool,
    /// It formed the cluster (`AdoptResponse::adopted`).
    pub adopted: bool,
}

/// What the fake stores: the cluster as the rulebook's [`Memory`], plus what tests inspect.
struct Stored {
    mem: Memory,
    /// Every publish attempt that reached the rules, with the rules' verdict.
    publishes: Vec<PublishAttempt>,
    /// Every adoption that reached the rules, with the rules' verdict.
    adopts: Vec<AdoptAttempt>,
    /// Register calls that reached the rules.
    registers: u32,
    /// Sync calls that reached the rules (accepted or not).
    syncs: u32,
}

/// An in-memory rendezvous backend, built exactly like a storage backend of the rulebook
/// (`swarmstrap_wire::rules`): each call reads the [`Memory`] under the mutex, runs the rule
/// at the wall-clock time, applies the returned change and wakes the waiters when the change
/// is not empty. It decides nothing itself; the test hooks below only inject faults.
///
/// Like every client, it keeps node credentials ([`Credentials`]): the ones `register` and
/// `adopt` issue, or ones set with [`Rendezvous::set_credential`]; each call for a node id
/// presents the one held for it. One fake usually serves many nodes, so it holds many. The
/// cluster has an operator credential ([`FakeBackend::operator_credential`]) that `reset` needs.
pub struct FakeBackend {
    inner: Mutex<Stored>,
    changed: tokio::sync::Notify,
    pub secret_ok: AtomicBool,
    /// The next N calls fail with a transient error.
    pub transient_failures: AtomicU32,
    credentials: Credentials,
    operator: Mutex<Secret>,
}

/// The credential a registration binds a new node id to, as the coordinator decides it: the
/// one the node offers when it is a strong one (32..=256 printable characters: the agent
/// offers the one it saved before registering, so a lost answer is no lockout), else a new
/// random one.
pub fn issue(presented: Option<&Secret>) -> Secret {
    match presented {
        Some(p)
            if (32..=256).contains(&p.expose().len())
                && p.expose().bytes().all(|b| b.is_ascii_graphic()) =>
        {
            p.clone()
        }
        _ => fresh_credential(),
    }
}

/// A new random credential (32 bytes from the OS RNG, hex), as a backend issues.
pub fn fresh_credential() -> Secret {
    use rand::TryRngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut b)
        .expect("the operating system's random number generator failed");
    Secret::new(hex::encode(b))
}

/// The rules' clock: wall-clock milliseconds, as every backend uses.
fn now_ms() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl FakeBackend {
    /// A cluster named `test` with `target` managers.
    pub fn new(target: u8) -> Arc<FakeBackend> {
        let mut state = ClusterState::new("test", target).expect("a valid manager target");
        let operator = fresh_credential();
        state.operator_sha256 = Some(rules::credential_sha256(&operator));
        Arc::new(FakeBackend {
            inner: Mutex::new(Stored {
                mem: Memory::new(state),
                publishes: vec![],
                adopts: vec![],
                registers: 0,
                syncs: 0,
            }),
            changed: tokio::sync::Notify::new(),
            secret_ok: AtomicBool::new(true),
            transient_failures: AtomicU32::new(0),
            credentials: Credentials::default(),
            operator: Mutex::new(operator),
        })
    }

    /// The cluster's operator credential (what `cluster create` prints): `reset` needs it.
    pub fn operator_credential(&self) -> Secret {
        self.operator.lock().unwrap().clone()
    }

    /// Test hook: make `credential` the cluster's operator credential.
    pub fn set_operator_credential(&self, credential: Secret) {
        let digest = rules::credential_sha256(&credential);
        *self.operator.lock().unwrap() = credential;
        self.inner.lock().unwrap().mem.state.operator_sha256 = Some(digest);
    }

    /// Test hook: drop the credential this client holds for `node_id` (a node that lost its
    /// state dir while its registration stayed).
    pub fn forget_credential(&self, node_id: &str) {
        // `Credentials` has no remove: an empty credential never matches a stored digest.
        self.credentials.set(node_id, Secret::new(""));
    }

    /// The credential held for `node_id` (none for a forgotten one).
    fn presented(&self, node_id: &str) -> Option<Secret> {
        self.credentials.get(node_id).filter(|c| !c.is_empty())
    }

    fn gate(&self) -> RResult<()> {
        if !self.secret_ok.load(Ordering::SeqCst) {
            return Err(RendezvousError::Unauthorized(
                "invalid cluster secret".into(),
            ));
        }
        if self
            .transient_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(RendezvousError::Transient("HTTP 503 busy".into()));
        }
        Ok(())
    }

    /// One atomic step: read, run the rule, store its change, answer. `note` sees the stored
    /// record and the rule's result before the change is applied (test bookkeeping only).
    fn step<T>(
        &self,
        rule: impl FnOnce(&Memory, u64) -> rules::Result<Outcome<T>>,
        note: impl FnOnce(&mut Stored, bool),
    ) -> RResult<T> {
        let mut stored = self.inner.lock().unwrap();
        let result = rule(&stored.mem, now_ms());
        note(&mut stored, result.is_ok());
        let Outcome { answer, change } = result?;
        let changed = !change.is_empty();
        stored.mem.apply(change);
        drop(stored);
        if changed {
            self.changed.notify_waiters();
        }
        Ok(answer)
    }

    /// Read under the mutex, without changing anything.
    fn read<T>(&self, f: impl FnOnce(&Memory, u64) -> T) -> T {
        f(&self.inner.lock().unwrap().mem, now_ms())
    }

    /// Wait (up to `wait`) until `ready` accepts what `read` answers; answer the last read.
    async fn wait_until<T>(
        &self,
        wait: Duration,
        read: impl Fn(&Memory, u64) -> RResult<T>,
        ready: impl Fn(&T) -> bool,
    ) -> RResult<T> {
        let deadline = Instant::now() + wait;
        loop {
            // Registered before the read, so a change right after it still wakes us.
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let answer = self.read(&read)?;
            if ready(&answer) || Instant::now() >= deadline {
                return Ok(answer);
            }
            let _ = tokio::time::timeout_at(deadline.into(), notified).await;
        }
    }

    /// Every publish attempt that reached the rules, with whether it was accepted.
    pub fn publishes(&self) -> Vec<PublishAttempt> {
        self.inner.lock().unwrap().publishes.clone()
    }

    /// How many register calls reached the rules.
    pub fn registers(&self) -> u32 {
        self.inner.lock().unwrap().registers
    }

    /// Every adoption that reached the rules, with the verdict.
    pub fn adopts(&self) -> Vec<AdoptAttempt> {
        self.inner.lock().unwrap().adopts.clone()
    }

    /// How many sync calls reached the rules.
    pub fn syncs(&self) -> u32 {
        self.inner.lock().unwrap().syncs
    }

    /// Test hook: the rendezvous forgets the cluster, as a coordinator whose database was
    /// wiped and the cluster re-created (same name, target and secret), or a Secrets Manager
    /// secret deleted: no formation, lease, registration, document, reset log or fencing
    /// history. The call records (`publishes`, `adopts`, ...) are kept. Waiters are woken.
    pub fn wipe(&self) {
        let mut stored = self.inner.lock().unwrap();
        let st = &stored.mem.state;
        let mut fresh = ClusterState::new(&st.name, st.target_managers)
            .expect("the stored name and target were valid");
        // Re-created with the same operator credential.
        fresh.operator_sha256 = st.operator_sha256.clone();
        stored.mem = Memory::new(fresh);
        drop(stored);
        self.changed.notify_waiters();
    }

    /// Test hook: the operator's adoption hold (`swarm-coordinator cluster await-adoption` /
    /// `allow-init`), through the rulebook (`rules::set_adoption_hold`: a formed cluster
    /// refuses a hold with `already_formed`).
    pub fn set_adoption_hold(&self, hold: bool) -> RResult<()> {
        self.step(|m, _| rules::set_adoption_hold(&m.state, hold), |_, _| ())
    }

    /// The holder of the live lease, if any.
    pub fn lease_holder(&self) -> Option<String> {
        self.read(|m, now| m.state.live_lease(now).map(|l| l.holder.clone()))
    }

    /// The swarm id the cluster was formed with, if any.
    pub fn formed_swarm(&self) -> Option<String> {
        self.read(|m, _| m.state.formed.as_ref().map(|f| f.swarm_id.clone()))
    }

    /// A copy of the whole stored cluster.
    pub fn memory(&self) -> Memory {
        self.read(|m, _| m.clone())
    }

    /// Test-only fault: give the lease to someone else, as if it had expired and been claimed
    /// (a new fencing token, without going through the rules).
    pub fn steal_lease(&self, holder: &str, ttl: Duration) {
        let mut stored = self.inner.lock().unwrap();
        let now = now_ms();
        let st = &mut stored.mem.state;
        st.last_fencing_token += 1;
        st.lease = Some(LeaseState {
            holder: holder.into(),
            fencing_token: st.last_fencing_token,
            granted_at_ms: now,
            expires_at_ms: now.saturating_add(millis(ttl)),
        });
        drop(stored);
        self.changed.notify_waiters();
    }
}

#[async_trait]
impl Rendezvous for FakeBackend {
    fn describe(&self) -> String {
        "fake backend".into()
    }

    fn set_credential(&self, node_id: &str, credential: Secret) {
        self.credentials.set(node_id, credential);
    }

    fn credential(&self, node_id: &str) -> Option<Secret> {
        self.presented(node_id)
    }

    async fn register(&self, req: &RegisterRequest) -> RResult<RegisterResponse> {
        self.gate()?;
        let presented = self.presented(&req.node_id);
        let fresh = issue(presented.as_ref());
        let r = self.step(
            |m, now| m.register(now, req, presented.as_ref(), &fresh),
            |s, _| s.registers += 1,
        )?;
        self.credentials.keep(&req.node_id, r.credential.as_ref());
        Ok(r)
    }

    async fn claim(&self, node_id: &str, ttl: Duration) -> RResult<ClaimResponse> {
        self.gate()?;
        let presented = self.presented(node_id);
        self.step(
            |m, now| m.claim(now, node_id, millis(ttl), presented.as_ref()),
            |_, _| (),
        )
    }

    async fn renew(
        &self,
        node_id: &str,
        fencing_token: u64,
        ttl: Duration,
    ) -> RResult<ClaimResponse> {
        self.gate()?;
        let req = RenewRequest {
            node_id: node_id.into(),
            fencing_token,
            ttl_ms: millis(ttl),
        };
        let presented = self.presented(node_id);
        self.step(|m, now| m.renew(now, &req, presented.as_ref()), |_, _| ())
    }

    async fn publish(&self, req: &PublishRequest) -> RResult<PublishResponse> {
        self.gate()?;
        let presented = self.presented(&req.node_id);
        self.step(
            |m, now| m.publish(now, req, presented.as_ref()),
            |s, accepted| {
                s.publishes.push(PublishAttempt {
                    node_id: req.node_id.clone(),
                    fencing_token: req.fencing_token,
                    swarm_id: req.swarm_id.clone(),
                    accepted,
                })
            },
        )
    }

    async fn wait_join(&self, node_id: &str, wait: Duration) -> RResult<JoinResponse> {
        self.gate()?;
        let presented = self.presented(node_id);
        self.wait_until(
            wait,
            |m, now| Ok(m.join(now, node_id, presented.as_ref())?),
            |j: &JoinResponse| j.join.is_some(),
        )
        .await
    }

    async fn reset(&self, req: &ResetRequest, operator: Option<&Secret>) -> RResult<ClusterStatus> {
        self.gate()?;
        self.step(
            |m, now| {
                rules::check_operator(&m.state, operator)?;
                rules::recover(&m.state, now, req)
            },
            |_, _| (),
        )
    }

    async fn request_token_rotation(&self, operator: Option<&Secret>) -> RResult<ClusterStatus> {
        self.gate()?;
        self.step(
            |m, now| {
                rules::check_operator(&m.state, operator)?;
                let o = rules::request_token_rotation(&m.state)?;
                let mut after = m.clone();
                after.apply(o.change.clone());
                Ok(rules::Outcome {
                    answer: after.status(now),
                    change: o.change,
                })
            },
            |_, _| (),
        )
    }

    async fn status(&self) -> RResult<ClusterStatus> {
        self.gate()?;
        Ok(self.read(|m, now| m.status(now)))
    }

    async fn snapshot(&self) -> RResult<Option<swarmstrap_wire::rendezvous::Snapshot>> {
        self.gate()?;
        Ok(Some(self.read(|m, now| {
            swarmstrap_wire::rendezvous::Snapshot {
                status: m.status(now),
                docs: m.docs.clone(),
                revision: None,
            }
        })))
    }

    async fn sync(&self, req: &SyncRequest) -> RResult<SyncResponse> {
        self.gate()?;
        let presented = self.presented(&req.node_id);
        self.step(
            |m, now| m.sync(now, req, presented.as_ref()),
            |s, _| s.syncs += 1,
        )
    }

    async fn adopt(&self, req: &AdoptRequest) -> RResult<AdoptResponse> {
        self.gate()?;
        let adopted = std::cell::Cell::new(false);
        let presented = self.presented(&req.node_id);
        let fresh = issue(presented.as_ref());
        let r = self.step(
            |m, now| {
                let o = m.adopt(now, req, presented.as_ref(), &fresh);
                adopted.set(o.as_ref().is_ok_and(|o| o.answer.adopted));
                o
            },
            |s, accepted| {
                s.adopts.push(AdoptAttempt {
                    node_id: req.node_id.clone(),
                    swarm_id: req.swarm_id.clone(),
                    accepted,
                    adopted: adopted.get(),
                })
            },
        )?;
        self.credentials.keep(&req.node_id, r.credential.as_ref());
        Ok(r)
    }

    async fn get_doc(&self, name: &str, after: Option<u64>, wait: Duration) -> RResult<Document> {
        self.gate()?;
        swarmstrap_wire::validate_name(name)
            .map_err(|m| RendezvousError::from(RuleError::new(Code::InvalidName, m)))?;
        // The long-poll's wait condition (as in every backend): a version newer than `after`.
        self.wait_until(
            wait,
            |m, _| Ok(m.doc(name)),
            |d: &Document| rules::doc_answers(d, after),
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
        self.gate()?;
        let write = DocumentWrite {
            expected_version,
            body: body.clone(),
            node_id: node_id.to_string(),
        };
        let presented = self.presented(node_id);
        self.step(
            |m, _| m.put_doc(name, &write, presented.as_ref()),
            |_, _| (),
        )
    }
}

/// Wait for a condition with a deadline (tests never wait on luck).
pub async fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut delays = crate::retry::Policy::FAST.delays();
    while !cond() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(delays.next().unwrap().min(Duration::from_millis(20))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmstrap_wire::{Phase, RequestedRole};

    fn reg(id: &str) -> RegisterRequest {
        RegisterRequest {
            node_id: id.into(),
            hostname: id.into(),
            advertise_addr: "198.18.0.1".into(),
            role: RequestedRole::Auto,
            joined_through: None,
            labels: None,
        }
    }

    #[tokio::test]
    async fn documents_are_compare_and_set_and_long_polled() {
        let b = FakeBackend::new(3);
        b.register(&reg("a")).await.unwrap();
        let empty = b.get_doc("keeper", None, Duration::ZERO).await.unwrap();
        assert_eq!((empty.version, empty.body), (0, serde_json::Value::Null));
        let body = serde_json::json!({"a": 1});
        let v1 = b.put_doc("a", "keeper", 0, &body).await.unwrap();
        assert_eq!(v1.version, 1);
        let stale = b.put_doc("a", "keeper", 0, &body).await.unwrap_err();
        assert_eq!(stale.code(), Some(Code::VersionConflict), "{stale}");
        let bad = b.get_doc("Not A Name", None, Duration::ZERO).await;
        assert_eq!(bad.unwrap_err().code(), Some(Code::InvalidName));

        // A long-poll after version 1 wakes on the write of version 2, not at its deadline.
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.get_doc("keeper", Some(1), Duration::from_secs(20)).await })
        };
        let started = Instant::now();
        let mut expected = 1;
        // Write until the waiter has seen a newer version (it may register after a write).
        while !waiter.is_finished() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "waiter not woken"
            );
            b.put_doc("a", "keeper", expected, &serde_json::json!({"n": expected}))
                .await
                .unwrap();
            expected += 1;
            tokio::task::yield_now().await;
        }
        let seen = waiter.await.unwrap().unwrap();
        assert!(seen.version > 1, "{seen:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        // With nothing newer, the poll answers the current document at its deadline.
        let now = b
            .get_doc("keeper", Some(expected), Duration::from_millis(50))
            .await;
        assert_eq!(now.unwrap().version, expected);
    }

    #[tokio::test]
    async fn credentials_are_kept_presented_and_checked() {
        let b = FakeBackend::new(3);
        let r = b.register(&reg("a")).await.unwrap();
        let issued = r.credential.expect("a new node id is issued a credential");
        assert_eq!(b.credential("a"), Some(issued.clone()));
        assert!(!format!("{:?}", b.credentials).contains(issued.expose()));
        // Registering again presents it (and is issued nothing new).
        assert!(b.register(&reg("a")).await.unwrap().credential.is_none());
        // Lost: the same node id is refused, not re-issued.
        b.forget_credential("a");
        let e = b.register(&reg("a")).await.unwrap_err();
        assert_eq!(e.code(), Some(Code::BadNodeCredential), "{e}");
        let e = b.claim("a", Duration::from_secs(30)).await.unwrap_err();
        assert_eq!(e.code(), Some(Code::BadNodeCredential), "{e}");
        // Handed back (as the agent does from its state dir): accepted again.
        b.set_credential("a", issued);
        assert!(b.claim("a", Duration::from_secs(30)).await.unwrap().granted);
        // Unregistered ids cannot claim; unknown documents do not exist.
        let e = b.claim("ghost", Duration::from_secs(30)).await.unwrap_err();
        assert_eq!(e.code(), Some(Code::NodeNotRegistered), "{e}");
        let e = b
            .put_doc("a", "lb", 0, &serde_json::json!({}))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(Code::InvalidName), "{e}");
    }

    #[tokio::test]
    async fn reset_needs_the_operator_credential() {
        let b = FakeBackend::new(1);
        b.register(&reg("a")).await.unwrap();
        let token = b
            .claim("a", Duration::from_secs(30))
            .await
            .unwrap()
            .lease
            .unwrap()
            .fencing_token;
        b.publish(&PublishRequest {
            node_id: "a".into(),
            fencing_token: token,
            swarm_id: "swarm1".into(),
            ca_digest: format!("sha256:{}", "ab".repeat(32)),
            manager_addrs: vec!["198.18.0.1:2377".into()],
            manager_token: Secret::new("SWMTKN-1-m"),
            worker_token: Secret::new("SWMTKN-1-w"),
        })
        .await
        .unwrap();
        let req = ResetRequest {
            node_id: "a".into(),
            swarm_id: "swarm1".into(),
            reason: "test".into(),
        };
        let node_cred = b.credential("a").unwrap();
        for op in [None, Some(&node_cred), Some(&Secret::new("guess"))] {
            let e = b.reset(&req, op).await.unwrap_err();
            assert_eq!(e.code(), Some(Code::OperatorRequired), "{e}");
        }
        assert_eq!(b.formed_swarm().as_deref(), Some("swarm1"));
        b.set_operator_credential(Secret::new("op-1"));
        assert_eq!(b.operator_credential().expose(), "op-1");
        let after = b.reset(&req, Some(&Secret::new("op-1"))).await.unwrap();
        assert_eq!(after.resets, 1);
    }

    #[tokio::test]
    async fn the_rules_decide_claims_renewals_and_publishes() {
        let b = FakeBackend::new(1);
        b.register(&reg("a")).await.unwrap();
        let worker = b.register(&reg("w")).await.unwrap();
        assert_eq!(worker.role, Role::Worker);
        let refused = b.claim("w", Duration::from_secs(30)).await.unwrap_err();
        assert_eq!(refused.code(), Some(Code::NotAManager));

        let first = b.claim("a", Duration::from_secs(30)).await.unwrap();
        let lease = first.lease.clone().unwrap();
        assert!(first.granted && lease.holder == "a");
        // A re-claim by the holder keeps the token and does not extend the lease.
        let again = b.claim("a", Duration::from_secs(300)).await.unwrap();
        let again_lease = again.lease.unwrap();
        assert!(again.granted && again_lease.fencing_token == lease.fencing_token);
        assert!(again_lease.expires_in_ms <= lease.expires_in_ms);
        assert_eq!(b.lease_holder().as_deref(), Some("a"));

        // The test fault: the lease passes to an intruder under a newer token.
        b.steal_lease("intruder", Duration::from_secs(30));
        let lost = b
            .renew("a", lease.fencing_token, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert_eq!(lost.code(), Some(Code::LeaseLost), "{lost}");
        let req = PublishRequest {
            node_id: "a".into(),
            fencing_token: lease.fencing_token,
            swarm_id: "swarm1".into(),
            ca_digest: format!("sha256:{}", "ab".repeat(32)),
            manager_addrs: vec!["198.18.0.1:2377".into()],
            manager_token: Secret::new("SWMTKN-1-m"),
            worker_token: Secret::new("SWMTKN-1-w"),
        };
        let fenced = b.publish(&req).await.unwrap_err();
        assert_eq!(fenced.code(), Some(Code::StaleFencingToken), "{fenced}");
        assert_eq!(b.formed_swarm(), None);
        let attempts = b.publishes();
        assert_eq!(attempts.len(), 1);
        assert!(!attempts[0].accepted);
        assert_eq!(
            b.wait_join("nobody", Duration::ZERO)
                .await
                .unwrap_err()
                .code(),
            Some(Code::NodeNotRegistered)
        );
    }

    #[tokio::test]
    async fn wipe_forgets_the_cluster_and_the_hold_refuses_claims_until_adopted() {
        let b = FakeBackend::new(3);
        b.register(&reg("a")).await.unwrap();
        let token = b
            .claim("a", Duration::from_secs(30))
            .await
            .unwrap()
            .lease
            .unwrap()
            .fencing_token;
        let publish = PublishRequest {
            node_id: "a".into(),
            fencing_token: token,
            swarm_id: "swarm1".into(),
            ca_digest: format!("sha256:{}", "ab".repeat(32)),
            manager_addrs: vec!["198.18.0.1:2377".into()],
            manager_token: Secret::new("SWMTKN-1-m"),
            worker_token: Secret::new("SWMTKN-1-w"),
        };
        b.publish(&publish).await.unwrap();
        // A waiter parked on a node registered after the wipe is answered by the adoption.
        b.wipe();
        let s = b.status().await.unwrap();
        assert_eq!((s.phase, s.nodes.len(), s.swarm_id), (Phase::Open, 0, None));
        b.set_adoption_hold(true).unwrap();
        b.register(&reg("new")).await.unwrap();
        let refused = b.claim("new", Duration::from_secs(30)).await.unwrap_err();
        assert_eq!(refused.code(), Some(Code::AwaitingAdoption), "{refused}");
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.wait_join("new", Duration::from_secs(20)).await })
        };
        let adopt = AdoptRequest {
            node_id: "a".into(),
            hostname: "a".into(),
            advertise_addr: "198.18.0.1".into(),
            swarm_id: "swarm1".into(),
            ca_digest: format!("sha256:{}", "ab".repeat(32)),
            manager_addrs: vec!["198.18.0.1:2377".into()],
            manager_token: Secret::new("SWMTKN-1-m"),
            worker_token: Secret::new("SWMTKN-1-w"),
            managers: 1,
        };
        let a = b.adopt(&adopt).await.unwrap();
        assert!(a.adopted && a.fencing_token > token);
        let j = waiter
            .await
            .unwrap()
            .unwrap()
            .join
            .expect("woken by the adoption");
        assert_eq!(j.swarm_id, "swarm1");
        let again = b.adopt(&adopt).await.unwrap();
        assert!(!again.adopted);
        assert_eq!(
            b.adopts()
                .iter()
                .map(|a| (a.accepted, a.adopted))
                .collect::<Vec<_>>(),
            [(true, true), (true, false)]
        );
        // Formed: the hold is refused; a sync for another swarm too.
        let held = b.set_adoption_hold(true).unwrap_err();
        assert_eq!(held.code(), Some(Code::AlreadyFormed));
        let sync = SyncRequest {
            node_id: "a".into(),
            swarm_id: "other".into(),
            manager_addrs: vec!["198.18.0.1:2377".into()],
            managers: 1,
            members: vec![],
        };
        let e = b.sync(&sync).await.unwrap_err();
        assert_eq!(e.code(), Some(Code::SwarmMismatch));
        assert_eq!(b.syncs(), 1);
    }
}
