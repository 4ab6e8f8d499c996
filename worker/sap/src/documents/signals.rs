//! Which content decides a document's type. Extraction labels the type, but a model must learn it
//! from the content, and reasoning traces must say which fields decided it. [`detect`] scores the
//! raw extraction JSON with transparent evidence (keys present, title words, sign of amounts) so a
//! trace can quote exactly what it relied on, and so ambiguous documents (an "invoice" that is
//! really a credit memo) are visible as a small margin.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::DocType;

/// One piece of evidence for a document type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// The extraction field the evidence comes from.
    pub field: String,
    /// What was observed there, in words.
    pub evidence: String,
    pub points_to: DocType,
    pub weight: f32,
}

/// The outcome of content-based type detection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub best: DocType,
    pub score: f32,
    pub runner_up: Option<(DocType, f32)>,
    /// All evidence found, strongest first.
    pub signals: Vec<Signal>,
}

impl Detection {
    /// True when a second type is nearly as plausible (the case needs care or a human).
    pub fn is_ambiguous(&self) -> bool {
        self.runner_up.is_some_and(|(_, s)| self.score - s < 1.5)
    }

    /// The evidence that pointed to `doc_type`.
    pub fn evidence_for(&self, doc_type: DocType) -> impl Iterator<Item = &Signal> {
        self.signals.iter().filter(move |s| s.points_to == doc_type)
    }
}

/// Title keywords (lowercase) and the type they indicate.
const TITLE_WORDS: &[(&str, DocType, f32)] = &[
    ("credit note", DocType::SupplierCreditMemo, 3.0),
    ("credit memo", DocType::SupplierCreditMemo, 3.0),
    ("gutschrift", DocType::SupplierCreditMemo, 3.0),
    ("invoice", DocType::SupplierInvoice, 2.0),
    ("rechnung", DocType::SupplierInvoice, 2.0),
    ("purchase order", DocType::PurchaseOrder, 2.0),
    ("bestellung", DocType::PurchaseOrder, 2.0),
    ("sales order", DocType::SalesOrder, 2.0),
    ("customer order", DocType::SalesOrder, 2.0),
    ("quotation", DocType::SalesQuotation, 2.0),
    ("request for quote", DocType::SalesQuotation, 2.0),
    ("return", DocType::CustomerReturn, 2.0),
    ("rma", DocType::CustomerReturn, 1.0),
    ("goods receipt", DocType::GoodsReceipt, 2.0),
    ("delivery note", DocType::GoodsReceipt, 1.0),
    ("advance shipping", DocType::InboundDelivery, 2.0),
    ("shipping notification", DocType::InboundDelivery, 2.0),
    ("picking list", DocType::OutboundDelivery, 2.0),
    ("outbound delivery", DocType::OutboundDelivery, 2.0),
    ("supplier registration", DocType::SupplierMaster, 2.0),
    ("vendor onboarding", DocType::SupplierMaster, 2.0),
];

/// Header keys and the type their presence indicates.
const KEYS: &[(&str, DocType, f32)] = &[
    ("invoice_number", DocType::SupplierInvoice, 2.0),
    ("invoice_date", DocType::SupplierInvoice, 1.0),
    ("credit_memo_number", DocType::SupplierCreditMemo, 3.0),
    ("original_invoice_number", DocType::SupplierCreditMemo, 2.0),
    ("credit_reason", DocType::SupplierCreditMemo, 2.0),
    ("purchasing_org", DocType::PurchaseOrder, 2.0),
    ("purchasing_group", DocType::PurchaseOrder, 1.0),
    ("po_date", DocType::PurchaseOrder, 1.5),
    ("customer_po_number", DocType::SalesOrder, 2.0),
    ("requested_delivery_date", DocType::SalesOrder, 1.0),
    ("rfq_number", DocType::SalesQuotation, 2.0),
    ("valid_to", DocType::SalesQuotation, 2.0),
    ("rma_number", DocType::CustomerReturn, 2.0),
    ("reference_invoice", DocType::CustomerReturn, 1.5),
    ("return_reason", DocType::CustomerReturn, 1.5),
    ("delivery_note", DocType::GoodsReceipt, 2.0),
    ("receipt_date", DocType::GoodsReceipt, 2.0),
    ("asn_number", DocType::InboundDelivery, 2.0),
    ("bill_of_lading", DocType::InboundDelivery, 1.0),
    ("shipping_point", DocType::OutboundDelivery, 2.0),
    ("planned_goods_issue_date", DocType::OutboundDelivery, 1.5),
    ("iban", DocType::SupplierMaster, 1.5),
    ("vat_id", DocType::SupplierMaster, 1.0),
    ("reconciliation_account", DocType::SupplierMaster, 1.5),
    ("street", DocType::SupplierMaster, 1.0),
];

/// Scores every document type from the raw extraction JSON.
pub fn detect(v: &Value) -> Detection {
    let mut signals = Vec::new();
    if let Some(title) = v.get("document_title").and_then(Value::as_str) {
        let lower = title.to_lowercase();
        for (word, t, w) in TITLE_WORDS {
            if lower.contains(word) {
                signals.push(Signal {
                    field: "document_title".into(),
                    evidence: format!("title {title:?} contains {word:?}"),
                    points_to: *t,
                    weight: *w,
                });
            }
        }
    }
    if let Some(obj) = v.as_object() {
        for (key, t, w) in KEYS {
            if obj.get(*key).is_some_and(|x| !x.is_null()) {
                signals.push(Signal {
                    field: (*key).into(),
                    evidence: format!("{key} is present"),
                    points_to: *t,
                    weight: *w,
                });
            }
        }
    }
    // Negative totals on an "invoice" are money back: the strongest credit-memo hint when the
    // title says invoice.
    if let Some(g) = v.get("gross_amount").and_then(amount)
        && g < 0.0
    {
        signals.push(Signal {
            field: "gross_amount".into(),
            evidence: format!("gross amount {g} is negative (money back)"),
            points_to: DocType::SupplierCreditMemo,
            weight: 2.5,
        });
    }
    let mut scores = [0f32; DocType::ALL.len()];
    for s in &signals {
        scores[s.points_to.index()] += s.weight;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b)));
    signals.sort_by(|a, b| b.weight.total_cmp(&a.weight));
    let best = DocType::ALL[order[0]];
    let runner = order[1];
    Detection {
        best,
        score: scores[order[0]],
        runner_up: (scores[runner] > 0.0).then(|| (DocType::ALL[runner], scores[runner])),
        signals,
    }
}

fn amount(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => super::Amount::parse(s).map(|a| a.0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn credit_memo_titled_invoice_is_detected_from_negative_total_and_reference() {
        let v = json!({"document_title": "INVOICE", "invoice_number": "R-1", "gross_amount": "-119,00",
                       "original_invoice_number": "R-0"});
        let d = detect(&v);
        assert_eq!(d.best, DocType::SupplierCreditMemo);
        assert!(d.is_ambiguous(), "an invoice-titled credit memo is a close call: {d:?}");
        assert!(d.evidence_for(DocType::SupplierCreditMemo).any(|s| s.field == "gross_amount"));
    }

    #[test]
    fn plain_documents_are_unambiguous() {
        let d = detect(
            &json!({"document_title": "Delivery Note", "delivery_note": "LS-1", "receipt_date": "2024-01-01"}),
        );
        assert_eq!(d.best, DocType::GoodsReceipt);
        assert!(!d.is_ambiguous());
    }
}
