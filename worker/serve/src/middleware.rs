//! Request middleware: a request id (taken from `x-request-id` or generated) on a tracing span
//! and the response; per-route metrics (count by status, latency, in-flight); the model version
//! on routing answers; bearer auth.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tracing::Instrument;

use super::error::ApiError;
use super::mirror::MODEL_VERSION_HEADER;
use super::state::SharedState;

/// Header carrying the request id.
pub const REQUEST_ID: &str = "x-request-id";

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn new_request_id() -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    format!("{:012x}-{:06x}", nanos & 0xffff_ffff_ffff, COUNTER.fetch_add(1, Ordering::Relaxed) & 0xff_ffff)
}

/// A client id is kept only when short and plain (it ends up in logs).
fn accept_client_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Request id, span, metrics and an access log line.
pub async fn observe(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| accept_client_id(v))
        .map_or_else(new_request_id, str::to_string);
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().clone();
    let span = tracing::info_span!("request", request_id = %id, %method, route = %route);
    let metrics = state.metrics.clone();
    metrics.inflight.inc();
    let start = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status();
    let done = move || {
        let secs = start.elapsed().as_secs_f64();
        metrics.inflight.dec();
        metrics.requests.with_label_values(&[&route, status.as_str()]).inc();
        metrics.latency.with_label_values(&[&route]).observe(secs);
        span.in_scope(|| {
            tracing::info!(status = status.as_u16(), latency_ms = (secs * 1e3) as u64, "request done")
        });
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    let streamed = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !streamed {
        done();
        return resp;
    }
    // A stream (`stream: true`) is served when its last event is sent or its client went away,
    // not when its headers are: it is in flight and timed until its body is dropped.
    let guard = OnDrop(Some(done));
    let (parts, body) = resp.into_parts();
    let body = Body::from_stream(body.into_data_stream().map(move |frame| {
        guard.keep();
        frame
    }));
    Response::from_parts(parts, body)
}

/// `x-sapllm-model-version: <--model-version>` on every answer of `/v1/route` and
/// `/v1/route/batch` (errors included), so a caller (a mirroring server) knows which version
/// decided.
pub async fn model_version(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let routing = req
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| matches!(p.as_str(), "/v1/route" | "/v1/route/batch"));
    let mut resp = next.run(req).await;
    if routing && let Some(v) = state.model_version.as_deref().and_then(|v| HeaderValue::from_str(v).ok()) {
        resp.headers_mut().insert(MODEL_VERSION_HEADER, v);
    }
    resp
}

/// Runs its function when dropped.
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> OnDrop<F> {
    /// Makes a closure that calls it own the guard.
    fn keep(&self) {}
}

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// Bearer-token auth (when a token is configured).
pub async fn auth(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let Some(expected) = state.auth_token.as_deref() else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if constant_time_eq(t.trim().as_bytes(), expected.as_bytes()) => next.run(req).await,
        Some(_) => ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "invalid bearer token")
            .field("authorization")
            .into_response(),
        None => {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing `Authorization: Bearer <token>`")
                .field("authorization")
                .into_response()
        }
    }
}

/// Compares without an early exit on the first differing byte (no timing oracle on the token).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_client_ids_are_sanitised() {
        assert_ne!(new_request_id(), new_request_id());
        assert!(accept_client_id("abc-123"));
        assert!(!accept_client_id("a b"));
        assert!(!accept_client_id(&"x".repeat(65)));
        assert!(
            constant_time_eq(b"tok", b"tok")
                && !constant_time_eq(b"tok", b"tik")
                && !constant_time_eq(b"t", b"tt")
        );
    }
}
