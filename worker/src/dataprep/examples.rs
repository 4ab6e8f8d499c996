//! The JSONL record types data-prep writes. Field names are the dataset's contract with SFT,
//! evaluation and PPO: change them only together with those readers.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::sap::catalog::CompactSchema;
use crate::sap::exceptions::{ExceptionAction, PatchOp, RetryPolicy, SapFailure};
use crate::sap::rules::RuleOutcome;

/// A past case retrieved from the training split ("process memory").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimilarCase {
    pub doc_id: String,
    pub doc_type: String,
    /// Where that case was routed, and whether it went through.
    pub endpoint: String,
    pub success: bool,
    /// BM25 score of the match.
    pub score: f32,
    /// One line for the prompt: partner, reference, outcome.
    pub summary: String,
}

/// One routing example: `train/val/test_routing_examples.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingExample {
    pub doc_id: String,
    pub doc_type: String,
    /// The extracted document as the extraction system emitted it (noise included).
    pub adc_json: Value,
    /// The candidate APIs, compactly (the serving API first).
    pub api_schemas: Vec<CompactSchema>,
    pub similar_cases: Vec<SimilarCase>,
    /// `API_NAME/EntitySet`, or `EXCEPTION_HANDLING`.
    pub target_endpoint: String,
    /// The exact create body; `null` when the target is exception handling without a payload.
    pub target_payload: Value,
    /// Step-by-step reasoning, true to the decision.
    pub reasoning_trace: Vec<String>,
    /// Target confidence in [0, 1] (see `dataprep::confidence`).
    pub confidence: f64,
    /// What happened when this case was processed (from the log).
    pub success: bool,
    pub feedback: Value,
    /// Rule outcomes of the target payload that failed (passed ones are left out for size).
    #[serde(default)]
    pub rule_failures: Vec<RuleOutcome>,
}

/// One exception-handling example: `exception_examples.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExceptionExample {
    pub doc_id: String,
    pub doc_type: String,
    /// "train", "val" or "test": exceptions follow their document's split.
    pub split: String,
    pub adc_json: Value,
    pub endpoint: String,
    /// The request that failed (or would have been sent).
    pub request_payload: Value,
    /// SAP's answer; `None` when the document never reached SAP (blocked by rules).
    pub sap_error: Option<SapFailure>,
    /// Failed rules that blocked the document (incomplete documents).
    pub rule_failures: Vec<RuleOutcome>,
    pub action: ExceptionAction,
    pub correction: Vec<PatchOp>,
    pub retry: Option<RetryPolicy>,
    pub rule: Option<String>,
    pub reasoning_trace: Vec<String>,
}

/// One routing decision as a policy would output it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub endpoint: String,
    pub payload: Value,
    pub confidence: f64,
    /// Verifiable reward of this decision against the target.
    pub reward: f64,
}

/// A chosen/rejected pair: `preference_pairs.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferencePair {
    pub doc_id: String,
    pub doc_type: String,
    pub split: String,
    pub adc_json: Value,
    pub chosen: Decision,
    pub rejected: Decision,
    /// chosen.reward - rejected.reward (> 0).
    pub margin: f64,
    /// What makes the rejected one wrong (wrong_api, missing_credit_memo_flag, ...).
    pub rejection_kind: String,
}
