//! What an execution produces: events, a typed outcome and usage figures.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How an execution ended. Exactly one per result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The code ran to the end.
    Ok,
    /// The code raised an exception (see the `error` event).
    Error,
    /// Wall-clock or CPU time ran out.
    Timeout,
    /// The execution was interrupted on request (Ctrl-C, an interrupt call).
    Interrupted,
    /// The sandbox hit its memory limit and was OOM-killed.
    MemoryLimit,
    /// The code wrote more than the output limit.
    OutputLimit,
    /// The sandbox was killed (seccomp, a signal, a protocol violation).
    Killed,
    /// Policy refused the request before anything ran.
    Rejected,
    /// No backend could run it on this host.
    Unavailable,
}

impl Outcome {
    /// The process exit code `kiln run` mirrors the outcome with.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Ok => 0,
            Outcome::Error => 1,
            Outcome::Timeout => 124,
            Outcome::Interrupted => 130,
            Outcome::MemoryLimit => 137,
            Outcome::OutputLimit => 125,
            Outcome::Killed => 126,
            Outcome::Rejected => 65,
            Outcome::Unavailable => 69,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
            Outcome::Interrupted => "interrupted",
            Outcome::MemoryLimit => "memory_limit",
            Outcome::OutputLimit => "output_limit",
            Outcome::Killed => "killed",
            Outcome::Rejected => "rejected",
            Outcome::Unavailable => "unavailable",
        }
    }
}

/// One thing an execution produced, in the order it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Stdout {
        text: String,
    },
    Stderr {
        text: String,
    },
    /// A MIME bundle: `image/png` (base64), `text/html`, `text/plain`, …
    Display {
        data: BTreeMap<String, String>,
    },
    /// A file written under `/work/out`, base64-encoded.
    File {
        path: String,
        size: u64,
        data_b64: String,
    },
    Error {
        name: String,
        value: String,
        traceback: Vec<String>,
    },
}

/// A file placed into `/work` before the code runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputFile {
    /// Path relative to `/work`.
    pub path: String,
    pub data: Vec<u8>,
}

/// One piece of code to run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub code: String,
    #[serde(default)]
    pub files: Vec<InputFile>,
}

/// Resource figures measured by the supervisor (never reported by the sandbox).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub duration_ms: u64,
    pub cpu_ms: u64,
    pub peak_memory_bytes: u64,
}

/// What isolation a result actually got.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Isolation {
    pub backend: String,
    /// The host uid the sandbox ran as.
    pub uid: Option<u32>,
    pub cgroup: Option<String>,
    pub seccomp: bool,
    /// The Landlock ABI version enforced, if any.
    pub landlock_abi: Option<u32>,
}

/// The whole answer to one execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionResult {
    pub outcome: Outcome,
    /// A human-readable word on the outcome (why rejected, which limit, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub events: Vec<Event>,
    /// The runner's exit status, or 128+signal.
    pub exit_code: Option<i32>,
    pub usage: Usage,
    /// Limits hit during the run (`wall`, `cpu`, `memory`, `pids`, `output`, …).
    pub limits_hit: Vec<String>,
    /// Whether stdout or stderr was cut at the output limit.
    pub truncated: bool,
    pub isolation: Isolation,
    /// In a session: this execution ended the sandbox (a kill, the memory
    /// limit, …); the session is gone. Never set for a one-shot execution.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub session_ended: bool,
}

impl ExecutionResult {
    /// A result for a request that never reached a sandbox.
    pub fn without_sandbox(outcome: Outcome, reason: impl Into<String>) -> Self {
        Self {
            outcome,
            reason: Some(reason.into()),
            events: Vec::new(),
            exit_code: None,
            usage: Usage::default(),
            limits_hit: Vec::new(),
            truncated: false,
            isolation: Isolation::default(),
            session_ended: false,
        }
    }

    /// All stdout text, concatenated.
    pub fn stdout(&self) -> String {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Stdout { text } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// All stderr text, concatenated.
    pub fn stderr(&self) -> String {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Stderr { text } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }
}
