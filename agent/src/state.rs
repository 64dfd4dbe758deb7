//! The agent's persistent state in `state_dir`: a random node id (`node-id`) and the progress
//! record `state.json`, written atomically after every step. `status` reads it, and `run`
//! reads it back after a crash or reboot to stay idempotent.

use crate::fsutil::{self, FsError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use swarmstrap_wire::{Role, Secret};

/// Where `run` is. Serialized in snake_case into `state.json` and `status --json`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AgentPhase {
    #[default]
    Starting,
    WaitingForEngine,
    Registering,
    Claiming,
    Initialising,
    Publishing,
    WaitingForTokens,
    Joining,
    /// Part of the cluster's swarm (as initialiser or by joining).
    Joined,
    /// Stopped on a permanent error (see `last_error`).
    Failed,
    /// `swarm-agent leave` is draining this node / taking it out of the swarm.
    Leaving,
    /// Left the swarm through `swarm-agent leave` (the next `run` joins again).
    Left,
}

impl AgentPhase {
    /// Every phase, in the order of a bootstrap (metrics list them all; tests cover them all).
    pub const ALL: [AgentPhase; 12] = [
        AgentPhase::Starting,
        AgentPhase::WaitingForEngine,
        AgentPhase::Registering,
        AgentPhase::Claiming,
        AgentPhase::Initialising,
        AgentPhase::Publishing,
        AgentPhase::WaitingForTokens,
        AgentPhase::Joining,
        AgentPhase::Joined,
        AgentPhase::Failed,
        AgentPhase::Leaving,
        AgentPhase::Left,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentPhase::Starting => "starting",
            AgentPhase::WaitingForEngine => "waiting_for_engine",
            AgentPhase::Registering => "registering",
            AgentPhase::Claiming => "claiming",
            AgentPhase::Initialising => "initialising",
            AgentPhase::Publishing => "publishing",
            AgentPhase::WaitingForTokens => "waiting_for_tokens",
            AgentPhase::Joining => "joining",
            AgentPhase::Joined => "joined",
            AgentPhase::Failed => "failed",
            AgentPhase::Leaving => "leaving",
            AgentPhase::Left => "left",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    pub message: String,
    /// RFC 3339, UTC.
    pub at: String,
}

/// Crash-safety record of `swarm init`: written (with the fencing token) BEFORE the engine is
/// asked to init, completed with the swarm id right after. On restart it tells the agent that
/// a swarm on the engine is one it created itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitRecord {
    pub fencing_token: u64,
    pub intent_at: String,
    /// Docker swarm id once `swarm init` returned.
    pub swarm_id: Option<String>,
    /// `sha256:<hex>` of the swarm's root CA once known.
    pub ca_digest: Option<String>,
    /// True once the backend accepted the publish of this swarm.
    pub published: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AgentState {
    pub cluster: String,
    pub node_id: String,
    pub phase: AgentPhase,
    /// Assigned role (from the backend), once registered.
    pub role: Option<Role>,
    /// Docker swarm id of the cluster this node is part of.
    pub swarm_id: Option<String>,
    /// `sha256:<hex>` of the root CA of that swarm: the identity check after a reboot.
    pub ca_digest: Option<String>,
    /// Docker's node id of this engine in that swarm (identifies the swarm on workers, which
    /// cannot read the CA through the API).
    pub swarm_node_id: Option<String>,
    pub advertise_addr: Option<String>,
    pub hostname: Option<String>,
    pub backend: Option<String>,
    pub init: Option<InitRecord>,
    pub joined_at: Option<String>,
    pub last_error: Option<LastError>,
    /// Set while no manager of this node's swarm is reachable (RFC 3339, since when).
    #[serde(default)]
    pub no_manager_since: Option<String>,
    /// When `swarm-agent leave` took this node out of the swarm (RFC 3339).
    #[serde(default)]
    pub left_at: Option<String>,
    /// The manager address (`ip:2377`) the engine joined the swarm through (its raft join goes
    /// through it if it is ever promoted).
    #[serde(default)]
    pub joined_through: Option<String>,
    pub updated_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error("the state file {path} is corrupt ({message}): move it away to start over")]
    Corrupt { path: PathBuf, message: String },
    #[error(
        "the node id file {path} holds {value:?}, which is not a node id: delete it to get a new one"
    )]
    BadNodeId { path: PathBuf, value: String },
}

