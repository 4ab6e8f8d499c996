//! Realistic SAP failures for training the exception decision. Each scenario mutates the request
//! the way the failure really arises (a missing field, a stale posting date, a dropped tax line)
//! and produces the envelope SAP answers with; the action is then decided by
//! [`super::resolve`], exactly as it will be for a real failure.

use chrono::{Datelike, Months, NaiveDate};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{SapError, SapFailure};
use crate::odata;

/// The failure kinds the generator knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    CsrfToken,
    ServiceUnavailable,
    PoLocked,
    MissingRefDocType,
    MaterialDiffers,
    PeriodClosed,
    BalanceNotZero,
    DuplicateInvoice,
}

/// A failed call as it would appear in a transaction log.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedFailure {
    pub scenario: Scenario,
    /// The request that was sent (the mutated payload).
    pub request: Value,
    pub failure: SapFailure,
}

fn items_of<'v>(p: &'v Value, nav: &str) -> Vec<&'v Value> {
    p.get(nav)
        .and_then(|v| v.get("results"))
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// The scenarios that can happen to a create of `payload` at the API called `api`.
pub fn applicable(api: &str, payload: &Value) -> Vec<Scenario> {
    let mut out = vec![Scenario::CsrfToken, Scenario::ServiceUnavailable];
    let credit = payload.get("SupplierInvoiceIsCreditMemo").and_then(Value::as_str) == Some("X");
    match api.split(';').next().unwrap_or(api) {
        "API_MATERIAL_DOCUMENT_SRV" => out.extend([
            Scenario::PoLocked,
            Scenario::MissingRefDocType,
            Scenario::MaterialDiffers,
            Scenario::PeriodClosed,
        ]),
        "API_SUPPLIERINVOICE_PROCESS_SRV" => {
            if !items_of(payload, "to_SuplrInvcItemPurOrdRef").is_empty() {
                out.push(Scenario::PoLocked);
            }
            out.push(Scenario::PeriodClosed);
            if !items_of(payload, "to_SupplierInvoiceTax").is_empty() {
                out.push(Scenario::BalanceNotZero);
            }
            if !credit {
                out.push(Scenario::DuplicateInvoice);
            }
        }
        "API_PURCHASEORDER_PROCESS_SRV" | "API_INBOUND_DELIVERY_SRV" => out.push(Scenario::PoLocked),
        _ => {}
    }
    out
}

/// Generates `scenario` for a create of `payload`; `today` is the processing date.
pub fn generate(
    scenario: Scenario,
    payload: &Value,
    today: NaiveDate,
    rng: &mut impl Rng,
) -> GeneratedFailure {
    let mut req = payload.clone();
    let (status, err) = match scenario {
        Scenario::CsrfToken => (403, SapError::new("/IWFND/CM_BEC/026", "CSRF token validation failed", "")),
        Scenario::ServiceUnavailable => {
            (503, SapError::new("/IWFND/CM_BEC/026", "Service temporarily unavailable", ""))
        }
        Scenario::PoLocked => {
            let po = find_po(&req).unwrap_or_else(|| "4500000000".into());
            let user = ["JSMITH", "MMUELLER", "AROSSI", "KTANAKA"][rng.random_range(0..4)];
            (
                400,
                SapError::new(
                    "ME/006",
                    format!("User {user} is already processing Purchase order {po}"),
                    "PurchaseOrder",
                ),
            )
        }
        Scenario::MissingRefDocType => {
            for it in items_mut(&mut req, "to_MaterialDocumentItem") {
                it.as_object_mut().map(|o| o.remove("GoodsMovementRefDocType"));
            }
            let err = SapError::new(
                "MM_IM_ODATA_API_MDOC/011",
                "Purchase order fields are not permitted for this goods movement (reference document type missing)",
                "to_MaterialDocumentItem/GoodsMovementRefDocType",
            );
            (400, err)
        }
        Scenario::MaterialDiffers => {
            let mut material = String::from("?");
            let mut po = String::from("?");
            if let Some(it) = items_mut(&mut req, "to_MaterialDocumentItem").into_iter().next() {
                po = it.get("PurchaseOrder").and_then(Value::as_str).unwrap_or("?").to_string();
                material = it.get("Material").and_then(Value::as_str).unwrap_or("?").to_string();
                it["Material"] = json!(format!("{}-{}", material, rng.random_range(1..9)));
            }
            let err = SapError::new(
                "M7/360",
                format!("Material differs from the material {material} in purchase order {po}"),
                "to_MaterialDocumentItem/Material",
            );
            (400, err)
        }
        Scenario::PeriodClosed => {
            let open = today.with_day(1).expect("day 1 exists");
            let prev = open - Months::new(1);
            // Either only the posting date is stale (the document is in an open period) or the
            // document itself belongs to a closed period.
            let stale_posting_only = rng.random_bool(0.5);
            let closed = open - Months::new(rng.random_range(2..5));
            if stale_posting_only {
                req["DocumentDate"] = json!(odata::date(open));
                req["PostingDate"] = json!(odata::date(closed));
            } else {
                req["DocumentDate"] = json!(odata::date(closed));
                req["PostingDate"] = json!(odata::date(closed));
            }
            let cc = req.get("CompanyCode").and_then(Value::as_str).unwrap_or("1010").to_string();
            let err = SapError::new(
                "M7/053",
                format!(
                    "Posting only possible in periods {}/{:02} and {}/{:02} in company code {cc}",
                    open.year(),
                    open.month(),
                    prev.year(),
                    prev.month()
                ),
                "PostingDate",
            );
            (400, err)
        }
        Scenario::BalanceNotZero => {
            if rng.random_bool(0.6) {
                // The extraction dropped the tax line: the difference is exactly the tax.
                req.as_object_mut().map(|o| o.remove("to_SupplierInvoiceTax"));
            } else {
                let gross = req.get("InvoiceGrossAmount").and_then(odata::parse_decimal).unwrap_or(0.0);
                let off = [0.9, 1.1, 10.0, 100.0][rng.random_range(0..4)] * (1.0 + rng.random::<f64>());
                req["InvoiceGrossAmount"] = json!(odata::decimal(gross + off, 3));
            }
            (
                400,
                SapError::new("M8/186", "Balance is not zero: debit and credit differ", "InvoiceGrossAmount"),
            )
        }
        Scenario::DuplicateInvoice => {
            let acc = 5_105_600_000u64 + rng.random_range(0..99_999);
            let err = SapError::new(
                "M8/108",
                format!("Check if invoice already entered under accounting document {acc} {}", today.year()),
                "SupplierInvoiceIDByInvcgParty",
            );
            (400, err)
        }
    };
    GeneratedFailure { scenario, request: req, failure: SapFailure { http_status: status, body: err } }
}

fn items_mut<'v>(p: &'v mut Value, nav: &str) -> Vec<&'v mut Value> {
    match p.get_mut(nav).and_then(|v| v.get_mut("results")).and_then(Value::as_array_mut) {
        Some(a) => a.iter_mut().collect(),
        None => Vec::new(),
    }
}

fn find_po(p: &Value) -> Option<String> {
    for nav in ["to_SuplrInvcItemPurOrdRef", "to_MaterialDocumentItem", "to_DeliveryDocumentItem"] {
        for it in items_of(p, nav) {
            for k in ["PurchaseOrder", "ReferenceSDDocument"] {
                if let Some(s) = it.get(k).and_then(Value::as_str) {
                    return Some(s.to_string());
                }
            }
        }
    }
    p.get("PurchaseOrder").and_then(Value::as_str).map(str::to_string)
}
