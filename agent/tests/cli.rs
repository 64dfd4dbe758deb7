//! The binary's command line and exit codes, run as a process.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_swarm-agent"));
    // Keep the host environment out of the tests.
    for (k, _) in std::env::vars() {
        if k.starts_with("SWARM_AGENT_") {
            c.env_remove(k);
        }
    }
    c
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_config(dir: &std::path::Path, extra: &str, secret_mode: u32) -> std::path::PathBuf {
    let secret = dir.join("join-secret");
    std::fs::write(&secret, "correct-horse-battery-staple\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(secret_mode)).unwrap();
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "cluster = \"prod\"\nadvertise_addr = \"127.0.0.1\"\n\
             docker_host = \"unix://{d}/docker.sock\"\nstate_dir = \"{d}/state\"\n\
             join_secret_file = \"{s}\"\n{extra}[coordinator]\nurl = \"http://127.0.0.1:{p}\"\ninsecure_http = true\n",
            d = dir.display(),
            s = secret.display(),
            p = closed_port()
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn version() {
    let out = bin().arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("swarm-agent "), "{text}");
}

#[test]
fn status_with_unreadable_config_exits_2() {
    let out = bin()
        .args(["status", "--config", "/nonexistent/config.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/config.toml"), "{err}");
}

#[test]
fn status_json_when_everything_is_down_exits_1_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "", 0o600);
    let started = Instant::now();
    let out = bin()
        .args(["status", "--json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cluster"], "prod");
    assert_eq!(v["healthy"], false);
    assert_eq!(v["engine"]["reachable"], false);
    assert_eq!(v["backend"]["reachable"], false);
    assert_eq!(v["backend"]["kind"], "coordinator");

    let out = bin()
        .args(["status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("cluster:") && text.contains("UNREACHABLE"),
        "{text}"
    );
}

#[test]
fn run_refuses_unknown_keys_and_open_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "lease_ttl = 5\n", 0o600);
    // Configuration errors exit 78 (EX_CONFIG), which the systemd unit does not restart.
    let out = bin().args(["run", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lease_ttl"), "{err}");

    let cfg = write_config(dir.path(), "", 0o644);
    let out = bin().args(["run", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
    assert!(
        !err.contains("correct-horse"),
        "the secret never reaches stderr"
    );
}

#[test]
fn run_stops_cleanly_on_sigterm_while_waiting_for_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "", 0o600);
    let mut child = bin()
        .args(["run", "--config"])
        .arg(&cfg)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait (with a deadline) until it has written its state: it is then in its retry loop.
    let state = dir.path().join("state/state.json");
    let started = Instant::now();
    while !state.exists() {
        assert!(started.elapsed() < Duration::from_secs(10), "no state file");
        std::thread::sleep(Duration::from_millis(20));
    }
    let st: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(st["cluster"], "prod");
    let mode = std::fs::metadata(dir.path().join("state"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}
