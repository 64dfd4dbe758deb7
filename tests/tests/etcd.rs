//! The etcd backend, end to end, in one lab (CI time matters): 5 hosts with real engines and
//! the real static agent, configured by the cloud-init node template rendered for the etcd
//! backend, meeting at the lab's own 3-member etcd cluster (real etcd members on lab network
//! namespaces, TLS with client certificates, auth with the per-cluster roles:
//! `swarmstrap_lab::etcd`). In sequence:
//!
//! a. The 5 hosts form one swarm while the etcd leader is SIGKILLed at the worst moment we can
//!    pick from outside: as soon as a watch on the cluster's `state` key sees the init lease
//!    claimed (the claimant is about to run `swarm init` and publish the join tokens through
//!    etcd; the others are waiting on a watch for them). One swarm, exactly one `swarm init`,
//!    3 managers + 2 workers, every status says backend `etcd`, no secret in any log, every
//!    host's load-balancer config lists all 5 hosts. The agents are supervised as the node
//!    template's systemd unit does (restarted 5 s after an exit other than 78): an agent that
//!    starts while etcd elects a new leader may give up connecting (exit 1) and be restarted;
//!    the test prints each restart.
//! b. The killed member restarts; then the current etcd leader is partitioned away (its
//!    traffic dropped in its namespace) and the engines, having left the first swarm, form a
//!    second one under another cluster name (its own roles and user) through the 2 members
//!    left. One swarm, every node joined; then the partition heals.
//! c. An agent whose etcd user's role grants another cluster's prefixes only: a permanent,
//!    clear error naming the user and the prefix, and the agent exits 78 (a configuration
//!    error: no endless retry, and the systemd unit does not restart it).
//! d. An agent presenting a client certificate signed by another CA: a configuration error,
//!    exit 78.

use std::time::{Duration, Instant};
use swarmstrap_lab::cluster::{count_inits, lines_matching, AgentOptions, Cluster};
use swarmstrap_lab::etcd::{cluster_prefix, managers_prefix, role_names};
use swarmstrap_lab::{nginx, Lab, LabConfig};

/// The default upstream port of the load balancer's rendering.
const LB_PORT: u16 = 8080;
const FORM: Duration = Duration::from_secs(120);
/// How long an agent with a permanent configuration error may take to give up.
const GIVE_UP: Duration = Duration::from_secs(60);

fn is_manager(c: &Cluster, i: usize) -> Option<bool> {
    c.lab.host(i).swarm_info().ok().map(|s| s.control_available)
}

/// Stop every agent, make every engine leave its swarm, forget the agents' state: the hosts
/// are blank again (engines up, in no swarm).
fn blank_hosts(c: &Cluster) -> anyhow::Result<()> {
    for i in 0..c.lab.hosts().len() {
        if let Some(p) = c.agent(i) {
            p.stop(Duration::from_secs(15))?;
        }
    }
    for h in c.lab.hosts() {
        h.docker(&["swarm", "leave", "--force"])?;
        let state = c.state_dir(h);
        if state.exists() {
            std::fs::remove_dir_all(&state)?;
        }
    }
    Ok(())
}

/// [`Cluster::wait_formed`] with the agents supervised as the node template's systemd unit
/// does (`Restart=on-failure`, `RestartSec=5s`, `RestartPreventExitStatus=78`): an agent
/// that exited with another status is started again (after at least 5 s), and said so.
/// Returns the swarm id and how many restarts it took.
fn wait_formed_supervised(c: &Cluster, hosts: &[usize]) -> anyhow::Result<(String, usize)> {
    let deadline = Instant::now() + FORM;
    let mut restarts = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.wait_formed(hosts, 3, 2, left.min(Duration::from_secs(10))) {
            Ok(id) => return Ok((id, restarts)),
            Err(e) if left.is_zero() => return Err(e),
            Err(_) => {}
        }
        for &i in hosts {
            let Some(p) = c.agent(i) else { continue };
            if let Some(st) = p.try_wait()? {
                if st.code() == Some(78) {
                    anyhow::bail!(
                        "{}'s agent exited 78 (configuration):\n{}",
                        c.lab.host(i).name(),
                        p.log()
                    );
                }
                eprintln!(
                    "LAB ETCD: {}'s agent exited ({st}); started again as systemd would: {}",
                    c.lab.host(i).name(),
                    lines_matching(&p.log(), "error").last().unwrap_or(&"")
                );
                c.start_agent(i)?;
                restarts += 1;
            }
        }
    }
}

/// Start host `i`'s agent and wait (deadline) for it to exit; returns its log. Fails if it
/// is still running at the deadline (it would retry forever) or exits other than 78.
fn expect_agent_gives_up(c: &Cluster, i: usize, what: &str) -> anyhow::Result<String> {
    let t0 = Instant::now();
    let from = c.agent(i).map(|p| p.log().len()).unwrap_or(0);
    let p = c.start_agent(i)?;
    let st = p.wait_timeout(GIVE_UP).map_err(|e| {
        anyhow::anyhow!(
            "{what}: the agent did not give up within {GIVE_UP:?} ({e}); its log:\n{}",
            p.log()
        )
    })?;
    // (The host's earlier agents wrote to the same log.)
    let log = p.log().get(from..).unwrap_or_default().to_string();
    // 78 (EX_CONFIG): retrying cannot help; the systemd unit does not restart on it.
    assert_eq!(st.code(), Some(78), "{what}: the agent exited {st}:\n{log}");
    eprintln!(
        "LAB ETCD {what}: the agent exited ({st}) after {:?}; its error lines:\n{}",
        t0.elapsed(),
        lines_matching(&log, "error").join("\n")
    );
    Ok(log)
}