/// `state.json` in the state directory.
#[derive(Clone, Debug)]
pub struct StateStore {
    path: PathBuf,
}

impl StateStore {
    pub fn new(state_dir: &Path) -> StateStore {
        StateStore {
            path: state_dir.join("state.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state, or `None` when there is no state file yet.
    pub fn load(&self) -> Result<Option<AgentState>, StateError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| StateError::Corrupt {
                        path: self.path.clone(),
                        message: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Fs(FsError::Io {
                action: "read",
                path: self.path.clone(),
                source,
            })),
        }
    }

    pub fn save(&self, state: &mut AgentState) -> Result<(), StateError> {
        state.updated_at = rfc3339_now();
        let mut bytes = serde_json::to_vec_pretty(state).expect("state serializes");
        bytes.push(b'\n');
        fsutil::atomic_write(&self.path, &bytes, 0o600)?;
        // systemd's `STATUS=` follows the saved phase (only in `swarm-agent run`).
        crate::notify::phase_saved(state.phase);
        Ok(())
    }
}

fn valid_node_id(s: &str) -> bool {
    swarmstrap_wire::validate_name(s).is_ok()
}

/// The node id in `state_dir/node-id`, created (random, 128 bit, hex) on first use.
pub fn load_or_create_node_id(state_dir: &Path) -> Result<String, StateError> {
    let path = state_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim().to_string();
            if valid_node_id(&id) {
                Ok(id)
            } else {
                Err(StateError::BadNodeId { path, value: id })
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let bytes: [u8; 16] = rand::random();
            let id = hex::encode(bytes);
            fsutil::atomic_write(&path, format!("{id}\n").as_bytes(), 0o600)?;
            Ok(id)
        }
        Err(source) => Err(StateError::Fs(FsError::Io {
            action: "read",
            path,
            source,
        })),
    }
}

/// Replace the node id with a new random one (persisted) and drop the credential of the old
/// one: the way out when the rendezvous holds a registration of this node id whose credential
/// this node lost (its state dir was wiped while the registration stayed).
pub fn replace_node_id(state_dir: &Path) -> Result<String, StateError> {
    let bytes: [u8; 16] = rand::random();
    let id = hex::encode(bytes);
    fsutil::atomic_write(
        &state_dir.join("node-id"),
        format!("{id}\n").as_bytes(),
        0o600,
    )?;
    remove_credential(state_dir)?;
    Ok(id)
}

/// The file holding this node's rendezvous credential (mode 0600, never logged or shown).
pub const CREDENTIAL_FILE: &str = "node-credential";

/// What [`CREDENTIAL_FILE`] holds: the credential and the node id it belongs to; `confirmed`
/// once the rendezvous accepted it (a registration or adoption answered), before that it is
/// the one this node offers for its first registration ([`offer_credential`]).
#[derive(Serialize, Deserialize)]
struct StoredCredential {
    node_id: String,
    credential: Secret,
    #[serde(default)]
    confirmed: bool,
}

