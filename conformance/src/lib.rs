//! The rendezvous conformance suite: every rule of the rulebook (`swarmstrap_wire::rules`),
//! checked through the [`Rendezvous`] trait the agent uses, against any backend.
//!
//! A backend test implements [`Backend`] (make a fresh cluster, hand out clients as separate
//! nodes would have them; and a cluster with an [`Operator`] that can make the rendezvous
//! forget it, or hold it for adoption, the way that backend's operator or disaster would) and
//! calls [`run_all`]. Every case runs in its own cluster, in its own
//! task; the run reports each case and fails listing every failed case. The same cases run on
//! the coordinator (in process, over real TLS, through the agent's HTTPS client), on Secrets
//! Manager (the real backend against a moto server) and on the in-memory fake.
//!
//! Waiting is always for a condition with a deadline (lease expiry is observed in the
//! backend's own status, never assumed after a fixed sleep).
//!
//! Credentials (issue 14): a client keeps the node credential `register` (or `adopt`) issued
//! and presents it for that node id; a node's calls go through the client that registered it
//! (or one it was handed to, as the agent hands its state dir's credential to a new process).
//! A reset needs the cluster's operator credential ([`Cluster::operator`]); on Secrets Manager
//! IAM is the operator boundary and there is none. The "security" cases try what an attacker
//! holding only the join secret (and maybe its own node's credential) would.

use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarmstrap_wire::rendezvous::{Rendezvous, RendezvousError};
use swarmstrap_wire::rules::Code;
use swarmstrap_wire::{
    AdoptRequest, Member, Phase, PublishRequest, RegisterRequest, RequestedRole, ResetRequest,
    Role, Secret, SyncRequest,
};

/// Makes a client for one node of a cluster.
pub type Clients = Arc<dyn Fn() -> Arc<dyn Rendezvous> + Send + Sync>;

/// A fresh cluster: clients for its nodes (call it like [`Clients`]), and its operator
/// credential (`None` where the backend has none: Secrets Manager, where IAM decides who may
/// reset).
pub struct Cluster {
    pub clients: Clients,
    pub operator: Option<Secret>,
}

impl Deref for Cluster {
    type Target = Clients;
    fn deref(&self) -> &Clients {
        &self.clients
    }
}

/// What a backend test provides.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    fn name(&self) -> String;
    /// A fresh, empty cluster with this manager target.
    async fn cluster(&self, target_managers: u8) -> Cluster;
    /// A fresh, empty cluster with this manager target, and its [`Operator`].
    async fn operated_cluster(&self, target_managers: u8) -> Operated;
}

/// What happens to one cluster outside the rendezvous API: an operator's hand, or a disaster.
#[async_trait::async_trait]
pub trait Operator: Send + Sync {
    /// The rendezvous forgets the cluster while its swarm keeps running: the coordinator's
    /// database is lost and the coordinator restarted with the same certificate, the cluster
    /// re-created with the same name, target and secret (without `--adopt`); the Secrets
    /// Manager secret deleted for good; the fake's `wipe()`. Clients made before keep working.
    async fn wipe(&self);
    /// Set or lift the adoption hold (`swarm-coordinator cluster await-adoption` /
    /// `allow-init`), or the backend's refusal (a formed cluster: `already_formed`).
    async fn set_adoption_hold(&self, hold: bool) -> Result<(), RendezvousError>;
}

/// A cluster and its operator.
pub struct Operated {
    pub clients: Clients,
    pub operator: Arc<dyn Operator>,
}

type CaseFn = fn(Arc<dyn Backend>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Every case, by name.
        pub const CASES: &[(&str, CaseFn)] = &[
            $((stringify!($name), |b| Box::pin($name(b)))),*
        ];
    };
}

cases!(
    register_assigns_roles_up_to_the_target,
    register_is_idempotent_and_stores_changes,
    invalid_requests_are_refused_with_invalid_request,
    one_claim_wins_and_the_holder_keeps_its_token,
    a_re_claim_does_not_extend_the_lease,
    a_worker_may_not_claim,
    ttl_is_clamped_to_the_bounds,
    publish_is_fenced,
    formed_cluster_refuses_claims_and_foreign_publishes,
    identical_re_publish_is_accepted,
    ca_digest_is_stored_canonical,
    expired_lease_is_taken_over_with_a_larger_token,
    renew_and_publish_after_expiry_without_takeover,
    renew_extends_only_in_the_second_half,
    renew_once_formed_is_lease_lost,
    join_gives_only_the_role_token,
    join_of_an_unregistered_node_is_refused,
    wait_join_wakes_on_publish,
    status_shows_no_secret,
    reset_is_compare_and_set_on_the_swarm_id,
    reset_clears_registrations_and_fencing_keeps_counting,
    reset_reason_is_bounded,
    resets_are_all_counted,
    documents_are_compare_and_set,
    document_long_poll_wakes_on_write,
    race_many_claimants_one_lease,
    race_registrations_never_exceed_the_target,
    race_cas_writers_lose_no_update,
    race_concurrent_recoveries_reset_once,
    race_duplicate_publish_forms_once,
    sync_makes_join_info_carry_the_live_managers,
    sync_drops_a_departed_node_and_frees_its_manager_slot,
    sync_of_another_swarm_is_swarm_mismatch,
    sync_and_adopt_refuse_invalid_requests,
    adoption_re_forms_a_wiped_cluster_under_a_larger_token,
    claims_are_refused_while_the_cluster_awaits_adoption,
    adoption_of_a_retired_swarm_is_refused,
    adoption_keeps_a_cluster_formed_with_its_swarm,
    security_a_node_id_is_bound_to_its_credential,
    security_impersonation_is_refused,
    security_only_a_registered_manager_claims,
    security_a_worker_join_never_carries_the_manager_token,
    security_workers_cannot_write_manager_documents_or_others_entries,
    security_unknown_documents_do_not_exist,
    security_reset_needs_the_operator_credential,
    security_status_shows_no_credential,
    security_token_rotation_is_the_operators_and_new_tokens_settle_it,
    registration_carries_node_labels,
    security_only_a_node_sets_its_own_labels,
);

/// Run every case (or those whose name contains `filter`), each in its own cluster and task.
/// Panics listing the failed cases.
pub async fn run_all(backend: Arc<dyn Backend>, filter: Option<&str>) {
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, case) in CASES {
        if filter.is_some_and(|f| !name.contains(f)) {
            continue;
        }
        ran += 1;
        let started = Instant::now();
        let outcome = tokio::spawn(case(backend.clone())).await;
        let ms = started.elapsed().as_millis();
        match outcome {
            Ok(()) => eprintln!("conformance [{}] {name} ... ok ({ms} ms)", backend.name()),
            Err(e) => {
                eprintln!("conformance [{}] {name} ... FAILED: {e}", backend.name());
                failed.push(*name);
            }
        }
    }
    assert!(ran > 0, "no conformance case matched the filter {filter:?}");
    assert!(
        failed.is_empty(),
        "{} of {ran} conformance cases failed on {}: {failed:?}",
        failed.len(),
        backend.name()
    );
    eprintln!("conformance [{}]: {ran} cases passed", backend.name());
}

// ---------------------------------------------------------------------------------------------
// Helpers

const TTL: Duration = Duration::from_secs(30);

/// The documented bounds, written here rather than imported from the rulebook, so that a
/// changed bound fails this suite instead of moving with it: the longest lease (5 min) and
/// the number of resets the log keeps (the counter counts them all).
const MAX_LEASE_TTL_MS: u64 = 300_000;
const RESET_LOG: usize = 20;

fn reg(id: &str, role: RequestedRole) -> RegisterRequest {
    RegisterRequest {
        node_id: id.into(),
        hostname: format!("host-{id}"),
        advertise_addr: "198.18.0.10".into(),
        role,
        joined_through: None,
        labels: None,
    }
}

fn digest(b: u8) -> String {
    swarmstrap_wire::format_fingerprint(&[b; 32])
}

fn pubreq(node: &str, token: u64) -> PublishRequest {
    PublishRequest {
        node_id: node.into(),
        fencing_token: token,
        swarm_id: "swarmid0123456789abcdefgh".into(),
        ca_digest: digest(0xab),
        manager_addrs: vec!["198.18.0.10:2377".into()],
        manager_token: Secret::new("SWMTKN-1-conformance-manager"),
        worker_token: Secret::new("SWMTKN-1-conformance-worker"),
    }
}

/// The error code of a refusal (panics on any other error kind: a rule refusal is never
/// transient or an authorization failure).
fn code(e: RendezvousError) -> Code {
    match e {
        RendezvousError::Conflict { code, message }
        | RendezvousError::Rejected { code, message } => {
            Code::parse(&code).unwrap_or_else(|| panic!("unknown error code {code:?}: {message}"))
        }
        other => panic!("expected a rule refusal, got {other}"),
    }
}

