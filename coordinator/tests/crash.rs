//! The real binary as a child process: acknowledged writes survive SIGKILL, the CLI falls
//! back to the admin API while the server holds the database, SIGTERM shuts down cleanly, and
//! a foreign or damaged data dir stops the start with a clear error, touching nothing.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use swarm_coordinator::datadir::ServerInfo;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_swarm-coordinator");

struct Running {
    child: Child,
    base: String,
    client: reqwest::Client,
    stderr: PathBuf,
}

/// Start `serve` on 127.0.0.1:0 and wait until it answers /healthz (deadline, no fixed sleep).
async fn start(data: &Path, log: &Path) -> Running {
    start_logging(data, log, "warn").await
}

/// [`start`] with the log filter `level` (the server's stderr goes to `log`).
async fn start_logging(data: &Path, log: &Path, level: &str) -> Running {
    let stderr = std::fs::File::create(log).unwrap();
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--tls-self-signed",
            "--data-dir",
        ])
        .arg(data)
        .env("SWARM_COORDINATOR_LOG", level)
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn swarm-coordinator");
    let pid = child.id().unwrap();
    let info_path = data.join("server.json");
    let info: ServerInfo = wait_for(
        "server.json of the new process",
        Duration::from_secs(30),
        || {
            let p = info_path.clone();
            async move {
                let info: ServerInfo = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
                (info.pid == pid).then_some(info)
            }
        },
    )
    .await;
    if let Ok(Some(status)) = child.try_wait() {
        panic!(
            "the server exited: {status}: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
    let client = pinned_client(info.fingerprint.as_deref().unwrap());
    let base = format!("https://{}", info.listen);
    let (c, b) = (client.clone(), base.clone());
    wait_for("/healthz", Duration::from_secs(30), || {
        let (c, b) = (c.clone(), b.clone());
        async move {
            let r = c.get(format!("{b}/healthz")).send().await.ok()?;
            (r.status() == StatusCode::OK).then_some(())
        }
    })
    .await;
    Running {
        child,
        base,
        client,
        stderr: log.to_path_buf(),
    }
}

async fn cli(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("SWARM_COORDINATOR_LOG", "warn")
        .output()
        .await
        .expect("run the CLI")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill() {
    install_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let secret_file = tmp.path().join("secret");
    let data_s = data.to_str().unwrap();

    // The operator creates the cluster before the first start (direct mode).
    let out = cli(&[
        "cluster",
        "create",
        "crash",
        "--data-dir",
        data_s,
        "--out",
        secret_file.to_str().unwrap(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let operator = stdout
        .strip_prefix("SWARMSTRAP_OPERATOR_CREDENTIAL=")
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| {
            panic!("the secret went to --out, the operator credential to stdout: {stdout:?}")
        });
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    let secret = std::fs::read_to_string(&secret_file)
        .unwrap()
        .trim()
        .to_string();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&secret_file)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    let srv = start(&data, &tmp.path().join("run1.log")).await;
    let api = Api {
        client: srv.client.clone(),
        base: srv.base.clone(),
        cluster: "crash".into(),
        secret: secret.clone(),
        operator,
        creds: Default::default(),
    };
    let (_, c) = api.claim("holder", 300_000).await;
    assert_eq!(c["granted"], true);
    let token = c["lease"]["fencing_token"].as_u64().unwrap();

    // Stream acknowledged writes: document increments (CAS) and node registrations.
    let acked = Arc::new(AtomicU64::new(0));
    let max_doc_version = Arc::new(AtomicU64::new(0));
    let acked_nodes = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut writers = vec![];
    let holder_cred = api.cred("holder").expect("the claim registered the holder");
    for w in 0..4 {
        let (api, acked, maxv) = (api.clone(), acked.clone(), max_doc_version.clone());
        let holder_cred = holder_cred.clone();
        writers.push(tokio::spawn(async move {
            loop {
                let Ok(r) = api
                    .client
                    .get(api.url("/docs/keeper"))
                    .bearer_auth(&api.secret)
                    .send()
                    .await
                else {
                    return;
                };
                let Ok(d) = r.json::<serde_json::Value>().await else {
                    return;
                };
                let v = d["version"].as_u64().unwrap();
                let n = d["body"]["n"].as_u64().unwrap_or(0);
                let put = api
                    .client
                    .put(api.url("/docs/keeper"))
                    .bearer_auth(&api.secret)
                    .header(NODE_CREDENTIAL, &holder_cred)
                    .json(&json!({"node_id": "holder", "expected_version": v, "body": {"n": n + 1, "by": w}}))
                    .send()
                    .await;
                let Ok(r) = put else { return };
                if r.status() == StatusCode::OK {
                    let Ok(d) = r.json::<serde_json::Value>().await else {
                        return;
                    };
                    maxv.fetch_max(d["version"].as_u64().unwrap(), Ordering::SeqCst);
                    acked.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for w in 0..4 {
        let (api, acked, nodes) = (api.clone(), acked.clone(), acked_nodes.clone());
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("n{w}-{i}");
                let r = api
                    .client
                    .post(api.url("/nodes"))
                    .bearer_auth(&api.secret)
                    .json(&json!({"node_id": id, "hostname": "h", "advertise_addr": "198.18.0.3"}))
                    .send()
                    .await;
                let Ok(r) = r else { return };
                if r.status() != StatusCode::OK {
                    return;
                }
                let Ok(answer) = r.json::<serde_json::Value>().await else {
                    return;
                };
                api.keep_cred(&id, &answer);
                nodes.lock().unwrap().push(id);
                acked.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let a = acked.clone();
    wait_for("300 acknowledged writes", Duration::from_secs(60), || {
        let a = a.clone();
        async move { (a.load(Ordering::SeqCst) >= 300).then_some(()) }
    })
    .await;
    // SIGKILL mid-stream (tokio's start_kill sends SIGKILL to the child's pid).
    let mut child = srv.child;
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL");
    for w in writers {
        let _ = w.await;
    }
    let acked_total = acked.load(Ordering::SeqCst);
    let maxv = max_doc_version.load(Ordering::SeqCst);
    let nodes = acked_nodes.lock().unwrap().clone();
    eprintln!(
        "acknowledged before the kill: {acked_total} writes, doc version {maxv}, {} nodes",
        nodes.len()
    );

    // Restart on the same data dir: every acknowledged write is there.
    let srv = start(&data, &tmp.path().join("run2.log")).await;
    let api = Api {
        client: srv.client.clone(),
        base: srv.base.clone(),
        ..api
    };
    let (_, d) = api.call(Method::GET, "/docs/keeper", None).await;
    let version = d["version"].as_u64().unwrap();
    assert!(
        version >= maxv,
        "doc version {version} < acknowledged {maxv}"
    );
    assert_eq!(
        d["body"]["n"].as_u64().unwrap(),
        version,
        "every increment is in the document"
    );
    let st = api.status().await;
    let present: std::collections::HashSet<String> = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap().to_string())
        .collect();
    let missing: Vec<_> = nodes.iter().filter(|n| !present.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged registrations lost: {missing:?}"
    );
    // The init lease survived the restart: no other manager is granted, the holder keeps its
    // token (and the credentials issued before the kill still hold).
    let other = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["role"] == "manager" && n["node_id"] != "holder")
        .map(|n| n["node_id"].as_str().unwrap().to_string())
        .expect("a second manager registered");
    let (s, c) = api.claim(&other, 30_000).await;
    assert_eq!(s, StatusCode::OK, "{c}");
    assert_eq!(c["granted"], false);
    assert_eq!(c["lease"]["holder"], "holder");
    assert_eq!(c["lease"]["fencing_token"].as_u64(), Some(token));
    let (_, c) = api.claim("holder", 30_000).await;
    assert_eq!(c["granted"], true);
    assert_eq!(c["lease"]["fencing_token"].as_u64(), Some(token));

    // The server holds the database: the CLI goes through the admin API automatically.
    let out = cli(&["cluster", "list", "--data-dir", data_s]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("crash") && listing.contains("claimed"),
        "{listing}"
    );
    let out = cli(&["cluster", "show", "crash", "--data-dir", data_s]).await;
    assert!(out.status.success());
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["lease"]["holder"], "holder");
    let out = cli(&["cluster", "create", "second", "--data-dir", data_s]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Both generated secrets on stdout, once, as KEY=value lines; stderr says so.
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout:?}");
    for (line, key) in lines.iter().zip([
        "SWARMSTRAP_CLUSTER_SECRET=",
        "SWARMSTRAP_OPERATOR_CREDENTIAL=",
    ]) {
        let v = line.strip_prefix(key).unwrap_or_else(|| panic!("{line:?}"));
        assert_eq!(v.len(), 64, "{line:?}");
    }
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shown once on stdout"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["cluster", "reset", "crash", "--data-dir", data_s]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, c) = api.claim("after-reset", 30_000).await;
    assert_eq!(c["granted"], true, "{c}");
    assert!(
        c["lease"]["fencing_token"].as_u64().unwrap() > token,
        "tokens are never reused"
    );

    // SIGTERM: graceful stop, exit 0, server.json removed.
    let mut child = srv.child;
    let pid = child.id().unwrap().to_string();
    let st = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(st.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the server stops after SIGTERM")
        .unwrap();
    assert!(
        status.success(),
        "exit after SIGTERM: {status}: {}",
        std::fs::read_to_string(&srv.stderr).unwrap_or_default()
    );
    assert!(!data.join("server.json").exists());

    // Stopped: the CLI opens the data dir directly.
    let out = cli(&["cluster", "list", "--json", "--data-dir", data_s]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
}

/// Every file under `dir` with the sha256 of its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let digest = sha2::Sha256::digest(std::fs::read(&p).unwrap());
                out.insert(p.clone(), hex::encode(digest));
            }
        }
    }
    out
}

/// `serve` on `data` must fail with a message containing every string of `expect`, and
/// leave every file exactly as it was.
async fn assert_refused(data: &Path, expect: &[&str]) {
    let before = snapshot(data);
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        cli(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--tls-self-signed",
            "--data-dir",
            data.to_str().unwrap(),
        ]),
    )
    .await
    .expect("the start fails quickly instead of serving");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must not start: {stderr}");
    for e in expect {
        assert!(stderr.contains(e), "stderr should mention {e:?}: {stderr}");
    }
    assert_eq!(before, snapshot(data), "the data dir was changed");
    eprintln!("refused as expected: {}", stderr.trim());
}

async fn make_data_dir(data: &Path) {
    let out = cli(&[
        "cluster",
        "create",
        "c",
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn foreign_data_dir_is_refused_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("notes.txt"), b"not ours").unwrap();
    assert_refused(
        &data,
        &[
            "swarm-coordinator.marker",
            "notes.txt",
            data.to_str().unwrap(),
        ],
    )
    .await;
}

#[tokio::test]
async fn garbage_database_is_refused_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_data_dir(&data).await;
    std::fs::write(data.join("coordinator.redb"), vec![0xAB; 64 * 1024]).unwrap();
    assert_refused(&data, &["coordinator.redb", "corrupt", "backup"]).await;
}

#[tokio::test]
async fn truncated_database_is_refused_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_data_dir(&data).await;
    let db = data.join("coordinator.redb");
    let bytes = std::fs::read(&db).unwrap();
    std::fs::write(&db, &bytes[..300]).unwrap();
    assert_refused(&data, &["coordinator.redb"]).await;
}

#[tokio::test]
async fn missing_database_is_refused_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_data_dir(&data).await;
    std::fs::remove_file(data.join("coordinator.redb")).unwrap();
    assert_refused(&data, &["coordinator.redb", "missing"]).await;
}

#[tokio::test]
async fn schema_mismatch_is_refused_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_data_dir(&data).await;
    {
        let db = redb::Database::open(data.join("coordinator.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn
                .open_table(redb::TableDefinition::<&str, u64>::new("meta"))
                .unwrap();
            meta.insert("schema_version", 99).unwrap();
        }
        txn.commit().unwrap();
    }
    assert_refused(&data, &["schema version 99", "coordinator.redb"]).await;
}

#[tokio::test]
async fn fingerprint_command_matches_the_served_certificate() {
    install_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let srv = start(&data, &tmp.path().join("run.log")).await;
    let info: ServerInfo =
        serde_json::from_slice(&std::fs::read(data.join("server.json")).unwrap()).unwrap();
    let out = cli(&["fingerprint", "--data-dir", data.to_str().unwrap()]).await;
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        info.fingerprint.clone().unwrap()
    );
    let out = cli(&[
        "fingerprint",
        "--tls-cert",
        data.join("tls/cert.pem").to_str().unwrap(),
    ])
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        info.fingerprint.unwrap()
    );
    drop(srv);
}

