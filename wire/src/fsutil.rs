//! The one atomic file write of the project (agent state, load-balancer config, coordinator
//! data dir): a temp file in the same directory with the final mode, fsync, rename over the
//! target, fsync the directory. A crash leaves either the old or the new content, never a torn
//! file, and a secret file is never readable by others, not even for a moment.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A failed step of [`write_atomic`]: what was being done, to which path, and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {path}: {source}")]
pub struct WriteError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn step<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WriteError + 'a {
    move |source| WriteError {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Atomically replace `path` with `bytes`, file mode exactly `mode` (not filtered by the umask).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(step("create", &tmp))?;
        // The mode given to open() is filtered by the umask and ignored for an existing file.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(step("set the mode of", &tmp))?;
        f.write_all(bytes).map_err(step("write", &tmp))?;
        f.sync_all().map_err(step("fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(step("rename into place", path))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(step("fsync the directory", dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_with_an_exact_mode() {
        let dir = std::env::temp_dir().join(format!("wire-fsutil-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        write_atomic(&p, b"one", 0o644).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let leftovers = fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 1, "no temp file left behind");
        let err = write_atomic(&dir.join("missing/f"), b"x", 0o600).unwrap_err();
        assert!(err.to_string().contains("cannot create"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
