//! API errors: every failure a client can cause is a 4xx with a JSON body naming the field, and
//! server-side conditions map to 429/503/504 — handlers never panic and never answer 500 for
//! bad input.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use sapllm_engine::request::FieldError;

/// An error response: `{"error": {"code", "message", "field"?}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Seconds for `Retry-After` (429 / 503).
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), field: None, retry_after: None }
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 422: a well-formed request whose content is invalid (unknown document type, ...).
    pub fn invalid(e: FieldError) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", e.message).field(e.field)
    }

    /// 400: the body does not parse into the request type (malformed JSON, missing field).
    pub fn bad_request(e: FieldError) -> Self {
        let code = if e.field == "body" { "malformed_json" } else { "invalid_request" };
        ApiError::new(StatusCode::BAD_REQUEST, code, e.message).field(e.field)
    }

    pub fn queue_full(retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "queue_full",
                "the decision queue is full; retry later",
            )
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }

    pub fn timeout(ms: u64) -> Self {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!("no decision within the request timeout of {ms} ms"),
        )
    }

    /// 500 for a model failure (not caused by the input).
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "model_error", message)
    }
}

impl ApiError {
    fn body(&self) -> Body<'_> {
        Body { error: Inner { code: self.code, message: &self.message, field: self.field.as_deref() } }
    }

    /// The JSON body, `{"error": {"code", "message", "field"?}}` (also what a stream that fails
    /// after it started sends as its last event).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.body()).unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body())).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
