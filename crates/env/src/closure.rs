//! The shared-library closure: every library the interpreter, `libpython` and each
//! extension module load, copied from the host to the same absolute path in the tree.
//!
//! `ldd` reports the transitive set for each object, so one pass suffices. Libraries that
//! wheels bundle (`numpy.libs`, `scipy.libs`, `pillow.libs`) already resolve inside the tree.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{EnvError, Result};
use crate::fsutil::{copy_file, is_elf, walk_files};
use crate::layout::{in_tree, LIBDIR};

/// Objects per `ldd` call.
const BATCH: usize = 64;

/// One dependency line of `ldd` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dep {
    /// Resolved to an absolute path.
    Found {
        /// The name asked for (the soname, or the loader's path).
        name: String,
        /// Where the loader found it.
        path: PathBuf,
    },
    /// `name => not found`.
    Missing {
        /// The soname that could not be resolved.
        name: String,
    },
}

/// Parses `ldd` output for `objects` (a header line `path:` precedes each object's block
/// when several were given; with one object there is none). Returns (object, dep) pairs.
pub fn parse_ldd(output: &str, objects: &[PathBuf]) -> Vec<(PathBuf, Dep)> {
    let mut current = objects.first().cloned().unwrap_or_default();
    let mut deps = Vec::new();
    for line in output.lines() {
        if !line.starts_with(char::is_whitespace) {
            if let Some(obj) = line.strip_suffix(':') {
                current = PathBuf::from(obj);
            }
            continue;
        }
        if let Some(dep) = parse_dep(line.trim()) {
            deps.push((current.clone(), dep));
        }
    }
    deps
}

/// Parses one indented `ldd` line; `None` for the vDSO and informational lines.
fn parse_dep(line: &str) -> Option<Dep> {
    if let Some((name, rest)) = line.split_once(" => ") {
        let rest = rest.trim();
        if rest.starts_with("not found") {
            return Some(Dep::Missing {
                name: name.trim().to_string(),
            });
        }
        let path = strip_address(rest);
        return path.starts_with('/').then(|| Dep::Found {
            name: name.trim().to_string(),
            path: path.into(),
        });
    }
    // `/lib64/ld-linux-x86-64.so.2 (0x…)`: the loader, named by its path.
    let path = strip_address(line);
    path.starts_with('/').then(|| Dep::Found {
        name: path.to_string(),
        path: path.into(),
    })
}

/// `"/x/libc.so.6 (0x00007f…)"` → `"/x/libc.so.6"`.
fn strip_address(s: &str) -> &str {
    match s.rfind(" (0x") {
        Some(i) => s[..i].trim(),
        None => s.trim(),
    }
}

/// Every ELF object in the tree whose dependencies must be satisfied: the interpreter and
/// every file whose name contains `.so`.
pub fn tree_objects(root: &Path) -> Result<Vec<PathBuf>> {
    let mut objs = vec![in_tree(root, crate::layout::INTERPRETER)];
    let is_so = |p: &Path| {
        p.file_name()
            .and_then(OsStr::to_str)
            .is_some_and(|n| n.contains(".so"))
            && is_elf(p)
    };
    objs.extend(walk_files(root, &is_so)?);
    Ok(objs)
}

/// Runs `ldd` over `objects` in parallel batches, with the tree's `LIBDIR` searched first
/// (so `libpython` resolves to the tree's copy, not the host's RUNPATH).
pub fn ldd_all(root: &Path, objects: &[PathBuf]) -> Result<Vec<(PathBuf, Dep)>> {
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8);
    let chunks: Vec<&[PathBuf]> = objects.chunks(BATCH).collect();
    let libdir = in_tree(root, LIBDIR);
    let results: Vec<Result<Vec<(PathBuf, Dep)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let chunks = &chunks;
                let libdir = &libdir;
                s.spawn(move || {
                    let mut deps = Vec::new();
                    for chunk in chunks.iter().skip(w).step_by(workers) {
                        deps.extend(ldd(libdir, chunk)?);
                    }
                    Ok(deps)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ldd worker panicked"))
            .collect()
    });
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    Ok(all)
}

