//! Typed documents: what each known document may hold, and which node may change what.
//!
//! - `membership` (the load-balancer node list; every value may reach an nginx template):
//!   `{"nodes": [{id, hostname, addr, role, state, availability, leader, labels}]}` with node
//!   ids `[A-Za-z0-9]{1,64}`, RFC 1123 host names, IP addresses (both may be empty: not
//!   reported by the engine), the swarm's enum values, label
//!   keys `[A-Za-z0-9._/-]{1,128}` and label values of at most 256 characters from
//!   `[A-Za-z0-9 ._:/=,@+-]` (no quote, brace, semicolon, `$`, backslash or control character:
//!   nothing that is nginx syntax). Unknown fields are refused.
//! - `drains`, `rejoins` (lifecycle requests): objects whose entries a worker may add, change or
//!   remove only for itself (`drains`: entries whose `agent_node_id` is the writer;
//!   `rejoins`: the entry keyed by the writer's node id). A manager may write any entry.
//!   A rejoin request makes its node a manager (the keeper's sync hands it the manager role),
//!   so only a manager creates or removes one: a worker only moves the state of its own,
//!   forward (`requested` → `rejoining` → `rejoined` | `failed`), with `updated_ms` and
//!   `message`, and changes nothing else in it.
//! - `keeper`: a manager only.
//!
//! Every string in any document is at most 4,096 characters without control characters (they
//! reach terminals through `swarm-agent status`).

use super::{invalid, Result};
use serde_json::{Map, Value};
use std::net::IpAddr;

const MAX_STRING: usize = 4096;

/// An RFC 1123 host name.
pub fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A label key: `[A-Za-z0-9._/-]{1,128}`.
pub fn is_label_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
}

/// A label value: at most 256 of `[A-Za-z0-9 ._:/=,@+-]` (nothing that is nginx syntax).
pub fn is_label_value(s: &str) -> bool {
    s.chars().count() <= 256
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b' ' | b'.' | b'_' | b':' | b'/' | b'=' | b',' | b'@' | b'+' | b'-'
                )
        })
}

fn is_node_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Every string anywhere in `v`: bounded, no control characters.
pub(super) fn check_strings(name: &str, v: &Value) -> Result<()> {
    match v {
        Value::String(s) => {
            if s.len() > MAX_STRING || s.chars().any(char::is_control) {
                return Err(invalid(format!(
                    "document {name:?} holds a string longer than {MAX_STRING} bytes or with a \
                     control character"
                )));
            }
            Ok(())
        }
        Value::Array(a) => a.iter().try_for_each(|x| check_strings(name, x)),
        Value::Object(o) => o.iter().try_for_each(|(k, x)| {
            check_strings(name, &Value::String(k.clone()))?;
            check_strings(name, x)
        }),
        _ => Ok(()),
    }
}

fn field<'a>(m: &'a Map<String, Value>, i: usize, key: &str) -> Result<&'a Value> {
    m.get(key)
        .ok_or_else(|| invalid(format!("membership node {i} has no {key:?}")))
}

fn str_field<'a>(m: &'a Map<String, Value>, i: usize, key: &str) -> Result<&'a str> {
    field(m, i, key)?
        .as_str()
        .ok_or_else(|| invalid(format!("membership node {i}: {key:?} must be a string")))
}

fn one_of(i: usize, key: &str, v: &str, allowed: &[&str]) -> Result<()> {
    if allowed.contains(&v) {
        Ok(())
    } else {
        Err(invalid(format!(
            "membership node {i}: {key:?} is {v:?}; it must be one of {allowed:?}"
        )))
    }
}

