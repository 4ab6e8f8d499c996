//! What the model reads and writes: the JSON inside the shared template's `### Request` /
//! `### Exception` sections and the `### Response` JSON. SFT builds its targets with
//! [`routing_training_pair`] / [`exception_training_pair`] and serving builds prompts with
//! [`routing_prompt`] / [`exception_prompt`], so both sides see byte-identical text.
//!
//! The answer puts the choice FIRST (`endpoint` / `action`), then the body, then the reasoning:
//! the decoder scores every allowed option at that first position (the calibrated part of the
//! confidence, see `confidence.rs`), and the grammar for the rest depends on the choice.
//! Payload keys are written in the API schema's property order ([`canonical_payload`]) because
//! the constrained decoder emits properties in that order.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::profile::PromptProfile;
use super::types::{ExceptionQuery, RoutingQuery, SimilarException};
use crate::examples::{ExceptionExample, RoutingExample};
use crate::template;
use sapllm_sap::catalog::Catalog;
use sapllm_sap::catalog::create_payload_schema;
use sapllm_sap::exceptions::{ExceptionAction, PatchOp, RetryPolicy, SapFailure};
use sapllm_sap::routing::EXCEPTION_ENDPOINT;

/// Reasoning steps kept in an answer (longer traces are cut: they cost decode time, and the
/// first two, the document type with its evidence and why the chosen API serves it while the
/// other candidates do not, carry the decision's grounds; the rest restate the payload).
pub const MAX_REASONING_STEPS: usize = 2;
/// Characters kept per reasoning step.
pub const MAX_REASONING_CHARS: usize = 160;

/// One candidate API as the prompt shows it: its endpoint and (when the prompt carries
/// schemas) its compact schema. The document types it serves are not shown: the answer starts
/// with the request's type (`{"doc_type":"X","endpoint":"`, forced), so the endpoint follows
/// the type it depends on with three tokens between (each type and endpoint is one token in a
/// tokenizer trained for the catalog, see `PretrainConfig::domain_tokens`): about the
/// shortest dependency there is for a small model to learn. Listing every candidate's types put the same type names
/// a few tokens earlier and gave a small model nothing but ambiguity (measured: sales orders
/// and quotations got the same 0.63 / 0.32 split whatever the request's type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptCandidate {
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub schema: String,
}

/// One similar case as the prompt shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptCase {
    pub endpoint: String,
    pub success: bool,
    pub summary: String,
}

/// The `### Request` JSON of a routing prompt. Field order is deliberate: the document type is
/// written LAST, next to the answer whose first choice (the endpoint) depends on it most, and
/// the candidates just before it; a small model attends to near tokens far more reliably.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingPrompt {
    pub document: Value,
    pub similar: Vec<PromptCase>,
    pub candidates: Vec<PromptCandidate>,
    /// The validator's blocking findings ([`sapllm_sap::preflight`]), when the prompt profile
    /// shows them; left out of the text entirely when it does not (older models' prompts are
    /// unchanged). Next to the type and the answer: they decide between posting and exception
    /// handling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<String>>,
    pub doc_type: String,
}

/// The `### Response` JSON of a routing decision. Field order is the generation order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingAnswer {
    /// The request's document type, echoed (the decoder writes it as part of the prefix every
    /// option shares; see [`PromptCandidate`]).
    pub doc_type: String,
    pub endpoint: String,
    /// `null` for exception handling and read-only APIs.
    pub payload: Value,
    pub reasoning: Vec<String>,
    pub confidence: f64,
}

/// The `### Request` JSON of an exception prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExceptionRequestPart {
    pub doc_type: String,
    pub endpoint: String,
    pub document: Value,
    pub payload: Value,
}

/// A failed rule as the prompt shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptRule {
    pub rule_id: String,
    pub field: String,
    pub message: String,
}

