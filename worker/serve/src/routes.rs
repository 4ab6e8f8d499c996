//! The HTTP handlers: routing, batch routing, exceptions, models, health, readiness, metrics.

use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::batcher::{Answers, Job, JobError, QueueError};
use super::body::JsonBody;
use super::error::ApiError;
use super::feedback::{StoredDecision, new_decision_id};
use super::mirror::{Answer, Api, Mirror, is_mirror};
use super::state::{Phase, SharedState};
use sapllm_engine::request::{ExceptionRequest, FieldError, RouteBatchRequest, RouteRequest};
use sapllm_engine::types::{ExceptionDecision, RoutingDecision, RoutingQuery};

/// 503 unless the model is ready.
pub fn require_ready(state: &SharedState) -> Result<(), ApiError> {
    match &*state.phase.borrow() {
        Phase::Ready(_) => Ok(()),
        Phase::Loading => Err(ApiError::unavailable("the model is still loading")),
        Phase::Failed(e) => Err(ApiError::unavailable(format!("the model failed to load: {e}"))),
    }
}

/// Queues a job without waiting for it (429 when the queue is full): the job's deadline (the
/// request timeout from now) and the receiver of its answer.
pub fn enqueue<T>(
    state: &SharedState,
    make: impl FnOnce(Instant, oneshot::Sender<T>) -> Job,
) -> Result<(Instant, oneshot::Receiver<T>), ApiError> {
    // No draining check here: a request that reached a handler was accepted before shutdown
    // began, and graceful shutdown promises to finish it (hyper stops reading new requests from
    // connections once draining, so nothing new gets this far). Refusing here turned accepted
    // requests into 503s when SIGTERM raced their body parsing.
    let deadline = Instant::now() + state.request_timeout;
    let (tx, rx) = oneshot::channel();
    match state.queue.submit(make(deadline, tx)) {
        Ok(()) => Ok((deadline, rx)),
        Err(QueueError::Full) => Err(ApiError::queue_full(state.retry_after_s)),
        Err(QueueError::Closed) => Err(ApiError::unavailable("the model thread stopped")),
    }
}

/// Submits a job and waits for its answer within the request timeout.
pub async fn submit<T>(
    state: &SharedState,
    make: impl FnOnce(Instant, oneshot::Sender<T>) -> Job,
) -> Result<T, ApiError> {
    let (deadline, rx) = enqueue(state, make)?;
    let ms = state.request_timeout.as_millis() as u64;
    match tokio::time::timeout_at(deadline.into(), rx).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(ApiError::unavailable("the model thread stopped")),
        Err(_) => Err(ApiError::timeout(ms)),
    }
}

fn job_error(e: JobError, timeout_ms: u64) -> ApiError {
    match e {
        JobError::Expired => ApiError::timeout(timeout_ms),
        JobError::Model(m) => ApiError::internal(m),
    }
}

fn single<T>(answers: Answers<T>, timeout_ms: u64) -> Result<T, ApiError> {
    let mut v = answers.map_err(|e| job_error(e, timeout_ms))?;
    match v.pop() {
        Some(Ok(d)) => Ok(d),
        Some(Err(e)) => Err(item_error(e)),
        None => Err(ApiError::internal("no decision")),
    }
}

/// A per-item failure: input-caused ones (prompt too long, unknown type) are 422s.
fn item_error(e: String) -> ApiError {
    if e.starts_with("doc_type") || e.starts_with("adc_json") {
        let (field, msg) = e.split_once(": ").unwrap_or(("body", &e));
        ApiError::invalid(FieldError::new(field, msg))
    } else if e.contains("prompt is") && e.contains("context") {
        ApiError::invalid(FieldError::new("adc_json", e))
    } else {
        ApiError::internal(e)
    }
}

/// A routing decision as answered: with the `decision_id` feedback refers to.
#[derive(Serialize)]
pub struct Decided {
    pub decision_id: String,
    #[serde(flatten)]
    pub decision: RoutingDecision,
}

/// Gives a decision its id and, when feedback is enabled, keeps it with its document.
pub(crate) fn decided(
    state: &SharedState,
    doc: Option<(String, Value)>,
    decision: RoutingDecision,
) -> Decided {
    let decision_id = state.feedback.as_ref().map_or_else(new_decision_id, |f| f.new_decision_id());
    if let (Some(fb), Some((doc_type, adc_json))) = (&state.feedback, doc) {
        fb.store.insert(
            decision_id.clone(),
            StoredDecision {
                doc_type,
                adc_json,
                endpoint: decision.endpoint.clone(),
                payload: decision.payload.clone(),
            },
        );
    }
    Decided { decision_id, decision }
}

/// The document of a query, kept only when feedback is enabled and the request is not a mirror
/// (whose decision id no client ever sees).
pub(crate) fn document_of(state: &SharedState, q: &RoutingQuery, mirrored: bool) -> Option<(String, Value)> {
    state.feedback.as_ref().filter(|_| !mirrored).map(|_| (q.doc_type.clone(), q.adc_json.clone()))
}

