//! Host-side objects of a lab: the bridge, the veths, the network namespaces, the iptables
//! FORWARD rule, and the mounts. Every object's name starts with [`PREFIX`] followed by the lab
//! id, which is how teardown and [`cleanup_stale`](crate::cleanup_stale) find them.

use crate::cmd::{run, run_unchecked, sh};
use crate::error::{LabError, Result};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Prefix of every lab network object (bridge, veths, netns). Kept short: Linux interface
/// names have at most 15 characters (`sslab` + 4 hex id + `v` + host number ≤ 12).
pub const PREFIX: &str = "sslab";
/// Prefix of every lab directory: `/tmp/swarmstrap-lab-<id>/`.
pub const ROOT_PREFIX: &str = "/tmp/swarmstrap-lab-";

/// Where `ip netns` keeps its namespace mounts.
pub const NETNS_DIR: &str = "/var/run/netns";

/// The names of one lab's objects.
#[derive(Debug, Clone)]
pub struct Names {
    pub id: String,
}

impl Names {
    pub fn bridge(&self) -> String {
        format!("{PREFIX}{}br", self.id)
    }
    pub fn veth(&self, host_no: usize) -> String {
        format!("{PREFIX}{}v{host_no}", self.id)
    }
    pub fn netns(&self, host_no: usize) -> String {
        format!("{PREFIX}{}n{host_no}", self.id)
    }
    pub fn root(&self) -> PathBuf {
        PathBuf::from(format!("{ROOT_PREFIX}{}", self.id))
    }
}

/// 198.18.<subnet>.<last>
pub fn lab_addr(subnet: u8, last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, subnet, last)
}

pub fn netns_path(ns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(ns)
}

/// The third octets of 198.18.x.0/24 already used by an address or route in the root
/// namespace (another lab's bridge, or anything else).
pub fn used_subnets() -> Result<Vec<u8>> {
    let mut used = Vec::new();
    for args in [
        &["-4", "-o", "addr", "show"][..],
        &["-4", "route", "show"][..],
    ] {
        let out = sh("ip", args)?;
        for word in out.stdout.split_whitespace() {
            let ip = word.split('/').next().unwrap_or("");
            if let Ok(ip) = ip.parse::<Ipv4Addr>() {
                let o = ip.octets();
                if o[0] == 198 && o[1] == 18 {
                    used.push(o[2]);
                }
            }
        }
    }
    used.sort_unstable();
    used.dedup();
    Ok(used)
}

pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Names of links in the root namespace starting with `prefix`.
pub fn links_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// Names of network namespaces (in /var/run/netns) starting with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// Inode of a named network namespace (to find processes living in it).
pub fn netns_inode(ns: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(netns_path(ns)).ok().map(|m| m.ino())
}

pub fn create_bridge(bridge: &str, addr: Ipv4Addr) -> Result<()> {
    sh("ip", &["link", "add", bridge, "type", "bridge"])?;
    sh("ip", &["addr", "add", &format!("{addr}/24"), "dev", bridge])?;
    sh("ip", &["link", "set", bridge, "up"])?;
    Ok(())
}

