//! The live nginx load-balancer config.
//!
//! - [`membership`]: the swarm's node list as published in the rendezvous document
//!   [`membership::DOC_NAME`]; the agent on the raft leader keeps it current
//!   ([`service::publish_loop`]), watching the engine's node events with a periodic resync.
//! - [`render`]: membership → nginx config (built-in default or a minijinja template),
//!   deterministic so every host renders identical bytes.
//! - [`apply`]: validate (`nginx -t`), then write atomically only when the content changed.
//! - [`docker`]: the engine calls (leader check, node list, node events, SIGHUP to nginx).
//! - [`service::apply_loop`]: every agent long-polls the document and applies it.
//! - [`status`]: `state_dir/lb.json`, read by `swarm-agent status`.

pub mod apply;
pub mod docker;
pub mod membership;
pub mod render;
pub mod service;
pub mod status;

pub use membership::{Member, Membership};