/// Call until the answer is not transient (backends may shed load); 30 s deadline.
macro_rules! call {
    ($e:expr) => {{
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut delay = Duration::from_millis(10);
        loop {
            match $e.await {
                Err(RendezvousError::Transient(m)) if Instant::now() < deadline => {
                    eprintln!("transient, retrying: {m}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
                other => break other,
            }
        }
    }};
}

async fn register(c: &dyn Rendezvous, id: &str, role: RequestedRole) -> Role {
    call!(c.register(&reg(id, role))).expect("register").role
}

/// Node `id` acts through client `to` too (as the agent hands the credential in its state dir
/// to its next process).
fn hand_over(from: &dyn Rendezvous, to: &dyn Rendezvous, id: &str) {
    let c = from
        .credential(id)
        .unwrap_or_else(|| panic!("{id} holds no credential to hand over"));
    to.set_credential(id, c);
}

/// Register `id` as a manager (cluster target permitting), claim, and return the token.
async fn claim_as_manager(c: &dyn Rendezvous, id: &str, ttl: Duration) -> u64 {
    assert_eq!(register(c, id, RequestedRole::Manager).await, Role::Manager);
    let r = call!(c.claim(id, ttl)).expect("claim");
    assert!(
        r.granted,
        "{id}'s claim on an open cluster was not granted: {r:?}"
    );
    r.lease
        .expect("a granted claim names the lease")
        .fencing_token
}

async fn form(c: &dyn Rendezvous, id: &str) -> u64 {
    let token = claim_as_manager(c, id, TTL).await;
    call!(c.publish(&pubreq(id, token))).expect("publish");
    token
}

/// Wait until the cluster's status shows no live lease (the lease ran out), with a deadline.
async fn until_lease_expired(c: &dyn Rendezvous) {
    until(
        "the lease to expire",
        Duration::from_secs(MAX_LEASE_TTL_MS / 1000),
        || async { call!(c.status()).expect("status").lease.is_none() },
    )
    .await;
}

/// The scenario under test is a write that lands *while* a long-poll is parked; give the
/// spawned waiter a moment to send its request first. This is the shape of the scenario, not a
/// wait for a condition: were the waiter slower, it would find the new state at once and the
/// test would still check the right answer (only the wake-up path would go unexercised).
/// How long a read by one client may lag another client's write (Secrets Manager's reads are
/// eventually consistent across clients; the AWS-behaviour proxy serves reads up to 2 s old).
/// A write that was lost never shows up, so waiting this long still catches it.
const EVENTUALLY: Duration = Duration::from_secs(15);

async fn park_delay() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

async fn until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(20);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(250));
    }
}

// ---------------------------------------------------------------------------------------------
// Registration

async fn register_assigns_roles_up_to_the_target(b: Arc<dyn Backend>) {
    let c = (b.cluster(3).await)();
    let mut roles = Vec::new();
    for i in 0..5 {
        roles.push(register(&*c, &format!("n{i}"), RequestedRole::Auto).await);
    }
    use Role::*;
    assert_eq!(roles, [Manager, Manager, Manager, Worker, Worker]);
    // manager asked beyond the target → worker; worker asked → worker
    assert_eq!(register(&*c, "m", RequestedRole::Manager).await, Worker);
    let c1 = (b.cluster(1).await)();
    assert_eq!(register(&*c1, "w", RequestedRole::Worker).await, Worker);
    assert_eq!(register(&*c1, "a", RequestedRole::Auto).await, Manager);
    assert_eq!(register(&*c1, "b", RequestedRole::Manager).await, Worker);
    let s = call!(c.status()).unwrap();
    assert_eq!(s.nodes.len(), 6);
    assert_eq!(s.nodes.iter().filter(|n| n.role == Manager).count(), 3);
    assert_eq!(s.target_managers, 3);
}

async fn register_is_idempotent_and_stores_changes(b: Arc<dyn Backend>) {
    let c = (b.cluster(3).await)();
    assert_eq!(
        register(&*c, "n0", RequestedRole::Auto).await,
        Role::Manager
    );
    // same node again, even asking for worker: same role
    assert_eq!(
        register(&*c, "n0", RequestedRole::Worker).await,
        Role::Manager
    );
    let mut moved = reg("n0", RequestedRole::Auto);
    moved.advertise_addr = "198.18.0.99".into();
    moved.hostname = "renamed".into();
    let r = call!(c.register(&moved)).unwrap();
    assert_eq!(r.role, Role::Manager);
    let s = call!(c.status()).unwrap();
    assert_eq!(
        s.nodes.len(),
        1,
        "re-registering added a node: {:?}",
        s.nodes
    );
    let n = &s.nodes[0];
    assert_eq!(
        (n.hostname.as_str(), n.advertise_addr.as_str()),
        ("renamed", "198.18.0.99")
    );
    assert_eq!(n.requested, RequestedRole::Auto);
    // the manager count did not grow: two more managers fit, not more
    assert_eq!(
        register(&*c, "n1", RequestedRole::Auto).await,
        Role::Manager
    );
    assert_eq!(
        register(&*c, "n2", RequestedRole::Auto).await,
        Role::Manager
    );
    assert_eq!(register(&*c, "n3", RequestedRole::Auto).await, Role::Worker);
}

async fn invalid_requests_are_refused_with_invalid_request(b: Arc<dyn Backend>) {
    let c = (b.cluster(3).await)();
    for bad in [
        reg("has space", RequestedRole::Auto),
        reg("", RequestedRole::Auto),
        reg(&"x".repeat(129), RequestedRole::Auto),
        RegisterRequest {
            hostname: "two words".into(),
            ..reg("ok", RequestedRole::Auto)
        },
        RegisterRequest {
            advertise_addr: "".into(),
            ..reg("ok", RequestedRole::Auto)
        },
    ] {
        let e = call!(c.register(&bad)).unwrap_err();
        assert_eq!(code(e), Code::InvalidRequest, "{bad:?}");
    }
    let e = call!(c.claim("bad id", TTL)).unwrap_err();
    assert_eq!(code(e), Code::InvalidRequest);
    let token = claim_as_manager(&*c, "a", TTL).await;
    let mut p = pubreq("a", token);
    p.ca_digest = "md5:00".into();
    assert_eq!(
        code(call!(c.publish(&p)).unwrap_err()),
        Code::InvalidRequest
    );
    let mut p = pubreq("a", token);
    p.manager_addrs.clear();
    assert_eq!(
        code(call!(c.publish(&p)).unwrap_err()),
        Code::InvalidRequest
    );
    let mut p = pubreq("a", token);
    p.worker_token = Secret::new("");
    assert_eq!(
        code(call!(c.publish(&p)).unwrap_err()),
        Code::InvalidRequest
    );
    let mut p = pubreq("a", token);
    p.swarm_id = "has space".into();
    assert_eq!(
        code(call!(c.publish(&p)).unwrap_err()),
        Code::InvalidRequest
    );
    // nothing of it was stored
    assert_eq!(call!(c.status()).unwrap().phase, Phase::Claimed);
}

// ---------------------------------------------------------------------------------------------
// Claim

async fn one_claim_wins_and_the_holder_keeps_its_token(b: Arc<dyn Backend>) {
    let c = (b.cluster(3).await)();
    let token = claim_as_manager(&*c, "a", TTL).await;
    register(&*c, "b", RequestedRole::Manager).await;
    let r = call!(c.claim("b", TTL)).unwrap();
    assert!(!r.granted);
    assert_eq!(r.phase, Phase::Claimed);
    let lease = r.lease.expect("the refusal names the holder");
    assert_eq!((lease.holder.as_str(), lease.fencing_token), ("a", token));
    let again = call!(c.claim("a", TTL)).unwrap();
    assert!(
        again.granted,
        "the holder's retry must be granted: {again:?}"
    );
    assert_eq!(again.lease.unwrap().fencing_token, token);
}

async fn a_re_claim_does_not_extend_the_lease(b: Arc<dyn Backend>) {
    let c = (b.cluster(3).await)();
    claim_as_manager(&*c, "a", Duration::from_secs(4)).await;
    // let some of the lease pass, observed through status
    until(
        "the lease to run below 3.5 s",
        Duration::from_secs(10),
        || async {
            call!(c.status())
                .unwrap()
                .lease
                .is_some_and(|l| l.expires_in_ms < 3_500)
        },
    )
    .await;
    let r = call!(c.claim("a", Duration::from_secs(4))).unwrap();
    assert!(r.granted);
    let left = r.lease.unwrap().expires_in_ms;
    assert!(left < 3_500, "a re-claim extended the lease to {left} ms");
}

async fn a_worker_may_not_claim(b: Arc<dyn Backend>) {
    let c = (b.cluster(1).await)();
    assert_eq!(
        register(&*c, "w", RequestedRole::Worker).await,
        Role::Worker
    );
    assert_eq!(
        code(call!(c.claim("w", TTL)).unwrap_err()),
        Code::NotAManager
    );
    assert_eq!(call!(c.status()).unwrap().phase, Phase::Open);
}

async fn ttl_is_clamped_to_the_bounds(b: Arc<dyn Backend>) {
    let c = (b.cluster(3).await)();
    register(&*c, "a", RequestedRole::Manager).await;
    let r = call!(c.claim("a", Duration::from_secs(3_600))).unwrap();
    let left = r.lease.unwrap().expires_in_ms;
    assert!(
        left <= MAX_LEASE_TTL_MS && left > MAX_LEASE_TTL_MS - 10_000,
        "an hour-long claim got {left} ms; the bound is {MAX_LEASE_TTL_MS}"
    );
    let c = (b.cluster(3).await)();
    register(&*c, "a", RequestedRole::Manager).await;
    let r = call!(c.claim("a", Duration::from_millis(1))).unwrap();
    assert!(r.granted);
    let left = r.lease.unwrap().expires_in_ms;
    assert!(
        left > 500 && left <= 1_000,
        "a 1 ms claim got {left} ms (min 1 s)"
    );
}

// ---------------------------------------------------------------------------------------------
// Publish

