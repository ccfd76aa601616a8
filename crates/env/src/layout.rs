//! The fixed layout of a runtime tree (the sandbox mounts it; do not change lightly).
//!
//! Paths are given as they appear inside the sandbox, where the tree root is `/`;
//! [`in_tree`] turns one into a host path below a tree root.

use std::path::{Path, PathBuf};

/// The interpreter binary.
pub const INTERPRETER: &str = "/usr/local/bin/python3";
/// A symlink to [`INTERPRETER`].
pub const INTERPRETER_VERSIONED: &str = "/usr/local/bin/python3.11";
/// The standard library (with `lib-dynload`).
pub const STDLIB: &str = "/usr/local/lib/python3.11";
/// Where a shared `libpython` goes.
pub const LIBDIR: &str = "/usr/local/lib";
/// The locked libraries.
pub const SITE_PACKAGES: &str = "/opt/kiln/site-packages";
/// The in-sandbox driver.
pub const RUNNER: &str = kiln_runner::RUNNER_PATH;
/// matplotlib's prebuilt font cache (`fontlist-v*.json`).
pub const MPL_CACHE: &str = "/opt/kiln/mpl";
/// The manifest, at the tree root.
pub const MANIFEST: &str = "/kiln-runtime.json";
/// The only top-level directories a tree has.
pub const TOP_LEVEL: [&str; 5] = ["usr", "lib", "lib64", "opt", "etc"];
/// Library directories listed in the tree's `etc/ld.so.conf`.
pub const LD_SO_CONF_DIRS: [&str; 5] = [
    "/usr/local/lib",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib",
];

/// The host path of the in-sandbox absolute path `abs` in the tree at `root`.
pub fn in_tree(root: &Path, abs: impl AsRef<Path>) -> PathBuf {
    let abs = abs.as_ref();
    root.join(abs.strip_prefix("/").unwrap_or(abs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_tree_joins_below_root() {
        assert_eq!(
            in_tree(Path::new("/t"), INTERPRETER),
            PathBuf::from("/t/usr/local/bin/python3")
        );
        assert_eq!(
            in_tree(Path::new("/t"), "lib64/x"),
            PathBuf::from("/t/lib64/x")
        );
        assert!(RUNNER.starts_with("/opt/kiln/"));
    }
}
