//! Fuzz the rulebook's typed documents and node credentials (`swarmstrap_wire::rules`: the
//! rules every backend runs), with the agent's load-balancer rendering behind an accepted
//! membership document.
//!
//! Input: byte 0 picks the document name, byte 1 the writer and the credential it presents,
//! byte 2 the stored document the write replaces; the rest is the body (JSON; an input whose
//! rest is not JSON is used as a presented credential for a registration instead).
//!
//! The cluster: manager `m` and worker `w` registered with their credentials, `w2` a worker
//! whose drain a manager asked for; `ghost` never registered.
//!
//! Properties:
//! - `put_doc` and `register` never panic; a refusal changes nothing;
//! - only the writer's own credential is accepted (`bad_node_credential` otherwise), an
//!   unregistered writer is `node_not_registered`, a name outside `KNOWN_DOCS` `invalid_name`;
//! - a worker never writes `membership` or `keeper`; an accepted worker write of `drains`
//!   changes only entries whose `agent_node_id` is the worker, of `rejoins` only its own entry;
//! - an accepted membership document parses as the agent's `Membership`, the agent's own member
//!   checks (`Member::problem`) skip none of its nodes (they agree with the rulebook), no value
//!   holds nginx syntax (`;`, braces, quotes, `$`, `\`, `#`, control characters), and the
//!   built-in config and a template printing every field keep their fixed structure;
//! - registering an existing node id is accepted exactly with its credential (and issues
//!   nothing); a new node id is issued the fresh credential, whose digest alone is stored.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use swarm_agent::config::LbService;
use swarm_agent::lb::membership::Membership;
use swarm_agent::lb::render::{render_default, render_template};
use swarmstrap_wire::rules::{self, ClusterState, Code, Memory, KNOWN_DOCS};
use swarmstrap_wire::{Document, DocumentWrite, RegisterRequest, RequestedRole, Role, Secret};

const NOW: u64 = 1_700_000_000_000;

fn cred(id: &str) -> Secret {
    Secret::new(format!("credential-of-{id}-0123456789abcdef0123456789"))
}

fn reg(id: &str, role: RequestedRole) -> RegisterRequest {
    RegisterRequest {
        node_id: id.into(),
        hostname: id.into(),
        advertise_addr: "198.18.0.9".into(),
        role,
        joined_through: None,
        labels: None,
    }
}

/// `m` (manager), `w` and `w2` (workers), each with `cred(id)`.
fn cluster() -> Memory {
    let mut mem = Memory::new(ClusterState::new("fuzz", 1).expect("a valid target"));
    for (id, role) in [
        ("m", RequestedRole::Manager),
        ("w", RequestedRole::Worker),
        ("w2", RequestedRole::Worker),
    ] {
        let o = mem
            .register(NOW, &reg(id, role), None, &cred(id))
            .expect("set-up registration");
        mem.apply(o.change);
    }
    assert_eq!(mem.node("m").map(|n| n.role), Some(Role::Manager));
    mem
}

const NAMES: [&str; 8] = [
    "membership",
    "drains",
    "keeper",
    "rejoins",
    "counter",
    "Membership",
    "",
    "a/b",
];

const NGINX: [char; 8] = [';', '{', '}', '"', '\'', '$', '\\', '#'];

fn stored(pick: u8) -> Value {
    match pick % 3 {
        0 => Value::Null,
        1 => json!({"requests": {
            "dn-w2": {"agent_node_id": "w2", "state": "requested"},
            "dn-w": {"agent_node_id": "w", "state": "requested"}
        }}),
        _ => json!({"requests": {
            "w": {"state": "requested"}, "w2": {"state": "requested"}
        }}),
    }
}

/// Every string anywhere in a JSON value.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.iter().for_each(|(k, x)| {
            out.push(k.clone());
            strings(x, out)
        }),
        _ => {}
    }
}

fn check_membership(body: &Value) {
    let m = Membership::from_body(body)
        .unwrap_or_else(|e| panic!("an accepted membership does not parse: {e}: {body}"));
    let Some(m) = m else { return };
    let (safe, skipped) = m.checked();
    assert!(
        skipped.is_empty(),
        "the agent skips members the rulebook accepted: {skipped:?}"
    );
    assert_eq!(safe, m);
    let mut values = Vec::new();
    strings(body, &mut values);
    for v in &values {
        assert!(
            !v.contains(NGINX) && !v.chars().any(char::is_control),
            "an accepted membership holds nginx syntax: {v:?}"
        );
    }
    let services = [LbService {
        name: "swarm".into(),
        port: 8080,
        listen: 80,
    }];
    let conf = render_default(&m, &services);
    assert_eq!(
        (conf.matches('{').count(), conf.matches('}').count()),
        (3, 3),
        "{conf}"
    );
    assert_eq!(
        conf.matches(';').count(),
        3 + m.ready().len().max(1),
        "{conf}"
    );
    let template = "{% for n in nodes %}{{ n.id }} {{ n.hostname }} {{ n.addr }} {{ n.role }} \
                    {{ n.state }} {{ n.availability }} {{ n.leader }}{% for k, v in n.labels|items %} \
                    {{ k }}={{ v }}{% endfor %}\n{% endfor %}";
    let out = render_template(
        std::path::Path::new("fuzz.j2"),
        template,
        "fuzz",
        &m,
        &services,
    )
    .expect("the template renders");
    assert!(!out.contains(NGINX), "{out}");
    assert_eq!(out.lines().count(), m.nodes.len());
}

