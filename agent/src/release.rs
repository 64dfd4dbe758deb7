//! Releases (`release/README.md`): which file is this machine's, the signed `SHA256SUMS`, and
//! replacing the running binary in place (`swarm-agent upgrade`).
//!
//! Every check the contract lists is made here, in this order: the signature's key id, the
//! Ed25519 signature over BLAKE2b-512(`SHA256SUMS`), the global signature over the trusted
//! comment, the trusted comment naming the version asked for (a signed `SHA256SUMS` of another
//! version is refused: no downgrade by replay), and the sha256 of the file. Nothing is written
//! before all of them pass.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A release binary is a few MB; anything far larger is not one of ours.
pub const MAX_BINARY_BYTES: usize = 256 << 20;
/// `SHA256SUMS` and its signature are a few hundred bytes.
pub const MAX_SUMS_BYTES: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(
        "{0:?} is not a release version: give it as in the release's tag without the `v`, e.g. 0.2.0"
    )]
    BadVersion(String),
    #[error("this machine's architecture {0} has no swarmstrap release (x86_64 and aarch64 do)")]
    Arch(String),
    #[error(
        "the release public key is not a minisign public key ({0}); check [release] public_key"
    )]
    BadPublicKey(String),
    #[error("{url}: the signature file is not a minisign signature ({detail})")]
    BadSignatureFile { url: String, detail: String },
    #[error(
        "{url} was signed by another key (key id mismatch): this release is not signed by the \
         trusted key; check [release] public_key and the mirror"
    )]
    WrongKey { url: String },
    #[error(
        "{url}: the signature does not verify with the trusted key: SHA256SUMS or its \
         signature was altered (or the mirror is broken); nothing was installed"
    )]
    BadSignature { url: String },
    #[error(
        "{url} is signed for {found:?}, not for \"swarmstrap {version} SHA256SUMS\": the mirror \
         serves another release's SHA256SUMS under v{version}; nothing was installed"
    )]
    WrongRelease {
        url: String,
        version: String,
        found: String,
    },
    #[error("SHA256SUMS of {version} lists no {file}; is the version right?")]
    NotListed { version: String, file: String },
    #[error(
        "{file}: sha256 is {got}, SHA256SUMS says {want}: the download was altered or is \
         incomplete; nothing was installed"
    )]
    HashMismatch {
        file: String,
        got: String,
        want: String,
    },
    #[error("{path}: {action}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the downloaded binary does not run here or is not {want:?} (it printed {got:?}); \
         nothing was installed"
    )]
    SmokeTest { want: String, got: String },
}

/// `0.2.0`, `0.2.1-rc.1`: what follows `v` in a release tag (a leading `v` is accepted).
pub fn parse_version(v: &str) -> Result<String, ReleaseError> {
    let v = v.trim();
    let v = v.strip_prefix('v').unwrap_or(v);
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.starts_with(|c: char| c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'));
    if ok {
        Ok(v.to_string())
    } else {
        Err(ReleaseError::BadVersion(v.to_string()))
    }
}

/// The release's name for an architecture as `uname -m` or Rust spells it.
pub fn release_arch(arch: &str) -> Result<&'static str, ReleaseError> {
    match arch {
        "x86_64" | "amd64" => Ok("x86_64"),
        "aarch64" | "arm64" => Ok("aarch64"),
        other => Err(ReleaseError::Arch(other.to_string())),
    }
}

/// `{name}-{version}-{arch}`.
pub fn artifact_name(name: &str, version: &str, arch: &str) -> String {
    format!("{name}-{version}-{arch}")
}

/// `{base}/v{version}/{file}`.
pub fn artifact_url(base_url: &str, version: &str, file: &str) -> String {
    format!("{}/v{version}/{file}", base_url.trim_end_matches('/'))
}

/// The trusted comment a release's `SHA256SUMS.minisig` carries.
pub fn trusted_comment(version: &str) -> String {
    format!("swarmstrap {version} SHA256SUMS")
}

