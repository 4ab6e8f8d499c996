//! `POST /v1/chat/completions`, OpenAI-compatible, so standard clients can talk to the model.
//!
//! A user message that is a routing request (`{"doc_type", "adc_json", ...}`) gets the routing
//! decision (constrained decoding, confidence, abstention) as the assistant's JSON content; any
//! other message is completed in the shared template (`### Instruction` from the system
//! message, `### Request` from the user message), constrained by `response_format` when it
//! asks for JSON (`json_object` or `json_schema`).
//!
//! `stream: true` answers with server-sent events in OpenAI's format: `chat.completion.chunk`
//! objects (the first with the role, then content deltas, then one with the `finish_reason`),
//! a usage chunk with no choices when `stream_options.include_usage` is set, and `data:
//! [DONE]`. A free completion streams its text as the model decodes it. A routing decision
//! arrives as one content delta: it is not the model's text but the decision made from it
//! (options scored, the payload grounded in the document, the confidence computed after the
//! last token), so no part of it is final before the whole is. The response starts with the
//! first text, so whatever fails before (full queue, timeout while queued, a prompt longer
//! than the context, a model error) has the same status and JSON error as `stream: false`;
//! what fails later (the request timeout passing mid-stream) is a last event `{"error": ...}`
//! with no `[DONE]`. A client that goes away stops the decoding, streamed or not (the model
//! thread sees the handler's reply receiver dropped at the next token).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::batcher::{Job, JobError};
use super::body::JsonBody;
use super::error::ApiError;
use super::routes::{enqueue, require_ready, submit};
use super::state::SharedState;
use sapllm_engine::chat::Completion;
use sapllm_engine::request::{FieldError, RouteRequest};
use sapllm_engine::template::ROUTING_INSTRUCTION;

#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, Deserialize)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub json_schema: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    /// A last chunk (no choices) carries the token usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// Completion tokens allowed when the client sets none.
const DEFAULT_MAX_TOKENS: usize = 256;

fn invalid(field: &str, msg: &str) -> ApiError {
    ApiError::invalid(FieldError::new(field, msg))
}

/// The prompt in the shared template's layout (`sapllm_engine::template`) for free-form messages.
fn chat_prompt(system: Option<&str>, user: &str) -> String {
    format!("### Instruction\n{}\n### Request\n{user}\n### Response\n", system.unwrap_or(ROUTING_INSTRUCTION))
}

