//! The /v1 API over real TCP + TLS: a server from `server::run` on 127.0.0.1:0 with a
//! self-signed certificate, and a reqwest client pinning it.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};

#[tokio::test]
async fn pinned_client_connects_and_wrong_pin_is_refused() {
    let srv = TestServer::start().await;
    let (s, body) = srv.get("/healthz").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, r#"{"status":"ok"}"#);

    let wrong = format!("sha256:{}", "00".repeat(32));
    assert_ne!(wrong, srv.fingerprint);
    let err = pinned_client(&wrong)
        .get(format!("{}/healthz", srv.base))
        .send()
        .await
        .expect_err("a client with the wrong pin must not connect");
    assert!(
        err.is_connect() || err.is_request(),
        "unexpected error kind: {err:?}"
    );

    // The server is fine afterwards.
    assert_eq!(srv.get("/healthz").await.0, StatusCode::OK);
    assert_eq!(srv.get("/readyz").await.0, StatusCode::OK);
    srv.stop().await;
}

#[tokio::test]
async fn hundred_concurrent_claimants_get_exactly_one_lease() {
    let srv = TestServer::start().await;
    let api = srv.create_cluster("race", 7).await;
    // A hundred nodes register and claim at once: the seven managers race for the lease, the
    // workers are refused (only a registered manager claims).
    let mut tasks = vec![];
    for i in 0..100 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let node = format!("node-{i}");
            let (s, b) = api.claim(&node, 30_000).await;
            (node, s, b)
        }));
    }
    let mut granted = vec![];
    let mut holders = HashSet::new();
    let mut tokens = HashSet::new();
    let mut answered = 0;
    for t in tasks {
        let (node, s, b) = t.await.unwrap();
        if s == StatusCode::CONFLICT && b["error"] == "not_a_manager" {
            continue;
        }
        assert_eq!(s, StatusCode::OK, "claim {node}: {b}");
        answered += 1;
        let lease = &b["lease"];
        holders.insert(lease["holder"].as_str().unwrap().to_string());
        tokens.insert(lease["fencing_token"].as_u64().unwrap());
        assert_eq!(b["phase"], "claimed");
        if b["granted"] == true {
            assert_eq!(lease["holder"], node.as_str());
            granted.push(node);
        }
    }
    assert_eq!(
        granted.len(),
        1,
        "exactly one claimant is granted: {granted:?}"
    );
    assert_eq!(
        holders.len(),
        1,
        "everyone is told the same holder: {holders:?}"
    );
    assert_eq!(
        tokens.len(),
        1,
        "everyone is told the same token: {tokens:?}"
    );
    assert!(holders.contains(&granted[0]));
    assert_eq!(
        answered, 7,
        "every manager is answered, every worker refused"
    );

    // The holder's retry is granted again with the same token (idempotent).
    let (_, again) = api.claim(&granted[0], 30_000).await;
    assert_eq!(again["granted"], true);
    assert_eq!(
        again["lease"]["fencing_token"].as_u64(),
        tokens.iter().next().copied()
    );
    srv.stop().await;
}

