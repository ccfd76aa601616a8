//! Resource limits: one struct for defaults and ceilings alike.

use crate::PolicyError;
use serde::{Deserialize, Serialize};

/// Every resource a sandbox can exhaust, with kiln's default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock time for one execution, in milliseconds.
    pub wall_ms: u64,
    /// After the interrupt at `wall_ms`, how long before the kill.
    pub grace_ms: u64,
    /// CPU time (all processes of the sandbox) for one execution, in ms.
    pub cpu_ms: u64,
    /// CPU bandwidth, in thousandths of a core.
    pub cpu_millicores: u64,
    /// Memory (RSS + page cache + tmpfs), swap capped to zero. MiB.
    pub memory_mib: u64,
    /// Processes and threads.
    pub pids: u64,
    /// Size of the writable `/work` tmpfs. MiB.
    pub disk_mib: u64,
    /// Size of the writable `/tmp` tmpfs. MiB.
    pub tmp_mib: u64,
    /// Inodes in each writable tmpfs.
    pub inodes: u64,
    /// Open files per process (RLIMIT_NOFILE).
    pub open_files: u64,
    /// Largest file a process may write (RLIMIT_FSIZE). MiB.
    pub file_size_mib: u64,
    /// Bytes kept of each of stdout and stderr; the rest is cut with a marker.
    pub output_bytes: u64,
    /// Artifacts (files under `/work/out`, displays) per execution.
    pub artifact_count: u64,
    /// Total bytes of artifacts per execution.
    pub artifact_bytes: u64,
    /// Largest accepted piece of code, in bytes.
    pub code_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            wall_ms: 30_000,
            grace_ms: 2_000,
            cpu_ms: 60_000,
            cpu_millicores: 1_000,
            memory_mib: 512,
            pids: 64,
            disk_mib: 256,
            tmp_mib: 64,
            inodes: 16_384,
            open_files: 256,
            file_size_mib: 256,
            output_bytes: 1 << 20,
            artifact_count: 32,
            artifact_bytes: 16 << 20,
            code_bytes: 100 << 10,
        }
    }
}

impl Limits {
    /// The hard ceilings kiln ships with: generous for data work, still far
    /// from what would let one sandbox hurt the host.
    pub fn ceilings() -> Self {
        Self {
            wall_ms: 600_000,
            grace_ms: 30_000,
            cpu_ms: 1_200_000,
            cpu_millicores: 4_000,
            memory_mib: 8_192,
            pids: 1_024,
            disk_mib: 8_192,
            tmp_mib: 2_048,
            inodes: 1_000_000,
            open_files: 4_096,
            file_size_mib: 8_192,
            output_bytes: 64 << 20,
            artifact_count: 256,
            artifact_bytes: 256 << 20,
            code_bytes: 1 << 20,
        }
    }
}

/// A `[limits]` or `[ceilings]` table as written: every key optional, unknown
/// keys rejected. Missing keys keep the base they are applied to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialLimits {
    pub wall_ms: Option<u64>,
    pub grace_ms: Option<u64>,
    pub cpu_ms: Option<u64>,
    pub cpu_millicores: Option<u64>,
    pub memory_mib: Option<u64>,
    pub pids: Option<u64>,
    pub disk_mib: Option<u64>,
    pub tmp_mib: Option<u64>,
    pub inodes: Option<u64>,
    pub open_files: Option<u64>,
    pub file_size_mib: Option<u64>,
    pub output_bytes: Option<u64>,
    pub artifact_count: Option<u64>,
    pub artifact_bytes: Option<u64>,
    pub code_bytes: Option<u64>,
}

