//! kiln's core vocabulary: what a sandbox returns, how the runner inside it
//! talks to the supervisor outside, and the [`Backend`] trait every kind of
//! isolation implements.
#![forbid(unsafe_code)]

mod manager;
mod pool;
pub mod protocol;
mod result;
pub mod service;
mod session;
pub mod time;

pub use manager::{Clock, Expiry, SessionError, SessionInfo, SessionManager, SystemClock};
pub use pool::{Pool, PoolConfig, PoolStats};
pub use result::{Event, ExecRequest, ExecutionResult, InputFile, Isolation, Outcome, Usage};
pub use session::{
    check_env_name, check_file_path, FileError, Interrupt, OptionsError, Session, SessionOptions,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_LIFETIME, ENV_MAX_BYTES, FILE_MAX_BYTES,
};

use kiln_policy::Limits;

/// Why a backend could not run code at all (not: the code failed).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot work on this host; `hint` says how to fix it.
    #[error("{what} is unavailable: {why}. Hint: {hint}")]
    Unavailable {
        what: String,
        why: String,
        hint: String,
    },
    /// Setting up or tearing down a sandbox failed.
    #[error("sandbox setup failed at {step}: {source}")]
    Setup {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The sandbox broke the protocol (it is untrusted: this is not a panic).
    #[error("protocol violation from sandbox: {0}")]
    Protocol(#[from] protocol::FrameError),
    /// The session options were refused before any sandbox started.
    #[error("invalid session options: {0}")]
    InvalidOptions(#[from] OptionsError),
    /// The sandbox started but its runner did not come up or refused the
    /// session's setup (environment, input files).
    #[error("the session could not start: {0}")]
    Startup(String),
}

/// A way of making sandboxes. The rest of kiln does not know which one runs.
pub trait Backend {
    /// Name reported in results (`native`, `docker`, …).
    fn name(&self) -> &'static str;

    /// Creates a sandbox that stays alive for many executions.
    fn create_session(&self, options: &SessionOptions) -> Result<Box<dyn Session>, BackendError>;

    /// Stops what the backend keeps running between sessions (the native
    /// backend's zygote template) and removes its cgroup, now rather than
    /// when the backend is dropped: for a caller about to exit while
    /// another thread still holds the backend. Sessions already made are
    /// the caller's to close first. The default has nothing to stop.
    fn shutdown(&self) {}

    /// Creates a sandbox, runs one piece of code in it, and destroys it.
    fn execute(
        &self,
        request: &ExecRequest,
        limits: &Limits,
    ) -> Result<ExecutionResult, BackendError> {
        let options = SessionOptions {
            limits: limits.clone(),
            ..SessionOptions::default()
        };
        self.execute_with(request, &options)
    }

    /// [`execute`](Self::execute) in a sandbox made with `options` (the
    /// import policy, datasets, environment variables).
    fn execute_with(
        &self,
        request: &ExecRequest,
        options: &SessionOptions,
    ) -> Result<ExecutionResult, BackendError> {
        if let Some(why) = check_request(request, &options.limits) {
            return Ok(ExecutionResult::without_sandbox(Outcome::Rejected, why));
        }
        let mut session = self.create_session(options)?;
        let mut result = session.execute(request, &mut |_| {});
        session.close();
        result.session_ended = false;
        Ok(result)
    }
}

/// A request that policy refuses before any sandbox starts.
pub fn check_request(request: &ExecRequest, limits: &Limits) -> Option<String> {
    if request.code.len() as u64 > limits.code_bytes {
        return Some(format!(
            "code is {} bytes; the limit is {} bytes",
            request.code.len(),
            limits.code_bytes
        ));
    }
    if request.code.trim().is_empty() {
        return Some("code is empty: nothing to run".to_string());
    }
    if request.code.contains('\0') {
        return Some("code contains a NUL byte".to_string());
    }
    let mut total = 0u64;
    for file in &request.files {
        if !is_plain_relative(&file.path) {
            return Some(format!(
                "input file name {:?} must be a plain relative path inside /work",
                file.path
            ));
        }
        total += file.data.len() as u64;
    }
    if total > limits.disk_mib << 20 {
        return Some(format!(
            "input files total {total} bytes; /work holds {} MiB",
            limits.disk_mib
        ));
    }
    None
}

/// `a/b.csv` yes; `/etc/x`, `../x`, `a/./b`, `` no.
pub fn is_plain_relative(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 4096
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != ".." && !part.contains('\0'))
}
