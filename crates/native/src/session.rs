//! [`NativeSession`]: one live native sandbox. It owns everything the
//! sandbox holds on the host — the uid lease, the cgroup, PID 1's handles —
//! and releases all of it when closed or dropped, whatever state it is in.

use crate::cgroup::Cgroup;
use crate::supervisor::{self, Accounting, Expect, FileAnswer, Link, Supervised};
use crate::uid::UidLease;
use kiln_core::protocol::{self, file_error, RunnerMsg, SupervisorMsg};
use kiln_core::service::FileEntry;
use kiln_core::{
    check_file_path, check_request, Event, ExecRequest, ExecutionResult, FileError, Interrupt,
    Isolation, Outcome, Session, FILE_MAX_BYTES,
};
use kiln_policy::Limits;
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// A live native sandbox running executions one after another.
#[derive(Debug)]
pub struct NativeSession {
    id: String,
    limits: Limits,
    isolation: Isolation,
    link: Link,
    /// Why the sandbox did not start, reported by the first execution.
    failed_start: Option<Supervised>,
    /// How long each step of the start took inside the sandbox (zygote forks).
    startup_steps: Vec<(String, std::time::Duration)>,
    torn_down: bool,
    /// What the sandbox holds on the host (its cgroup and uid, or its
    /// container): accounts for it and tears it down.
    host: Box<dyn Host>,
}

/// What a live sandbox holds outside itself: where its usage is read, and
/// how all of it is removed.
pub trait Host: Accounting + Send + std::fmt::Debug {
    /// Kills whatever is left of the sandbox and removes it; called once,
    /// after PID 1 was killed and reaped.
    fn teardown(&mut self);
}

/// A native sandbox's host side: its cgroup and its uid lease.
#[derive(Debug)]
pub(crate) struct NativeHost {
    // Dropped last: the uid is free only once nothing of the sandbox runs.
    pub(crate) cgroup: Cgroup,
    pub(crate) _lease: UidLease,
}

impl Host for NativeHost {
    fn teardown(&mut self) {
        teardown(&self.cgroup);
    }
}

impl NativeSession {
    /// A session over a started sandbox; [`start`](Self::start) waits for
    /// its runner.
    pub fn new(
        id: String,
        limits: Limits,
        isolation: Isolation,
        link: Link,
        host: Box<dyn Host>,
    ) -> Self {
        Self {
            id,
            limits,
            isolation,
            link,
            failed_start: None,
            startup_steps: Vec::new(),
            torn_down: false,
            host,
        }
    }

    /// Waits for the runner and applies the session's setup. On failure
    /// the sandbox is dead, and the reason is returned (and kept for a
    /// one-shot execution to report).
    pub fn start(&mut self, setup: Option<&kiln_core::protocol::SupervisorMsg>) -> bool {
        let acct: &dyn Accounting = &*self.host;
        let t0 = std::time::Instant::now();
        let started = supervisor::start(&mut self.link, &self.limits, setup, acct);
        tracing::debug!(ready_us = t0.elapsed().as_micros() as u64, "runner ready");
        match started {
            Ok(steps) => {
                if !steps.is_empty() {
                    tracing::debug!(?steps, "the sandbox's start, step by step");
                }
                self.startup_steps = steps;
                true
            }
            Err(failed) => {
                self.failed_start = Some(failed);
                false
            }
        }
    }

    /// Why the start failed, with what the runner printed.
    pub fn start_failure(&self) -> Option<String> {
        let failed = self.failed_start.as_ref()?;
        let mut why = failed.reason.clone().unwrap_or_else(|| "unknown".into());
        let stderr: String = failed
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Stderr { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        if !stderr.trim().is_empty() {
            why.push_str("; the runner printed: ");
            why.push_str(stderr.trim());
        }
        Some(why)
    }

    /// Ends the sandbox (asking the runner first) and removes all of it;
    /// returns the runner's exit code.
    pub fn shut_down(&mut self) -> Option<i32> {
        let status = self.link.close();
        if !self.torn_down {
            self.torn_down = true;
            self.host.teardown();
        }
        status.map(supervisor::exit_code)
    }

    /// One file request through the runner; the sandbox must be live.
    fn file_request(
        &mut self,
        msg: &SupervisorMsg,
        expect: Expect,
    ) -> Result<Option<RunnerMsg>, FileError> {
        if let Some(why) = self.start_failure() {
            return Err(FileError::SessionEnded(format!(
                "the session did not start: {why}"
            )));
        }
        let acct: &dyn Accounting = &*self.host;
        let answer = supervisor::file_request(
            &mut self.link,
            &self.limits,
            acct,
            msg,
            expect,
            supervisor::FILE_TIMEOUT,
        );
        match answer {
            FileAnswer::Ok(payload) => Ok(payload),
            FileAnswer::Ended(why) => {
                tracing::warn!(session = %self.id, %why, "the sandbox ended during a file request");
                Err(FileError::SessionEnded(why))
            }
            FileAnswer::Refused { kind, message } => {
                let path = match msg {
                    SupervisorMsg::WriteFile { path, .. }
                    | SupervisorMsg::ReadFile { path, .. }
                    | SupervisorMsg::ListFiles { path } => path.clone(),
                    _ => String::new(),
                };
                Err(match kind.as_str() {
                    file_error::NOT_FOUND => FileError::NotFound(message),
                    file_error::NOT_REGULAR => FileError::NotRegular(message),
                    file_error::TOO_LARGE => FileError::TooLarge {
                        path,
                        max: match expect {
                            Expect::Data(max) => max,
                            Expect::List => protocol::LIST_MAX_ENTRIES as u64,
                            Expect::Nothing => self.write_cap(),
                        },
                    },
                    file_error::REFUSED => FileError::Refused {
                        path,
                        reason: message,
                    },
                    _ => FileError::Io(message),
                })
            }
        }
    }

    /// The largest file [`Session::write_file`] accepts.
    fn write_cap(&self) -> u64 {
        FILE_MAX_BYTES.min(self.limits.disk_mib << 20)
    }

    fn result(&self, s: Supervised) -> ExecutionResult {
        ExecutionResult {
            outcome: s.outcome,
            reason: s.reason,
            events: s.events,
            exit_code: s.exit_code,
            usage: s.usage,
            limits_hit: s.limits_hit,
            truncated: s.truncated,
            isolation: self.isolation.clone(),
            session_ended: !s.alive,
        }
    }
}

impl Session for NativeSession {
    fn id(&self) -> &str {
        &self.id
    }

