//! The tree's minimal `/etc`: written from scratch, nothing copied from the host.

use std::path::Path;

use crate::error::{EnvError, Result};
use crate::fsutil::mkdir_p;
use crate::layout::{in_tree, LD_SO_CONF_DIRS};

/// The uid/gid of the `sandbox` account. Sandboxes run as per-sandbox uids from the
/// policy's range; this entry only gives tools that look up a name something to find.
pub const SANDBOX_UID: u32 = 65534;

/// `(file name, contents)` of every file in the tree's `/etc`.
pub fn files() -> Vec<(&'static str, String)> {
    vec![
        (
            "passwd",
            format!(
                "root:x:0:0:root:/root:/usr/sbin/nologin\n\
                 sandbox:x:{SANDBOX_UID}:{SANDBOX_UID}:kiln sandbox:/work:/usr/sbin/nologin\n"
            ),
        ),
        ("group", format!("root:x:0:\nsandbox:x:{SANDBOX_UID}:\n")),
        ("hosts", "127.0.0.1 localhost\n::1 localhost\n".to_string()),
        (
            "nsswitch.conf",
            "passwd: files\ngroup: files\nshadow: files\nhosts: files\nnetworks: files\n\
             protocols: files\nservices: files\n"
                .to_string(),
        ),
        (
            "ld.so.conf",
            LD_SO_CONF_DIRS.iter().map(|d| format!("{d}\n")).collect(),
        ),
    ]
}

/// Writes [`files`] into `<root>/etc`.
pub fn write(root: &Path) -> Result<()> {
    let etc = in_tree(root, "/etc");
    mkdir_p(&etc)?;
    for (name, contents) in files() {
        let path = etc.join(name);
        std::fs::write(&path, contents).map_err(EnvError::io("write", &path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etc_is_minimal_and_well_formed() {
        let t = tempfile::tempdir().unwrap();
        write(t.path()).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(t.path().join("etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["group", "hosts", "ld.so.conf", "nsswitch.conf", "passwd"]
        );
        let passwd = std::fs::read_to_string(t.path().join("etc/passwd")).unwrap();
        for line in passwd.lines() {
            assert_eq!(line.split(':').count(), 7, "{line}");
        }
        assert!(passwd.contains("\nsandbox:x:65534:"));
    }
}
