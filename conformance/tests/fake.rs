//! The conformance suite on the in-memory fake the agent's unit tests use
//! (`swarm_agent::testing::FakeBackend`: the rulebook behind a mutex).

use std::sync::Arc;
use swarm_agent::testing::FakeBackend;
use swarmstrap_conformance::{run_all, Backend, Clients};
use swarmstrap_wire::rendezvous::Rendezvous;

struct Fake;

#[async_trait::async_trait]
impl Backend for Fake {
    fn name(&self) -> String {
        "fake".into()
    }

    async fn cluster(&self, target_managers: u8) -> Clients {
        let backend: Arc<dyn Rendezvous> = FakeBackend::new(target_managers);
        Arc::new(move || backend.clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_passes_the_conformance_suite() {
    let filter = std::env::var("CONFORMANCE_FILTER").ok();
    run_all(Arc::new(Fake), filter.as_deref()).await;
}
