//! The cluster lifecycle, end to end on real engines: scale-in with `swarm-agent leave`, a
//! dead manager replaced by the quorum keeper, an engine restart (with node labels from cloud
//! tags, read from a fake metadata service), and total manager loss with the operator's
//! `swarm-agent recover`.
//!
//! Every wait has a deadline; failures print the agents' and coordinator's log tails.
//!
//! `SWARMSTRAP_LAB_BACKEND=etcd` runs the tests that do not depend on the coordinator on the
//! etcd backend (the lab's 3-member etcd); total manager loss stays on the coordinator (it
//! reads the coordinator's cluster record and uses its operator credential).

use serde_json::Value;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swarmstrap_lab::cluster::{count_inits, AgentOptions, Cluster};
use swarmstrap_lab::swarm::ManagerStatus;
use swarmstrap_lab::{wait_for, Lab, LabConfig, LabError, Signal};

const FORM: Duration = Duration::from_secs(90);

/// An anyhow error inside a `wait_for` check: transient, polling goes on.
fn lab<T>(r: anyhow::Result<T>) -> swarmstrap_lab::Result<T> {
    r.map_err(|e| LabError::Precondition(format!("{e:#}")))
}

fn all(c: &Cluster) -> Vec<usize> {
    (0..c.lab.hosts().len()).collect()
}

fn form_five(name: &str, promote_after_secs: u64) -> anyhow::Result<(Cluster, String)> {
    form_five_with(name, promote_after_secs, |_| Ok((Vec::new(), ()))).map(|(c, id, ())| (c, id))
}

/// Which rendezvous a lab of this file uses.
#[derive(Clone, Copy)]
enum On {
    /// `SWARMSTRAP_LAB_BACKEND` (default: the coordinator).
    Env,
    /// The coordinator, whatever the environment says.
    Coordinator,
}

/// [`form_five`], with more agent environment from `setup` (run once the lab is up, before the
/// agents start; what else it returns is handed back).
fn form_five_with<T>(
    name: &str,
    promote_after_secs: u64,
    setup: impl FnOnce(&Lab) -> anyhow::Result<(Vec<(String, String)>, T)>,
) -> anyhow::Result<(Cluster, String, T)> {
    form_five_on(On::Env, name, promote_after_secs, setup)
}

fn form_five_on<T>(
    on: On,
    name: &str,
    promote_after_secs: u64,
    setup: impl FnOnce(&Lab) -> anyhow::Result<(Vec<(String, String)>, T)>,
) -> anyhow::Result<(Cluster, String, T)> {
    let lab = Lab::start(LabConfig::new(5))?;
    let (extra, kept) = setup(&lab)?;
    let mut env = vec![(
        "SWARM_AGENT_QUORUM_PROMOTE_AFTER_SECS".into(),
        promote_after_secs.to_string(),
    )];
    env.extend(extra);
    let options = AgentOptions {
        env,
        ..AgentOptions::default()
    };
    let c = match on {
        On::Env => Cluster::new_from_env(lab, name, options)?,
        On::Coordinator => Cluster::new(lab, name, options)?,
    };
    c.start_agents()?;
    let id = c.wait_formed(&all(&c), 3, 2, FORM)?;
    assert_eq!(c.init_count(), 1, "{}", c.diagnostics());
    Ok((c, id, kept))
}

fn is_manager(c: &Cluster, i: usize) -> bool {
    c.lab
        .host(i)
        .swarm_info()
        .map(|s| s.control_available)
        .unwrap_or(false)
}

/// Index of the host whose engine is the raft leader.
fn leader(c: &Cluster) -> anyhow::Result<usize> {
    for i in all(c) {
        if !is_manager(c, i) {
            continue;
        }
        let nodes = c.lab.host(i).node_ls()?;
        if nodes
            .iter()
            .any(|n| n.is_self && n.manager_status == ManagerStatus::Leader)
        {
            return Ok(i);
        }
    }
    anyhow::bail!("no leader\n{}", c.diagnostics())
}

