//! Issue 14 on real engines, one 4-host lab: a swarm node's containers cannot read the node's
//! secrets from the cloud's metadata service, and the operator's join-token rotation makes the
//! old tokens useless while new nodes still join.
//!
//! Hosts: node1 (manager) and node2 (worker) form a cluster through the real coordinator
//! (target 1 manager); node3 joins later; node4 plays the cloud's metadata service.
//!
//! **Metadata.** node4: 169.254.169.254 on its loopback and a busybox httpd serving
//! `/latest/user-data` (a marker standing for the join secret). node2 routes 169.254.169.254
//! through node4, as a VM routes it off-host. Then, on node2:
//! 1. a process on the host reads the user-data, and so does a container (the control: this is
//!    what an attacker's container gets today, and proves the test can fail);
//! 2. `cloud-init/swarmstrap-metadata-block.sh` runs in node1's network namespace (twice: it is
//!    idempotent);
//! 3. a container no longer gets an answer (its connection is rejected), a process on the host
//!    still does.
//!
//! Traffic stays inside the lab: 169.254.169.254 exists only in node4's namespace, and only
//! node2's namespace has a route to it.
//!
//! **Token rotation.** `swarm-agent rotate-tokens` on the worker (with the join secret: refused;
//! with the operator credential: accepted): the leader's agent (node1)
//! rotates the swarm's join tokens and publishes them; then the old worker token no longer joins
//! (node3's engine is refused with it), and node3's agent joins with the new one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use swarmstrap_lab::cluster::{AgentOptions, Cluster};
use swarmstrap_lab::cmd::{run, run_unchecked};
use swarmstrap_lab::{wait_for, Host, Lab, LabConfig};

const METADATA: &str = "169.254.169.254";
const MARKER: &str = "swarmstrap-join-secret-marker-7f3a";
/// An HTTP GET with busybox `nc` (Debian's static busybox `wget` segfaults on this machine).
const GET: &str =
    "printf 'GET /latest/user-data HTTP/1.0\\r\\n\\r\\n' | nc -w 3 169.254.169.254 80";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn in_netns(host: &Host, program: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", host.netns_path().display()))
        .arg("--")
        .arg(program);
    c
}

/// A GET of the user-data from node1 itself (not a container).
fn host_get(host: &Host) -> swarmstrap_lab::Result<Option<String>> {
    let out = run_unchecked(in_netns(host, "busybox").args(["sh", "-c", GET]))?;
    Ok((out.success() && out.stdout.contains(MARKER)).then_some(MARKER.to_string()))
}

/// A GET of the user-data from a container on `host` (default bridge network).
fn container_get(host: &Host) -> anyhow::Result<(bool, String)> {
    let out = host.docker_output(&["run", "--rm", "bb", "sh", "-c", GET])?;
    Ok((out.success(), format!("{}{}", out.stdout, out.stderr)))
}

fn rules(host: &Host) -> anyhow::Result<String> {
    Ok(run(in_netns(host, "iptables").args(["-w", "-S", "DOCKER-USER"]))?.stdout)
}

