//! Issue 15 on real engines: the static agent resolves names itself, and a swarm is upgraded in
//! place, node by node, without a role change or a second `swarm init`.
//!
//! **Names without NSS** (two 3-host labs, one per backend). node3 runs dnsmasq (Debian's),
//! which serves `coordinator.lab.internal` / `moto.lab.internal` as the lab bridge address and
//! logs every query. node1 and node2 run the static agent in a chroot that holds only the
//! binary, `/etc/resolv.conf` (`nameserver <node3>`), the config, the join secret, the state
//! directory and the engine's socket: no libc, no NSS modules, no /etc/hosts. The config names
//! the rendezvous by name only (`url = "https://coordinator.lab.internal:<port>"`, or the
//! Secrets Manager `endpoint_url = "http://moto.lab.internal:<port>"`). They form a swarm, and
//! dnsmasq's log shows the agents' queries for the name.
//!
//! **Rolling upgrade** (one 5-host lab, 3 managers + 2 workers). Every host has its own copy of
//! the current build (`scripts/build-static.sh`). A release built and signed by
//! `scripts/test-artifacts.sh` with another version (`SWARMSTRAP_UPGRADE_RELEASE_DIR`, its
//! throwaway public key in `SWARMSTRAP_UPGRADE_PUBLIC_KEY_FILE`) is served over HTTP from
//! node1's namespace. First a refusal that must happen: the release checked with another key
//! (the project's key) installs nothing. Then the documented procedure: workers first, then
//! managers one at a time, the raft leader last; after each `swarm-agent upgrade` the test
//! waits until that node's running agent reports the new version and the quorum margin is back.
//! A sampler watches the managers all along. At the end: one `swarm init` in all, every node
//! has the role it had, the quorum margin was never below its start, every agent runs the new
//! version under the same pid (re-executed in place).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;
use swarmstrap_lab::cluster::{workspace_root, AgentOptions, Cluster};
use swarmstrap_lab::swarm::ManagerStatus;
use swarmstrap_lab::{wait_for, Lab, LabConfig};

const FORM_TIMEOUT: Duration = Duration::from_secs(180);

/// Start dnsmasq in host `i`'s namespace answering `name` with the lab bridge address; returns
/// the resolv.conf for the chroots and the dnsmasq process's log path.
fn start_dns(lab: &Lab, i: usize, name: &str) -> anyhow::Result<(String, PathBuf)> {
    let h = lab.host(i);
    let ip = h.addr().to_string();
    let mut cmd = Command::new("dnsmasq");
    cmd.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        "--bind-interfaces",
        "--log-queries",
        "--log-facility=-",
        "--pid-file=",
        "--user=root",
        "--group=root",
    ])
    .arg(format!("--listen-address={ip}"))
    // A host record: the A query gets the address and the AAAA query an empty answer (musl
    // asks both at once and fails on a refused one), other names in the zone NXDOMAIN.
    .arg(format!("--host-record={name},{}", lab.bridge_addr()))
    .arg("--local=/lab.internal/");
    let p = h.spawn_in_netns("dnsmasq", cmd)?;
    // Ready once it answers: wait for its "started" line (it logs to stderr = the log file).
    let log = p.log_path().to_path_buf();
    wait_for(Duration::from_secs(20), "dnsmasq to start", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        Ok(if text.contains("started") {
            Ok(())
        } else {
            Err(text)
        })
    })?;
    Ok((format!("nameserver {ip}\n"), log))
}

fn chroot_is_empty_but_for_ours(c: &Cluster, i: usize) -> anyhow::Result<()> {
    let root = c.chroot_dir(c.lab.host(i));
    let mut names: Vec<String> = std::fs::read_dir(&root)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    names.sort();
    let allowed = [
        "config.toml",
        "docker.sock",
        "etc",
        "join-secret",
        "state",
        "swarm-agent",
    ];
    for n in &names {
        anyhow::ensure!(
            allowed.contains(&n.as_str()),
            "unexpected {n} in the chroot"
        );
    }
    let etc: Vec<_> = std::fs::read_dir(root.join("etc"))?.collect();
    anyhow::ensure!(etc.len() == 1, "the chroot's /etc holds only resolv.conf");
    Ok(())
}

