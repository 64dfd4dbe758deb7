//! The conformance suite on the in-memory fake the agent's unit tests use
//! (`swarm_agent::testing::FakeBackend`: the rulebook behind a mutex).

use std::sync::Arc;
use swarm_agent::testing::FakeBackend;
use swarmstrap_conformance::{run_all, Backend, Cluster, Operated, Operator};
use swarmstrap_wire::rendezvous::{Rendezvous, RendezvousError};

struct Fake;

/// The fake's test hooks: `wipe()` and `set_adoption_hold()`.
struct FakeOperator(Arc<FakeBackend>);

#[async_trait::async_trait]
impl Operator for FakeOperator {
    async fn wipe(&self) {
        self.0.wipe();
    }

    async fn set_adoption_hold(&self, hold: bool) -> Result<(), RendezvousError> {
        self.0.set_adoption_hold(hold)
    }
}

#[async_trait::async_trait]
impl Backend for Fake {
    fn name(&self) -> String {
        "fake".into()
    }

    /// One fake serves every node of the cluster (it keeps every node's credential, as the
    /// agents' unit tests use it); its operator credential resets it.
    async fn cluster(&self, target_managers: u8) -> Cluster {
        let fake = FakeBackend::new(target_managers);
        let operator = Some(fake.operator_credential());
        let backend: Arc<dyn Rendezvous> = fake;
        Cluster {
            clients: Arc::new(move || backend.clone()),
            operator,
        }
    }

    async fn operated_cluster(&self, target_managers: u8) -> Operated {
        let fake = FakeBackend::new(target_managers);
        let backend: Arc<dyn Rendezvous> = fake.clone();
        Operated {
            clients: Arc::new(move || backend.clone()),
            operator: Arc::new(FakeOperator(fake)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_passes_the_conformance_suite() {
    let filter = std::env::var("CONFORMANCE_FILTER").ok();
    run_all(Arc::new(Fake), filter.as_deref()).await;
}
