//! The AWS-behaviour proxy (`aws-behaviour/proxy.py`) in front of a real moto, seen through the
//! real SDK with automatic retries off: each fault with its probability forced to 1 (or its
//! limit small) and the others off, the exact error code the SDK reports, and that the same
//! seed gives the same faults.

mod common;

use aws_sdk_secretsmanager::config::retry::RetryConfig;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::types::Tag;
use aws_sdk_secretsmanager::Client;
use common::{eventually, Moto};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use swarmstrap_secrets_manager::moto::AwsBehaviour;

const NAME: &str = "swarmstrap/proxy-test";

fn only(faults: &[&str]) -> AwsBehaviour {
    AwsBehaviour {
        seed: 7,
        ..AwsBehaviour::only(faults)
    }
}

/// An SDK client for the proxy with automatic retries off: every injected error is seen.
fn client(moto: &Moto) -> Client {
    let conf = aws_sdk_secretsmanager::config::Builder::from(&moto.sdk_config())
        .retry_config(RetryConfig::disabled())
        .build();
    Client::from_conf(conf)
}

/// "ok", the AWS error code, or what kind of failure it was when there is no code.
fn outcome<T, E: ProvideErrorMetadata, R>(r: &Result<T, SdkError<E, R>>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => match e.code() {
            Some(code) => code.to_string(),
            None => match e {
                SdkError::DispatchFailure(_) => "dispatch-failure".into(),
                SdkError::ResponseError(_) => "response-error".into(),
                SdkError::TimeoutError(_) => "timeout".into(),
                _ => "no-code".into(),
            },
        },
    }
}