fn running_tasks(c: &Cluster, mgr: usize, service: &str) -> anyhow::Result<Vec<String>> {
    let out = c.lab.host(mgr).docker(&[
        "service",
        "ps",
        service,
        "--filter",
        "desired-state=running",
        "--format",
        "{{.Node}} {{.CurrentState}}",
    ])?;
    Ok(out
        .lines()
        .filter(|l| l.contains("Running"))
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect())
}

#[test]
fn leave_on_a_worker_moves_its_tasks_and_removes_the_node() -> anyhow::Result<()> {
    let (c, _) = form_five("leave", 30)?;
    c.lab.import_busybox("lab/busybox:lc")?;
    let mgr = leader(&c)?;
    c.lab.host(mgr).docker(&[
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--replicas",
        "6",
        "lab/busybox:lc",
        "sh",
        "-c",
        "while true; do sleep 3600 & wait $!; done",
    ])?;
    let placed = wait_for(Duration::from_secs(60), "6 running tasks", || {
        let t = lab(running_tasks(&c, mgr, "web"))?;
        Ok(if t.len() == 6 {
            Ok(t)
        } else {
            Err(format!("{} running", t.len()))
        })
    })?;
    // A worker that runs tasks of the service.
    let w = all(&c)
        .into_iter()
        .find(|&i| !is_manager(&c, i) && placed.iter().any(|n| n == c.lab.host(i).name()))
        .ok_or_else(|| anyhow::anyhow!("no worker runs a task: {placed:?}"))?;
    let name = c.lab.host(w).name().to_string();

    let out = c.agent_cmd(w, &["leave", "--timeout-secs", "90"])?;
    assert!(
        out.status.success(),
        "leave failed: {}{}\n{}",
        out.stdout,
        out.stderr,
        c.diagnostics()
    );
    assert!(out.stdout.contains("drained"), "{}", out.stdout);
    assert!(out.stdout.contains("left the swarm"), "{}", out.stdout);

    wait_for(
        Duration::from_secs(60),
        "the node gone from `docker node ls` and the service back at 6 replicas elsewhere",
        || {
            let nodes = c.lab.host(mgr).node_ls()?;
            if nodes.iter().any(|n| n.hostname == name) {
                return Ok(Err(format!("{name} still listed")));
            }
            let t = lab(running_tasks(&c, mgr, "web"))?;
            if t.len() != 6 || t.contains(&name) {
                return Ok(Err(format!("tasks on {t:?}")));
            }
            Ok(Ok(()))
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}\n{}", c.diagnostics()))?;
    assert_eq!(nodes_left(&c, mgr)?, 4);
    // The agent stays up and leaves the node out (it does not rejoin by itself).
    assert!(c.agent(w).unwrap().is_running());
    let (_, st) = c.status(w)?;
    assert_eq!(st["agent"]["phase"], "left", "{st}");
    assert_eq!(st["swarm"]["state"], "inactive", "{st}");
    // The leader's status shows the keeper's removal (its report is written right after).
    wait_for(
        Duration::from_secs(30),
        "status to show the removal",
        || {
            let (_, st) = lab(c.status(mgr))?;
            let action = &st["lifecycle"]["keeper_last_action"];
            Ok(
                if action["kind"] == "remove" && action["hostname"] == name.as_str() {
                    Ok(())
                } else {
                    Err(format!("{}", st["lifecycle"]))
                },
            )
        },
    )?;
    c.assert_no_secret_in_logs()?;
    Ok(())
}

fn nodes_left(c: &Cluster, mgr: usize) -> anyhow::Result<usize> {
    Ok(c.lab.host(mgr).node_ls()?.len())
}

#[test]
fn a_dead_manager_is_replaced_by_a_worker_within_t_plus_10_s() -> anyhow::Result<()> {
    const T: u64 = 10;
    let (c, _) = form_five("keeper", T)?;
    let lead = leader(&c)?;
    let dead = all(&c)
        .into_iter()
        .find(|&i| i != lead && is_manager(&c, i))
        .expect("3 managers");
    let dead_name = c.lab.host(dead).name().to_string();
    // Killed for good: the agent and the engine, SIGKILL, never restarted.
    c.agent(dead).unwrap().kill(Signal::KILL)?;
    c.lab.host(dead).kill_engine()?;
    let t0 = Instant::now();

    let promoted = wait_for(
        Duration::from_secs(T + 60),
        "3 healthy managers without the killed one",
        || {
            let nodes = c.lab.host(lead).node_ls()?;
            let healthy: Vec<&str> = nodes
                .iter()
                .filter(|n| {
                    matches!(
                        n.manager_status,
                        ManagerStatus::Leader | ManagerStatus::Reachable
                    )
                })
                .map(|n| n.hostname.as_str())
                .collect();
            let dead_is_manager = nodes
                .iter()
                .any(|n| n.hostname == dead_name && n.manager_status.is_manager());
            if healthy.len() == 3 && !dead_is_manager {
                Ok(Ok(t0.elapsed()))
            } else {
                Ok(Err(format!(
                    "healthy managers {healthy:?}, {dead_name} still a manager: {dead_is_manager}"
                )))
            }
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}\n{}", c.diagnostics()))?;
    eprintln!("3 managers reachable again {promoted:?} after the kill (T = {T} s)");
    assert!(
        promoted <= Duration::from_secs(T + 10),
        "took {promoted:?}, more than T + 10 s\n{}",
        c.diagnostics()
    );
    // The keeper's actions are shown in status, on any node.
    let worker = all(&c)
        .into_iter()
        .find(|&i| i != dead && !is_manager(&c, i))
        .expect("a worker is left");
    wait_for(
        Duration::from_secs(30),
        "status to show the demotion",
        || {
            let (_, st) = lab(c.status(worker))?;
            let l = &st["lifecycle"];
            let a = &l["keeper_last_action"];
            Ok(
                if a["kind"] == "demote"
                    && a["hostname"] == dead_name.as_str()
                    && l["quorum_margin"] == 1
                {
                    Ok(())
                } else {
                    Err(format!("{l}"))
                },
            )
        },
    )?;
    assert_eq!(c.init_count(), 1, "{}", c.diagnostics());
    c.assert_no_secret_in_logs()?;
    Ok(())
}

/// A fake Scaleway metadata service on the lab bridge (the root namespace's address, which
/// every lab host reaches): `GET /conf?format=json` answers each host, told apart by the
/// request's source address, with its own `tags`. A thread the test runs; stopped on drop.
struct FakeMetadata {
    addr: SocketAddr,
    tags: Arc<Mutex<HashMap<IpAddr, Vec<String>>>>,
    reads: Arc<Mutex<HashMap<IpAddr, u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeMetadata {
    fn start(ip: Ipv4Addr) -> anyhow::Result<FakeMetadata> {
        let listener = TcpListener::bind((ip, 0))?;
        let addr = listener.local_addr()?;
        let tags: Arc<Mutex<HashMap<IpAddr, Vec<String>>>> = Arc::default();
        let reads: Arc<Mutex<HashMap<IpAddr, u64>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (t, r, st) = (tags.clone(), reads.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let _ = Self::answer(conn, &t, &r);
                }
            }
        });
        Ok(FakeMetadata {
            addr,
            tags,
            reads,
            stop,
            thread: Some(thread),
        })
    }

    fn answer(
        mut conn: TcpStream,
        tags: &Mutex<HashMap<IpAddr, Vec<String>>>,
        reads: &Mutex<HashMap<IpAddr, u64>>,
    ) -> std::io::Result<()> {
        conn.set_read_timeout(Some(Duration::from_secs(2)))?;
        let peer = conn.peer_addr()?.ip();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&req);
        let line = line.lines().next().unwrap_or_default();
        let (status, body) = if line.starts_with("GET /conf?format=json ") {
            *reads.lock().unwrap().entry(peer).or_default() += 1;
            let t = tags.lock().unwrap().get(&peer).cloned().unwrap_or_default();
            let body = serde_json::json!({ "private_ip": peer.to_string(), "tags": t });
            ("200 OK", body.to_string())
        } else {
            ("404 Not Found", String::new())
        };
        write!(
            conn,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )?;
        conn.flush()
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set(&self, host: Ipv4Addr, tags: &[&str]) {
        self.tags.lock().unwrap().insert(
            IpAddr::V4(host),
            tags.iter().map(|t| t.to_string()).collect(),
        );
    }

    fn reads(&self, host: Ipv4Addr) -> u64 {
        self.reads
            .lock()
            .unwrap()
            .get(&IpAddr::V4(host))
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for FakeMetadata {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The labels of the swarm node with hostname `host`, as manager `mgr` sees them.
fn node_labels(c: &Cluster, mgr: usize, host: &str) -> anyhow::Result<HashMap<String, String>> {
    let out =
        c.lab
            .host(mgr)
            .docker(&["node", "inspect", host, "--format", "{{json .Spec.Labels}}"])?;
    Ok(serde_json::from_str::<Option<HashMap<String, String>>>(out.trim())?.unwrap_or_default())
}

/// Wait until every host's node carries exactly the labels `want(i)` says (`None`: any).
fn wait_labels(
    c: &Cluster,
    what: &str,
    want: impl Fn(usize) -> Option<HashMap<String, String>>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    wait_for(Duration::from_secs(60), what, || {
        let mgr = lab(leader(c))?;
        for i in all(c) {
            let name = c.lab.host(i).name().to_string();
            let Some(w) = want(i) else { continue };
            let got = lab(node_labels(c, mgr, &name))?;
            if got != w {
                return Ok(Err(format!("{name}: {got:?}, want {w:?}")));
            }
        }
        Ok(Ok(()))
    })
    .map_err(|e| anyhow::anyhow!("{e}\n{}", c.diagnostics()))?;
    eprintln!("{what}: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const MANAGED: &str = "swarmstrap.managed-labels";

/// Engine restarts rejoin the same swarm; on the same lab, node labels from cloud tags: every
/// agent reads its own tags from a fake Scaleway metadata service (`[cloud] metadata_url`) and
/// the leader's agent puts them on the right nodes, applies a change without touching a label
/// an operator set by hand, removes a label whose tag went away, and labels a node that joined
/// again under a new Docker node id.
#[test]
fn hosts_whose_engine_restarts_rejoin_the_same_swarm() -> anyhow::Result<()> {
    let (c, id, meta) = form_five_with("restart", 30, |lab| {
        let meta = FakeMetadata::start(lab.bridge_addr())?;
        for i in 0..lab.hosts().len() {
            let zone = format!("swarm.label.zone=z{i}");
            let mut tags = vec!["unrelated", zone.as_str()];
            if i == 4 {
                // Refused (reserved prefix), with a warning; the other tags still apply.
                tags.push("swarm.label.com.docker.evil=1");
            }
            meta.set(lab.host(i).addr(), &tags);
        }
        let env = vec![
            ("SWARM_AGENT_CLOUD_PROVIDER".into(), "scaleway".into()),
            ("SWARM_AGENT_CLOUD_METADATA_URL".into(), meta.url()),
            ("SWARM_AGENT_CLOUD_TAGS_REFRESH_SECS".into(), "1".into()),
        ];
        Ok((env, meta))
    })?;

    // Each node gets its own host's tags, and nothing else.
    let zone = |i: usize| {
        let z = format!("z{i}");
        labels(&[("zone", z.as_str()), (MANAGED, "zone")])
    };
    wait_labels(&c, "every node labelled from its own tags", |i| {
        Some(zone(i))
    })?;
    for i in all(&c) {
        assert!(
            meta.reads(c.lab.host(i).addr()) > 0,
            "host {i} read its tags"
        );
    }
    let refused = c.agent(4).unwrap().log();
    assert!(
        refused.contains("refused tag \"swarm.label.com.docker.evil=1\"")
            && refused.contains("reserved"),
        "host 4's agent names the refused tag:\n{refused}"
    );

    // An operator labels node 1 by hand (one key of its own, one a tag will ask for later).
    let mgr = leader(&c)?;
    let n1 = c.lab.host(1).name().to_string();
    c.lab.host(mgr).docker(&[
        "node",
        "update",
        "--label-add",
        "team=ops",
        "--label-add",
        "rack=by-hand",
        &n1,
    ])?;
    // Node 1's tags change: a new zone, and a rack the operator owns.
    meta.set(
        c.lab.host(1).addr(),
        &["swarm.label.zone=moved", "swarm.label.rack=from-tag"],
    );
    wait_labels(
        &c,
        "a tag change applied, the operator's labels kept",
        |i| {
            Some(if i == 1 {
                labels(&[
                    ("zone", "moved"),
                    ("team", "ops"),
                    ("rack", "by-hand"),
                    (MANAGED, "zone"),
                ])
            } else {
                zone(i)
            })
        },
    )?;
    // Node 1's zone tag goes away: the label goes, the operator's stay.
    meta.set(c.lab.host(1).addr(), &["swarm.label.rack=from-tag"]);
    wait_labels(&c, "a removed tag removes its label", |i| {
        Some(if i == 1 {
            labels(&[("team", "ops"), ("rack", "by-hand")])
        } else {
            zone(i)
        })
    })?;
    // Idempotent: with nothing changing, the leader writes no node (versions stay).
    let versions = |c: &Cluster| -> anyhow::Result<Vec<String>> {
        let mgr = leader(c)?;
        all(c)
            .into_iter()
            .map(|i| {
                let name = c.lab.host(i).name().to_string();
                Ok(c.lab
                    .host(mgr)
                    .docker(&["node", "inspect", &name, "--format", "{{.Version.Index}}"])?
                    .trim()
                    .to_string())
            })
            .collect()
    };
    let before = versions(&c)?;
    // Several keeper passes (2 s each) and tag reads (1 s) go by: the label state is settled,
    // so no pass may write a node. Measured against the agents' own progress, not a sleep:
    // wait until every host read its tags 5 more times.
    let reads: Vec<u64> = all(&c)
        .iter()
        .map(|&i| meta.reads(c.lab.host(i).addr()))
        .collect();
    wait_for(
        Duration::from_secs(60),
        "5 more tag reads on every host",
        || {
            Ok(
                if all(&c)
                    .iter()
                    .all(|&i| meta.reads(c.lab.host(i).addr()) >= reads[i] + 5)
                {
                    Ok(())
                } else {
                    Err("reading".to_string())
                },
            )
        },
    )?;
    assert_eq!(
        versions(&c)?,
        before,
        "no node was written while nothing changed"
    );

    let lead = leader(&c)?;
    let manager = all(&c)
        .into_iter()
        .find(|&i| i != lead && is_manager(&c, i))
        .expect("3 managers");
    let worker = all(&c)
        .into_iter()
        .find(|&i| !is_manager(&c, i))
        .expect("2 workers");
    for h in [manager, worker] {
        c.lab.host(h).stop_engine()?;
        c.lab.host(h).start_engine()?;
    }
    let again = c.wait_formed(&all(&c), 3, 2, FORM)?;
    assert_eq!(again, id, "the same swarm");
    // A node whose swarm state is broken: it left the swarm behind the agent's back while the
    // cluster still counts it. The agent joins it again and the keeper removes the stale
    // entry (Down, its hostname now held by the new node).
    c.lab.host(worker).docker(&["swarm", "leave"])?;
    let again = c.wait_formed(&all(&c), 3, 2, FORM)?;
    assert_eq!(again, id, "the same swarm");
    assert_eq!(c.init_count(), 1, "{}", c.diagnostics());
    for i in all(&c) {
        assert!(c.agent(i).unwrap().is_running(), "agent {i} survived");
    }
    // The worker that left and joined again is a new Docker node (same address): the leader
    // labels it from its registration too.
    // (If that worker is host 1, its new node has no hand-set labels: the rack tag now sets
    // its label.)
    wait_labels(&c, "labels after the restarts and the rejoin", |i| {
        Some(match i {
            1 if worker == 1 => labels(&[("rack", "from-tag"), (MANAGED, "rack")]),
            1 => labels(&[("team", "ops"), ("rack", "by-hand")]),
            _ => zone(i),
        })
    })?;
    c.assert_no_secret_in_logs()?;
    Ok(())
}

fn lost(v: &Value) -> bool {
    v["lifecycle"]["no_manager_reachable"] == true
        && v["lifecycle"]["advice"]
            .as_str()
            .is_some_and(|a| a.contains("swarm-agent recover"))
}

#[test]
fn total_manager_loss_waits_for_the_operator_then_forms_one_new_swarm() -> anyhow::Result<()> {
    let (c, old, ()) = form_five_on(On::Coordinator, "total-loss", 5, |_| Ok((Vec::new(), ())))?;
    let managers: Vec<usize> = all(&c).into_iter().filter(|&i| is_manager(&c, i)).collect();
    let workers: Vec<usize> = all(&c)
        .into_iter()
        .filter(|i| !managers.contains(i))
        .collect();
    assert_eq!((managers.len(), workers.len()), (3, 2));
    for &m in &managers {
        c.agent(m).unwrap().kill(Signal::KILL)?;
        c.lab.host(m).kill_engine()?;
    }
    // Both workers notice, say so, and do nothing on their own.
    wait_for(
        Duration::from_secs(90),
        "both workers' status to report the loss of every manager",
        || {
            for &w in &workers {
                let (code, v) = lab(c.status(w))?;
                if code == 0 || !lost(&v) || v["lifecycle"]["no_manager_since"].is_null() {
                    return Ok(Err(format!(
                        "{} status: {}",
                        c.lab.host(w).name(),
                        v["lifecycle"]
                    )));
                }
            }
            Ok(Ok(()))
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}\n{}", c.diagnostics()))?;
    let text = c.status_text(workers[0])?;
    assert!(text.contains("ALL MANAGERS LOST"), "{text}");
    assert_eq!(c.init_count(), 1, "no automatic init\n{}", c.diagnostics());
    let st = c.coordinator().show("total-loss")?;
    assert_eq!(st["phase"], "formed", "{st}");
    assert_eq!(st["swarm_id"].as_str(), Some(old.as_str()), "{st}");

    // What a node holds cannot reset the cluster (issue 14): not the join secret, not its own
    // node credential. The rendezvous refuses, and the cluster stays formed.
    let join_secret = c.secret_file().expect("coordinator cluster").to_path_buf();
    let node_cred = c.lab.host(workers[0]).dir().join("node-credential-only");
    let rec: Value = serde_json::from_str(&std::fs::read_to_string(
        c.state_dir(c.lab.host(workers[0])).join("node-credential"),
    )?)?;
    std::fs::write(&node_cred, rec["credential"].as_str().unwrap_or_default())?;
    for held in [&join_secret, &node_cred] {
        let held = held.display().to_string();
        let out = c.agent_cmd(
            workers[0],
            &[
                "recover",
                "--swarm-id",
                &old,
                "--operator-credential-file",
                &held,
            ],
        )?;
        assert!(!out.status.success(), "{}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains("operator credential"), "{}", out.stderr);
        let st = c.coordinator().show("total-loss")?;
        assert_eq!(st["swarm_id"].as_str(), Some(old.as_str()), "{st}");
    }
    println!("a worker's join secret and node credential cannot reset the cluster");

    // The operator gives the lost swarm up, on one worker, with the operator credential.
    let op = c
        .operator_credential_file()
        .expect("coordinator cluster")
        .display()
        .to_string();
    let out = c.agent_cmd(
        workers[0],
        &[
            "recover",
            "--swarm-id",
            &old,
            "--reason",
            "lab: all managers killed",
            "--operator-credential-file",
            &op,
        ],
    )?;
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    // A second recovery of the same swarm is refused: one new init in total.
    let again = c.agent_cmd(
        workers[1],
        &[
            "recover",
            "--swarm-id",
            &old,
            "--force",
            "--operator-credential-file",
            &op,
        ],
    )?;
    assert!(!again.status.success(), "{}", again.stdout);
    assert!(
        again.stderr.contains("nothing was reset"),
        "{}",
        again.stderr
    );

    // The two survivors form a new swarm: one init, then 1 manager + 1 worker (no even
    // manager count stands).
    let new = c.wait_formed(&workers, 1, 1, Duration::from_secs(120))?;
    assert_ne!(new, old);
    let inits: usize = workers
        .iter()
        .map(|&w| count_inits(&c.agent(w).unwrap().log()))
        .sum();
    assert_eq!(inits, 1, "exactly one new init\n{}", c.diagnostics());
    let st = c.coordinator().show("total-loss")?;
    assert_eq!(st["resets"], 1, "{st}");
    assert_eq!(st["swarm_id"].as_str(), Some(new.as_str()), "{st}");
    c.assert_no_secret_in_logs()?;
    Ok(())
}
