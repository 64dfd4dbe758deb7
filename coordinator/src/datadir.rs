//! The data directory: its layout, the marker that says it is ours, and the small files the
//! server writes for the CLI (admin token, server.json). Files others read are written
//! atomically with the project's one atomic write (`swarmstrap_wire::fsutil::write_atomic`:
//! temp file, fsync, rename, fsync dir); secret files get mode 0600.

use serde::{Deserialize, Serialize};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use swarmstrap_wire::{fsutil, Secret};

/// Name of the marker file that identifies a swarm-coordinator data dir.
pub const MARKER_FILE: &str = "swarm-coordinator.marker";
/// The redb database.
pub const DB_FILE: &str = "coordinator.redb";
/// Bearer token of the admin API (mode 0600), created at the server's first start.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// Where a running server says how to reach it (listen address, scheme, fingerprint).
pub const SERVER_FILE: &str = "server.json";
/// The self-signed certificate and its key (`serve --tls-self-signed`).
pub const TLS_DIR: &str = "tls";
pub const SELF_SIGNED_CERT: &str = "tls/cert.pem";
pub const SELF_SIGNED_KEY: &str = "tls/key.pem";

const MARKER_KIND: &str = "swarm-coordinator-data-dir";
/// Layout version of the directory (not the database schema, which the store checks).
const LAYOUT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{dir} is not empty and has no {MARKER_FILE} marker, so it is not a swarm-coordinator data dir \
         (it holds e.g. {sample}). Refusing to use it. Point --data-dir at a new or empty directory, \
         or at an existing coordinator data dir"
    )]
    Foreign { dir: PathBuf, sample: String },
    #[error(
        "{path} is not a valid swarm-coordinator marker ({reason}). The data dir may be damaged or \
         belong to another program; restore it from a backup or use a new --data-dir"
    )]
    BadMarker { path: PathBuf, reason: String },
    #[error(
        "{path} is missing although the marker {MARKER_FILE} says this data dir was initialized: the \
         database was deleted or moved. Restore it from a backup; to deliberately start from \
         scratch (all clusters are lost), move the data dir aside and start with an empty one"
    )]
    MissingDatabase { path: PathBuf },
    #[error("{path} exists but is not a directory; --data-dir must name a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error(transparent)]
    Write(#[from] fsutil::WriteError),
}

fn io_err<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> DataDirError + 'a {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub enum MarkerState {
    /// Written before the database is created: a crash between the two is recoverable.
    Initializing,
    /// The database exists and must be there from now on.
    Ready,
}

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    kind: String,
    layout: u32,
    state: MarkerState,
}

/// What the data dir looks like before the store opens it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirState {
    /// Does not exist or is empty.
    Fresh,
    /// Our marker says a database creation had started.
    Initializing,
    /// Our marker says the database exists.
    Ready,
}

