//! Formation budgets: N nodes that start in the same instant form one cluster (one init, all
//! joined with their role's token), and the secret versions and write calls that took are
//! counted and printed. Run through the AWS-behaviour proxy (stale reads, lost answers,
//! throttling, the versions quota, odd stage-move codes, blocked deleted names) by default;
//! `SWARMSTRAP_AWS_BEHAVIOUR=none` runs them on plain moto, `SWARMSTRAP_AWS_SEED` repeats one.
//!
//! N = 5, 20 and 50 run in every `cargo test` (~45 s together).

mod common;

use common::{publish_req, reg, Moto};
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarmstrap_secrets_manager::moto::AwsBehaviour;
use swarmstrap_secrets_manager::{ApiCallCounts, SecretsManagerConfig};
use swarmstrap_wire::rendezvous::{Rendezvous, RendezvousError};
use swarmstrap_wire::{Phase, RequestedRole, Role};

const MGR: &str = "SWMTKN-1-formation-manager-token-0123456789";
const WRK: &str = "SWMTKN-1-formation-worker-token-9876543210";

fn behaviour() -> Option<AwsBehaviour> {
    match std::env::var("SWARMSTRAP_AWS_BEHAVIOUR") {
        Ok(_) => AwsBehaviour::from_env(),
        Err(_) => Some(AwsBehaviour {
            seed: std::env::var("SWARMSTRAP_AWS_SEED")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(rand_seed),
            ..AwsBehaviour::default()
        }),
    }
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish() % 1_000_000
}

/// Retry a call the way the agent does: transient errors again, with backoff, until a
/// deadline.
async fn retrying<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RendezvousError>>,
{
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut backoff = swarmstrap_secrets_manager::backoff::cas_backoff();
    loop {
        match f().await {
            Ok(t) => return t,
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                eprintln!("{what}: {e} (retrying)");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

async fn versions(moto: &Moto, name: &str) -> usize {
    let mut n = 0;
    let mut next: Option<String> = None;
    loop {
        let out = match moto
            .client()
            .list_secret_version_ids()
            .secret_id(name)
            .include_deprecated(true)
            .max_results(100)
            .set_next_token(next.take())
            .send()
            .await
        {
            Ok(o) => o,
            Err(_) => return 0,
        };
        n += out.versions().len();
        match out.next_token() {
            Some(t) if !t.is_empty() => next = Some(t.to_string()),
            _ => return n,
        }
    }
}

async fn form(n: usize) {
    let moto = Arc::new(Moto::start_with(behaviour()));
    let cluster = format!("form{n}");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let moto = moto.clone();
        let cluster = cluster.clone();
        tasks.push(tokio::spawn(async move {
            // The production setting: registrations spread their first write.
            let backend = moto.backend_with(SecretsManagerConfig::new(&cluster, 3));
            let rv: &dyn Rendezvous = &backend;
            let id = format!("node-{i:02}");
            let req = reg(&id, RequestedRole::Auto);
            let r = retrying(&format!("{id} register"), || rv.register(&req)).await;
            let mut granted = false;
            if r.role == Role::Manager {
                // Claim until granted, or someone else holds or formed it.
                let c = retrying(&format!("{id} claim"), || {
                    rv.claim(&id, Duration::from_secs(60))
                })
                .await;
                if c.granted {
                    granted = true;
                    let token = c.lease.expect("granted").fencing_token;
                    let req = publish_req(&id, token, MGR, WRK);
                    retrying(&format!("{id} publish"), || rv.publish(&req)).await;
                }
            }
            let join = loop {
                let j = retrying(&format!("{id} join"), || {
                    rv.wait_join(&id, Duration::from_secs(30))
                })
                .await;
                if let Some(j) = j.join {
                    break j;
                }
                assert_ne!(j.phase, Phase::Formed, "{id}: formed without join data");
            };
            assert_eq!(join.role, r.role);
            let want = if r.role == Role::Manager { MGR } else { WRK };
            assert_eq!(join.token.expose(), want, "{id} got the wrong token");
            (granted, r.role, backend.api_calls())
        }));
    }
    let mut winners = 0;
    let mut managers = 0;
    let mut total = ApiCallCounts::default();
    for t in tasks {
        let (granted, role, c) = t.await.unwrap();
        winners += usize::from(granted);
        managers += usize::from(role == Role::Manager);
        total.get_secret_value += c.get_secret_value;
        total.create_secret += c.create_secret;
        total.put_secret_value += c.put_secret_value;
        total.update_secret_version_stage += c.update_secret_version_stage;
        total.other += c.other;
    }
    let took = started.elapsed();
    let shared = versions(&moto, &format!("swarmstrap/{cluster}")).await;
    let mgr = versions(&moto, &format!("swarmstrap/{cluster}/managers")).await;
    let stats = moto.proxy_stats();
    eprintln!(
        "FORMATION N={n}: {:.1} s, one init: {}, managers {managers}, versions {} (shared {shared} + managers' {mgr}; budget N+5 = {}), write calls {}, reads {}, max write calls in 1 s: {}, faults {:?}, seed {:?}, calls {total:?}",
        took.as_secs_f64(),
        winners == 1,
        shared + mgr,
        n + 5,
        total.writes(),
        total.reads(),
        stats.as_ref().map_or("-".to_string(), |s| format!("{} {:?}", s.max_writes_in_1s, s.peak_window_ops)),
        stats.as_ref().map(|s| s.faults.clone()),
        stats.as_ref().map(|s| s.seed),
    );
    assert_eq!(winners, 1, "exactly one init");
    assert_eq!(managers, 3.min(n));
    assert!(
        shared + mgr <= n + 5,
        "{} versions for {n} nodes",
        shared + mgr
    );
    if let Some(s) = stats {
        // The target is < 25 write calls in any second (half the account's ~50 TPS write
        // budget); measured 19-22 at N = 50 over many seeds. The bound here has a margin so
        // a rare herd does not fail CI; the figure is printed above.
        assert!(
            s.max_writes_in_1s < 30,
            "{} write calls within one second",
            s.max_writes_in_1s
        );
        assert_eq!(s.faults.quota, 0, "the versions quota was hit");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_form_within_budget() {
    form(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_nodes_form_within_budget() {
    form(20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_nodes_form_within_budget() {
    form(50).await;
}
