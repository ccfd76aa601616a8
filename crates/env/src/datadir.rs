//! Where runtimes live, and making sure sandbox uids can reach them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::error::{EnvError, Result};

/// `$KILN_DATA_DIR` if set, else `/var/lib/kiln` when running as root, else
/// `$XDG_DATA_HOME/kiln` or `~/.local/share/kiln`.
pub fn default_data_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = env("KILN_DATA_DIR") {
        return dir;
    }
    if effective_uid() == Some(0) {
        return PathBuf::from("/var/lib/kiln");
    }
    if let Some(xdg) = env("XDG_DATA_HOME").filter(|p| p.is_absolute()) {
        return xdg.join("kiln");
    }
    env("HOME")
        .unwrap_or_else(|| PathBuf::from("/"))
        .join(".local/share/kiln")
}

/// The effective uid, from `/proc/self/status` (no unsafe `geteuid` needed).
pub fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_euid(&status)
}

/// The second field of the `Uid:` line (real, effective, saved, fs).
fn parse_euid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Creates `dir` (mode 0755 for every directory created, regardless of umask) and checks
/// that it and every ancestor is traversable by other users. Returns the absolute path.
pub fn ensure_traversable_dir(dir: &Path) -> Result<PathBuf> {
    let abs = absolute(dir)?;
    let mut cur = PathBuf::new();
    for comp in abs.components() {
        cur.push(comp);
        if matches!(comp, Component::RootDir) {
            continue;
        }
        match std::fs::metadata(&cur) {
            Ok(meta) => check_traversable(&cur, meta.permissions().mode())?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_0755(&cur)?,
            Err(e) => {
                return Err(EnvError::Io {
                    op: "stat",
                    path: cur,
                    source: e,
                })
            }
        }
    }
    Ok(abs)
}

fn create_0755(dir: &Path) -> Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(EnvError::io("chmod", dir)),
        // Another setup created it in between: fine, but it must be traversable too.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mode = std::fs::metadata(dir)
                .map_err(EnvError::io("stat", dir))?
                .permissions()
                .mode();
            check_traversable(dir, mode)
        }
        Err(e) => Err(EnvError::Io {
            op: "create directory",
            path: dir.into(),
            source: e,
        }),
    }
}

/// Errors unless `mode` lets others search (o+x) the directory at `path`.
pub fn check_traversable(path: &Path, mode: u32) -> Result<()> {
    if mode & 0o001 == 0 {
        return Err(EnvError::DataDirNotTraversable {
            path: path.into(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

fn absolute(dir: &Path) -> Result<PathBuf> {
    std::path::absolute(dir).map_err(EnvError::io("resolve", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_euid_from_status() {
        let status = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t1\t1\t1\t1\n";
        assert_eq!(parse_euid(status), Some(0));
        assert!(effective_uid().is_some());
    }

    #[test]
    fn creates_0755_and_rejects_closed_ancestors() {
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = t.path().join("a/b/c");
        let abs = ensure_traversable_dir(&dir).unwrap();
        assert_eq!(abs, dir);
        for d in [t.path().join("a"), t.path().join("a/b"), dir.clone()] {
            assert_eq!(
                std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
                0o755
            );
        }

        std::fs::set_permissions(t.path().join("a"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        match ensure_traversable_dir(&dir).unwrap_err() {
            EnvError::DataDirNotTraversable { path, mode } => {
                assert_eq!(path, t.path().join("a"));
                assert_eq!(mode, 0o750);
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn kiln_data_dir_wins() {
        // Only reads the variable if set by the harness; the logic is checked directly.
        if std::env::var_os("KILN_DATA_DIR").is_none() {
            let d = default_data_dir();
            assert!(d.ends_with("kiln"), "{}", d.display());
        }
    }
}
