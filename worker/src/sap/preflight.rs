//! Pre-flight checks: what the business-rule validator says about a document BEFORE the model
//! decides, shown to the model in its prompt (like a tool result in context).
//!
//! Why: a document that lacks a business-mandatory fact (no supplier on an invoice, no sold-to
//! party on a sales order) must go to exception handling, not to SAP, which would reject it.
//! Noticing that a key is absent from a JSON object is something a small model learns badly
//! (measured on the tiny preset: it never chose exception handling for the 3.5 % of test
//! documents that were incomplete, and its confidence did not single them out). The validator
//! knows exactly, so its blocking findings are written into the prompt and the model learns to
//! weigh them, together with everything else it reads; the decision stays the model's.
//!
//! Only context-free checks are run (no processing date, no purchase-order references, no
//! posted-invoice history): data-prep, SFT, RL, evaluation and serving must compute the same
//! findings for the same document, and serving has none of that context.

use std::str::FromStr;

use serde_json::Value;

use crate::sap::catalog::Catalog;
use crate::sap::documents::{AdcDocument, DocType};
use crate::sap::routing::route;
use crate::sap::rules::RuleContext;

/// Findings shown at most (a badly broken document would otherwise fill the prompt).
pub const MAX_FINDINGS: usize = 4;

/// The blocking findings of the validator on `adc_json` as a document of `doc_type`, one short
/// line each (`"required_field InvoicingParty"`), or a line naming the field that makes
/// the document unreadable. Empty when nothing blocks, and when the catalog has no creatable
/// API for the type or the type is not one the validator knows (nothing to check against).
pub fn blocking_findings(catalog: &Catalog, doc_type: &str, adc_json: &Value) -> Vec<String> {
    let Ok(t) = DocType::from_str(doc_type) else {
        return Vec::new();
    };
    let doc = match AdcDocument::from_json(t, adc_json) {
        Ok(doc) => doc,
        Err(e) => return vec![format!("unreadable {}", e.path)],
    };
    // The reference router without context: its blocking outcomes are exactly the findings.
    let decision = route(catalog, &doc, &RuleContext::default());
    let mut out: Vec<String> = Vec::new();
    for o in decision.blocking() {
        let line = format!("{} {}", o.rule_id, o.field);
        if !out.contains(&line) {
            out.push(line);
        }
        if out.len() == MAX_FINDINGS {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataprep::config::DataPrepConfig;
    use crate::dataprep::synth::Generator;

    #[test]
    fn findings_appear_exactly_for_documents_the_reference_router_blocks() {
        // The generator's only exception cause is a dropped mandatory fact, which needs no
        // context to see: the findings must flag every such document and no other.
        let cfg = DataPrepConfig { incomplete_rate: 0.2, ..DataPrepConfig::default() };
        let g = Generator::new(&cfg);
        let (mut flagged, mut clean) = (0, 0);
        for i in 0..400 {
            let rec = g.record(i);
            let t = rec.log.document_type.as_str();
            let findings = blocking_findings(&cfg.catalog, t, &rec.log.extracted_data);
            let ctx = RuleContext {
                today: Some(cfg.today),
                references: &rec.log.reference_lines,
                ..Default::default()
            };
            let blocked = route(&cfg.catalog, &rec.doc, &ctx).is_exception();
            assert_eq!(!findings.is_empty(), blocked, "record {i} ({}): {findings:?}", rec.variant);
            if blocked {
                flagged += 1;
                assert!(findings.iter().all(|f| f.starts_with("required_field ")), "{findings:?}");
            } else {
                clean += 1;
            }
        }
        assert!(flagged > 40 && clean > 200, "both kinds exercised: {flagged} flagged, {clean} clean");
    }

    #[test]
    fn a_missing_supplier_is_named_and_unknown_types_or_unreadable_documents_are_handled() {
        let catalog = Catalog::builtin();
        let g = Generator::new(&DataPrepConfig { incomplete_rate: 0.0, ..DataPrepConfig::default() });
        let rec = (0..200).map(|i| g.record(i)).find(|r| r.log.document_type == "supplier_invoice").unwrap();
        let mut doc = rec.log.extracted_data.clone();
        assert_eq!(blocking_findings(&catalog, "supplier_invoice", &doc), Vec::<String>::new());
        doc.as_object_mut().unwrap().remove("supplier_id");
        let f = blocking_findings(&catalog, "supplier_invoice", &doc);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].starts_with("required_field ") && f[0].contains("InvoicingParty"), "{f:?}");
        assert!(blocking_findings(&catalog, "no_such_type", &doc).is_empty());
        let broken = serde_json::json!({"supplier_id": {"nested": true}});
        let f = blocking_findings(&catalog, "supplier_invoice", &broken);
        assert_eq!(f, vec!["unreadable supplier_id".to_string()]);
    }
}
