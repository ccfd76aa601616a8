//! Schemas of the service's response types for the OpenAPI document. They
//! mirror `kiln_core`'s types field for field; `tests::mirrors_match_the_core`
//! fails when the two drift apart.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// One thing an execution produced, in the order it happened. In an SSE
/// stream each is one event named after its `type`.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum EventDoc {
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
    /// A file written under `/work/out`, base64.
    File {
        path: String,
        size: u64,
        data_b64: String,
    },
    /// An exception raised by the code.
    Error {
        name: String,
        value: String,
        traceback: Vec<String>,
    },
}

/// Resource figures measured outside the sandbox.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageDoc {
    pub duration_ms: u64,
    pub cpu_ms: u64,
    pub peak_memory_bytes: u64,
}

/// What isolation the execution actually got.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IsolationDoc {
    pub backend: String,
    pub uid: Option<u32>,
    pub cgroup: Option<String>,
    pub seccomp: bool,
    pub landlock_abi: Option<u32>,
}

/// The whole answer to one execution.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecutionResultDoc {
    /// ok, error, timeout, interrupted, memory_limit, output_limit, killed,
    /// rejected or unavailable.
    pub outcome: String,
    #[serde(default)]
    pub reason: Option<String>,
    pub events: Vec<EventDoc>,
    pub exit_code: Option<i32>,
    pub usage: UsageDoc,
    pub limits_hit: Vec<String>,
    pub truncated: bool,
    pub isolation: IsolationDoc,
    /// In a session: this execution ended the sandbox; the session is gone.
    #[serde(default)]
    pub session_ended: bool,
}

/// A session (times in seconds, from now).
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionViewDoc {
    pub id: String,
    pub executing: bool,
    pub executions: u64,
    pub idle_for_s: f64,
    pub age_s: f64,
    pub idle_timeout_s: u64,
    pub max_lifetime_s: u64,
}

/// The caller's sessions.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct SessionListDoc {
    pub sessions: Vec<SessionViewDoc>,
}

/// One entry of a `/work` directory (symlinks are listed, never followed).
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileEntryDoc {
    pub name: String,
    /// file, dir, symlink or other.
    pub kind: String,
    pub size: u64,
}

/// A directory of `/work`.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct ListingDoc {
    pub path: String,
    pub entries: Vec<FileEntryDoc>,
}

/// Raw bytes.
#[derive(ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct BinaryDoc(#[allow(dead_code)] Vec<u8>);