fn read_stored(state_dir: &Path) -> Result<Option<StoredCredential>, StateError> {
    let path = state_dir.join(CREDENTIAL_FILE);
    match std::fs::read(&path) {
        // The parse error names no content (the file holds a secret).
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|_| StateError::Corrupt {
                path: path.clone(),
                message: "not a node credential record".into(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Fs(FsError::Io {
            action: "read",
            path,
            source,
        })),
    }
}

fn write_stored(state_dir: &Path, stored: &StoredCredential) -> Result<(), StateError> {
    let mut bytes = serde_json::to_vec(stored).expect("a credential record serializes");
    bytes.push(b'\n');
    fsutil::atomic_write(&state_dir.join(CREDENTIAL_FILE), &bytes, 0o600)?;
    Ok(())
}

/// The credential this node presents for `node_id`: the kept one, or a new random one (32
/// bytes from the OS RNG, hex) written to the state dir BEFORE the first registration offers
/// it. The rendezvous binds a new node id to an offered credential, so a registration whose
/// answer is lost is retried with the same credential instead of locking the node out.
pub fn offer_credential(state_dir: &Path, node_id: &str) -> Result<Secret, StateError> {
    if let Some(c) = load_credential(state_dir, node_id)? {
        return Ok(c);
    }
    use rand::TryRngCore;
    let mut b = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut b)
        .expect("the operating system's random number generator failed");
    let credential = Secret::new(hex::encode(b));
    write_stored(
        state_dir,
        &StoredCredential {
            node_id: node_id.to_string(),
            credential: credential.clone(),
            confirmed: false,
        },
    )?;
    Ok(credential)
}

/// True while the kept credential of `node_id` was offered but never accepted (no registration
/// answered since): the agent registers once to bind it (e.g. after an upgrade from a version
/// without node credentials, whose registration has none).
pub fn credential_unconfirmed(state_dir: &Path, node_id: &str) -> bool {
    matches!(
        read_stored(state_dir),
        Ok(Some(s)) if s.node_id == node_id && !s.confirmed
    )
}

/// The credential the rendezvous issued to `node_id` (its registration), if this node kept one.
/// A file written for another node id (the node id was replaced) counts as none.
pub fn load_credential(state_dir: &Path, node_id: &str) -> Result<Option<Secret>, StateError> {
    Ok(read_stored(state_dir)?
        .filter(|s| s.node_id == node_id && !s.credential.expose().is_empty())
        .map(|s| s.credential))
}

/// Keep the credential the rendezvous accepted or issued for `node_id` (atomic write, mode
/// 0600), confirmed. Unchanged content is not written again.
pub fn save_credential(
    state_dir: &Path,
    node_id: &str,
    credential: &Secret,
) -> Result<(), StateError> {
    if let Ok(Some(s)) = read_stored(state_dir) {
        if s.confirmed && s.node_id == node_id && s.credential == *credential {
            return Ok(());
        }
    }
    write_stored(
        state_dir,
        &StoredCredential {
            node_id: node_id.to_string(),
            credential: credential.clone(),
            confirmed: true,
        },
    )
}

fn remove_credential(state_dir: &Path) -> Result<(), StateError> {
    let path = state_dir.join(CREDENTIAL_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(StateError::Fs(FsError::Io {
            action: "remove",
            path,
            source,
        })),
    }
}

/// Read the node id without creating it (for `status`).
/// `agent.run` in the state directory: the running `swarm-agent run` process, written when it
/// starts (also after `swarm-agent upgrade` re-executes it). `status` reports the version that
/// really runs from it; `upgrade` finds the process to restart through it.
pub const RUN_RECORD_FILE: &str = "agent.run";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub pid: u32,
    pub version: String,
    /// The binary the process runs (and re-executes on SIGUSR2).
    pub exe: PathBuf,
    pub started_at: String,
}

pub fn write_run_record(state_dir: &Path, rec: &RunRecord) -> Result<(), StateError> {
    let mut bytes = serde_json::to_vec_pretty(rec).unwrap_or_default();
    bytes.push(b'\n');
    fsutil::atomic_write(&state_dir.join(RUN_RECORD_FILE), &bytes, 0o644)?;
    Ok(())
}

