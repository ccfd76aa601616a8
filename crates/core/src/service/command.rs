//! The commands and replies themselves. Every field is plain data; the key
//! id is set by the front end after authentication and decides which
//! sessions a command may see.

use crate::{Event, ExecRequest, ExecutionResult, InputFile};
use kiln_policy::LimitRequest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a caller asks of the sandbox supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Run code in a fresh sandbox (from the warm pool when the limits are
    /// the defaults), then destroy it. Streams events, ends with `Result`.
    Execute {
        key: String,
        request: ExecRequest,
        #[serde(default)]
        limits: LimitRequest,
        /// The policy environment (default: `default`).
        #[serde(default)]
        environment: Option<String>,
        /// Libraries the code needs (`name` or `name==version`): each must
        /// be allowed by the environment, else `rejected` with the list.
        #[serde(default)]
        libraries: Vec<String>,
    },
    /// Make a session owned by `key`. Ends with `Session`.
    CreateSession {
        key: String,
        options: SessionRequest,
    },
    /// Run code in a session. Streams events, ends with `Result`.
    SessionExecute {
        key: String,
        session: String,
        request: ExecRequest,
    },
    /// Interrupt a session's running execution (KeyboardInterrupt). `Ok`.
    Interrupt { key: String, session: String },
    /// Close a session; nothing of it remains. `Ok`.
    CloseSession { key: String, session: String },
    /// One session of `key`. `Session`.
    GetSession { key: String, session: String },
    /// The sessions of `key`. `Sessions`.
    ListSessions { key: String },
    /// Counts as use: resets the idle timer. `Session`.
    Keepalive { key: String, session: String },
    /// Write a file into the session's `/work`. `Ok`.
    WriteFile {
        key: String,
        session: String,
        path: String,
        data_b64: String,
    },
    /// Read a regular file from the session's `/work`. `File`.
    ReadFile {
        key: String,
        session: String,
        path: String,
    },
    /// List a directory of the session's `/work`. `Files`.
    ListFiles {
        key: String,
        session: String,
        path: String,
    },
    /// The policy in force: libraries, limits, ceilings. `Policy`.
    Policy,
    /// Counts for health checks and metrics. `Stats`.
    Stats,
    /// Close every session of every key (graceful shutdown). `Ok`.
    Shutdown,
}

impl Command {
    /// The key id the command acts for, if it acts for one.
    pub fn key(&self) -> Option<&str> {
        use Command::*;
        match self {
            Execute { key, .. }
            | CreateSession { key, .. }
            | SessionExecute { key, .. }
            | Interrupt { key, .. }
            | CloseSession { key, .. }
            | GetSession { key, .. }
            | ListSessions { key }
            | Keepalive { key, .. }
            | WriteFile { key, .. }
            | ReadFile { key, .. }
            | ListFiles { key, .. } => Some(key),
            Policy | Stats | Shutdown => None,
        }
    }
}

/// How a session is asked for (limits within the policy's ceilings).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionRequest {
    pub limits: LimitRequest,
    /// The policy environment (default: `default`).
    pub environment: Option<String>,
    /// Libraries the session needs; see `Command::Execute`.
    pub libraries: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub files: Vec<InputFile>,
    pub datasets: Vec<String>,
    pub idle_timeout_s: Option<u64>,
    pub max_lifetime_s: Option<u64>,
}

/// A session as callers see it (times in seconds, from now).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionView {
    pub id: String,
    pub executing: bool,
    pub executions: u64,
    pub idle_for_s: f64,
    pub age_s: f64,
    pub idle_timeout_s: u64,
    pub max_lifetime_s: u64,
}

/// One entry of a `/work` directory listing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    /// `file`, `dir`, `symlink` or `other` (never followed).
    pub kind: String,
    pub size: u64,
}

/// The warm pool's counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolInfo {
    pub ready: usize,
    pub in_use: usize,
    pub creating: usize,
    pub created: u64,
    pub handed_out: u64,
    pub failed: u64,
}

/// Why a command failed; front ends map it to their status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Malformed or impossible request (HTTP 400).
    BadRequest,
    /// Policy said no before anything ran (HTTP 422).
    Rejected,
    /// No such session for this key (HTTP 404) — also another key's session.
    NotFound,
    /// A quota or the capacity is exhausted (HTTP 429).
    TooMany,
    /// The session is busy with another execution (HTTP 409).
    Busy,
    /// No sandbox can be made on this host now (HTTP 503).
    Unavailable,
    /// A fault in kiln (HTTP 500).
    Internal,
}

/// What the supervisor answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// An event of a running execution (not final).
    Event {
        event: Event,
    },
    /// The end of an execution.
    Result {
        result: ExecutionResult,
    },
    Session {
        session: SessionView,
    },
    Sessions {
        sessions: Vec<SessionView>,
    },
    File {
        path: String,
        size: u64,
        data_b64: String,
    },
    Files {
        path: String,
        entries: Vec<FileEntry>,
    },
    Policy {
        policy: serde_json::Value,
    },
    Stats {
        sessions: usize,
        pool: Option<PoolInfo>,
        spawner: String,
    },
    Ok,
    Error {
        kind: ErrorKind,
        message: String,
    },
}

impl Reply {
    /// Whether this reply ends the command's stream.
    pub fn is_final(&self) -> bool {
        !matches!(self, Reply::Event { .. })
    }

    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Reply::Error {
            kind,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_unknown_fields_are_refused() {
        let cmd = Command::SessionExecute {
            key: "k1".into(),
            session: "s1".into(),
            request: ExecRequest {
                code: "print(1)".into(),
                files: vec![],
            },
        };
        let line = serde_json::to_string(&cmd).unwrap();
        assert!(line.starts_with(r#"{"cmd":"session_execute""#), "{line}");
        assert_eq!(serde_json::from_str::<Command>(&line).unwrap(), cmd);
        assert!(
            serde_json::from_str::<Command>(r#"{"cmd":"list_sessions","key":"k","x":1}"#).is_err()
        );
        assert!(serde_json::from_str::<Command>(r#"{"cmd":"rm_rf"}"#).is_err());
    }

    #[test]
    fn only_events_are_not_final() {
        assert!(!Reply::Event {
            event: Event::Stdout { text: "x".into() }
        }
        .is_final());
        assert!(Reply::Ok.is_final());
        assert!(Reply::error(ErrorKind::NotFound, "no").is_final());
    }
}
