//! Which cgroup version the host runs and where each controller is mounted,
//! read from `/proc/self/mountinfo`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{CgroupError, CgroupFs, Version};

/// Controllers kiln needs on v1, each its own hierarchy (or shared, as in
/// `cpu,cpuacct`).
const V1_REQUIRED: [&str; 5] = ["memory", "pids", "cpu", "cpuacct", "freezer"];
/// Controllers kiln needs on v2.
pub(crate) const V2_REQUIRED: [&str; 3] = ["memory", "pids", "cpu"];

/// Where each v1 controller kiln uses is mounted. `cpu` and `cpuacct` are the
/// same directory when mounted together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Mounts {
    pub memory: PathBuf,
    pub pids: PathBuf,
    pub cpu: PathBuf,
    pub cpuacct: PathBuf,
    pub freezer: PathBuf,
}

/// The host's cgroup layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    V1(V1Mounts),
    /// The unified hierarchy mounted at `root`.
    V2 {
        root: PathBuf,
    },
}

/// One cgroup's directory in each controller kiln uses (on v2 all the same).
#[derive(Debug, Clone)]
pub(crate) struct Dirs {
    pub memory: PathBuf,
    pub pids: PathBuf,
    pub cpu: PathBuf,
    pub cpuacct: PathBuf,
    /// v1 only.
    pub freezer: Option<PathBuf>,
}

impl Dirs {
    /// Each distinct directory once, in a fixed order (memory first).
    pub fn unique(&self) -> Vec<&Path> {
        let all = [
            Some(&self.memory),
            Some(&self.pids),
            Some(&self.cpu),
            Some(&self.cpuacct),
            self.freezer.as_ref(),
        ];
        let mut out: Vec<&Path> = Vec::new();
        for dir in all.into_iter().flatten() {
            if !out.contains(&dir.as_path()) {
                out.push(dir);
            }
        }
        out
    }
}

impl Layout {
    /// Reads `/proc/self/mountinfo` and checks the controllers kiln needs.
    pub fn detect(fs: &dyn CgroupFs) -> Result<Layout, CgroupError> {
        let path = Path::new("/proc/self/mountinfo");
        let text = fs.read(path).map_err(|source| CgroupError::MountInfo {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_mountinfo(fs, &text)
    }

    /// v2 when a cgroup2 mount lists `memory` in its `cgroup.controllers`
    /// (a unified host); else v1 when any v1 hierarchy is mounted (a hybrid
    /// host's unified mount is empty and ignored); else v2 if mounted at all.
    pub fn from_mountinfo(fs: &dyn CgroupFs, mountinfo: &str) -> Result<Layout, CgroupError> {
        let mounts = parse_mountinfo(mountinfo);
        let unified = mounts.iter().find(|m| m.fstype == "cgroup2");
        let v1: Vec<&Mount> = mounts.iter().filter(|m| m.fstype == "cgroup").collect();
        if let Some(m) = unified {
            let controllers = fs
                .read(&m.point.join("cgroup.controllers"))
                .unwrap_or_default();
            if controllers.split_whitespace().any(|c| c == "memory") || v1.is_empty() {
                return v2_layout(fs, &m.point);
            }
        }
        if v1.is_empty() {
            return Err(CgroupError::NoCgroupFs);
        }
        v1_layout(&v1)
    }

    pub fn version(&self) -> Version {
        match self {
            Layout::V1(_) => Version::V1,
            Layout::V2 { .. } => Version::V2,
        }
    }

    /// The directories of the cgroup at `rel` (relative to each mount).
    pub(crate) fn dirs(&self, rel: &Path) -> Dirs {
        match self {
            Layout::V1(m) => Dirs {
                memory: m.memory.join(rel),
                pids: m.pids.join(rel),
                cpu: m.cpu.join(rel),
                cpuacct: m.cpuacct.join(rel),
                freezer: Some(m.freezer.join(rel)),
            },
            Layout::V2 { root } => {
                let dir = root.join(rel);
                Dirs {
                    memory: dir.clone(),
                    pids: dir.clone(),
                    cpu: dir.clone(),
                    cpuacct: dir,
                    freezer: None,
                }
            }
        }
    }
}

fn v1_layout(mounts: &[&Mount]) -> Result<Layout, CgroupError> {
    let mut found: BTreeMap<&str, PathBuf> = BTreeMap::new();
    for m in mounts {
        for opt in m.super_opts.split(',') {
            if let Some(name) = V1_REQUIRED.iter().find(|c| **c == opt) {
                found.entry(name).or_insert_with(|| m.point.clone());
            }
        }
    }
    let missing: Vec<&'static str> = V1_REQUIRED
        .into_iter()
        .filter(|c| !found.contains_key(c))
        .collect();
    if !missing.is_empty() {
        let hint = format!(
            "mount each, e.g. `mkdir -p /sys/fs/cgroup/{0} && mount -t cgroup -o {0} cgroup /sys/fs/cgroup/{0}` as root, or boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1)",
            missing[0]
        );
        return Err(CgroupError::ControllersMissing {
            version: Version::V1,
            missing,
            hint,
        });
    }
    let mut take = |c: &str| found.remove(c).unwrap_or_default();
    Ok(Layout::V1(V1Mounts {
        memory: take("memory"),
        pids: take("pids"),
        cpu: take("cpu"),
        cpuacct: take("cpuacct"),
        freezer: take("freezer"),
    }))
}

fn v2_layout(fs: &dyn CgroupFs, root: &Path) -> Result<Layout, CgroupError> {
    let path = root.join("cgroup.controllers");
    let text = fs
        .read(&path)
        .map_err(|e| CgroupError::read(path.clone(), e))?;
    let missing = missing_controllers(&text);
    if !missing.is_empty() {
        return Err(CgroupError::ControllersMissing {
            version: Version::V2,
            missing,
            hint: format!(
                "{} does not offer them: the kernel lacks them or a v1 hierarchy holds them (unmount it, or boot with systemd.unified_cgroup_hierarchy=1)",
                path.display()
            ),
        });
    }
    Ok(Layout::V2 {
        root: root.to_path_buf(),
    })
}

/// The v2 controllers kiln needs that a `cgroup.controllers` or
/// `cgroup.subtree_control` text does not list.
pub(crate) fn missing_controllers(listed: &str) -> Vec<&'static str> {
    V2_REQUIRED
        .into_iter()
        .filter(|c| !listed.split_whitespace().any(|l| l == *c))
        .collect()
}

/// One line of mountinfo, the fields kiln needs.
#[derive(Debug)]
struct Mount {
    point: PathBuf,
    fstype: String,
    super_opts: String,
}

/// Parses `/proc/self/mountinfo` (proc(5)): field 5 is the mount point,
/// after the ` - ` separator come fstype, source, super options.
fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(Mount {
                point: PathBuf::from(unescape(fields.get(4)?)),
                fstype: fields.get(sep + 1)?.to_string(),
                super_opts: fields.get(sep + 3)?.to_string(),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\134` for `\`).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape(r"/a\040b\134c"), r"/a b\c");
        assert_eq!(unescape(r"/plain\0"), r"/plain\0");
    }

    #[test]
    fn parses_optional_fields() {
        let text = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw shared:9 master:2 - cgroup cgroup rw,cpu,cpuacct\n";
        let m = parse_mountinfo(text);
        assert_eq!(m[0].point, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(m[0].fstype, "cgroup");
        assert_eq!(m[0].super_opts, "rw,cpu,cpuacct");
    }
}
