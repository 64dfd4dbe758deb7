//! swarmstrap-lab: a multi-host lab on one machine, for end-to-end tests of swarm-agent and
//! swarm-coordinator against real Docker engines.
//!
//! A [`Lab`] is N hosts (`node1` … `nodeN`). Each host is a network namespace wired to a lab
//! bridge at 198.18.<subnet>.<n>/24 (the root namespace is .254, see [`Lab::bridge_addr`]),
//! and a dockerd with its own hostname, data root, exec root and socket. Labs are serialized
//! machine-wide by a lock, cleaned up on drop (also when a test panics), and leftovers of
//! crashed runs are removed by the next [`Lab::start`]. See tests/README.md.
//!
//! ```no_run
//! use swarmstrap_lab::{Lab, LabConfig};
//! let lab = Lab::start(LabConfig::new(3)).unwrap();
//! let ms = swarmstrap_lab::baseline_form(&lab, 3, 0).unwrap();
//! println!("formed in {ms:?}");
//! ```

pub mod cluster;
pub mod cmd;
pub mod engine;
pub mod error;
pub mod etcd;
pub mod host;
pub mod image;
pub mod lab;
pub mod lock;
pub mod net;
pub mod nginx;
pub mod proc;
pub mod quorum;
pub mod stale;
pub mod swarm;
pub mod wait;

pub use engine::EngineApi;
pub use error::{LabError, Result};
pub use host::{EngineStop, Host};
pub use image::TarEntry;
pub use lab::{Lab, LabConfig, LabTraces, TeardownReport};
pub use proc::{ProcHandle, Signal};
pub use stale::{cleanup_stale, StaleReport};
pub use swarm::{baseline_form, ManagerStatus, NodeStatus, Shape, SwarmInfo, SwarmNode};
pub use wait::{wait_for, wait_until, Backoff};
