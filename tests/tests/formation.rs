//! Swarm formation, end to end on real engines: fresh VMs become exactly one swarm.
//!
//! Each test starts its own lab (real dockerd per network namespace), the real static
//! coordinator and the real static agent per host, configured with the config.toml that the
//! cloud-init node template writes. Labs are serialized machine-wide by the harness lock.
//! Every wait has a deadline; failures print the agents' and coordinator's log tails.

use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use swarmstrap_lab::cluster::{AgentOptions, Cluster};
use swarmstrap_lab::{wait_until, Lab, LabConfig, Signal};

const FORM: Duration = Duration::from_secs(90);

fn all(c: &Cluster) -> Vec<usize> {
    (0..c.lab.hosts().len()).collect()
}

/// Every host's swarm node id (`docker info`), by host index.
fn node_ids(c: &Cluster) -> Vec<String> {
    c.lab
        .hosts()
        .iter()
        .map(|h| h.swarm_info().expect("docker info").node_id)
        .collect()
}

fn form_five(name: &str) -> anyhow::Result<Cluster> {
    form_five_on(
        Lab::start(LabConfig::new(5))?,
        name,
        AgentOptions::default(),
    )
}

fn form_five_on(lab: Lab, name: &str, options: AgentOptions) -> anyhow::Result<Cluster> {
    let c = Cluster::new(lab, name, options)?;
    c.start_agents()?;
    let swarm_id = c.wait_formed(&all(&c), 3, 2, FORM)?;
    assert!(!swarm_id.is_empty());
    assert_eq!(
        c.init_count(),
        1,
        "exactly one swarm init\n{}",
        c.diagnostics()
    );
    let st = c.coordinator().show(name)?;
    assert_eq!(st["phase"], "formed", "{st}");
    assert_eq!(st["nodes"].as_array().map(Vec::len), Some(5), "{st}");
    assert_eq!(st["swarm_id"].as_str(), Some(swarm_id.as_str()), "{st}");
    c.assert_no_secret_in_logs()?;
    Ok(c)
}

#[test]
fn five_agents_started_together_form_one_swarm_twice_on_fresh_labs() -> anyhow::Result<()> {
    let first = form_five("twice")?;
    let first_id = first.status(0)?.1["swarm"]["swarm_id"].clone();
    drop(first);
    let second = form_five("twice")?;
    let second_id = second.status(0)?.1["swarm"]["swarm_id"].clone();
    assert_ne!(
        first_id, second_id,
        "two fresh labs are two different swarms"
    );
    Ok(())
}

#[test]
fn agents_started_before_their_engines_form_the_same_swarm() -> anyhow::Result<()> {
    let lab = Lab::start(LabConfig::without_engines(5))?;
    let c = Cluster::new(lab, "late-engines", AgentOptions::default())?;
    c.start_agents()?;
    // The scenario: engines come up 5–20 s after the agents, one after another. (This is
    // the schedule under test, not a wait for a condition.)
    let t0 = std::time::Instant::now();
    for (i, h) in c.lab.hosts().iter().enumerate() {
        let at = Duration::from_millis(5_000 + 3_750 * i as u64);
        std::thread::sleep(at.saturating_sub(t0.elapsed()));
        h.start_engine()?;
    }
    // Nobody could register before its engine answered.
    c.wait_formed(&all(&c), 3, 2, FORM)?;
    assert_eq!(c.init_count(), 1, "{}", c.diagnostics());
    for i in all(&c) {
        let p = c.agent(i).unwrap();
        assert!(p.is_running(), "agent {i} stays running as a service");
    }
    Ok(())
}

/// The systemd side of `Type=notify`: a real datagram socket that an agent's `NOTIFY_SOCKET`
/// names, and every message received on it, in order.
struct NotifySocket {
    sock: UnixDatagram,
    got: Mutex<Vec<String>>,
}

impl NotifySocket {
    fn bind(path: &Path) -> anyhow::Result<NotifySocket> {
        let _ = fs::remove_file(path);
        let sock = UnixDatagram::bind(path)?;
        sock.set_nonblocking(true)?;
        Ok(NotifySocket {
            sock,
            got: Mutex::new(Vec::new()),
        })
    }

    /// Every message so far (reads what is waiting on the socket first).
    fn messages(&self) -> Vec<String> {
        let mut got = self.got.lock().unwrap();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        got.clone()
    }

