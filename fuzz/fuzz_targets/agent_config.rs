//! Fuzz the agent's configuration: the TOML file (`FileConfig::parse`), the `SWARM_AGENT_*`
//! environment (`Overrides::from_env`), flags, and their merge (`Config::load_with`, which
//! reads the file from disk, and `Config::resolve`).
//!
//! Input format (UTF-8 text): the TOML file, then optionally a line `#%ENV` followed by
//! `NAME=value` lines (the environment), then optionally a line `#%FLAGS` followed by
//! `NAME=value` lines (flags, named like their environment variables). `{{secret}}` stands for
//! a join secret.
//!
//! Properties:
//! - nothing panics; every error renders a non-empty one-line message;
//! - `load_with` (file on disk) and `parse` + `resolve` agree;
//! - a resolved config is valid (cluster name, manager target, lease TTL, LB services, URL);
//! - when the join secret appears in the input only as the value of a secret-like key
//!   (`join_secret = "…"`, `SWARM_AGENT_JOIN_SECRET=…`, a mistake an operator may well make),
//!   it appears in no error message and in no `Debug` of the parsed or resolved config.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use swarm_agent::config::{
    BackendKind, Config, ConfigError, CoordinatorTls, FileConfig, Overrides, LEASE_TTL_RANGE_SECS,
};

const SECRET: &str = "jsec-5f0c2e9b7a1d4c3e8f6a0b2d4c6e8a1f";

/// The per-process file `load_with` reads.
fn config_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let base = ["/dev/shm", "/tmp"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        base.join(format!("swarmstrap-fuzz-agent-{}.toml", std::process::id()))
    })
}

fn vars(section: &str) -> HashMap<String, String> {
    section
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .collect()
}

/// Split the input into (TOML, environment, flags) at the `#%ENV` and `#%FLAGS` lines.
fn sections(text: &str) -> (&str, &str, &str) {
    let env = text.find("\n#%ENV\n");
    let flags = text.find("\n#%FLAGS\n");
    let end = |from: usize| {
        [env, flags]
            .into_iter()
            .flatten()
            .filter(|&i| i >= from)
            .min()
            .unwrap_or(text.len())
    };
    let section = |at: Option<usize>, marker: &str| match at {
        Some(i) => &text[i + marker.len()..end(i + marker.len())],
        None => "",
    };
    (
        &text[..end(0)],
        section(env, "\n#%ENV\n"),
        section(flags, "\n#%FLAGS\n"),
    )
}

/// Is this a line that assigns the secret to a secret-like key (TOML or environment)?
fn secret_assignment(line: &str) -> bool {
    let Some((key, value)) = line.split_once('=') else {
        return false;
    };
    let key = key.trim().trim_matches(['"', '\'']).to_ascii_lowercase();
    let value = value.trim();
    let value_is_secret = [
        SECRET.to_string(),
        format!("\"{SECRET}\""),
        format!("'{SECRET}'"),
    ]
    .contains(&value.to_string());
    let key_is_secret = ["secret", "token", "password"]
        .iter()
        .any(|w| key.contains(w))
        // These hold a path or a name, not a secret.
        && !key.ends_with("secret_file")
        && !key.ends_with("secret_name");
    value_is_secret && key_is_secret && !key.contains(&SECRET.to_ascii_lowercase())
}

fn check_error(e: &ConfigError, secret_guarded: bool, what: &str) {
    let msg = e.to_string();
    assert!(!msg.trim().is_empty(), "{what}: empty error message: {e:?}");
    assert!(
        !msg.contains('\n'),
        "{what}: error message is not one line: {msg:?}"
    );
    if secret_guarded {
        assert!(
            !msg.contains(SECRET),
            "{what}: the join secret leaked: {msg}"
        );
        assert!(
            !format!("{e:?}").contains(SECRET),
            "{what}: the join secret leaked in Debug: {e:?}"
        );
    }
}

fn check_config(c: &Config) {
    swarmstrap_wire::validate_name(&c.cluster).expect("resolved cluster name is valid");
    swarmstrap_wire::validate_target_managers(c.target_managers).expect("resolved target is valid");
    let (lo, hi) = LEASE_TTL_RANGE_SECS;
    assert!(
        (lo..=hi).contains(&c.lease_ttl.as_secs()),
        "lease TTL {c:?}"
    );
    assert!(!c.lb.services.is_empty(), "no LB service: {c:?}");
    for (i, s) in c.lb.services.iter().enumerate() {
        assert!(s.port > 0 && s.listen > 0, "LB port 0: {c:?}");
        assert!(
            !c.lb.services[..i].iter().any(|o| o.name == s.name),
            "duplicate LB service: {c:?}"
        );
    }
    if c.backend == BackendKind::Coordinator {
        let co = c
            .coordinator
            .as_ref()
            .expect("coordinator backend has a URL");
        assert!(!co.url.ends_with('/'), "URL with a trailing slash: {c:?}");
        match co.tls {
            CoordinatorTls::PlainHttp => assert!(co.url.starts_with("http://"), "{c:?}"),
            _ => assert!(co.url.starts_with("https://"), "{c:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let text = text.replace("{{secret}}", SECRET);
    let (toml_text, env_text, flags_text) = sections(&text);

    // The secret property applies when every line that holds the secret assigns it to a
    // secret-like key.
    let secret_guarded = text.contains(SECRET)
        && text
            .lines()
            .filter(|l| l.contains(SECRET))
            .all(secret_assignment);

    let path = config_path();
    let parsed = FileConfig::parse(toml_text, path);
    match &parsed {
        Ok(f) => {
            if secret_guarded {
                assert!(
                    !format!("{f:?}").contains(SECRET),
                    "the join secret is in the parsed file's Debug: {f:?}"
                );
            }
        }
        Err(e) => check_error(e, secret_guarded, "FileConfig::parse"),
    }

    let env_map = vars(env_text);
    let env = match Overrides::from_env(|k| env_map.get(k).cloned()) {
        Ok(env) => env,
        Err(e) => return check_error(&e, secret_guarded, "Overrides::from_env (env)"),
    };
    let flag_map = vars(flags_text);
    let mut flags = match Overrides::from_env(|k| flag_map.get(k).cloned()) {
        Ok(flags) => flags,
        Err(e) => return check_error(&e, secret_guarded, "Overrides::from_env (flags)"),
    };
    if secret_guarded {
        for o in [&env, &flags] {
            assert!(
                !format!("{o:?}").contains(SECRET),
                "the join secret is in the overrides' Debug: {o:?}"
            );
        }
    }
    // The file is always ours (never a path from the input: /dev/zero would never end).
    flags.config = Some(path.to_path_buf());
    std::fs::write(path, toml_text).expect("write the config file");

    let loaded = Config::load_with(&flags, &env);
    // libFuzzer exits without destructors: leave no file behind.
    let _ = std::fs::remove_file(path);
    let resolved = parsed.and_then(|f| Config::resolve(f, Some(path.to_path_buf()), &env, &flags));
    match (&loaded, &resolved) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "load_with and parse + resolve disagree");
            check_config(a);
            if secret_guarded {
                assert!(
                    !format!("{a:?}").contains(SECRET),
                    "the join secret is in the config's Debug: {a:?}"
                );
            }
        }
        (Err(a), Err(b)) => {
            assert_eq!(
                a.to_string(),
                b.to_string(),
                "load_with and parse + resolve fail differently"
            );
            check_error(a, secret_guarded, "Config::load_with");
        }
        _ => panic!("load_with and parse + resolve disagree: {loaded:?} vs {resolved:?}"),
    }
});
