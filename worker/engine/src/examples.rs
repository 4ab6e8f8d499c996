//! The JSONL record types data-prep writes. Field names are the dataset's contract with SFT,
//! evaluation and PPO: change them only together with those readers.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use sapllm_sap::catalog::CompactSchema;
use sapllm_sap::exceptions::{ExceptionAction, PatchOp, RetryPolicy, SapFailure};
use sapllm_sap::rules::RuleOutcome;

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

/// Borrowed mirrors of the records, for writing without cloning documents and payloads. They
/// serialise to exactly the owned types' JSON (a test holds them together).
pub mod out {
    use serde::Serialize;
    use serde_json::Value;

    use super::SimilarCase;
    use sapllm_sap::catalog::CompactSchema;
    use sapllm_sap::rules::RuleOutcome;

    #[derive(Serialize)]
    pub struct RoutingExampleRef<'a> {
        pub doc_id: &'a str,
        pub doc_type: &'a str,
        pub adc_json: &'a Value,
        pub api_schemas: &'a [CompactSchema],
        pub similar_cases: &'a [SimilarCase],
        pub target_endpoint: &'a str,
        pub target_payload: &'a Value,
        pub reasoning_trace: &'a [String],
        pub confidence: f64,
        pub success: bool,
        pub feedback: &'a Value,
        pub rule_failures: &'a [RuleOutcome],
    }

    #[derive(Serialize)]
    pub struct DecisionRef<'a> {
        pub endpoint: &'a str,
        pub payload: &'a Value,
        pub confidence: f64,
        pub reward: f64,
    }

    #[derive(Serialize)]
    pub struct PreferencePairRef<'a> {
        pub doc_id: &'a str,
        pub doc_type: &'a str,
        pub split: &'a str,
        pub adc_json: &'a Value,
        pub chosen: DecisionRef<'a>,
        pub rejected: DecisionRef<'a>,
        pub margin: f64,
        pub rejection_kind: &'a str,
    }
}

#[cfg(test)]
mod tests {
    use super::out::*;
    use super::*;
    use serde_json::json;

    #[test]
    fn borrowed_records_serialise_exactly_like_the_owned_ones() {
        let owned = RoutingExample {
            doc_id: "D1".into(),
            doc_type: "supplier_invoice".into(),
            adc_json: json!({"invoice_number": "R1"}),
            api_schemas: vec![],
            similar_cases: vec![SimilarCase {
                doc_id: "D0".into(),
                doc_type: "supplier_invoice".into(),
                endpoint: "E".into(),
                success: true,
                score: 1.5,
                summary: "s".into(),
            }],
            target_endpoint: "E".into(),
            target_payload: json!({"A": "1"}),
            reasoning_trace: vec!["step".into()],
            confidence: 0.9,
            success: false,
            feedback: json!({"x": 1}),
            rule_failures: vec![],
        };
        let r = RoutingExampleRef {
            doc_id: &owned.doc_id,
            doc_type: &owned.doc_type,
            adc_json: &owned.adc_json,
            api_schemas: &owned.api_schemas,
            similar_cases: &owned.similar_cases,
            target_endpoint: &owned.target_endpoint,
            target_payload: &owned.target_payload,
            reasoning_trace: &owned.reasoning_trace,
            confidence: owned.confidence,
            success: owned.success,
            feedback: &owned.feedback,
            rule_failures: &owned.rule_failures,
        };
        assert_eq!(serde_json::to_string(&r).unwrap(), serde_json::to_string(&owned).unwrap());

        let d = |e: &str, r: f64| Decision {
            endpoint: e.into(),
            payload: json!({"P": 1}),
            confidence: 0.8,
            reward: r,
        };
        let pair = PreferencePair {
            doc_id: "D1".into(),
            doc_type: "t".into(),
            split: "train".into(),
            adc_json: json!({}),
            chosen: d("A", 1.0),
            rejected: d("B", -0.5),
            margin: 1.5,
            rejection_kind: "wrong_api".into(),
        };
        fn dr(x: &Decision) -> DecisionRef<'_> {
            DecisionRef {
                endpoint: &x.endpoint,
                payload: &x.payload,
                confidence: x.confidence,
                reward: x.reward,
            }
        }
        let pr = PreferencePairRef {
            doc_id: &pair.doc_id,
            doc_type: &pair.doc_type,
            split: &pair.split,
            adc_json: &pair.adc_json,
            chosen: dr(&pair.chosen),
            rejected: dr(&pair.rejected),
            margin: pair.margin,
            rejection_kind: &pair.rejection_kind,
        };
        assert_eq!(serde_json::to_string(&pr).unwrap(), serde_json::to_string(&pair).unwrap());
    }
}
