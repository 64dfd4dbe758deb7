//! Cluster lifecycle after the bootstrap (quorum keeper, drains, manager loss):
//!
//! - [`keeper`]: the quorum keeper and drain handler on the raft leader's agent
//!   ([`plan`] decides, [`nodes`] acts on the engine, [`docs`] holds the shared documents);
//! - [`labels`]: node labels from cloud tags (every agent publishes its own; the leader's
//!   agent sets them);
//! - [`supervise`]: rejoin after lost swarm state, detect total manager loss, follow an
//!   operator's `swarm-agent recover`;
//! - `swarm-agent leave` / `swarm-agent recover` live in `cli/`.

pub mod docs;
pub mod keeper;
pub mod labels;
pub mod nodes;
pub mod plan;
pub mod supervise;