async fn publish_is_fenced(b: Arc<dyn Backend>) {
    let c = (b.cluster(3).await)();
    // no lease at all
    register(&*c, "a", RequestedRole::Manager).await;
    assert_eq!(
        code(call!(c.publish(&pubreq("a", 1))).unwrap_err()),
        Code::NotLeaseHolder
    );
    let r = call!(c.claim("a", TTL)).unwrap();
    let token = r.lease.expect("granted").fencing_token;
    register(&*c, "b", RequestedRole::Manager).await;
    assert_eq!(
        code(call!(c.publish(&pubreq("b", token))).unwrap_err()),
        Code::NotLeaseHolder
    );
    assert_eq!(
        code(call!(c.publish(&pubreq("a", token + 1))).unwrap_err()),
        Code::StaleFencingToken
    );
    assert_eq!(call!(c.status()).unwrap().phase, Phase::Claimed);
    let r = call!(c.publish(&pubreq("a", token))).unwrap();
    assert_eq!(r.phase, Phase::Formed);
    let s = call!(c.status()).unwrap();
    assert_eq!(s.phase, Phase::Formed);
    assert!(
        s.lease.is_none(),
        "a formed cluster shows no init lease: {:?}",
        s.lease
    );
    assert_eq!(s.swarm_id.as_deref(), Some("swarmid0123456789abcdefgh"));
}

async fn formed_cluster_refuses_claims_and_foreign_publishes(b: Arc<dyn Backend>) {
    let c = (b.cluster(3).await)();
    let token = form(&*c, "a").await;
    register(&*c, "b", RequestedRole::Manager).await;
    for who in ["a", "b"] {
        let r = call!(c.claim(who, TTL)).unwrap();
        assert!(!r.granted, "{who}'s claim on a formed cluster was granted");
        assert_eq!(r.phase, Phase::Formed);
    }
    let mut other = pubreq("a", token);
    other.swarm_id = "anotherswarm".into();
    assert_eq!(
        code(call!(c.publish(&other)).unwrap_err()),
        Code::AlreadyFormed
    );
    assert_eq!(
        code(call!(c.publish(&pubreq("b", token))).unwrap_err()),
        Code::NotLeaseHolder
    );
    assert_eq!(
        code(call!(c.publish(&pubreq("a", token + 5))).unwrap_err()),
        Code::StaleFencingToken
    );
    let s = call!(c.status()).unwrap();
    assert_eq!(s.swarm_id.as_deref(), Some("swarmid0123456789abcdefgh"));
}

async fn identical_re_publish_is_accepted(b: Arc<dyn Backend>) {
    let c = (b.cluster(3).await)();
    let token = form(&*c, "a").await;
    let before = call!(c.status()).unwrap();
    let r = call!(c.publish(&pubreq("a", token))).unwrap();
    assert_eq!(r.phase, Phase::Formed);
    let after = call!(c.status()).unwrap();
    assert_eq!(
        before.formed_at_ms, after.formed_at_ms,
        "a retry re-formed the cluster"
    );
}

async fn ca_digest_is_stored_canonical(b: Arc<dyn Backend>) {
    let c = (b.cluster(3).await)();
    let token = claim_as_manager(&*c, "a", TTL).await;
    let mut p = pubreq("a", token);
    p.ca_digest = p.ca_digest.to_uppercase().replacen("SHA256:", "sha256:", 1);
    call!(c.publish(&p)).unwrap();
    let s = call!(c.status()).unwrap();
    assert_eq!(s.ca_digest.as_deref(), Some(digest(0xab).as_str()));
    // the same digest spelled differently is the same publish
    call!(c.publish(&pubreq("a", token))).expect("identical re-publish");
}

// ---------------------------------------------------------------------------------------------
// Lease expiry and renewal

async fn expired_lease_is_taken_over_with_a_larger_token(b: Arc<dyn Backend>) {
    let c = (b.cluster(3).await)();
    let old = claim_as_manager(&*c, "a", Duration::from_secs(1)).await;
    register(&*c, "b", RequestedRole::Manager).await;
    until_lease_expired(&*c).await;
    let r = call!(c.claim("b", TTL)).unwrap();
    assert!(r.granted, "b could not take over an expired lease: {r:?}");
    let new = r.lease.unwrap().fencing_token;
    assert!(new > old, "takeover token {new} not larger than {old}");
    // the fenced-out holder can neither publish nor renew
    assert_eq!(
        code(call!(c.publish(&pubreq("a", old))).unwrap_err()),
        Code::StaleFencingToken
    );
    assert_eq!(
        code(call!(c.renew("a", old, TTL)).unwrap_err()),
        Code::LeaseLost
    );
    // the same holder claiming after its own expiry gets a new token too
    let c2 = (b.cluster(3).await)();
    let t1 = claim_as_manager(&*c2, "a", Duration::from_secs(1)).await;
    until_lease_expired(&*c2).await;
    let t2 = call!(c2.claim("a", TTL))
        .unwrap()
        .lease
        .unwrap()
        .fencing_token;
    assert!(t2 > t1);
    assert_eq!(
        code(call!(c2.publish(&pubreq("a", t1))).unwrap_err()),
        Code::StaleFencingToken
    );
}

async fn renew_and_publish_after_expiry_without_takeover(b: Arc<dyn Backend>) {
    let c = (b.cluster(3).await)();
    let token = claim_as_manager(&*c, "a", Duration::from_secs(1)).await;
    until_lease_expired(&*c).await;
    // nobody took over: the token is still the newest, renewal is granted
    let r = call!(c.renew("a", token, Duration::from_secs(20))).unwrap();
    assert!(
        r.granted,
        "renewal after expiry without takeover refused: {r:?}"
    );
    let lease = r.lease.expect("renewed lease");
    assert_eq!(lease.fencing_token, token);
    assert!(lease.expires_in_ms > 10_000);
    // and publish after an expiry without takeover is accepted
    let c2 = (b.cluster(3).await)();
    let token = claim_as_manager(&*c2, "a", Duration::from_secs(1)).await;
    until_lease_expired(&*c2).await;
    call!(c2.publish(&pubreq("a", token))).expect("publish after expiry without takeover");
    assert_eq!(call!(c2.status()).unwrap().phase, Phase::Formed);
}

async fn renew_extends_only_in_the_second_half(b: Arc<dyn Backend>) {
    let c = (b.cluster(3).await)();
    let token = claim_as_manager(&*c, "a", Duration::from_secs(8)).await;
    // a quarter of the lease used: a renewal now must not extend it (2 s of margin
    // before the renewal falls due, for a loaded machine)
    until(
        "a quarter of the lease to pass",
        Duration::from_secs(10),
        || async {
            call!(c.status())
                .unwrap()
                .lease
                .is_none_or(|l| l.expires_in_ms <= 6_000)
        },
    )
    .await;
    let r = call!(c.renew("a", token, Duration::from_secs(8))).unwrap();
    assert!(r.granted);
    let first = r.lease.unwrap().expires_in_ms;
    assert!(
        first <= 6_000,
        "an early renewal extended the lease ({first} ms)"
    );
    until(
        "half of the lease to pass",
        Duration::from_secs(10),
        || async {
            call!(c.status())
                .unwrap()
                .lease
                .is_none_or(|l| l.expires_in_ms <= 3_800)
        },
    )
    .await;
    let r = call!(c.renew("a", token, Duration::from_secs(8))).unwrap();
    assert!(r.granted);
    let extended = r.lease.unwrap().expires_in_ms;
    assert!(
        extended > 6_000,
        "a due renewal did not extend ({extended} ms)"
    );
    // someone else's or an old token's renewal is lease_lost
    register(&*c, "b", RequestedRole::Manager).await;
    assert_eq!(
        code(call!(c.renew("b", token, TTL)).unwrap_err()),
        Code::LeaseLost
    );
    assert_eq!(
        code(call!(c.renew("a", token + 1, TTL)).unwrap_err()),
        Code::LeaseLost
    );
    let fresh = (b.cluster(3).await)();
    register(&*fresh, "a", RequestedRole::Manager).await;
    assert_eq!(
        code(call!(fresh.renew("a", 1, TTL)).unwrap_err()),
        Code::LeaseLost
    );
}

async fn renew_once_formed_is_lease_lost(b: Arc<dyn Backend>) {
    let c = (b.cluster(3).await)();
    let token = form(&*c, "a").await;
    assert_eq!(
        code(call!(c.renew("a", token, TTL)).unwrap_err()),
        Code::LeaseLost
    );
}

// ---------------------------------------------------------------------------------------------
// Join and status

async fn join_gives_only_the_role_token(b: Arc<dyn Backend>) {
    let c = (b.cluster(1).await)();
    register(&*c, "w", RequestedRole::Worker).await;
    let before = call!(c.wait_join("w", Duration::ZERO)).unwrap();
    assert!(before.join.is_none());
    assert_eq!(before.phase, Phase::Open);
    form(&*c, "m").await;
    let m = call!(c.wait_join("m", Duration::ZERO))
        .unwrap()
        .join
        .expect("formed");
    assert_eq!(
        (m.role, m.token.expose()),
        (Role::Manager, "SWMTKN-1-conformance-manager")
    );
    let w = call!(c.wait_join("w", Duration::ZERO))
        .unwrap()
        .join
        .expect("formed");
    assert_eq!(
        (w.role, w.token.expose()),
        (Role::Worker, "SWMTKN-1-conformance-worker")
    );
    assert_eq!(w.manager_addrs, ["198.18.0.10:2377"]);
    assert_eq!(w.ca_digest, digest(0xab));
}

async fn join_of_an_unregistered_node_is_refused(b: Arc<dyn Backend>) {
    let c = (b.cluster(3).await)();
    form(&*c, "m").await;
    let e = call!(c.wait_join("stranger", Duration::ZERO)).unwrap_err();
    assert_eq!(code(e), Code::NodeNotRegistered);
}