/// Check `SHA256SUMS` against its minisign signature and the version asked for; return its
/// lines as file name → sha256 (lowercase hex). `url` names the file in errors.
pub fn verify_sums(
    sums: &[u8],
    minisig: &str,
    public_key: &str,
    version: &str,
    url: &str,
) -> Result<BTreeMap<String, String>, ReleaseError> {
    let key = minisign_verify::PublicKey::from_base64(public_key.trim())
        .map_err(|e| ReleaseError::BadPublicKey(e.to_string()))?;
    let sig = minisign_verify::Signature::decode(minisig).map_err(|e| {
        ReleaseError::BadSignatureFile {
            url: url.to_string(),
            detail: e.to_string(),
        }
    })?;
    match key.verify(sums, &sig, false) {
        Ok(()) => {}
        Err(minisign_verify::Error::UnexpectedKeyId) => {
            return Err(ReleaseError::WrongKey {
                url: url.to_string(),
            })
        }
        Err(minisign_verify::Error::UnexpectedAlgorithm) => {
            return Err(ReleaseError::BadSignatureFile {
                url: url.to_string(),
                detail: "a legacy (not prehashed) signature; releases are signed with `ED`".into(),
            })
        }
        Err(_) => {
            return Err(ReleaseError::BadSignature {
                url: url.to_string(),
            })
        }
    }
    let want = trusted_comment(version);
    if sig.trusted_comment() != want {
        return Err(ReleaseError::WrongRelease {
            url: url.to_string(),
            version: version.to_string(),
            found: sig.trusted_comment().to_string(),
        });
    }
    Ok(parse_sums(&String::from_utf8_lossy(sums)))
}