#[tokio::test]
async fn insecure_http_needs_the_flag_and_warns() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // No TLS mode at all: refused with a usage error.
    let out = cli(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure-http"));

    let log = tmp.path().join("http.log");
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--insecure-http",
            "--data-dir",
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let info_path = data.join("server.json");
    let info: ServerInfo = wait_for("server.json", Duration::from_secs(30), || {
        let p = info_path.clone();
        async move {
            let info: ServerInfo = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
            (info.pid == pid).then_some(info)
        }
    })
    .await;
    assert_eq!(info.scheme, "http");
    assert_eq!(info.fingerprint, None);
    let url = format!("http://{}/healthz", info.listen);
    install_crypto();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_for("/healthz over plain HTTP", Duration::from_secs(30), || {
        let (c, u) = (client.clone(), url.clone());
        async move {
            c.get(u)
                .send()
                .await
                .ok()
                .filter(|r| r.status() == StatusCode::OK)
        }
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("PLAIN HTTP"), "{text}");
    // The CLI reaches a plain-HTTP server through its admin API as well.
    let out = cli(&[
        "cluster",
        "create",
        "lab",
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    child.start_kill().unwrap();
    let _ = child.wait().await;
}

/// The coordinator lost its database: the operator re-creates the cluster with the same secret
/// and `--adopt`; init claims are refused until the running swarm adopts it, which the server
/// logs. `await-adoption` / `allow-init` work on the data dir and through the running server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_created_cluster_awaits_adoption_through_the_cli_and_the_server() {
    install_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data_s = data.to_str().unwrap();
    let secret_file = tmp.path().join("secret");
    let secret = "terraform-random-password-0123456789";
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let ok = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let show = |out: &std::process::Output| -> serde_json::Value {
        serde_json::from_slice(&out.stdout).expect("JSON status on stdout")
    };

    let out = cli(&[
        "cluster",
        "create",
        "prod",
        "--adopt",
        "--secret-file",
        secret_file.to_str().unwrap(),
        "--data-dir",
        data_s,
    ])
    .await;
    ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("allow-init prod"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["cluster", "show", "prod", "--data-dir", data_s]).await;
    ok(&out);
    assert_eq!(show(&out)["awaiting_adoption"], true);
    // Directly on the data dir: lift and set again.
    let out = cli(&["cluster", "allow-init", "prod", "--data-dir", data_s]).await;
    ok(&out);
    assert_eq!(show(&out)["awaiting_adoption"], false);
    let out = cli(&["cluster", "await-adoption", "prod", "--data-dir", data_s]).await;
    ok(&out);
    assert_eq!(show(&out)["awaiting_adoption"], true);

    let log = tmp.path().join("server.log");
    let srv = start_logging(&data, &log, "info").await;
    let api = Api {
        client: srv.client.clone(),
        base: srv.base.clone(),
        cluster: "prod".into(),
        secret: secret.into(),
        operator: String::new(),
        creds: Default::default(),
    };
    // Through the running server's admin API.
    let out = cli(&["cluster", "allow-init", "prod", "--data-dir", data_s]).await;
    ok(&out);
    assert_eq!(show(&out)["awaiting_adoption"], false);
    let out = cli(&["cluster", "await-adoption", "prod", "--data-dir", data_s]).await;
    ok(&out);
    assert_eq!(show(&out)["awaiting_adoption"], true);
    let out = cli(&["cluster", "list", "--data-dir", data_s]).await;
    ok(&out);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains("awaiting-adoption"), "{listing}");

    api.register("new", "auto").await;
    let (s, b) = api.claim("new", 30_000).await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(b["error"], "awaiting_adoption", "{b}");

    let (s, a) = api
        .call(
            Method::POST,
            "/adopt",
            Some(json!({
                "node_id": "leader-node", "hostname": "host-l", "advertise_addr": "198.18.0.20",
                "swarm_id": "swarm-live", "ca_digest": format!("sha256:{}", "cd".repeat(32)),
                "manager_addrs": ["198.18.0.20:2377"], "manager_token": MANAGER_TOKEN,
                "worker_token": WORKER_TOKEN, "managers": 3,
            })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{a}");
    let token = a["fencing_token"].as_u64().unwrap();
    let expect = format!(
        "cluster prod adopted swarm swarm-live from node leader-node under fencing token {token}"
    );
    let logged = wait_for("the adoption in the log", Duration::from_secs(10), || {
        let (log, expect) = (log.clone(), expect.clone());
        async move {
            let text = std::fs::read_to_string(&log).ok()?;
            text.contains(&expect).then_some(text)
        }
    })
    .await;
    assert!(logged.contains("adoption hold lifted"), "{logged}");
    assert!(logged.contains("adoption hold set"), "{logged}");
    for secret_text in [secret, MANAGER_TOKEN, WORKER_TOKEN] {
        assert!(
            !logged.contains(secret_text),
            "a secret in the log: {logged}"
        );
    }
    // Formed: nothing to hold; the CLI says why.
    let out = cli(&["cluster", "await-adoption", "prod", "--data-dir", data_s]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already_formed"), "{err}");
    let out = cli(&["cluster", "show", "prod", "--data-dir", data_s]).await;
    ok(&out);
    let st = show(&out);
    assert_eq!(
        (st["phase"].clone(), st["adoptions"].clone()),
        (json!("formed"), json!(1))
    );
    let mut child = srv.child;
    child.kill().await.unwrap();
}
