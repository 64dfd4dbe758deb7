//! The live load-balancer config, end to end on real engines and a real nginx.
//!
//! A 5-host lab with the real static coordinator and agents (`[lb]` enabled, each host writing
//! `<host dir>/loadbalancer/default.conf`), a global busybox httpd service published in host
//! mode on 8080 (each task answers its node's hostname), and Debian's nginx in node1's network
//! namespace including node1's rendered file. Every wait has a deadline.
//!
//! `SWARMSTRAP_LAB_BACKEND=etcd` runs both tests on the etcd backend (the lab's 3-member etcd
//! instead of the coordinator).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use swarmstrap_lab::cluster::{AgentOptions, Cluster};
use swarmstrap_lab::nginx::{self, Nginx};
use swarmstrap_lab::{wait_for, Lab, LabConfig, Signal};

const FORM: Duration = Duration::from_secs(90);
const PORT: u16 = 8080;
/// The agents' metrics listener (`SWARM_AGENT_METRICS_LISTEN`), loopback of each host's netns.
const METRICS_PORT: u16 = 9464;

/// The value of one series (`name{labels}` exactly as exposed) in an OpenMetrics text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|r| r.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Sum of every sample of a metric family (`name{…} v` and `name v` lines).
fn family_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn all(c: &Cluster) -> Vec<usize> {
    (0..c.lab.hosts().len()).collect()
}

/// The upstream addresses of a rendered default config.
fn listed(t: &str) -> BTreeSet<String> {
    t.lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .filter(|l| l.ends_with(';'))
        .filter_map(|l| l.split(':').next())
        .map(str::to_string)
        .collect()
}

/// A check for [`nginx::wait_identical`]: exactly these hosts are listed.
fn exactly(c: &Cluster, hosts: &[usize]) -> impl Fn(&str) -> Result<(), String> {
    let want: BTreeSet<String> = hosts
        .iter()
        .map(|&i| c.lab.host(i).addr().to_string())
        .collect();
    move |t| {
        let got = listed(t);
        if got == want {
            Ok(())
        } else {
            Err(format!("listed {got:?}, want {want:?}"))
        }
    }
}

/// Make requests through nginx until every host's name was answered (deadline).
fn wait_all_names_through(c: &Cluster, via: usize, timeout: Duration) -> anyhow::Result<usize> {
    let want: BTreeSet<String> = c.lab.hosts().iter().map(|h| h.name().to_string()).collect();
    let mut seen = BTreeSet::new();
    let mut requests = 0;
    let addr = c.lab.host(via).addr();
    wait_for(timeout, "responses from every host through nginx", || {
        // A burst per attempt: round robin walks the upstream in order.
        for _ in 0..10 {
            requests += 1;
            if let Some(body) = nginx::http_get(addr, 80)
                .map_err(|e| swarmstrap_lab::LabError::Check(format!("GET through nginx: {e:#}")))?
            {
                seen.insert(body);
            }
        }
        if want.is_subset(&seen) {
            Ok(Ok(requests))
        } else {
            Ok(Err(format!("seen {seen:?}")))
        }
    })
    .map_err(anyhow::Error::from)
}

/// Start a 5-host cluster with the load balancer on, formed, with the hostname service.
fn cluster(name: &str, extra: &[String]) -> anyhow::Result<Cluster> {
    let lab = Lab::start(LabConfig::new(5))?;
    let options = AgentOptions {
        env: vec![(
            "SWARM_AGENT_METRICS_LISTEN".into(),
            format!("127.0.0.1:{METRICS_PORT}"),
        )],
        ..AgentOptions::default()
    };
    let c = Cluster::new_from_env(lab, name, options)?;
    nginx::enable_lb(&c, extra)?;
    c.start_agents()?;
    c.wait_formed(&all(&c), 3, 2, FORM)?;
    Ok(c)
}

