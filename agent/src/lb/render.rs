//! Membership → nginx config. The built-in rendering is the classic swarm setup (an `upstream`
//! with every Ready node at the service's published port, and a `server` that proxies to it);
//! a minijinja template replaces it for custom configs. Output is deterministic (nodes sorted
//! by address, no timestamps, no versions), so every host renders identical bytes and a
//! membership change that does not change the config does not rewrite it.
//!
//! Defense in depth: the rendezvous validates the membership document, and the rendering checks
//! every member again ([`Membership::checked`]: an IP address, an RFC 1123 host name, the
//! swarm's enum values, safe labels). A member that fails is skipped and logged, never
//! rendered, so no value from a document can be nginx syntax in the built-in config or in a
//! template's context.

use super::membership::Membership;
use crate::config::{LbConfig, LbService};
use serde::Serialize;
use std::fmt::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("cannot read the lb template {path}: {source}")]
    ReadTemplate {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the lb template {path} does not render: {message}")]
    Template { path: PathBuf, message: String },
}

/// What a template sees.
#[derive(Debug, Serialize)]
pub struct Context<'a> {
    pub cluster: &'a str,
    /// Every node (Ready or not), sorted by address: `id, hostname, addr, role, state,
    /// availability, leader, labels`.
    pub nodes: &'a [super::Member],
    /// The nodes that take traffic (Ready, not drained), one per address, sorted.
    pub ready: Vec<&'a super::Member>,
    /// `[lb] services` (or the single default one): `name, port, listen`.
    pub services: &'a [LbService],
}

/// Render with the configured template, or the built-in config when there is none.
pub fn render(cluster: &str, m: &Membership, lb: &LbConfig) -> Result<String, RenderError> {
    match &lb.template_file {
        None => Ok(render_default(m, &lb.services)),
        Some(path) => {
            let source =
                std::fs::read_to_string(path).map_err(|source| RenderError::ReadTemplate {
                    path: path.clone(),
                    source,
                })?;
            render_template(path, &source, cluster, m, &lb.services)
        }
    }
}

/// The members that may be rendered; the others are logged (once per rendering) and skipped.
fn safe(m: &Membership) -> Membership {
    let (safe, skipped) = m.checked();
    for why in skipped {
        tracing::warn!("load balancer: a membership entry is not rendered: {why}");
    }
    safe
}

/// The classic config: per service an upstream over every Ready node and a proxying server.
pub fn render_default(m: &Membership, services: &[LbService]) -> String {
    let m = safe(m);
    let ready = m.ready();
    let mut s = String::from(
        "# Written by swarm-agent from the swarm's node list; rewritten on every change.\n",
    );
    for svc in services {
        let _ = writeln!(s, "\nupstream {} {{", svc.name);
        if ready.is_empty() {
            // nginx refuses an empty upstream; a down placeholder keeps the config valid
            // (requests get 502 until a node is Ready).
            let _ = writeln!(s, "    server 127.0.0.1:{} down;", svc.port);
        }
        for n in &ready {
            let _ = writeln!(s, "    server {}:{};", host_port(&n.addr), svc.port);
        }
        let _ = writeln!(s, "}}\n");
        let _ = writeln!(s, "server {{");
        let _ = writeln!(s, "    listen {};", svc.listen);
        let _ = writeln!(s, "    location / {{");
        let _ = writeln!(s, "        proxy_pass http://{};", svc.name);
        let _ = writeln!(s, "    }}");
        let _ = writeln!(s, "}}");
    }
    s
}

/// IPv6 addresses need brackets before a port.
fn host_port(addr: &str) -> String {
    if addr.contains(':') {
        format!("[{addr}]")
    } else {
        addr.to_string()
    }
}