#[test]
fn metadata_block_and_token_rotation_on_one_lab() -> anyhow::Result<()> {
    let lab = Lab::start(LabConfig::new(4))?;
    let c = Cluster::new(
        lab,
        "security",
        AgentOptions {
            target_managers: 1,
            ..AgentOptions::default()
        },
    )?;
    // node1 first, until it formed the swarm alone: with one manager wanted, whichever
    // registers first gets the seat, and the checks below need node1 as the manager.
    c.start_agent(0)?;
    let formed = c
        .wait_formed(&[0], 1, 0, Duration::from_secs(90))
        .and_then(|_| c.start_agent(1))
        .and_then(|_| c.wait_formed(&[0, 1], 1, 1, Duration::from_secs(90)));
    let r = formed
        .map(|_| ())
        .and_then(|_| metadata(&c.lab))
        .and_then(|_| rotation(&c));
    if let Err(e) = &r {
        eprintln!("FAILED: {e:#}\n{}", c.diagnostics());
    }
    let r = r.and_then(|_| c.assert_no_secret_in_logs());
    let lab = &c.lab;
    if r.is_err() {
        for h in lab.hosts() {
            eprintln!(
                "--- {} DOCKER-USER:\n{}",
                h.name(),
                rules(h).unwrap_or_default()
            );
            for args in [&["addr"][..], &["route"][..]] {
                let out = run_unchecked(in_netns(h, "ip").args(args));
                eprintln!("--- {} ip {args:?}:\n{:?}", h.name(), out.map(|o| o.stdout));
            }
            let out = run_unchecked(in_netns(h, "busybox").args(["sh", "-c", GET]));
            eprintln!(
                "--- {} GET: {:?}",
                h.name(),
                out.map(|o| (o.status, o.stdout, o.stderr))
            );
        }
    }
    r
}

fn metadata(lab: &Lab) -> anyhow::Result<()> {
    // node1 here is the swarm node whose containers are tried (the cluster's worker), node2 the
    // fake metadata service.
    let (node1, node2) = (lab.host(1), lab.host(3));
    lab.import_image(
        node1,
        "bb",
        &lab.build_image_tar("bb.tar", &swarmstrap_lab::image::busybox_entries()?)?,
    )?;

    // node2: the fake metadata service.
    let www = lab.root().join("metadata-www");
    std::fs::create_dir_all(www.join("latest"))?;
    std::fs::write(www.join("latest/user-data"), MARKER)?;
    run(in_netns(node2, "ip").args(["addr", "add", &format!("{METADATA}/32"), "dev", "lo"]))?;
    let mut httpd = Command::new("busybox");
    httpd
        .args(["httpd", "-f", "-p", &format!("{METADATA}:80"), "-h"])
        .arg(&www);
    node2.spawn_in_netns("metadata-httpd", httpd)?;
    // node1: off-host route to it, as on a VM.
    run(in_netns(node1, "ip").args([
        "route",
        "add",
        &format!("{METADATA}/32"),
        "via",
        &node2.addr().to_string(),
    ]))?;

    // The worker's engine sets up its swarm networking (docker_gwbridge and its FORWARD rules,
    // with the jump to DOCKER-USER put first again) after the join is reported: wait for it,
    // so that the block is judged on the engine's settled firewall, not in the middle of its
    // rearrangement.
    wait_for(
        Duration::from_secs(60),
        "node1's docker_gwbridge set up, DOCKER-USER first in FORWARD",
        || {
            let gwbridge = node1
                .docker_output(&["network", "inspect", "docker_gwbridge"])
                .map(|o| o.success())
                .unwrap_or(false);
            let forward = run(in_netns(node1, "iptables").args(["-w", "-S", "FORWARD"]))
                .map(|o| o.stdout)
                .unwrap_or_default();
            let first = forward.lines().find(|l| l.starts_with("-A FORWARD"));
            Ok(
                if gwbridge
                    && forward.contains("-i docker_gwbridge ! -o docker_gwbridge -j ACCEPT")
                    && first == Some("-A FORWARD -j DOCKER-USER")
                {
                    Ok(())
                } else {
                    Err(format!("FORWARD:\n{forward}"))
                },
            )
        },
    )?;

    // 1. Before the block: the host and a container both read it (the control).
    wait_for(
        Duration::from_secs(20),
        "node1 reads the fake user-data",
        || {
            Ok(match host_get(node1)? {
                Some(body) if body == MARKER => Ok(()),
                other => Err(format!("got {other:?}")),
            })
        },
    )?;
    let (ok, out) = container_get(node1)?;
    assert!(
        ok && out.contains(MARKER),
        "control: before the block a container must read the user-data (else this test proves \
         nothing); got ok={ok} {out:?}"
    );
    println!(
        "before the block: a container on node1 read the user-data ({} bytes)",
        MARKER.len()
    );

    // 2. The block, twice (idempotent).
    let script = repo_root().join("cloud-init/swarmstrap-metadata-block.sh");
    for _ in 0..2 {
        let out = run(in_netns(node1, "sh").arg(&script))?;
        println!("block script: {}", out.stderr.trim());
    }
    let r = rules(node1)?;
    let ours = r.lines().filter(|l| l.contains("swarmstrap")).count();
    assert_eq!(
        ours, 4,
        "2 addresses x tcp/udp, added once each; DOCKER-USER:\n{r}"
    );

    // 3. After: the container is refused, the host still reads it.
    let (ok, out) = container_get(node1)?;
    assert!(
        !ok && !out.contains(MARKER),
        "after the block a container must not read the user-data; got ok={ok} {out:?}\nFORWARD:\n{}\nDOCKER-USER:\n{r}",
        run(in_netns(node1, "iptables").args(["-w", "-S", "FORWARD"]))
            .map(|o| o.stdout)
            .unwrap_or_default()
    );
    println!(
        "after the block: the container's request failed: {}",
        out.trim()
    );
    assert_eq!(
        host_get(node1)?.as_deref(),
        Some(MARKER),
        "the host itself must still reach the metadata service"
    );
    println!("after the block: node1 itself still reads the user-data");
    Ok(())
}

