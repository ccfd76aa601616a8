//! Every error the API answers: `{"error": {"kind": "...", "message": "..."}}`
//! with the status its kind implies (429 adds `Retry-After`).

use crate::supervisor::ClientError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_core::service::ErrorKind;
use serde::Serialize;

/// An error answer. `kind` is one of the service's [`ErrorKind`]s, or
/// `unauthorized` (401) or `too_large` (413), which only HTTP knows.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    /// Seconds, for 429.
    pub retry_after: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong, and usually what to do about it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// bad_request, rejected, not_found, too_many, busy, unavailable,
    /// internal, unauthorized or too_large.
    pub kind: String,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let (status, name) = match kind {
            ErrorKind::BadRequest => (StatusCode::BAD_REQUEST, "bad_request"),
            ErrorKind::Rejected => (StatusCode::UNPROCESSABLE_ENTITY, "rejected"),
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ErrorKind::TooMany => (StatusCode::TOO_MANY_REQUESTS, "too_many"),
            ErrorKind::Busy => (StatusCode::CONFLICT, "busy"),
            ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let retry_after = (kind == ErrorKind::TooMany).then_some(1);
        Self {
            status,
            kind: name,
            message: message.into(),
            retry_after,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }

    pub fn too_many(message: impl Into<String>, retry_after_s: u64) -> Self {
        Self {
            retry_after: Some(retry_after_s.max(1)),
            ..Self::new(ErrorKind::TooMany, message)
        }
    }

    pub fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            kind: "unauthorized",
            message: "missing or unknown API key: send `Authorization: Bearer <secret>`".into(),
            retry_after: None,
        }
    }

    pub fn too_large(limit: u64) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "too_large",
            message: format!(
                "the request body is larger than this server's limit of {limit} bytes"
            ),
            retry_after: None,
        }
    }

    /// A request whose body could not be read or parsed (413 stays 413).
    pub fn body(status: StatusCode, what: impl std::fmt::Display, limit: u64) -> Self {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Self::too_large(limit)
        } else {
            Self::bad_request(format!("invalid request body: {what}"))
        }
    }

    pub fn timeout(ms: u64) -> Self {
        Self::new(
            ErrorKind::Unavailable,
            format!("the sandbox supervisor did not answer within {ms} ms"),
        )
    }

    /// A supervisor reply that does not fit the command sent.
    pub fn unexpected(what: &str) -> Self {
        Self::new(
            ErrorKind::Internal,
            format!("the supervisor answered {what} to this request"),
        )
    }
}

impl From<ClientError> for ApiError {
    fn from(error: ClientError) -> Self {
        tracing::error!(%error, "supervisor connection failed");
        let kind = match error {
            ClientError::Connect { .. } | ClientError::Io(_) | ClientError::Closed => {
                ErrorKind::Unavailable
            }
            ClientError::TooLong | ClientError::Malformed(_) => ErrorKind::Internal,
        };
        Self::new(kind, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                kind: self.kind.to_string(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        // The rest of an oversized body is never read: the connection ends
        // with this answer, and says so.
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

impl ApiError {
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }
}