impl PartialLimits {
    /// `base` with every key this table sets replaced.
    pub fn over(&self, base: Limits) -> Limits {
        Limits {
            wall_ms: self.wall_ms.unwrap_or(base.wall_ms),
            grace_ms: self.grace_ms.unwrap_or(base.grace_ms),
            cpu_ms: self.cpu_ms.unwrap_or(base.cpu_ms),
            cpu_millicores: self.cpu_millicores.unwrap_or(base.cpu_millicores),
            memory_mib: self.memory_mib.unwrap_or(base.memory_mib),
            pids: self.pids.unwrap_or(base.pids),
            disk_mib: self.disk_mib.unwrap_or(base.disk_mib),
            tmp_mib: self.tmp_mib.unwrap_or(base.tmp_mib),
            inodes: self.inodes.unwrap_or(base.inodes),
            open_files: self.open_files.unwrap_or(base.open_files),
            file_size_mib: self.file_size_mib.unwrap_or(base.file_size_mib),
            output_bytes: self.output_bytes.unwrap_or(base.output_bytes),
            artifact_count: self.artifact_count.unwrap_or(base.artifact_count),
            artifact_bytes: self.artifact_bytes.unwrap_or(base.artifact_bytes),
            code_bytes: self.code_bytes.unwrap_or(base.code_bytes),
        }
    }
}

/// What a single request may ask for; `None` keeps the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitRequest {
    pub wall_ms: Option<u64>,
    pub cpu_ms: Option<u64>,
    pub memory_mib: Option<u64>,
    pub pids: Option<u64>,
    pub disk_mib: Option<u64>,
    pub output_bytes: Option<u64>,
}

impl Limits {
    /// A name and value for each limit, in declaration order.
    pub fn fields(&self) -> [(&'static str, u64); 15] {
        [
            ("wall_ms", self.wall_ms),
            ("grace_ms", self.grace_ms),
            ("cpu_ms", self.cpu_ms),
            ("cpu_millicores", self.cpu_millicores),
            ("memory_mib", self.memory_mib),
            ("pids", self.pids),
            ("disk_mib", self.disk_mib),
            ("tmp_mib", self.tmp_mib),
            ("inodes", self.inodes),
            ("open_files", self.open_files),
            ("file_size_mib", self.file_size_mib),
            ("output_bytes", self.output_bytes),
            ("artifact_count", self.artifact_count),
            ("artifact_bytes", self.artifact_bytes),
            ("code_bytes", self.code_bytes),
        ]
    }

    pub(crate) fn validate(&self) -> Result<(), PolicyError> {
        for (name, value) in self.fields() {
            let allow_zero = matches!(name, "grace_ms");
            if value == 0 && !allow_zero {
                return Err(PolicyError::InvalidLimit {
                    name,
                    reason: "must be greater than zero".into(),
                });
            }
        }
        if self.memory_mib < 16 {
            return Err(PolicyError::InvalidLimit {
                name: "memory_mib",
                reason: "below 16 MiB not even the interpreter starts".into(),
            });
        }
        if self.pids < 4 {
            return Err(PolicyError::InvalidLimit {
                name: "pids",
                reason: "the runner itself needs a few".into(),
            });
        }
        if self.open_files < 32 {
            return Err(PolicyError::InvalidLimit {
                name: "open_files",
                reason: "the interpreter needs at least 32".into(),
            });
        }
        Ok(())
    }

    pub(crate) fn check_within(&self, ceilings: &Limits) -> Result<(), PolicyError> {
        for ((name, requested), (_, ceiling)) in self.fields().into_iter().zip(ceilings.fields()) {
            if requested > ceiling {
                return Err(PolicyError::AboveCeiling {
                    name,
                    requested,
                    ceiling,
                });
            }
        }
        Ok(())
    }

    /// These limits with a request's overrides applied.
    pub fn with(&self, r: &LimitRequest) -> Limits {
        Limits {
            wall_ms: r.wall_ms.unwrap_or(self.wall_ms),
            cpu_ms: r.cpu_ms.unwrap_or(self.cpu_ms),
            memory_mib: r.memory_mib.unwrap_or(self.memory_mib),
            pids: r.pids.unwrap_or(self.pids),
            disk_mib: r.disk_mib.unwrap_or(self.disk_mib),
            output_bytes: r.output_bytes.unwrap_or(self.output_bytes),
            ..self.clone()
        }
    }
}