fn name_lab(backend: &str) -> anyhow::Result<()> {
    let lab = Lab::start(LabConfig::new(3))?;
    let (name, url) = if backend == "coordinator" {
        (
            "coordinator.lab.internal",
            "https://coordinator.lab.internal:{port}",
        )
    } else {
        ("moto.lab.internal", "http://moto.lab.internal:{port}")
    };
    let (resolv, dns_log) = start_dns(&lab, 2, name)?;
    let mut options = AgentOptions {
        target_managers: 1,
        chroot_resolv_conf: Some(resolv),
        ..AgentOptions::default()
    };
    let c = if backend == "coordinator" {
        options.coordinator_url = Some(url.into());
        Cluster::new(lab, "names", options)?
    } else {
        options.endpoint_url = Some(url.into());
        Cluster::new_secrets_manager(lab, "names", options)?
    };
    let config = std::fs::read_to_string(c.chroot_dir(c.lab.host(0)).join("config.toml"))?;
    anyhow::ensure!(
        config.contains(&url.replace("{port}", "")),
        "the config names the rendezvous by name: {config}"
    );
    c.start_agent(0)?;
    c.start_agent(1)?;
    let swarm = c.wait_formed(&[0, 1], 1, 1, FORM_TIMEOUT)?;
    for i in 0..2 {
        chroot_is_empty_but_for_ours(&c, i)?;
    }
    let queries = std::fs::read_to_string(&dns_log)?;
    let asked = queries
        .lines()
        .filter(|l| l.contains("query[A]") && l.contains(name))
        .count();
    anyhow::ensure!(
        asked >= 2,
        "dnsmasq saw {asked} A queries for {name}:\n{queries}"
    );
    assert_eq!(c.init_count(), 1, "{}", c.diagnostics());
    c.assert_no_secret_in_logs()?;
    eprintln!("{backend}: swarm {swarm} formed by chrooted agents; dnsmasq answered {asked} queries for {name}");
    Ok(())
}

#[test]
fn names_resolve_in_an_empty_chroot_coordinator() -> anyhow::Result<()> {
    name_lab("coordinator")
}

#[test]
fn names_resolve_in_an_empty_chroot_secrets_manager() -> anyhow::Result<()> {
    name_lab("secrets-manager")
}

/// The release to upgrade to: its directory, its version and the key that signed it.
fn upgrade_release() -> anyhow::Result<(PathBuf, String, PathBuf)> {
    let (Some(dir), Some(key)) = (
        std::env::var_os("SWARMSTRAP_UPGRADE_RELEASE_DIR"),
        std::env::var_os("SWARMSTRAP_UPGRADE_PUBLIC_KEY_FILE"),
    ) else {
        anyhow::bail!(
            "the rolling-upgrade test needs a second, signed build: run it through \
             `bash scripts/test.sh`, or build one with `bash scripts/test-artifacts.sh` and set \
             SWARMSTRAP_UPGRADE_RELEASE_DIR (the dist/<version> directory) and \
             SWARMSTRAP_UPGRADE_PUBLIC_KEY_FILE (its public key)"
        );
    };
    let dir = PathBuf::from(dir);
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS"))?;
    let version = sums
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .find_map(|f| {
            f.strip_prefix("swarm-agent-")
                .and_then(|r| r.strip_suffix("-x86_64"))
        })
        .ok_or_else(|| anyhow::anyhow!("{} lists no swarm-agent-*-x86_64", dir.display()))?
        .to_string();
    Ok((dir, version, PathBuf::from(key)))
}

fn copy_release(from: &Path, to: &Path, version: &str) -> anyhow::Result<()> {
    let dir = to.join(format!("v{version}"));
    std::fs::create_dir_all(&dir)?;
    for f in [
        "SHA256SUMS".to_string(),
        "SHA256SUMS.minisig".to_string(),
        format!("swarm-agent-{version}-x86_64"),
    ] {
        std::fs::copy(from.join(&f), dir.join(&f))?;
    }
    Ok(())
}

/// Reachable managers (leader included) as the leader's engine sees them.
fn reachable_managers(c: &Cluster, hosts: &[usize]) -> Option<i64> {
    for &i in hosts {
        if let Ok(nodes) = c.lab.host(i).node_ls() {
            return Some(
                nodes
                    .iter()
                    .filter(|n| {
                        matches!(
                            n.manager_status,
                            ManagerStatus::Leader | ManagerStatus::Reachable
                        )
                    })
                    .count() as i64,
            );
        }
    }
    None
}