pub fn render_template(
    path: &Path,
    source: &str,
    cluster: &str,
    m: &Membership,
    services: &[LbService],
) -> Result<String, RenderError> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::SemiStrict);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    // Jinja2's defaults, except that the file's final newline is kept (config files end
    // with one).
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
            .expect("default delimiters are valid"),
    );
    let m = safe(m);
    let ctx = Context {
        cluster,
        nodes: &m.nodes,
        ready: m.ready(),
        services,
    };
    env.render_str(
        source,
        minijinja::Value::from(minijinja::value::Serde(&ctx)),
    )
    .map_err(|e| RenderError::Template {
        path: path.to_path_buf(),
        message: swarmstrap_wire::error_chain(&e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::membership::member;

    fn swarm() -> Membership {
        Membership::new(vec![
            member("198.18.1.3", "node3", "ready"),
            member("198.18.1.1", "node1", "ready"),
            member("198.18.1.2", "node2", "down"),
            member("198.18.1.10", "node10", "ready"),
        ])
    }

    fn svc(name: &str, port: u16, listen: u16) -> LbService {
        LbService {
            name: name.into(),
            port,
            listen,
        }
    }

    #[test]
    fn default_lists_every_ready_node_sorted_and_proxies_to_it() {
        let lb = LbConfig::default();
        let out = render("c", &swarm(), &lb).unwrap();
        let expected =
            "# Written by swarm-agent from the swarm's node list; rewritten on every change.

upstream swarm {
    server 198.18.1.1:8080;
    server 198.18.1.3:8080;
    server 198.18.1.10:8080;
}

server {
    listen 80;
    location / {
        proxy_pass http://swarm;
    }
}
";
        assert_eq!(out, expected);
        // Same swarm given in another order: identical bytes.
        let mut nodes = swarm().nodes;
        nodes.reverse();
        assert_eq!(render("c", &Membership::new(nodes), &lb).unwrap(), out);
    }

    /// Issue 14's injection: an address that closes the upstream and opens a server. Whatever
    /// the rendezvous let through, it never reaches the built-in config nor a template.
    #[test]
    fn an_injected_address_hostname_or_label_never_reaches_the_config() {
        const INJECTION: &str = "10.0.0.7; } server { listen 8081; } upstream x { server 10.0.0.8";
        let mut nodes = swarm().nodes;
        let mut evil = member(INJECTION, "evil", "ready");
        evil.id = "evil1".into();
        nodes.push(evil);
        let mut host = member("198.18.1.20", "h", "ready");
        host.hostname = "h; } server { listen 8082; }".into();
        nodes.push(host);
        let mut label = member("198.18.1.21", "l", "ready");
        label
            .labels
            .insert("zone".into(), "a; } server { listen 8083; }".into());
        nodes.push(label);
        let m = Membership::new(nodes);
        let clean = render_default(&swarm(), &[svc("web", 8080, 80)]);
        let out = render_default(&m, &[svc("web", 8080, 80)]);
        assert_eq!(out, clean, "only the valid members are rendered");
        for bad in ["8081", "8082", "8083", "10.0.0.7", "10.0.0.8", "upstream x"] {
            assert!(!out.contains(bad), "{bad} in {out}");
        }

        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("lb.j2");
        std::fs::write(
            &t,
            "{% for n in nodes %}{{ n.addr }} {{ n.hostname }} {{ n.labels }}\n{% endfor %}\
             {% for n in ready %}server {{ n.addr }};\n{% endfor %}",
        )
        .unwrap();
        let lb = LbConfig {
            template_file: Some(t),
            ..LbConfig::default()
        };
        let out = render("c", &m, &lb).unwrap();
        for bad in [
            "8081",
            "8082",
            "8083",
            "10.0.0.7",
            "upstream x",
            "listen",
            "evil",
        ] {
            assert!(!out.contains(bad), "{bad} in {out}");
        }
        assert!(out.contains("198.18.1.1 node1"), "{out}");
    }

    #[test]
    fn no_ready_node_still_renders_a_valid_upstream() {
        let m = Membership::new(vec![member("198.18.1.1", "node1", "down")]);
        let out = render_default(&m, &[svc("web", 8080, 80)]);
        assert!(out.contains("server 127.0.0.1:8080 down;"), "{out}");
    }

    #[test]
    fn several_services_get_one_upstream_and_server_each() {
        let out = render_default(&swarm(), &[svc("web", 8080, 80), svc("api", 9000, 8000)]);
        assert!(
            out.contains("upstream web {\n    server 198.18.1.1:8080;"),
            "{out}"
        );
        assert!(
            out.contains("upstream api {\n    server 198.18.1.1:9000;"),
            "{out}"
        );
        assert!(out.contains("listen 8000;\n    location / {\n        proxy_pass http://api;"));
        assert!(out.contains("listen 80;\n    location / {\n        proxy_pass http://web;"));
        assert!(
            !out.contains("198.18.1.2"),
            "a Down node is not listed: {out}"
        );
    }

    #[test]
    fn a_template_sees_nodes_ready_services_and_labels() {
        let mut m = swarm();
        m.nodes[0].labels.insert("zone".into(), "a".into());
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("lb.conf.j2");
        std::fs::write(
            &t,
            "# {{ cluster }}\n{% for s in services %}upstream {{ s.name }} {\n{% for n in ready %}  server {{ n.addr }}:{{ s.port }}; # {{ n.hostname }}{% if n.labels.zone %} zone={{ n.labels.zone }}{% endif %}\n{% endfor %}}\n{% endfor %}# all: {{ nodes | length }}\n",
        )
        .unwrap();
        let lb = LbConfig {
            template_file: Some(t),
            services: vec![svc("web", 8080, 80)],
            ..LbConfig::default()
        };
        let out = render("prod", &m, &lb).unwrap();
        assert_eq!(
            out,
            "# prod\nupstream web {\n  server 198.18.1.1:8080; # node1 zone=a\n  server 198.18.1.3:8080; # node3\n  server 198.18.1.10:8080; # node10\n}\n# all: 4\n"
        );
    }

    #[test]
    fn an_invalid_template_or_an_unknown_variable_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("bad.j2");
        std::fs::write(&t, "{% for n in ready %}{{ n.addr }").unwrap();
        let lb = LbConfig {
            template_file: Some(t.clone()),
            ..LbConfig::default()
        };
        let err = render("c", &swarm(), &lb).unwrap_err().to_string();
        assert!(
            err.contains("bad.j2") && err.contains("does not render"),
            "{err}"
        );
        std::fs::write(&t, "{{ nodez }}").unwrap();
        let err = render("c", &swarm(), &lb).unwrap_err().to_string();
        assert!(err.contains("undefined"), "{err}");
        let lb = LbConfig {
            template_file: Some(dir.path().join("missing.j2")),
            ..LbConfig::default()
        };
        let err = render("c", &swarm(), &lb).unwrap_err().to_string();
        assert!(err.contains("missing.j2"), "{err}");
    }
}