async fn wait_join_wakes_on_publish(b: Arc<dyn Backend>) {
    let clients = b.cluster(3).await;
    let c = clients();
    register(&*c, "w", RequestedRole::Worker).await;
    let token = claim_as_manager(&*c, "m", TTL).await;
    let waiter = clients();
    hand_over(&*c, &*waiter, "w");
    let wait = tokio::spawn(async move {
        let r = call!(waiter.wait_join("w", Duration::from_secs(20))).unwrap();
        (r, Instant::now())
    });
    park_delay().await;
    assert!(!wait.is_finished(), "wait_join returned before the publish");
    call!(c.publish(&pubreq("m", token))).unwrap();
    let published = Instant::now();
    let (r, answered) = tokio::time::timeout(Duration::from_secs(15), wait)
        .await
        .expect("wait_join did not wake within 15 s of the publish")
        .unwrap();
    assert!(r.join.is_some(), "woke without join info: {r:?}");
    eprintln!(
        "  wait_join answered {} ms after the publish",
        answered.saturating_duration_since(published).as_millis()
    );
}

async fn status_shows_no_secret(b: Arc<dyn Backend>) {
    let c = (b.cluster(3).await)();
    register(&*c, "w", RequestedRole::Worker).await;
    form(&*c, "m").await;
    let s = call!(c.status()).unwrap();
    let json = serde_json::to_string(&s).unwrap();
    assert!(
        !json.contains("SWMTKN"),
        "status leaks a join token: {json}"
    );
    assert_eq!(s.nodes.len(), 2);
    assert!(s.formed_at_ms.is_some());
    assert_eq!(s.manager_addrs, ["198.18.0.10:2377"]);
}

// ---------------------------------------------------------------------------------------------
// Reset

fn reset_req(swarm_id: &str) -> ResetRequest {
    ResetRequest {
        node_id: "operator-node".into(),
        swarm_id: swarm_id.into(),
        reason: "all managers lost".into(),
    }
}

async fn reset_is_compare_and_set_on_the_swarm_id(b: Arc<dyn Backend>) {
    let k = b.cluster(3).await;
    let op = k.operator.as_ref();
    let c = k();
    // not formed: nothing to reset
    assert_eq!(
        code(call!(c.reset(&reset_req("swarmid0123456789abcdefgh"), op)).unwrap_err()),
        Code::SwarmMismatch
    );
    form(&*c, "a").await;
    assert_eq!(
        code(call!(c.reset(&reset_req("wrongswarm"), op)).unwrap_err()),
        Code::SwarmMismatch
    );
    assert_eq!(call!(c.status()).unwrap().phase, Phase::Formed);
    let s = call!(c.reset(&reset_req("swarmid0123456789abcdefgh"), op)).unwrap();
    assert_eq!(s.phase, Phase::Open);
    assert_eq!(s.resets, 1);
    // the same reset again finds nothing to reset
    assert_eq!(
        code(call!(c.reset(&reset_req("swarmid0123456789abcdefgh"), op)).unwrap_err()),
        Code::SwarmMismatch
    );
}

async fn reset_clears_registrations_and_fencing_keeps_counting(b: Arc<dyn Backend>) {
    let k = b.cluster(1).await;
    let c = k();
    let first = form(&*c, "a").await;
    register(&*c, "w", RequestedRole::Auto).await;
    call!(c.reset(&reset_req("swarmid0123456789abcdefgh"), k.operator.as_ref())).unwrap();
    let s = call!(c.status()).unwrap();
    assert!(
        s.nodes.is_empty(),
        "registrations survived the reset: {:?}",
        s.nodes
    );
    assert!(s.swarm_id.is_none() && s.lease.is_none());
    // roles are assigned again: the old worker may now become the one manager
    assert_eq!(register(&*c, "w", RequestedRole::Auto).await, Role::Manager);
    let r = call!(c.claim("w", TTL)).unwrap();
    assert!(r.granted);
    let token = r.lease.unwrap().fencing_token;
    assert!(
        token > first,
        "fencing token {token} reused after reset (had {first})"
    );
    // the old publisher (registered again: a worker now) is fenced out of the new formation
    register(&*c, "a", RequestedRole::Auto).await;
    assert_eq!(
        code(call!(c.publish(&pubreq("a", first))).unwrap_err()),
        Code::StaleFencingToken
    );
}

async fn reset_reason_is_bounded(b: Arc<dyn Backend>) {
    let k = b.cluster(3).await;
    let op = k.operator.as_ref();
    let c = k();
    form(&*c, "a").await;
    let mut req = reset_req("swarmid0123456789abcdefgh");
    req.reason = "x".repeat(501);
    assert_eq!(
        code(call!(c.reset(&req, op)).unwrap_err()),
        Code::InvalidRequest
    );
    req.reason = "line\nbreak".into();
    assert_eq!(
        code(call!(c.reset(&req, op)).unwrap_err()),
        Code::InvalidRequest
    );
    req.reason = String::new();
    call!(c.reset(&req, op)).expect("an empty reason is fine");
}

async fn resets_are_all_counted(b: Arc<dyn Backend>) {
    let k = b.cluster(1).await;
    let c = k();
    let n = RESET_LOG as u64 + 3;
    for i in 0..n {
        let id = format!("m{i}");
        let token = claim_as_manager(&*c, &id, TTL).await;
        let mut p = pubreq(&id, token);
        p.swarm_id = format!("swarm{i}");
        call!(c.publish(&p)).unwrap();
        call!(c.reset(&reset_req(&format!("swarm{i}")), k.operator.as_ref())).unwrap();
    }
    assert_eq!(
        call!(c.status()).unwrap().resets,
        n,
        "the counter counts every reset"
    );
}

// ---------------------------------------------------------------------------------------------
// Documents

async fn documents_are_compare_and_set(b: Arc<dyn Backend>) {
    let c = (b.cluster(3).await)();
    // The keeper's report: a manager's document with any JSON body.
    register(&*c, "m", RequestedRole::Manager).await;
    let d = call!(c.get_doc("keeper", None, Duration::ZERO)).unwrap();
    assert_eq!((d.version, d.body.clone()), (0, serde_json::Value::Null));
    let body = serde_json::json!({"n": 1});
    assert_eq!(
        code(call!(c.put_doc("m", "keeper", 1, &body)).unwrap_err()),
        Code::VersionConflict
    );
    let d = call!(c.put_doc("m", "keeper", 0, &body)).unwrap();
    assert_eq!(d.version, 1);
    assert_eq!(
        code(call!(c.put_doc("m", "keeper", 0, &body)).unwrap_err()),
        Code::VersionConflict
    );
    // unrelated changes (another document, a registration) do not disturb the next write
    call!(c.put_doc("m", "rejoins", 0, &serde_json::json!({"requests": {}}))).unwrap();
    register(&*c, "n1", RequestedRole::Auto).await;
    let d = call!(c.put_doc("m", "keeper", 1, &serde_json::json!(2))).unwrap();
    assert_eq!(d.version, 2);
    let got = call!(c.get_doc("keeper", None, Duration::ZERO)).unwrap();
    assert_eq!((got.version, got.body), (2, serde_json::json!(2)));
    assert_eq!(
        code(call!(c.put_doc("m", "Bad Name", 0, &body)).unwrap_err()),
        Code::InvalidName
    );
}

async fn document_long_poll_wakes_on_write(b: Arc<dyn Backend>) {
    let clients = b.cluster(3).await;
    let c = clients();
    register(&*c, "m", RequestedRole::Manager).await;
    call!(c.put_doc("m", "drains", 0, &serde_json::json!({"requests": {}}))).unwrap();
    // already newer: answered at once
    let now = call!(c.get_doc("drains", Some(0), Duration::from_secs(20))).unwrap();
    assert_eq!(now.version, 1);
    let waiter = clients();
    let wait = tokio::spawn(async move {
        call!(waiter.get_doc("drains", Some(1), Duration::from_secs(20))).unwrap()
    });
    park_delay().await;
    assert!(
        !wait.is_finished(),
        "the long-poll returned before the write"
    );
    let drain = serde_json::json!({"requests": {"n1": {"agent_node_id": "m"}}});
    call!(c.put_doc("m", "drains", 1, &drain)).unwrap();
    let d = tokio::time::timeout(Duration::from_secs(15), wait)
        .await
        .expect("the document long-poll did not wake within 15 s of the write")
        .unwrap();
    assert_eq!((d.version, d.body), (2, drain));
}

// ---------------------------------------------------------------------------------------------
// Concurrency

async fn race_many_claimants_one_lease(b: Arc<dyn Backend>) {
    let clients = b.cluster(7).await;
    let n = 7;
    let setup = clients();
    for i in 0..n {
        assert_eq!(
            register(&*setup, &format!("c{i}"), RequestedRole::Manager).await,
            Role::Manager
        );
    }
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let c = clients();
            hand_over(&*setup, &*c, &format!("c{i}"));
            tokio::spawn(async move { (i, call!(c.claim(&format!("c{i}"), TTL)).unwrap()) })
        })
        .collect();
    let mut granted = Vec::new();
    let mut holders = std::collections::BTreeSet::new();
    for t in tasks {
        let (i, r) = t.await.unwrap();
        if r.granted {
            granted.push(i);
        }
        holders.insert(r.lease.expect("every answer names the lease").holder);
    }
    assert_eq!(granted.len(), 1, "granted to {granted:?}");
    assert_eq!(
        holders.len(),
        1,
        "answers disagree on the holder: {holders:?}"
    );
}

