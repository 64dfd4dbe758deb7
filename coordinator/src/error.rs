//! The one error shape of the HTTP API: `{"error": code, "message": text}` with a 4xx/5xx
//! status (and `Retry-After` where waiting helps). Refusals of the rendezvous rules take their
//! status and code from the rulebook (`swarmstrap_wire::rules::Code`); the codes defined here
//! are the HTTP layer's own (authentication, routing, body limits, load shedding, storage).

use crate::store::StoreError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use swarmstrap_wire::rules::RuleError;
use swarmstrap_wire::ErrorBody;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs.max(1));
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token, or unknown cluster: send `Authorization: Bearer <cluster secret>`",
        )
    }

    pub fn not_found_route(method: &str, path: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route for {method} {path}; the API lives under /v1 (see openapi.yaml)"),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path} (see openapi.yaml)"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.to_string(),
            message: self.message,
        };
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<RuleError> for ApiError {
    /// The rulebook's one table: every refusal's status and wire spelling come from its
    /// `Code` (`swarmstrap_wire::rules`).
    fn from(e: RuleError) -> Self {
        let status =
            StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, e.code.as_str(), e.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Rule(e) => e.into(),
            StoreError::Storage(_) | StoreError::Closed => {
                tracing::error!(error = %e, "storage failure");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "the coordinator cannot reach its storage right now; retry with backoff",
                )
                .retry_after(1)
            }
        }
    }
}
