//! Small filesystem helpers whose errors carry the path they failed on.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use crate::error::{EnvError, Result};

/// Creates `dir` and its missing parents with mode 0755.
pub fn mkdir_p(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(EnvError::io("create directory", dir))
}

/// Copies the file `src` (symlinks followed) to `dst`, creating `dst`'s parents.
pub fn copy_file(src: &Path, dst: &Path) -> Result<()> {
    if let Some(parent) = dst.parent() {
        mkdir_p(parent)?;
    }
    fs::copy(src, dst).map_err(EnvError::io("copy", src))?;
    Ok(())
}

/// Recursively copies `src` into `dst`, following symlinks, skipping every entry for
/// which `skip(relative_path, is_dir)` is true. Returns the number of files copied.
pub fn copy_tree(src: &Path, dst: &Path, skip: &dyn Fn(&Path, bool) -> bool) -> Result<usize> {
    copy_tree_rel(src, dst, Path::new(""), skip)
}

fn copy_tree_rel(
    src: &Path,
    dst: &Path,
    rel: &Path,
    skip: &dyn Fn(&Path, bool) -> bool,
) -> Result<usize> {
    let from = src.join(rel);
    mkdir_p(&dst.join(rel))?;
    let mut entries: Vec<_> = fs::read_dir(&from)
        .map_err(EnvError::io("read directory", &from))?
        .collect::<Result<_, _>>()
        .map_err(EnvError::io("read directory", &from))?;
    entries.sort_by_key(fs::DirEntry::file_name);
    let mut copied = 0;
    for entry in entries {
        let child = rel.join(entry.file_name());
        let meta = fs::metadata(entry.path()).map_err(EnvError::io("stat", entry.path()))?;
        if skip(&child, meta.is_dir()) {
            continue;
        }
        if meta.is_dir() {
            copied += copy_tree_rel(src, dst, &child, skip)?;
        } else if meta.is_file() {
            fs::copy(entry.path(), dst.join(&child)).map_err(EnvError::io("copy", entry.path()))?;
            copied += 1;
        }
    }
    Ok(copied)
}

/// Writes `contents` to `path` atomically: a temporary file in the same directory,
/// fsynced, given `mode`, then renamed over `path`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(EnvError::io("create temporary file in", dir))?;
    tmp.write_all(contents)
        .map_err(EnvError::io("write", tmp.path()))?;
    tmp.as_file()
        .sync_all()
        .map_err(EnvError::io("sync", tmp.path()))?;
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode))
        .map_err(EnvError::io("chmod", tmp.path()))?;
    tmp.persist(path).map_err(|e| EnvError::Io {
        op: "rename into place",
        path: path.into(),
        source: e.error,
    })?;
    Ok(())
}

/// Makes everything under `root` (and `root` itself) world-readable and strips
/// setuid/setgid/sticky bits: directories 0755, executables 0755, other files 0644.
/// Symlinks are left alone.
pub fn normalize_permissions(root: &Path) -> Result<usize> {
    let meta = fs::symlink_metadata(root).map_err(EnvError::io("stat", root))?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        return Ok(0);
    }
    let mode = if ft.is_dir() || meta.permissions().mode() & 0o111 != 0 {
        0o755
    } else {
        0o644
    };
    if meta.permissions().mode() & 0o7777 != mode {
        fs::set_permissions(root, fs::Permissions::from_mode(mode))
            .map_err(EnvError::io("chmod", root))?;
    }
    let mut n = 1;
    if ft.is_dir() {
        for entry in fs::read_dir(root).map_err(EnvError::io("read directory", root))? {
            let entry = entry.map_err(EnvError::io("read directory", root))?;
            n += normalize_permissions(&entry.path())?;
        }
    }
    Ok(n)
}

/// Whether `path` starts with the ELF magic.
pub fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// Every regular file below `root` for which `keep` is true (symlinks not followed).
pub fn walk_files(root: &Path, keep: &dyn Fn(&Path) -> bool) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(EnvError::io("read directory", &dir))? {
            let entry = entry.map_err(EnvError::io("read directory", &dir))?;
            let ft = entry
                .file_type()
                .map_err(EnvError::io("stat", entry.path()))?;
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() && keep(&entry.path()) {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn normalize_strips_setuid_and_opens_up_modes() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        mkdir_p(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
        let exe = d.join("exe");
        fs::write(&exe, "x").unwrap();
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o4750)).unwrap();
        let data = d.join("data");
        fs::write(&data, "x").unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o600)).unwrap();
        normalize_permissions(t.path()).unwrap();
        assert_eq!(fs::metadata(&d).unwrap().mode() & 0o7777, 0o755);
        assert_eq!(fs::metadata(&exe).unwrap().mode() & 0o7777, 0o755);
        assert_eq!(fs::metadata(&data).unwrap().mode() & 0o7777, 0o644);
    }

    #[test]
    fn copy_tree_skips_and_write_atomic_replaces() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        mkdir_p(&src.join("keep/sub")).unwrap();
        mkdir_p(&src.join("test")).unwrap();
        fs::write(src.join("keep/sub/a.py"), "a").unwrap();
        fs::write(src.join("test/t.py"), "t").unwrap();
        let dst = t.path().join("dst");
        let n = copy_tree(&src, &dst, &|rel, _| rel == Path::new("test")).unwrap();
        assert_eq!(n, 1);
        assert!(dst.join("keep/sub/a.py").is_file());
        assert!(!dst.join("test").exists());

        let f = dst.join("f");
        write_atomic(&f, b"one", 0o644).unwrap();
        write_atomic(&f, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&f).unwrap(), b"two");
        assert_eq!(
            fs::read_dir(&dst).unwrap().count(),
            2,
            "no temp file left behind"
        );
    }
}