fn completion(
    state: &SharedState,
    content: String,
    prompt_tokens: usize,
    completion_tokens: usize,
    finish: &str,
) -> Json<Value> {
    let created = unix_now();
    Json(json!({
        "id": format!("chatcmpl-{created:x}{completion_tokens:x}"),
        "object": "chat.completion",
        "created": created,
        "model": state.model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    }))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The chunks of one streamed answer (OpenAI's `chat.completion.chunk`).
struct Chunks {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl Chunks {
    fn new(model: &str, include_usage: bool) -> Self {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Chunks {
            id: format!("chatcmpl-{nanos:x}{:x}", SEQ.fetch_add(1, Ordering::Relaxed)),
            created: unix_now(),
            model: model.to_string(),
            include_usage,
        }
    }

    fn chunk(&self, choices: Value, usage: Option<Value>) -> Event {
        let mut c = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if self.include_usage {
            // As OpenAI does: `usage` on every chunk, null but on the last.
            c["usage"] = usage.unwrap_or(Value::Null);
        }
        Event::default().data(c.to_string())
    }

    fn delta(&self, delta: Value, finish: Option<&str>) -> Event {
        self.chunk(json!([{"index": 0, "delta": delta, "finish_reason": finish}]), None)
    }

    /// The first chunk: the role.
    fn role(&self) -> Event {
        self.delta(json!({"role": "assistant", "content": ""}), None)
    }

    fn content(&self, text: &str) -> Event {
        self.delta(json!({"content": text}), None)
    }

    /// The finish reason, the usage when asked for, `[DONE]`.
    fn end(&self, prompt_tokens: usize, completion_tokens: usize, finish: &str) -> Vec<Event> {
        let mut events = vec![self.delta(json!({}), Some(finish))];
        if self.include_usage {
            let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
            events.push(self.chunk(json!([]), Some(usage)));
        }
        events.push(Event::default().data("[DONE]"));
        events
    }

    /// A failure after the stream started: the last event.
    fn error(e: &ApiError) -> Event {
        Event::default().data(e.to_json().to_string())
    }
}

/// A `text/event-stream` response of `events`.
fn sse(events: impl futures_util::Stream<Item = Event> + Send + 'static) -> Response {
    use futures_util::StreamExt;
    let sse = Sse::new(events.map(Ok::<_, Infallible>)).keep_alive(KeepAlive::default());
    // Proxies that buffer responses (nginx) would hold the events back.
    ([("x-accel-buffering", "no")], sse).into_response()
}

/// A whole answer as a stream: role, the content as one delta, the end.
fn sse_whole(
    chunks: Chunks,
    text: &str,
    prompt_tokens: usize,
    completion_tokens: usize,
    finish: &str,
) -> Response {
    let mut events = vec![chunks.role()];
    if !text.is_empty() {
        events.push(chunks.content(text));
    }
    events.extend(chunks.end(prompt_tokens, completion_tokens, finish));
    sse(futures_util::stream::iter(events))
}

/// What the model thread sent for a streamed completion.
enum Next {
    Text(String),
    Done(Result<Result<Completion, JobError>, oneshot::error::RecvError>),
    /// The request timeout passed.
    Late,
}

/// The receiving side of a streamed completion.
struct Live {
    deltas: mpsc::UnboundedReceiver<String>,
    reply: oneshot::Receiver<Result<Completion, JobError>>,
    /// The answer, once it came (deltas sent before it may still be in the channel).
    answer: Option<Result<Result<Completion, JobError>, oneshot::error::RecvError>>,
    deadline: Instant,
}

impl Live {
    /// The next delta; the answer once every delta is taken; `Late` at the deadline.
    async fn next(&mut self) -> Next {
        loop {
            if let Some(answer) = self.answer.take() {
                return match self.deltas.try_recv() {
                    Ok(d) => {
                        self.answer = Some(answer);
                        Next::Text(d)
                    }
                    Err(_) => Next::Done(answer),
                };
            }
            let (deltas, reply) = (&mut self.deltas, &mut self.reply);
            let got = tokio::time::timeout_at(self.deadline.into(), async {
                tokio::select! {
                    biased;
                    Some(d) = deltas.recv() => Ok(d),
                    r = reply => Err(r),
                }
            })
            .await;
            match got {
                Err(_) => return Next::Late,
                Ok(Ok(d)) => return Next::Text(d),
                Ok(Err(r)) => self.answer = Some(r),
            }
        }
    }
}

/// The error a failed completion answers with (`field`: the message a too-long prompt is in).
fn completion_error(e: JobError, timeout_ms: u64, field: &str) -> ApiError {
    match e {
        JobError::Expired => ApiError::timeout(timeout_ms),
        JobError::Model(m) if m.contains("context") => invalid(field, &m),
        JobError::Model(m) => ApiError::internal(m),
    }
}

/// A free completion as a stream of its text as it is decoded.
async fn stream_completion(
    state: &SharedState,
    chunks: Chunks,
    make: impl FnOnce(
        Instant,
        oneshot::Sender<Result<Completion, JobError>>,
        mpsc::UnboundedSender<String>,
    ) -> Job,
    field: String,
) -> Result<Response, ApiError> {
    let ms = state.request_timeout.as_millis() as u64;
    let (tx, deltas) = mpsc::unbounded_channel();
    let (deadline, reply) = enqueue(state, |deadline, reply| make(deadline, reply, tx))?;
    let mut live = Live { deltas, reply, answer: None, deadline };
    let answer = move |r: Result<Result<Completion, JobError>, oneshot::error::RecvError>| {
        r.map_err(|_| ApiError::unavailable("the model thread stopped"))?
            .map_err(|e| completion_error(e, ms, &field))
    };
    // Nothing is sent before the first text: a failure until then is an ordinary error response.
    let first = match live.next().await {
        Next::Text(t) => t,
        Next::Done(r) => {
            let c = answer(r)?;
            return Ok(sse_whole(chunks, &c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason));
        }
        Next::Late => return Err(ApiError::timeout(ms)),
    };
    let pending = VecDeque::from([chunks.role(), chunks.content(&first)]);
    let events = futures_util::stream::unfold(
        (live, chunks, pending, false, answer),
        move |(mut live, chunks, mut pending, mut ended, answer)| async move {
            loop {
                if let Some(e) = pending.pop_front() {
                    return Some((e, (live, chunks, pending, ended, answer)));
                }
                if ended {
                    return None;
                }
                match live.next().await {
                    Next::Text(t) => pending.push_back(chunks.content(&t)),
                    Next::Done(r) => {
                        ended = true;
                        match answer(r) {
                            Ok(c) => pending.extend(chunks.end(
                                c.prompt_tokens,
                                c.completion_tokens,
                                c.finish_reason,
                            )),
                            Err(e) => pending.push_back(Chunks::error(&e)),
                        }
                    }
                    Next::Late => {
                        ended = true;
                        pending.push_back(Chunks::error(&ApiError::timeout(ms)));
                    }
                }
            }
        },
    );
    Ok(sse(events))
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<SharedState>,
    JsonBody(req): JsonBody<ChatRequest>,
) -> Result<Response, ApiError> {
    require_ready(&state)?;
    if let Some(m) = &req.model
        && m != &state.model_name
    {
        return Err(invalid(
            "model",
            &format!("unknown model {m:?}; this server serves {:?}", state.model_name),
        ));
    }
    let Some(last) = req.messages.last() else {
        return Err(invalid("messages", "must hold at least one message"));
    };
    if last.role != "user" {
        return Err(invalid(
            &format!("messages[{}].role", req.messages.len() - 1),
            "the last message must be from the user",
        ));
    }
    if let Some(t) = req.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(invalid("temperature", "must be in [0, 2]"));
    }
    if req.stream_options.is_some() && !req.stream {
        return Err(invalid("stream_options", "only allowed with stream=true"));
    }
    let chunks = Chunks::new(&state.model_name, req.stream_options.as_ref().is_some_and(|o| o.include_usage));
    let ms = state.request_timeout.as_millis() as u64;
    let as_route: Option<RouteRequest> = serde_json::from_str::<Value>(&last.content)
        .ok()
        .filter(|v| v.get("doc_type").is_some() && v.get("adc_json").is_some())
        .and_then(|v| serde_json::from_value(v).ok());
    if let Some(r) = as_route {
        let field = format!("messages[{}].content.", req.messages.len() - 1);
        let q = r.into_query(&state.catalog, &field).map_err(ApiError::invalid)?;
        let doc = super::routes::document_of(&state, &q, false);
        let answers =
            submit(&state, |deadline, reply| Job::Route { queries: vec![q], deadline, reply }).await?;
        let d = match answers
            .map_err(|e| match e {
                JobError::Expired => ApiError::timeout(ms),
                JobError::Model(m) => ApiError::internal(m),
            })?
            .pop()
        {
            Some(Ok(d)) => d,
            Some(Err(e)) => return Err(ApiError::internal(e)),
            None => return Err(ApiError::internal("no decision")),
        };
        let stats = d.stats;
        // Like /v1/route: the decision carries the id feedback refers to.
        let d = super::routes::decided(&state, doc, d);
        let content = serde_json::to_string(&d).map_err(|e| ApiError::internal(e.to_string()))?;
        if req.stream {
            // The decision is made whole (see the module's doc): one content delta.
            return Ok(sse_whole(chunks, &content, stats.prompt_tokens, stats.response_tokens, "stop"));
        }
        return Ok(
            completion(&state, content, stats.prompt_tokens, stats.response_tokens, "stop").into_response()
        );
    }
    let system = req.messages.iter().find(|m| m.role == "system").map(|m| m.content.as_str());
    let schema = match &req.response_format {
        None => None,
        Some(f) => match f.kind.as_str() {
            "text" => None,
            "json_object" => Some(json!({"type": "object"})),
            "json_schema" => {
                Some(f.json_schema.as_ref().and_then(|s| s.get("schema").cloned()).ok_or_else(|| {
                    invalid("response_format.json_schema.schema", "a JSON Schema is required")
                })?)
            }
            other => {
                return Err(invalid("response_format.type", &format!("unknown response format {other:?}")));
            }
        },
    };
    let prompt = chat_prompt(system, &last.content);
    let max_tokens = req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS).clamp(1, 4096);
    let temperature = req.temperature.unwrap_or(0.0);
    let field = format!("messages[{}].content", req.messages.len() - 1);
    if req.stream {
        return stream_completion(
            &state,
            chunks,
            |deadline, reply, tx| Job::Complete {
                prompt,
                max_tokens,
                temperature,
                schema,
                deadline,
                reply,
                stream: Some(tx),
            },
            field,
        )
        .await;
    }
    let c = submit(&state, |deadline, reply| Job::Complete {
        prompt,
        max_tokens,
        temperature,
        schema,
        deadline,
        reply,
        stream: None,
    })
    .await?
    .map_err(|e| completion_error(e, ms, &field))?;
    Ok(completion(&state, c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason).into_response())
}
