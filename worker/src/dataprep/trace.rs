//! Reasoning traces and target confidence, derived from the same facts as the decision: the
//! detection evidence, the candidate APIs, the payload that was built, the rules that were
//! checked, and the case's history. Nothing here is phrased as a reason unless it was one.

use serde_json::Value;

use sapllm_sap::catalog::Catalog;
use sapllm_sap::documents::signals::Detection;
use sapllm_sap::documents::{AdcDocument, DocType};
use sapllm_sap::explain;
use sapllm_sap::routing::{EXCEPTION_ENDPOINT, RoutingDecision};
use sapllm_sap::rules::{RuleOutcome, Severity};

/// What the trace explains.
pub struct TraceInput<'a> {
    pub doc: &'a AdcDocument,
    pub detection: &'a Detection,
    pub catalog: &'a Catalog,
    pub decision: &'a RoutingDecision,
    pub target_endpoint: &'a str,
    /// A person corrected the routing to the target (feedback `correct_endpoint`).
    pub corrected_from: Option<&'a str>,
    pub similar_endpoints: &'a [String],
}

/// Step-by-step routing trace.
pub fn routing_trace(t: &TraceInput) -> Vec<String> {
    let doc_type = t.doc.doc_type();
    let mut steps = Vec::with_capacity(8);
    steps.push(explain::type_step(doc_type, t.detection));
    let serving: Vec<&str> = t.catalog.serving(doc_type.as_str()).iter().map(|a| a.name.as_str()).collect();
    let others: Vec<&str> = t
        .catalog
        .candidates_for(doc_type.as_str())
        .iter()
        .map(|a| a.name.as_str())
        .filter(|n| !serving.contains(n))
        .collect();
    steps.push(explain::candidates_step(doc_type, &serving, &others));
    if let Some(step) = structure_step(t.doc, t.decision.payload.as_ref()) {
        steps.push(step);
    }
    steps.push(rules_step(&t.decision.outcomes));
    if !t.similar_endpoints.is_empty() {
        let same = t.similar_endpoints.iter().filter(|e| *e == t.target_endpoint).count();
        steps.push(format!(
            "Process memory: {same} of {} similar past cases went to {}.",
            t.similar_endpoints.len(),
            t.target_endpoint
        ));
    }
    let blocking: Vec<&RuleOutcome> = t.decision.blocking().collect();
    steps.push(if t.target_endpoint == EXCEPTION_ENDPOINT {
        if blocking.is_empty() {
            format!("Decision: {EXCEPTION_ENDPOINT}: no creatable API serves {doc_type}.")
        } else {
            let why: Vec<String> =
                blocking.iter().take(4).map(|o| format!("{} ({})", o.field, o.rule_id)).collect();
            format!("Decision: {EXCEPTION_ENDPOINT}, because blocking rules failed: {}.", why.join(", "))
        }
    } else if let Some(wrong) = t.corrected_from {
        format!(
            "Decision: POST {}; this case was once sent to {wrong} and corrected by a clerk.",
            t.target_endpoint
        )
    } else {
        format!("Decision: POST {}.", t.target_endpoint)
    });
    steps
}

fn count_items(p: &Value, nav: &str) -> usize {
    p.get(nav).and_then(|v| v.get("results")).and_then(Value::as_array).map_or(0, Vec::len)
}