/// `sha256sum` lines (`<64 hex>  <name>` or `<64 hex> *<name>`); other lines are ignored.
pub fn parse_sums(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (hash, name) = l.split_once(' ')?;
            let name = name.trim_start_matches([' ', '*']).trim_end();
            let hash = hash.to_ascii_lowercase();
            (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) && !name.is_empty())
                .then(|| (name.to_string(), hash))
        })
        .collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Check `bytes` against `want` (the file's `SHA256SUMS` entry).
pub fn check_hash(file: &str, bytes: &[u8], want: &str) -> Result<(), ReleaseError> {
    let got = sha256_hex(bytes);
    if got == want {
        Ok(())
    } else {
        Err(ReleaseError::HashMismatch {
            file: file.to_string(),
            got,
            want: want.to_string(),
        })
    }
}

/// Replace `target` with `bytes` atomically: a temp file beside it (mode 0755, fsynced) must
/// print `{expect_version}` for `--version` before it is renamed over `target`; the directory
/// is fsynced after. A failure leaves `target` as it was.
pub fn replace_binary(
    target: &Path,
    bytes: &[u8],
    expect_version: &str,
) -> Result<(), ReleaseError> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let base = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "swarm-agent".into());
    let tmp = dir.join(format!(".{base}.upgrade.{}", std::process::id()));
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ReleaseError::Io {
            action,
            path,
            source,
        }
    };
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o755)
            .open(&tmp)
            .map_err(io("creating", &tmp))?;
        f.write_all(bytes).map_err(io("writing", &tmp))?;
        f.set_permissions(fs::Permissions::from_mode(0o755))
            .map_err(io("setting the mode of", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        drop(f);
        let out = std::process::Command::new(&tmp)
            .arg("--version")
            .output()
            .map_err(|e| ReleaseError::SmokeTest {
                want: expect_version.to_string(),
                got: format!("cannot run it: {e}"),
            })?;
        let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let want = format!("swarm-agent {expect_version}");
        if !out.status.success() || printed != want {
            return Err(ReleaseError::SmokeTest { want, got: printed });
        }
        fs::rename(&tmp, target).map_err(io("replacing", target))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", dir))
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
    fn versions() {
        assert_eq!(parse_version("v0.2.0").unwrap(), "0.2.0");
        assert_eq!(parse_version("0.2.1-rc.1").unwrap(), "0.2.1-rc.1");
        for bad in ["", "v", "latest", "0.2.0/../x", "0.2 0", "-1"] {
            assert!(parse_version(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn arches() {
        assert_eq!(release_arch("arm64").unwrap(), "aarch64");
        assert_eq!(release_arch("x86_64").unwrap(), "x86_64");
        let e = release_arch("riscv64").unwrap_err().to_string();
        assert!(e.contains("riscv64"), "{e}");
    }

    #[test]
    fn sums_lines() {
        let h = "a".repeat(64);
        let m = parse_sums(&format!(
            "{h}  swarm-agent-0.2.0-x86_64\n{h} *b\nnot a line\n"
        ));
        assert_eq!(m.len(), 2);
        assert_eq!(m["swarm-agent-0.2.0-x86_64"], h);
        assert_eq!(m["b"], h);
    }

    #[test]
    fn hash_check() {
        let want = sha256_hex(b"x");
        check_hash("f", b"x", &want).unwrap();
        let e = check_hash("f", b"y", &want).unwrap_err().to_string();
        assert!(e.contains("nothing was installed"), "{e}");
    }

    // A real minisign 0.11 signature (`minisign -G -W`, `minisign -S -t ...`) of the bytes
    // `SUMS` below, made once for this test with a throwaway key.
    const PK: &str = "RWTBcqmsfUYcH2Ye9DqEmM9yAjuwjGWtwtGYuGEU3F0qs7ioHLDnUGEa";
    const OTHER_PK: &str = "RWR4vlipMu05hIPtqkMIxHLPXRyTYNBdA6Bn7gfr86Emuv6kwwF887N7";
    const SUMS: &str = include_str!("release_testdata/SHA256SUMS");
    const SIG: &str = include_str!("release_testdata/SHA256SUMS.minisig");

    #[test]
    fn signature_checks() {
        let m = verify_sums(SUMS.as_bytes(), SIG, PK, "0.9.0", "u").unwrap();
        assert!(m.contains_key("swarm-agent-0.9.0-x86_64"), "{m:?}");
        // Another version asked for: the trusted comment names 0.9.0.
        let e = verify_sums(SUMS.as_bytes(), SIG, PK, "0.9.1", "u").unwrap_err();
        assert!(matches!(e, ReleaseError::WrongRelease { .. }), "{e}");
        // Another key.
        let e = verify_sums(SUMS.as_bytes(), SIG, OTHER_PK, "0.9.0", "u").unwrap_err();
        assert!(matches!(e, ReleaseError::WrongKey { .. }), "{e}");
        // Altered SHA256SUMS.
        let altered = SUMS.replacen('0', "1", 1);
        let e = verify_sums(altered.as_bytes(), SIG, PK, "0.9.0", "u").unwrap_err();
        assert!(matches!(e, ReleaseError::BadSignature { .. }), "{e}");
        // An altered trusted comment breaks the global signature.
        let forged = SIG.replace("swarmstrap 0.9.0 SHA256SUMS", "swarmstrap 0.9.1 SHA256SUMS");
        let e = verify_sums(SUMS.as_bytes(), &forged, PK, "0.9.1", "u").unwrap_err();
        assert!(matches!(e, ReleaseError::BadSignature { .. }), "{e}");
        assert!(verify_sums(SUMS.as_bytes(), "junk", PK, "0.9.0", "u").is_err());
    }

    #[test]
    fn replace_keeps_the_old_binary_when_the_new_one_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("swarm-agent");
        fs::write(&target, b"old").unwrap();
        let script = b"#!/bin/sh\necho swarm-agent 9.9.9\n";
        let e = replace_binary(&target, script, "1.0.0").unwrap_err();
        assert!(matches!(e, ReleaseError::SmokeTest { .. }), "{e}");
        assert_eq!(fs::read(&target).unwrap(), b"old");
        replace_binary(&target, script, "9.9.9").unwrap();
        assert_eq!(fs::read(&target).unwrap(), script);
        let mode = fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
