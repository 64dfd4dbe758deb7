//! Images without a registry: build a tarball from a list of files and `docker import` it.

use crate::error::{LabError, Result};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Where Debian's busybox-static installs its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Busybox applets linked in the busybox image (`/bin/<applet>` → `/bin/busybox`).
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh", "httpd", "hostname", "echo", "cat", "ls", "sleep", "true", "false", "wget", "env",
    "mkdir", "ps", "kill", "nc", "ip", "ping", "grep", "test", "id", "uname",
];

/// One entry of an image tarball. Paths are inside the image (absolute or relative; the
/// leading `/` is dropped).
#[derive(Debug, Clone)]
pub enum TarEntry {
    /// A copy of the host file `src`.
    File {
        path: String,
        src: PathBuf,
        mode: u32,
    },
    /// A file with the given contents.
    Bytes {
        path: String,
        data: Vec<u8>,
        mode: u32,
    },
    Dir {
        path: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
}

impl TarEntry {
    pub fn file(path: &str, src: impl Into<PathBuf>) -> Self {
        TarEntry::File {
            path: path.into(),
            src: src.into(),
            mode: 0o755,
        }
    }
    pub fn bytes(path: &str, data: impl Into<Vec<u8>>, mode: u32) -> Self {
        TarEntry::Bytes {
            path: path.into(),
            data: data.into(),
            mode,
        }
    }
    pub fn dir(path: &str) -> Self {
        TarEntry::Dir {
            path: path.into(),
            mode: 0o755,
        }
    }
    pub fn symlink(path: &str, target: &str) -> Self {
        TarEntry::Symlink {
            path: path.into(),
            target: target.into(),
        }
    }
}

fn rel(p: &str) -> &str {
    p.trim_start_matches('/')
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// Write an uncompressed tarball of `entries` to `out` (owner root, mtime 0).
pub fn build_tar(out: &Path, entries: &[TarEntry]) -> Result<()> {
    let ioerr = |e| LabError::io(format!("writing image tarball {}", out.display()), e);
    let f = File::create(out).map_err(ioerr)?;
    let mut b = tar::Builder::new(f);
    for e in entries {
        match e {
            TarEntry::File { path, src, mode } => {
                let data = std::fs::read(src).map_err(|e| {
                    LabError::io(format!("reading {} for the image", src.display()), e)
                })?;
                let mut h = header(tar::EntryType::Regular, data.len() as u64, *mode);
                b.append_data(&mut h, rel(path), data.as_slice())
                    .map_err(ioerr)?;
            }
            TarEntry::Bytes { path, data, mode } => {
                let mut h = header(tar::EntryType::Regular, data.len() as u64, *mode);
                b.append_data(&mut h, rel(path), data.as_slice())
                    .map_err(ioerr)?;
            }
            TarEntry::Dir { path, mode } => {
                let mut h = header(tar::EntryType::Directory, 0, *mode);
                b.append_data(&mut h, rel(path), std::io::empty())
                    .map_err(ioerr)?;
            }
            TarEntry::Symlink { path, target } => {
                let mut h = header(tar::EntryType::Symlink, 0, 0o777);
                b.append_link(&mut h, rel(path), target).map_err(ioerr)?;
            }
        }
    }
    b.into_inner().and_then(|f| f.sync_all()).map_err(ioerr)
}

/// The names of the entries in a tarball (for checks).
pub fn list_tar(path: &Path) -> Result<Vec<String>> {
    let ioerr = |e| LabError::io(format!("reading tarball {}", path.display()), e);
    let mut a = tar::Archive::new(File::open(path).map_err(ioerr)?);
    let mut names = Vec::new();
    for e in a.entries().map_err(ioerr)? {
        let e = e.map_err(ioerr)?;
        names.push(e.path().map_err(ioerr)?.to_string_lossy().into_owned());
    }
    Ok(names)
}

/// `/bin/busybox` must be Debian's static busybox (package busybox-static).
pub fn check_busybox() -> Result<PathBuf> {
    let p = PathBuf::from(BUSYBOX);
    if !p.is_file() {
        return Err(LabError::Precondition(format!(
            "{BUSYBOX} is missing: install busybox-static (tests/setup.sh does)"
        )));
    }
    Ok(p)
}

/// Entries of the busybox image: `/bin/busybox` + links for [`BUSYBOX_APPLETS`], `/tmp`,
/// and `/www` (an empty document root for `httpd`).
pub fn busybox_entries() -> Result<Vec<TarEntry>> {
    let bb = check_busybox()?;
    let mut v = vec![
        TarEntry::dir("bin"),
        TarEntry::file("bin/busybox", bb),
        TarEntry::Dir {
            path: "tmp".into(),
            mode: 0o1777,
        },
        TarEntry::dir("www"),
    ];
    v.extend(
        BUSYBOX_APPLETS
            .iter()
            .map(|a| TarEntry::symlink(&format!("bin/{a}"), "/bin/busybox")),
    );
    Ok(v)
}

/// Entries of an image holding only `bin` at `path_in_image`: if a container of it runs,
/// the binary is static.
pub fn single_binary_entries(bin: &Path, path_in_image: &str) -> Vec<TarEntry> {
    vec![TarEntry::file(path_in_image, bin)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_tar_with_files_links_and_dirs() {
        let dir = std::env::temp_dir().join(format!("swarmstrap-unit-tar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("bin");
        std::fs::write(&src, b"#!/bin/true\n").unwrap();
        let out = dir.join("img.tar");
        build_tar(
            &out,
            &[
                TarEntry::dir("/bin"),
                TarEntry::file("/bin/prog", &src),
                TarEntry::symlink("/bin/alias", "/bin/prog"),
                TarEntry::bytes("/etc/hello", "hi", 0o644),
            ],
        )
        .unwrap();
        assert_eq!(
            list_tar(&out).unwrap(),
            ["bin", "bin/prog", "bin/alias", "etc/hello"]
        );
        let err = build_tar(&out, &[TarEntry::file("x", dir.join("missing"))]).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
