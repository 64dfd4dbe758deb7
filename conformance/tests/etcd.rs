//! The conformance suite on the etcd backend: the real `EtcdRendezvous` against a real
//! 3-member etcd cluster with TLS (client certificates required) and auth on, the backend
//! logged in as a user whose role grants only the swarmstrap prefix
//! (`swarmstrap_etcd::testing::EtcdCluster`: child processes on free loopback ports, killed by
//! pid at the end). Every node gets its own etcd connection and login, as separate VMs would.
//!
//! The operator of a cluster is whoever may write its prefix (the etcd role), as on Secrets
//! Manager: no operator credential. `wipe` deletes the cluster's prefix; the adoption hold goes
//! through the backend's `set_adoption_hold` (the rulebook's rule in a transaction).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use swarmstrap_conformance::{run_all, Backend, Clients, Cluster, Operated, Operator};
use swarmstrap_etcd::testing::EtcdCluster;
use swarmstrap_wire::rendezvous::{Rendezvous, RendezvousError};

struct Etcd {
    etcd: Arc<EtcdCluster>,
    clusters: AtomicU32,
}

struct PrefixOperator {
    etcd: Arc<EtcdCluster>,
    cluster: String,
    target_managers: u8,
}

#[async_trait::async_trait]
impl Operator for PrefixOperator {
    async fn wipe(&self) {
        self.etcd
            .backend(&self.cluster, self.target_managers)
            .await
            .wipe()
            .await
            .expect("delete the cluster's prefix");
    }

    async fn set_adoption_hold(&self, hold: bool) -> Result<(), RendezvousError> {
        self.etcd
            .backend(&self.cluster, self.target_managers)
            .await
            .set_adoption_hold(hold)
            .await
            .map(|_| ())
    }
}

impl Etcd {
    /// A new connection per node (connecting logs in, which is async; the suite's client
    /// factory is not, so it blocks this worker thread while connecting).
    fn clients(&self, target_managers: u8) -> (String, Clients) {
        let name = format!("c{}", self.clusters.fetch_add(1, Ordering::SeqCst));
        let etcd = self.etcd.clone();
        let cluster = name.clone();
        let clients: Clients = Arc::new(move || {
            let etcd = etcd.clone();
            let cluster = cluster.clone();
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(async move {
                    Arc::new(etcd.backend(&cluster, target_managers).await) as Arc<dyn Rendezvous>
                })
            })
        });
        (name, clients)
    }
}

#[async_trait::async_trait]
impl Backend for Etcd {
    fn name(&self) -> String {
        "etcd (3 members, TLS + auth)".into()
    }

    async fn cluster(&self, target_managers: u8) -> Cluster {
        let (_, clients) = self.clients(target_managers);
        Cluster {
            clients,
            operator: None,
        }
    }

    async fn operated_cluster(&self, target_managers: u8) -> Operated {
        let (cluster, clients) = self.clients(target_managers);
        Operated {
            clients,
            operator: Arc::new(PrefixOperator {
                etcd: self.etcd.clone(),
                cluster,
                target_managers,
            }),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_passes_the_conformance_suite() {
    let filter = std::env::var("CONFORMANCE_FILTER").ok();
    let backend = Etcd {
        etcd: Arc::new(EtcdCluster::start().await),
        clusters: AtomicU32::new(0),
    };
    run_all(Arc::new(backend), filter.as_deref()).await;
}