fn rotation(c: &Cluster) -> anyhow::Result<()> {
    let manager = c.lab.host(0);
    let old = swarmstrap_lab::swarm::join_tokens(&manager.api())?;
    // What the worker node holds (the join secret) cannot ask for it; the operator credential,
    // through the worker's agent (`swarm-agent rotate-tokens`), can.
    let secret = c.secret_file().expect("coordinator").display().to_string();
    let out = c.agent_cmd(1, &["rotate-tokens", "--operator-credential-file", &secret])?;
    assert!(!out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("operator credential"), "{}", out.stderr);
    assert!(c.coordinator().show("security")?["token_rotation_pending"].is_null());
    let op = c
        .operator_credential_file()
        .expect("coordinator")
        .display()
        .to_string();
    let out = c.agent_cmd(1, &["rotate-tokens", "--operator-credential-file", &op])?;
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    let st = c.coordinator().show("security")?;
    assert_eq!(st["token_rotation_pending"], 1, "{st}");
    let t0 = std::time::Instant::now();
    let st = wait_for(
        Duration::from_secs(30),
        "the leader's agent to rotate and publish the join tokens",
        || {
            let st = c
                .coordinator()
                .show("security")
                .map_err(|e| swarmstrap_lab::LabError::Precondition(format!("{e:#}")))?;
            Ok(
                if st["token_rotation_pending"].is_null() && st["token_rotations"] == 1 {
                    Ok(st)
                } else {
                    Err(format!("{st}"))
                },
            )
        },
    )?;
    println!(
        "token rotation published {:.1}s after the request: {}",
        t0.elapsed().as_secs_f64(),
        st["token_rotations"]
    );
    let new = swarmstrap_lab::swarm::join_tokens(&manager.api())?;
    assert_ne!(
        new.worker.expose(),
        old.worker.expose(),
        "the worker token was not rotated"
    );
    assert_ne!(
        new.manager.expose(),
        old.manager.expose(),
        "the manager token was not rotated"
    );

    // The old worker token no longer joins.
    let node3 = c.lab.host(2);
    let through = format!("{}:2377", manager.addr());
    let out = node3.docker_output(&["swarm", "join", "--token", old.worker.expose(), &through])?;
    assert!(
        !out.success(),
        "the old worker token still joins: {}{}",
        out.stdout,
        out.stderr
    );
    println!("the old worker token is refused: {}", out.stderr.trim());
    // node3's agent joins with the new one (from the rendezvous).
    c.start_agent(2)?;
    c.wait_formed(&[0, 1, 2], 1, 2, Duration::from_secs(90))?;
    println!("node3 joined with the rotated token");
    Ok(())
}
