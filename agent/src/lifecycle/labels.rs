//! Node labels from cloud tags.
//!
//! - **Every agent** ([`publish`]) reads its own instance's tags from its cloud's metadata
//!   service ([`crate::cloud`]: one encoding per cloud), and publishes the labels they ask for
//!   in its own registration at the rendezvous ([`RegisterRequest::labels`]). The rendezvous
//!   accepts a registration only with that node's credential, so the labels of a registration
//!   are that node's own claims. It re-reads the tags every `[cloud] tags_refresh_secs`
//!   (±10 %) and registers again only when they changed (on Secrets Manager every change is a
//!   version of the secret), plus once every [`REASSERT_EVERY`] reads (a rendezvous that lost
//!   its registrations gets them back).
//! - **The raft leader's agent** ([`reconcile`], from the keeper's pass) sets each
//!   registration's labels on the one Docker node that registration is (matched by address,
//!   and only when no other registration claims that address: a node can label only itself),
//!   removes labels it set earlier that are no longer asked for, and never touches a label it did
//!   not set: the keys it manages are listed in the node's [`MANAGED_LABELS_KEY`] label, and a
//!   key an operator set by hand is left alone (logged once). Nothing is written when nothing
//!   changed. A node update carries the node's version; a conflicting update is re-read and
//!   retried.
//!
//! The decisions are the pure [`plan`] and [`assign`]; the rest reads and writes.

use crate::cloud::{self, CloudError, MetadataProvider};
use crate::config::CloudConfig;
use crate::engine::{BollardEngine, EngineError};
use crate::retry::Policy;
use crate::state::StateStore;
use bollard::query_parameters::{ListNodesOptions, UpdateNodeOptionsBuilder};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use swarmstrap_wire::labels::MANAGED_LABELS_KEY;
use swarmstrap_wire::rendezvous::Rendezvous;
use swarmstrap_wire::{NodeInfo, RegisterRequest, RequestedRole, Role};

/// Publish the unchanged labels again after this many tag reads (~1 h at the default refresh):
/// a rendezvous that lost its registrations (the agent registers again without labels) gets
/// them back. An unchanged registration writes nothing.
pub const REASSERT_EVERY: u32 = 12;
/// Attempts of one node update when its version moved in between (another writer).
const UPDATE_ATTEMPTS: u32 = 3;

// ---------------------------------------------------------------------------------------------
// Every agent: publish this node's tags.

/// Read this instance's label tags and keep them published in this node's registration.
/// Returns at once when labels from tags are off (`[cloud]`: no provider, or `node_labels =
/// false`).
pub async fn publish(
    cfg: &CloudConfig,
    backend: Arc<dyn Rendezvous>,
    store: &StateStore,
    node_id: &str,
    relay: Option<Arc<crate::relay::Relay>>,
) {
    let Some(kind) = cfg.label_source() else {
        return;
    };
    let provider = cloud::provider_at(kind, cfg.metadata_url.as_deref());
    tracing::info!(
        "node labels: reading this instance's {} tags every ~{} s",
        provider.name(),
        cfg.tags_refresh.as_secs()
    );
    let mut p = Publisher {
        provider,
        backend,
        store,
        node_id,
        relay,
        published: None,
        reads_since: 0,
        warned: HashSet::new(),
        last_error: None,
    };
    let retry = Policy {
        base_initial: Duration::from_secs(1),
        base_cap: cfg.tags_refresh.min(Duration::from_secs(60)),
        deadline: None,
    };
    let mut delays = retry.delays();
    loop {
        let wait = if p.step().await {
            delays = retry.delays();
            jittered(cfg.tags_refresh)
        } else {
            delays.next().unwrap_or(cfg.tags_refresh)
        };
        tokio::time::sleep(wait).await;
    }
}

/// `d` ± 10 %, so the agents of a fleet do not read and register in step.
fn jittered(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    let spread = ms / 10;
    Duration::from_millis(ms - spread + rand::random_range(0..=2 * spread))
}

struct Publisher<'a> {
    provider: Box<dyn MetadataProvider>,
    backend: Arc<dyn Rendezvous>,
    store: &'a StateStore,
    node_id: &'a str,
    relay: Option<Arc<crate::relay::Relay>>,
    /// The labels last accepted by the rendezvous.
    published: Option<BTreeMap<String, String>>,
    reads_since: u32,
    warned: HashSet<String>,
    last_error: Option<String>,
}

