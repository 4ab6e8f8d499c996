//! `POST /v1/chat/completions`, OpenAI-compatible, so standard clients can talk to the model.
//!
//! A user message that is a routing request (`{"doc_type", "adc_json", ...}`) gets the routing
//! decision (constrained decoding, confidence, abstention) as the assistant's JSON content; any
//! other message is completed in the shared template (`### Instruction` from the system
//! message, `### Request` from the user message), constrained by `response_format` when it
//! asks for JSON (`json_object` or `json_schema`). Streaming is not offered.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::batcher::{Job, JobError};
use super::body::JsonBody;
use super::error::ApiError;
use super::routes::{require_ready, submit};
use super::state::SharedState;
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
    let created =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Json(json!({
        "id": format!("chatcmpl-{created:x}{completion_tokens:x}"),
        "object": "chat.completion",
        "created": created,
        "model": state.model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    }))
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<SharedState>,
    JsonBody(req): JsonBody<ChatRequest>,
) -> Result<Json<Value>, ApiError> {
    require_ready(&state)?;
    if req.stream {
        return Err(invalid("stream", "streaming is not supported; send stream=false"));
    }
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
    let ms = state.request_timeout.as_millis() as u64;
    let as_route: Option<RouteRequest> = serde_json::from_str::<Value>(&last.content)
        .ok()
        .filter(|v| v.get("doc_type").is_some() && v.get("adc_json").is_some())
        .and_then(|v| serde_json::from_value(v).ok());
    if let Some(r) = as_route {
        let field = format!("messages[{}].content.", req.messages.len() - 1);
        let q = r.into_query(&state.catalog, &field).map_err(ApiError::invalid)?;
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
        let content = serde_json::to_string(&d).map_err(|e| ApiError::internal(e.to_string()))?;
        let stats = d.stats;
        return Ok(completion(&state, content, stats.prompt_tokens, stats.response_tokens, "stop"));
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
    let c = submit(&state, |deadline, reply| Job::Complete {
        prompt,
        max_tokens,
        temperature,
        schema,
        deadline,
        reply,
    })
    .await?
    .map_err(|e| match e {
        JobError::Expired => ApiError::timeout(ms),
        JobError::Model(m) if m.contains("context") => {
            invalid(&format!("messages[{}].content", req.messages.len() - 1), &m)
        }
        JobError::Model(m) => ApiError::internal(m),
    })?;
    Ok(completion(&state, c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason))
}
