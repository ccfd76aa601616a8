//! The lock file: its identity (hashes, the runtime directory name) and a package count.

use sha2::{Digest, Sha256};

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The runtime's identity: the first 16 hex digits of sha256(lock file + python version).
///
/// Two setups with the same lock and the same interpreter version share one tree.
pub fn runtime_id(lock: &str, python_version: &str) -> String {
    let mut h = Sha256::new();
    h.update(lock.as_bytes());
    h.update(python_version.as_bytes());
    hex::encode(h.finalize())[..16].to_string()
}

/// The directory name of a runtime: `default-<id>`.
pub fn runtime_dir_name(name: &str, lock: &str, python_version: &str) -> String {
    format!("{name}-{}", runtime_id(lock, python_version))
}

/// The pinned `name==version` requirements of a lock file, in order.
pub fn pinned_packages(lock: &str) -> Vec<(String, String)> {
    lock.lines()
        .filter(|l| !l.starts_with(char::is_whitespace) && !l.starts_with('#'))
        .filter_map(|l| {
            let spec = l.split([' ', ';', '\\']).next()?.trim();
            let (name, version) = spec.split_once("==")?;
            Some((name.to_string(), version.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_lock_pins_the_ds1000_set_with_hashes() {
        let pins = pinned_packages(crate::DEFAULT_LOCK);
        for want in [
            ("numpy", "1.26.4"),
            ("pandas", "1.5.3"),
            ("matplotlib", "3.8.4"),
            ("scipy", "1.12.0"),
            ("seaborn", "0.13.2"),
        ] {
            assert!(
                pins.iter().any(|(n, v)| n == want.0 && v == want.1),
                "{want:?} missing from {pins:?}"
            );
        }
        // Every requirement carries at least one hash (pip's --require-hashes demands it).
        let reqs = crate::DEFAULT_LOCK
            .lines()
            .filter(|l| l.contains("==") && !l.starts_with('#'))
            .count();
        assert_eq!(reqs, pins.len());
        assert!(crate::DEFAULT_LOCK.matches("--hash=sha256:").count() >= pins.len());
    }

    #[test]
    fn runtime_id_depends_on_lock_and_python() {
        let a = runtime_id("x==1\n", "3.11.7");
        assert_eq!(a.len(), 16);
        assert_ne!(a, runtime_id("x==2\n", "3.11.7"));
        assert_ne!(a, runtime_id("x==1\n", "3.11.8"));
        assert_eq!(
            runtime_dir_name("default", "x==1\n", "3.11.7"),
            format!("default-{a}")
        );
    }
}