    /// Waits until a message from index `from` on has the line `line`; returns that index.
    fn wait_line(&self, from: usize, line: &str, timeout: Duration) -> anyhow::Result<usize> {
        Ok(wait_until(
            timeout,
            &format!("`{line}` on NOTIFY_SOCKET"),
            || {
                Ok(self
                    .messages()
                    .iter()
                    .enumerate()
                    .skip(from)
                    .find(|(_, m)| m.lines().any(|l| l == line))
                    .map(|(i, _)| i))
            },
        )?)
    }

    /// The `STATUS=` texts of messages from index `from` on.
    fn statuses(&self, from: usize) -> Vec<String> {
        self.messages()[from..]
            .iter()
            .flat_map(|m| m.lines().map(str::to_string).collect::<Vec<_>>())
            .filter_map(|l| l.strip_prefix("STATUS=").map(str::to_string))
            .collect()
    }
}

/// Every line of a `--log-format json` log is one JSON object with the documented fields;
/// returns the messages.
fn json_log_messages(log: &str) -> Vec<String> {
    assert!(!log.trim().is_empty(), "empty log");
    log.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line:?}"));
            for key in ["timestamp", "level", "target"] {
                assert!(v[key].is_string(), "no {key}: {line}");
            }
            v["fields"]["message"]
                .as_str()
                .unwrap_or_else(|| panic!("no fields.message: {line}"))
                .to_string()
        })
        .collect()
}