/// A namespace `ns` wired to `bridge` through veth `veth` (the namespace side is `eth0`),
/// with `addr/24` and a default route via `gateway`.
pub fn create_host_netns(
    ns: &str,
    veth: &str,
    bridge: &str,
    addr: Ipv4Addr,
    gateway: Ipv4Addr,
) -> Result<()> {
    sh("ip", &["netns", "add", ns])?;
    sh(
        "ip",
        &[
            "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    )?;
    sh("ip", &["link", "set", veth, "master", bridge])?;
    sh("ip", &["link", "set", veth, "up"])?;
    let a = format!("{addr}/24");
    let g = gateway.to_string();
    for args in [
        &["-n", ns, "link", "set", "lo", "up"][..],
        &["-n", ns, "addr", "add", &a, "dev", "eth0"][..],
        &["-n", ns, "link", "set", "eth0", "up"][..],
        &["-n", ns, "route", "add", "default", "via", &g][..],
    ] {
        sh("ip", args)?;
    }
    Ok(())
}

/// `ip netns del`, tolerating a namespace that is already gone.
pub fn delete_netns(ns: &str) -> Result<()> {
    if !netns_path(ns).exists() {
        return Ok(());
    }
    sh("ip", &["netns", "del", ns]).map(|_| ())
}

/// `ip link del`, tolerating a link that is already gone.
pub fn delete_link(name: &str) -> Result<()> {
    if !link_exists(name) {
        return Ok(());
    }
    let out = run_unchecked(Command::new("ip").args(["link", "del", name]))?;
    if out.success() || !link_exists(name) {
        Ok(())
    } else {
        Err(LabError::Command {
            cmd: format!("ip link del {name}"),
            status: out.status.to_string(),
            stderr: out.stderr.trim().to_string(),
        })
    }
}

/// The lab's two FORWARD rules in the root namespace, for bridge `b`:
/// - accept bridged traffic between lab hosts (once any dockerd ran in the root namespace,
///   FORWARD's policy is DROP and bridged traffic is filtered; see LAB.md);
/// - reject anything a lab host sends that would be routed off the bridge: the lab talks only
///   to its own addresses. (A lab engine may still try, e.g. a registry lookup; REJECT makes
///   that fail at once instead of timing out.) Traffic to the root namespace itself (the
///   bridge address) is INPUT, not FORWARD, and stays allowed.
pub fn forward_rules(b: &str) -> [Vec<String>; 2] {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    [
        v(&["-i", b, "-o", b, "-j", "ACCEPT"]),
        v(&["-i", b, "!", "-o", b, "-j", "REJECT"]),
    ]
}

fn iptables(op: &str, spec: &[String]) -> Command {
    let mut c = Command::new("iptables");
    // -w: the xtables lock is machine-wide and the lab's dockerds take it too.
    c.args(["-w", "30", op, "FORWARD"]).args(spec);
    c
}

/// Insert the lab's FORWARD rules (see [`forward_rules`]) at the top of the chain.
pub fn add_forward_rules(bridge: &str) -> Result<()> {
    for spec in forward_rules(bridge).iter().rev() {
        run(&mut iptables("-I", spec))?;
    }
    Ok(())
}

/// Which of the lab's FORWARD rules exist (as `iptables` arguments).
pub fn forward_rules_present(bridge: &str) -> Vec<String> {
    forward_rules(bridge)
        .iter()
        .filter(|spec| run_unchecked(&mut iptables("-C", spec)).is_ok_and(|o| o.success()))
        .map(|spec| spec.join(" "))
        .collect()
}

/// Remove every copy of the lab's FORWARD rules for `bridge`.
pub fn remove_forward_rules(bridge: &str) -> Result<()> {
    for spec in forward_rules(bridge) {
        while run_unchecked(&mut iptables("-C", &spec))?.success() {
            run(&mut iptables("-D", &spec))?;
        }
    }
    Ok(())
}

/// FORWARD rules (as printed by `iptables -S`, without `-A FORWARD`) whose input interface
/// starts with `prefix`: the rules of labs whose teardown did not run.
pub fn forward_rules_with_prefix(prefix: &str) -> Result<Vec<Vec<String>>> {
    let out = sh("iptables", &["-w", "30", "-S", "FORWARD"])?;
    Ok(out
        .stdout
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let ours = w.len() > 3
                && w[..2] == ["-A", "FORWARD"]
                && w.windows(2)
                    .any(|p| p[0] == "-i" && p[1].starts_with(prefix));
            ours.then(|| w[2..].iter().map(|s| s.to_string()).collect())
        })
        .collect())
}

/// `iptables -D FORWARD <spec>`.
pub fn delete_forward_rule(spec: &[String]) -> Result<()> {
    run(&mut iptables("-D", spec)).map(|_| ())
}

/// Mount points at or under `root` (from /proc/self/mountinfo), deepest first.
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(root))
        .collect();
    v.sort();
    v.dedup();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v
}

/// mountinfo escapes space, tab, newline and backslash as octal `\NNN`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let n = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(n);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `umount -l` every mount under `root`, deepest first. Returns the mounts still there.
pub fn unmount_all_under(root: &Path) -> Vec<PathBuf> {
    // Lazy unmounts can expose mounts that were stacked below; a few passes settle it.
    for _ in 0..5 {
        let mounts = mounts_under(root);
        if mounts.is_empty() {
            return mounts;
        }
        for m in &mounts {
            let _ = run_unchecked(Command::new("umount").arg("-l").arg(m));
        }
    }
    mounts_under(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_interface_limit() {
        let n = Names { id: "ffff".into() };
        assert!(n.bridge().len() <= 15, "{}", n.bridge());
        assert!(n.veth(99).len() <= 15, "{}", n.veth(99));
        assert!(n.bridge().starts_with(PREFIX) && n.veth(1).starts_with(PREFIX));
        assert_eq!(n.root(), PathBuf::from("/tmp/swarmstrap-lab-ffff"));
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/x\\"), r"/x\\");
    }
}