/// Whether to mirror a request (`--mirror-to`, sampled, not itself a mirror): the mirror and the
/// request as JSON.
fn mirror_of<T: Serialize>(state: &SharedState, mirrored: bool, req: &T) -> Option<(Arc<Mirror>, Bytes)> {
    let m = state.mirror.as_ref().filter(|m| !mirrored && m.sample())?;
    let body = serde_json::to_vec(req).ok()?;
    Some((m.clone(), Bytes::from(body)))
}

/// `POST /v1/route`.
pub async fn route(
    State(state): State<SharedState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<RouteRequest>,
) -> Result<Json<Decided>, ApiError> {
    require_ready(&state)?;
    let mirrored = is_mirror(&headers);
    let mirror = mirror_of(&state, mirrored, &req);
    let q = req.into_query(&state.catalog, "").map_err(ApiError::invalid)?;
    let doc = document_of(&state, &q, mirrored);
    let ms = state.request_timeout.as_millis() as u64;
    let answers = submit(&state, |deadline, reply| Job::Route { queries: vec![q], deadline, reply }).await?;
    let d = decided(&state, doc, single(answers, ms)?);
    if let Some((m, body)) = mirror {
        m.send(Api::Route, body, vec![Some(Answer::of(&d.decision))]);
    }
    Ok(Json(d))
}

#[derive(Serialize)]
struct BatchItem {
    #[serde(skip_serializing_if = "Option::is_none")]
    decision: Option<Decided>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Value>,
}

/// `POST /v1/route/batch`: every document is validated first (a bad one fails the request with
/// its index in the field name); decode failures are reported per item.
pub async fn route_batch(
    State(state): State<SharedState>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<RouteBatchRequest>,
) -> Result<Response, ApiError> {
    require_ready(&state)?;
    let mirrored = is_mirror(&headers);
    if req.requests.is_empty() {
        return Err(ApiError::invalid(FieldError::new("requests", "must hold at least one request")));
    }
    if req.requests.len() > state.max_batch_request {
        return Err(ApiError::invalid(FieldError::new(
            "requests",
            format!("at most {} requests per batch", state.max_batch_request),
        )));
    }
    let mirror = mirror_of(&state, mirrored, &req);
    let mut queries = Vec::with_capacity(req.requests.len());
    for (i, r) in req.requests.into_iter().enumerate() {
        queries.push(r.into_query(&state.catalog, &format!("requests[{i}].")).map_err(ApiError::invalid)?);
    }
    let docs: Vec<Option<(String, Value)>> =
        queries.iter().map(|q| document_of(&state, q, mirrored)).collect();
    let ms = state.request_timeout.as_millis() as u64;
    let answers = submit(&state, |deadline, reply| Job::Route { queries, deadline, reply }).await?;
    let items: Vec<BatchItem> = answers
        .map_err(|e| job_error(e, ms))?
        .into_iter()
        .zip(docs)
        .map(|(d, doc)| match d {
            Ok(d) => BatchItem { decision: Some(decided(&state, doc, d)), error: None },
            Err(e) => BatchItem { decision: None, error: Some(json!({"message": e})) },
        })
        .collect();
    if let Some((m, body)) = mirror {
        let ours = items.iter().map(|i| i.decision.as_ref().map(|d| Answer::of(&d.decision))).collect();
        m.send(Api::Batch, body, ours);
    }
    Ok(Json(json!({"decisions": items})).into_response())
}

/// `POST /v1/exceptions`.
pub async fn exceptions(
    State(state): State<SharedState>,
    JsonBody(req): JsonBody<ExceptionRequest>,
) -> Result<Json<ExceptionDecision>, ApiError> {
    require_ready(&state)?;
    let item = req.into_query().map_err(ApiError::invalid)?;
    let ms = state.request_timeout.as_millis() as u64;
    let answers =
        submit(&state, |deadline, reply| Job::Exception { items: vec![item], deadline, reply }).await?;
    single(answers, ms).map(Json)
}

/// `GET /v1/models` (OpenAI's list shape plus the base/adapter/precision in use).
pub async fn models(State(state): State<SharedState>) -> Result<Json<Value>, ApiError> {
    require_ready(&state)?;
    let info = state.model_info().ok_or_else(|| ApiError::unavailable("the model is not loaded"))?;
    let mut models = json!({
        "object": "list",
        "data": [{
            "id": state.model_name,
            "object": "model",
            "owned_by": "sapllm",
            "base": info.base,
            "adapter": info.adapter,
            "adapter_version": info.adapter_version,
            "precision": info.precision,
            "parameters": info.parameters,
            "device": info.device,
        }]
    });
    if let Some(v) = &state.model_version {
        models["data"][0]["version"] = json!(v);
    }
    Ok(Json(models))
}

/// `GET /healthz`: the process serves HTTP.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: 200 only after load + warm-up, and not while draining.
pub async fn readyz(State(state): State<SharedState>) -> Response {
    if state.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "draining"}))).into_response();
    }
    match &*state.phase.borrow() {
        Phase::Ready(_) => (StatusCode::OK, Json(json!({"status": "ready"}))).into_response(),
        Phase::Loading => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "loading"}))).into_response()
        }
        Phase::Failed(e) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "failed", "error": e}))).into_response()
        }
    }
}

/// `GET /metrics`.
pub async fn metrics(State(state): State<SharedState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

/// Unknown paths: a JSON 404 like every other error.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}
