//! The decision types of the inference API: what `decide_routing` / `handle_exception` take and
//! return. These are the library's public contract with the CLI, the evaluator and the server;
//! the JSON the model itself writes is defined separately in [`super::format`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::examples::SimilarCase;
use crate::grounded::Ungrounded;
use sapllm_sap::catalog::CompactSchema;
use sapllm_sap::exceptions::{ExceptionAction, PatchOp, RetryPolicy, SapFailure};
use sapllm_sap::payload::FieldSource;
use sapllm_sap::rules::RuleOutcome;

/// One routing request: an extracted document, its type, the candidate APIs and retrieved
/// similar cases (what `RoutingExample` carries minus the targets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingQuery {
    pub adc_json: Value,
    pub doc_type: String,
    pub api_schemas: Vec<CompactSchema>,
    #[serde(default)]
    pub similar_cases: Vec<SimilarCase>,
}

/// How the final confidence was put together (see [`super::confidence`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ConfidenceParts {
    /// Model probability of the chosen option (endpoint or action) among the allowed ones,
    /// renormalised over exactly that set.
    pub choice_probability: f64,
    /// Geometric mean of the constrained per-token probability of the freely generated body
    /// tokens (payload / correction); 1 when the grammar forced every body token.
    pub body_certainty: f64,
    /// The confidence the model wrote in its answer, when the format has that field.
    pub generated: Option<f64>,
}

/// Token accounting of one decision (the forced-token saving is measured from these).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecodeStats {
    pub prompt_tokens: usize,
    /// Response tokens in total (prefix + sampled + forced).
    pub response_tokens: usize,
    /// Tokens picked by the model under the grammar mask.
    pub sampled_tokens: usize,
    /// Tokens the grammar forced (`compute_ff_tokens`), fed without sampling.
    pub forced_tokens: usize,
    /// Model forward calls spent on this decision's batch after the prompt prefill.
    pub forward_calls: usize,
    /// Prompt-lookup draft tokens proposed, and those the model agreed with (fed without a
    /// forward call of their own).
    pub draft_tokens: usize,
    pub accepted_draft_tokens: usize,
}

/// A routing decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingDecision {
    /// The document type, canonical (`purchase_order` for `PURCHASE_ORDER`).
    #[serde(default)]
    pub doc_type: String,
    /// One of the request's candidate endpoints, or `EXCEPTION_HANDLING`.
    pub endpoint: String,
    /// HTTP method of the call (`POST`); `None` for exception handling and read-only APIs.
    pub method: Option<String>,
    /// Entity set posted to; `None` when nothing is posted.
    pub entity_set: Option<String>,
    /// Create body, valid against the chosen API's JSON Schema; `null` when nothing is posted.
    /// Every value in it is grounded: see `provenance`.
    pub payload: Value,
    /// Where each payload value comes from (document path as sent, catalog default or declared
    /// derivation), one entry per property; empty when nothing is posted.
    #[serde(default)]
    pub provenance: Vec<FieldSource>,
    /// Keys of the document that no field took (kept in the prompt, not posted).
    #[serde(default)]
    pub unmapped_fields: Vec<String>,
    /// Candidates that could not be offered, and why (a required property the document lacks,
    /// an API the catalog does not know).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ungrounded: Vec<Ungrounded>,
    /// In [0, 1]; see [`super::confidence`] for the formula.
    pub confidence: f64,
    pub confidence_parts: ConfidenceParts,
    pub reasoning: Vec<String>,
    /// True when confidence fell below the threshold: the document goes to human review
    /// instead of being posted. `endpoint`/`payload` still hold what the model proposed.
    pub abstained: bool,
    /// Probability of every allowed endpoint (renormalised), best first.
    pub alternatives: Vec<(String, f64)>,
    pub stats: DecodeStats,
}

/// A retrieved similar past exception, for the prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimilarException {
    pub doc_type: String,
    /// SAP error code (`M7/360`) or the failed rule id.
    pub code: String,
    pub action: ExceptionAction,
    #[serde(default)]
    pub summary: String,
}

/// A failed (or unpostable) document: what `ExceptionExample` carries minus the targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExceptionQuery {
    pub doc_type: String,
    pub adc_json: Value,
    pub endpoint: String,
    pub request_payload: Value,
    #[serde(default)]
    pub sap_error: Option<SapFailure>,
    #[serde(default)]
    pub rule_failures: Vec<RuleOutcome>,
}

/// An exception-handling decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExceptionDecision {
    pub action: ExceptionAction,
    /// JSON-patch-like edits of the request body (AUTO_CORRECT / APPLY_RULE).
    pub correction: Vec<PatchOp>,
    pub retry: Option<RetryPolicy>,
    pub rule: Option<String>,
    pub reasoning: Vec<String>,
    pub confidence: f64,
    pub confidence_parts: ConfidenceParts,
    /// True below the threshold: a person handles it (as ESCALATE would).
    pub abstained: bool,
    pub alternatives: Vec<(String, f64)>,
    pub stats: DecodeStats,
}
