//! The JSON documents of the API. Request bodies are parsed here and turned
//! into the service's types; the response types describe, for the OpenAPI
//! document, what the service's own types serialize to (a test checks that
//! they still match).

use crate::error::ApiError;
use base64::Engine;
use kiln_core::service::SessionRequest;
use kiln_core::{ExecRequest, InputFile};
use kiln_policy::LimitRequest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// A file placed into `/work` before the code runs.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FileBody {
    /// Plain relative path inside `/work` (no `..`, no leading `/`).
    pub path: String,
    /// The file's bytes, base64 (standard alphabet, padded).
    pub data_b64: String,
}

/// Limits a request asks for; each absent one keeps the policy's default.
/// None may exceed the policy's ceilings.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsBody {
    pub wall_ms: Option<u64>,
    pub cpu_ms: Option<u64>,
    pub memory_mib: Option<u64>,
    pub pids: Option<u64>,
    pub disk_mib: Option<u64>,
    pub output_bytes: Option<u64>,
}

impl From<LimitsBody> for LimitRequest {
    fn from(l: LimitsBody) -> Self {
        LimitRequest {
            wall_ms: l.wall_ms,
            cpu_ms: l.cpu_ms,
            memory_mib: l.memory_mib,
            pids: l.pids,
            disk_mib: l.disk_mib,
            output_bytes: l.output_bytes,
        }
    }
}

/// `POST /v1/execute`: code run in a fresh sandbox.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecuteBody {
    pub code: String,
    #[serde(default)]
    pub files: Vec<FileBody>,
    #[serde(default)]
    pub limits: LimitsBody,
    /// The policy environment (`GET /v1/environments`); default `default`.
    #[serde(default)]
    pub environment: Option<String>,
    /// Libraries the code needs (`pandas` or `pandas==1.5.3`); one the
    /// environment does not allow makes the request `rejected` with the
    /// allowed list.
    #[serde(default)]
    pub libraries: Vec<String>,
}

/// `POST /v1/sessions/{id}/executions`: code run in the session.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionExecuteBody {
    pub code: String,
    #[serde(default)]
    pub files: Vec<FileBody>,
}

/// `POST /v1/sessions`: a session within the policy's ceilings.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CreateSessionBody {
    pub limits: LimitsBody,
    /// Environment variables for the interpreter.
    pub env: BTreeMap<String, String>,
    /// Files placed into `/work` at creation.
    pub files: Vec<FileBody>,
    /// Read-only datasets (`[sandbox.datasets]` names), mounted at `/data/<name>`.
    pub datasets: Vec<String>,
    /// The policy environment (`GET /v1/environments`); default `default`.
    pub environment: Option<String>,
    /// Libraries the session needs; see `ExecuteBody`.
    pub libraries: Vec<String>,
    pub idle_timeout_s: Option<u64>,
    pub max_lifetime_s: Option<u64>,
}

/// Decodes uploaded files, refusing unsafe paths before anything is sent.
pub fn input_files(files: Vec<FileBody>) -> Result<Vec<InputFile>, ApiError> {
    files
        .into_iter()
        .map(|f| {
            check_path(&f.path)?;
            let data = base64::engine::general_purpose::STANDARD
                .decode(f.data_b64.as_bytes())
                .map_err(|e| ApiError::bad_request(format!("file {:?}: data_b64: {e}", f.path)))?;
            Ok(InputFile { path: f.path, data })
        })
        .collect()
}

/// A path inside `/work`: plain, relative, no `..`, no empty segment, no NUL.
pub fn check_path(path: &str) -> Result<(), ApiError> {
    if kiln_core::is_plain_relative(path) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "path {path:?} must be a plain relative path inside /work (no `..`, `.`, empty segment, leading `/` or NUL)"
        )))
    }
}

/// A one-shot execution as the supervisor gets it.
pub struct ExecuteParts {
    pub request: ExecRequest,
    pub limits: LimitRequest,
    pub environment: Option<String>,
    pub libraries: Vec<String>,
}

impl ExecuteBody {
    pub fn into_parts(self) -> Result<ExecuteParts, ApiError> {
        let files = input_files(self.files)?;
        Ok(ExecuteParts {
            request: ExecRequest {
                code: self.code,
                files,
            },
            limits: self.limits.into(),
            environment: self.environment,
            libraries: self.libraries,
        })
    }
}

impl SessionExecuteBody {
    pub fn into_request(self) -> Result<ExecRequest, ApiError> {
        Ok(ExecRequest {
            code: self.code,
            files: input_files(self.files)?,
        })
    }
}

impl CreateSessionBody {
    pub fn into_request(self) -> Result<SessionRequest, ApiError> {
        Ok(SessionRequest {
            limits: self.limits.into(),
            env: self.env,
            files: input_files(self.files)?,
            datasets: self.datasets,
            environment: self.environment,
            libraries: self.libraries,
            idle_timeout_s: self.idle_timeout_s,
            max_lifetime_s: self.max_lifetime_s,
        })
    }
}

/// `{"status": "ok"}`.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
}