#[test]
fn every_host_renders_the_same_live_config_and_nginx_proxies_to_every_host() -> anyhow::Result<()> {
    let c = cluster("lb", &[])?;
    // Roles are assigned by the race: create the service through any manager.
    let manager = all(&c)
        .into_iter()
        .find(|&i| {
            c.lab
                .host(i)
                .swarm_info()
                .map(|s| s.control_available)
                .unwrap_or(false)
        })
        .expect("a manager");
    nginx::create_hostname_service(&c, manager, "web", PORT)?;
    let hosts = all(&c);
    let addrs: Vec<_> = c.lab.hosts().iter().map(|h| h.addr()).collect();

    // 1. Every host has the identical config listing all 5 hosts.
    let t0 = Instant::now();
    let conf = nginx::wait_identical(
        &c,
        &hosts,
        Duration::from_secs(60),
        "all 5 hosts in every config",
        nginx::lists_every(&addrs, PORT),
    )?;
    eprintln!(
        "identical config on all hosts {:?} after formation:\n{conf}",
        t0.elapsed()
    );
    assert!(
        conf.contains("listen 80;") && conf.contains("proxy_pass http://swarm;"),
        "{conf}"
    );
    // Sorted by address (numerically: .1 … .5).
    let pos: Vec<_> = addrs
        .iter()
        .map(|a| conf.find(&nginx::server_line(*a, PORT)).unwrap())
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "sorted: {conf}");
    // `lb render` prints exactly what was written; status agrees everywhere, no drift.
    assert_eq!(nginx::lb_render(&c, c.lab.host(2))?, conf);
    let mut versions = BTreeSet::new();
    for i in all(&c) {
        let lb = nginx::lb_status(&c, i)?;
        assert_eq!(lb["enabled"], true, "{lb}");
        assert_eq!(lb["drift"], false, "{lb}");
        assert_eq!(lb["last_error"], serde_json::Value::Null, "{lb}");
        assert_eq!(lb["ready_nodes"], 5, "{lb}");
        assert!(lb["applied_at"].is_string(), "{lb}");
        versions.insert((lb["version"].to_string(), lb["sha256"].to_string()));
    }
    assert_eq!(
        versions.len(),
        1,
        "one version and sha everywhere: {versions:?}"
    );
    eprintln!("status lb (node1): {}", nginx::lb_status(&c, 0)?);

    // 1b. Each agent's metrics, scraped on loopback inside its host's namespace: joined, its
    //     engine's role, configs rendered; the leader's agent published the membership.
    let mut publishes = 0.0;
    for i in all(&c) {
        let h = c.lab.host(i);
        let text = wait_for(
            Duration::from_secs(30),
            "the agent's metrics to show joined and its engine's role",
            || {
                let text = c
                    .scrape_metrics(i, METRICS_PORT)
                    .map_err(|e| swarmstrap_lab::LabError::Check(format!("{e:#}")))?;
                let manager = h
                    .swarm_info()
                    .map_err(|e| swarmstrap_lab::LabError::Check(format!("{e:#}")))?
                    .control_available;
                let role = if manager { "manager" } else { "worker" };
                let other = if manager { "worker" } else { "manager" };
                if sample(&text, r#"swarm_agent_phase{phase="joined"}"#) == Some(1.0)
                    && sample(&text, &format!(r#"swarm_agent_role{{role="{role}"}}"#)) == Some(1.0)
                    && sample(&text, &format!(r#"swarm_agent_role{{role="{other}"}}"#)) == Some(0.0)
                {
                    Ok(Ok(text))
                } else {
                    Ok(Err(format!("want joined and {role}:\n{text}")))
                }
            },
        )
        .map_err(|e| {
            let log = c.agent(i).map(|p| p.log()).unwrap_or_default();
            let lines: Vec<&str> = log.lines().filter(|l| l.contains("metrics")).collect();
            anyhow::anyhow!("{e}; the agent's log on metrics: {lines:?}")
        })?;
        assert!(text.contains("# TYPE swarm_agent_phase gauge"), "{text}");
        assert_eq!(
            family_sum(&text, "swarm_agent_phase"),
            1.0,
            "exactly one phase is current on {}:\n{text}",
            h.name()
        );
        let renders = family_sum(&text, "swarm_agent_lb_renders_total");
        assert!(renders > 0.0, "LB renders on {}:\n{text}", h.name());
        assert!(
            sample(&text, r#"swarm_agent_lb_renders_total{outcome="written"}"#)
                .is_some_and(|n| n >= 1.0),
            "{}:\n{text}",
            h.name()
        );
        assert_eq!(family_sum(&text, "swarm_agent_lb_rejections_total"), 0.0);
        assert!(
            sample(&text, "swarm_agent_bootstrap_duration_seconds").is_some_and(|s| s > 0.0),
            "the bootstrap was timed on {}:\n{text}",
            h.name()
        );
        publishes += family_sum(&text, "swarm_agent_lb_membership_publishes_total");
        eprintln!(
            "{} metrics: {renders} LB renders, bootstrap {:?} s",
            h.name(),
            sample(&text, "swarm_agent_bootstrap_duration_seconds")
        );
    }
    assert!(
        publishes >= 1.0,
        "the leader's agent published the membership"
    );
    // Loopback only: the metrics port is not open on the host's lab address.
    assert!(
        std::net::TcpStream::connect_timeout(
            &(c.lab.host(0).addr(), METRICS_PORT).into(),
            Duration::from_secs(2)
        )
        .is_err(),
        "the agent's metrics must not be reachable on the network"
    );

    // 2. A real nginx loaded with node1's file proxies to the service on every host.
    let ngx = Nginx::start(c.lab.host(0), &nginx::lb_path(c.lab.host(0)), 80)?;
    let n = wait_all_names_through(&c, 0, Duration::from_secs(90))?;
    eprintln!(
        "all 5 hostnames answered through nginx (pid {}) in {n} requests",
        ngx.pid()
    );

    // 3. A worker's engine stops → the others drop it within seconds; back when it returns.
    let w = all(&c)
        .into_iter()
        .rev()
        .find(|&i| {
            !c.lab
                .host(i)
                .swarm_info()
                .map(|s| s.control_available)
                .unwrap_or(true)
        })
        .expect("a worker");
    let wh = c.lab.host(w);
    let others: Vec<_> = all(&c).into_iter().filter(|&i| i != w).collect();
    let stopped = Instant::now();
    wh.stop_engine()?;
    let dropped = nginx::wait_identical(
        &c,
        &others,
        Duration::from_secs(60),
        "the stopped worker dropped",
        exactly(&c, &others),
    )?;
    eprintln!(
        "{} dropped on the other hosts {:?} after its engine stop",
        wh.name(),
        stopped.elapsed()
    );
    assert_eq!(dropped.matches("    server ").count(), 4, "{dropped}");
    // nginx (reloaded, as the agent does to nginx containers) still answers from the others.
    ngx.reload()?;
    let started = Instant::now();
    wh.start_engine()?;
    wh.wait_engine_ready(Duration::from_secs(60))?;
    let back = nginx::wait_identical(
        &c,
        &hosts,
        Duration::from_secs(90),
        "the worker back everywhere",
        exactly(&c, &hosts),
    )?;
    eprintln!(
        "{} back on every host {:?} after its engine start",
        wh.name(),
        started.elapsed()
    );
    assert_eq!(back, conf, "the same config as before the stop");
    ngx.reload()?;
    wait_all_names_through(&c, 0, Duration::from_secs(90))?;

    // 4. A template that renders an invalid nginx config is rejected: old file kept, status
    //    says why. (Agents restarted with the template; SIGTERM stops them cleanly.)
    let tpl = c.lab.root().join("broken.conf.j2");
    std::fs::write(
        &tpl,
        "upstream swarm {\n{% for n in ready %}    server {{ n.addr }}:8080 not_a_parameter;\n{% endfor %}}\n",
    )?;
    for i in all(&c) {
        let p = c.agent(i).unwrap();
        p.kill(Signal::TERM)?;
        let st = p.wait_timeout(Duration::from_secs(20))?;
        assert!(
            st.success(),
            "SIGTERM stops the agent cleanly (exit 0), got {st}"
        );
    }
    nginx::enable_lb(
        &c,
        &[format!(
            "template_file = {}",
            nginx::toml_str(&tpl.display().to_string())
        )],
    )?;
    for i in all(&c) {
        c.start_agent(i)?;
    }
    for i in all(&c) {
        let lb = wait_for(
            Duration::from_secs(60),
            "status to report the rejected config",
            || {
                let lb = nginx::lb_status(&c, i)
                    .map_err(|e| swarmstrap_lab::LabError::Check(format!("{e:#}")))?;
                let msg = lb["last_error"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                if msg.contains("rejected") && msg.contains("not_a_parameter") {
                    Ok(Ok(lb))
                } else {
                    Ok(Err(format!("lb status {lb}")))
                }
            },
        )?;
        assert_eq!(lb["drift"], false, "{lb}");
        assert_eq!(
            nginx::read_lb(c.lab.host(i)).as_deref(),
            Some(conf.as_str()),
            "the old file stays on {}",
            c.lab.host(i).name()
        );
        let log = c.agent(i).unwrap().log();
        assert!(
            log.contains("rejected by"),
            "the agent log reports it: {log}"
        );
    }
    eprintln!(
        "status lb with the broken template (node1): {}",
        nginx::lb_status(&c, 0)?
    );
    // ... and counted as a rejection by reason.
    for i in all(&c) {
        let text = c.scrape_metrics(i, METRICS_PORT)?;
        assert!(
            sample(
                &text,
                r#"swarm_agent_lb_rejections_total{reason="invalid"}"#
            )
            .is_some_and(|n| n >= 1.0),
            "{}:\n{text}",
            c.lab.host(i).name()
        );
    }
    // nginx still serves every host with the kept config.
    ngx.reload()?;
    wait_all_names_through(&c, 0, Duration::from_secs(60))?;
    ngx.stop()?;
    c.assert_no_secret_in_logs()?;
    Ok(())
}

#[test]
fn a_new_leaders_agent_takes_over_and_nginx_containers_are_reloaded() -> anyhow::Result<()> {
    let c = cluster("lb-leader", &[])?;
    let hosts = all(&c);
    let addrs: Vec<_> = c.lab.hosts().iter().map(|h| h.addr()).collect();
    // A stand-in for the nginx containers on every host: labelled like them, it records
    // every SIGHUP it gets into a bind-mounted file.
    c.lab.import_busybox("lab/busybox:lb")?;
    for h in c.lab.hosts() {
        let out = h.dir().join("hup");
        std::fs::create_dir_all(&out)?;
        h.docker(&[
            "run",
            "--detach",
            "--name",
            "fake-nginx",
            "--label",
            "swarmstrap.lb=nginx",
            "-v",
            &format!("{}:/out", out.display()),
            "lab/busybox:lb",
            "sh",
            "-c",
            "trap 'echo hup >> /out/hups' HUP; echo up > /out/ready; while true; do sleep 3600 & wait $!; done",
        ])?;
    }
    nginx::wait_identical(
        &c,
        &hosts,
        Duration::from_secs(60),
        "all 5 hosts in every config",
        nginx::lists_every(&addrs, PORT),
    )?;
    let hups = |i: usize| {
        std::fs::read_to_string(c.lab.host(i).dir().join("hup/hups"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let before: Vec<usize> = hosts.iter().map(|&i| hups(i)).collect();

    // Stop the leader's engine: the remaining managers elect a new leader, whose agent
    // publishes the old leader as Down.
    let leader = hosts
        .iter()
        .copied()
        .find(|&i| {
            swarmstrap_lab::swarm::api_nodes(&c.lab.host(i).api())
                .map(|ns| {
                    ns.iter().any(|n| {
                        n.hostname == c.lab.host(i).name()
                            && n.manager_status == swarmstrap_lab::ManagerStatus::Leader
                    })
                })
                .unwrap_or(false)
        })
        .expect("a leader");
    let lh = c.lab.host(leader);
    let others: Vec<_> = hosts.iter().copied().filter(|&i| i != leader).collect();
    let stopped = Instant::now();
    // While the leader is away, watch the other hosts' files: during the failover the
    // upstream must never lose a live node (swarm reports nodes `unknown` to a new leader).
    let fewest = std::sync::atomic::AtomicUsize::new(usize::MAX);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| -> anyhow::Result<()> {
        s.spawn(|| {
            let mut b =
                swarmstrap_lab::Backoff::new(Duration::from_millis(2), Duration::from_millis(10));
            let deadline = Instant::now() + Duration::from_secs(120);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for &i in &others {
                    if let Some(t) = nginx::read_lb(c.lab.host(i)) {
                        fewest.fetch_min(listed(&t).len(), std::sync::atomic::Ordering::Relaxed);
                    }
                }
                if !b.sleep_until_next(deadline) {
                    break;
                }
            }
        });
        let r = lh.stop_engine().map_err(anyhow::Error::from).and_then(|_| {
            nginx::wait_identical(
                &c,
                &others,
                Duration::from_secs(90),
                "the old leader dropped",
                exactly(&c, &others),
            )
        });
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        r.map(|_| ())
    })?;
    let fewest = fewest.into_inner();
    eprintln!("fewest upstream entries on the other hosts during the failover: {fewest}");
    assert!(
        fewest >= 4,
        "a live node left the upstream during the failover ({fewest} listed)"
    );
    eprintln!(
        "old leader {} dropped {:?} after its engine stop",
        lh.name(),
        stopped.elapsed()
    );
    let new_leader = others
        .iter()
        .copied()
        .find(|&i| {
            c.agent(i)
                .unwrap()
                .log()
                .contains("this engine is the swarm leader")
        })
        .expect("another agent took over publishing");
    eprintln!("the agent on {} took over", c.lab.host(new_leader).name());
    // Every other host's labelled container was sent SIGHUP after the change.
    wait_for(
        Duration::from_secs(30),
        "a SIGHUP on every other host",
        || match others.iter().find(|&&i| hups(i) <= before[i]) {
            Some(&i) => Ok(Err(format!("{} got no SIGHUP", c.lab.host(i).name()))),
            None => Ok(Ok(())),
        },
    )?;
    for &i in &others {
        assert!(
            c.agent(i)
                .unwrap()
                .log()
                .contains("reloaded 1 nginx container(s)"),
            "{}",
            c.agent(i).unwrap().log()
        );
    }
    lh.start_engine()?;
    lh.wait_engine_ready(Duration::from_secs(60))?;
    let conf = nginx::wait_identical(
        &c,
        &hosts,
        Duration::from_secs(90),
        "the old leader back",
        exactly(&c, &hosts),
    )?;

    // A hand-edited file is reported as drift, and repaired at the next render (at the
    // latest when the agent's long-poll times out, ~25 s).
    let h = c.lab.host(others[0]);
    std::fs::write(nginx::lb_path(h), format!("{conf}# edited by hand\n"))?;
    let lb = nginx::lb_status(&c, others[0])?;
    assert_eq!(lb["drift"], true, "{lb}");
    let repaired = Instant::now();
    wait_for(
        Duration::from_secs(60),
        "the edited file to be repaired",
        || {
            let lb = nginx::lb_status(&c, others[0])
                .map_err(|e| swarmstrap_lab::LabError::Check(format!("{e:#}")))?;
            if nginx::read_lb(h).as_deref() == Some(conf.as_str()) && lb["drift"] == false {
                Ok(Ok(()))
            } else {
                Ok(Err(format!("lb status {lb}")))
            }
        },
    )?;
    eprintln!(
        "hand edit on {} repaired after {:?}",
        h.name(),
        repaired.elapsed()
    );
    Ok(())
}