fn structure_step(doc: &AdcDocument, payload: Option<&Value>) -> Option<String> {
    let p = payload?;
    Some(match doc {
        AdcDocument::SupplierInvoice(_) | AdcDocument::SupplierCreditMemo(_) => {
            let po = count_items(p, "to_SuplrInvcItemPurOrdRef");
            let gl = count_items(p, "to_SupplierInvoiceItemGLAcct");
            let tax = count_items(p, "to_SupplierInvoiceTax");
            let mut s = String::from("Structure: A_SupplierInvoice with ");
            if po > 0 {
                s.push_str(&format!("{po} PO-reference item(s) in to_SuplrInvcItemPurOrdRef (the document references a purchase order)"));
            }
            if gl > 0 {
                if po > 0 {
                    s.push_str(" and ");
                }
                s.push_str(&format!(
                    "{gl} G/L item(s) in to_SupplierInvoiceItemGLAcct (lines without PO reference)"
                ));
            }
            if po + gl == 0 {
                s.push_str("no items");
            }
            if tax > 0 {
                s.push_str(", tax in to_SupplierInvoiceTax");
            }
            if p.get("SupplierInvoiceIsCreditMemo").and_then(Value::as_str) == Some("X") {
                s.push_str(
                    "; credit memo: same API with SupplierInvoiceIsCreditMemo = \"X\" and positive amounts",
                );
            }
            s.push('.');
            s
        }
        _ => {
            let navs: Vec<String> = p
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter(|(_, v)| v.get("results").is_some())
                        .map(|(k, v)| {
                            format!("{} item(s) in {k}", v["results"].as_array().map_or(0, Vec::len))
                        })
                        .collect()
                })
                .unwrap_or_default();
            if navs.is_empty() {
                return None;
            }
            format!(
                "Structure: deep insert with {}; dates as /Date(ms)/, item numbers zero-padded.",
                navs.join(", ")
            )
        }
    })
}

fn rules_step(outcomes: &[RuleOutcome]) -> String {
    let passed = outcomes.iter().filter(|o| o.passed).count();
    let mut ids: Vec<&str> = outcomes.iter().map(|o| o.rule_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.passed)
        .take(4)
        .map(|o| {
            format!(
                "{} {} ({})",
                o.rule_id,
                if o.severity == Severity::Error { "failed" } else { "warns" },
                o.message
            )
        })
        .collect();
    let mut s = format!("Rules checked: {} ({passed}/{} passed).", ids.join(", "), outcomes.len());
    if !failed.is_empty() {
        s.push_str(&format!(" {}.", failed.join("; ")));
    }
    s
}

/// Target confidence: how sure a well-calibrated router should be. From the detection margin
/// (0.5 with no margin, towards 0.98 with a clear one), lowered for each failed warning rule and
/// when the content points to another type. Rounded to 0.01.
pub fn confidence(doc_type: DocType, d: &Detection, outcomes: &[RuleOutcome]) -> f64 {
    let margin = (d.score - d.runner_up.map_or(0.0, |r| r.1)) as f64;
    let mut c = 0.98 - 0.48 * (-margin / 2.0).exp();
    if d.best != doc_type {
        c = c.min(0.45);
    }
    let warnings = outcomes.iter().filter(|o| !o.passed && o.severity == Severity::Warning).count();
    c *= 0.9f64.powi(warnings as i32);
    (c.clamp(0.05, 0.99) * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use sapllm_sap::documents::signals::detect;
    use serde_json::json;

    #[test]
    fn type_step_names_deciding_fields_and_the_contrary_evidence() {
        let v = json!({"document_title": "INVOICE", "credit_memo_number": "CN-1", "gross_amount": -119.0,
                       "original_invoice_number": "R-0"});
        let s = explain::type_step(DocType::SupplierCreditMemo, &detect(&v));
        assert!(s.contains("credit_memo_number is present") && s.contains("negative"), "{s}");
        assert!(s.contains("Against it") && s.contains("supplier_invoice"), "{s}");
    }

    #[test]
    fn confidence_falls_with_margin_warnings_and_type_mismatch() {
        let clear = detect(
            &json!({"document_title": "Delivery Note", "delivery_note": "1", "receipt_date": "2025-01-01"}),
        );
        let c = confidence(DocType::GoodsReceipt, &clear, &[]);
        assert!(c > 0.9, "{c}");
        let warn = RuleOutcome {
            rule_id: "three_way_match_price".into(),
            severity: Severity::Warning,
            passed: false,
            field: "x".into(),
            message: String::new(),
        };
        assert!(confidence(DocType::GoodsReceipt, &clear, &[warn]) < c);
        assert!(confidence(DocType::SalesOrder, &clear, &[]) <= 0.45);
    }
}
