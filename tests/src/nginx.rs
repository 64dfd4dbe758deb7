//! The live load-balancer config in the lab: agents with `[lb]` enabled, each host
//! writing its own `<host dir>/loadbalancer/default.conf`, and a real nginx (Debian's
//! `/usr/sbin/nginx`) run in a lab host's network namespace with a wrapper config that includes
//! a host's rendered file, started and stopped by pid like every lab process.
//!
//! Blocking, like the rest of the harness. Every wait has a deadline.

use crate::cluster::{bins, Cluster};
use crate::{wait_until, Host, LabError, ProcHandle, Signal};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Debian's nginx (package nginx-light).
pub const NGINX_BIN: &str = "/usr/sbin/nginx";

/// Where the agent of host `h` writes its config in the lab (on a VM: /loadbalancer/default.conf).
pub fn lb_path(h: &Host) -> PathBuf {
    h.dir().join("loadbalancer/default.conf")
}

/// Turn the load balancer on in every host's rendered `config.toml` (the cloud-init template
/// puts `[lb]` last): `enabled = true`, the per-host `path`, plus `extra` lines (e.g.
/// `template_file = "…"`). Call before starting (or restarting) the agents.
pub fn enable_lb(c: &Cluster, extra: &[String]) -> Result<()> {
    for h in c.lab.hosts() {
        let p = c.config_path(h);
        let text = fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let Some(at) = text.find("\n[lb]\n") else {
            bail!("{} has no [lb] table:\n{text}", p.display());
        };
        let mut out = text[..at].to_string();
        out.push_str("\n[lb]\nenabled = true\n");
        out.push_str(&format!(
            "path = {}\n",
            toml_str(&lb_path(h).display().to_string())
        ));
        for l in extra {
            out.push_str(l);
            out.push('\n');
        }
        fs::write(&p, out).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// A TOML basic string.
pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// The rendered config on host `h` (None while it is not written).
pub fn read_lb(h: &Host) -> Option<String> {
    fs::read_to_string(lb_path(h)).ok()
}

/// The upstream line of `addr` in the default rendering.
pub fn server_line(addr: Ipv4Addr, port: u16) -> String {
    format!("    server {addr}:{port};")
}

/// A check for [`wait_identical`]: every one of `addrs` has its upstream line on `port`.
pub fn lists_every(
    addrs: &[Ipv4Addr],
    port: u16,
) -> impl Fn(&str) -> std::result::Result<(), String> + '_ {
    move |t| match addrs.iter().find(|a| !t.contains(&server_line(**a, port))) {
        Some(a) => Err(format!("{a} missing")),
        None => Ok(()),
    }
}

/// Wait until every host in `hosts` has the identical config, and `check` accepts it. Returns
/// the content.
pub fn wait_identical(
    c: &Cluster,
    hosts: &[usize],
    timeout: Duration,
    what: &str,
    check: impl Fn(&str) -> std::result::Result<(), String>,
) -> Result<String> {
    let r = crate::wait_for(timeout, what, || {
        let mut first: Option<String> = None;
        for &i in hosts {
            let h = c.lab.host(i);
            let Some(text) = read_lb(h) else {
                return Ok(Err(format!("{} has no {}", h.name(), lb_path(h).display())));
            };
            if let Err(e) = check(&text) {
                return Ok(Err(format!("{}: {e}\n{text}", h.name())));
            }
            match &first {
                None => first = Some(text),
                Some(f) if *f != text => {
                    return Ok(Err(format!(
                        "{} differs from {}",
                        h.name(),
                        c.lab.host(hosts[0]).name()
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(first.ok_or_else(|| "no hosts".to_string()))
    });
    r.map_err(|e| anyhow::anyhow!("{e}\n{}", c.diagnostics()))
}

/// Environment for running `swarm-agent` CLI commands for host `h` outside the service (the
/// same VM-path overrides the cluster gives its agents; coordinator and etcd backends).
pub fn cli_env(c: &Cluster, h: &Host) -> Vec<(String, String)> {
    let mut env = c.etcd_file_env(h);
    env.extend([
        ("SWARM_AGENT_DOCKER_HOST".into(), h.docker_host()),
        (
            "SWARM_AGENT_STATE_DIR".into(),
            c.state_dir(h).display().to_string(),
        ),
        (
            "SWARM_AGENT_JOIN_SECRET_FILE".into(),
            h.dir().join("agent/join-secret").display().to_string(),
        ),
    ]);
    env
}

/// `swarm-agent lb render` for host `h` (in its network namespace): stdout on success.
pub fn lb_render(c: &Cluster, h: &Host) -> Result<String> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", h.netns_path().display()))
        .arg("--")
        .arg(&bins()?.agent)
        .args(["lb", "render", "--config"])
        .arg(c.config_path(h));
    for (k, v) in cli_env(c, h) {
        cmd.env(k, v);
    }
    let o = crate::cmd::run_unchecked(&mut cmd)?;
    if !o.status.success() {
        bail!(
            "swarm-agent lb render on {}: {}{}",
            h.name(),
            o.stdout,
            o.stderr
        );
    }
    Ok(o.stdout)
}

/// A real nginx in a lab host's network namespace, including one rendered config inside
/// `http {}` (as the nginx image includes `conf.d/default.conf`).
pub struct Nginx {
    proc: ProcHandle,
    dir: PathBuf,
}

impl Nginx {
    /// Start `nginx -g 'daemon off;'` in `h`'s netns with a wrapper that includes `include`,
    /// and wait (deadline) until it accepts connections on `h.addr():listen`.
    pub fn start(h: &Host, include: &Path, listen: u16) -> Result<Nginx> {
        if !Path::new(NGINX_BIN).is_file() {
            bail!("{NGINX_BIN} is missing: apt-get install nginx-light");
        }
        let dir = h.dir().join("nginx");
        fs::create_dir_all(&dir)?;
        let conf = dir.join("nginx.conf");
        fs::write(
            &conf,
            format!(
                "pid {d}/nginx.pid;\nerror_log stderr;\nworker_processes 1;\nevents {{}}\nhttp {{\n    access_log off;\n    client_body_temp_path {d}/body;\n    proxy_temp_path {d}/proxy;\n    include {inc};\n}}\n",
                d = dir.display(),
                inc = include.display()
            ),
        )?;
        let mut cmd = Command::new(NGINX_BIN);
        cmd.args(["-g", "daemon off;", "-e", "stderr", "-p"])
            .arg(&dir)
            .arg("-c")
            .arg(&conf);
        let proc = h.spawn_in_netns("nginx", cmd)?;
        let n = Nginx { proc, dir };
        let addr = (h.addr(), listen).into();
        wait_until(
            Duration::from_secs(20),
            &format!("nginx on {} accepting on :{listen}", h.name()),
            || {
                if let Some(st) = n.proc.try_wait()? {
                    return Err(LabError::Check(format!(
                        "nginx exited ({st}): {}",
                        n.proc.log()
                    )));
                }
                Ok(
                    TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                        .ok()
                        .map(|_| ()),
                )
            },
        )?;
        Ok(n)
    }

    pub fn pid(&self) -> i32 {
        self.proc.pid()
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// SIGHUP: re-read the config (what the agent does to nginx containers).
    pub fn reload(&self) -> Result<()> {
        self.proc.kill(Signal::HUP)?;
        Ok(())
    }

    /// SIGTERM by pid, SIGKILL after the grace period.
    pub fn stop(&self) -> Result<()> {
        self.proc.stop(Duration::from_secs(10))?;
        Ok(())
    }
}

/// `GET /` on `addr:port` from the root namespace: the trimmed body of a 200, `None` when
/// nothing answers or the status is not 200.
pub fn http_get(addr: Ipv4Addr, port: u16) -> Result<Option<String>> {
    let Ok(mut s) = TcpStream::connect_timeout(&(addr, port).into(), Duration::from_secs(2)) else {
        return Ok(None);
    };
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: lb\r\n\r\n")?;
    let mut resp = String::new();
    if s.read_to_string(&mut resp).is_err() {
        return Ok(None);
    }
    let status = resp.split_whitespace().nth(1);
    Ok((status == Some("200")).then(|| {
        resp.split("\r\n\r\n")
            .nth(1)
            .unwrap_or("")
            .trim()
            .to_string()
    }))
}

/// The `lb` part of `swarm-agent status --json` on host `i`.
pub fn lb_status(c: &Cluster, i: usize) -> Result<Value> {
    Ok(c.status(i)?.1["lb"].clone())
}

/// Create the global busybox httpd service `name` (each task answers its node's hostname),
/// published in host mode on `port` (no routing mesh in the lab).
pub fn create_hostname_service(c: &Cluster, manager: usize, name: &str, port: u16) -> Result<()> {
    c.lab.import_busybox("lab/busybox:lb")?;
    c.lab.host(manager).docker(&[
        "service",
        "create",
        "--detach",
        "--no-resolve-image",
        "--name",
        name,
        "--mode",
        "global",
        "--hostname",
        "{{.Node.Hostname}}",
        "--publish",
        &format!("mode=host,target=80,published={port}"),
        "lab/busybox:lb",
        "sh",
        "-c",
        "hostname > /www/index.html && exec httpd -f -p 80 -h /www",
    ])?;
    Ok(())
}
