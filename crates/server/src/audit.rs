//! The append-only audit log: one JSON line per execution, written by the
//! front end (time, key id, session, SHA-256 of the code, limits asked
//! for, outcome, duration, usage). Lines are written whole, in one
//! `write` to a file opened with `O_APPEND`.

use kiln_core::Usage;
use kiln_policy::LimitRequest;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One execution, as the audit log records it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    /// RFC 3339, UTC, when the execution ended.
    pub time: String,
    pub key: String,
    /// `None` for a one-shot execution.
    pub session: Option<String>,
    pub code_sha256: String,
    /// The limits the request asked for (one-shot executions only).
    pub limits: Option<LimitRequest>,
    /// The result's outcome, or `error:<kind>` when no result came, or
    /// `disconnected` when the client left first.
    pub outcome: String,
    pub duration_ms: u64,
    pub usage: Option<Usage>,
}

pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(file),
        })
    }

    pub fn write(&self, entry: &AuditEntry) {
        let mut line = serde_json::to_vec(entry).expect("an audit entry serializes");
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(error) = file.write_all(&line) {
            tracing::error!(path = %self.path.display(), %error, "cannot write the audit log");
        }
    }
}

pub use kiln_core::time::rfc3339;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn entries_are_appended_as_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "{\"old\":1}\n").unwrap();
        let log = AuditLog::open(&path).unwrap();
        let entry = AuditEntry {
            time: rfc3339(SystemTime::now()),
            key: "k".into(),
            session: None,
            code_sha256: "00".into(),
            limits: None,
            outcome: "ok".into(),
            duration_ms: 3,
            usage: None,
        };
        log.write(&entry);
        log.write(&entry);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let v: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(v["key"], "k");
        assert_eq!(v["outcome"], "ok");
    }
}