/// The membership document (see the module docs).
pub(super) fn check_membership(body: &Value) -> Result<()> {
    if body.is_null() {
        return Ok(());
    }
    let top = body
        .as_object()
        .ok_or_else(|| invalid("the membership document must be an object {\"nodes\": [...]}"))?;
    if let Some(k) = top.keys().find(|k| *k != "nodes") {
        return Err(invalid(format!(
            "the membership document has an unknown field {k:?}"
        )));
    }
    let nodes = top
        .get("nodes")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("the membership document must hold a \"nodes\" list"))?;
    const FIELDS: [&str; 8] = [
        "id",
        "hostname",
        "addr",
        "role",
        "state",
        "availability",
        "leader",
        "labels",
    ];
    for (i, n) in nodes.iter().enumerate() {
        let m = n
            .as_object()
            .ok_or_else(|| invalid(format!("membership node {i} must be an object")))?;
        if let Some(k) = m.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(invalid(format!(
                "membership node {i} has an unknown field {k:?}"
            )));
        }
        let id = str_field(m, i, "id")?;
        if !is_node_id(id) {
            return Err(invalid(format!(
                "membership node {i}: id {id:?} is not a node id (1-64 letters and digits)"
            )));
        }
        // Empty: the engine did not report it (a node that never reached the manager); such a
        // node takes no traffic, and refusing it would stop the whole membership.
        let host = str_field(m, i, "hostname")?;
        if !host.is_empty() && !is_hostname(host) {
            return Err(invalid(format!(
                "membership node {i}: hostname {host:?} is not an RFC 1123 host name"
            )));
        }
        let addr = str_field(m, i, "addr")?;
        if !addr.is_empty() && addr.parse::<IpAddr>().is_err() {
            return Err(invalid(format!(
                "membership node {i}: addr {addr:?} is not an IP address"
            )));
        }
        one_of(i, "role", str_field(m, i, "role")?, &["manager", "worker"])?;
        one_of(
            i,
            "state",
            str_field(m, i, "state")?,
            &["ready", "down", "disconnected", "unknown"],
        )?;
        one_of(
            i,
            "availability",
            str_field(m, i, "availability")?,
            &["active", "pause", "drain"],
        )?;
        if let Some(l) = m.get("leader") {
            if !l.is_boolean() {
                return Err(invalid(format!(
                    "membership node {i}: leader must be true or false"
                )));
            }
        }
        if let Some(labels) = m.get("labels") {
            let labels = labels
                .as_object()
                .ok_or_else(|| invalid(format!("membership node {i}: labels must be an object")))?;
            for (k, v) in labels {
                let v = v.as_str().ok_or_else(|| {
                    invalid(format!("membership node {i}: label {k:?} must be a string"))
                })?;
                if !is_label_key(k) || !is_label_value(v) {
                    return Err(invalid(format!(
                        "membership node {i}: label {k:?} = {v:?} is refused: keys are \
                         [A-Za-z0-9._/-]{{1,128}}, values at most 256 of [A-Za-z0-9 ._:/=,@+-]"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The `requests` object of a lifecycle document (`null` → empty).
fn requests<'a>(name: &str, body: &'a Value) -> Result<Option<&'a Map<String, Value>>> {
    if body.is_null() {
        return Ok(None);
    }
    let top = body
        .as_object()
        .ok_or_else(|| invalid(format!("document {name:?} must be an object")))?;
    match top.get("requests") {
        None => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(invalid(format!(
            "document {name:?}: \"requests\" must be an object"
        ))),
    }
}

/// The entries a worker's write changes (added, removed or changed), each with its owner as
/// `owner` reads it; every one must be the writer.
pub(super) fn check_own_entries(
    name: &str,
    old: &Value,
    new: &Value,
    writer: &str,
    owner: impl Fn(&str, &Value) -> Option<String>,
) -> Result<()> {
    let empty = Map::new();
    let old_r = requests(name, old).ok().flatten().unwrap_or(&empty);
    let new_r = requests(name, new)?.unwrap_or(&empty);
    if let Value::Object(top) = new {
        if let Some(k) = top.keys().find(|k| *k != "requests") {
            return Err(invalid(format!(
                "document {name:?} has an unknown field {k:?}"
            )));
        }
    }
    let keys: std::collections::BTreeSet<&String> = old_r.keys().chain(new_r.keys()).collect();
    for k in keys {
        let (o, n) = (old_r.get(k), new_r.get(k));
        if o == n {
            continue;
        }
        for v in [o, n].into_iter().flatten() {
            if owner(k, v).as_deref() != Some(writer) {
                return Err(RuleErrorExt::not_own(name, k, writer));
            }
        }
    }
    Ok(())
}

/// A worker's write of the `rejoins` document (its own entry only: [`check_own_entries`]
/// first): see the module docs.
pub(super) fn check_worker_rejoin(old: &Value, new: &Value, writer: &str) -> Result<()> {
    const NAME: &str = "rejoins";
    let o = requests(NAME, old)
        .ok()
        .flatten()
        .and_then(|m| m.get(writer));
    let n = requests(NAME, new)?.and_then(|m| m.get(writer));
    if o == n {
        return Ok(());
    }
    let refuse = |why: &str| {
        super::RuleError::new(
            super::Code::NotAManager,
            format!("node {writer:?} is a worker: in document {NAME:?} {why}"),
        )
    };
    let (Some(Value::Object(o)), Some(Value::Object(n))) = (o, n) else {
        return Err(refuse(
            "only the quorum keeper (a manager) creates or removes a rejoin request; a worker \
             only moves the state of its own",
        ));
    };
    const MUTABLE: [&str; 3] = ["state", "updated_ms", "message"];
    let keys: std::collections::BTreeSet<&String> = o.keys().chain(n.keys()).collect();
    if let Some(k) = keys
        .into_iter()
        .find(|k| !MUTABLE.contains(&k.as_str()) && o.get(*k) != n.get(*k))
    {
        return Err(refuse(&format!(
            "it may change only the state, updated_ms and message of its request, not {k:?}"
        )));
    }
    let from = o.get("state").and_then(Value::as_str).unwrap_or_default();
    let to = n.get("state").and_then(Value::as_str).unwrap_or_default();
    let allowed: &[&str] = match from {
        "requested" => &["rejoining", "rejoined", "failed"],
        "rejoining" => &["rejoined", "failed"],
        _ => &[],
    };
    if !allowed.contains(&to) {
        return Err(refuse(&format!(
            "it may move its request's state only forward, not from {from:?} to {to:?}"
        )));
    }
    Ok(())
}

struct RuleErrorExt;

impl RuleErrorExt {
    fn not_own(name: &str, key: &str, writer: &str) -> super::RuleError {
        super::RuleError::new(
            super::Code::NotAManager,
            format!(
                "node {writer:?} is a worker: in document {name:?} it may change only its own \
                 entry, not {key:?}"
            ),
        )
    }
}
