//! The API's errors: one JSON shape, and the mapping from the core's error codes to HTTP
//! statuses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use jobcast_protocol::ErrorCode;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(super) fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the broker is not answering",
        )
    }

    /// A standby (several brokers on one database): 503, naming the leader's HTTP
    /// address when it has one.
    pub(super) fn not_leader(leader: Option<jobcast_protocol::LeaderAddress>) -> Self {
        let message = match leader {
            Some(leader) if !leader.http.is_empty() => format!(
                "this broker is a standby; the leader (epoch {}) is at http://{}",
                leader.epoch, leader.http
            ),
            Some(leader) => format!(
                "this broker is a standby; the leader (epoch {}) is at {}",
                leader.epoch, leader.router
            ),
            None => "this broker is a standby and no broker leads right now; try again in a moment"
                .into(),
        };
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "not_leader", message)
    }

    pub(super) fn from_core(code: ErrorCode, message: String) -> Self {
        let (status, name) = match code {
            ErrorCode::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ErrorCode::Ambiguous => (StatusCode::CONFLICT, "ambiguous"),
            ErrorCode::BadRequest => (StatusCode::BAD_REQUEST, "bad_request"),
            ErrorCode::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            ErrorCode::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Self::new(status, name, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "error": self.message, "code": self.code })),
        )
            .into_response()
    }
}