/// A data directory path with helpers for the files in it.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn db_path(&self) -> PathBuf {
        self.path(DB_FILE)
    }

    pub fn exists(&self) -> bool {
        self.root.exists()
    }

    /// Inspect the directory without changing anything.
    pub fn inspect(&self) -> Result<DirState, DataDirError> {
        let root = &self.root;
        match fs::metadata(root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DirState::Fresh),
            Err(e) => return Err(io_err(root, "cannot stat the data dir")(e)),
            Ok(m) if !m.is_dir() => return Err(DataDirError::NotADirectory { path: root.clone() }),
            Ok(_) => {}
        }
        let marker_path = self.path(MARKER_FILE);
        let marker = match fs::read(&marker_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut entries = fs::read_dir(root)
                    .map_err(io_err(root, "cannot list the data dir"))?
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    // A dedicated filesystem's mount point is fine.
                    .filter(|n| n != "lost+found")
                    .collect::<Vec<_>>();
                if entries.is_empty() {
                    return Ok(DirState::Fresh);
                }
                entries.sort();
                entries.truncate(3);
                return Err(DataDirError::Foreign {
                    dir: root.clone(),
                    sample: entries.join(", "),
                });
            }
            Err(e) => return Err(io_err(&marker_path, "cannot read the marker")(e)),
        };
        let marker: Marker =
            serde_json::from_slice(&marker).map_err(|e| DataDirError::BadMarker {
                path: marker_path.clone(),
                reason: e.to_string(),
            })?;
        if marker.kind != MARKER_KIND {
            return Err(DataDirError::BadMarker {
                path: marker_path,
                reason: format!("kind is {:?}, expected {MARKER_KIND:?}", marker.kind),
            });
        }
        if marker.layout != LAYOUT_VERSION {
            return Err(DataDirError::BadMarker {
                path: marker_path,
                reason: format!(
                    "layout version {} (this swarm-coordinator understands {LAYOUT_VERSION}); \
                     run the swarm-coordinator version that wrote it",
                    marker.layout
                ),
            });
        }
        match marker.state {
            MarkerState::Initializing => Ok(DirState::Initializing),
            MarkerState::Ready => {
                if !self.db_path().exists() {
                    return Err(DataDirError::MissingDatabase {
                        path: self.db_path(),
                    });
                }
                Ok(DirState::Ready)
            }
        }
    }

    /// Create the directory (mode 0700) if needed.
    pub fn create(&self) -> Result<(), DataDirError> {
        fs::create_dir_all(&self.root).map_err(io_err(&self.root, "cannot create the data dir"))?;
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700))
            .map_err(io_err(&self.root, "cannot set mode 0700 on the data dir"))
    }

    pub fn write_marker(&self, state: MarkerState) -> Result<(), DataDirError> {
        let marker = Marker {
            kind: MARKER_KIND.into(),
            layout: LAYOUT_VERSION,
            state,
        };
        let mut bytes = serde_json::to_vec_pretty(&marker).expect("marker serializes");
        bytes.push(b'\n');
        fsutil::write_atomic(&self.path(MARKER_FILE), &bytes, 0o644)?;
        Ok(())
    }

    /// The admin token: read it, or create it (mode 0600) when it does not exist yet.
    pub fn admin_token_or_create(&self) -> Result<Secret, DataDirError> {
        let path = self.path(ADMIN_TOKEN_FILE);
        match self.read_admin_token() {
            Ok(t) => Ok(t),
            Err(DataDirError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                let token = crate::auth::generate_secret();
                let mut bytes = token.expose().as_bytes().to_vec();
                bytes.push(b'\n');
                fsutil::write_atomic(&path, &bytes, 0o600)?;
                Ok(token)
            }
            Err(e) => Err(e),
        }
    }

    pub fn read_admin_token(&self) -> Result<Secret, DataDirError> {
        let path = self.path(ADMIN_TOKEN_FILE);
        let text =
            fs::read_to_string(&path).map_err(io_err(&path, "cannot read the admin token"))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(DataDirError::BadFile {
                path,
                reason: "the admin token file is empty; delete it and restart the server to create a new one".into(),
            });
        }
        Ok(Secret::new(token))
    }

    pub fn write_server_info(&self, info: &ServerInfo) -> Result<(), DataDirError> {
        let mut bytes = serde_json::to_vec_pretty(info).expect("server info serializes");
        bytes.push(b'\n');
        fsutil::write_atomic(&self.path(SERVER_FILE), &bytes, 0o644)?;
        Ok(())
    }

    pub fn read_server_info(&self) -> Result<ServerInfo, DataDirError> {
        let path = self.path(SERVER_FILE);
        let bytes = fs::read(&path).map_err(io_err(&path, "cannot read the server info"))?;
        serde_json::from_slice(&bytes).map_err(|e| DataDirError::BadFile {
            path,
            reason: format!("not valid server info: {e}"),
        })
    }

    pub fn remove_server_info(&self) {
        let _ = fs::remove_file(self.path(SERVER_FILE));
    }
}

/// `DATA_DIR/server.json`: how the CLI reaches the running server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServerInfo {
    /// The bound address (may be 0.0.0.0 / [::]; the CLI then uses loopback).
    pub listen: std::net::SocketAddr,
    /// `https` or `http`.
    pub scheme: String,
    /// `sha256:<hex>` of the served certificate (https only).
    pub fingerprint: Option<String>,
    pub pid: u32,
    /// Where the admin API listens (the same scheme and certificate). Absent in the file of a
    /// server from before the admin listener existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<std::net::SocketAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_foreign_and_ready() {
        let tmp = tempfile::tempdir().unwrap();
        let dd = DataDir::new(tmp.path().join("d"));
        assert_eq!(dd.inspect().unwrap(), DirState::Fresh);
        dd.create().unwrap();
        assert_eq!(dd.inspect().unwrap(), DirState::Fresh);
        fs::write(dd.path("other"), b"x").unwrap();
        assert!(matches!(dd.inspect(), Err(DataDirError::Foreign { .. })));
        dd.write_marker(MarkerState::Initializing).unwrap();
        assert_eq!(dd.inspect().unwrap(), DirState::Initializing);
        dd.write_marker(MarkerState::Ready).unwrap();
        assert!(matches!(
            dd.inspect(),
            Err(DataDirError::MissingDatabase { .. })
        ));
        fs::write(
            dd.path(MARKER_FILE),
            b"{\"kind\":\"other\",\"layout\":1,\"state\":\"ready\"}",
        )
        .unwrap();
        assert!(matches!(dd.inspect(), Err(DataDirError::BadMarker { .. })));
    }

    #[test]
    fn admin_token_is_0600_and_stable() {
        let tmp = tempfile::tempdir().unwrap();
        let dd = DataDir::new(tmp.path());
        let a = dd.admin_token_or_create().unwrap();
        let b = dd.admin_token_or_create().unwrap();
        assert_eq!(a, b);
        let mode = fs::metadata(dd.path(ADMIN_TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
