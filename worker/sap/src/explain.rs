//! The grounds of a routing decision in words, built only from what is there: the document's
//! own content (the type evidence [`crate::documents::signals::detect`] found in it), the
//! candidate APIs of the request, and the decision's provenance. Data-prep writes these steps
//! as the training targets' reasoning and the engine writes the same steps for the document in
//! front of it, so a model is never asked to recall evidence: it cannot cite a field the
//! document does not have.

use serde_json::Value;

use crate::documents::DocType;
use crate::documents::signals::Detection;
use crate::exceptions::{Resolution, SapFailure};
use crate::grounding::Grounded;
use crate::rules::RuleOutcome;

/// Why the document is of its type: the evidence the detection found for it, and the strongest
/// evidence against it.
pub fn type_step(doc_type: DocType, d: &Detection) -> String {
    let ev: Vec<&str> = d.evidence_for(doc_type).take(4).map(|s| s.evidence.as_str()).collect();
    let mut s = if ev.is_empty() {
        format!("Document type: {doc_type} (as extracted; no distinctive fields found).")
    } else {
        format!("Document type: {doc_type}, because {}.", ev.join("; "))
    };
    if d.best != doc_type {
        s.push_str(&format!(" The content alone points more to {}: treat with care.", d.best));
    } else if let Some((other, score)) = d.runner_up {
        let against: Vec<&str> = d.evidence_for(other).take(2).map(|s| s.evidence.as_str()).collect();
        if d.is_ambiguous() {
            s.push_str(&format!(
                " Close call against {other} ({score:.1} vs {:.1}: {}), decided by the stronger evidence above.",
                d.score,
                against.join("; ")
            ));
        } else {
            s.push_str(&format!(
                " Against it: {} (points to {other}), outweighed {:.1} to {score:.1}.",
                against.join("; "),
                d.score
            ));
        }
    }
    s
}

/// Which candidates serve the type and which do not (names sorted: the request's candidate
/// order carries no meaning).
pub fn candidates_step(doc_type: DocType, serving: &[&str], others: &[&str]) -> String {
    fn sorted<'s>(v: &[&'s str]) -> Vec<&'s str> {
        let mut v = v.to_vec();
        v.sort_unstable();
        v.dedup();
        v
    }
    let (serving, others) = (sorted(serving), sorted(others));
    format!(
        "Candidates: {} {} {}; {} are in the same area but do not.",
        if serving.is_empty() { "no API".to_string() } else { serving.join(", ") },
        if serving.len() == 1 { "serves" } else { "serve" },
        doc_type,
        if others.is_empty() { "no other APIs".to_string() } else { others.join(", ") }
    )
}

/// What the posted payload is made of, by source, and the keys of the document no field took.
pub fn payload_step(endpoint: &str, g: &Grounded, unmapped: &[String]) -> String {
    let count = |k: &str| g.sources.iter().filter(|s| s.provenance.kind() == k).count();
    let mut s = format!(
        "Payload for {endpoint}: {} value(s) from the document, {} catalog default(s), {} derived.",
        count("document"),
        count("catalog_default"),
        count("derived")
    );
    if !unmapped.is_empty() {
        s.push_str(&format!(" Not placed in any field: {}.", unmapped.join(", ")));
    }
    s
}

/// Why nothing is posted where the document cannot be grounded.
pub fn missing_step(endpoint: &str, missing: &[String]) -> String {
    format!(
        "Not posted to {endpoint}: the document gives no value for {}, which the API requires.",
        missing.join(", ")
    )
}

/// Step-by-step trace of an exception decision.
pub fn exception_trace(
    endpoint: &str,
    failure: Option<&SapFailure>,
    blocking: &[RuleOutcome],
    r: &Resolution,
) -> Vec<String> {
    let mut steps = Vec::new();
    match failure {
        Some(f) => {
            let field = f.body.propertyref().map(|p| format!(" on {p}")).unwrap_or_default();
            steps.push(format!(
                "The create at {endpoint} failed: HTTP {} {} \"{}\"{field}.",
                f.http_status, f.body.error.code, f.body.error.message.value
            ));
        }
        None => {
            let why: Vec<String> = blocking.iter().take(4).map(|o| o.message.clone()).collect();
            steps.push(format!("The document was not posted: {}.", why.join("; ")));
        }
    }
    steps.push(format!("Assessment: {}", r.reason));
    if !r.correction.is_empty() {
        let ops: Vec<String> = r
            .correction
            .iter()
            .map(|o| format!("{} {} = {}", o.op, o.path, o.value.clone().unwrap_or(Value::Null)))
            .collect();
        steps.push(format!("Correction: {}.", ops.join("; ")));
    }
    if let Some(p) = r.retry {
        steps.push(format!(
            "Retry: up to {} attempts, first after {} ms, backoff x{}{}.",
            p.max_attempts,
            p.initial_backoff_ms,
            p.multiplier,
            if p.refresh_csrf_token { ", fetching a fresh CSRF token first" } else { "" }
        ));
    }
    if let Some(rule) = &r.rule {
        steps.push(format!("Rule applied: {rule}."));
    }
    steps.push(format!("Action: {}.", r.action.as_str()));
    steps
}