/// One `ldd` call. Its exit status is ignored (it is non-zero when any argument is not
/// dynamic); what matters is what it printed.
fn ldd(libdir: &Path, objects: &[PathBuf]) -> Result<Vec<(PathBuf, Dep)>> {
    let out = Command::new("ldd")
        .args(objects)
        .env("LD_LIBRARY_PATH", libdir)
        .output()
        .map_err(|e| EnvError::LddMissing {
            reason: e.to_string(),
        })?;
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout), objects))
}

/// The host libraries the tree needs (library path → first object needing it), or the
/// first unresolvable one as [`EnvError::LibraryNotFound`].
///
/// A library bundled by a wheel (`numpy.libs/libgfortran-….so`) may need a sibling
/// (`libquadmath-….so`) that it finds only through the RPATH of the extension module
/// loading it; `ldd` on the library alone says "not found". Such a name counts as
/// resolved if it sits next to the object or if another object resolved it in the tree.
pub fn external_libraries(
    root: &Path,
    deps: &[(PathBuf, Dep)],
) -> Result<BTreeMap<PathBuf, PathBuf>> {
    let in_tree_names: BTreeSet<&str> = deps
        .iter()
        .filter_map(|(_, d)| match d {
            Dep::Found { name, path } if path.starts_with(root) => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let mut libs = BTreeMap::new();
    for (obj, dep) in deps {
        match dep {
            Dep::Missing { name }
                if in_tree_names.contains(name.as_str()) || sibling_exists(obj, name) => {}
            Dep::Missing { name } => {
                return Err(EnvError::LibraryNotFound {
                    object: obj.clone(),
                    library: name.clone(),
                })
            }
            Dep::Found { path, .. } if !path.starts_with(root) && !provided_by_tree(root, path) => {
                libs.entry(path.clone()).or_insert_with(|| obj.clone());
            }
            Dep::Found { .. } => {}
        }
    }
    Ok(libs)
}

/// Whether `name` is a file in `obj`'s directory.
fn sibling_exists(obj: &Path, name: &str) -> bool {
    !name.contains('/') && obj.parent().is_some_and(|d| d.join(name).is_file())
}

/// Whether a library of the same name is already in the tree's `LIBDIR` (libpython).
fn provided_by_tree(root: &Path, lib: &Path) -> bool {
    lib.file_name()
        .is_some_and(|n| in_tree(root, LIBDIR).join(n).is_file())
}

/// Copies each host library to the same absolute path inside the tree (real file
/// contents under the name the loader asked for). Returns how many were copied.
pub fn copy_libraries(root: &Path, libs: &BTreeMap<PathBuf, PathBuf>) -> Result<usize> {
    let mut n = 0;
    for lib in libs.keys() {
        let dst = in_tree(root, lib);
        if !dst.exists() {
            copy_file(lib, &dst)?;
            n += 1;
        }
    }
    Ok(n)
}

/// The whole step: find the objects, resolve them, copy what lies outside the tree.
pub fn install(root: &Path) -> Result<usize> {
    let objects = tree_objects(root)?;
    let deps = ldd_all(root, &objects)?;
    let libs = external_libraries(root, &deps)?;
    tracing::debug!(
        objects = objects.len(),
        libraries = libs.len(),
        "library closure"
    );
    copy_libraries(root, &libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MULTI: &str = "/t/usr/local/bin/python3:
\tlinux-vdso.so.1 (0x00007ffd5a5f2000)
\tlibpython3.11.so.1.0 => /t/usr/local/lib/libpython3.11.so.1.0 (0x00007f1c2a000000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f1c29e1e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f1c2a7a0000)
/t/opt/kiln/site-packages/x.so:
\tlibgfortran.so.5 => /t/opt/kiln/site-packages/numpy.libs/libgfortran-040039e1.so.5.0.0 (0x1)
\tlibfoo.so.1 => not found
/t/opt/kiln/site-packages/y.so:
\tstatically linked
";

    #[test]
    fn parses_multi_object_output() {
        let objs = [
            PathBuf::from("/t/usr/local/bin/python3"),
            PathBuf::from("/t/opt/kiln/site-packages/x.so"),
        ];
        let deps = parse_ldd(MULTI, &objs);
        assert_eq!(deps.len(), 5);
        assert_eq!(
            deps[1],
            (
                objs[0].clone(),
                Dep::Found {
                    name: "libc.so.6".into(),
                    path: "/lib/x86_64-linux-gnu/libc.so.6".into()
                }
            )
        );
        assert_eq!(
            deps[2].1,
            Dep::Found {
                name: "/lib64/ld-linux-x86-64.so.2".into(),
                path: "/lib64/ld-linux-x86-64.so.2".into()
            }
        );
        assert_eq!(
            deps[4],
            (
                objs[1].clone(),
                Dep::Missing {
                    name: "libfoo.so.1".into()
                }
            )
        );
    }

    #[test]
    fn parses_single_object_output_without_header() {
        let out = "\tlinux-vdso.so.1 (0x1)\n\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x2)\n";
        let deps = parse_ldd(out, &[PathBuf::from("/t/a.so")]);
        assert_eq!(deps.len(), 1);
        assert_eq!(deps[0].0, PathBuf::from("/t/a.so"));
    }

    #[test]
    fn external_libraries_skip_tree_and_fail_on_missing() {
        let objs = [
            PathBuf::from("/t/usr/local/bin/python3"),
            PathBuf::from("/t/opt/kiln/site-packages/x.so"),
        ];
        let deps = parse_ldd(MULTI, &objs);
        let err = external_libraries(Path::new("/t"), &deps).unwrap_err();
        match err {
            EnvError::LibraryNotFound { object, library } => {
                assert_eq!(object, objs[1]);
                assert_eq!(library, "libfoo.so.1");
            }
            other => panic!("{other}"),
        }
        let ok: Vec<_> = deps
            .into_iter()
            .filter(|(_, d)| matches!(d, Dep::Found { .. }))
            .collect();
        let libs = external_libraries(Path::new("/t"), &ok).unwrap();
        let keys: Vec<_> = libs.keys().cloned().collect();
        assert_eq!(
            keys,
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn bundled_siblings_resolved_elsewhere_are_not_missing() {
        let tree = tempfile::tempdir().unwrap();
        let libs = tree.path().join("numpy.libs");
        std::fs::create_dir(&libs).unwrap();
        std::fs::write(libs.join("libquadmath-1.so.0"), "").unwrap();
        let gfortran = libs.join("libgfortran-1.so.5");
        let deps = vec![
            (
                gfortran.clone(),
                Dep::Missing {
                    name: "libquadmath-1.so.0".into(),
                },
            ),
            (
                tree.path().join("ext.so"),
                Dep::Found {
                    name: "libopenblas-2.so".into(),
                    path: libs.join("libopenblas-2.so"),
                },
            ),
            (
                gfortran.clone(),
                Dep::Missing {
                    name: "libopenblas-2.so".into(),
                },
            ),
        ];
        assert!(external_libraries(tree.path(), &deps).unwrap().is_empty());
        let deps = vec![(
            gfortran,
            Dep::Missing {
                name: "libreally-missing.so.1".into(),
            },
        )];
        assert!(matches!(
            external_libraries(tree.path(), &deps),
            Err(EnvError::LibraryNotFound { .. })
        ));
    }

    #[test]
    fn copies_real_contents_under_the_requested_name() {
        let host = tempfile::tempdir().unwrap();
        let real = host.path().join("libz.so.1.2.13");
        std::fs::write(&real, b"\x7fELF-ish").unwrap();
        let link = host.path().join("libz.so.1");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let tree = tempfile::tempdir().unwrap();
        let libs = BTreeMap::from([(link.clone(), PathBuf::from("/obj"))]);
        assert_eq!(copy_libraries(tree.path(), &libs).unwrap(), 1);
        let copied = in_tree(tree.path(), &link);
        assert!(std::fs::symlink_metadata(&copied)
            .unwrap()
            .file_type()
            .is_file());
        assert_eq!(std::fs::read(&copied).unwrap(), b"\x7fELF-ish");
    }
}