/// The run record, if its process is alive and still runs that binary (`/proc/<pid>/exe`,
/// also when the file was replaced since: the kernel then appends " (deleted)").
pub fn running_agent(state_dir: &Path) -> Option<RunRecord> {
    let text = std::fs::read_to_string(state_dir.join(RUN_RECORD_FILE)).ok()?;
    let rec: RunRecord = serde_json::from_str(&text).ok()?;
    let exe = std::fs::read_link(format!("/proc/{}/exe", rec.pid)).ok()?;
    let exe = exe.to_string_lossy();
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe);
    (Path::new(exe) == rec.exe).then_some(rec)
}

pub fn read_node_id(state_dir: &Path) -> Option<String> {
    std::fs::read_to_string(state_dir.join("node-id"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| valid_node_id(s))
}

pub fn rfc3339_now() -> String {
    rfc3339(SystemTime::now())
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC), without a date-time dependency.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_known_values() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_123); // 2024-02-29T23:59:59.123Z
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn node_id_is_created_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_node_id(dir.path()).unwrap();
        let b = load_or_create_node_id(dir.path()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 32);
        assert_eq!(read_node_id(dir.path()), Some(a));
        std::fs::write(dir.path().join("node-id"), "Not Valid").unwrap();
        assert!(matches!(
            load_or_create_node_id(dir.path()),
            Err(StateError::BadNodeId { .. })
        ));
    }

    #[test]
    fn credential_is_kept_private_per_node_id_and_dropped_with_a_new_node_id() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let id = load_or_create_node_id(dir.path()).unwrap();
        assert!(load_credential(dir.path(), &id).unwrap().is_none());
        save_credential(dir.path(), &id, &Secret::new("cred-1")).unwrap();
        let path = dir.path().join(CREDENTIAL_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            load_credential(dir.path(), &id).unwrap().unwrap().expose(),
            "cred-1"
        );
        // Another node id's credential is not this one's.
        assert!(load_credential(dir.path(), "other").unwrap().is_none());
        assert!(!credential_unconfirmed(dir.path(), &id));
        // Offering: the kept one; for a node id without one, a new one written first.
        assert_eq!(
            offer_credential(dir.path(), &id).unwrap().expose(),
            "cred-1"
        );
        let offered = offer_credential(dir.path(), "other").unwrap();
        assert_eq!(offered.expose().len(), 64);
        assert!(credential_unconfirmed(dir.path(), "other"));
        assert_eq!(offer_credential(dir.path(), "other").unwrap(), offered);
        save_credential(dir.path(), "other", &offered).unwrap();
        assert!(!credential_unconfirmed(dir.path(), "other"));
        save_credential(dir.path(), &id, &Secret::new("cred-1")).unwrap();
        let new = replace_node_id(dir.path()).unwrap();
        assert_ne!(new, id);
        assert_eq!(read_node_id(dir.path()), Some(new.clone()));
        assert!(!path.exists());
        assert!(load_credential(dir.path(), &new).unwrap().is_none());
        // A corrupt file is an error that does not echo its content.
        std::fs::write(&path, "cred-secret-text").unwrap();
        let e = load_credential(dir.path(), &new).unwrap_err().to_string();
        assert!(!e.contains("cred-secret-text"), "{e}");
    }

    #[test]
    fn state_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        assert_eq!(store.load().unwrap(), None);
        let mut st = AgentState {
            cluster: "c".into(),
            node_id: "n".into(),
            phase: AgentPhase::Joined,
            role: Some(Role::Manager),
            init: Some(InitRecord {
                fencing_token: 3,
                intent_at: rfc3339_now(),
                swarm_id: Some("s".into()),
                ca_digest: None,
                published: true,
            }),
            ..Default::default()
        };
        store.save(&mut st).unwrap();
        assert_eq!(store.load().unwrap(), Some(st));
        let text = std::fs::read_to_string(store.path()).unwrap();
        assert!(text.contains("\"phase\": \"joined\""), "{text}");
        std::fs::write(store.path(), "{").unwrap();
        assert!(matches!(store.load(), Err(StateError::Corrupt { .. })));
    }
}
