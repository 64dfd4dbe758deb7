//! The harness's one error type.

use std::time::Duration;

/// Everything that can go wrong in the lab. Messages name what was tried and, where it helps,
/// what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The machine cannot run a lab (not root, a tool is missing, ...).
    #[error("the lab cannot run here: {0}")]
    Precondition(String),

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// A command ran and exited unsuccessfully.
    #[error("command `{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: String,
        stderr: String,
    },

    /// A condition did not become true before its deadline.
    #[error("timed out after {waited:?} waiting for {what} (last: {last})")]
    Timeout {
        what: String,
        waited: Duration,
        last: String,
    },

    /// The Docker Engine API answered with an error (or not at all).
    #[error("engine API {method} {path} via {sock}: {message}")]
    Engine {
        method: String,
        path: String,
        sock: String,
        message: String,
    },

    #[error("could not parse {what}: {message}")]
    Parse { what: String, message: String },

    /// A lab invariant did not hold (e.g. a swarm did not have the expected shape).
    #[error("{0}")]
    Check(String),
}

impl LabError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        LabError::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;
