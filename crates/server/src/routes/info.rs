//! Health, readiness, metrics, and what the policy allows.

use crate::api::Health;
use crate::app::{AppState, Caller};
use crate::error::{ApiError, ErrorBody};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use kiln_core::service::{Command, Reply};
use serde_json::{json, Value};

/// The process is up (it does not ask the supervisor).
#[utoipa::path(get, path = "/v1/health", operation_id = "health", tag = "info",
    responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// The supervisor answers: sandboxes can be asked for.
#[utoipa::path(get, path = "/v1/ready", operation_id = "ready", tag = "info",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    match state.stats().await {
        Ok(Reply::Stats { .. }) => Ok(Json(Health {
            status: "ready".into(),
        })),
        Ok(Reply::Error { kind, message }) => Err(ApiError::new(kind, message)),
        Ok(_) => Err(ApiError::unexpected("something other than stats")),
        Err(error) => Err(ApiError::from(error)),
    }
}

/// Prometheus metrics (text exposition; no key needed: it holds counts,
/// never key ids, code or output). Pool and session gauges are read from
/// the supervisor at scrape time.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "info",
    responses((status = 200, content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let stats = match state.stats().await {
        Ok(Reply::Stats { sessions, pool, .. }) => Some((sessions, pool)),
        _ => None,
    };
    let text = state.metrics.render(stats, state.in_flight.current());
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

async fn policy_document(state: &AppState) -> Result<Value, ApiError> {
    match state.call(Command::Policy).await? {
        Reply::Policy { policy } => Ok(policy),
        _ => Err(ApiError::unexpected("something other than the policy")),
    }
}

/// The policy in force: libraries, default limits, ceilings.
#[utoipa::path(get, path = "/v1/policy", operation_id = "getPolicy", tag = "info",
    responses((status = 200, body = Object), (status = 401, body = ErrorBody)))]
pub async fn policy(
    State(state): State<AppState>,
    Extension(_caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    policy_document(&state).await.map(Json)
}

/// The environments code can run in: the policy's `environments`, or, for
/// a policy with one runtime, that one as `default` (its libraries,
/// datasets, default limits and ceilings).
#[utoipa::path(get, path = "/v1/environments", operation_id = "listEnvironments", tag = "info",
    responses((status = 200, body = Object), (status = 401, body = ErrorBody)))]
pub async fn environments(
    State(state): State<AppState>,
    Extension(_caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let policy = policy_document(&state).await?;
    Ok(Json(json!({ "environments": environments_of(&policy) })))
}

pub(crate) fn environments_of(policy: &Value) -> Value {
    if let Some(listed) = policy.get("environments") {
        return listed.clone();
    }
    let field = |name: &str| policy.get(name).cloned().unwrap_or(Value::Null);
    json!([{
        "name": "default",
        "backend": field("backend"),
        "libraries": field("libraries"),
        "datasets": field("datasets"),
        "limits": field("limits"),
        "ceilings": field("ceilings"),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_runtime_policy_is_one_default_environment() {
        let policy = json!({"backend": "native", "libraries": ["numpy"], "datasets": ["sales"],
            "limits": {"wall_ms": 1}, "ceilings": {"wall_ms": 2}, "sessions": {}});
        let envs = environments_of(&policy);
        assert_eq!(envs[0]["name"], "default");
        assert_eq!(envs[0]["libraries"], json!(["numpy"]));
        assert_eq!(envs[0]["datasets"], json!(["sales"]));
        assert_eq!(envs[0]["ceilings"]["wall_ms"], 2);
        let listed = json!({"environments": [{"name": "a"}, {"name": "b"}]});
        assert_eq!(
            environments_of(&listed),
            json!([{"name": "a"}, {"name": "b"}])
        );
    }
}
