//! Exception examples: a failed SAP call (from the log's feedback) or a document the rules kept
//! from being posted, with the action decided by [`sapllm_sap::exceptions::resolve`].

use serde_json::Value;

use super::examples::ExceptionExample;
use sapllm_sap::exceptions::{Resolution, SapFailure, blocked, resolve};
use sapllm_sap::explain::exception_trace;
use sapllm_sap::rules::RuleOutcome;

/// Common fields of an exception example.
pub struct ExceptionInput<'a> {
    pub doc_id: &'a str,
    pub doc_type: &'a str,
    pub split: &'a str,
    pub adc_json: &'a Value,
}

/// From a failed call: `feedback` must be a SAP failure (`{"http_status":..,"error":{..}}`).
pub fn from_failure(
    i: &ExceptionInput,
    endpoint: &str,
    request: &Value,
    feedback: &Value,
) -> Option<ExceptionExample> {
    let failure: SapFailure = serde_json::from_value(feedback.clone()).ok()?;
    let r = resolve(&failure, request);
    let trace = exception_trace(endpoint, Some(&failure), &[], &r);
    Some(build(i, endpoint, request.clone(), Some(failure), Vec::new(), r, trace))
}

/// From a document blocked by rules: a duplicate is rejected; anything else (missing mandatory
/// data, implausible dates, unbalanced amounts) needs a person, because the fix is not in the
/// document.
pub fn from_blocked(
    i: &ExceptionInput,
    endpoint: &str,
    request: &Value,
    blocking: Vec<RuleOutcome>,
) -> ExceptionExample {
    let r = blocked(&blocking);
    let trace = exception_trace(endpoint, None, &blocking, &r);
    build(i, endpoint, request.clone(), None, blocking, r, trace)
}

fn build(
    i: &ExceptionInput,
    endpoint: &str,
    request: Value,
    failure: Option<SapFailure>,
    blocking: Vec<RuleOutcome>,
    r: Resolution,
    trace: Vec<String>,
) -> ExceptionExample {
    ExceptionExample {
        doc_id: i.doc_id.into(),
        doc_type: i.doc_type.into(),
        split: i.split.into(),
        adc_json: i.adc_json.clone(),
        endpoint: endpoint.into(),
        request_payload: request,
        sap_error: failure,
        rule_failures: blocking,
        action: r.action,
        correction: r.correction,
        retry: r.retry,
        rule: r.rule,
        reasoning_trace: trace,
    }
}