fn uuid(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

async fn create(c: &Client, name: &str, token: &str, value: &str) -> String {
    let r = c
        .create_secret()
        .name(name)
        .client_request_token(token)
        .secret_string(value)
        .send()
        .await;
    outcome(&r)
}

async fn put(c: &Client, name: &str, token: &str, value: &str, pending: bool) -> String {
    let mut req = c
        .put_secret_value()
        .secret_id(name)
        .client_request_token(token)
        .secret_string(value);
    if pending {
        req = req.version_stages("SWARMSTRAP_PENDING");
    }
    outcome(&req.send().await)
}

async fn move_current(c: &Client, name: &str, to: &str, from: Option<&str>) -> String {
    let r = c
        .update_secret_version_stage()
        .secret_id(name)
        .version_stage("AWSCURRENT")
        .move_to_version_id(to)
        .set_remove_from_version_id(from.map(String::from))
        .send()
        .await;
    outcome(&r)
}

/// The version AWSCURRENT is on (a direct, fresh read from moto's side is not needed: these
/// tests run without `stale` when they call it).
async fn current(c: &Client, name: &str) -> Option<String> {
    let d = c.describe_secret().secret_id(name).send().await.unwrap();
    d.version_ids_to_stages()?
        .iter()
        .find(|(_, stages)| stages.iter().any(|s| s == "AWSCURRENT"))
        .map(|(v, _)| v.clone())
}

/// The version id GetSecretValue(AWSCURRENT) answers, `"none"` for ResourceNotFoundException.
/// (The stage must be named, as the backend does: moto answers a GetSecretValue without one
/// from the version the last PutSecretValue/CreateSecret made current, ignoring later stage
/// moves.)
async fn read_version(c: &Client, name: &str) -> String {
    let r = c
        .get_secret_value()
        .secret_id(name)
        .version_stage("AWSCURRENT")
        .send()
        .await;
    match r {
        Ok(v) => v.version_id().unwrap().to_string(),
        Err(e) if e.code() == Some("ResourceNotFoundException") => "none".into(),
        Err(e) => panic!("read: {e:?}"),
    }
}

/// One version's time as AWSCURRENT, as the test can bound it: it became current at some
/// moment after `from` (the move was sent) and stopped at some moment before `until` (the
/// move away from it was answered).
struct Current {
    id: String,
    from: Instant,
    until: Option<Instant>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_return_only_values_current_within_the_window() {
    let window = Duration::from_millis(300);
    let moto = Moto::start_with(Some(AwsBehaviour {
        stale_ms: 300,
        stale_prob: 1.0,
        ..only(&["stale"])
    }));
    let c = client(&moto);
    let t_start = Instant::now();
    let mut hist = vec![Current {
        id: "none".into(),
        from: t_start,
        until: None,
    }];
    // Every answer must name a version that was current at some moment in [start - window, end].
    let check = |hist: &[Current], id: &str, start: Instant, end: Instant| {
        let v = hist
            .iter()
            .find(|v| v.id == id)
            .unwrap_or_else(|| panic!("read {id}: never written"));
        assert!(v.from <= end, "{id} read before it was written");
        if let Some(until) = v.until {
            assert!(
                until + window >= start,
                "{id} was replaced {:?} before the read began: older than the window",
                start - until
            );
        }
    };
    assert_eq!(read_version(&c, NAME).await, "none");

    let mut n = 0u64;
    let t0 = Instant::now();
    assert_eq!(create(&c, NAME, &uuid(n), "v0").await, "ok");
    hist.last_mut().unwrap().until = Some(Instant::now());
    hist.push(Current {
        id: uuid(n),
        from: t0,
        until: None,
    });

    // Writes (put pending + stage move, as the backend does) and reads for more than four
    // windows, until a read right after a move has returned the previous version.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut previous_seen = 0;
    let mut reads = 0;
    while t_start.elapsed() < 4 * window || previous_seen == 0 {
        assert!(
            Instant::now() < deadline,
            "no read ever returned the previous value"
        );
        let prev = uuid(n);
        n += 1;
        assert_eq!(put(&c, NAME, &uuid(n), &format!("v{n}"), true).await, "ok");
        let t0 = Instant::now();
        assert_eq!(move_current(&c, NAME, &uuid(n), Some(&prev)).await, "ok");
        hist.last_mut().unwrap().until = Some(Instant::now());
        hist.push(Current {
            id: uuid(n),
            from: t0,
            until: None,
        });
        for _ in 0..3 {
            let start = Instant::now();
            let id = read_version(&c, NAME).await;
            check(&hist, &id, start, Instant::now());
            previous_seen += usize::from(id == prev);
            reads += 1;
        }
        // let time pass, so the window slides over several writes
        tokio::time::sleep(window / 4).await;
    }
    // Once a whole window has passed since the last write, only the current value comes back.
    tokio::time::sleep(window + Duration::from_millis(50)).await;
    for _ in 0..5 {
        assert_eq!(read_version(&c, NAME).await, uuid(n));
    }
    let stats = moto.proxy_stats().expect("proxy stats");
    assert!(stats.faults.stale > 0, "{stats:?}");
    assert!(reads > 0 && previous_seen > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_quota_answers_limit_exceeded() {
    let moto = Moto::start_with(Some(AwsBehaviour {
        version_quota: 5,
        ..only(&["quota"])
    }));
    let c = client(&moto);
    assert_eq!(create(&c, NAME, &uuid(0), "v0").await, "ok");
    for n in 1..5 {
        assert_eq!(put(&c, NAME, &uuid(n), "v", true).await, "ok");
    }
    assert_eq!(
        put(&c, NAME, &uuid(5), "v", true).await,
        "LimitExceededException"
    );
    // The same PutSecretValue again (an SDK retry: same token) creates no version: it passes.
    assert_eq!(put(&c, NAME, &uuid(4), "v", true).await, "ok");
    // Other writes are no versions.
    let tag = c
        .tag_resource()
        .secret_id(NAME)
        .tags(Tag::builder().key("k").value("v").build())
        .send()
        .await;
    assert_eq!(outcome(&tag), "ok");
    let stats = moto.proxy_stats().unwrap();
    assert_eq!(stats.versions_created.get(NAME), Some(&5), "{stats:?}");
    assert_eq!(stats.faults.quota, 1);
    // Resetting the counters keeps the quota window.
    assert!(moto.reset_proxy_stats());
    assert_eq!(
        put(&c, NAME, &uuid(6), "v", true).await,
        "LimitExceededException"
    );
    assert_eq!(
        moto.proxy_stats().unwrap().calls.get("PutSecretValue"),
        Some(&1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_above_the_rate_are_throttled() {
    let moto = Moto::start_with(Some(AwsBehaviour {
        write_tps: 5,
        ..only(&["throttle"])
    }));
    let c = client(&moto);
    assert_eq!(create(&c, NAME, &uuid(0), "v0").await, "ok");
    let tag = |c: Client, i: usize| async move {
        let r = c
            .tag_resource()
            .secret_id(NAME)
            .tags(Tag::builder().key("k").value(i.to_string()).build())
            .send()
            .await;
        outcome(&r)
    };
    let tasks: Vec<_> = (0..20).map(|i| tokio::spawn(tag(c.clone(), i))).collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    let throttled = outcomes
        .iter()
        .filter(|o| *o == "ThrottlingException")
        .count();
    assert!(throttled > 0, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| o == "ok" || o == "ThrottlingException"),
        "{outcomes:?}"
    );
    // Reads are never throttled.
    for _ in 0..20 {
        c.describe_secret().secret_id(NAME).send().await.unwrap();
    }
    let stats = moto.proxy_stats().unwrap();
    assert_eq!(stats.faults.throttle, throttled as u64);
    assert_eq!(stats.writes, 21);
    assert!(stats.max_writes_in_1s > 5, "{stats:?}");
    // A second later the rate is free again (this test is about time passing).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(tag(c.clone(), 99).await, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_writes_fail_for_the_client_but_are_applied() {
    let moto = Moto::start_with(Some(AwsBehaviour {
        lost_prob: 1.0,
        ..only(&["lost"])
    }));
    let c = client(&moto);
    let mut kinds = BTreeSet::new();
    let o = create(&c, NAME, &uuid(0), "v0").await;
    assert_ne!(o, "ok");
    kinds.insert(o);
    // ... yet the secret exists (reads are never lost)
    assert_eq!(current(&c, NAME).await.as_deref(), Some(uuid(0).as_str()));
    // PutSecretValue moving AWSCURRENT: the client sees a failure, the new value is current.
    let o = put(&c, NAME, &uuid(1), "v1", false).await;
    assert_ne!(o, "ok");
    kinds.insert(o);
    let v = c
        .get_secret_value()
        .secret_id(NAME)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .unwrap();
    assert_eq!(v.version_id(), Some(uuid(1).as_str()));
    assert_eq!(v.secret_string(), Some("v1"));
    for i in 0..8 {
        let r = c
            .tag_resource()
            .secret_id(NAME)
            .tags(Tag::builder().key("k").value(i.to_string()).build())
            .send()
            .await;
        kinds.insert(outcome(&r));
    }
    // Both ways of losing an answer happen: a 500 and a connection closed without an answer.
    assert!(kinds.contains("InternalServiceError"), "{kinds:?}");
    assert_eq!(kinds.len(), 2, "{kinds:?}");
    assert!(!kinds.contains("ok"), "{kinds:?}");
    let tags = c.describe_secret().secret_id(NAME).send().await.unwrap();
    assert_eq!(tags.tags().len(), 1, "the tags were applied too");
    assert_eq!(moto.proxy_stats().unwrap().faults.lost, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_stage_race_answers_the_configured_code() {
    let moto = Moto::start_with(Some(AwsBehaviour {
        stage_code: "InvalidRequestException".into(),
        ..only(&["stage"])
    }));
    let c = client(&moto);
    assert_eq!(create(&c, NAME, &uuid(0), "v0").await, "ok");
    assert_eq!(put(&c, NAME, &uuid(1), "a", true).await, "ok");
    assert_eq!(put(&c, NAME, &uuid(2), "b", true).await, "ok");
    assert_eq!(move_current(&c, NAME, &uuid(1), Some(&uuid(0))).await, "ok");
    // moto answers InvalidParameterException; the proxy, the configured code.
    assert_eq!(
        move_current(&c, NAME, &uuid(2), Some(&uuid(0))).await,
        "InvalidRequestException"
    );
    assert_eq!(current(&c, NAME).await, Some(uuid(1)));
    let stats = moto.proxy_stats().unwrap();
    assert_eq!((stats.faults.stage, stats.faults.stage_nonatomic), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_atomic_stage_moves_let_two_conditional_moves_from_one_version_succeed() {
    let moto = Moto::start_with(Some(AwsBehaviour {
        stage_nonatomic_prob: 1.0,
        stage_window_ms: 300,
        ..only(&["stage"])
    }));
    let c = client(&moto);
    assert_eq!(create(&c, NAME, &uuid(0), "v0").await, "ok");
    let mut n = 0;
    // Each round races two moves from the same version; the proxy's random wait between its
    // check and its move usually lets both checks pass first.
    let (a, b) = eventually(
        "two conditional moves from one version both succeed",
        Duration::from_secs(30),
        || {
            let c = c.clone();
            n += 2;
            let (a, b) = (uuid(n - 1), uuid(n));
            async move {
                let from = current(&c, NAME).await.unwrap();
                assert_eq!(put(&c, NAME, &a, "a", true).await, "ok");
                assert_eq!(put(&c, NAME, &b, "b", true).await, "ok");
                let (ra, rb) = tokio::join!(
                    move_current(&c, NAME, &a, Some(&from)),
                    move_current(&c, NAME, &b, Some(&from))
                );
                (ra == "ok" && rb == "ok").then_some((a, b))
            }
        },
    )
    .await;
    let now = current(&c, NAME).await.unwrap();
    assert!(now == a || now == b, "{now}");
    let stats = moto.proxy_stats().unwrap();
    assert!(stats.faults.stage_nonatomic >= 1, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_name_cannot_be_created_again_for_a_while() {
    let moto = Moto::start_with(Some(AwsBehaviour {
        deleted_ms: 500,
        ..only(&["deleted"])
    }));
    let c = client(&moto);
    assert_eq!(create(&c, NAME, &uuid(0), "v0").await, "ok");
    let r = c
        .delete_secret()
        .secret_id(NAME)
        .force_delete_without_recovery(true)
        .send()
        .await;
    assert_eq!(outcome(&r), "ok");
    let deleted = Instant::now();
    assert_eq!(
        create(&c, NAME, &uuid(1), "v1").await,
        "InvalidRequestException"
    );
    let mut token = 1;
    eventually("the name is free again", Duration::from_secs(10), || {
        token += 1;
        let (c, t) = (c.clone(), uuid(token));
        async move {
            match create(&c, NAME, &t, "v").await.as_str() {
                "ok" => Some(()),
                "InvalidRequestException" => None,
                other => panic!("{other}"),
            }
        }
    })
    .await;
    assert!(deleted.elapsed() >= Duration::from_millis(400));
    assert!(moto.proxy_stats().unwrap().faults.deleted >= 1);
}

/// One fixed request sequence through a fresh moto + proxy: what the client saw each time.
async fn run_sequence(seed: u64) -> (Vec<String>, u64, u64) {
    let moto = Moto::start_with(Some(AwsBehaviour {
        seed,
        lost_prob: 0.5,
        stale_prob: 0.5,
        stale_ms: 60_000,
        ..AwsBehaviour::only(&["lost", "stale"])
    }));
    let c = client(&moto);
    let mut seen = vec![read_version(&c, NAME).await];
    seen.push(create(&c, NAME, &uuid(0), "v0").await);
    for n in 1..=15 {
        seen.push(put(&c, NAME, &uuid(n), &format!("v{n}"), false).await);
        seen.push(read_version(&c, NAME).await);
    }
    let stats = moto.proxy_stats().unwrap();
    assert_eq!(stats.seed, seed);
    (seen, stats.faults.lost, stats.faults.stale)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_gives_the_same_faults() {
    let first = run_sequence(42).await;
    let again = run_sequence(42).await;
    assert_eq!(first, again);
    assert!(first.1 > 0 && first.2 > 0, "{first:?}");
    let other = run_sequence(43).await;
    assert_ne!(first.0, other.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_clients_at_once_pass_through_and_are_counted() {
    let moto = Moto::start_with(Some(only(&[])));
    assert_ne!(moto.endpoint, moto.moto_endpoint);
    let c = client(&moto);
    assert_eq!(create(&c, NAME, &uuid(0), "v0").await, "ok");
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let c = client(&moto);
            tokio::spawn(async move {
                for j in 0..2 {
                    let v = c.get_secret_value().secret_id(NAME).send().await;
                    assert_eq!(outcome(&v), "ok");
                    let r = c
                        .tag_resource()
                        .secret_id(NAME)
                        .tags(
                            Tag::builder()
                                .key(format!("k{i}"))
                                .value(j.to_string())
                                .build(),
                        )
                        .send()
                        .await;
                    assert_eq!(outcome(&r), "ok");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let stats = moto.proxy_stats().unwrap();
    assert_eq!(stats.calls.get("GetSecretValue"), Some(&100));
    assert_eq!(stats.calls.get("TagResource"), Some(&100));
    assert_eq!(stats.writes, 101);
    assert_eq!(stats.versions_created.get(NAME), Some(&1));
    assert_eq!(stats.faults, Default::default());
    assert!(moto.reset_proxy_stats());
    let stats = moto.proxy_stats().unwrap();
    assert!(stats.calls.is_empty() && stats.writes == 0, "{stats:?}");
    // moto itself stays reachable directly.
    let direct = aws_sdk_secretsmanager::config::Builder::from(&moto.sdk_config())
        .endpoint_url(&moto.moto_endpoint)
        .build();
    let direct = Client::from_conf(direct);
    direct
        .describe_secret()
        .secret_id(NAME)
        .send()
        .await
        .unwrap();
    assert_eq!(moto.proxy_stats().unwrap().writes, 0);
}

#[test]
fn behaviour_from_env() {
    // Only this test touches these variables in this binary.
    std::env::set_var("SWARMSTRAP_AWS_BEHAVIOUR", "stale, lost");
    std::env::set_var("SWARMSTRAP_AWS_SEED", "5");
    let b = AwsBehaviour::from_env().unwrap();
    assert_eq!(
        (b.seed, b.faults.clone()),
        (5, vec!["stale".into(), "lost".into()])
    );
    std::env::set_var("SWARMSTRAP_AWS_BEHAVIOUR", "all");
    assert_eq!(AwsBehaviour::from_env().unwrap().faults.len(), 6);
    std::env::set_var("SWARMSTRAP_AWS_BEHAVIOUR", "none");
    assert!(AwsBehaviour::from_env().unwrap().faults.is_empty());
    std::env::remove_var("SWARMSTRAP_AWS_BEHAVIOUR");
    std::env::remove_var("SWARMSTRAP_AWS_SEED");
    assert!(AwsBehaviour::from_env().is_none());
    let d = AwsBehaviour::default();
    assert_eq!(
        (
            d.stale_ms,
            d.version_quota,
            d.write_tps,
            d.deleted_ms,
            d.stage_nonatomic_prob
        ),
        (2000, 100, 50, 3000, 0.0)
    );
}
