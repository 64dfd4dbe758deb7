//! `state_dir/lb.json`: what the load-balancer loop last did, for `swarm-agent status`.

use crate::fsutil;
use crate::state::{rfc3339_now, LastError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "lb.json";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbState {
    /// The config file this agent writes.
    pub path: String,
    /// Version of the membership document the file on disk was rendered from.
    pub version: Option<u64>,
    /// `sha256:<hex>` of the file as written (or found identical).
    pub sha256: Option<String>,
    /// When it was last written (or confirmed identical after a new document version).
    pub applied_at: Option<String>,
    /// Ready nodes in the applied config.
    pub ready_nodes: Option<usize>,
    /// The last failure (render, validation, write, reload); cleared by the next success.
    pub last_error: Option<LastError>,
    /// Version of the newest document seen (may be newer than `version` after a failure).
    pub seen_version: Option<u64>,
    pub updated_at: String,
}

pub fn sha256_hex(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

pub fn load(state_dir: &Path) -> Result<Option<LbState>, String> {
    let p = state_path(state_dir);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{}: {e}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

pub fn save(state_dir: &Path, st: &mut LbState) -> Result<(), fsutil::FsError> {
    st.updated_at = rfc3339_now();
    let text = serde_json::to_vec_pretty(st).expect("lb state serializes");
    fsutil::atomic_write(&state_path(state_dir), &text, 0o600)
}

/// Does the file on disk differ from what was last applied? `None` when nothing was applied.
pub fn drift(st: &LbState) -> Option<bool> {
    let want = st.sha256.as_ref()?;
    Some(match std::fs::read(&st.path) {
        Ok(b) => &sha256_hex(&b) != want,
        Err(_) => true,
    })
}

pub fn error_now(message: String) -> LastError {
    LastError {
        message,
        at: rfc3339_now(),
    }
}