#[tokio::test]
async fn publish_is_fenced_and_formed_cluster_refuses_claims() {
    let srv = TestServer::start().await;
    let api = srv.create_cluster("fence", 3).await;
    api.register("a", "auto").await;
    api.register("b", "auto").await;
    let (_, c) = api.claim("a", 30_000).await;
    assert_eq!(c["granted"], true);
    let token = c["lease"]["fencing_token"].as_u64().unwrap();

    // A node that never held the lease, even with the current token.
    let (s, b) = api.publish("b", token).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(b["error"], "not_lease_holder", "{b}");
    // The holder with a wrong (stale) token.
    let (s, b) = api.publish("a", token - 1).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(b["error"], "stale_fencing_token", "{b}");
    // Renew by a non-holder.
    let (s, b) = api
        .call(
            Method::POST,
            "/claim/renew",
            Some(json!({"node_id": "b", "fencing_token": token, "ttl_ms": 5000})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(b["error"], "lease_lost");
    // Renew by the holder.
    let (s, b) = api
        .call(
            Method::POST,
            "/claim/renew",
            Some(json!({"node_id": "a", "fencing_token": token, "ttl_ms": 60000})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["granted"], true);
    assert!(b["lease"]["expires_in_ms"].as_u64().unwrap() > 30_000);

    // The holder publishes; an identical retry is fine; different data is not.
    let (s, b) = api.publish("a", token).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["phase"], "formed");
    let (s, _) = api.publish("a", token).await;
    assert_eq!(s, StatusCode::OK, "identical re-publish is idempotent");
    let mut different = publish_body("a", token);
    different["swarm_id"] = json!("other-swarm");
    let (s, b) = api.call(Method::POST, "/publish", Some(different)).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(b["error"], "already_formed");

    // Formed: there is no lease to renew.
    let (s, b) = api
        .call(
            Method::POST,
            "/claim/renew",
            Some(json!({"node_id": "a", "fencing_token": token, "ttl_ms": 60000})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_eq!(b["error"], "lease_lost");

    // Formed: no claim is ever granted again.
    for node in ["a", "b", "c"] {
        let (s, b) = api.claim(node, 30_000).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(b["granted"], false, "{b}");
        assert_eq!(b["phase"], "formed");
    }

    // Status: formed, no secrets.
    let st = api.status().await;
    assert_eq!(st["phase"], "formed");
    assert_eq!(st["swarm_id"], "swarm-abc");
    let text = st.to_string();
    assert!(!text.contains(MANAGER_TOKEN) && !text.contains(WORKER_TOKEN));
    assert!(!text.contains(&api.secret));
    srv.stop().await;
}

#[tokio::test]
async fn expired_unpublished_lease_is_taken_over() {
    let srv = TestServer::start().await;
    let api = srv.create_cluster("takeover", 3).await;
    let (_, first) = api.claim("slow", 1).await; // clamped up to the 1 s minimum
    assert_eq!(first["granted"], true);
    let old = first["lease"]["fencing_token"].as_u64().unwrap();
    assert!(first["lease"]["expires_in_ms"].as_u64().unwrap() <= 1000);

    // Wait for the expiry by polling the claim itself, with a deadline.
    let taken = wait_for(
        "the lease to expire and be taken over",
        Duration::from_secs(10),
        || {
            let api = api.clone();
            async move {
                let (_, b) = api.claim("fast", 30_000).await;
                (b["granted"] == true).then_some(b)
            }
        },
    )
    .await;
    let new = taken["lease"]["fencing_token"].as_u64().unwrap();
    assert!(
        new > old,
        "a takeover gets a new, larger fencing token ({new} > {old})"
    );

    // The old holder is fenced off.
    let (s, b) = api.publish("slow", old).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(b["error"], "stale_fencing_token");
    let (s, b) = api
        .call(
            Method::POST,
            "/claim/renew",
            Some(json!({"node_id": "slow", "fencing_token": old, "ttl_ms": 5000})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(b["error"], "lease_lost");
    // The new holder publishes.
    let (s, _) = api.publish("fast", new).await;
    assert_eq!(s, StatusCode::OK);
    srv.stop().await;
}

/// Expiry only opens the lease to takeover (wire/src/rules.rs): while nobody claimed after it
/// ran out, the holder's token is still the newest, so it may renew and publish.
#[tokio::test]
async fn lease_that_ran_out_unclaimed_still_renews_and_publishes() {
    let srv = TestServer::start().await;
    let late = srv.create_cluster("late", 1).await;
    let slow = srv.create_cluster("slow", 1).await;
    let (_, c) = late.claim("a", 1000).await;
    let late_token = c["lease"]["fencing_token"].as_u64().unwrap();
    let (_, c) = slow.claim("a", 1000).await;
    let slow_token = c["lease"]["fencing_token"].as_u64().unwrap();
    // Wait (polling the status) until both leases have run out, nobody took them over.
    for api in [&late, &slow] {
        wait_for("the lease to expire", Duration::from_secs(10), || {
            let api = api.clone();
            async move { (api.status().await["phase"] == "open").then_some(()) }
        })
        .await;
    }
    // Publish under the run-out lease: accepted, formed.
    let (s, b) = late.publish("a", late_token).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(late.status().await["phase"], "formed");
    // Renew under the run-out lease: granted again, same token; then publish.
    let (s, b) = slow
        .call(
            Method::POST,
            "/claim/renew",
            Some(json!({"node_id": "a", "fencing_token": slow_token, "ttl_ms": 30_000})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["granted"], true);
    assert_eq!(b["phase"], "claimed");
    assert_eq!(b["lease"]["fencing_token"].as_u64(), Some(slow_token));
    assert!(
        b["lease"]["expires_in_ms"].as_u64().unwrap() > 15_000,
        "{b}"
    );
    assert_eq!(slow.publish("a", slow_token).await.0, StatusCode::OK);
    srv.stop().await;
}

/// Lease bounds and writes (wire/src/rules.rs): the ttl is clamped to at most 300 s, a
/// holder's re-claim does not extend the lease, and a renewal extends it only once at most
/// half of the ttl is left (before that it answers the lease as it is).
#[tokio::test]
async fn lease_ttl_is_bounded_and_only_a_due_renewal_extends_it() {
    let srv = TestServer::start().await;
    let api = srv.create_cluster("ttl", 3).await;
    let expires = |b: &Value| b["lease"]["expires_in_ms"].as_u64().unwrap();
    let renew = |ttl: u64, token: u64| {
        let api = api.clone();
        async move {
            let (s, b) = api
                .call(
                    Method::POST,
                    "/claim/renew",
                    Some(json!({"node_id": "a", "fencing_token": token, "ttl_ms": ttl})),
                )
                .await;
            assert_eq!(s, StatusCode::OK, "{b}");
            assert_eq!(b["granted"], true, "{b}");
            b
        }
    };

    let (_, c) = api.claim("a", 3_600_000).await;
    assert_eq!(c["granted"], true);
    let token = c["lease"]["fencing_token"].as_u64().unwrap();
    let first = expires(&c);
    assert!(
        first <= 300_000 && first > 290_000,
        "an hour is clamped to 300 s: {c}"
    );
    // More than half of the ttl left: the answer is the lease as it is.
    let b = renew(300_000, token).await;
    assert!(expires(&b) <= first, "not extended: {b}");

    let other = srv.create_cluster("ttl2", 3).await;
    let (_, c) = other.claim("a", 60_000).await;
    let token = c["lease"]["fencing_token"].as_u64().unwrap();
    let first = expires(&c);
    // The holder's re-claim with a longer ttl is granted, but not extended.
    let (_, again) = other.claim("a", 300_000).await;
    assert_eq!(again["granted"], true);
    assert_eq!(again["lease"]["fencing_token"].as_u64(), Some(token));
    assert!(
        expires(&again) <= first,
        "a re-claim does not extend: {again}"
    );
    // A renewal with a ttl of which at most half is left extends (60 s left of 300 s).
    let (s, b) = other
        .call(
            Method::POST,
            "/claim/renew",
            Some(json!({"node_id": "a", "fencing_token": token, "ttl_ms": 300_000})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(expires(&b) > 250_000, "extended: {b}");
    srv.stop().await;
}

#[tokio::test]
async fn join_long_poll_returns_within_100ms_of_publish() {
    let srv = TestServer::start().await;
    let api = srv.create_cluster("fast", 1).await;
    assert_eq!(api.register("m1", "auto").await["role"], "manager");
    assert_eq!(api.register("w1", "auto").await["role"], "worker");

    // Not registered: 404.
    let (s, b) = api.call(Method::GET, "/join?node_id=ghost", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(b["error"], "node_not_registered");
    // Not formed and no wait: answers at once without join info.
    let (s, b) = api.call(Method::GET, "/join?node_id=w1", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["join"], Value::Null);

    let (_, c) = api.claim("m1", 30_000).await;
    let token = c["lease"]["fencing_token"].as_u64().unwrap();

    let waiter = {
        let api = api.clone();
        tokio::spawn(async move {
            let r = api
                .call(Method::GET, "/join?node_id=w1&wait=30", None)
                .await;
            (r, Instant::now())
        })
    };
    // Wait until the long-poll is parked on the server (watch the gauge).
    let s = &srv;
    wait_for("the long-poll to be parked", Duration::from_secs(10), || async move {
        (s.metric("swarm_coordinator_open_long_polls ").await >= 1.0).then_some(())
    })
    .await;
    let published_at = Instant::now();
    let (s, _) = api.publish("m1", token).await;
    assert_eq!(s, StatusCode::OK);
    let ((s, b), answered_at) = waiter.await.unwrap();
    let latency = answered_at.saturating_duration_since(published_at);
    eprintln!("long-poll answered {latency:?} after the publish request was sent");
    assert!(
        latency < Duration::from_millis(100),
        "long-poll took {latency:?}"
    );
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["phase"], "formed");
    assert_eq!(b["join"]["role"], "worker");
    assert_eq!(
        b["join"]["token"], WORKER_TOKEN,
        "a worker gets the worker token only"
    );
    assert!(!b.to_string().contains(MANAGER_TOKEN));

    let (_, b) = api.call(Method::GET, "/join?node_id=m1&wait=5", None).await;
    assert_eq!(b["join"]["token"], MANAGER_TOKEN);
    assert_eq!(b["join"]["manager_addrs"], json!(["198.18.0.10:2377"]));
    srv.stop().await;
}

#[tokio::test]
async fn reset_allows_exactly_one_new_init() {
    let srv = TestServer::start().await;
    let api = srv.create_cluster("again", 3).await;
    let (_, c) = api.claim("a", 30_000).await;
    let first = c["lease"]["fencing_token"].as_u64().unwrap();
    assert_eq!(api.publish("a", first).await.0, StatusCode::OK);
    assert_eq!(api.claim("b", 30_000).await.1["granted"], false);

    let (s, st) = srv
        .admin(
            Method::POST,
            "/v1/admin/clusters/again/reset",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{st}");
    assert_eq!(st["resets"], 1);
    assert_eq!(st["phase"], "open");

    let mut tasks = vec![];
    for i in 0..20 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            api.claim(&format!("r{i}"), 30_000).await.1
        }));
    }
    let mut winners = vec![];
    let mut new_token = 0;
    for t in tasks {
        let b = t.await.unwrap();
        if b["error"] == "not_a_manager" {
            continue; // registered as a worker: three managers stand
        }
        new_token = b["lease"]["fencing_token"].as_u64().unwrap();
        if b["granted"] == true {
            winners.push(b["lease"]["holder"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(winners.len(), 1, "exactly one new init after a reset");
    assert!(
        new_token > first,
        "fencing tokens are never reused across resets"
    );
    // The reset forgot the old holder's registration (its credential is void): it registers
    // again, and its token is dead.
    let (s, b) = api.publish("a", first).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    assert_eq!(b["error"], "node_not_registered", "{b}");
    api.creds.lock().unwrap().remove("a");
    api.register("a", "auto").await;
    assert_eq!(
        api.publish("a", first).await.1["error"],
        "stale_fencing_token"
    );
    assert_eq!(api.publish(&winners[0], new_token).await.0, StatusCode::OK);
    assert_eq!(api.claim(&winners[0], 30_000).await.1["granted"], false);
    let st = api.status().await;
    assert_eq!(st["phase"], "formed");
    assert_eq!(st["resets"], 1);
    srv.stop().await;
}

#[tokio::test]
async fn roles_keep_the_manager_target_and_are_idempotent() {
    let srv = TestServer::start().await;
    let api = srv.create_cluster("roles", 3).await;
    assert_eq!(api.register("w0", "worker").await["role"], "worker");
    let mut roles = vec![];
    for i in 0..5 {
        roles.push(
            api.register(&format!("n{i}"), if i == 1 { "manager" } else { "auto" })
                .await["role"]
                .clone(),
        );
    }
    assert_eq!(
        roles,
        vec!["manager", "manager", "manager", "worker", "worker"]
    );
    // Re-register: same role, updated address.
    let (s, b) = api
        .call(Method::POST, "/nodes", Some(json!({"node_id": "n4", "hostname": "new-host", "advertise_addr": "198.18.0.99", "role": "manager"})))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["role"], "worker");
    assert_eq!(api.register("n0", "auto").await["role"], "manager");
    let st = api.status().await;
    let nodes = st["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 6);
    let n4 = nodes.iter().find(|n| n["node_id"] == "n4").unwrap();
    assert_eq!(n4["hostname"], "new-host");
    assert_eq!(n4["advertise_addr"], "198.18.0.99");
    assert_eq!(nodes.iter().filter(|n| n["role"] == "manager").count(), 3);
    // A registered worker may not take the init lease.
    let (s, b) = api.claim("w0", 30_000).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(b["error"], "not_a_manager");
    srv.stop().await;
}

#[tokio::test]
async fn docs_compare_and_set_loses_no_update() {
    let srv = TestServer::start().await;
    let api = srv.create_cluster("docs", 3).await;
    api.register("m", "manager").await;
    let (s, d) = api.call(Method::GET, "/docs/keeper", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(d, json!({"version": 0, "body": null}));

    const WRITERS: u64 = 8;
    const EACH: u64 = 15;
    let mut tasks = vec![];
    for _ in 0..WRITERS {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0u64;
            for _ in 0..EACH {
                loop {
                    let (_, d) = api.call(Method::GET, "/docs/keeper", None).await;
                    let v = d["version"].as_u64().unwrap();
                    let n = d["body"]["n"].as_u64().unwrap_or(0);
                    let (s, b) = api
                        .call(
                            Method::PUT,
                            "/docs/keeper",
                            Some(json!({"node_id": "m", "expected_version": v, "body": {"n": n + 1}})),
                        )
                        .await;
                    match s {
                        StatusCode::OK => break,
                        StatusCode::CONFLICT => {
                            assert_eq!(b["error"], "version_conflict");
                            assert!(b["message"].as_str().unwrap().contains("version"));
                            conflicts += 1;
                        }
                        other => panic!("unexpected {other}: {b}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let (_, d) = api.call(Method::GET, "/docs/keeper", None).await;
    assert_eq!(d["version"].as_u64().unwrap(), WRITERS * EACH);
    assert_eq!(
        d["body"]["n"].as_u64().unwrap(),
        WRITERS * EACH,
        "no lost update"
    );
    eprintln!("{conflicts} conflicts were retried");

    // A stale expected_version is refused with the current version in the message.
    let (s, b) = api
        .call(
            Method::PUT,
            "/docs/keeper",
            Some(json!({"node_id": "m", "expected_version": 1, "body": {}})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(b["message"]
        .as_str()
        .unwrap()
        .contains(&format!("{}", WRITERS * EACH)));
    srv.stop().await;
}

#[tokio::test]
async fn docs_long_poll_wakes_on_write() {
    let srv = TestServer::start().await;
    let api = srv.create_cluster("watch", 3).await;
    api.register("m", "manager").await;
    let (s, d) = api
        .call(
            Method::PUT,
            "/docs/keeper",
            Some(json!({"node_id": "m", "expected_version": 0, "body": {"backends": []}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(d["version"], 1);
    // Already newer than `after`: answers at once.
    let (_, d) = api
        .call(Method::GET, "/docs/keeper?after=0&wait=30", None)
        .await;
    assert_eq!(d["version"], 1);

    let waiter = {
        let api = api.clone();
        tokio::spawn(async move {
            let r = api
                .call(Method::GET, "/docs/keeper?after=1&wait=30", None)
                .await;
            (r, Instant::now())
        })
    };
    let s = &srv;
    wait_for("the doc long-poll to be parked", Duration::from_secs(10), || async move {
        (s.metric("swarm_coordinator_open_long_polls ").await >= 1.0).then_some(())
    })
    .await;
    // A write to another document does not answer it.
    api.call(
        Method::PUT,
        "/docs/drains",
        Some(json!({"node_id": "m", "expected_version": 0, "body": {"requests": {}}})),
    )
    .await;
    let written_at = Instant::now();
    let (s, _) = api
        .call(
            Method::PUT,
            "/docs/keeper",
            Some(json!({"node_id": "m", "expected_version": 1, "body": {"backends": ["198.18.0.2:80"]}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let ((s, d), at) = waiter.await.unwrap();
    assert_eq!(s, StatusCode::OK);
    assert_eq!(d["version"], 2);
    assert_eq!(d["body"]["backends"][0], "198.18.0.2:80");
    let latency = at.saturating_duration_since(written_at);
    assert!(
        latency < Duration::from_millis(500),
        "doc long-poll took {latency:?}"
    );

    // With nothing new, the long-poll ends after `wait` with the current version.
    let start = Instant::now();
    let (_, d) = api
        .call(Method::GET, "/docs/keeper?after=2&wait=1", None)
        .await;
    assert_eq!(d["version"], 2);
    assert!(start.elapsed() >= Duration::from_millis(900));
    srv.stop().await;
}

#[tokio::test]
async fn oversized_document_is_refused() {
    let srv = TestServer::start().await;
    let api = srv.create_cluster("big", 3).await;
    api.register("m", "manager").await;
    // Beyond the request limit (document limit + 4 KiB): 413 before anything is parsed.
    let body = |strings: usize| json!(vec!["x".repeat(4000); strings]);
    let (s, b) = api
        .call(
            Method::PUT,
            "/docs/keeper",
            Some(json!({"node_id": "m", "expected_version": 0, "body": body(1060)})),
        )
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{b}");
    // A body just above the 4 MiB document limit (inside the request limit): the rulebook's
    // quota, 403.
    let over = body(1048);
    assert!(serde_json::to_vec(&over).unwrap().len() > 4 << 20);
    let (s, b) = api
        .call(
            Method::PUT,
            "/docs/keeper",
            Some(json!({"node_id": "m", "expected_version": 0, "body": over})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert_eq!(b["error"], "quota_exceeded", "{b}");
    // Under the document limit is fine (and above the 64 KiB API limit).
    let (s, b) = api
        .call(
            Method::PUT,
            "/docs/keeper",
            Some(json!({"node_id": "m", "expected_version": 0, "body": body(50)})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    srv.stop().await;
}

#[tokio::test]
async fn admin_api_and_metrics() {
    let srv = TestServer::start().await;
    let api = srv.create_cluster("adm", 5).await;
    api.register("n1", "auto").await;
    // Duplicate name.
    let (s, b) = srv
        .admin(
            Method::POST,
            "/v1/admin/clusters",
            Some(json!({"name": "adm"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(b["error"], "cluster_exists");
    // Even target → 400.
    let (s, b) = srv
        .admin(
            Method::POST,
            "/v1/admin/clusters",
            Some(json!({"name": "even", "target_managers": 4})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    // An operator-chosen secret works as the bearer token.
    let (s, b) = srv
        .admin(
            Method::POST,
            "/v1/admin/clusters",
            Some(json!({"name": "tf", "secret": "terraform-random-password-0123"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, _) = send(
        &srv.client(),
        Method::GET,
        &format!("{}/v1/clusters/tf", srv.base),
        Some("terraform-random-password-0123"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);

    let (s, list) = srv.admin(Method::GET, "/v1/admin/clusters", None).await;
    assert_eq!(s, StatusCode::OK);
    let names: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["adm", "tf"]);
    let (s, show) = srv.admin(Method::GET, "/v1/admin/clusters/adm", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(show["target_managers"], 5);
    let (s, b) = srv
        .admin(Method::GET, "/v1/admin/clusters/nope", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(b["error"], "unknown_cluster");
    // The cluster secret is not an admin token.
    let (s, _) = send(
        &srv.client(),
        Method::GET,
        &format!("{}/v1/admin/clusters", srv.admin_base),
        Some(&api.secret),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // The public listener does not serve the admin API, even with the admin token.
    let (s, b) = send(
        &srv.client(),
        Method::GET,
        &format!("{}/v1/admin/clusters", srv.base),
        Some(srv.admin_token.expose()),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    assert!(
        b["message"].as_str().unwrap().contains("admin-listen"),
        "{b}"
    );

    let (s, text) = srv.get("/metrics").await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        text.contains(r#"route="/v1/clusters/{cluster}/nodes",status="200""#),
        "{text}"
    );
    // The request duration is a histogram with buckets per method and route template.
    assert!(
        text.contains("# TYPE swarm_coordinator_request_duration_seconds histogram\n"),
        "{text}"
    );
    assert!(
        text.contains(
            r#"swarm_coordinator_request_duration_seconds_bucket{le="+Inf",method="POST",route="/v1/clusters/{cluster}/nodes"} "#
        ),
        "{text}"
    );
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics ends with # EOF: {text}"
    );
    assert!(text.contains("swarm_coordinator_clusters 2"), "{text}");
    assert!(text.contains("swarm_coordinator_nodes 1"), "{text}");
    assert!(
        text.contains("swarm_coordinator_open_long_polls 0"),
        "{text}"
    );
    assert!(!text.contains(&api.secret));
    srv.stop().await;
}

#[tokio::test]
async fn serves_operator_supplied_pem_files() {
    use swarm_coordinator::server::{self, ServeOptions, TlsMode};
    install_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["coord.lab".to_string()]).unwrap();
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let expected = swarm_coordinator::tls::fingerprint_of_file(&cert).unwrap();

    // A key file that holds no key: a clear error naming the file.
    let bad = ServeOptions {
        data_dir: tmp.path().join("bad-data"),
        tls: TlsMode::Files {
            cert: cert.clone(),
            key: cert.clone(),
        },
        limits: Default::default(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
    };
    let err = server::prepare(&bad)
        .err()
        .expect("a certificate is not a key")
        .to_string();
    assert!(
        err.contains("cert.pem") && err.contains("private key"),
        "{err}"
    );

    let opts = ServeOptions {
        data_dir: tmp.path().join("data"),
        tls: TlsMode::Files { cert, key },
        limits: Default::default(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
    };
    let cfg = server::prepare(&opts).unwrap();
    assert_eq!(cfg.fingerprint.as_deref(), Some(expected.as_str()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::run(listener, cfg, async {
        let _ = stopped.await;
    }));
    let r = pinned_client(&expected)
        .get(format!("https://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn recover_resets_only_the_named_swarm_and_only_once() {
    let srv = TestServer::start().await;
    let api = srv.create_cluster("lost", 3).await;
    api.register("a", "auto").await;
    api.register("w", "worker").await;
    let (_, c) = api.claim("a", 30_000).await;
    let token = c["lease"]["fencing_token"].as_u64().unwrap();
    assert_eq!(api.publish("a", token).await.0, StatusCode::OK);
    let swarm = api.status().await["swarm_id"].as_str().unwrap().to_string();

    // The wrong swarm id changes nothing.
    let (s, b) = api
        .reset(Some(json!({"node_id": "w", "swarm_id": "not-it"})))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_eq!(b["error"], "swarm_mismatch");
    assert_eq!(api.status().await["phase"], "formed");

    // Ten operators recover at once: one reset.
    let mut tasks = vec![];
    for i in 0..10 {
        let api = api.clone();
        let swarm = swarm.clone();
        tasks.push(tokio::spawn(async move {
            api.reset(
                Some(json!({"node_id": format!("op{i}"), "swarm_id": swarm, "reason": "all managers lost"})),
            )
            .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        let (s, b) = t.await.unwrap();
        match s {
            StatusCode::OK => ok += 1,
            StatusCode::CONFLICT => assert_eq!(b["error"], "swarm_mismatch", "{b}"),
            other => panic!("{other}: {b}"),
        }
    }
    assert_eq!(ok, 1, "exactly one reset");
    let st = api.status().await;
    assert_eq!(st["phase"], "open", "{st}");
    assert_eq!(st["resets"], 1, "{st}");
    assert_eq!(st["nodes"], json!([]), "registrations are forgotten: {st}");
    // Roles are assigned again: the former worker may become a manager and claim.
    assert_eq!(api.register("w", "auto").await["role"], "manager");
    assert_eq!(api.claim("w", 30_000).await.1["granted"], true);
    srv.stop().await;
}

/// The CA digest is stored canonical (`sha256:` + lowercase hex), so an uppercase retry is the
/// identical publish; a reset reason is at most 500 characters (wire/src/rules.rs).
#[tokio::test]
async fn canonical_ca_digest_and_bounded_reset_reason() {
    let srv = TestServer::start().await;
    let api = srv.create_cluster("canon", 3).await;
    api.register("a", "manager").await;
    let (_, c) = api.claim("a", 30_000).await;
    let token = c["lease"]["fencing_token"].as_u64().unwrap();
    let mut body = publish_body("a", token);
    body["ca_digest"] = json!(format!("sha256:{}", "AB".repeat(32)));
    let (s, b) = api.call(Method::POST, "/publish", Some(body.clone())).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let canonical = format!("sha256:{}", "ab".repeat(32));
    assert_eq!(api.status().await["ca_digest"], canonical.as_str());
    let (_, j) = api.call(Method::GET, "/join?node_id=a", None).await;
    assert_eq!(j["join"]["ca_digest"], canonical.as_str());
    // The same publish in either spelling is the identical retry.
    assert_eq!(
        api.call(Method::POST, "/publish", Some(body)).await.0,
        StatusCode::OK
    );
    assert_eq!(api.publish("a", token).await.0, StatusCode::OK);

    let swarm = "swarm-abc";
    let (s, b) = api
        .reset(Some(
            json!({"node_id": "a", "swarm_id": swarm, "reason": "x".repeat(501)}),
        ))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert_eq!(b["error"], "invalid_request");
    assert_eq!(api.status().await["phase"], "formed", "nothing was reset");
    let (s, b) = api
        .reset(Some(
            json!({"node_id": "a", "swarm_id": swarm, "reason": "é".repeat(500)}),
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "500 characters are fine: {b}");
    assert_eq!(b["resets"], 1);
    srv.stop().await;
}

fn sync_body(swarm: &str, addrs: &[&str], managers: u32, members: &[(&str, &str)]) -> Value {
    json!({
        "node_id": "a",
        "swarm_id": swarm,
        "manager_addrs": addrs,
        "managers": managers,
        "members": members
            .iter()
            .map(|(id, role)| json!({"node_id": id, "role": role}))
            .collect::<Vec<_>>(),
    })
}

fn adopt_body(node: &str, swarm: &str) -> Value {
    json!({
        "node_id": node,
        "hostname": format!("host-{node}"),
        "advertise_addr": "198.18.0.20",
        "swarm_id": swarm,
        "ca_digest": format!("sha256:{}", "cd".repeat(32)),
        "manager_addrs": ["198.18.0.20:2377", "198.18.0.21:2377"],
        "manager_token": MANAGER_TOKEN,
        "worker_token": WORKER_TOKEN,
        "managers": 3,
    })
}

/// `/sync` (wire/src/rules.rs `sync`): join info carries the live managers, a node seen and
/// then missing is dropped and frees its manager slot, an unchanged report writes nothing, and
/// only the cluster's own swarm may sync.
#[tokio::test]
async fn sync_makes_the_cluster_follow_the_swarm() {
    let srv = TestServer::start().await;
    let api = srv.create_cluster("follow", 3).await;
    for n in ["a", "b", "c", "d"] {
        api.register(n, "auto").await;
    }
    let (_, c) = api.claim("a", 30_000).await;
    let token = c["lease"]["fencing_token"].as_u64().unwrap();
    assert_eq!(api.publish("a", token).await.0, StatusCode::OK);

    let all = [
        ("a", "manager"),
        ("b", "manager"),
        ("c", "manager"),
        ("d", "worker"),
    ];
    let addrs = ["198.18.0.11:2377", "198.18.0.12:2377", "198.18.0.13:2377"];
    let (s, b) = api
        .call(
            Method::POST,
            "/sync",
            Some(sync_body("swarm-abc", &addrs, 3, &all)),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["changed"], true);
    assert_eq!(b["pruned"], json!([]));
    let (_, j) = api.call(Method::GET, "/join?node_id=d", None).await;
    assert_eq!(j["join"]["manager_addrs"], json!(addrs), "{j}");
    // The same report again: nothing to change.
    let (_, b) = api
        .call(
            Method::POST,
            "/sync",
            Some(sync_body("swarm-abc", &addrs, 3, &all)),
        )
        .await;
    assert_eq!(b["changed"], false, "{b}");
    // A new node now is a worker: three managers stand.
    assert_eq!(api.register("e", "auto").await["role"], "worker");
    // Manager c left the swarm: dropped, and the next node takes its slot.
    let left = [
        ("a", "manager"),
        ("b", "manager"),
        ("d", "worker"),
        ("e", "worker"),
    ];
    let (s, b) = api
        .call(
            Method::POST,
            "/sync",
            Some(sync_body("swarm-abc", &addrs[..2], 2, &left)),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["pruned"], json!(["c"]));
    assert_eq!(b["manager_count"], 2);
    let st = api.status().await;
    assert!(st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["node_id"] != "c"));
    assert_eq!(st["manager_addrs"], json!(addrs[..2]));
    assert_eq!(api.register("f", "auto").await["role"], "manager");
    // Another swarm, or a cluster that is not formed: swarm_mismatch, nothing changed.
    let (s, b) = api
        .call(
            Method::POST,
            "/sync",
            Some(sync_body("other-swarm", &addrs, 3, &all)),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(b["error"], "swarm_mismatch", "{b}");
    let open = srv.create_cluster("follow-open", 3).await;
    let (s, b) = open
        .call(
            Method::POST,
            "/sync",
            Some(sync_body("swarm-abc", &addrs, 3, &all)),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(b["error"], "swarm_mismatch", "{b}");
    srv.stop().await;
}

/// A cluster re-created awaiting adoption (the coordinator lost its database): claims are
/// refused until the running swarm's leader adopts it; a node parked waiting for join info is
/// answered by the adoption; the adoption is idempotent; another swarm cannot adopt.
#[tokio::test]
async fn re_created_cluster_refuses_claims_until_adopted() {
    let srv = TestServer::start().await;
    let (s, b) = srv
        .admin(
            Method::POST,
            "/v1/admin/clusters",
            Some(json!({"name": "again", "target_managers": 3, "await_adoption": true})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let api = Api {
        client: srv.client(),
        base: srv.base.clone(),
        cluster: "again".into(),
        secret: b["secret"].as_str().unwrap().to_string(),
        operator: b["operator_credential"].as_str().unwrap().to_string(),
        creds: Default::default(),
    };
    let st = api.status().await;
    assert_eq!(
        (st["phase"].clone(), st["awaiting_adoption"].clone()),
        (json!("open"), json!(true))
    );

    // A new node starting in the window registers (a manager), but may not init.
    assert_eq!(api.register("new", "auto").await["role"], "manager");
    let (s, b) = api.claim("new", 30_000).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(b["error"], "awaiting_adoption", "{b}");
    assert!(b["message"].as_str().unwrap().contains("allow-init"), "{b}");
    assert_eq!(api.status().await["lease"], Value::Null);

    // It waits for join info; the adoption answers it.
    let waiter = {
        let api = api.clone();
        tokio::spawn(async move {
            api.call(Method::GET, "/join?node_id=new&wait=30", None)
                .await
        })
    };
    let s = &srv;
    wait_for("the join long-poll to be parked", Duration::from_secs(10), || async move {
        (s.metric("swarm_coordinator_open_long_polls ").await >= 1.0).then_some(())
    })
    .await;
    let (s, a) = api
        .call(
            Method::POST,
            "/adopt",
            Some(adopt_body("leader", "swarm-live")),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{a}");
    assert_eq!(a["adopted"], true);
    assert_eq!(a["phase"], "formed");
    let token = a["fencing_token"].as_u64().unwrap();
    let (s, j) = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the adoption wakes the parked join")
        .unwrap();
    assert_eq!(s, StatusCode::OK);
    assert_eq!(j["join"]["swarm_id"], "swarm-live", "{j}");
    assert_eq!(j["join"]["role"], "worker", "three managers stand: {j}");
    assert_eq!(j["join"]["token"], WORKER_TOKEN);
    assert_eq!(
        j["join"]["manager_addrs"],
        json!(["198.18.0.20:2377", "198.18.0.21:2377"])
    );

    let st = api.status().await;
    assert_eq!(st["phase"], "formed");
    assert_eq!(st["awaiting_adoption"], false);
    assert_eq!(st["adoptions"], 1);
    assert!(!st.to_string().contains(MANAGER_TOKEN) && !st.to_string().contains(WORKER_TOKEN));
    let leader = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == "leader")
        .cloned()
        .expect("the adopter is registered");
    assert_eq!(leader["role"], "manager");
    // Formed: no claim is granted (and "new" is a worker now: three managers stand).
    let (s, c) = api.claim("new", 30_000).await;
    assert_eq!(s, StatusCode::CONFLICT, "{c}");
    assert_eq!(c["error"], "not_a_manager", "{c}");
    let (s, c) = api.claim("leader", 30_000).await;
    assert_eq!(s, StatusCode::OK, "{c}");
    assert_eq!(c["granted"], false, "{c}");
    // The same adoption again (a retry): not adopted again, the same token.
    let (s, again) = api
        .call(
            Method::POST,
            "/adopt",
            Some(adopt_body("leader", "swarm-live")),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again["adopted"], false);
    assert_eq!(again["fencing_token"].as_u64(), Some(token));
    // An unregistered node cannot adopt a formed cluster; another swarm cannot take it.
    let (s, b) = api
        .call(Method::POST, "/adopt", Some(adopt_body("x", "swarm-other")))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(b["error"], "node_not_registered", "{b}");
    let (s, b) = api
        .call(
            Method::POST,
            "/adopt",
            Some(adopt_body("leader", "swarm-other")),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(b["error"], "already_formed", "{b}");
    srv.stop().await;
}

/// The adoption's fencing token fences a lease granted in the window before it, and is larger
/// than the tokens of the cluster as it was before the database was lost.
#[tokio::test]
async fn adoption_fences_a_lease_granted_before_it() {
    let srv = TestServer::start().await;
    let before = srv.create_cluster("old", 3).await;
    let (_, c) = before.claim("a", 30_000).await;
    let old_token = c["lease"]["fencing_token"].as_u64().unwrap();
    // The "re-created" cluster without a hold: a node claims in the window.
    let api = srv.create_cluster("window", 3).await;
    let (_, c) = api.claim("n", 30_000).await;
    assert_eq!(c["granted"], true);
    let n_token = c["lease"]["fencing_token"].as_u64().unwrap();
    let (s, a) = api
        .call(
            Method::POST,
            "/adopt",
            Some(adopt_body("leader", "swarm-live")),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{a}");
    let token = a["fencing_token"].as_u64().unwrap();
    assert!(token > n_token && token > old_token, "{token}");
    let (s, b) = api.publish("n", n_token).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(b["error"], "stale_fencing_token", "{b}");
    assert_eq!(api.status().await["swarm_id"], "swarm-live");
    srv.stop().await;
}

/// A swarm retired by `swarm-agent recover` is never adopted again.
#[tokio::test]
async fn adoption_of_a_retired_swarm_is_refused() {
    let srv = TestServer::start().await;
    let api = srv.create_cluster("retired", 1).await;
    let (_, c) = api.claim("a", 30_000).await;
    let token = c["lease"]["fencing_token"].as_u64().unwrap();
    assert_eq!(api.publish("a", token).await.0, StatusCode::OK);
    let (s, _) = api
        .reset(Some(
            json!({"node_id": "a", "swarm_id": "swarm-abc", "reason": "all managers lost"}),
        ))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        api.status().await["retired_swarm_ids"],
        json!(["swarm-abc"])
    );
    let (s, b) = api
        .call(Method::POST, "/adopt", Some(adopt_body("a", "swarm-abc")))
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(b["error"], "swarm_retired", "{b}");
    assert_eq!(api.status().await["phase"], "open");
    srv.stop().await;
}

/// `POST /v1/admin/clusters/{c}/adoption-hold`: set and lifted by the operator, refused on a
/// formed cluster, admin token only.
#[tokio::test]
async fn admin_sets_and_lifts_the_adoption_hold() {
    let srv = TestServer::start().await;
    let api = srv.create_cluster("hold", 3).await;
    api.register("n", "auto").await;
    let hold = |h: bool| json!({ "hold": h });
    let (s, st) = srv
        .admin(
            Method::POST,
            "/v1/admin/clusters/hold/adoption-hold",
            Some(hold(true)),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{st}");
    assert_eq!(st["awaiting_adoption"], true);
    assert_eq!(api.claim("n", 30_000).await.1["error"], "awaiting_adoption");
    let (s, st) = srv
        .admin(
            Method::POST,
            "/v1/admin/clusters/hold/adoption-hold",
            Some(hold(false)),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{st}");
    assert_eq!(st["awaiting_adoption"], false);
    let (_, c) = api.claim("n", 30_000).await;
    assert_eq!(c["granted"], true, "{c}");
    let token = c["lease"]["fencing_token"].as_u64().unwrap();
    assert_eq!(api.publish("n", token).await.0, StatusCode::OK);
    // Formed: nothing to hold.
    let (s, b) = srv
        .admin(
            Method::POST,
            "/v1/admin/clusters/hold/adoption-hold",
            Some(hold(true)),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(b["error"], "already_formed", "{b}");
    // Unknown cluster, bad name, bad body, no admin token.
    let (s, b) = srv
        .admin(
            Method::POST,
            "/v1/admin/clusters/nope/adoption-hold",
            Some(hold(true)),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(b["error"], "unknown_cluster");
    let (s, b) = srv
        .admin(
            Method::POST,
            "/v1/admin/clusters/Bad_Name/adoption-hold",
            Some(hold(true)),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(b["error"], "invalid_name");
    for body in [
        json!({}),
        json!({"hold": "yes"}),
        json!({"hold": true, "extra": 1}),
    ] {
        let (s, b) = srv
            .admin(
                Method::POST,
                "/v1/admin/clusters/hold/adoption-hold",
                Some(body.clone()),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {b}");
        assert_eq!(b["error"], "invalid_request", "{b}");
    }
    let (s, b) = send(
        &srv.client(),
        Method::POST,
        &format!("{}/v1/admin/clusters/hold/adoption-hold", srv.admin_base),
        Some(&api.secret),
        Some(hold(false)),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(b["error"], "unauthorized");
    srv.stop().await;
}

/// A node may offer its own credential on its first registration (header
/// `x-swarmstrap-node-credential`, 32-256 printable characters): the node id is bound to it, so
/// a retry after a lost answer presents the same credential and is accepted instead of locking
/// the node out of its id. A weak offer is ignored (a fresh credential is issued).
#[tokio::test]
async fn an_offered_credential_makes_the_first_registration_idempotent() {
    let srv = TestServer::start().await;
    let api = srv.create_cluster("offer", 3).await;
    let offered = "f".repeat(64);
    let body = json!({"node_id": "n1", "hostname": "h1", "advertise_addr": "198.18.0.1"});
    let (s, b) = api
        .call_with(
            Method::POST,
            "/nodes",
            &[(NODE_CREDENTIAL, &offered)],
            Some(body.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["credential"], offered.as_str());
    // The answer was "lost": the retry presents the same credential.
    let (s, b) = api
        .call_with(
            Method::POST,
            "/nodes",
            &[(NODE_CREDENTIAL, &offered)],
            Some(body.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(b.get("credential").is_none(), "{b}");
    // Without it, or with another one: refused.
    for headers in [vec![], vec![(NODE_CREDENTIAL, "e".repeat(64))]] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (s, b) = api
            .call_with(Method::POST, "/nodes", &h, Some(body.clone()))
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
        assert_eq!(b["error"], "bad_node_credential");
    }
    // A weak offer is not taken: a fresh credential is issued instead.
    let (s, b) = api
        .call_with(
            Method::POST,
            "/nodes",
            &[(NODE_CREDENTIAL, "short")],
            Some(json!({"node_id": "n2", "hostname": "h2", "advertise_addr": "198.18.0.2"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let issued = b["credential"].as_str().unwrap();
    assert_ne!(issued, "short");
    assert_eq!(issued.len(), 64);
    // Nor is the join secret (every node holds it).
    let (s, b) = api
        .call_with(
            Method::POST,
            "/nodes",
            &[(NODE_CREDENTIAL, &api.secret)],
            Some(json!({"node_id": "n3", "hostname": "h3", "advertise_addr": "198.18.0.3"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_ne!(b["credential"], api.secret.as_str());
    srv.stop().await;
}

/// `POST /v1/admin/clusters/{c}/operator-credential` (`cluster rotate-operator-credential`):
/// the new operator credential resets the cluster, the old one no longer does; the join secret
/// is refused as one.
#[tokio::test]
async fn admin_rotates_the_operator_credential() {
    let srv = TestServer::start().await;
    let api = srv.create_cluster("rot", 1).await;
    let (_, c) = api.claim("m", 30_000).await;
    let token = c["lease"]["fencing_token"].as_u64().unwrap();
    assert_eq!(api.publish("m", token).await.0, StatusCode::OK);
    let path = "/v1/admin/clusters/rot/operator-credential";
    let (s, b) = srv
        .admin(
            Method::POST,
            path,
            Some(json!({"operator_credential": api.secret})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    assert_eq!(b["error"], "invalid_secret");
    let (s, b) = srv.admin(Method::POST, path, Some(json!({}))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let new = b["operator_credential"].as_str().unwrap().to_string();
    assert_eq!(new.len(), 64);
    assert_ne!(new, api.operator);
    let reset = json!({"node_id": "m", "swarm_id": "swarm-abc"});
    let (s, b) = api.reset(Some(reset.clone())).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "the old credential: {b}");
    assert_eq!(b["error"], "operator_required");
    let rotated = Api {
        operator: new,
        ..api.clone()
    };
    let (s, b) = rotated.reset(Some(reset)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = srv
        .admin(
            Method::POST,
            "/v1/admin/clusters/nope/operator-credential",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{b}");
    srv.stop().await;
}

/// `POST /v1/admin/clusters/{c}/rotate-tokens` (issue 14 item 9): the operator asks, the status
/// shows the rotation pending, the raft leader's agent publishes the rotated tokens with an
/// adoption of the formed swarm, which marks it done; joins hand out the new tokens. A worker
/// cannot publish tokens, and the route is the operator's (admin listener, admin token).
#[tokio::test]
async fn the_operator_asks_for_a_token_rotation_and_the_leader_publishes_it() {
    let srv = TestServer::start().await;
    let api = srv.create_cluster("rot", 1).await;
    // Not formed: nothing to rotate.
    let (s, b) = srv
        .admin(Method::POST, "/v1/admin/clusters/rot/rotate-tokens", None)
        .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::CONFLICT, Some("swarm_mismatch")),
        "{b}"
    );
    assert_eq!(api.register("m", "auto").await["role"], "manager");
    assert_eq!(api.register("w", "auto").await["role"], "worker");
    let (_, c) = api.claim("m", 30_000).await;
    let token = c["lease"]["fencing_token"].as_u64().unwrap();
    let (s, b) = api.publish("m", token).await;
    assert_eq!(s, StatusCode::OK, "{b}");

    let (s, st) = srv
        .admin(Method::POST, "/v1/admin/clusters/rot/rotate-tokens", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{st}");
    assert_eq!(st["token_rotation_pending"], 1, "{st}");
    assert_eq!(api.status().await["token_rotation_pending"], 1);

    let mut rotated = adopt_body("m", "swarm-abc");
    rotated["ca_digest"] = json!(format!("sha256:{}", "ab".repeat(32)));
    rotated["manager_token"] = json!("SWMTKN-1-manager-token-rotated");
    rotated["worker_token"] = json!("SWMTKN-1-worker-token-rotated");
    // A worker holding the join secret and its own credential cannot publish tokens.
    let mut evil = rotated.clone();
    evil["node_id"] = json!("w");
    evil["worker_token"] = json!("SWMTKN-1-attacker");
    let (s, b) = api.call(Method::POST, "/adopt", Some(evil)).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::CONFLICT, Some("not_a_manager")),
        "{b}"
    );
    // The leader's agent publishes the rotated tokens.
    let (s, a) = api.call(Method::POST, "/adopt", Some(rotated)).await;
    assert_eq!(s, StatusCode::OK, "{a}");
    assert_eq!(a["adopted"], false, "{a}");
    let st = api.status().await;
    assert!(st["token_rotation_pending"].is_null(), "{st}");
    assert_eq!(st["token_rotations"], 1, "{st}");
    let (s, j) = api.call(Method::GET, "/join?node_id=w", None).await;
    assert_eq!(s, StatusCode::OK, "{j}");
    assert_eq!(j["join"]["token"], "SWMTKN-1-worker-token-rotated", "{j}");
    // The public listener does not serve the admin route.
    let (s, _) = send(
        &srv.client(),
        Method::POST,
        &format!("{}/v1/admin/clusters/rot/rotate-tokens", srv.base),
        Some(srv.admin_token.expose()),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// Registering again after a sync (the agent records the manager it joined through) keeps the
/// node's role (the lab's day2 run showed re-registered managers turned into workers).
#[tokio::test]
async fn registering_again_after_a_sync_keeps_the_role() {
    let srv = TestServer::start().await;
    let api = srv.create_cluster("again", 3).await;
    for n in ["a", "b", "c", "d"] {
        api.register(n, "auto").await;
    }
    let (_, c) = api.claim("a", 30_000).await;
    let token = c["lease"]["fencing_token"].as_u64().unwrap();
    assert_eq!(api.publish("a", token).await.0, StatusCode::OK);
    let (s, b) = api
        .call(
            Method::POST,
            "/sync",
            Some(sync_body(
                "swarm-abc",
                &["198.18.0.10:2377"],
                1,
                &[("a", "manager")],
            )),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, r) = api
        .call(
            Method::POST,
            "/nodes",
            Some(
                json!({"node_id": "b", "hostname": "host-b", "advertise_addr": "198.18.0.10",
                        "role": "auto", "joined_through": "198.18.0.10:2377"}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["role"], "manager", "{r}");
    let st = api.status().await;
    let b = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node_id"] == "b")
        .unwrap()
        .clone();
    assert_eq!(b["role"], "manager", "{st}");
}
