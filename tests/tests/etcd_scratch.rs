use std::process::Command;
use std::time::{Duration, Instant};
use swarmstrap_lab::etcd::EtcdLab;
use swarmstrap_lab::{Lab, LabConfig};

#[test]
fn scratch() -> anyhow::Result<()> {
    let lab = Lab::start(LabConfig::without_engines(1))?;
    let t = Instant::now();
    let e = EtcdLab::start(&lab)?;
    eprintln!("etcd up in {:?}", t.elapsed());
    let (_, m) = e.add_cluster_roles("x")?;
    let cr = e.add_user(&m, &[&m])?;
    eprintln!("{cr:?}");
    let d = e.dir();
    let o = Command::new("nsenter")
        .arg(format!("--net={}", lab.host(0).netns_path().display()))
        .args([
            "--",
            "etcdctl",
            &format!("--endpoints={}", e.endpoints.join(",")),
        ])
        .arg(format!("--cacert={}", e.ca_file.display()))
        .arg(format!("--cert={}", d.join("root.pem").display()))
        .arg(format!("--key={}", d.join("root-key.pem").display()))
        .args(["endpoint", "health"])
        .output()?;
    eprintln!(
        "from host: {} {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success());
    let mut w = e.watch("/swarmstrap/x/state")?;
    let l = e.leader()?;
    eprintln!("leader {l}");
    let o = Command::new("etcdctl")
        .args([&format!("--endpoints={}", e.endpoints.join(","))])
        .arg(format!("--cacert={}", e.ca_file.display()))
        .arg(format!("--cert={}", d.join("root.pem").display()))
        .arg(format!("--key={}", d.join("root-key.pem").display()))
        .args(["put", "/swarmstrap/x/state", "{\"lease\":{\"a\":1}}"])
        .output()?;
    assert!(o.status.success(), "{o:?}");
    w.wait(Duration::from_secs(10), "lease", |l| {
        l.contains("\"lease\":{")
    })?;
    eprintln!(
        "watch ok; get {:?} keys {:?}",
        e.get("/swarmstrap/x/state")?,
        e.keys("/swarmstrap/")?
    );
    let t = Instant::now();
    e.kill_member(l)?;
    let l2 = e.wait_healthy(Duration::from_secs(30))?;
    eprintln!("new leader {l2} in {:?}", t.elapsed());
    let t = Instant::now();
    e.restart_member(l)?;
    eprintln!("restarted in {:?}", t.elapsed());
    let p = (l2 + 1) % 3;
    e.partition(p)?;
    let t = Instant::now();
    let l3 = e.wait_healthy(Duration::from_secs(30))?;
    eprintln!("partitioned {p}; leader {l3} in {:?}", t.elapsed());
    e.heal()?;
    eprintln!("healed in {:?}", t.elapsed());
    drop(e);
    lab.teardown()?;
    Ok(())
}