/// The `### Exception` JSON of an exception prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExceptionPart {
    pub sap_error: Option<SapFailure>,
    pub rule_failures: Vec<PromptRule>,
    pub similar: Vec<SimilarException>,
    /// The handlings the failure admits ([`sapllm_sap::exceptions::admissible`]), in the fixed
    /// order of [`ExceptionAction::ALL`] (no cue in the order): the decoder offers these only,
    /// and whether a correction could be derived is a fact the model should read, not guess.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admissible: Vec<ExceptionAction>,
}

/// The `### Response` JSON of an exception decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExceptionAnswer {
    pub action: ExceptionAction,
    pub correction: Vec<PatchOp>,
    pub retry: Option<RetryPolicy>,
    pub rule: Option<String>,
    pub reasoning: Vec<String>,
}

/// The routing prompt text (shared template) for a query, with the pre-flight findings
/// `checks` when the model's profile shows them ([`PromptProfile::checks`]).
pub fn routing_prompt(q: &RoutingQuery, checks: Option<Vec<String>>) -> Result<String> {
    let prompt = RoutingPrompt {
        document: q.adc_json.clone(),
        similar: q
            .similar_cases
            .iter()
            .map(|c| PromptCase {
                endpoint: c.endpoint.clone(),
                success: c.success,
                summary: c.summary.clone(),
            })
            .collect(),
        candidates: q
            .api_schemas
            .iter()
            .map(|c| PromptCandidate { endpoint: c.endpoint.clone(), schema: c.schema.clone() })
            .collect(),
        checks,
        doc_type: q.doc_type.clone(),
    };
    template::routing_prompt(&prompt)
}

/// The exception prompt text (shared template) for a query.
pub fn exception_prompt(q: &ExceptionQuery, similar: &[SimilarException]) -> Result<String> {
    let request = ExceptionRequestPart {
        doc_type: q.doc_type.clone(),
        endpoint: q.endpoint.clone(),
        document: q.adc_json.clone(),
        payload: q.request_payload.clone(),
    };
    let exception = ExceptionPart {
        sap_error: q.sap_error.clone(),
        rule_failures: q
            .rule_failures
            .iter()
            .filter(|r| !r.passed)
            .map(|r| PromptRule {
                rule_id: r.rule_id.clone(),
                field: r.field.clone(),
                message: r.message.clone(),
            })
            .collect(),
        similar: similar.to_vec(),
        admissible: admissible_actions(q),
    };
    template::exception_prompt(&request, &exception)
}

/// The actions `q`'s failure admits, in [`ExceptionAction::ALL`] order.
pub fn admissible_actions(q: &ExceptionQuery) -> Vec<ExceptionAction> {
    let blocking: Vec<_> = q.rule_failures.iter().filter(|o| o.is_blocking()).cloned().collect();
    let handlings = sapllm_sap::exceptions::admissible(q.sap_error.as_ref(), &blocking, &q.request_payload);
    ExceptionAction::ALL.into_iter().filter(|a| handlings.iter().any(|h| h.action == *a)).collect()
}

/// Reasoning cut to what the grammar allows (and char-boundary safe).
pub fn clip_reasoning(steps: &[String]) -> Vec<String> {
    steps.iter().take(MAX_REASONING_STEPS).map(|s| s.chars().take(MAX_REASONING_CHARS).collect()).collect()
}

/// Rounds a confidence to two decimals (what the model learns to write: fewer digit tokens).
pub fn round_confidence(c: f64) -> f64 {
    (c.clamp(0.0, 1.0) * 100.0).round() / 100.0
}

