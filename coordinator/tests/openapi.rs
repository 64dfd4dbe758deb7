//! openapi.yaml describes exactly the routes the router serves: every route in the router is
//! in the spec and vice versa, with the same methods; and probing each spec operation on a
//! real server reaches a handler (no 404 route / 405) with a status the spec lists.

mod common;

use common::*;
use reqwest::Method;
use std::collections::{BTreeMap, BTreeSet};
use swarm_coordinator::api::route_table;

/// path → method → documented status codes, read from the `paths:` section. The spec keeps
/// a plain layout for this: paths at 2 spaces, methods at 4, `responses:` at 6, codes at 8.
fn spec_operations() -> BTreeMap<String, BTreeMap<String, BTreeSet<u16>>> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml"))
        .expect("read openapi.yaml");
    let mut ops: BTreeMap<String, BTreeMap<String, BTreeSet<u16>>> = BTreeMap::new();
    let mut in_paths = false;
    let mut path: Option<String> = None;
    let mut method: Option<String> = None;
    let mut in_responses = false;
    for line in text.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let item = line.trim();
        if indent == 0 {
            in_paths = item == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        match indent {
            2 => {
                let p = item.strip_suffix(':').expect("a path key");
                assert!(p.starts_with('/'), "path keys start with '/': {p}");
                path = Some(p.to_string());
                method = None;
                ops.entry(p.to_string()).or_default();
            }
            4 => {
                let m = item.strip_suffix(':').unwrap_or(item);
                if ["get", "put", "post", "delete", "patch", "head", "options"].contains(&m) {
                    method = Some(m.to_uppercase());
                    ops.get_mut(path.as_ref().unwrap())
                        .unwrap()
                        .insert(m.to_uppercase(), BTreeSet::new());
                } else {
                    method = None;
                }
                in_responses = false;
            }
            6 => in_responses = item == "responses:" && method.is_some(),
            8 if in_responses => {
                let code = item.trim_end_matches(':').trim_matches('"');
                let code: u16 = code
                    .parse()
                    .unwrap_or_else(|_| panic!("status code key: {item}"));
                ops.get_mut(path.as_ref().unwrap())
                    .unwrap()
                    .get_mut(method.as_ref().unwrap())
                    .unwrap()
                    .insert(code);
            }
            _ => {}
        }
    }
    ops
}

#[test]
fn spec_and_router_have_the_same_routes_and_methods() {
    let spec: BTreeSet<(String, String)> = spec_operations()
        .into_iter()
        .flat_map(|(p, ms)| ms.into_keys().map(move |m| (m, p.clone())))
        .collect();
    let router: BTreeSet<(String, String)> = route_table()
        .into_iter()
        .map(|(m, p)| (m.as_str().to_string(), p.to_string()))
        .collect();
    let only_spec: Vec<_> = spec.difference(&router).collect();
    let only_router: Vec<_> = router.difference(&spec).collect();
    assert!(
        only_spec.is_empty(),
        "in openapi.yaml but not served: {only_spec:?}"
    );
    assert!(
        only_router.is_empty(),
        "served but not in openapi.yaml: {only_router:?}"
    );
    assert!(router.len() >= 15);
    // Every operation documents at least one success status.
    for (p, ms) in spec_operations() {
        for (m, codes) in ms {
            assert!(
                codes.iter().any(|c| (200..300).contains(c)),
                "{m} {p} has no 2xx"
            );
        }
    }
}

#[tokio::test]
async fn every_spec_operation_reaches_a_handler() {
    let srv = TestServer::start().await;
    let api = srv.create_cluster("probe", 3).await;
    let client = srv.client();
    for (path, methods) in spec_operations() {
        let concrete = path
            .replace("{cluster}", "probe")
            .replace("{name}", "probe-doc");
        // The admin API is served on the admin listener only.
        let base = if path.starts_with("/v1/admin") {
            &srv.admin_base
        } else {
            &srv.base
        };
        let mut url = format!("{base}{concrete}");
        if path.ends_with("/join") {
            url.push_str("?node_id=probe-node");
        }
        let bearer = if path.starts_with("/v1/admin") {
            srv.admin_token.expose().to_string()
        } else {
            api.secret.clone()
        };
        for (m, codes) in methods {
            let method = Method::from_bytes(m.as_bytes()).unwrap();
            let mut req = client.request(method.clone(), &url).bearer_auth(&bearer);
            if method == Method::POST || method == Method::PUT {
                req = req.header("content-type", "application/json").body("{}");
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap();
            assert_ne!(status, 405, "{m} {path}: {body}");
            assert!(
                !body.contains(r#""error":"not_found""#),
                "{m} {path}: {body}"
            );
            assert!(
                codes.contains(&status),
                "{m} {path} answered {status}, not listed in the spec {codes:?}: {body}"
            );
        }
    }
    srv.stop().await;
}
