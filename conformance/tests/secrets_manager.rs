//! The conformance suite on the Secrets Manager backend: the real `SecretsManagerRendezvous`
//! against a real moto server (a child process on a free loopback port, killed by pid at the
//! end, `swarmstrap_secrets_manager::moto`). Every node gets its own SDK client, as separate VMs would. moto answers every read
//! fresh; the backend's behaviour under AWS's eventual consistency is outside this suite.
//!
//! The operator of a cluster deletes its secret for good (`wipe`: the secret deleted and
//! re-created by whoever writes first) and sets the adoption hold through the backend's
//! `set_adoption_hold` (the rulebook's rule in the CAS loop).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use swarmstrap_conformance::{run_all, Backend, Cluster, Operated, Operator};
use swarmstrap_secrets_manager::moto::Moto;
use swarmstrap_wire::rendezvous::{Rendezvous, RendezvousError};

struct SecretsManager {
    moto: Arc<Moto>,
    clusters: AtomicU32,
}

struct SecretOperator {
    moto: Arc<Moto>,
    cluster: String,
    target_managers: u8,
}

#[async_trait::async_trait]
impl Operator for SecretOperator {
    async fn wipe(&self) {
        let backend = self.moto.backend(&self.cluster, self.target_managers);
        self.moto
            .client()
            .delete_secret()
            .secret_id(backend.secret_name())
            .force_delete_without_recovery(true)
            .send()
            .await
            .expect("delete the cluster's secret");
    }

    async fn set_adoption_hold(&self, hold: bool) -> Result<(), RendezvousError> {
        self.moto
            .backend(&self.cluster, self.target_managers)
            .set_adoption_hold(hold)
            .await
            .map(|_| ())
    }
}

#[async_trait::async_trait]
impl Backend for SecretsManager {
    fn name(&self) -> String {
        "secrets-manager (moto)".into()
    }

    /// No operator credential: on Secrets Manager the operator is whoever IAM lets write the
    /// secret (moto does not enforce IAM), so the suite skips the operator-credential case.
    async fn cluster(&self, target_managers: u8) -> Cluster {
        let name = format!("c{}", self.clusters.fetch_add(1, Ordering::SeqCst));
        let moto = self.moto.clone();
        Cluster {
            clients: Arc::new(move || {
                Arc::new(moto.backend(&name, target_managers)) as Arc<dyn Rendezvous>
            }),
            operator: None,
        }
    }

    async fn operated_cluster(&self, target_managers: u8) -> Operated {
        let name = format!("c{}", self.clusters.fetch_add(1, Ordering::SeqCst));
        let operator = Arc::new(SecretOperator {
            moto: self.moto.clone(),
            cluster: name.clone(),
            target_managers,
        });
        let moto = self.moto.clone();
        Operated {
            clients: Arc::new(move || {
                Arc::new(moto.backend(&name, target_managers)) as Arc<dyn Rendezvous>
            }),
            operator,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_manager_passes_the_conformance_suite() {
    let filter = std::env::var("CONFORMANCE_FILTER").ok();
    let backend = SecretsManager {
        moto: Arc::new(Moto::start()),
        clusters: AtomicU32::new(0),
    };
    run_all(Arc::new(backend), filter.as_deref()).await;
}
