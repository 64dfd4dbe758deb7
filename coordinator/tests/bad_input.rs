//! Hostile and broken input: every error is a JSON {"error", "message"} with the right
//! status, slow clients are cut off, auth failures back off, and the server stays healthy.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarm_coordinator::api::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn lenient() -> Limits {
    Limits {
        auth_failures_before_backoff: 10_000,
        ..Limits::default()
    }
}

async fn raw(
    client: &reqwest::Client,
    method: Method,
    url: &str,
    bearer: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let mut req = client.request(method, url).body(body);
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text:?}"));
    (status, v, headers)
}

fn assert_error(v: &Value, code: &str) {
    assert_eq!(v["error"], code, "{v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "an error has a message: {v}"
    );
    assert_eq!(
        v.as_object().unwrap().len(),
        2,
        "exactly error + message: {v}"
    );
}

#[tokio::test]
async fn malformed_requests_get_json_errors() {
    let srv = TestServer::start_with(lenient()).await;
    let api = srv.create_cluster("bad", 3).await;
    let c = srv.client();
    let nodes = api.url("/nodes");
    let sec = Some(api.secret.as_str());
    let json_ct = Some("application/json");

    let (s, v, _) = raw(
        &c,
        Method::POST,
        &nodes,
        sec,
        json_ct,
        b"{not json".to_vec(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "malformed_json");

    let (s, v, _) = raw(
        &c,
        Method::POST,
        &nodes,
        sec,
        json_ct,
        br#"{"node_id": 5}"#.to_vec(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_request");

    let body = serde_json::to_vec(
        &json!({"node_id": "bad id with spaces", "hostname": "h", "advertise_addr": "198.18.0.1"}),
    )
    .unwrap();
    let (s, v, _) = raw(&c, Method::POST, &nodes, sec, json_ct, body).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_request");

    let (s, v, _) = raw(
        &c,
        Method::POST,
        &nodes,
        sec,
        Some("text/plain"),
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_error(&v, "unsupported_media_type");
    let (s, v, _) = raw(&c, Method::POST, &nodes, sec, None, b"{}".to_vec()).await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_error(&v, "unsupported_media_type");

    let big = vec![b' '; 70 * 1024];
    let (s, v, _) = raw(&c, Method::POST, &nodes, sec, json_ct, big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error(&v, "payload_too_large");

    for path in [
        "/v1/nope",
        "/v2/clusters/bad",
        "/",
        "/v1/clusters/bad/nodes/extra",
    ] {
        let (s, v, _) = raw(
            &c,
            Method::GET,
            &format!("{}{path}", srv.base),
            sec,
            None,
            vec![],
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
        assert_error(&v, "not_found");
    }
    for (m, path) in [
        (Method::DELETE, "/v1/clusters/bad/claim"),
        (Method::GET, "/v1/clusters/bad/publish"),
        (Method::POST, "/healthz"),
        (Method::PATCH, "/v1/clusters/bad/docs/x"),
    ] {
        let (s, v, _) = raw(
            &c,
            m.clone(),
            &format!("{}{path}", srv.base),
            sec,
            None,
            vec![],
        )
        .await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{m} {path}");
        assert_error(&v, "method_not_allowed");
    }

    for q in [
        "/join",
        "/join?node_id=a&wait=abc",
        "/join?node_id=a&wait=61",
        "/docs/x?after=-1",
    ] {
        let (s, v, _) = raw(&c, Method::GET, &api.url(q), sec, None, vec![]).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{q}");
        assert_error(&v, "bad_query");
    }
    let (s, v, _) = raw(
        &c,
        Method::GET,
        &api.url("/docs/Bad_Name"),
        sec,
        None,
        vec![],
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_name");

    assert_eq!(srv.get("/healthz").await.0, StatusCode::OK);
    srv.stop().await;
}

#[tokio::test]
async fn missing_wrong_secret_and_unknown_cluster_look_the_same() {
    let srv = TestServer::start_with(lenient()).await;
    let api = srv.create_cluster("auth", 3).await;
    let c = srv.client();
    let mut bodies = vec![];
    for (url, bearer) in [
        (api.url(""), None),
        (api.url(""), Some("wrong-secret-wrong-secret")),
        (api.url(""), Some(api.secret.as_str())),
        (
            format!("{}/v1/clusters/nope", srv.base),
            Some(api.secret.as_str()),
        ),
        (
            format!("{}/v1/clusters/NOPE", srv.base),
            Some(api.secret.as_str()),
        ),
        (
            format!("{}/v1/admin/clusters", srv.admin_base),
            Some(api.secret.as_str()),
        ),
    ] {
        let (s, v, _) = raw(&c, Method::GET, &url, bearer, None, vec![]).await;
        if bearer == Some(api.secret.as_str()) && url == api.url("") {
            assert_eq!(s, StatusCode::OK);
            continue;
        }
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{url}");
        assert_error(&v, "unauthorized");
        if !url.contains("/admin/") {
            bodies.push(v);
        }
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "identical 401s: {bodies:?}"
    );
    // Auth is checked before the body is parsed.
    let (s, v, _) = raw(
        &c,
        Method::POST,
        &format!("{}/v1/clusters/nope/claim", srv.base),
        Some("x"),
        Some("application/json"),
        b"{garbage".to_vec(),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_error(&v, "unauthorized");
    assert_eq!(srv.get("/healthz").await.0, StatusCode::OK);
    srv.stop().await;
}

#[tokio::test]
async fn repeated_auth_failures_back_off_with_429() {
    let srv = TestServer::start_with(Limits {
        auth_failures_before_backoff: 5,
        max_auth_backoff: Duration::from_secs(2),
        ..Limits::default()
    })
    .await;
    let api = srv.create_cluster("brute", 3).await;
    let c = srv.client();
    for i in 0..5 {
        let (s, _, _) = raw(
            &c,
            Method::GET,
            &api.url(""),
            Some(&format!("guess-number-{i:04}-xxxxx")),
            None,
            vec![],
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "failure {i}");
    }
    // Backed off now: the next guess is refused with 429 and Retry-After.
    let (s, v, headers) = raw(
        &c,
        Method::GET,
        &api.url(""),
        Some("one-more-wrong-guess-xx"),
        None,
        vec![],
    )
    .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_error(&v, "too_many_auth_failures");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    // The right secret is checked first: it is never locked out (tests/attack.rs has more).
    let (s, _, _) = raw(
        &c,
        Method::GET,
        &api.url(""),
        Some(&api.secret),
        None,
        vec![],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    // Unauthenticated endpoints still answer.
    assert_eq!(srv.get("/healthz").await.0, StatusCode::OK);
    // Once the block runs out, a guess is answered 401 again.
    let c2 = c.clone();
    let api2 = api.clone();
    wait_for("the auth block to end", Duration::from_secs(10), || {
        let c = c2.clone();
        let api = api2.clone();
        async move {
            let (s, _, _) = raw(
                &c,
                Method::GET,
                &api.url(""),
                Some("yet-another-wrong-guess"),
                None,
                vec![],
            )
            .await;
            (s == StatusCode::UNAUTHORIZED).then_some(())
        }
    })
    .await;
    srv.stop().await;
}

fn tls_connector(fingerprint: &str) -> tokio_rustls::TlsConnector {
    install_crypto();
    let pin = swarmstrap_wire::parse_fingerprint(fingerprint).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(swarmstrap_wire::pin::pinned_client_config(pin)))
}

/// Read until the server closes the connection (or the deadline passes); returns what came.
async fn read_until_closed<R: AsyncReadExt + Unpin>(
    r: &mut R,
    deadline: Duration,
) -> Option<Vec<u8>> {
    let mut out = vec![];
    let mut buf = [0u8; 4096];
    let end = Instant::now() + deadline;
    loop {
        match tokio::time::timeout_at(end.into(), r.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn short_timeouts() -> Limits {
    Limits {
        header_read_timeout: Duration::from_secs(1),
        body_read_timeout: Duration::from_secs(1),
        tls_handshake_timeout: Duration::from_secs(1),
        ..Limits::default()
    }
}

#[tokio::test]
async fn slow_header_client_is_cut_off() {
    let srv = TestServer::start_with(short_timeouts()).await;
    let tcp = TcpStream::connect(srv.addr).await.unwrap();
    let domain = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tls_connector(&srv.fingerprint)
        .connect(domain, tcp)
        .await
        .unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let started = Instant::now();
    // Dribble header bytes, one line every 200 ms, for longer than the header timeout.
    let dribble = tokio::spawn(async move {
        let _ = wr.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
        for i in 0..50 {
            if wr
                .write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
            let _ = wr.flush().await;
            tokio::time::sleep(Duration::from_millis(200)).await; // the slow client itself
        }
    });
    let got = read_until_closed(&mut rd, Duration::from_secs(8))
        .await
        .expect("the server closes a connection that dribbles headers");
    let elapsed = started.elapsed();
    dribble.abort();
    let text = String::from_utf8_lossy(&got);
    assert!(
        got.is_empty() || text.starts_with("HTTP/1.1 408"),
        "either closed or 408: {text:?}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "cut off after {elapsed:?}"
    );
    assert_eq!(srv.get("/healthz").await.0, StatusCode::OK);
    srv.stop().await;
}

#[tokio::test]
async fn slow_body_client_gets_408() {
    let srv = TestServer::start_with(short_timeouts()).await;
    let api = srv.create_cluster("slow", 3).await;
    let tcp = TcpStream::connect(srv.addr).await.unwrap();
    let domain = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tls_connector(&srv.fingerprint)
        .connect(domain, tcp)
        .await
        .unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let head = format!(
        "POST /v1/clusters/slow/nodes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{",
        api.secret
    );
    wr.write_all(head.as_bytes()).await.unwrap();
    let dribble = tokio::spawn(async move {
        for _ in 0..50 {
            if wr.write_all(b" ").await.is_err() {
                break;
            }
            let _ = wr.flush().await;
            tokio::time::sleep(Duration::from_millis(200)).await; // the slow client itself
        }
    });
    let got = read_until_closed(&mut rd, Duration::from_secs(8))
        .await
        .expect("the server answers or closes");
    dribble.abort();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    assert!(text.contains(r#""error":"request_timeout""#), "{text:?}");
    assert_eq!(srv.get("/healthz").await.0, StatusCode::OK);
    srv.stop().await;
}

#[tokio::test]
async fn silent_tcp_client_is_dropped_before_tls() {
    let srv = TestServer::start_with(short_timeouts()).await;
    let mut tcp = TcpStream::connect(srv.addr).await.unwrap();
    let got = read_until_closed(&mut tcp, Duration::from_secs(8))
        .await
        .expect("the server drops a client that never starts TLS");
    assert!(got.is_empty());
    // Plain HTTP on the TLS port is not served either.
    let mut tcp = TcpStream::connect(srv.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut tcp, Duration::from_secs(8))
        .await
        .expect("closed");
    assert!(!String::from_utf8_lossy(&got).contains("\"ok\""));
    assert_eq!(srv.get("/healthz").await.0, StatusCode::OK);
    srv.stop().await;
}

#[tokio::test]
async fn long_poll_cap_answers_503() {
    let srv = TestServer::start_with(Limits {
        max_long_polls: 2,
        ..Limits::default()
    })
    .await;
    let api = srv.create_cluster("cap", 3).await;
    api.register("w", "worker").await;
    let mut parked = vec![];
    for _ in 0..2 {
        let api = api.clone();
        parked.push(tokio::spawn(async move {
            api.call(Method::GET, "/join?node_id=w&wait=30", None).await
        }));
    }
    let s = &srv;
    wait_for("two parked long-polls", Duration::from_secs(10), || async move {
        (s.metric("swarm_coordinator_open_long_polls ").await >= 2.0).then_some(())
    })
    .await;
    let cred = api.cred("w").unwrap();
    let resp = srv
        .client()
        .get(api.url("/join?node_id=w&wait=30"))
        .bearer_auth(&api.secret)
        .header(NODE_CREDENTIAL, &cred)
        .send()
        .await
        .unwrap();
    let (st, headers) = (resp.status(), resp.headers().clone());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert_error(&v, "too_many_long_polls");
    assert!(headers.contains_key("retry-after"));
    // A request that need not wait is still served.
    let (st, _) = api.call(Method::GET, "/join?node_id=w", None).await;
    assert_eq!(st, StatusCode::OK);
    // Shutdown wakes the parked long-polls at once.
    let stopping = Instant::now();
    srv.stop().await;
    for p in parked {
        let (st, v) = p.await.unwrap();
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    assert!(stopping.elapsed() < Duration::from_secs(5));
}

/// `/sync` and `/adopt` (wire/src/rules.rs): authenticated like publish, every bad input a
/// JSON 4xx, nothing stored.
#[tokio::test]
async fn sync_and_adopt_refuse_bad_input_with_json_errors() {
    let srv = TestServer::start_with(lenient()).await;
    let api = srv.create_cluster("follow", 3).await;
    let other = srv.create_cluster("other", 3).await;
    let c = srv.client();
    let sec = Some(api.secret.as_str());
    let json_ct = Some("application/json");
    let adopt = json!({
        "node_id": "a", "hostname": "host-a", "advertise_addr": "198.18.0.20",
        "swarm_id": "swarm-live", "ca_digest": format!("sha256:{}", "cd".repeat(32)),
        "manager_addrs": ["198.18.0.20:2377"], "manager_token": "SWMTKN-1-secret-manager",
        "worker_token": "SWMTKN-1-secret-worker", "managers": 1,
    });
    let sync = json!({
        "node_id": "a", "swarm_id": "swarm-live", "manager_addrs": ["198.18.0.20:2377"],
        "managers": 1, "members": [{"node_id": "a", "role": "manager"}],
    });
    for (route, body) in [("/sync", &sync), ("/adopt", &adopt)] {
        let url = api.url(route);
        let bytes = serde_json::to_vec(body).unwrap();
        // No secret, a wrong one, another cluster's: the same 401, before the body is read.
        for bearer in [
            None,
            Some("wrong-secret-wrong-secret"),
            Some(other.secret.as_str()),
        ] {
            let (s, v, _) = raw(&c, Method::POST, &url, bearer, json_ct, bytes.clone()).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{route} {bearer:?}");
            assert_error(&v, "unauthorized");
        }
        let (s, v, _) = raw(&c, Method::POST, &url, sec, json_ct, b"{not json".to_vec()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{route}");
        assert_error(&v, "malformed_json");
        let (s, v, _) = raw(
            &c,
            Method::POST,
            &url,
            sec,
            json_ct,
            b"{\"node_id\": 5}".to_vec(),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{route}");
        assert_error(&v, "invalid_request");
        let (s, v, _) = raw(
            &c,
            Method::POST,
            &url,
            sec,
            Some("text/plain"),
            bytes.clone(),
        )
        .await;
        assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{route}");
        assert_error(&v, "unsupported_media_type");
        // Well-formed JSON with a field the rules refuse.
        for (field, value) in [
            ("node_id", json!("bad id")),
            ("swarm_id", json!("two words")),
            ("manager_addrs", json!([])),
            ("managers", json!(5000)),
        ] {
            let mut b = body.clone();
            b[field] = value;
            let (s, v, _) = raw(
                &c,
                Method::POST,
                &url,
                sec,
                json_ct,
                serde_json::to_vec(&b).unwrap(),
            )
            .await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{route} {field}");
            assert_error(&v, "invalid_request");
            assert!(!v.to_string().contains("SWMTKN"), "{v}");
        }
        let (s, v, _) = raw(&c, Method::GET, &url, sec, None, vec![]).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{route}");
        assert_error(&v, "method_not_allowed");
    }
    let mut bad = adopt.clone();
    bad["ca_digest"] = json!("md5:00");
    let (s, v, _) = raw(
        &c,
        Method::POST,
        &api.url("/adopt"),
        sec,
        json_ct,
        serde_json::to_vec(&bad).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_request");
    let mut bad = adopt.clone();
    bad["worker_token"] = json!("");
    let (s, v, _) = raw(
        &c,
        Method::POST,
        &api.url("/adopt"),
        sec,
        json_ct,
        serde_json::to_vec(&bad).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_request");
    let mut bad = sync.clone();
    bad["members"] = json!([{"node_id": "a", "role": "leader"}]);
    let (s, v, _) = raw(
        &c,
        Method::POST,
        &api.url("/sync"),
        sec,
        json_ct,
        serde_json::to_vec(&bad).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_request");
    // Body limits: an adoption is an ordinary request (64 KiB); a sync may list 10,000
    // members (2 MiB), and not more.
    let (s, v, _) = raw(
        &c,
        Method::POST,
        &api.url("/adopt"),
        sec,
        json_ct,
        vec![b' '; 70 * 1024],
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error(&v, "payload_too_large");
    let (s, v, _) = raw(
        &c,
        Method::POST,
        &api.url("/sync"),
        sec,
        json_ct,
        vec![b' '; 2 * 1024 * 1024 + 1],
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_error(&v, "payload_too_large");
    let mut many = sync.clone();
    many["members"] = json!((0..10_000)
        .map(|i| json!({"node_id": format!("{i:0>100}"), "role": "worker"}))
        .collect::<Vec<_>>());
    let bytes = serde_json::to_vec(&many).unwrap();
    assert!(bytes.len() > 1024 * 1024, "{}", bytes.len());
    let (s, v, _) = raw(&c, Method::POST, &api.url("/sync"), sec, json_ct, bytes).await;
    assert_eq!(s, StatusCode::CONFLICT, "read and judged by the rules: {v}");
    assert_error(&v, "swarm_mismatch");
    many["members"] = json!((0..10_001)
        .map(|i| json!({"node_id": format!("n{i}"), "role": "worker"}))
        .collect::<Vec<_>>());
    let (s, v, _) = raw(
        &c,
        Method::POST,
        &api.url("/sync"),
        sec,
        json_ct,
        serde_json::to_vec(&many).unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&v, "invalid_request");
    // Nothing of it was stored.
    let st = api.status().await;
    assert_eq!(st["phase"], "open");
    assert_eq!(st["nodes"], json!([]));
    assert_eq!(srv.get("/healthz").await.0, StatusCode::OK);
    srv.stop().await;
}