/// Also the systemd side (`Type=notify`) and `--log-format json`: every agent reports to its
/// own real `NOTIFY_SOCKET`; agent 0 logs JSON by flag, agent 1 by environment.
#[test]
fn restarting_the_agent_on_a_joined_host_changes_nothing() -> anyhow::Result<()> {
    let lab = Lab::start(LabConfig::new(5))?;
    let mut host_env = vec![(1, "SWARM_AGENT_LOG_FORMAT".into(), "json".into())];
    let mut sockets = Vec::new();
    for i in 0..5 {
        let path = lab.host(i).dir().join("notify.sock");
        sockets.push(NotifySocket::bind(&path)?);
        host_env.push((i, "NOTIFY_SOCKET".into(), path.display().to_string()));
    }
    let options = AgentOptions {
        host_env,
        run_args: vec![(0, "--log-format".into()), (0, "json".into())],
        ..AgentOptions::default()
    };
    let c = form_five_on(lab, "restart", options)?;

    // READY=1 from every agent once it is in the swarm, after the phases that led there.
    let mut roles = Vec::new();
    for (i, s) in sockets.iter().enumerate() {
        let ready = s.wait_line(0, "READY=1", Duration::from_secs(30))?;
        let statuses = s.statuses(0);
        println!("agent {i} NOTIFY_SOCKET: {:?}", s.messages());
        let before_ready = s.statuses(0).len() - s.statuses(ready).len();
        let joined = &s.statuses(ready)[0];
        assert!(
            joined == "joined as manager (cluster restart)"
                || joined == "joined as worker (cluster restart)",
            "agent {i}: READY=1 comes with the role: {statuses:?}"
        );
        roles.push(joined.clone());
        let phases = &statuses[..before_ready];
        for want in [
            "starting",
            "waiting for the Docker engine",
            "registering with the rendezvous",
        ] {
            assert!(
                phases.iter().any(|p| p == want),
                "agent {i}: STATUS={want} before READY: {statuses:?}"
            );
        }
        assert!(
            phases
                .iter()
                .any(|p| p == "joining the swarm" || p == "initialising the swarm"),
            "agent {i}: joined or initialised before READY: {statuses:?}"
        );
    }
    assert_eq!(
        roles.iter().filter(|r| r.contains("manager")).count(),
        3,
        "{roles:?}"
    );
    let initialisers = sockets
        .iter()
        .filter(|s| s.statuses(0).iter().any(|p| p == "initialising the swarm"))
        .count();
    assert_eq!(initialisers, 1, "one agent reported initialising the swarm");
    // `status --wait` (what the Terraform wait-ready output runs) on the real swarm: a manager
    // sees the five Ready nodes; six never come (exit 1, the reason); a worker cannot count.
    let manager = roles.iter().position(|r| r.contains("manager")).unwrap();
    let worker = roles.iter().position(|r| r.contains("worker")).unwrap();
    let o = c.agent_cmd(
        manager,
        &[
            "status",
            "--wait",
            "--expect-nodes",
            "5",
            "--timeout",
            "60",
            "--json",
        ],
    )?;
    assert_eq!(o.status.code(), Some(0), "{}{}", o.stdout, o.stderr);
    let report: serde_json::Value = serde_json::from_str(&o.stdout)?;
    assert_eq!(report["schema"], 1, "{report}");
    assert_eq!(report["swarm"]["nodes_ready"], 5, "{report}");
    let started = Instant::now();
    let o = c.agent_cmd(
        manager,
        &["status", "--wait", "--expect-nodes", "6", "--timeout", "3"],
    )?;
    assert_eq!(o.status.code(), Some(1), "{}{}", o.stdout, o.stderr);
    assert!(
        o.stderr
            .contains("not ready after 3 s: 5 of the 6 expected nodes are Ready"),
        "{}",
        o.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the timeout holds"
    );
    let o = c.agent_cmd(worker, &["status", "--wait", "--expect-nodes", "5"])?;
    assert_eq!(o.status.code(), Some(2), "{}{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("run it on a manager"), "{}", o.stderr);
    // JSON logs: every line parses, and the formation's events are there.
    for i in [0, 1] {
        let messages = json_log_messages(&c.agent(i).unwrap().log());
        for want in [
            "swarm-agent ",
            "phase: registering",
            "node is part of cluster restart",
        ] {
            assert!(
                messages.iter().any(|m| m.contains(want)),
                "agent {i}: JSON log has `{want}`: {messages:#?}"
            );
        }
    }

    let ids_before = node_ids(&c);
    let swarm_before = c.status(0)?.1["swarm"]["swarm_id"].clone();
    let formed_at = c.coordinator().show("restart")?["formed_at_ms"].clone();
    // The restarted agent appends to the same log file: look only at what it wrote.
    let mut log_before = Vec::new();
    for (i, socket) in sockets.iter().enumerate() {
        let p = c.agent(i).unwrap();
        log_before.push(p.log().len());
        let before_stop = socket.messages().len();
        p.kill(Signal::TERM)?;
        let st = p.wait_timeout(Duration::from_secs(20))?;
        assert!(
            st.success(),
            "SIGTERM stops the agent cleanly (exit 0), got {st}"
        );
        socket.wait_line(before_stop, "STOPPING=1", Duration::from_secs(5))?;
        // Restarted on a joined node: READY=1 right after start, no join again.
        let before_start = socket.messages().len();
        let started = Instant::now();
        c.start_agent(i)?;
        socket.wait_line(before_start, "READY=1", Duration::from_secs(30))?;
        println!("agent {i} restarted: READY=1 after {:?}", started.elapsed());
        let statuses = socket.statuses(before_start);
        assert!(
            !statuses
                .iter()
                .any(|p| p == "joining the swarm" || p == "initialising the swarm"),
            "agent {i} restarted joined: {statuses:?}"
        );
    }
    c.wait_formed(&all(&c), 3, 2, FORM)?;
    for i in [0, 1] {
        json_log_messages(&c.agent(i).unwrap().log());
    }
    // Each restarted agent saw its node in this cluster's swarm and stayed.
    for (i, before) in log_before.iter().enumerate() {
        let log = c.agent(i).unwrap().log();
        let after = &log[*before..];
        assert!(
            after.contains("swarm-agent"),
            "agent {i} restarted: {after}"
        );
        assert_eq!(
            swarmstrap_lab::cluster::count_inits(after),
            0,
            "restarted agent {i} ran no init: {after}"
        );
        assert!(
            !after.contains("joining swarm"),
            "restarted agent {i} did not join again: {after}"
        );
    }
    assert_eq!(c.init_count(), 1, "one init in all logs, before and after");
    assert_eq!(node_ids(&c), ids_before, "same swarm node ids");
    assert_eq!(c.status(0)?.1["swarm"]["swarm_id"], swarm_before);
    let st = c.coordinator().show("restart")?;
    assert_eq!(st["formed_at_ms"], formed_at, "no new formation: {st}");
    assert_eq!(st["resets"], 0);
    Ok(())
}

#[test]
fn a_claimant_killed_before_publishing_is_taken_over() -> anyhow::Result<()> {
    let lab = Lab::start(LabConfig::new(5))?;
    let hold = lab.root().join("hold-after-claim");
    fs::write(&hold, b"")?;
    let options = AgentOptions {
        lease_ttl_secs: 5,
        env: vec![(
            "SWARM_AGENT_DEBUG_HOLD_AFTER_CLAIM_FILE".into(),
            hold.display().to_string(),
        )],
        ..AgentOptions::default()
    };
    let c = Cluster::new(lab, "takeover", options)?;
    c.start_agents()?;
    // Exactly one agent wins the hold file: it claimed the lease and stops before init.
    let victim = wait_until(
        Duration::from_secs(60),
        "an agent holding after its claim",
        || {
            Ok((0..5).find(|&i| {
                c.agent(i)
                    .is_some_and(|p| p.log().contains("debug hold after claim"))
            }))
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}\n{}", c.diagnostics()))?;
    let st = c.coordinator().show("takeover")?;
    assert_eq!(st["phase"], "claimed", "{st}");
    c.agent(victim).unwrap().kill(Signal::KILL)?;
    let others: Vec<usize> = (0..5).filter(|&i| i != victim).collect();
    // The victim was assigned manager (it claimed), so the other four are 2 managers + 2
    // workers once someone took over the expired lease.
    c.wait_formed(&others, 2, 2, FORM)?;
    let st = c.coordinator().show("takeover")?;
    assert_eq!(st["phase"], "formed", "{st}");
    let victim_host = c.lab.host(victim);
    assert_eq!(
        victim_host.swarm_info()?.local_node_state,
        "inactive",
        "the killed claimant never initialised a swarm"
    );
    // Back from the dead (no hold this time: the file is gone), it joins the real swarm.
    c.start_agent(victim)?;
    c.wait_formed(&all(&c), 3, 2, FORM)?;
    assert_eq!(c.init_count(), 1, "{}", c.diagnostics());
    c.assert_no_secret_in_logs()?;
    Ok(())
}

#[test]
fn the_coordinator_killed_and_restarted_mid_bootstrap_still_forms_the_cluster() -> anyhow::Result<()>
{
    let lab = Lab::start(LabConfig::without_engines(5))?;
    let mut c = Cluster::new(lab, "coord-crash", AgentOptions::default())?;
    c.start_agents()?;
    for i in [0, 1] {
        c.lab.host(i).start_engine()?;
    }
    // Two engines up: both register as managers, one inits, the other joins.
    c.wait_formed(&[0, 1], 2, 0, FORM)?;
    c.coordinator().kill()?;
    for i in [2, 3, 4] {
        c.lab.host(i).start_engine()?;
    }
    for i in [2, 3, 4] {
        c.lab.host(i).wait_engine_ready(Duration::from_secs(60))?;
    }
    // The three late nodes now retry against a dead coordinator; bring it back on the same
    // data dir and port.
    c.coordinator_mut().start()?;
    c.wait_formed(&all(&c), 3, 2, FORM)?;
    assert_eq!(c.init_count(), 1, "{}", c.diagnostics());
    Ok(())
}

#[test]
fn a_wrong_join_secret_exits_non_zero_and_changes_nothing() -> anyhow::Result<()> {
    let lab = Lab::start(LabConfig::new(1))?;
    let c = Cluster::new(lab, "secret", AgentOptions::default())?;
    let h = c.lab.host(0);
    fs::write(
        h.dir().join("agent/join-secret"),
        "not-the-secret-0123456789abcdef",
    )?;
    let p = c.start_agent(0)?;
    let st = p.wait_timeout(Duration::from_secs(60))?;
    let log = p.log();
    assert!(
        !st.success(),
        "a wrong secret is a permanent failure: {log}"
    );
    assert!(
        log.contains("join secret") || log.contains("join-secret"),
        "the message says what to fix: {log}"
    );
    assert!(!log.contains("not-the-secret-0123456789abcdef"));
    assert_eq!(h.swarm_info()?.local_node_state, "inactive");
    let cs = c.coordinator().show("secret")?;
    assert_eq!(cs["nodes"].as_array().map(Vec::len), Some(0), "{cs}");
    assert_eq!(cs["phase"], "open", "{cs}");
    Ok(())
}

#[test]
fn the_static_agent_runs_in_an_image_holding_only_itself() -> anyhow::Result<()> {
    let bins = swarmstrap_lab::cluster::bins()?;
    let lab = Lab::start(LabConfig::new(1))?;
    lab.import_single_binary("swarm-agent-only", &bins.agent, "swarm-agent")?;
    let out = lab.host(0).docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "swarm-agent-only",
        "/swarm-agent",
        "--version",
    ])?;
    assert!(
        out.starts_with("swarm-agent "),
        "`swarm-agent --version` in an otherwise empty image: {out:?}"
    );
    Ok(())
}
