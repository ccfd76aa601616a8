//! Files in a session's `/work`: upload (raw body or multipart), download,
//! list. Unsafe paths are refused here, before any command is sent; the
//! supervisor in turn never follows a symlink or opens a FIFO.

use crate::api::check_path;
use crate::app::{AppState, Caller};
use crate::docs::ListingDoc;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{body_error, RawBody};
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use kiln_core::service::{Command, Reply};
use serde::Deserialize;
use serde_json::{json, Value};

async fn write_file(
    state: &AppState,
    caller: &Caller,
    session: String,
    path: String,
    data: &[u8],
) -> Result<(), ApiError> {
    let command = Command::WriteFile {
        key: caller.id(),
        session,
        path,
        data_b64: STANDARD.encode(data),
    };
    match state.call(command).await? {
        Reply::Ok => Ok(()),
        _ => Err(ApiError::unexpected("something other than ok")),
    }
}

/// Writes the request body to `/work/{path}` (parents are made).
#[utoipa::path(put, path = "/v1/sessions/{id}/files/{*path}", operation_id = "writeFile", tag = "files",
    params(("id" = String, Path, description = "Session id"),
        ("path" = String, Path, description = "Path inside /work")),
    request_body(content = crate::docs::BinaryDoc, content_type = "application/octet-stream"),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody)))]
pub async fn write(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, path)): Path<(String, String)>,
    RawBody(body): RawBody,
) -> Result<StatusCode, ApiError> {
    check_path(&path)?;
    write_file(&state, &caller, id, path, &body).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Uploads files as `multipart/form-data`; each field's name is its path
/// inside `/work`. Every path is checked before any file is written.
#[utoipa::path(post, path = "/v1/sessions/{id}/files", operation_id = "uploadFiles", tag = "files",
    params(("id" = String, Path, description = "Session id")),
    request_body(content = Object, content_type = "multipart/form-data"),
    responses((status = 201, body = Object), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn upload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut multipart = multipart
        .map_err(|e| ApiError::bad_request(format!("expected multipart/form-data: {e}")))?;
    let mut files = Vec::new();
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| body_error(&state, e.status(), e.body_text()))?
    {
        let path = field.name().unwrap_or_default().to_string();
        check_path(&path)?;
        let data = field
            .bytes()
            .await
            .map_err(|e| body_error(&state, e.status(), e.body_text()))?;
        files.push((path, data));
    }
    if files.is_empty() {
        return Err(ApiError::bad_request(
            "no file fields in the multipart body",
        ));
    }
    let mut written = Vec::new();
    for (path, data) in files {
        write_file(&state, &caller, id.clone(), path.clone(), &data).await?;
        written.push(json!({ "path": path, "size": data.len() }));
    }
    Ok((StatusCode::CREATED, Json(json!({ "files": written }))))
}

/// The bytes of a regular file in `/work` (symlinks and FIFOs are refused).
#[utoipa::path(get, path = "/v1/sessions/{id}/files/{*path}", operation_id = "readFile", tag = "files",
    params(("id" = String, Path, description = "Session id"),
        ("path" = String, Path, description = "Path inside /work")),
    responses((status = 200, content_type = "application/octet-stream", body = crate::docs::BinaryDoc),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn read(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, path)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    check_path(&path)?;
    let command = Command::ReadFile {
        key: caller.id(),
        session: id,
        path,
    };
    let Reply::File { data_b64, .. } = state.call(command).await? else {
        return Err(ApiError::unexpected("something other than a file"));
    };
    let data = STANDARD
        .decode(data_b64.as_bytes())
        .map_err(|_| ApiError::unexpected("a file that is not base64"))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Directory inside `/work` (default: `/work` itself).
    dir: Option<String>,
}

/// Lists a directory of `/work` (entries are never followed).
#[utoipa::path(get, path = "/v1/sessions/{id}/files", operation_id = "listFiles", tag = "files",
    params(("id" = String, Path, description = "Session id"), ListQuery),
    responses((status = 200, body = ListingDoc), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    // The root of /work is the empty path.
    let dir = query.dir.unwrap_or_default();
    let dir = dir.trim_end_matches('/').to_string();
    if !dir.is_empty() {
        check_path(&dir)?;
    }
    let command = Command::ListFiles {
        key: caller.id(),
        session: id,
        path: dir,
    };
    match state.call(command).await? {
        Reply::Files { path, entries } => Ok(Json(json!({ "path": path, "entries": entries }))),
        _ => Err(ApiError::unexpected("something other than a listing")),
    }
}
