//! The Secrets Manager backend, end to end: the 5-host lab forms one swarm through it (no
//! coordinator), moto's server standing in for AWS. Agent configs come from the cloud-init
//! node template rendered for the secrets-manager backend.

use std::time::Duration;
use swarmstrap_lab::cluster::{AgentOptions, Cluster};
use swarmstrap_lab::{Lab, LabConfig};

#[test]
fn five_hosts_form_one_swarm_through_secrets_manager() -> anyhow::Result<()> {
    let lab = Lab::start(LabConfig::new(5))?;
    let c = Cluster::new_secrets_manager(lab, "sm", AgentOptions::default())?;
    c.start_agents()?;
    let all: Vec<usize> = (0..5).collect();
    let swarm_id = c.wait_formed(&all, 3, 2, Duration::from_secs(120))?;
    assert!(!swarm_id.is_empty());
    assert_eq!(
        c.init_count(),
        1,
        "exactly one swarm init\n{}",
        c.diagnostics()
    );
    // The backend is what every agent's status reports, and it agrees on the swarm.
    for i in all {
        let (_, st) = c.status(i)?;
        assert_eq!(st["backend"]["kind"], "secrets-manager", "{st}");
        assert_eq!(st["backend"]["phase"], "formed", "{st}");
        assert_eq!(
            st["backend"]["swarm_id"].as_str(),
            Some(swarm_id.as_str()),
            "{st}"
        );
    }
    c.assert_no_secret_in_logs()?;
    Ok(())
}
