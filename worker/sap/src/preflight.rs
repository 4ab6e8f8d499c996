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

use crate::catalog::Catalog;
use crate::documents::{AdcDocument, DocType};
use crate::routing::route;
use crate::rules::RuleContext;

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
    // Keys as the user spelled them are read through the catalog's alias layer.
    let normalized = catalog.normalize(t, adc_json);
    let doc = match AdcDocument::from_json(t, &normalized.document) {
        Ok(doc) => doc,
        Err(e) => return vec![format!("unreadable {}", normalized.origin(&e.path))],
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