#[test]
fn five_hosts_form_swarms_through_etcd_across_member_failures() -> anyhow::Result<()> {
    let lab = Lab::start(LabConfig::new(5))?;
    let c = Cluster::new_etcd(lab, "e1", AgentOptions::default())?;
    let etcd = c.etcd().expect("an etcd cluster");
    nginx::enable_lb(&c, &[])?;
    let all: Vec<usize> = (0..5).collect();

    // a. The leader dies right after the init lease is claimed.
    let leader = etcd.leader()?;
    let mut watch = etcd.watch(&format!("{}state", cluster_prefix("e1")))?;
    let t0 = Instant::now();
    c.start_agents()?;
    watch.wait(FORM, "the init lease claimed", |v| {
        v.contains("\"lease\":{")
    })?;
    drop(watch);
    etcd.kill_member(leader)?;
    eprintln!(
        "LAB ETCD: init lease claimed {:?} after the agents started; etcd leader (member {}) \
         SIGKILLed",
        t0.elapsed(),
        leader + 1
    );
    let (swarm_id, restarts) = wait_formed_supervised(&c, &all)?;
    eprintln!(
        "LAB ETCD: 5 hosts formed one swarm in {:?} ({restarts} agent restarts)",
        t0.elapsed()
    );
    assert_eq!(
        c.init_count(),
        1,
        "exactly one swarm init\n{}",
        c.diagnostics()
    );
    for &i in &all {
        let (_, st) = c.status(i)?;
        assert_eq!(st["backend"]["kind"], "etcd", "{st}");
        assert_eq!(
            st["swarm"]["swarm_id"].as_str(),
            Some(swarm_id.as_str()),
            "{st}"
        );
    }
    let managers = all
        .iter()
        .filter(|&&i| is_manager(&c, i) == Some(true))
        .count();
    assert_eq!(managers, 3, "{}", c.diagnostics());
    c.assert_no_secret_in_logs()?;
    // The manager join token lives under the managers-only prefix, not in the shared state.
    let keys = etcd.keys(&managers_prefix("e1"))?;
    eprintln!("LAB ETCD: keys under {}: {keys:?}", managers_prefix("e1"));
    let addrs: Vec<_> = c.lab.hosts().iter().map(|h| h.addr()).collect();
    nginx::wait_identical(
        &c,
        &all,
        Duration::from_secs(90),
        "all 5 hosts in every load-balancer config",
        nginx::lists_every(&addrs, LB_PORT),
    )?;

    // b. The killed member back, then the current leader partitioned away, and a second
    //    swarm formed through the two members left.
    etcd.restart_member(leader)?;
    let cut = etcd.leader()?;
    blank_hosts(&c)?;
    let mut c = c;
    c.name = "e2".into();
    let etcd = c.etcd().expect("an etcd cluster");
    let (_, manager_role) = etcd.add_cluster_roles("e2")?;
    let e2 = etcd.add_user(&manager_role, &[&manager_role])?;
    c.set_etcd_creds(&all, &e2)?;
    nginx::enable_lb(&c, &[])?;
    etcd.partition(cut)?;
    // An agent started again on a host appends to the same log: count from here.
    let logged: Vec<usize> = all
        .iter()
        .map(|&i| c.agent(i).map(|p| p.log().len()).unwrap_or(0))
        .collect();
    let t1 = Instant::now();
    c.start_agents()?;
    let (second, restarts) = wait_formed_supervised(&c, &all)?;
    eprintln!(
        "LAB ETCD: with member {} (the leader) partitioned away, 5 hosts formed a second swarm \
         in {:?} ({restarts} agent restarts)",
        cut + 1,
        t1.elapsed()
    );
    assert_ne!(second, swarm_id, "a new swarm, not the first one");
    let inits: usize = all
        .iter()
        .map(|&i| {
            let log = c.agent(i).map(|p| p.log()).unwrap_or_default();
            count_inits(log.get(logged[i]..).unwrap_or(""))
        })
        .sum();
    assert_eq!(inits, 1, "exactly one swarm init\n{}", c.diagnostics());
    etcd.heal()?;
    c.assert_no_secret_in_logs()?;

    // c. and d. on a worker of the second swarm, taken out of it.
    let w = (0..5)
        .find(|&i| is_manager(&c, i) == Some(false))
        .expect("a worker");
    if let Some(p) = c.agent(w) {
        p.stop(Duration::from_secs(15))?;
    }
    let h = c.lab.host(w);
    h.docker(&["swarm", "leave", "--force"])?;
    std::fs::remove_dir_all(c.state_dir(h))?;

    // c. A user whose role grants cluster `other`'s prefixes only.
    let (_, other_role) = role_names("other");
    etcd.add_role(
        &other_role,
        &[cluster_prefix("other"), managers_prefix("other")],
    )?;
    let stranger = etcd.add_user(&other_role, &[&other_role])?;
    c.set_etcd_creds(&[w], &stranger)?;
    let log = expect_agent_gives_up(&c, w, "user without the cluster's prefix")?;
    assert!(
        log.contains(&stranger.user) && log.contains(&cluster_prefix("e2")),
        "the error names neither the user {} nor the prefix {}:\n{log}",
        stranger.user,
        cluster_prefix("e2")
    );

    // d. The right user, but a client certificate signed by another CA.
    let foreign = etcd.foreign_client_cert(&e2)?;
    c.set_etcd_creds(&[w], &foreign)?;
    let log = expect_agent_gives_up(&c, w, "client certificate of another CA")?;
    assert!(
        !lines_matching(&log, "certificate").is_empty(),
        "the error does not say it is the certificate:\n{log}"
    );
    c.assert_no_secret_in_logs()?;
    Ok(())
}
