//! End-to-end tests of the lab harness itself (root + dockerd required; they fail, never
//! skip, without them). Labs are serialized by the machine-wide lab lock, so these can run
//! with any number of test threads.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use swarmstrap_lab::proc::{pid_alive, Signal};
use swarmstrap_lab::{
    baseline_form, cleanup_stale, EngineStop, Lab, LabConfig, LabTraces, ManagerStatus, NodeStatus,
    Shape,
};

fn start(config: LabConfig) -> Lab {
    Lab::start(config).unwrap_or_else(|e| panic!("could not start the lab: {e}"))
}

fn ok<T>(r: swarmstrap_lab::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// `ip netns exec <ns> busybox ping -c1 -W1 <addr>` succeeds.
fn ping(ns: &str, addr: &str) -> bool {
    ok(swarmstrap_lab::image::check_busybox(), "busybox for ping");
    Command::new("ip")
        .args(["netns", "exec", ns, "busybox", "ping", "-c1", "-W1", addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One HTTP answer on `listener`, from a thread; returns what the client sent.
fn serve_once(listener: TcpListener, body: &'static str) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).expect("read request");
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
        }
        write!(
            s,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        String::from_utf8_lossy(&req).into_owned()
    })
}

#[test]
fn harness_self_test_three_hosts_reach_each_other_and_teardown_is_clean() {
    let lab = start(LabConfig::new(3));
    eprintln!(
        "lab {} (198.18.{}.0/24): 3 engines up in {:?}",
        lab.id(),
        lab.subnet(),
        lab.engines_ready_in().unwrap()
    );
    assert!(lab.id().len() <= 4 && lab.bridge().len() <= 15);

    // Every engine answers through the CLI and has its own hostname.
    for h in lab.hosts() {
        let name = ok(h.docker(&["info", "--format", "{{.Name}}"]), "docker info");
        assert_eq!(name.trim(), h.name());
        assert!(!ok(h.swarm_info(), "swarm info").is_active());
    }
    // Every namespace reaches every other host and the bridge address.
    for a in lab.hosts() {
        for b in lab.hosts() {
            assert!(
                ping(a.netns(), &b.addr().to_string()),
                "{} cannot ping {} ({})",
                a.name(),
                b.name(),
                b.addr()
            );
        }
        assert!(ping(a.netns(), &lab.bridge_addr().to_string()));
    }

    // A process spawned in node2's namespace reaches a server on the bridge address (where a
    // coordinator will listen) and has node2's hostname.
    let listener = TcpListener::bind((lab.bridge_addr(), 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = serve_once(listener, "hello-from-root-ns");
    let mut cmd = Command::new("busybox");
    cmd.args([
        "sh",
        "-c",
        &format!(
            "echo host=$(hostname); busybox wget -q -O - http://{}:{port}/probe",
            lab.bridge_addr()
        ),
    ]);
    let probe = ok(lab.host(1).spawn_in_netns("probe", cmd), "spawn probe");
    let status = ok(probe.wait_timeout(Duration::from_secs(20)), "probe exit");
    let log = probe.log();
    assert!(status.success(), "probe failed: {log}");
    assert!(log.contains("host=node2"), "{log}");
    assert!(log.contains("hello-from-root-ns"), "{log}");
    assert!(server.join().unwrap().starts_with("GET /probe"));

    // A long-running process: signals work, and one left running is killed at teardown.
    let sleeper = ok(
        lab.host(0).spawn_in_netns("sleeper", {
            let mut c = Command::new("busybox");
            c.args(["sleep", "1000"]);
            c
        }),
        "spawn sleeper",
    );
    let stopped = ok(
        lab.host(0).spawn_in_netns("stopped", {
            let mut c = Command::new("busybox");
            c.args(["sleep", "1000"]);
            c
        }),
        "spawn stopped",
    );
    assert!(sleeper.is_running() && stopped.is_running());
    ok(stopped.kill(Signal::TERM), "SIGTERM");
    let st = ok(
        stopped.wait_timeout(Duration::from_secs(10)),
        "wait after SIGTERM",
    );
    assert!(!st.success());

    // Engine lifecycle on node3: graceful stop, restart, crash (SIGKILL), restart.
    let h3 = lab.host(2);
    let pid = h3.engine_pid().expect("node3 engine runs");
    let t = Instant::now();
    let stop = ok(h3.stop_engine(), "stop_engine");
    assert!(matches!(stop, EngineStop::Exited(_)), "{stop:?}");
    assert!(!pid_alive(pid) && !h3.engine_running());
    eprintln!("node3 engine stopped gracefully in {:?}", t.elapsed());
    let t = Instant::now();
    ok(h3.start_engine(), "restart");
    ok(
        h3.wait_engine_ready(Duration::from_secs(60)),
        "ready after restart",
    );
    eprintln!("node3 engine restarted in {:?}", t.elapsed());
    let pid = h3.engine_pid().unwrap();
    ok(h3.kill_engine(), "kill_engine");
    assert!(!pid_alive(pid));
    assert!(h3.api().ping().is_err());
    ok(h3.start_engine(), "start after crash");
    ok(
        h3.wait_engine_ready(Duration::from_secs(60)),
        "ready after crash",
    );
    assert!(
        h3.start_engine().is_err(),
        "a running engine cannot be started twice"
    );

    let engine_pids: Vec<i32> = lab.hosts().iter().filter_map(|h| h.engine_pid()).collect();
    assert_eq!(engine_pids.len(), 3);
    let traces = lab.traces();
    assert!(!traces.leftovers().is_empty(), "a live lab has traces");
    let report = ok(lab.teardown(), "teardown");
    eprintln!("teardown took {:?}", report.took);
    assert!(traces.leftovers().is_empty(), "{:?}", traces.leftovers());
    assert!(!pid_alive(sleeper.pid()), "the sleeper survived teardown");
    for p in engine_pids {
        assert!(!pid_alive(p), "dockerd {p} survived teardown");
    }
}

#[test]
fn baseline_script_forms_three_managers_and_two_workers() {
    let lab = start(LabConfig::new(5));
    eprintln!("5 engines up in {:?}", lab.engines_ready_in().unwrap());
    let took = ok(baseline_form(&lab, 3, 2), "baseline formation");
    eprintln!("baseline: init + parallel join -> 5 Ready in {took:?}");

    // Check through the CLI, independently of the API the formation used.
    let leader = lab.host(0);
    let nodes = ok(leader.node_ls(), "docker node ls");
    let shape = Shape::of(&nodes);
    assert!(shape.is(3, 2), "{shape}");
    let mut hostnames: Vec<&str> = nodes.iter().map(|n| n.hostname.as_str()).collect();
    hostnames.sort();
    assert_eq!(hostnames, ["node1", "node2", "node3", "node4", "node5"]);
    assert!(nodes.iter().all(|n| n.status == NodeStatus::Ready));
    let by_name = |name: &str| nodes.iter().find(|n| n.hostname == name).unwrap();
    assert_eq!(by_name("node1").manager_status, ManagerStatus::Leader);
    assert!(by_name("node1").is_self);
    for m in ["node2", "node3"] {
        assert_eq!(by_name(m).manager_status, ManagerStatus::Reachable);
    }
    for w in ["node4", "node5"] {
        assert_eq!(by_name(w).manager_status, ManagerStatus::None);
    }

    // One cluster: every manager reports the same swarm id; workers are active members.
    let infos: Vec<_> = lab
        .hosts()
        .iter()
        .map(|h| ok(h.swarm_info(), "docker info"))
        .collect();
    let cluster = infos[0]
        .cluster_id()
        .expect("a manager knows the cluster id")
        .to_string();
    for (i, info) in infos.iter().enumerate() {
        assert!(info.is_active(), "{}: {info:?}", lab.host(i).name());
        if i < 3 {
            assert!(info.control_available);
            assert_eq!(info.cluster_id(), Some(cluster.as_str()));
            assert_eq!((info.nodes, info.managers), (Some(5), Some(3)));
        } else {
            assert!(!info.control_available && info.cluster_id().is_none());
        }
    }
    let traces = lab.traces();
    let report = ok(lab.teardown(), "teardown");
    eprintln!("teardown of a 5-node swarm took {:?}", report.took);
    assert!(traces.leftovers().is_empty(), "{:?}", traces.leftovers());
}

/// `GET /` on `addr:port` from the root namespace; the body on a 200.
fn http_get(addr: std::net::Ipv4Addr, port: u16) -> swarmstrap_lab::Result<Option<String>> {
    let io = |e| swarmstrap_lab::LabError::Check(format!("GET http://{addr}:{port}/: {e}"));
    let Ok(mut s) =
        std::net::TcpStream::connect_timeout(&(addr, port).into(), Duration::from_secs(2))
    else {
        return Ok(None);
    };
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").map_err(io)?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(io)?;
    let status = resp.split_whitespace().nth(1);
    Ok((status == Some("200")).then(|| {
        resp.split("\r\n\r\n")
            .nth(1)
            .unwrap_or("")
            .trim()
            .to_string()
    }))
}

#[test]
fn a_global_service_on_the_baseline_swarm_serves_http_on_every_node() {
    let lab = start(LabConfig::new(3));
    ok(baseline_form(&lab, 1, 2), "baseline formation");
    ok(lab.import_busybox("lab/busybox:1"), "import busybox");
    let manager = lab.host(0);
    ok(
        manager.docker(&[
            "service",
            "create",
            "--detach",
            "--no-resolve-image",
            "--name",
            "web",
            "--mode",
            "global",
            "--hostname",
            "{{.Node.Hostname}}",
            "--publish",
            "mode=host,target=80,published=8081",
            "lab/busybox:1",
            "sh",
            "-c",
            "hostname > /www/index.html && exec httpd -f -p 80 -h /www",
        ]),
        "docker service create",
    );
    // The routing mesh does not work here (no IPVS): each node serves on its own address.
    for h in lab.hosts() {
        let body = ok(
            swarmstrap_lab::wait_until(
                Duration::from_secs(60),
                &format!("the web task on {} to answer", h.name()),
                || http_get(h.addr(), 8081),
            ),
            "web service",
        );
        assert_eq!(body, h.name());
    }
    let traces = lab.traces();
    ok(lab.teardown(), "teardown");
    assert!(traces.leftovers().is_empty(), "{:?}", traces.leftovers());
}

#[test]
fn an_image_with_only_a_static_binary_runs_and_one_with_a_dynamic_binary_does_not() {
    let lab = start(LabConfig::new(1));
    let h = lab.host(0);

    ok(
        lab.import_single_binary("lab/static-only:1", "/bin/busybox".as_ref(), "/busybox"),
        "import static image",
    );
    let out = ok(
        h.docker(&[
            "run",
            "--rm",
            "--network",
            "none",
            "lab/static-only:1",
            "/busybox",
            "echo",
            "static-ok",
        ]),
        "run the static binary",
    );
    assert_eq!(out.trim(), "static-ok");

    // Negative control: a dynamically linked binary alone cannot run (no loader, no libc),
    // so the check above really tells static from dynamic.
    let dynamic = "/usr/bin/true";
    ok(
        lab.import_single_binary("lab/dynamic-only:1", dynamic.as_ref(), "/true"),
        "import dynamic image",
    );
    let out = ok(
        h.docker_output(&[
            "run",
            "--rm",
            "--network",
            "none",
            "lab/dynamic-only:1",
            "/true",
        ]),
        "docker run",
    );
    assert!(!out.success(), "a dynamic binary ran without its loader?");

    // The busybox image: a shell and the usual applets, with default (bridge) networking.
    ok(lab.import_busybox("lab/busybox:1"), "import busybox");
    let out = ok(
        h.docker(&[
            "run",
            "--rm",
            "--hostname",
            "box1",
            "lab/busybox:1",
            "sh",
            "-c",
            "echo $((40+2)) $(hostname); ls /bin/httpd",
        ]),
        "run busybox",
    );
    assert_eq!(out.trim(), "42 box1\n/bin/httpd");
    let traces = lab.traces();
    ok(lab.teardown(), "teardown");
    assert!(traces.leftovers().is_empty(), "{:?}", traces.leftovers());
}

#[test]
fn a_panicking_test_still_tears_its_lab_down() {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::Builder::new()
        .name("doomed-lab".into())
        .spawn(move || {
            let lab = start(LabConfig::new(2));
            let sleeper = lab
                .host(1)
                .spawn_in_netns("sleeper", {
                    let mut c = Command::new("busybox");
                    c.args(["sleep", "1000"]);
                    c
                })
                .unwrap();
            let pids: Vec<i32> = lab
                .hosts()
                .iter()
                .filter_map(|h| h.engine_pid())
                .chain([sleeper.pid()])
                .collect();
            tx.send((lab.traces(), pids)).unwrap();
            panic!("deliberate panic with a live lab");
        })
        .unwrap();
    let (traces, pids): (LabTraces, Vec<i32>) =
        rx.recv().expect("the lab thread did not report its lab");
    assert_eq!(pids.len(), 3);
    assert!(t.join().is_err(), "the thread should have panicked");
    assert!(traces.leftovers().is_empty(), "{:?}", traces.leftovers());
    for p in pids {
        assert!(!pid_alive(p), "pid {p} survived the panic teardown");
    }
}

#[test]
fn cleanup_stale_removes_what_a_crashed_run_left() {
    let exe = env!("CARGO_BIN_EXE_lab-ctl");
    let mut child = Command::new(exe)
        .args(["abandon", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let id = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("id="))
        .unwrap_or_else(|| panic!("lab-ctl abandon printed {line:?}"))
        .to_string();
    // While the abandoned lab is alive (its process holds the lab lock), record it.
    let traces = LabTraces::of(&id, 2);
    assert_eq!(traces.netns_inodes.len(), 2);
    let before = traces.leftovers();
    let engines = before.iter().filter(|l| l.contains("dockerd")).count();
    assert!(engines >= 2, "expected 2 dockerds, saw {before:?}");
    // Crash it: SIGKILL, no teardown runs.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!traces.leftovers().is_empty());

    let report = cleanup_stale().unwrap_or_else(|e| panic!("cleanup_stale: {e}"));
    eprintln!("cleanup_stale: {report:?}");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(traces.leftovers().is_empty(), "{:?}", traces.leftovers());
}