/// Re-orders every object of `payload` to the property order of `schema` (recursively through
/// nested objects and `{"results": [...]}` arrays); keys the schema lacks keep their place at
/// the end.
pub fn canonical_payload(payload: &Value, schema: &Value) -> Value {
    match payload {
        Value::Object(obj) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let mut out = Map::new();
            if let Some(props) = props {
                for (k, sub) in props {
                    if let Some(v) = obj.get(k) {
                        out.insert(k.clone(), canonical_payload(v, sub));
                    }
                }
            }
            for (k, v) in obj {
                if !out.contains_key(k) {
                    out.insert(k.clone(), v.clone());
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            let item_schema = schema.get("items").cloned().unwrap_or(Value::Null);
            Value::Array(items.iter().map(|v| canonical_payload(v, &item_schema)).collect())
        }
        other => other.clone(),
    }
}

/// The answer's payload for `endpoint`: `null` unless the endpoint is a creatable API, else
/// the payload in canonical order.
pub fn answer_payload(catalog: &Catalog, endpoint: &str, payload: &Value) -> Value {
    if endpoint == EXCEPTION_ENDPOINT || payload.is_null() {
        return Value::Null;
    }
    match catalog.api_for_endpoint(endpoint).and_then(create_payload_schema) {
        Some(schema) => canonical_payload(payload, &schema),
        None => Value::Null,
    }
}

/// The query part of a routing example.
pub fn routing_query(ex: &RoutingExample) -> RoutingQuery {
    RoutingQuery {
        adc_json: ex.adc_json.clone(),
        doc_type: ex.doc_type.clone(),
        api_schemas: ex.api_schemas.clone(),
        similar_cases: ex.similar_cases.clone(),
    }
}

/// The query part of an exception example.
pub fn exception_query(ex: &ExceptionExample) -> ExceptionQuery {
    ExceptionQuery {
        doc_type: ex.doc_type.clone(),
        adc_json: ex.adc_json.clone(),
        endpoint: ex.endpoint.clone(),
        request_payload: ex.request_payload.clone(),
        sap_error: ex.sap_error.clone(),
        rule_failures: ex.rule_failures.clone(),
    }
}

/// The target answer of a routing example.
pub fn routing_answer(catalog: &Catalog, ex: &RoutingExample) -> RoutingAnswer {
    RoutingAnswer {
        doc_type: ex.doc_type.clone(),
        endpoint: ex.target_endpoint.clone(),
        payload: answer_payload(catalog, &ex.target_endpoint, &ex.target_payload),
        reasoning: clip_reasoning(&ex.reasoning_trace),
        confidence: round_confidence(ex.confidence),
    }
}

/// The target answer of an exception example.
pub fn exception_answer(ex: &ExceptionExample) -> ExceptionAnswer {
    ExceptionAnswer {
        action: ex.action,
        correction: ex.correction.clone(),
        retry: ex.retry,
        rule: ex.rule.clone(),
        reasoning: clip_reasoning(&ex.reasoning_trace),
    }
}

/// (prompt text, response text) of a routing example as `profile` shows it, exactly as serving
/// prompts and parses. SFT tokenizes them with `template::encode_example`.
pub fn routing_training_pair(
    catalog: &Catalog,
    ex: &RoutingExample,
    profile: &PromptProfile,
) -> Result<(String, String)> {
    let q = normalized_query(catalog, &routing_query(ex));
    let prompt = routing_prompt(&profile.apply(&q), profile.checks(catalog, &q))?;
    Ok((prompt, template::response_text(&routing_answer(catalog, ex))?))
}

/// The exception query `q` as the model reads it (see [`normalized_query`]).
pub fn normalized_exception_query(catalog: &Catalog, q: &ExceptionQuery) -> ExceptionQuery {
    match q.doc_type.parse::<sapllm_sap::documents::DocType>() {
        Ok(t) => ExceptionQuery {
            adc_json: if q.adc_json.is_object() {
                catalog.normalize(t, &q.adc_json).document
            } else {
                q.adc_json.clone()
            },
            doc_type: t.as_str().to_string(),
            ..q.clone()
        },
        Err(_) => q.clone(),
    }
}

/// `q` as the model reads it: its document in canonical field names and its type canonical
/// (unchanged where the type is unknown: the engine refuses those).
pub fn normalized_query(catalog: &Catalog, q: &RoutingQuery) -> RoutingQuery {
    match q.doc_type.parse::<sapllm_sap::documents::DocType>() {
        Ok(t) if q.adc_json.is_object() => RoutingQuery {
            adc_json: catalog.normalize(t, &q.adc_json).document,
            doc_type: t.as_str().to_string(),
            ..q.clone()
        },
        _ => q.clone(),
    }
}

/// (prompt text, response text) of an exception example (no similar exceptions: the dataset
/// has none; serving may pass some).
pub fn exception_training_pair(catalog: &Catalog, ex: &ExceptionExample) -> Result<(String, String)> {
    let prompt = exception_prompt(&normalized_exception_query(catalog, &exception_query(ex)), &[])?;
    Ok((prompt, template::response_text(&exception_answer(ex))?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sapllm_sap::catalog::CompactSchema;

    fn candidate(endpoint: &str, types: &[&str]) -> CompactSchema {
        CompactSchema {
            api: endpoint.split('/').next().unwrap().into(),
            endpoint: endpoint.into(),
            doc_types: types.iter().map(|t| t.to_string()).collect(),
            read_only: false,
            schema: String::new(),
        }
    }

    fn query(doc_type: &str, candidates: Vec<CompactSchema>) -> RoutingQuery {
        RoutingQuery {
            adc_json: serde_json::json!({"invoice_number": "INV-1"}),
            doc_type: doc_type.into(),
            api_schemas: candidates,
            similar_cases: vec![],
        }
    }

    #[test]
    fn the_exception_prompt_lists_the_admissible_actions_in_a_fixed_order() {
        use sapllm_sap::exceptions::SapError;
        let q = |status: u16, code: &str, request: serde_json::Value| ExceptionQuery {
            doc_type: "goods_receipt".into(),
            adc_json: serde_json::json!({}),
            endpoint: "API_MATERIAL_DOCUMENT_SRV/A_MaterialDocumentHeader".into(),
            request_payload: request,
            sap_error: Some(SapFailure { http_status: status, body: SapError::new(code, "m", "") }),
            rule_failures: vec![],
        };
        let gr = serde_json::json!({"to_MaterialDocumentItem": {"results": [{"PurchaseOrder": "45"}]}});
        assert_eq!(
            admissible_actions(&q(400, "MM_IM_ODATA_API_MDOC/011", gr)),
            vec![ExceptionAction::AutoCorrect, ExceptionAction::Escalate, ExceptionAction::Reject]
        );
        let p = exception_prompt(&q(503, "/IWFND/CM_BEC/026", serde_json::json!({})), &[]).unwrap();
        assert!(p.contains(r#""admissible":["RETRY","ESCALATE"]"#), "{p}");
    }

    #[test]
    fn the_prompt_names_no_document_type_but_the_requests() {
        let q = query(
            "sales_quotation",
            vec![
                candidate("API_SALES_ORDER_SRV/A_SalesOrder", &["sales_order"]),
                candidate("API_SALES_QUOTATION_SRV/A_SalesQuotation", &["sales_quotation"]),
            ],
        );
        let prompt = routing_prompt(&q, None).unwrap();
        assert_eq!(prompt.matches("sales_quotation").count(), 1, "{prompt}");
        assert!(!prompt.contains("sales_order"), "{prompt}");
        assert!(
            prompt.contains("API_SALES_ORDER_SRV/A_SalesOrder") && !prompt.contains("\"schema\""),
            "{prompt}"
        );
    }

    #[test]
    fn findings_sit_between_the_candidates_and_the_type_and_are_absent_without_a_profile_flag() {
        let q = query(
            "supplier_invoice",
            vec![candidate("API_SUPPLIERINVOICE_PROCESS_SRV/A_SupplierInvoice", &[])],
        );
        let without = routing_prompt(&q, None).unwrap();
        assert!(!without.contains("checks"), "{without}");
        let with =
            routing_prompt(&q, Some(vec!["required_field A_SupplierInvoice.InvoicingParty".into()])).unwrap();
        let (c, k, t) = (
            with.find("\"candidates\"").unwrap(),
            with.find("\"checks\"").unwrap(),
            with.find("\"doc_type\"").unwrap(),
        );
        assert!(c < k && k < t, "{with}");
        assert!(
            with.contains(r#""checks":["required_field A_SupplierInvoice.InvoicingParty"],"doc_type""#),
            "{with}"
        );
        assert!(routing_prompt(&q, Some(vec![])).unwrap().contains(r#""checks":[]"#));
    }
}