async fn race_registrations_never_exceed_the_target(b: Arc<dyn Backend>) {
    let clients = b.cluster(3).await;
    let tasks: Vec<_> = (0..9)
        .map(|i| {
            let c = clients();
            tokio::spawn(async move { register(&*c, &format!("r{i}"), RequestedRole::Auto).await })
        })
        .collect();
    let mut managers = 0;
    for t in tasks {
        if t.await.unwrap() == Role::Manager {
            managers += 1;
        }
    }
    assert_eq!(
        managers, 3,
        "concurrent registrations assigned {managers} managers"
    );
    // Another client reads: on Secrets Manager that read is eventually consistent (a lost
    // registration never shows up; a late one does within seconds).
    let c = clients();
    until("9 registrations", EVENTUALLY, || async {
        call!(c.status()).is_ok_and(|s| s.nodes.len() == 9)
    })
    .await;
    let s = call!(c.status()).unwrap();
    assert_eq!(s.nodes.len(), 9, "a registration was lost");
    assert_eq!(
        s.nodes.iter().filter(|n| n.role == Role::Manager).count(),
        3
    );
}

async fn race_cas_writers_lose_no_update(b: Arc<dyn Backend>) {
    let (writers, each) = (4u64, 5u64);
    let clients = b.cluster(5).await;
    let tasks: Vec<_> = (0..writers)
        .map(|i| {
            let c = clients();
            tokio::spawn(async move {
                // Each writer is a manager of its own (the keeper's report is theirs).
                let me = format!("w{i}");
                assert_eq!(
                    register(&*c, &me, RequestedRole::Manager).await,
                    Role::Manager
                );
                let mut done = 0;
                let deadline = Instant::now() + Duration::from_secs(120);
                while done < each {
                    assert!(Instant::now() < deadline, "CAS writer starved for 120 s");
                    let cur = call!(c.get_doc("keeper", None, Duration::ZERO)).unwrap();
                    let n = cur.body.as_u64().unwrap_or(0);
                    let next = serde_json::json!(n + 1);
                    match call!(c.put_doc(&me, "keeper", cur.version, &next)) {
                        Ok(_) => done += 1,
                        Err(e) => assert_eq!(code(e), Code::VersionConflict),
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let c = clients();
    until("every update visible", EVENTUALLY, || async {
        call!(c.get_doc("keeper", None, Duration::ZERO))
            .is_ok_and(|d| d.body.as_u64() == Some(writers * each))
    })
    .await;
    let d = call!(c.get_doc("keeper", None, Duration::ZERO)).unwrap();
    assert_eq!(d.body.as_u64(), Some(writers * each), "an update was lost");
    assert_eq!(d.version, writers * each);
}

async fn race_concurrent_recoveries_reset_once(b: Arc<dyn Backend>) {
    let clients = b.cluster(3).await;
    form(&*clients(), "a").await;
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let c = clients();
            let op = clients.operator.clone();
            tokio::spawn(async move {
                call!(c.reset(&reset_req("swarmid0123456789abcdefgh"), op.as_ref()))
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(code(e), Code::SwarmMismatch),
        }
    }
    assert_eq!(ok, 1, "{ok} concurrent recoveries succeeded");
    assert_eq!(call!(clients().status()).unwrap().resets, 1);
}

async fn race_duplicate_publish_forms_once(b: Arc<dyn Backend>) {
    let clients = b.cluster(3).await;
    let first = clients();
    let token = claim_as_manager(&*first, "a", TTL).await;
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let c = clients();
            hand_over(&*first, &*c, "a");
            tokio::spawn(async move { call!(c.publish(&pubreq("a", token))) })
        })
        .collect();
    for t in tasks {
        t.await
            .unwrap()
            .expect("every identical publish is accepted");
    }
    let c = clients();
    until("the formation visible", EVENTUALLY, || async {
        call!(c.status()).is_ok_and(|s| s.phase == Phase::Formed)
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Following the swarm (sync) and adoption

const SWARM: &str = "swarmid0123456789abcdefgh";

fn syncreq(swarm: &str, addrs: &[&str], managers: u32, members: &[(&str, Role)]) -> SyncRequest {
    syncreq_by("a", swarm, addrs, managers, members)
}

/// A sync by the raft leader's agent `node` (a registered manager).
fn syncreq_by(
    node: &str,
    swarm: &str,
    addrs: &[&str],
    managers: u32,
    members: &[(&str, Role)],
) -> SyncRequest {
    SyncRequest {
        node_id: node.into(),
        swarm_id: swarm.into(),
        manager_addrs: addrs.iter().map(|a| a.to_string()).collect(),
        managers,
        members: members
            .iter()
            .map(|(id, role)| Member {
                node_id: id.to_string(),
                role: *role,
            })
            .collect(),
    }
}

/// The running swarm's leader `node` adopts (the publish data of [`pubreq`], live addresses).
fn adoptreq(node: &str, swarm: &str, managers: u32) -> AdoptRequest {
    AdoptRequest {
        node_id: node.into(),
        hostname: format!("host-{node}"),
        advertise_addr: "198.18.0.10".into(),
        swarm_id: swarm.into(),
        ca_digest: digest(0xab),
        manager_addrs: vec!["198.18.0.10:2377".into(), "198.18.0.11:2377".into()],
        manager_token: Secret::new("SWMTKN-1-conformance-manager"),
        worker_token: Secret::new("SWMTKN-1-conformance-worker"),
        managers,
    }
}

async fn sync_makes_join_info_carry_the_live_managers(b: Arc<dyn Backend>) {
    use Role::{Manager as M, Worker as W};
    let clients = b.cluster(3).await;
    let c = clients();
    form(&*c, "a").await;
    for id in ["b", "c", "w"] {
        register(&*c, id, RequestedRole::Auto).await;
    }
    let first = ["198.18.0.10:2377", "198.18.0.12:2377", "198.18.0.13:2377"];
    let all = [("a", M), ("b", M), ("c", M), ("w", W)];
    let r = call!(c.sync(&syncreq(SWARM, &first, 3, &all))).unwrap();
    assert!(r.changed && r.pruned.is_empty(), "{r:?}");
    // The node that ran `swarm init` (a, the one everybody joined through) died for good; the
    // keeper promoted w. The leader's next sync:
    let live = ["198.18.0.12:2377", "198.18.0.13:2377", "198.18.0.14:2377"];
    let now = [("b", M), ("c", M), ("w", M)];
    let r = call!(c.sync(&syncreq(SWARM, &live, 3, &now))).unwrap();
    assert_eq!(r.pruned, ["a"]);
    // A node joining now (another client, as another VM) is told the live managers only.
    let late = clients();
    assert_eq!(register(&*late, "late", RequestedRole::Auto).await, W);
    let j = call!(late.wait_join("late", Duration::ZERO))
        .unwrap()
        .join
        .expect("formed");
    assert_eq!(j.manager_addrs, live);
    assert_eq!(j.swarm_id, SWARM);
    let s = call!(c.status()).unwrap();
    assert_eq!(s.manager_addrs, live);
    let w = s.nodes.iter().find(|n| n.node_id == "w").expect("w");
    assert_eq!(w.role, M, "w's registration takes its swarm role");
    assert!(w.seen_at_ms.is_some());
    // w now gets the manager token.
    let j = call!(c.wait_join("w", Duration::ZERO))
        .unwrap()
        .join
        .expect("formed");
    assert_eq!(j.token.expose(), "SWMTKN-1-conformance-manager");
    // late is seen once it joined; then the same report changes nothing.
    // (a is gone: b leads now.)
    let joined = [("b", M), ("c", M), ("w", M), ("late", W)];
    let r = call!(c.sync(&syncreq_by("b", SWARM, &live, 3, &joined))).unwrap();
    assert!(r.changed, "late was seen for the first time");
    let r = call!(c.sync(&syncreq_by("b", SWARM, &live, 3, &joined))).unwrap();
    assert!(!r.changed && r.pruned.is_empty(), "{r:?}");
}

async fn sync_drops_a_departed_node_and_frees_its_manager_slot(b: Arc<dyn Backend>) {
    use Role::{Manager as M, Worker as W};
    let c = (b.cluster(3).await)();
    form(&*c, "a").await;
    for id in ["b", "c", "d"] {
        register(&*c, id, RequestedRole::Auto).await;
    }
    let all = [("a", M), ("b", M), ("c", M), ("d", W)];
    let addrs = ["198.18.0.10:2377", "198.18.0.11:2377", "198.18.0.12:2377"];
    call!(c.sync(&syncreq(SWARM, &addrs, 3, &all))).unwrap();
    // Three managers stand: a new node is a worker.
    assert_eq!(register(&*c, "e", RequestedRole::Auto).await, W);
    // Manager c left the swarm (its VM was replaced); the leader's next sync drops it.
    let left = [("a", M), ("b", M), ("d", W), ("e", W)];
    let r = call!(c.sync(&syncreq(SWARM, &addrs[..2], 2, &left))).unwrap();
    assert_eq!(r.pruned, ["c"]);
    assert_eq!((r.manager_count, r.node_count), (2, 4));
    let s = call!(c.status()).unwrap();
    assert!(
        s.nodes.iter().all(|n| n.node_id != "c"),
        "c is still registered: {:?}",
        s.nodes
    );
    // Its replacement comes back as a manager, and gets the manager token.
    assert_eq!(register(&*c, "c2", RequestedRole::Auto).await, M);
    let j = call!(c.wait_join("c2", Duration::ZERO))
        .unwrap()
        .join
        .expect("formed");
    assert_eq!(
        (j.role, j.token.expose()),
        (M, "SWMTKN-1-conformance-manager")
    );
    assert_eq!(register(&*c, "f", RequestedRole::Auto).await, W);
    // The departed node, registering again, is a new registration (worker: the target is met).
    assert_eq!(register(&*c, "c", RequestedRole::Auto).await, W);
}

async fn sync_of_another_swarm_is_swarm_mismatch(b: Arc<dyn Backend>) {
    let c = (b.cluster(3).await)();
    let addrs = ["198.18.0.10:2377"];
    // not formed
    register(&*c, "a", RequestedRole::Auto).await;
    assert_eq!(
        code(call!(c.sync(&syncreq(SWARM, &addrs, 1, &[("a", Role::Manager)]))).unwrap_err()),
        Code::SwarmMismatch
    );
    form(&*c, "a").await;
    let before = call!(c.status()).unwrap();
    assert_eq!(
        code(
            call!(c.sync(&syncreq(
                "anotherswarm",
                &["198.18.0.99:2377"],
                1,
                &[("a", Role::Manager)]
            )))
            .unwrap_err()
        ),
        Code::SwarmMismatch
    );
    let after = call!(c.status()).unwrap();
    assert_eq!(
        before.manager_addrs, after.manager_addrs,
        "nothing was synced"
    );
    assert!(after.nodes.iter().all(|n| n.seen_at_ms.is_none()));
}

async fn sync_and_adopt_refuse_invalid_requests(b: Arc<dyn Backend>) {
    let c = (b.cluster(3).await)();
    form(&*c, "a").await;
    let ok = syncreq(SWARM, &["198.18.0.10:2377"], 1, &[("a", Role::Manager)]);
    let mut bad = Vec::new();
    let mut r = ok.clone();
    r.manager_addrs.clear();
    bad.push(r);
    let mut r = ok.clone();
    r.node_id = "has space".into();
    bad.push(r);
    let mut r = ok.clone();
    r.members[0].node_id = "".into();
    bad.push(r);
    let mut r = ok.clone();
    r.managers = 100_000;
    bad.push(r);
    for r in bad {
        assert_eq!(
            code(call!(c.sync(&r)).unwrap_err()),
            Code::InvalidRequest,
            "{r:?}"
        );
    }
    let ok = adoptreq("a", SWARM, 1);
    let mut bad = Vec::new();
    let mut r = ok.clone();
    r.ca_digest = "md5:00".into();
    bad.push(r);
    let mut r = ok.clone();
    r.manager_addrs.clear();
    bad.push(r);
    let mut r = ok.clone();
    r.worker_token = Secret::new("");
    bad.push(r);
    let mut r = ok.clone();
    r.hostname = "two words".into();
    bad.push(r);
    for r in bad {
        let e = call!(c.adopt(&r)).unwrap_err();
        assert!(
            !e.to_string().contains("SWMTKN"),
            "a token in an error: {e}"
        );
        assert_eq!(code(e), Code::InvalidRequest, "{r:?}");
    }
    // nothing of it was stored
    let s = call!(c.status()).unwrap();
    assert_eq!(s.manager_addrs, ["198.18.0.10:2377"]);
    assert_eq!(s.adoptions, 0);
}

async fn adoption_re_forms_a_wiped_cluster_under_a_larger_token(b: Arc<dyn Backend>) {
    let Operated { clients, operator } = b.operated_cluster(3).await;
    let c = clients();
    register(&*c, "b", RequestedRole::Auto).await;
    let old = form(&*c, "a").await;
    operator.wipe().await;
    // The rendezvous forgot: open, nobody registered.
    let s = call!(c.status()).unwrap();
    assert_eq!(
        (s.phase, s.nodes.len(), s.swarm_id.clone()),
        (Phase::Open, 0, None),
        "{s:?}"
    );
    // The leader's sync finds its swarm forgotten (before its registration: `swarm_mismatch`
    // is what makes it adopt) ...
    assert_eq!(
        code(
            call!(c.sync(&syncreq(
                SWARM,
                &["198.18.0.10:2377"],
                2,
                &[("a", Role::Manager)]
            )))
            .unwrap_err()
        ),
        Code::SwarmMismatch
    );
    // ... and adopts it, under a fencing token larger than any the lost state granted.
    let a = call!(c.adopt(&adoptreq("b", SWARM, 2))).unwrap();
    assert!(a.adopted, "{a:?}");
    assert_eq!(a.phase, Phase::Formed);
    assert!(
        a.fencing_token > old,
        "adopted under token {} after {old}",
        a.fencing_token
    );
    let s = call!(c.status()).unwrap();
    assert_eq!(s.phase, Phase::Formed);
    assert_eq!(s.swarm_id.as_deref(), Some(SWARM));
    assert_eq!(s.adoptions, 1);
    assert!(s.lease.is_none());
    let adopter = s.nodes.iter().find(|n| n.node_id == "b").expect("b");
    assert_eq!(adopter.role, Role::Manager);
    // A node registering afterwards (another VM) joins the adopted swarm, as the third manager.
    let late = clients();
    assert_eq!(
        register(&*late, "late", RequestedRole::Auto).await,
        Role::Manager
    );
    let j = call!(late.wait_join("late", Duration::ZERO))
        .unwrap()
        .join
        .expect("formed");
    assert_eq!(j.swarm_id, SWARM);
    assert_eq!(j.ca_digest, digest(0xab));
    assert_eq!(j.manager_addrs, ["198.18.0.10:2377", "198.18.0.11:2377"]);
    assert_eq!(j.token.expose(), "SWMTKN-1-conformance-manager");
    // It can never init: no claim is granted; the old publish's token is stale.
    let r = call!(late.claim("late", TTL)).unwrap();
    assert!(!r.granted && r.phase == Phase::Formed, "{r:?}");
    register(&*c, "a", RequestedRole::Auto).await;
    assert_eq!(
        code(call!(c.publish(&pubreq("a", old))).unwrap_err()),
        Code::StaleFencingToken
    );
    // The leader's retry changes nothing and keeps the token.
    let again = call!(c.adopt(&adoptreq("b", SWARM, 2))).unwrap();
    assert!(!again.adopted);
    assert_eq!(again.fencing_token, a.fencing_token);
    // and its sync is accepted again
    call!(c.sync(&syncreq_by(
        "b",
        SWARM,
        &["198.18.0.10:2377", "198.18.0.11:2377"],
        2,
        &[("b", Role::Manager), ("late", Role::Manager)]
    )))
    .expect("sync after the adoption");
}

async fn claims_are_refused_while_the_cluster_awaits_adoption(b: Arc<dyn Backend>) {
    let Operated { clients, operator } = b.operated_cluster(3).await;
    let c = clients();
    // The cluster of a running swarm was re-created: held until that swarm adopts it.
    operator
        .set_adoption_hold(true)
        .await
        .expect("hold an unformed cluster");
    until("the hold visible", EVENTUALLY, || async {
        call!(c.status()).is_ok_and(|s| s.awaiting_adoption)
    })
    .await;
    assert_eq!(register(&*c, "n", RequestedRole::Auto).await, Role::Manager);
    assert_eq!(
        code(call!(c.claim("n", TTL)).unwrap_err()),
        Code::AwaitingAdoption
    );
    let s = call!(c.status()).unwrap();
    assert!(s.lease.is_none() && s.phase == Phase::Open, "{s:?}");
    // Lifted (no swarm runs any more): claims are granted; held again: even the holder's
    // re-claim is refused, and nobody else is granted either.
    operator.set_adoption_hold(false).await.expect("lift");
    until("the hold lifted", EVENTUALLY, || async {
        call!(c.status()).is_ok_and(|s| !s.awaiting_adoption)
    })
    .await;
    let token = call!(c.claim("n", TTL))
        .unwrap()
        .lease
        .expect("granted")
        .fencing_token;
    operator.set_adoption_hold(true).await.expect("hold again");
    until("the hold visible again", EVENTUALLY, || async {
        call!(c.status()).is_ok_and(|s| s.awaiting_adoption)
    })
    .await;
    assert_eq!(
        code(call!(c.claim("n", TTL)).unwrap_err()),
        Code::AwaitingAdoption
    );
    // A node waiting for join info is answered by the adoption.
    register(&*c, "w", RequestedRole::Worker).await;
    let waiter = clients();
    hand_over(&*c, &*waiter, "w");
    let wait =
        tokio::spawn(async move { call!(waiter.wait_join("w", Duration::from_secs(20))).unwrap() });
    park_delay().await;
    let a = call!(c.adopt(&adoptreq("lead", SWARM, 3))).unwrap();
    assert!(a.adopted && a.fencing_token > token, "{a:?}");
    let j = tokio::time::timeout(Duration::from_secs(15), wait)
        .await
        .expect("wait_join did not wake within 15 s of the adoption")
        .unwrap()
        .join
        .expect("woken with join info");
    assert_eq!((j.swarm_id.as_str(), j.role), (SWARM, Role::Worker));
    let s = call!(c.status()).unwrap();
    assert_eq!((s.phase, s.awaiting_adoption), (Phase::Formed, false));
    // Formed: no claim, the lease granted before the adoption cannot publish, no hold.
    assert!(!call!(c.claim("lead", TTL)).unwrap().granted);
    let mut late = pubreq("n", token);
    late.swarm_id = "swarm-of-n".into();
    assert_eq!(
        code(call!(c.publish(&late)).unwrap_err()),
        Code::StaleFencingToken
    );
    // The operator's own read may lag the adoption (Secrets Manager): a hold it would find
    // already set is a no-op on that read; the formed cluster refuses it once seen.
    until(
        "the hold refused on the formed cluster",
        EVENTUALLY,
        || async {
            matches!(
                operator.set_adoption_hold(true).await,
                Err(e) if e.code() == Some(Code::AlreadyFormed)
            )
        },
    )
    .await;
}

async fn adoption_of_a_retired_swarm_is_refused(b: Arc<dyn Backend>) {
    let k = b.cluster(3).await;
    let c = k();
    form(&*c, "a").await;
    call!(c.reset(&reset_req(SWARM), k.operator.as_ref())).unwrap();
    let s = call!(c.status()).unwrap();
    assert_eq!(s.retired_swarm_ids, [SWARM]);
    assert_eq!(
        code(call!(c.adopt(&adoptreq("a", SWARM, 1))).unwrap_err()),
        Code::SwarmRetired
    );
    assert_eq!(call!(c.status()).unwrap().phase, Phase::Open);
    // The swarm formed after the recovery is another one: it may be adopted.
    let a = call!(c.adopt(&adoptreq("a", "swarmafterrecovery", 1))).unwrap();
    assert!(a.adopted);
}

async fn adoption_keeps_a_cluster_formed_with_its_swarm(b: Arc<dyn Backend>) {
    let c = (b.cluster(5).await)();
    let token = form(&*c, "a").await;
    // Formed with this swarm (a restored backup that still knows it): addresses and tokens
    // are refreshed, nothing is re-formed.
    let before = call!(c.status()).unwrap();
    register(&*c, "b", RequestedRole::Manager).await;
    let a = call!(c.adopt(&adoptreq("b", SWARM, 2))).unwrap();
    assert!(!a.adopted);
    assert_eq!(a.fencing_token, token);
    let s = call!(c.status()).unwrap();
    assert_eq!(s.formed_at_ms, before.formed_at_ms);
    assert_eq!(s.manager_addrs, ["198.18.0.10:2377", "198.18.0.11:2377"]);
    assert_eq!(s.adoptions, 0);
    // Another swarm: two swarms for one cluster; refused, nothing changed.
    assert_eq!(
        register(&*c, "x", RequestedRole::Manager).await,
        Role::Manager
    );
    assert_eq!(
        code(call!(c.adopt(&adoptreq("x", "anotherswarm", 1))).unwrap_err()),
        Code::AlreadyFormed
    );
    assert_eq!(call!(c.status()).unwrap().swarm_id.as_deref(), Some(SWARM));
}

// ---------------------------------------------------------------------------------------------
// Security (issue 14): what a holder of the join secret cannot do

/// A credential nobody was issued.
fn guess() -> Secret {
    Secret::new("0".repeat(64))
}

/// The JSON of a valid membership document with one node at `addr`.
fn membership(addr: &str) -> serde_json::Value {
    serde_json::json!({"nodes": [{
        "id": "abc123", "hostname": "node-1", "addr": addr, "role": "manager",
        "state": "ready", "availability": "active", "leader": true, "labels": {"zone": "a"}
    }]})
}

async fn security_a_node_id_is_bound_to_its_credential(b: Arc<dyn Backend>) {
    let clients = b.cluster(3).await;
    let c = clients();
    let r = call!(c.register(&reg("a", RequestedRole::Manager))).unwrap();
    let issued = r
        .credential
        .expect("a new node id is issued its credential");
    assert!(issued.expose().len() >= 32, "a short credential");
    assert_eq!(
        c.credential("a").as_ref(),
        Some(&issued),
        "the client keeps it"
    );
    // Registering again presents it; nothing new is issued.
    let again = call!(c.register(&reg("a", RequestedRole::Manager))).unwrap();
    assert!(again.credential.is_none());
    // Another client (another VM) without it cannot register the same id again ...
    let other = clients();
    if other.credential("a").is_none() {
        let e = call!(other.register(&reg("a", RequestedRole::Manager))).unwrap_err();
        assert_eq!(code(e), Code::BadNodeCredential);
    }
    // ... nor with a guessed one ...
    other.set_credential("a", guess());
    let e = call!(other.register(&reg("a", RequestedRole::Manager))).unwrap_err();
    assert_eq!(code(e), Code::BadNodeCredential);
    // ... and the registration is unchanged. Handed the real one, it acts for the node.
    other.set_credential("a", issued.clone());
    c.set_credential("a", issued);
    assert!(call!(other.claim("a", TTL)).unwrap().granted);
    let s = call!(c.status()).unwrap();
    assert_eq!(s.nodes.len(), 1);
    assert_eq!(s.nodes[0].hostname, "host-a");
}

async fn security_impersonation_is_refused(b: Arc<dyn Backend>) {
    let clients = b.cluster(3).await;
    let victim = clients();
    register(&*victim, "victim", RequestedRole::Manager).await;
    let real = victim.credential("victim").expect("issued");
    let attacker = clients();
    register(&*attacker, "attacker", RequestedRole::Manager).await;
    let own = attacker.credential("attacker").expect("issued");
    // The attacker presents a guess, then its own node's credential, for the victim's id.
    for presented in [guess(), own] {
        attacker.set_credential("victim", presented);
        let mut moved = reg("victim", RequestedRole::Manager);
        moved.advertise_addr = "198.18.0.66".into();
        for (what, e) in [
            (
                "register",
                call!(attacker.register(&moved)).map(|_| ()).unwrap_err(),
            ),
            (
                "claim",
                call!(attacker.claim("victim", TTL))
                    .map(|_| ())
                    .unwrap_err(),
            ),
            (
                "join",
                call!(attacker.wait_join("victim", Duration::ZERO))
                    .map(|_| ())
                    .unwrap_err(),
            ),
            (
                "put_doc",
                call!(attacker.put_doc("victim", "membership", 0, &membership("198.18.0.66")))
                    .map(|_| ())
                    .unwrap_err(),
            ),
        ] {
            assert_eq!(code(e), Code::BadNodeCredential, "{what} as the victim");
        }
    }
    // Nothing changed; the victim (its credential back in its client) still acts.
    victim.set_credential("victim", real);
    let s = call!(victim.status()).unwrap();
    let v = s.nodes.iter().find(|n| n.node_id == "victim").unwrap();
    assert_eq!(v.advertise_addr, "198.18.0.10");
    assert!(s.lease.is_none());
    assert_eq!(
        call!(victim.get_doc("membership", None, Duration::ZERO))
            .unwrap()
            .version,
        0
    );
    assert!(call!(victim.claim("victim", TTL)).unwrap().granted);
}

async fn security_only_a_registered_manager_claims(b: Arc<dyn Backend>) {
    let c = (b.cluster(1).await)();
    // Never registered: refused, and no lease exists afterwards.
    let e = call!(c.claim("ghost", TTL)).unwrap_err();
    assert_eq!(code(e), Code::NodeNotRegistered);
    assert!(call!(c.status()).unwrap().lease.is_none());
    // A worker (the target is met) is refused too.
    assert_eq!(register(&*c, "m", RequestedRole::Auto).await, Role::Manager);
    assert_eq!(
        register(&*c, "w", RequestedRole::Manager).await,
        Role::Worker
    );
    assert_eq!(
        code(call!(c.claim("w", TTL)).unwrap_err()),
        Code::NotAManager
    );
    let s = call!(c.status()).unwrap();
    assert!(s.lease.is_none() && s.phase == Phase::Open, "{s:?}");
    assert!(call!(c.claim("m", TTL)).unwrap().granted);
}

async fn security_a_worker_join_never_carries_the_manager_token(b: Arc<dyn Backend>) {
    let clients = b.cluster(1).await;
    let c = clients();
    form(&*c, "m").await;
    let w = clients();
    assert_eq!(
        register(&*w, "w", RequestedRole::Manager).await,
        Role::Worker
    );
    let j = call!(w.wait_join("w", Duration::ZERO))
        .unwrap()
        .join
        .expect("formed");
    assert_eq!(
        (j.role, j.token.expose()),
        (Role::Worker, "SWMTKN-1-conformance-worker")
    );
    let json = serde_json::to_string(&call!(w.wait_join("w", Duration::ZERO)).unwrap()).unwrap();
    assert!(!json.contains("conformance-manager"), "{json}");
    // Asking for the manager's join info with its own credential is impersonation.
    w.set_credential("m", w.credential("w").unwrap());
    let e = call!(w.wait_join("m", Duration::ZERO)).unwrap_err();
    assert_eq!(code(e), Code::BadNodeCredential);
}

async fn security_workers_cannot_write_manager_documents_or_others_entries(b: Arc<dyn Backend>) {
    let c = (b.cluster(1).await)();
    assert_eq!(register(&*c, "m", RequestedRole::Auto).await, Role::Manager);
    for w in ["w", "w2"] {
        assert_eq!(register(&*c, w, RequestedRole::Auto).await, Role::Worker);
    }
    // Manager documents.
    for (name, body) in [
        ("membership", membership("10.0.0.7")),
        ("keeper", serde_json::json!({"ok": true})),
    ] {
        let e = call!(c.put_doc("w", name, 0, &body)).unwrap_err();
        assert_eq!(code(e), Code::NotAManager, "a worker wrote {name}");
    }
    // A worker asks for its own drain ...
    let own =
        serde_json::json!({"requests": {"dn-w": {"agent_node_id": "w", "state": "requested"}}});
    let d = call!(c.put_doc("w", "drains", 0, &own)).unwrap();
    // ... never another node's: not adding, not removing one a manager wrote.
    let mut other = own.clone();
    other["requests"]["dn-w2"] = serde_json::json!({"agent_node_id": "w2", "state": "requested"});
    let e = call!(c.put_doc("w", "drains", d.version, &other)).unwrap_err();
    assert_eq!(code(e), Code::NotAManager);
    let mut disguised = own.clone();
    disguised["requests"]["dn-m"] = serde_json::json!({"agent_node_id": "m"});
    let e = call!(c.put_doc("w", "drains", d.version, &disguised)).unwrap_err();
    assert_eq!(code(e), Code::NotAManager);
    let d = call!(c.put_doc("m", "drains", d.version, &other)).unwrap();
    let e = call!(c.put_doc("w", "drains", d.version, &own)).unwrap_err();
    assert_eq!(
        code(e),
        Code::NotAManager,
        "a worker removed another node's drain"
    );
    // Rejoins (a rejoin makes its node a manager): only a manager asks; a worker moves the
    // state of its own request forward, and touches no other.
    for asked in ["w", "w2"] {
        let body = serde_json::json!({"requests": {asked: {"state": "requested"}}});
        let e = call!(c.put_doc("w", "rejoins", 0, &body)).unwrap_err();
        assert_eq!(
            code(e),
            Code::NotAManager,
            "a worker asked a rejoin of {asked}"
        );
    }
    let asked = serde_json::json!({"requests": {
        "w": {"state": "requested"}, "w2": {"state": "requested"}
    }});
    let d = call!(c.put_doc("m", "rejoins", 0, &asked)).unwrap();
    let mut moved = asked.clone();
    moved["requests"]["w2"]["state"] = serde_json::json!("rejoining");
    let e = call!(c.put_doc("w", "rejoins", d.version, &moved)).unwrap_err();
    assert_eq!(code(e), Code::NotAManager);
    let mut own = asked.clone();
    own["requests"]["w"]["state"] = serde_json::json!("rejoining");
    call!(c.put_doc("w", "rejoins", d.version, &own)).unwrap();
    // A manager's membership is typed: an injected address is refused, a valid one stored.
    let evil = membership("10.0.0.7; } server { listen 8081; } upstream x { server 10.0.0.8");
    let e = call!(c.put_doc("m", "membership", 0, &evil)).unwrap_err();
    assert_eq!(code(e), Code::InvalidRequest);
    let mut bad_label = membership("10.0.0.7");
    bad_label["nodes"][0]["labels"]["zone"] = serde_json::json!("a; include /etc/passwd");
    let e = call!(c.put_doc("m", "membership", 0, &bad_label)).unwrap_err();
    assert_eq!(code(e), Code::InvalidRequest);
    call!(c.put_doc("m", "membership", 0, &membership("10.0.0.7"))).unwrap();
}

async fn security_unknown_documents_do_not_exist(b: Arc<dyn Backend>) {
    let c = (b.cluster(3).await)();
    register(&*c, "m", RequestedRole::Manager).await;
    for name in ["counter", "lb", "other", "membership2"] {
        let e = call!(c.put_doc("m", name, 0, &serde_json::json!({}))).unwrap_err();
        assert_eq!(code(e), Code::InvalidName, "{name}");
    }
    // An unregistered writer is refused before anything is stored.
    let e = call!(c.put_doc("ghost", "keeper", 0, &serde_json::json!({}))).unwrap_err();
    assert_eq!(code(e), Code::NodeNotRegistered);
    assert_eq!(
        call!(c.get_doc("keeper", None, Duration::ZERO))
            .unwrap()
            .version,
        0
    );
}

async fn security_reset_needs_the_operator_credential(b: Arc<dyn Backend>) {
    let k = b.cluster(3).await;
    let Some(operator) = k.operator.clone() else {
        // Secrets Manager: whoever IAM lets write the secret is the operator; a node's
        // instance role should not have that permission (see SECURITY.md).
        eprintln!(
            "  {}: no operator credential (IAM is the boundary): skipped",
            b.name()
        );
        return;
    };
    let c = k();
    form(&*c, "a").await;
    let node = c.credential("a").expect("issued");
    for presented in [None, Some(&node), Some(&guess())] {
        let e = call!(c.reset(&reset_req(SWARM), presented)).unwrap_err();
        assert_eq!(code(e), Code::OperatorRequired);
    }
    let s = call!(c.status()).unwrap();
    assert_eq!((s.phase, s.resets), (Phase::Formed, 0));
    let s = call!(c.reset(&reset_req(SWARM), Some(&operator))).unwrap();
    assert_eq!((s.phase, s.resets), (Phase::Open, 1));
}

async fn security_token_rotation_is_the_operators_and_new_tokens_settle_it(b: Arc<dyn Backend>) {
    let k = b.cluster(3).await;
    let operator = k.operator.clone();
    let c = k();
    register(&*c, "a", RequestedRole::Manager).await;
    register(&*c, "w", RequestedRole::Worker).await;
    // Not formed: nothing to rotate.
    let e = call!(c.request_token_rotation(operator.as_ref())).unwrap_err();
    assert_eq!(code(e), Code::SwarmMismatch);
    form(&*c, "a").await;
    if operator.is_some() {
        // What a node holds cannot ask for it.
        let node = c.credential("w").expect("issued");
        for presented in [None, Some(&node), Some(&guess())] {
            let e = call!(c.request_token_rotation(presented)).unwrap_err();
            assert_eq!(code(e), Code::OperatorRequired);
        }
    }
    let s = call!(c.request_token_rotation(operator.as_ref())).unwrap();
    assert_eq!(s.token_rotation_pending, Some(1));
    // A worker cannot publish tokens; the leader's agent (a registered manager) does, and that
    // settles the rotation; joins hand out the new token.
    let mut rotated = adoptreq("a", SWARM, 1);
    rotated.manager_addrs = vec!["198.18.0.10:2377".into()];
    rotated.manager_token = Secret::new("SWMTKN-1-conformance-manager-rotated");
    rotated.worker_token = Secret::new("SWMTKN-1-conformance-worker-rotated");
    let mut evil = rotated.clone();
    evil.node_id = "w".into();
    let e = call!(c.adopt(&evil)).unwrap_err();
    assert_eq!(code(e), Code::NotAManager);
    let a = call!(c.adopt(&rotated)).unwrap();
    assert!(!a.adopted);
    let s = call!(c.status()).unwrap();
    assert_eq!((s.token_rotation_pending, s.token_rotations), (None, 1));
    let j = call!(c.wait_join("w", Duration::ZERO))
        .unwrap()
        .join
        .expect("formed");
    assert_eq!(j.token.expose(), "SWMTKN-1-conformance-worker-rotated");
}

async fn security_status_shows_no_credential(b: Arc<dyn Backend>) {
    let c = (b.cluster(3).await)();
    register(&*c, "w", RequestedRole::Worker).await;
    form(&*c, "m").await;
    let json = serde_json::to_string(&call!(c.status()).unwrap()).unwrap();
    assert!(!json.contains("credential"), "{json}");
    for id in ["w", "m"] {
        let cred = c.credential(id).expect("issued");
        assert!(
            !json.contains(cred.expose()),
            "status shows {id}'s credential"
        );
    }
}

fn labeled(id: &str, pairs: &[(&str, &str)]) -> RegisterRequest {
    RegisterRequest {
        labels: Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..reg(id, RequestedRole::Auto)
    }
}

async fn labels_of(c: &dyn Rendezvous, id: &str) -> std::collections::BTreeMap<String, String> {
    let s = call!(c.status()).unwrap();
    s.nodes
        .into_iter()
        .find(|n| n.node_id == id)
        .unwrap_or_else(|| panic!("{id} is not registered"))
        .labels
}

/// The node labels a registration asks for are stored and shown by status; a registration
/// without them keeps them; a new set replaces them; an empty set clears them; out-of-bounds
/// sets are `invalid_request` and change nothing.
async fn registration_carries_node_labels(b: Arc<dyn Backend>) {
    let c = (b.cluster(3).await)();
    call!(c.register(&labeled("a", &[("zone", "eu-1"), ("gpu", "a100 x2")]))).unwrap();
    let l = labels_of(&*c, "a").await;
    assert_eq!(l.len(), 2, "{l:?}");
    assert_eq!(l["zone"], "eu-1");
    assert_eq!(l["gpu"], "a100 x2");
    // An agent's bootstrap registration (no labels) keeps them.
    register(&*c, "a", RequestedRole::Auto).await;
    assert_eq!(labels_of(&*c, "a").await.len(), 2);
    call!(c.register(&labeled("a", &[("zone", "eu-2")]))).unwrap();
    let l = labels_of(&*c, "a").await;
    assert_eq!(l.len(), 1);
    assert_eq!(l["zone"], "eu-2");
    // Refused, with the reason; the stored set stays.
    let many: Vec<(String, String)> = (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let long = "v".repeat(257);
    for bad in [
        labeled("a", &many),
        labeled("a", &[("com.docker.evil", "1")]),
        labeled("a", &[("swarmstrap.managed-labels", "zone")]),
        labeled("a", &[("zone", "a;b")]),
        labeled("a", &[("zone", &long)]),
        labeled("a", &[("bad key", "v")]),
    ] {
        let e = call!(c.register(&bad)).unwrap_err();
        assert_eq!(code(e), Code::InvalidRequest, "{:?}", bad.labels);
    }
    assert_eq!(labels_of(&*c, "a").await["zone"], "eu-2");
    call!(c.register(&labeled("a", &[]))).unwrap();
    assert!(labels_of(&*c, "a").await.is_empty());
}

/// Only the node that registered an id can change that registration's labels: another
/// client (the join secret, no credential, or a guessed one) is `bad_node_credential`.
async fn security_only_a_node_sets_its_own_labels(b: Arc<dyn Backend>) {
    let clients = b.cluster(3).await;
    let c = clients();
    call!(c.register(&labeled("victim", &[("zone", "a")]))).unwrap();
    let other = clients();
    if other.credential("victim").is_none() {
        let e = call!(other.register(&labeled("victim", &[("zone", "evil")]))).unwrap_err();
        assert_eq!(code(e), Code::BadNodeCredential);
    }
    other.set_credential("victim", guess());
    let e = call!(other.register(&labeled("victim", &[("zone", "evil")]))).unwrap_err();
    assert_eq!(code(e), Code::BadNodeCredential);
    assert_eq!(labels_of(&*c, "victim").await["zone"], "a");
}
