//! swarm-coordinator: the rendezvous service of swarmstrap. A small HTTPS API that lets the
//! nodes of a cluster elect the one that runs `docker swarm init`, publish its join tokens,
//! and hand every other node the token of its role. See README.md and openapi.yaml.

/// The version this binary reports (`--version`, status, the registration): the release version
/// `scripts/release.sh` stamps in through `SWARMSTRAP_VERSION` at build time, else the crate's.
pub const VERSION: &str = match option_env!("SWARMSTRAP_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

pub mod api;
pub mod auth;
pub mod cli;
pub mod datadir;
pub mod error;
pub mod metrics;
pub mod server;
pub mod store;
pub mod tls;
