//! One execution's bookkeeping: when it ends — with a result, an error, or
//! because the client went away — the audit log gets its line, the metrics
//! their counts, and the key's concurrency slot is freed. Done on drop, so
//! no path out of an execution can skip it.

use crate::app::AppState;
use crate::audit::{rfc3339, AuditEntry};
use kiln_core::service::ErrorKind;
use kiln_core::ExecutionResult;
use kiln_policy::LimitRequest;
use sha2::{Digest, Sha256};
use std::time::{Instant, SystemTime};
use tokio::sync::OwnedSemaphorePermit;

pub struct ExecutionRecord {
    state: AppState,
    kind: &'static str,
    entry: AuditEntry,
    start: Instant,
    _slot: OwnedSemaphorePermit,
}

impl ExecutionRecord {
    /// `kind` is `oneshot` or `session`; `outcome` stays `disconnected`
    /// unless the execution reaches an end.
    pub fn start(
        state: AppState,
        kind: &'static str,
        key: String,
        session: Option<String>,
        code: &str,
        limits: Option<LimitRequest>,
        slot: OwnedSemaphorePermit,
    ) -> Self {
        let entry = AuditEntry {
            time: String::new(),
            key,
            session,
            code_sha256: hex::encode(Sha256::digest(code.as_bytes())),
            limits,
            outcome: "disconnected".into(),
            duration_ms: 0,
            usage: None,
        };
        Self {
            state,
            kind,
            entry,
            start: Instant::now(),
            _slot: slot,
        }
    }

    pub fn finished(&mut self, result: &ExecutionResult) {
        self.entry.outcome = result.outcome.as_str().to_string();
        self.entry.usage = Some(result.usage.clone());
    }

    pub fn failed(&mut self, kind: ErrorKind) {
        self.failed_named(crate::error::ApiError::new(kind, "").kind);
    }

    pub fn failed_named(&mut self, kind: &str) {
        self.entry.outcome = format!("error:{kind}");
    }

    pub fn timed_out(&mut self) {
        self.entry.outcome = "error:frontend_timeout".into();
    }
}

impl Drop for ExecutionRecord {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        self.entry.duration_ms = elapsed.as_millis() as u64;
        self.entry.time = rfc3339(SystemTime::now());
        let e = &self.entry;
        self.state
            .metrics
            .execution(self.kind, &e.outcome, elapsed.as_secs_f64());
        tracing::info!(
            key = %e.key, session = ?e.session, code_sha256 = %e.code_sha256,
            outcome = %e.outcome, ms = e.duration_ms, "execution"
        );
        if let Some(audit) = &self.state.audit {
            audit.write(e);
        }
    }
}
