//! The conformance suite on the Secrets Manager backend: the real `SecretsManagerRendezvous`
//! against a real moto server (a child process on a free loopback port, killed by pid at the
//! end, `swarmstrap_secrets_manager::moto`). Every node gets its own SDK client, as separate VMs would. moto answers every read
//! fresh; the backend's behaviour under AWS's eventual consistency is outside this suite.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use swarmstrap_conformance::{run_all, Backend, Clients};
use swarmstrap_secrets_manager::moto::Moto;
use swarmstrap_wire::rendezvous::Rendezvous;

struct SecretsManager {
    moto: Arc<Moto>,
    clusters: AtomicU32,
}

#[async_trait::async_trait]
impl Backend for SecretsManager {
    fn name(&self) -> String {
        "secrets-manager (moto)".into()
    }

    async fn cluster(&self, target_managers: u8) -> Clients {
        let name = format!("c{}", self.clusters.fetch_add(1, Ordering::SeqCst));
        let moto = self.moto.clone();
        Arc::new(move || Arc::new(moto.backend(&name, target_managers)) as Arc<dyn Rendezvous>)
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