impl Publisher<'_> {
    /// One read (and registration, when due). False when it should be tried again soon.
    async fn step(&mut self) -> bool {
        let tags = match self.provider.tag_labels().await {
            Ok(t) => t,
            Err(e) => {
                let transient = e.is_transient();
                let msg = match &e {
                    CloudError::TagsNotInMetadata { .. } => format!("node labels: {e}"),
                    _ => format!(
                        "node labels: cannot read this instance's tags (labels stay as they \
                         are): {e}"
                    ),
                };
                self.note_error(msg);
                // A permanent answer (tags not in the metadata) is read again at the slow
                // interval: it can be switched on while the instance runs.
                return !transient;
            }
        };
        for r in &tags.refused {
            if self.warned.insert(r.clone()) {
                tracing::warn!("node labels: refused {r}");
            }
        }
        self.reads_since += 1;
        let due =
            self.published.as_ref() != Some(&tags.labels) || self.reads_since >= REASSERT_EVERY;
        if !due {
            self.last_error = None;
            return true;
        }
        let Some(mut req) = self.registration() else {
            // Not bootstrapped yet (the keeper runs once it is): try again soon.
            return false;
        };
        req.labels = Some(tags.labels.clone());
        match self.backend.register(&req).await {
            Ok(_) => {
                if self.published.as_ref() != Some(&tags.labels) {
                    tracing::info!(
                        "node labels: published {} (from {} tags)",
                        describe(&tags.labels),
                        self.provider.name()
                    );
                    // On Secrets Manager the managers read the cluster again now.
                    if let Some(r) = &self.relay {
                        r.announce(None);
                    }
                }
                self.published = Some(tags.labels);
                self.reads_since = 0;
                self.last_error = None;
                true
            }
            Err(e) => {
                self.note_error(format!(
                    "node labels: registering this node's labels with {} failed: {e}",
                    self.backend.describe()
                ));
                false
            }
        }
    }

    fn note_error(&mut self, msg: String) {
        if self.last_error.as_deref() != Some(msg.as_str()) {
            tracing::warn!("{msg}");
            self.last_error = Some(msg);
        }
    }

    /// This node's registration as its state file describes it (the role its engine has).
    fn registration(&self) -> Option<RegisterRequest> {
        let st = self.store.load().ok().flatten()?;
        if st.node_id != self.node_id {
            return None;
        }
        let role = st.role?;
        Some(RegisterRequest {
            node_id: st.node_id,
            hostname: st.hostname?,
            advertise_addr: st.advertise_addr?,
            role: match role {
                Role::Manager => RequestedRole::Manager,
                Role::Worker => RequestedRole::Worker,
            },
            // With the relay (Secrets Manager) the join address is told to the managers, not
            // written into the secret.
            joined_through: if self.relay.is_some() {
                None
            } else {
                st.joined_through
            },
            labels: None,
        })
    }
}

fn describe(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "no labels".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// The leader: set them on the nodes.

/// One Docker node as the reconciler needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelTarget {
    pub id: String,
    pub hostname: String,
    /// Status.Addr (the node's IP as the managers see it).
    pub addr: Option<String>,
    pub ready: bool,
    pub labels: HashMap<String, String>,
    pub version: u64,
}

/// What to write on one node: the whole new label set, and what changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub labels: HashMap<String, String>,
    pub set: Vec<String>,
    pub removed: Vec<String>,
    /// Keys the node asks for that an operator set by hand: left alone.
    pub operator_keys: Vec<String>,
}

impl Plan {
    pub fn changes(&self, current: &HashMap<String, String>) -> bool {
        self.labels != *current
    }
}

