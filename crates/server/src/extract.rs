//! Body extractors whose refusals are the API's JSON errors: a body over
//! the limit is 413, a malformed one 400. JSON bodies are accepted with or
//! without a `Content-Type`.

use crate::app::AppState;
use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

/// A JSON body.
pub struct ApiJson<T>(pub T);

/// A raw body.
pub struct RawBody(pub Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        match Bytes::from_request(request, state).await {
            Ok(bytes) => Ok(RawBody(bytes)),
            Err(rejection) => Err(body_error(state, rejection.status(), rejection.body_text())),
        }
    }
}

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let RawBody(bytes) = RawBody::from_request(request, state).await?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// The error for a body that could not be read, counted when too large.
pub fn body_error(state: &AppState, status: axum::http::StatusCode, what: String) -> ApiError {
    let error = ApiError::body(status, what, state.max_body_bytes);
    if error.status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        state.metrics.rejection("too_large");
    }
    error
}