#[test]
fn rolling_upgrade_keeps_roles_and_quorum() -> anyhow::Result<()> {
    let (release_dir, version, public_key) = upgrade_release()?;
    let lab = Lab::start(LabConfig::new(5))?;
    let mirror = lab.root().join("mirror");
    copy_release(&release_dir, &mirror, &version)?;
    let http_ip = lab.host(0).addr();
    let port = 8089;
    let mut http = Command::new("python3");
    http.args(["-m", "http.server", "--bind", &http_ip.to_string()])
        .arg(port.to_string())
        .arg("--directory")
        .arg(&mirror);
    lab.host(0).spawn_in_netns("release-http", http)?;
    let base_url = format!("http://{http_ip}:{port}");

    let c = Cluster::new(
        lab,
        "upgrade",
        AgentOptions {
            target_managers: 3,
            own_binary: true,
            ..AgentOptions::default()
        },
    )?;
    c.start_agents()?;
    let all = [0, 1, 2, 3, 4];
    c.wait_formed(&all, 3, 2, FORM_TIMEOUT)?;
    let before = reachable_managers(&c, &all).unwrap_or(0);
    assert_eq!(before, 3, "3 reachable managers before the upgrade");
    let margin_before = before - 2;

    // The mirror answers (poll it until the http server is up).
    let ready_url = format!("{base_url}/v{version}/SHA256SUMS");
    wait_for(Duration::from_secs(20), "the release mirror", || {
        let out = swarmstrap_lab::cmd::run_unchecked(
            Command::new("nsenter")
                .arg(format!("--net={}", c.lab.host(1).netns_path().display()))
                .args(["--", "python3", "-c"])
                .arg(format!(
                    "import urllib.request;urllib.request.urlopen('{ready_url}',timeout=3)"
                )),
        )?;
        Ok(if out.success() {
            Ok(())
        } else {
            Err(out.stderr)
        })
    })?;

    // Roles, pids and the old version, per host.
    let mut roles = BTreeMap::new();
    let mut pids = BTreeMap::new();
    let mut leader = None;
    for i in all {
        let info = c.lab.host(i).swarm_info()?;
        roles.insert(i, info.control_available);
        let (_, v) = c.status(i)?;
        let running = v["agent"]["running_version"]
            .as_str()
            .unwrap_or("")
            .to_string();
        assert_ne!(running, version, "host {i} already runs {version}");
        pids.insert(i, v["agent"]["running_pid"].as_u64());
        if info.control_available {
            let nodes = c.lab.host(i).node_ls()?;
            if nodes
                .iter()
                .any(|n| n.is_self && n.manager_status == ManagerStatus::Leader)
            {
                leader = Some(i);
            }
        }
    }
    let leader = leader.ok_or_else(|| anyhow::anyhow!("no leader found"))?;
    let mut order: Vec<usize> = all.iter().copied().filter(|i| !roles[i]).collect();
    order.extend(all.iter().copied().filter(|&i| roles[&i] && i != leader));
    order.push(leader);

    // A release checked with another key installs nothing.
    let project_key = workspace_root().join("release/minisign.pub");
    let o = c.agent_cmd(
        order[0],
        &[
            "upgrade",
            "--version",
            &version,
            "--base-url",
            &base_url,
            "--public-key-file",
            &project_key.to_string_lossy(),
        ],
    )?;
    assert!(
        !o.success() && o.stderr.contains("another key"),
        "upgrade with the wrong key must be refused: {}{}",
        o.stdout,
        o.stderr
    );
    let bin = c.agent_binary(c.lab.host(order[0]))?;
    let v = swarmstrap_lab::cmd::run(Command::new(&bin).arg("--version"))?.stdout;
    assert!(!v.contains(&version), "nothing installed: {v}");

    let min_margin = AtomicI64::new(margin_before);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| -> anyhow::Result<()> {
        s.spawn(|| {
            // A sampler, not a wait: it records the margin until told to stop.
            while !stop.load(Ordering::Relaxed) {
                if let Some(r) = reachable_managers(&c, &all) {
                    min_margin.fetch_min(r - 2, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        let r = (|| -> anyhow::Result<()> {
            for &i in &order {
                let o = c.agent_cmd(
                    i,
                    &[
                        "upgrade",
                        "--version",
                        &version,
                        "--base-url",
                        &base_url,
                        "--public-key-file",
                        &public_key.to_string_lossy(),
                    ],
                )?;
                anyhow::ensure!(
                    o.success(),
                    "upgrade on host {i} failed: {}{}\n{}",
                    o.stdout,
                    o.stderr,
                    c.diagnostics()
                );
                eprintln!("host {i}: {}", o.stdout.trim().replace('\n', " | "));
                wait_for(
                    Duration::from_secs(120),
                    &format!("host {i} back on {version} with the quorum margin restored"),
                    || {
                        let (code, v) = match c.status(i) {
                            Ok(s) => s,
                            Err(e) => return Ok(Err(format!("status: {e:#}"))),
                        };
                        let running = v["agent"]["running_version"].as_str().unwrap_or("");
                        let r = reachable_managers(&c, &all).unwrap_or(0);
                        Ok(
                            if running == version && code == 0 && r - 2 >= margin_before {
                                Ok(())
                            } else {
                                Err(format!(
                                    "running {running}, status exit {code}, {r} reachable managers"
                                ))
                            },
                        )
                    },
                )?;
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        r
    })?;

    for i in all {
        let (code, v) = c.status(i)?;
        assert_eq!(code, 0, "host {i} healthy: {v}");
        assert_eq!(
            v["agent"]["running_version"].as_str(),
            Some(version.as_str())
        );
        assert_eq!(
            v["agent"]["installed_version"].as_str(),
            Some(version.as_str())
        );
        assert_eq!(
            v["agent"]["running_pid"].as_u64(),
            pids[&i],
            "host {i}: re-executed in place"
        );
        let info = c.lab.host(i).swarm_info()?;
        assert_eq!(info.control_available, roles[&i], "host {i} kept its role");
    }
    let min = min_margin.load(Ordering::Relaxed);
    assert!(min >= 0, "the quorum margin went to {min}");
    assert_eq!(
        c.init_count(),
        1,
        "one swarm init in all\n{}",
        c.diagnostics()
    );
    c.wait_formed(&all, 3, 2, FORM_TIMEOUT)?;
    c.assert_no_secret_in_logs()?;
    eprintln!(
        "upgraded 5 nodes to {version} in the order {order:?}; lowest quorum margin seen {min}"
    );
    Ok(())
}
