//! swarm-agent: runs on every VM and turns a set of Docker engines into one swarm.
//!
//! Through a rendezvous backend (the swarm-coordinator, or AWS Secrets Manager) the agents
//! elect the single node that runs `docker swarm init`; it publishes the join tokens and every
//! other node joins as manager or worker. See `README.md` for the configuration reference.

/// The version this binary reports (`--version`, status, the registration): the release version
/// `scripts/release.sh` stamps in through `SWARMSTRAP_VERSION` at build time, else the crate's.
pub const VERSION: &str = match option_env!("SWARMSTRAP_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

pub mod advertise;
pub mod backend;
pub mod bootstrap;
pub mod cli;
pub mod cloud;
pub mod config;
pub mod engine;
pub mod fsutil;
pub mod lb;
pub mod lifecycle;
pub mod metrics;
pub mod notify;
pub mod relay;
pub mod release;
pub mod retry;
pub mod state;

#[cfg(test)]
mod sim;
/// Fakes for tests (an engine world and an in-memory rendezvous running the rulebook); the
/// `testing` feature exposes them to the conformance suite.
#[cfg(any(test, feature = "testing"))]
pub mod testing;
