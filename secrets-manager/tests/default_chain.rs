//! `SecretsManagerRendezvous::new` with the default credential chain (here: env variables;
//! instance metadata disabled so nothing leaves the machine) and the endpoint override.

mod common;

use common::{reg, Moto};
use swarmstrap_secrets_manager::{SecretsManagerConfig, SecretsManagerRendezvous};
use swarmstrap_wire::rendezvous::{Rendezvous, RendezvousError};
use swarmstrap_wire::RequestedRole;

#[tokio::test]
async fn new_uses_the_default_chain_and_endpoint_override() {
    // The only test in this binary: setting the environment cannot race another test.
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    std::env::remove_var("AWS_PROFILE");
    let moto = Moto::start();
    let mut cfg = SecretsManagerConfig::new("chain", 3);
    cfg.region = Some("eu-west-1".into());
    cfg.endpoint_url = Some(moto.endpoint.clone());
    cfg.secret_name = Some("custom/chain-secret".into());
    let rv: Box<dyn Rendezvous> =
        Box::new(SecretsManagerRendezvous::new(cfg.clone()).await.unwrap());
    assert_eq!(
        rv.describe(),
        "secrets-manager custom/chain-secret (eu-west-1)"
    );
    let r = rv.register(&reg("a", RequestedRole::Auto)).await.unwrap();
    assert_eq!(r.target_managers, 3);

    // bad configuration is a clear Rejected before any call
    let mut bad = cfg.clone();
    bad.cluster = "Bad_Name".into();
    assert!(matches!(
        SecretsManagerRendezvous::new(bad).await.unwrap_err(),
        RendezvousError::Rejected { code, .. } if code == "invalid_cluster"
    ));
    let mut bad = cfg.clone();
    bad.target_managers = 4;
    assert!(matches!(
        SecretsManagerRendezvous::new(bad).await.unwrap_err(),
        RendezvousError::Rejected { code, .. } if code == "invalid_target_managers"
    ));

    // wrong credentials against moto are accepted (moto does not check signatures), so the
    // Unauthorized mapping is covered by the unit tests of `classify`.
}