    fn startup_steps(&self) -> Vec<(String, std::time::Duration)> {
        self.startup_steps.clone()
    }

    fn execute(
        &mut self,
        request: &ExecRequest,
        on_event: &mut dyn FnMut(&Event),
    ) -> ExecutionResult {
        if let Some(why) = check_request(request, &self.limits) {
            return ExecutionResult::without_sandbox(Outcome::Rejected, why);
        }
        if let Some(failed) = self.failed_start.take() {
            for event in &failed.events {
                on_event(event);
            }
            return self.result(failed);
        }
        let acct: &dyn Accounting = &*self.host;
        let s = supervisor::execute(&mut self.link, request, &self.limits, acct, on_event);
        tracing::debug!(
            session = %self.id,
            outcome = s.outcome.as_str(),
            alive = s.alive,
            "execution finished"
        );
        self.result(s)
    }

    fn interrupter(&self) -> Arc<dyn Interrupt> {
        self.link.control()
    }

    fn is_alive(&self) -> bool {
        self.failed_start.is_none() && self.link.is_alive()
    }

    fn write_file(&mut self, path: &str, data: &[u8]) -> Result<(), FileError> {
        use base64::Engine;
        let path = check_file_path(path, false)?;
        let max = self.write_cap();
        if data.len() as u64 > max {
            return Err(FileError::TooLarge {
                path: path.to_string(),
                max,
            });
        }
        let msg = SupervisorMsg::WriteFile {
            path: path.to_string(),
            data_b64: base64::engine::general_purpose::STANDARD.encode(data),
        };
        self.file_request(&msg, Expect::Nothing).map(drop)
    }

    fn read_file(&mut self, path: &str, max_bytes: u64) -> Result<Vec<u8>, FileError> {
        use base64::Engine;
        let path = check_file_path(path, false)?;
        let max = max_bytes.min(FILE_MAX_BYTES);
        let msg = SupervisorMsg::ReadFile {
            path: path.to_string(),
            max_bytes: max,
        };
        let Some(RunnerMsg::FileData { size, data_b64, .. }) =
            self.file_request(&msg, Expect::Data(max))?
        else {
            // The supervisor lets only `file_data` through here.
            return Err(FileError::Io(
                "the runner did not answer with file data".into(),
            ));
        };
        // The length was checked against `max` before this allocation.
        match base64::engine::general_purpose::STANDARD.decode(data_b64) {
            Ok(data) if data.len() as u64 == size => Ok(data),
            _ => {
                self.link.kill_and_reap();
                Err(FileError::SessionEnded(
                    "protocol violation: file_data that is not the base64 of its size; the session was killed"
                        .into(),
                ))
            }
        }
    }

    fn list_files(&mut self, dir: &str) -> Result<Vec<FileEntry>, FileError> {
        let path = check_file_path(dir, true)?;
        let msg = SupervisorMsg::ListFiles {
            path: path.to_string(),
        };
        let Some(RunnerMsg::FileList { entries, .. }) = self.file_request(&msg, Expect::List)?
        else {
            // The supervisor lets only `file_list` through here.
            return Err(FileError::Io(
                "the runner did not answer with a listing".into(),
            ));
        };
        Ok(entries
            .into_iter()
            .map(|e| FileEntry {
                name: e.name,
                kind: e.kind,
                size: e.size,
            })
            .collect())
    }

    fn close(mut self: Box<Self>) {
        self.shut_down();
    }
}

impl Drop for NativeSession {
    fn drop(&mut self) {
        if !self.torn_down {
            self.torn_down = true;
            self.link.kill_and_reap();
            self.host.teardown();
        }
    }
}

/// Kills whatever is left in the cgroup, waits until it is empty, removes it.
pub(crate) fn teardown(cgroup: &Cgroup) {
    if let Err(e) = cgroup.kill_all() {
        tracing::warn!(error = %e, "killing the sandbox cgroup failed");
    }
    if let Err(e) = cgroup.wait_empty(Duration::from_secs(10)) {
        tracing::error!(error = %e, "sandbox cgroup did not empty");
    }
    if let Err(e) = cgroup.destroy() {
        tracing::error!(error = %e, "removing the sandbox cgroup failed");
    }
}

impl Accounting for NativeHost {
    fn cpu_usage_ns(&self) -> io::Result<u64> {
        self.cgroup
            .cpu_usage_ns()
            .map_err(|e| io::Error::other(e.to_string()))
    }
    fn oom_killed(&self) -> io::Result<bool> {
        self.cgroup
            .oom_killed()
            .map_err(|e| io::Error::other(e.to_string()))
    }
    fn memory_peak_bytes(&self) -> io::Result<u64> {
        self.cgroup
            .memory_peak_bytes()
            .map_err(|e| io::Error::other(e.to_string()))
    }
    fn pids_max_hit(&self) -> io::Result<bool> {
        self.cgroup
            .pids_max_hit()
            .map_err(|e| io::Error::other(e.to_string()))
    }
}
