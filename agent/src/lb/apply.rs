//! Validate and write the rendered config. A broken config is never applied: it is checked
//! with `nginx -t` (inside a temporary wrapper `http {}` that includes it, the way the nginx
//! image includes `conf.d/default.conf`) before it atomically replaces the old file, which
//! stays in place when the check fails. An unchanged config is not rewritten.

use crate::config::LbValidate;
use crate::fsutil;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Mode of the written config: nginx containers (any uid) must read it.
pub const CONFIG_MODE: u32 = 0o644;
/// `nginx -t` must answer within this.
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("the rendered config was rejected by {nginx} -t (the old {path} is kept): {message}")]
    Invalid {
        nginx: String,
        path: PathBuf,
        message: String,
    },
    #[error(
        "validate = \"nginx\" but no nginx binary was found (set [lb] nginx_bin or {}, or \
         validate = \"auto\")",
        crate::config::ENV_LB_NGINX_BIN
    )]
    NoNginx,
    #[error("running {nginx} -t: {message}")]
    Validator { nginx: String, message: String },
    #[error(transparent)]
    Fs(#[from] fsutil::FsError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The file already had exactly this content: not touched.
    Unchanged,
    /// Validated (or validation skipped, see `validated`) and written.
    Written { validated: bool },
}

/// How configs are checked before they are written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Validator {
    None,
    Nginx(PathBuf),
}

impl Validator {
    /// From the config: `none`; `nginx` (binary required); `auto` (nginx if found, else none
    /// with a logged note).
    pub fn from_config(
        mode: LbValidate,
        nginx_bin: Option<&Path>,
    ) -> Result<Validator, ApplyError> {
        if mode == LbValidate::None {
            return Ok(Validator::None);
        }
        let found = match nginx_bin {
            Some(p) => Some(p.to_path_buf()).filter(|p| p.is_file()),
            None => find_nginx(),
        };
        match (found, mode) {
            (Some(p), _) => Ok(Validator::Nginx(p)),
            (None, LbValidate::Nginx) => Err(ApplyError::NoNginx),
            (None, _) => {
                tracing::info!(
                    "no nginx binary on this host: load-balancer configs are written without `nginx -t` (validate = \"auto\")"
                );
                Ok(Validator::None)
            }
        }
    }

    /// Check `content` as a config included inside `http {}`. `Ok(true)` validated,
    /// `Ok(false)` skipped.
    pub async fn validate(&self, content: &str, target: &Path) -> Result<bool, ApplyError> {
        let nginx = match self {
            Validator::None => return Ok(false),
            Validator::Nginx(p) => p,
        };
        let nginx_s = nginx.display().to_string();
        let verr = |message: String| ApplyError::Validator {
            nginx: nginx_s.clone(),
            message,
        };
        let dir = scratch_dir().map_err(|e| verr(format!("creating a scratch directory: {e}")))?;
        let result = async {
            let candidate = dir.join("candidate.conf");
            let wrapper = dir.join("nginx.conf");
            std::fs::write(&candidate, content)
                .map_err(|e| verr(format!("writing {}: {e}", candidate.display())))?;
            std::fs::write(
                &wrapper,
                format!(
                    "pid {}/nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{\n    include {};\n}}\n",
                    dir.display(),
                    candidate.display()
                ),
            )
            .map_err(|e| verr(format!("writing {}: {e}", wrapper.display())))?;
            let child = tokio::process::Command::new(nginx)
                .arg("-t")
                .arg("-q")
                .args(["-e", "stderr", "-p"])
                .arg(&dir)
                .arg("-c")
                .arg(&wrapper)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .output();
            let out = tokio::time::timeout(VALIDATE_TIMEOUT, child)
                .await
                .map_err(|_| verr(format!("no answer within {VALIDATE_TIMEOUT:?}")))?
                .map_err(|e| verr(e.to_string()))?;
            if out.status.success() {
                return Ok(true);
            }
            let text = String::from_utf8_lossy(&out.stderr);
            let message = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.replace(&candidate.display().to_string(), "<rendered config>"))
                .collect::<Vec<_>>()
                .join("; ");
            Err(ApplyError::Invalid {
                nginx: nginx_s.clone(),
                path: target.to_path_buf(),
                message: if message.is_empty() {
                    format!("exit {}", out.status)
                } else {
                    message
                },
            })
        }
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        result
    }
}

/// `nginx` on PATH, else /usr/sbin/nginx.
pub fn find_nginx() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

