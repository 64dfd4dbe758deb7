//! Files the agent writes for others to read (state, node id, load-balancer config) are written
//! atomically with the project's one atomic write ([`swarmstrap_wire::fsutil::write_atomic`]:
//! temp file, fsync, rename over the target, fsync the directory). A crash leaves either the
//! old or the new content, never a torn file.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use swarmstrap_wire::fsutil::write_atomic;
use swarmstrap_wire::Secret;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the join secret file {path} is empty: write the cluster's join secret into it")]
    EmptySecret { path: PathBuf },
    #[error(
        "the join secret file {path} is readable by every user (mode {mode:o}): \
         restrict it with `chmod 600 {path}`"
    )]
    WorldReadableSecret { path: PathBuf, mode: u32 },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FsError + 'a {
    move |source| FsError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Create `dir` (and parents) with mode 0700 if missing. An existing directory keeps its mode.
pub fn create_private_dir(dir: &Path) -> Result<(), FsError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("create directory", dir))
}

/// Atomically replace `path` with `data` (file mode exactly `mode`): the project's one
/// atomic write, [`swarmstrap_wire::fsutil::write_atomic`].
pub fn atomic_write(path: &Path, data: &[u8], mode: u32) -> Result<(), FsError> {
    write_atomic(path, data, mode).map_err(|e| FsError::Io {
        action: e.action,
        path: e.path,
        source: e.source,
    })
}

/// Read the join secret: trimmed file content. A file readable by every user is refused (the
/// secret lets anyone join the cluster); a group-readable one is accepted with a warning.
pub fn read_secret_file(path: &Path) -> Result<Secret, FsError> {
    let meta = fs::metadata(path).map_err(io_err("read the join secret file", path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o004 != 0 {
        return Err(FsError::WorldReadableSecret {
            path: path.to_path_buf(),
            mode,
        });
    }
    if mode & 0o040 != 0 {
        tracing::warn!(
            "the join secret file {} is group-readable (mode {mode:o}); `chmod 600` it",
            path.display()
        );
    }
    let text = fs::read_to_string(path).map_err(io_err("read the join secret file", path))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(FsError::EmptySecret {
            path: path.to_path_buf(),
        });
    }
    Ok(Secret::new(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        atomic_write(&p, b"one", 0o600).unwrap();
        atomic_write(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // no temp files left behind
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn private_dir_is_0700() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b");
        create_private_dir(&p).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn secret_file_checks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        fs::write(&p, "  s3cret\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret_file(&p).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret_file(&p).unwrap().expose(), "s3cret");
        fs::write(&p, "\n").unwrap();
        assert!(matches!(
            read_secret_file(&p),
            Err(FsError::EmptySecret { .. })
        ));
        let missing = read_secret_file(&dir.path().join("nope")).unwrap_err();
        assert!(missing.to_string().contains("nope"));
    }
}
