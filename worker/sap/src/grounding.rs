//! The grounded payload of a document at one API: the only payload the engine may post.
//!
//! Every value in it is a value of the document under its property's transform, a catalog
//! default, or a declared derivation ([`crate::payload::provenance::RULES`]), and says which,
//! with the document paths as the user sent them. What the API requires and the document does not
//! give is not invented: it is listed in [`Grounded::missing`], and a decision with anything
//! missing goes to exception handling, naming it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::catalog::ApiSpec;
use crate::documents::normalize::Normalized;
use crate::documents::{AdcDocument, DocType, DocumentError};
use crate::payload::{FieldSource, PayloadError, Provenance, build_payload_traced};
use crate::rules::{RuleContext, validate};

/// A payload whose every value has a source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grounded {
    pub payload: Value,
    /// One entry per property written, document paths as sent.
    pub sources: Vec<FieldSource>,
    /// Properties (and deep-insert lists) the API requires that nothing in the document fills.
    pub missing: Vec<String>,
}

/// Why no payload can be grounded at an API.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GroundingError {
    #[error(transparent)]
    Unreadable(#[from] DocumentError),
    #[error(transparent)]
    Payload(#[from] PayloadError),
}

/// Grounds `doc` (normalized, of type `doc_type`) at `api`.
pub fn ground(doc_type: DocType, doc: &Normalized, api: &ApiSpec) -> Result<Grounded, GroundingError> {
    let typed = AdcDocument::from_json(doc_type, &doc.document)?;
    let (payload, mut sources) = build_payload_traced(&typed, api)?;
    for s in &mut sources {
        let from = match &mut s.provenance {
            Provenance::Document { from, .. } | Provenance::Derived { from, .. } => from,
            Provenance::CatalogDefault => continue,
        };
        for f in from.iter_mut() {
            *f = doc.origin(f).to_string();
        }
    }
    let mut missing: Vec<String> = validate(api, &payload, &RuleContext::default())
        .into_iter()
        .filter(|o| !o.passed && matches!(o.rule_id.as_str(), "required_field" | "required_items"))
        .map(|o| o.field)
        .collect();
    missing.dedup();
    Ok(Grounded { payload, sources, missing })
}

/// JSON pointers of the scalar values of `payload` (deep-insert `results` lists included).
pub fn value_pointers(payload: &Value) -> Vec<String> {
    fn walk(v: &Value, at: String, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => m.iter().for_each(|(k, x)| walk(x, format!("{at}/{k}"), out)),
            Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| walk(x, format!("{at}/{i}"), out)),
            Value::Null => {}
            _ => out.push(at),
        }
    }
    let mut out = Vec::new();
    walk(payload, String::new(), &mut out);
    out
}

/// The values of `payload` that no source accounts for (there must be none).
pub fn unsourced(payload: &Value, sources: &[FieldSource]) -> Vec<String> {
    value_pointers(payload).into_iter().filter(|p| !sources.iter().any(|s| &s.pointer == p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::documents::normalize::normalize;
    use serde_json::json;

    const PO: &str = "API_PURCHASEORDER_PROCESS_SRV";

    fn source<'a>(g: &'a Grounded, pointer: &str) -> &'a Provenance {
        &g.sources
            .iter()
            .find(|s| s.pointer == pointer)
            .unwrap_or_else(|| panic!("no source for {pointer}"))
            .provenance
    }

    #[test]
    fn every_value_of_a_purchase_order_is_traced_to_the_key_the_user_sent() {
        let cat = Catalog::builtin();
        let sent = json!({
            "PONumber": "4500001", "companyCode": "1010", "vendor": {"id": 100347}, "purchasing_org": "1010",
            "purchasing_group": "001", "currency": "eur",
            "lines": [{"material": "TG-1", "qty": 5, "uom": "ST", "netPrice": 2.5, "plant": "1010"}]
        });
        let n = normalize(DocType::PurchaseOrder, &sent, &[]);
        let g = ground(DocType::PurchaseOrder, &n, cat.api(PO).unwrap()).unwrap();
        assert!(unsourced(&g.payload, &g.sources).is_empty(), "{:?}", unsourced(&g.payload, &g.sources));
        assert_eq!(g.payload["Supplier"], "100347");
        assert_eq!(g.payload["DocumentCurrency"], "EUR");
        let doc = |from: &str, t: &str| Provenance::Document { from: vec![from.into()], transform: t.into() };
        assert_eq!(source(&g, "/Supplier"), &doc("vendor.id", "code"));
        assert_eq!(source(&g, "/DocumentCurrency"), &doc("currency", "code"));
        assert_eq!(
            source(&g, "/to_PurchaseOrderItem/results/0/NetPriceAmount"),
            &doc("lines[0].netPrice", "decimal")
        );
        assert_eq!(
            source(&g, "/to_PurchaseOrderItem/results/0/PurchaseOrderItem"),
            &Provenance::Derived { rule: "item_numbering".into(), from: vec![] }
        );
        assert_eq!(source(&g, "/PurchaseOrderType"), &Provenance::CatalogDefault);
        assert!(g.missing.is_empty(), "{:?}", g.missing);
    }

    #[test]
    fn what_the_api_requires_and_the_document_lacks_is_named_not_invented() {
        let cat = Catalog::builtin();
        let n = normalize(
            DocType::PurchaseOrder,
            &json!({"company_code": "1010", "items": [{"material": "M"}]}),
            &[],
        );
        let g = ground(DocType::PurchaseOrder, &n, cat.api(PO).unwrap()).unwrap();
        assert!(g.missing.iter().any(|m| m == "Supplier"), "{:?}", g.missing);
        assert!(g.payload.get("Supplier").is_none());
    }

    #[test]
    fn derived_values_name_their_rule_and_inputs() {
        let cat = Catalog::builtin();
        let sent = json!({"credit_note_number": "CN-1", "date": "2026-02-01", "supplier": "17", "company_code": "1010",
            "currency": "EUR", "total": 10, "items": [{"amount": 10, "gl_account": "400000", "cost_center": "CC1"}]});
        let n = normalize(DocType::SupplierCreditMemo, &sent, &[]);
        let api = cat.serving("supplier_credit_memo")[0];
        let g = ground(DocType::SupplierCreditMemo, &n, api).unwrap();
        assert!(unsourced(&g.payload, &g.sources).is_empty());
        assert_eq!(
            source(&g, "/PostingDate"),
            &Provenance::Derived { rule: "posting_date_is_document_date".into(), from: vec!["date".into()] }
        );
        assert_eq!(source(&g, "/SupplierInvoiceIsCreditMemo").kind(), "derived");
        assert_eq!(
            source(&g, "/InvoicingParty"),
            &Provenance::Document { from: vec!["supplier".into()], transform: "code".into() }
        );
        for s in &g.sources {
            if let Provenance::Derived { rule, .. } = &s.provenance {
                assert!(
                    crate::payload::provenance::RULES.iter().any(|(r, _)| r == rule),
                    "undeclared rule {rule}"
                );
            }
        }
    }
}