fn scratch_dir() -> std::io::Result<PathBuf> {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "swarm-agent-lb-check-{}-{}-{:08x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

use std::os::unix::fs::DirBuilderExt;

/// Write `content` to `path` unless it already holds exactly that: validate first, then
/// temp file + fsync + rename + fsync dir. On a validation failure the old file is untouched.
pub async fn apply(
    path: &Path,
    content: &str,
    validator: &Validator,
) -> Result<Outcome, ApplyError> {
    if let Ok(old) = std::fs::read(path) {
        if old == content.as_bytes() {
            return Ok(Outcome::Unchanged);
        }
    }
    let validated = validator.validate(content, path).await?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|source| fsutil::FsError::Io {
                    action: "create directory",
                    path: parent.to_path_buf(),
                    source,
                })?;
        }
    }
    fsutil::atomic_write(path, content.as_bytes(), CONFIG_MODE)?;
    Ok(Outcome::Written { validated })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    const GOOD: &str = "upstream swarm {\n    server 198.18.1.1:8080;\n}\nserver {\n    listen 80;\n    location / {\n        proxy_pass http://swarm;\n    }\n}\n";

    #[tokio::test]
    async fn writes_atomically_and_not_again_when_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lb/default.conf");
        let o = apply(&path, GOOD, &Validator::None).await.unwrap();
        assert_eq!(o, Outcome::Written { validated: false });
        assert_eq!(std::fs::read_to_string(&path).unwrap(), GOOD);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, CONFIG_MODE);
        let ino = meta.ino();
        let mtime = meta.modified().unwrap();
        // Same content: untouched (same inode, same mtime).
        assert_eq!(
            apply(&path, GOOD, &Validator::None).await.unwrap(),
            Outcome::Unchanged
        );
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.ino(), meta.modified().unwrap()), (ino, mtime));
        // New content: replaced by rename (a new inode), no temp file left behind.
        let next = GOOD.replace("198.18.1.1", "198.18.1.2");
        apply(&path, &next, &Validator::None).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), next);
        assert_ne!(std::fs::metadata(&path).unwrap().ino(), ino);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["default.conf"]);
    }

    /// Real nginx (Debian's nginx-light in the build environment).
    fn nginx() -> Validator {
        match find_nginx() {
            Some(p) => Validator::Nginx(p),
            None => panic!("these tests need nginx (apt-get install nginx-light)"),
        }
    }

    #[tokio::test]
    async fn nginx_accepts_a_good_config_and_a_broken_one_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("default.conf");
        let v = nginx();
        assert_eq!(
            apply(&path, GOOD, &v).await.unwrap(),
            Outcome::Written { validated: true }
        );
        let bad = format!("{GOOD}upstream broken {{ no_such_directive 1; }}\n");
        let err = apply(&path, &bad, &v).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, ApplyError::Invalid { .. }), "{msg}");
        assert!(msg.contains("no_such_directive"), "{msg}");
        assert!(msg.contains("old"), "{msg}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            GOOD,
            "old file kept"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "nothing but the config in its directory");
    }

    #[tokio::test]
    async fn nginx_accepts_the_default_rendering_with_several_services_and_no_ready_node() {
        use crate::config::LbService;
        use crate::lb::membership::{member, Membership};
        use crate::lb::render::render_default;
        let services = [
            LbService {
                name: "web".into(),
                port: 8080,
                listen: 80,
            },
            LbService {
                name: "api".into(),
                port: 9000,
                listen: 8000,
            },
        ];
        let v = nginx();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("default.conf");
        for m in [
            Membership::new(vec![
                member("198.18.1.2", "b", "ready"),
                member("198.18.1.1", "a", "ready"),
            ]),
            Membership::new(vec![member("198.18.1.1", "a", "down")]),
        ] {
            let out = render_default(&m, &services);
            assert_eq!(
                apply(&path, &out, &v).await.unwrap(),
                Outcome::Written { validated: true },
                "{out}"
            );
        }
    }

    #[test]
    fn validate_nginx_without_a_binary_is_an_error_and_none_skips() {
        let missing = Path::new("/nonexistent/nginx");
        assert!(matches!(
            Validator::from_config(LbValidate::Nginx, Some(missing)),
            Err(ApplyError::NoNginx)
        ));
        assert_eq!(
            Validator::from_config(LbValidate::Auto, Some(missing)).unwrap(),
            Validator::None
        );
        assert_eq!(
            Validator::from_config(LbValidate::None, None).unwrap(),
            Validator::None
        );
    }
}
