//! Memory of a live sandbox: USS and PSS of its processes (from
//! `/proc/<pid>/smaps_rollup`), found through its cgroup, and the cgroup's
//! own memory charge beside them.

use anyhow::{Context, Result};
use kiln_native::cgroup::{CgroupManager, Version};
use kiln_policy::Config;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize)]
pub struct Sample {
    pub uss_mib: f64,
    pub pss_mib: f64,
    pub cgroup_mib: f64,
    pub processes: usize,
}

/// Where sandbox cgroups live (memory controller; on v2 the only one).
pub struct Cgroups {
    parent: PathBuf,
    version: Version,
}

impl Cgroups {
    pub fn detect(config: &Config) -> Result<Self> {
        let m = CgroupManager::detect(&config.sandbox).context("cannot find the cgroups")?;
        Ok(Self {
            parent: m.parent_path(),
            version: m.version(),
        })
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Memory of the sandbox whose session id (= cgroup name) is `id`.
    pub fn sample(&self, id: &str) -> Result<Sample> {
        let dir = self.parent.join(id);
        let procs = std::fs::read_to_string(dir.join("cgroup.procs"))
            .with_context(|| format!("cannot read {}/cgroup.procs", dir.display()))?;
        let mut s = Sample::default();
        for pid in procs.split_whitespace() {
            let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
                .with_context(|| format!("cannot read /proc/{pid}/smaps_rollup"))?;
            let (uss, pss) = parse_rollup(&rollup);
            s.uss_mib += uss;
            s.pss_mib += pss;
            s.processes += 1;
        }
        let charge = match self.version {
            Version::V1 => "memory.usage_in_bytes",
            Version::V2 => "memory.current",
        };
        let bytes: f64 = std::fs::read_to_string(dir.join(charge))
            .with_context(|| format!("cannot read {}/{charge}", dir.display()))?
            .trim()
            .parse()
            .unwrap_or(f64::NAN);
        s.cgroup_mib = bytes / 1048576.0;
        Ok(s)
    }
}

/// (USS, PSS) in MiB: USS = private clean + private dirty pages.
fn parse_rollup(text: &str) -> (f64, f64) {
    let (mut uss_kb, mut pss_kb) = (0u64, 0u64);
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let kb: u64 = value.parse().unwrap_or(0);
        match key {
            "Pss:" => pss_kb += kb,
            "Private_Clean:" | "Private_Dirty:" => uss_kb += kb,
            _ => {}
        }
    }
    (uss_kb as f64 / 1024.0, pss_kb as f64 / 1024.0)
}

/// The element-wise median of several samples.
pub fn median(samples: &[Sample]) -> Sample {
    let m =
        |f: fn(&Sample) -> f64| super::stats::median(&samples.iter().map(f).collect::<Vec<_>>());
    Sample {
        uss_mib: m(|s| s.uss_mib),
        pss_mib: m(|s| s.pss_mib),
        cgroup_mib: m(|s| s.cgroup_mib),
        processes: samples.iter().map(|s| s.processes).max().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rollup() {
        let text = "00400000-7fff [rollup]\nRss: 9000 kB\nPss: 3072 kB\nPss_Anon: 1 kB\nShared_Clean: 5000 kB\nPrivate_Clean: 1024 kB\nPrivate_Dirty: 1024 kB\n";
        let (uss, pss) = super::parse_rollup(text);
        assert_eq!(uss, 2.0);
        assert_eq!(pss, 3.0);
    }
}
