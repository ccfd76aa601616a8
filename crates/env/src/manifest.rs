//! `kiln-runtime.json`: what a runtime tree is and how a sandbox must run it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{EnvError, Result};
use crate::fsutil::write_atomic;
use crate::layout;

/// The manifest format this crate writes and understands.
pub const FORMAT: u32 = 1;

/// The manifest at the root of every runtime tree. Paths are in-sandbox paths (the tree
/// root is `/`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version ([`FORMAT`]).
    pub format: u32,
    /// Environment name (`default`).
    pub name: String,
    /// sha256 of the lock file the tree was built from.
    pub lock_sha256: String,
    /// sha256 of the runner source at `runner`.
    pub runner_sha256: String,
    /// The interpreter's full version, e.g. `3.11.7`.
    pub python_version: String,
    /// The interpreter to execute (`/usr/local/bin/python3`).
    pub interpreter: String,
    /// The locked libraries; add with `site.addsitedir` (Python runs with `-I`).
    pub site_packages: String,
    /// The in-sandbox driver.
    pub runner: String,
    /// Directory holding matplotlib's prebuilt `fontlist-v*.json`; copy it into the
    /// sandbox's writable `MPLCONFIGDIR`.
    pub mpl_cache: String,
    /// Extra environment variables the sandbox must set.
    pub env: BTreeMap<String, String>,
    /// The tree's top-level directories (bind each into the sandbox root).
    pub top_level: Vec<String>,
    /// When the tree was built (seconds since the epoch).
    pub created_unix: u64,
}

impl Manifest {
    /// A manifest with the fixed layout's paths.
    pub fn new(
        name: &str,
        lock_sha256: String,
        runner_sha256: String,
        python_version: String,
        env: BTreeMap<String, String>,
    ) -> Self {
        Manifest {
            format: FORMAT,
            name: name.to_string(),
            lock_sha256,
            runner_sha256,
            python_version,
            interpreter: layout::INTERPRETER.to_string(),
            site_packages: layout::SITE_PACKAGES.to_string(),
            runner: layout::RUNNER.to_string(),
            mpl_cache: layout::MPL_CACHE.to_string(),
            env,
            top_level: layout::TOP_LEVEL.iter().map(|s| s.to_string()).collect(),
            created_unix: now_unix(),
        }
    }

    /// Reads the manifest of the tree at `root`.
    pub fn read(root: &Path) -> Result<Self> {
        let path = layout::in_tree(root, layout::MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(EnvError::io("read", &path))?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| EnvError::BadManifest {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if m.format != FORMAT {
            return Err(EnvError::BadManifest {
                path,
                reason: format!("format {} (expected {FORMAT})", m.format),
            });
        }
        Ok(m)
    }

    /// Writes the manifest into the tree at `root` atomically.
    pub fn write(&self, root: &Path) -> Result<()> {
        let mut json = serde_json::to_string_pretty(self).expect("manifest serialises");
        json.push('\n');
        write_atomic(
            &layout::in_tree(root, layout::MANIFEST),
            json.as_bytes(),
            0o644,
        )
    }
}

/// Seconds since the epoch.
fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let env = BTreeMap::from([("LD_LIBRARY_PATH".to_string(), "/usr/local/lib".to_string())]);
        Manifest::new(
            "default",
            "aa".repeat(32),
            "bb".repeat(32),
            "3.11.7".into(),
            env,
        )
    }

    #[test]
    fn round_trips_through_the_tree() {
        let t = tempfile::tempdir().unwrap();
        let m = sample();
        m.write(t.path()).unwrap();
        assert_eq!(Manifest::read(t.path()).unwrap(), m);
    }

    #[test]
    fn has_the_contract_fields() {
        let v: serde_json::Value = serde_json::to_value(sample()).unwrap();
        assert_eq!(v["format"], 1);
        assert_eq!(v["interpreter"], "/usr/local/bin/python3");
        assert_eq!(v["site_packages"], "/opt/kiln/site-packages");
        assert_eq!(v["runner"], "/opt/kiln/runner.py");
        assert_eq!(v["mpl_cache"], "/opt/kiln/mpl");
        assert_eq!(
            v["top_level"],
            serde_json::json!(["usr", "lib", "lib64", "opt", "etc"])
        );
        assert!(v["created_unix"].as_u64().unwrap() > 1_600_000_000);
    }

    #[test]
    fn rejects_garbage_and_other_formats() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("kiln-runtime.json"), "{").unwrap();
        assert!(matches!(
            Manifest::read(t.path()),
            Err(EnvError::BadManifest { .. })
        ));
        let mut m = sample();
        m.format = 2;
        m.write(t.path()).unwrap();
        assert!(matches!(
            Manifest::read(t.path()),
            Err(EnvError::BadManifest { .. })
        ));
    }
}