/// The keys the agent set earlier on a node (its [`MANAGED_LABELS_KEY`] label).
pub fn managed_keys(labels: &HashMap<String, String>) -> BTreeSet<String> {
    labels
        .get(MANAGED_LABELS_KEY)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The node's labels after applying `desired`: keys the agent manages and that are no longer
/// asked for are removed; asked-for keys are set unless an operator owns the key (present and
/// not managed); the managed list is updated (and removed when empty). Pure.
pub fn plan(current: &HashMap<String, String>, desired: &BTreeMap<String, String>) -> Plan {
    let managed = managed_keys(current);
    let mut out = Plan {
        labels: current.clone(),
        ..Plan::default()
    };
    for k in &managed {
        if !desired.contains_key(k) && out.labels.remove(k).is_some() {
            out.removed.push(k.clone());
        }
    }
    let mut now_managed = BTreeSet::new();
    for (k, v) in desired {
        if current.contains_key(k) && !managed.contains(k) {
            out.operator_keys.push(k.clone());
            continue;
        }
        if current.get(k) != Some(v) {
            out.set.push(k.clone());
        }
        out.labels.insert(k.clone(), v.clone());
        now_managed.insert(k.clone());
    }
    if now_managed.is_empty() {
        out.labels.remove(MANAGED_LABELS_KEY);
    } else {
        let list: Vec<&str> = now_managed.iter().map(String::as_str).collect();
        out.labels
            .insert(MANAGED_LABELS_KEY.to_string(), list.join(","));
    }
    out
}

fn ip_of(a: &str) -> String {
    match a.parse::<std::net::SocketAddr>() {
        Ok(sa) => sa.ip().to_string(),
        Err(_) => a.to_string(),
    }
}

/// Which registration's labels go on which Docker node: a registration is the node whose
/// Status.Addr is its advertise address (a Ready one first: a node that left and joined again
/// has two entries). A node claimed by more than one registration gets none of them (a
/// join-secret holder who registers another node's address must not label it); those nodes
/// are returned second. Nodes no registration matches are left out (their labels untouched).
pub fn assign<'a>(
    regs: &'a [NodeInfo],
    nodes: &[LabelTarget],
) -> (Vec<(String, &'a NodeInfo)>, Vec<String>) {
    let mut claims: BTreeMap<String, Vec<&NodeInfo>> = BTreeMap::new();
    for r in regs {
        let want = ip_of(&r.advertise_addr);
        let mut found: Vec<&LabelTarget> = nodes
            .iter()
            .filter(|n| n.addr.as_deref().map(ip_of).as_deref() == Some(want.as_str()))
            .collect();
        found.sort_by_key(|n| (!n.ready, n.id.clone()));
        if let Some(n) = found.first() {
            claims.entry(n.id.clone()).or_default().push(r);
        }
    }
    let mut ok = Vec::new();
    let mut ambiguous = Vec::new();
    for (id, rs) in claims {
        match rs.as_slice() {
            [one] => ok.push((id, *one)),
            _ => ambiguous.push(id),
        }
    }
    (ok, ambiguous)
}

/// What the reconciler remembers between passes (warnings given once).
#[derive(Default)]
pub struct LabelsMemory {
    warned: HashSet<String>,
}

impl LabelsMemory {
    fn warn_once(&mut self, msg: String) {
        if self.warned.insert(msg.clone()) {
            tracing::warn!("{msg}");
        }
    }
}

/// Set every registration's labels on its node (the raft leader's agent, every keeper pass).
pub async fn reconcile(
    engine: &BollardEngine,
    regs: &[NodeInfo],
    mem: &mut LabelsMemory,
) -> Result<(), EngineError> {
    let nodes = list(engine).await?;
    let (assigned, ambiguous) = assign(regs, &nodes);
    for id in ambiguous {
        let host = nodes
            .iter()
            .find(|n| n.id == id)
            .map_or("?", |n| n.hostname.as_str());
        mem.warn_once(format!(
            "node labels: several registrations claim the address of node {host} ({id}): its \
             labels are left as they are (a node may label only itself)"
        ));
    }
    for (id, reg) in assigned {
        let Some(node) = nodes.iter().find(|n| n.id == id) else {
            continue;
        };
        let p = plan(&node.labels, &reg.labels);
        for k in &p.operator_keys {
            mem.warn_once(format!(
                "node labels: node {} asks for label {k:?}, which an operator set by hand: \
                 left as it is (remove it from the node to let the tag set it)",
                node.hostname
            ));
        }
        if !p.changes(&node.labels) {
            continue;
        }
        apply(engine, node, &reg.labels).await?;
    }
    Ok(())
}

async fn list(engine: &BollardEngine) -> Result<Vec<LabelTarget>, EngineError> {
    let c = engine.client().await?;
    let nodes = c
        .list_nodes(None::<ListNodesOptions>)
        .await
        .map_err(|e| engine.map_err(e))?;
    Ok(nodes
        .into_iter()
        .map(|n| LabelTarget {
            id: n.id.unwrap_or_default(),
            hostname: n.description.and_then(|d| d.hostname).unwrap_or_default(),
            addr: n
                .status
                .as_ref()
                .and_then(|s| s.addr.clone())
                .filter(|a| !a.is_empty() && a != "0.0.0.0"),
            ready: n.status.and_then(|s| s.state) == Some(bollard::models::NodeState::READY),
            labels: n.spec.and_then(|s| s.labels).unwrap_or_default(),
            version: n.version.and_then(|v| v.index).unwrap_or(0),
        })
        .collect())
}

/// Write the planned labels with the node's version; when the version moved (another writer
/// in between: "update out of sequence"), read the node again, plan again and retry.
async fn apply(
    engine: &BollardEngine,
    node: &LabelTarget,
    desired: &BTreeMap<String, String>,
) -> Result<(), EngineError> {
    let c = engine.client().await?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let n = c
            .inspect_node(&node.id)
            .await
            .map_err(|e| engine.map_err(e))?;
        let version = n.version.and_then(|v| v.index).unwrap_or(0);
        let mut spec = n.spec.unwrap_or_default();
        let current = spec.labels.clone().unwrap_or_default();
        let p = plan(&current, desired);
        if !p.changes(&current) {
            return Ok(());
        }
        spec.labels = Some(p.labels.clone());
        let r = c
            .update_node(
                &node.id,
                spec,
                UpdateNodeOptionsBuilder::default()
                    .version(version as i64)
                    .build(),
            )
            .await;
        match r {
            Ok(()) => {
                tracing::info!(
                    "node labels: node {}: set [{}], removed [{}]",
                    node.hostname,
                    p.set
                        .iter()
                        .map(|k| format!("{k}={}", p.labels[k]))
                        .collect::<Vec<_>>()
                        .join(", "),
                    p.removed.join(", ")
                );
                return Ok(());
            }
            Err(e) if attempt < UPDATE_ATTEMPTS && e.to_string().contains("out of sequence") => {
                tracing::debug!(
                    "node labels: node {} changed while updating it; reading it again",
                    node.hostname
                );
            }
            Err(e) => return Err(engine.map_err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn want(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn plan_sets_records_and_is_idempotent() {
        let p = plan(&map(&[]), &want(&[("zone", "a"), ("gpu", "yes")]));
        assert_eq!(
            p.labels,
            map(&[
                ("zone", "a"),
                ("gpu", "yes"),
                (MANAGED_LABELS_KEY, "gpu,zone")
            ])
        );
        assert_eq!(p.set, vec!["gpu", "zone"]);
        // Applied: the same desire changes nothing.
        let again = plan(&p.labels, &want(&[("zone", "a"), ("gpu", "yes")]));
        assert!(!again.changes(&p.labels));
        assert!(again.set.is_empty() && again.removed.is_empty());
        // Nothing wanted, nothing managed: nothing to do.
        let empty = map(&[("ops", "x")]);
        assert!(!plan(&empty, &want(&[])).changes(&empty));
    }

    #[test]
    fn plan_changes_and_removes_only_its_own_keys() {
        let current = map(&[
            ("zone", "a"),
            ("gpu", "yes"),
            ("ops", "hand"),
            (MANAGED_LABELS_KEY, "gpu,zone"),
        ]);
        let p = plan(&current, &want(&[("zone", "b")]));
        assert_eq!(
            p.labels,
            map(&[("zone", "b"), ("ops", "hand"), (MANAGED_LABELS_KEY, "zone")])
        );
        assert_eq!(p.removed, vec!["gpu"]);
        assert_eq!(p.set, vec!["zone"]);
        // All tags gone: the managed keys and the list go, the operator's label stays.
        let p = plan(&current, &want(&[]));
        assert_eq!(p.labels, map(&[("ops", "hand")]));
    }

    #[test]
    fn plan_never_overwrites_or_takes_over_an_operators_label() {
        let current = map(&[("zone", "hand-set")]);
        let p = plan(&current, &want(&[("zone", "from-tag"), ("rack", "r1")]));
        assert_eq!(p.operator_keys, vec!["zone"]);
        assert_eq!(p.labels["zone"], "hand-set");
        assert_eq!(p.labels[MANAGED_LABELS_KEY], "rack");
        // Later, the tag goes away: the operator's label is still not the agent's to remove.
        let p2 = plan(&p.labels, &want(&[]));
        assert_eq!(p2.labels, map(&[("zone", "hand-set")]));
    }

    /// A fake Scaleway metadata service whose tags the test changes.
    async fn fake_metadata(tags: Arc<std::sync::Mutex<Vec<String>>>) -> String {
        use axum::routing::get;
        let app = axum::Router::new().route(
            "/conf",
            get(move || {
                let tags = tags.lock().unwrap().clone();
                async move { axum::Json(serde_json::json!({ "tags": tags })) }
            }),
        );
        crate::cloud::mock::serve(app).await
    }

    #[tokio::test]
    async fn the_publisher_registers_its_tags_only_when_they_change() {
        use crate::testing::FakeBackend;
        let tags = Arc::new(std::sync::Mutex::new(vec![
            "swarm.label.zone=a".to_string(),
            "other".to_string(),
        ]));
        let base = fake_metadata(tags.clone()).await;
        let fake = FakeBackend::new(1);
        let backend: Arc<dyn Rendezvous> = fake.clone();
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let mut p = Publisher {
            provider: cloud::provider_at(crate::config::CloudKind::Scaleway, Some(&base)),
            backend: backend.clone(),
            store: &store,
            node_id: "n1",
            relay: None,
            published: None,
            reads_since: 0,
            warned: HashSet::new(),
            last_error: None,
        };
        // Not bootstrapped yet: nothing to register, try again soon.
        assert!(!p.step().await);
        backend
            .register(&RegisterRequest {
                node_id: "n1".into(),
                hostname: "h1".into(),
                advertise_addr: "198.18.0.1".into(),
                role: RequestedRole::Auto,
                joined_through: None,
                labels: None,
            })
            .await
            .unwrap();
        store
            .save(&mut crate::state::AgentState {
                cluster: "test".into(),
                node_id: "n1".into(),
                role: Some(Role::Manager),
                hostname: Some("h1".into()),
                advertise_addr: Some("198.18.0.1".into()),
                ..Default::default()
            })
            .unwrap();
        let labels = |fake: &FakeBackend| fake.memory().nodes["n1"].labels.clone();
        assert!(p.step().await);
        assert_eq!(labels(&fake), want(&[("zone", "a")]));
        let registers = fake.registers();
        // Unchanged tags: no registration.
        assert!(p.step().await);
        assert_eq!(fake.registers(), registers);
        // Changed tags (one refused): registered again, the refused one left out.
        *tags.lock().unwrap() = vec![
            "swarm.label.zone=b".into(),
            "swarm.label.swarmstrap.x=1".into(),
        ];
        assert!(p.step().await);
        assert_eq!(labels(&fake), want(&[("zone", "b")]));
        assert!(p
            .warned
            .iter()
            .any(|w| w.contains("swarm.label.swarmstrap.x=1")));
        // Every tag gone: the labels are cleared.
        tags.lock().unwrap().clear();
        assert!(p.step().await);
        assert!(labels(&fake).is_empty());
        // After REASSERT_EVERY unchanged reads it registers once more (a no-op write).
        let registers = fake.registers();
        for _ in 0..REASSERT_EVERY {
            assert!(p.step().await);
        }
        assert_eq!(fake.registers(), registers + 1);
    }

    fn target(id: &str, addr: &str, ready: bool) -> LabelTarget {
        LabelTarget {
            id: id.into(),
            hostname: format!("host-{id}"),
            addr: Some(addr.into()),
            ready,
            labels: HashMap::new(),
            version: 1,
        }
    }

    fn reg(id: &str, addr: &str) -> NodeInfo {
        NodeInfo {
            node_id: id.into(),
            hostname: format!("h-{id}"),
            advertise_addr: addr.into(),
            requested: RequestedRole::Auto,
            role: Role::Worker,
            registered_at_ms: 0,
            joined_through: None,
            seen_at_ms: None,
            credential_sha256: None,
            labels: [("zone".to_string(), id.to_string())].into(),
        }
    }

    #[test]
    fn a_registration_labels_only_its_own_node_and_a_contested_node_none() {
        let nodes = [
            target("d1", "198.18.0.1", true),
            target("d2", "198.18.0.2", true),
            target("d2-old", "198.18.0.2", false),
            target("d3", "198.18.0.3", true),
        ];
        let regs = [
            reg("a1", "198.18.0.1"),
            reg("a2", "198.18.0.2:2377"),
            // A join-secret holder registers a second id with d3's address.
            reg("a3", "198.18.0.3"),
            reg("evil", "198.18.0.3"),
            // No node has this address: nothing.
            reg("a9", "198.18.0.9"),
        ];
        let (ok, ambiguous) = assign(&regs, &nodes);
        let ok: Vec<(&str, &str)> = ok
            .iter()
            .map(|(d, r)| (d.as_str(), r.node_id.as_str()))
            .collect();
        assert_eq!(ok, vec![("d1", "a1"), ("d2", "a2")]);
        assert_eq!(ambiguous, vec!["d3"]);
    }
}
