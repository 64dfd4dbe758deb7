//! Fakes for unit tests: a world of Docker engines sharing swarms ([`FakeEngine`]) and an
//! in-memory rendezvous with the coordinator's semantics ([`FakeBackend`]). Both record what
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
use std::time::{Duration, Instant};
use swarmstrap_wire::rendezvous::{Rendezvous, RendezvousError, Result as RResult};
use swarmstrap_wire::{
    ClaimResponse, ClusterStatus, Document, JoinInfo, JoinResponse, Lease, NodeInfo, Phase,
    PublishRequest, PublishResponse, RegisterRequest, RegisterResponse, RequestedRole,
    ResetRequest, Role, Secret,
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

struct Cluster {
    target: u8,
    nodes: Vec<(RegisterRequest, Role)>,
    lease: Option<(String, u64, Instant)>,
    next_token: u64,
    formed: Option<PublishRequest>,
    publishes: Vec<PublishAttempt>,
    registers: u32,
}

pub struct FakeBackend {
    inner: Mutex<Cluster>,
    changed: tokio::sync::Notify,
    pub secret_ok: AtomicBool,
    /// The next N calls fail with a transient error.
    pub transient_failures: AtomicU32,
}

impl FakeBackend {
    pub fn new(target: u8) -> Arc<FakeBackend> {
        Arc::new(FakeBackend {
            inner: Mutex::new(Cluster {
                target,
                nodes: vec![],
                lease: None,
                next_token: 0,
                formed: None,
                publishes: vec![],
                registers: 0,
            }),
            changed: tokio::sync::Notify::new(),
            secret_ok: AtomicBool::new(true),
            transient_failures: AtomicU32::new(0),
        })
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

    pub fn publishes(&self) -> Vec<PublishAttempt> {
        self.inner.lock().unwrap().publishes.clone()
    }

    pub fn registers(&self) -> u32 {
        self.inner.lock().unwrap().registers
    }

    pub fn lease_holder(&self) -> Option<String> {
        let c = self.inner.lock().unwrap();
        live_lease(&c).map(|(h, _, _)| h.clone())
    }

    pub fn formed_swarm(&self) -> Option<String> {
        self.inner
            .lock()
            .unwrap()
            .formed
            .as_ref()
            .map(|p| p.swarm_id.clone())
    }

    /// Give the lease to someone else, as if it had expired and been claimed.
    pub fn steal_lease(&self, holder: &str, ttl: Duration) {
        let mut c = self.inner.lock().unwrap();
        c.next_token += 1;
        c.lease = Some((holder.into(), c.next_token, Instant::now() + ttl));
        drop(c);
        self.changed.notify_waiters();
    }

    fn phase(c: &Cluster) -> Phase {
        if c.formed.is_some() {
            Phase::Formed
        } else if live_lease(c).is_some() {
            Phase::Claimed
        } else {
            Phase::Open
        }
    }

    fn lease_view(c: &Cluster) -> Option<Lease> {
        live_lease(c).map(|(h, t, exp)| Lease {
            holder: h.clone(),
            fencing_token: *t,
            expires_in_ms: exp.saturating_duration_since(Instant::now()).as_millis() as u64,
        })
    }
}

fn live_lease(c: &Cluster) -> Option<&(String, u64, Instant)> {
    c.lease.as_ref().filter(|(_, _, exp)| *exp > Instant::now())
}

#[async_trait]
impl Rendezvous for FakeBackend {
    fn describe(&self) -> String {
        "fake backend".into()
    }

    async fn register(&self, req: &RegisterRequest) -> RResult<RegisterResponse> {
        self.gate()?;
        let mut c = self.inner.lock().unwrap();
        c.registers += 1;
        let role = match c.nodes.iter().find(|(r, _)| r.node_id == req.node_id) {
            Some((_, role)) => *role,
            None => {
                let managers = c.nodes.iter().filter(|(_, r)| *r == Role::Manager).count();
                let role = match req.role {
                    RequestedRole::Worker => Role::Worker,
                    _ if managers < c.target as usize => Role::Manager,
                    _ => Role::Worker,
                };
                c.nodes.push((req.clone(), role));
                role
            }
        };
        Ok(RegisterResponse {
            node_id: req.node_id.clone(),
            role,
            target_managers: c.target,
            phase: Self::phase(&c),
        })
    }

    async fn claim(&self, node_id: &str, ttl: Duration) -> RResult<ClaimResponse> {
        self.gate()?;
        let mut c = self.inner.lock().unwrap();
        if c.formed.is_some() {
            return Ok(ClaimResponse {
                granted: false,
                phase: Phase::Formed,
                lease: None,
            });
        }
        let granted = match live_lease(&c).cloned() {
            Some((holder, token, _)) if holder == node_id => {
                c.lease = Some((holder, token, Instant::now() + ttl));
                true
            }
            Some(_) => false,
            None => {
                c.next_token += 1;
                c.lease = Some((node_id.into(), c.next_token, Instant::now() + ttl));
                true
            }
        };
        Ok(ClaimResponse {
            granted,
            phase: Self::phase(&c),
            lease: Self::lease_view(&c),
        })
    }

    async fn renew(
        &self,
        node_id: &str,
        fencing_token: u64,
        ttl: Duration,
    ) -> RResult<ClaimResponse> {
        self.gate()?;
        let mut c = self.inner.lock().unwrap();
        match live_lease(&c).cloned() {
            Some((h, t, _)) if h == node_id && t == fencing_token && c.formed.is_none() => {
                c.lease = Some((h, t, Instant::now() + ttl));
                Ok(ClaimResponse {
                    granted: true,
                    phase: Phase::Claimed,
                    lease: Self::lease_view(&c),
                })
            }
            _ => Err(RendezvousError::Conflict {
                code: "lease_lost".into(),
                message: "not the lease holder".into(),
            }),
        }
    }

    async fn publish(&self, req: &PublishRequest) -> RResult<PublishResponse> {
        self.gate()?;
        let mut c = self.inner.lock().unwrap();
        let holder_ok = matches!(live_lease(&c), Some((h, t, _)) if *h == req.node_id && *t == req.fencing_token);
        let same = c.formed.as_ref() == Some(req);
        let accepted = same || (c.formed.is_none() && holder_ok);
        c.publishes.push(PublishAttempt {
            node_id: req.node_id.clone(),
            fencing_token: req.fencing_token,
            swarm_id: req.swarm_id.clone(),
            accepted,
        });
        if !accepted {
            return Err(RendezvousError::Conflict {
                code: "stale_fencing_token".into(),
                message: "not the holder of the current lease".into(),
            });
        }
        c.formed = Some(req.clone());
        c.lease = None;
        drop(c);
        self.changed.notify_waiters();
        Ok(PublishResponse {
            phase: Phase::Formed,
        })
    }

    async fn wait_join(&self, node_id: &str, wait: Duration) -> RResult<JoinResponse> {
        self.gate()?;
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let c = self.inner.lock().unwrap();
                let role = c
                    .nodes
                    .iter()
                    .find(|(r, _)| r.node_id == node_id)
                    .map(|(_, role)| *role)
                    .ok_or_else(|| RendezvousError::Rejected {
                        code: "unknown_node".into(),
                        message: format!("node {node_id} is not registered"),
                    })?;
                if let Some(p) = &c.formed {
                    return Ok(JoinResponse {
                        phase: Phase::Formed,
                        lease: None,
                        join: Some(JoinInfo {
                            swarm_id: p.swarm_id.clone(),
                            ca_digest: p.ca_digest.clone(),
                            manager_addrs: p.manager_addrs.clone(),
                            role,
                            token: match role {
                                Role::Manager => p.manager_token.clone(),
                                Role::Worker => p.worker_token.clone(),
                            },
                        }),
                    });
                }
                if Instant::now() >= deadline {
                    return Ok(JoinResponse {
                        phase: Self::phase(&c),
                        lease: Self::lease_view(&c),
                        join: None,
                    });
                }
            }
            let _ = tokio::time::timeout_at(deadline.into(), notified).await;
        }
    }

    async fn reset(&self, req: &ResetRequest) -> RResult<ClusterStatus> {
        self.gate()?;
        {
            let mut c = self.inner.lock().unwrap();
            let current = c.formed.as_ref().map(|p| p.swarm_id.clone());
            if current.as_deref() != Some(req.swarm_id.as_str()) {
                return Err(RendezvousError::Conflict {
                    code: "swarm_mismatch".into(),
                    message: format!("formed with {current:?}"),
                });
            }
            c.formed = None;
            c.lease = None;
            c.nodes.clear();
        }
        self.changed.notify_waiters();
        self.status().await
    }

    async fn status(&self) -> RResult<ClusterStatus> {
        self.gate()?;
        let c = self.inner.lock().unwrap();
        Ok(ClusterStatus {
            name: "test".into(),
            phase: Self::phase(&c),
            target_managers: c.target,
            lease: Self::lease_view(&c),
            swarm_id: c.formed.as_ref().map(|p| p.swarm_id.clone()),
            ca_digest: c.formed.as_ref().map(|p| p.ca_digest.clone()),
            manager_addrs: c
                .formed
                .as_ref()
                .map(|p| p.manager_addrs.clone())
                .unwrap_or_default(),
            nodes: c
                .nodes
                .iter()
                .map(|(r, role)| NodeInfo {
                    node_id: r.node_id.clone(),
                    hostname: r.hostname.clone(),
                    advertise_addr: r.advertise_addr.clone(),
                    requested: r.role,
                    role: *role,
                    registered_at_ms: 0,
                })
                .collect(),
            formed_at_ms: None,
            resets: 0,
        })
    }

    async fn get_doc(
        &self,
        _name: &str,
        _after: Option<u64>,
        _wait: Duration,
    ) -> RResult<Document> {
        Err(RendezvousError::Rejected {
            code: "unsupported".into(),
            message: "documents are not faked".into(),
        })
    }

    async fn put_doc(&self, _name: &str, _v: u64, _body: &serde_json::Value) -> RResult<Document> {
        Err(RendezvousError::Rejected {
            code: "unsupported".into(),
            message: "documents are not faked".into(),
        })
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
