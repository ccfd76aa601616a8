//! Sessions: create (within the key's quota), list, get, close, keepalive,
//! interrupt. A session is visible only to the key that made it: the
//! supervisor answers `not_found` for another key's.

use crate::api::CreateSessionBody;
use crate::app::{AppState, Caller};
use crate::docs::{SessionListDoc, SessionViewDoc};
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use kiln_core::service::{Command, Reply, SessionView};
use serde_json::{json, Value};

fn session_reply(reply: Reply) -> Result<Json<SessionView>, ApiError> {
    match reply {
        Reply::Session { session } => Ok(Json(session)),
        _ => Err(ApiError::unexpected("something other than a session")),
    }
}

fn ok_reply(reply: Reply) -> Result<(), ApiError> {
    match reply {
        Reply::Ok => Ok(()),
        _ => Err(ApiError::unexpected("something other than ok")),
    }
}

async fn session_count(state: &AppState, key: String) -> Result<usize, ApiError> {
    match state.call(Command::ListSessions { key }).await? {
        Reply::Sessions { sessions } => Ok(sessions.len()),
        _ => Err(ApiError::unexpected("something other than sessions")),
    }
}

/// Opens a session (a sandbox kept alive between executions).
#[utoipa::path(post, path = "/v1/sessions", operation_id = "createSession", tag = "sessions", request_body = CreateSessionBody,
    responses((status = 201, body = SessionViewDoc), (status = 400, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<CreateSessionBody>,
) -> Result<(StatusCode, Json<SessionView>), ApiError> {
    let options = body.into_request()?;
    let _one_at_a_time = caller.0.create_lock.lock().await;
    let max = caller.0.key.max_sessions;
    if session_count(&state, caller.id()).await? >= max {
        state.metrics.rejection("session_quota");
        return Err(ApiError::too_many(
            format!(
                "key {:?} holds {max} sessions, its quota: close one first",
                caller.id()
            ),
            5,
        ));
    }
    let command = Command::CreateSession {
        key: caller.id(),
        options,
    };
    let session = session_reply(state.call(command).await?)?;
    Ok((StatusCode::CREATED, session))
}

/// The caller's sessions.
#[utoipa::path(get, path = "/v1/sessions", operation_id = "listSessions", tag = "sessions",
    responses((status = 200, body = SessionListDoc)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    match state
        .call(Command::ListSessions { key: caller.id() })
        .await?
    {
        Reply::Sessions { sessions } => Ok(Json(json!({ "sessions": sessions }))),
        _ => Err(ApiError::unexpected("something other than sessions")),
    }
}

/// One session of the caller.
#[utoipa::path(get, path = "/v1/sessions/{id}", operation_id = "getSession", tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses((status = 200, body = SessionViewDoc), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    let command = Command::GetSession {
        key: caller.id(),
        session: id,
    };
    session_reply(state.call(command).await?)
}

/// Closes a session; nothing of it remains.
#[utoipa::path(delete, path = "/v1/sessions/{id}", operation_id = "closeSession", tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn close(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let command = Command::CloseSession {
        key: caller.id(),
        session: id,
    };
    ok_reply(state.call(command).await?)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Counts as use: resets the session's idle timer.
#[utoipa::path(post, path = "/v1/sessions/{id}/keepalive", operation_id = "keepSessionAlive", tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses((status = 200, body = SessionViewDoc), (status = 404, body = ErrorBody)))]
pub async fn keepalive(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    let command = Command::Keepalive {
        key: caller.id(),
        session: id,
    };
    session_reply(state.call(command).await?)
}

/// Interrupts the session's running execution (it ends `interrupted`).
#[utoipa::path(post, path = "/v1/sessions/{id}/interrupt", operation_id = "interruptSession", tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    responses((status = 202), (status = 404, body = ErrorBody)))]
pub async fn interrupt(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let command = Command::Interrupt {
        key: caller.id(),
        session: id,
    };
    ok_reply(state.call(command).await?)?;
    Ok(StatusCode::ACCEPTED)
}
