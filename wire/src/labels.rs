//! Node labels a node asks for (from its cloud tags): the rules every party checks them by.
//!
//! A node publishes the labels it wants in its registration ([`crate::RegisterRequest::labels`]);
//! the rendezvous refuses a registration whose labels break these rules, and the raft leader's
//! agent sets them on that node only. They are the node's *claims*: never a security boundary.
//!
//! The character sets are the load-balancer membership document's (labels reach it and a
//! template may print them), so a label that passes here is accepted there too.

use std::collections::BTreeMap;

/// Most labels one node may ask for.
pub const MAX_NODE_LABELS: usize = 32;
/// Longest label key (bytes).
pub const MAX_LABEL_KEY: usize = 128;
/// Longest label value (bytes).
pub const MAX_LABEL_VALUE: usize = 256;

/// Key prefixes no tag may set: Docker's own namespaces, and swarmstrap's (the agent keeps its
/// bookkeeping there, e.g. [`MANAGED_LABELS_KEY`]). Compared case-insensitively.
pub const RESERVED_PREFIXES: [&str; 4] = [
    "com.docker.",
    "io.docker.",
    "org.dockerproject.",
    "swarmstrap.",
];

/// The node label in which the leader's agent records which label keys it set from the node's
/// tags (comma-separated, sorted): it removes only those, and never takes over a key an operator
/// set by hand.
pub const MANAGED_LABELS_KEY: &str = "swarmstrap.managed-labels";

/// Check one label a node asks for. The error says what is wrong (the value is not echoed: it
/// may be long; the key is, it passed a short length check first or is cut).
pub fn validate_node_label(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_LABEL_KEY {
        return Err(format!(
            "label key {:?}: must be 1-{MAX_LABEL_KEY} bytes",
            cut(key)
        ));
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'))
    {
        return Err(format!(
            "label key {key:?}: use only A-Z, a-z, 0-9, '.', '_', '/', '-'"
        ));
    }
    if !key.as_bytes()[0].is_ascii_alphanumeric()
        || !key.as_bytes()[key.len() - 1].is_ascii_alphanumeric()
    {
        return Err(format!(
            "label key {key:?}: must start and end with a letter or digit"
        ));
    }
    let lower = key.to_ascii_lowercase();
    if let Some(p) = RESERVED_PREFIXES.iter().find(|p| lower.starts_with(*p)) {
        return Err(format!(
            "label key {key:?}: the prefix {p:?} is reserved (Docker's or swarmstrap's own labels)"
        ));
    }
    if value.len() > MAX_LABEL_VALUE {
        return Err(format!(
            "label {key:?}: the value is longer than {MAX_LABEL_VALUE} bytes"
        ));
    }
    if !value.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b' ' | b'.' | b'_' | b':' | b'/' | b'=' | b',' | b'@' | b'+' | b'-'
            )
    }) {
        return Err(format!(
            "label {key:?}: the value may hold only A-Z, a-z, 0-9, space and . _ : / = , @ + -"
        ));
    }
    Ok(())
}

/// Check the whole set a node asks for: at most [`MAX_NODE_LABELS`], each valid.
pub fn validate_node_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > MAX_NODE_LABELS {
        return Err(format!(
            "{} node labels asked for; at most {MAX_NODE_LABELS} are allowed (remove tags)",
            labels.len()
        ));
    }
    for (k, v) in labels {
        validate_node_label(k, v)?;
    }
    Ok(())
}

fn cut(s: &str) -> String {
    s.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_values_and_reserved_prefixes() {
        assert!(validate_node_label("zone", "eu-west-1a").is_ok());
        assert!(validate_node_label("team.io/gpu", "a100 x2").is_ok());
        assert!(validate_node_label("zone", "").is_ok());
        for bad in ["", ".zone", "zone-", "a b", "a{b", "a;b"] {
            assert!(validate_node_label(bad, "v").is_err(), "{bad:?}");
        }
        assert!(validate_node_label(&"k".repeat(129), "v").is_err());
        for reserved in [
            "com.docker.x",
            "Com.Docker.x",
            "swarmstrap.managed-labels",
            "io.docker.y",
        ] {
            let e = validate_node_label(reserved, "v").unwrap_err();
            assert!(e.contains("reserved"), "{e}");
        }
        for bad in ["a;b", "${x}", "a\nb", "{}", "'"] {
            assert!(validate_node_label("k", bad).is_err(), "{bad:?}");
        }
        assert!(validate_node_label("k", &"v".repeat(257)).is_err());
        let many: BTreeMap<String, String> = (0..=MAX_NODE_LABELS)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        assert!(validate_node_labels(&many).unwrap_err().contains("at most"));
    }
}