/// The entries of a lifecycle document (`requests`), by key.
fn entries(v: &Value) -> BTreeMap<String, Value> {
    v.get("requests")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

fn put(mem: &Memory, data: &[u8], body: Value) {
    let name = NAMES[data[0] as usize % NAMES.len()];
    let writers = ["m", "w", "ghost", ""];
    let writer = writers[data[1] as usize % writers.len()];
    // Presented: its own, another node's, none, a guess.
    let presented = match (data[1] / 4) % 4 {
        0 => Some(cred(writer)),
        1 => Some(cred(if writer == "m" { "w" } else { "m" })),
        2 => None,
        _ => Some(Secret::new("0".repeat(64))),
    };
    let own = (data[1] / 4) % 4 == 0;
    let current = Document {
        version: 3,
        body: stored(data[2]),
    };
    let write = DocumentWrite {
        expected_version: 3,
        body: body.clone(),
        node_id: writer.into(),
    };
    let before = mem.clone();
    let r = rules::put_doc(
        &mem.state,
        mem.node(writer),
        &current,
        name,
        &write,
        presented.as_ref(),
    );
    assert_eq!(mem.state, before.state, "put_doc is pure");
    let accepted = match r {
        Ok(o) => o,
        Err(e) => {
            if !KNOWN_DOCS.contains(&name) {
                assert_eq!(e.code, Code::InvalidName, "{name:?}: {e}");
            }
            return;
        }
    };
    assert!(
        KNOWN_DOCS.contains(&name),
        "unknown document {name:?} accepted"
    );
    assert!(
        own && (writer == "m" || writer == "w"),
        "{writer:?} wrote {name} without its own credential"
    );
    assert_eq!(accepted.answer.body, body);
    if writer == "w" {
        assert!(
            name != "membership" && name != "keeper",
            "a worker wrote {name}"
        );
        let (old, new) = (entries(&current.body), entries(&body));
        let keys: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
        for k in keys {
            if old.get(k) == new.get(k) {
                continue;
            }
            for v in [old.get(k), new.get(k)].into_iter().flatten() {
                let owner = match name {
                    "drains" => v.get("agent_node_id").and_then(Value::as_str),
                    _ => Some(k.as_str()),
                };
                assert_eq!(owner, Some("w"), "a worker changed {name} entry {k:?}");
            }
        }
    }
    if name == "membership" {
        check_membership(&body);
    }
}

fn register(mem: &Memory, data: &[u8], presented: &[u8]) {
    let ids = ["m", "w", "new"];
    let id = ids[data[0] as usize % ids.len()];
    let presented = match data[1] % 3 {
        0 => Some(cred(id)),
        1 => Some(Secret::new(String::from_utf8_lossy(presented).into_owned())),
        _ => None,
    };
    let fresh = Secret::new("fresh-credential-0123456789abcdef0123456789");
    let role = [
        RequestedRole::Auto,
        RequestedRole::Manager,
        RequestedRole::Worker,
    ][data[2] as usize % 3];
    let r = mem.register(NOW + 1, &reg(id, role), presented.as_ref(), &fresh);
    match (id, r) {
        ("new", Ok(o)) => {
            assert_eq!(o.answer.credential.as_ref(), Some(&fresh));
            let n = &o.change.nodes[0];
            assert_eq!(
                n.credential_sha256.as_deref(),
                Some(rules::credential_sha256(&fresh).as_str())
            );
            let shown = serde_json::to_string(&o.change.nodes).unwrap();
            assert!(!shown.contains(fresh.expose()), "a credential is stored");
        }
        ("new", Err(e)) => panic!("a new node id was refused: {e}"),
        (id, Ok(o)) => {
            assert_eq!(
                presented,
                Some(cred(id)),
                "{id} registered again without its credential"
            );
            assert!(o.answer.credential.is_none(), "a credential issued twice");
        }
        (id, Err(e)) => {
            assert_ne!(
                presented,
                Some(cred(id)),
                "{id}'s own credential refused: {e}"
            );
            assert_eq!(e.code, Code::BadNodeCredential, "{e}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let mem = cluster();
    let rest = &data[3..];
    match serde_json::from_slice::<Value>(rest) {
        Ok(body) => put(&mem, data, body),
        Err(_) => register(&mem, data, rest),
    }
});
