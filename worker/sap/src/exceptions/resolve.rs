//! From a failure to its action: a table keyed by SAP message code (and HTTP status), with the
//! correction derived from the failed request itself, never guessed.

use chrono::Datelike;
use serde_json::{Value, json};

use super::{ExceptionAction, PatchOp, Resolution, RetryPolicy, SapFailure};
use crate::odata;

/// Tax rates (percent) a missing tax line is recognised by.
const TAX_RATES: &[f64] = &[5.0, 7.0, 8.0, 10.0, 16.0, 19.0, 20.0, 21.0, 22.0, 25.0];

fn add(path: String, value: Value) -> PatchOp {
    PatchOp { op: "add".into(), path, value: Some(value) }
}

fn items_path(request: &Value, nav: &str) -> (String, Vec<Value>) {
    match request.get(nav) {
        Some(Value::Array(a)) => (format!("/{nav}"), a.clone()),
        Some(o) => (
            format!("/{nav}/results"),
            o.get("results").and_then(Value::as_array).cloned().unwrap_or_default(),
        ),
        None => (format!("/{nav}/results"), Vec::new()),
    }
}

/// Decides what to do about `failure` of the create `request`.
pub fn resolve(failure: &SapFailure, request: &Value) -> Resolution {
    let code = failure.body.error.code.as_str();
    let msg = failure.body.error.message.value.as_str();
    let field = failure.body.propertyref().unwrap_or("").to_string();
    let retry = |attempts, ms, refresh| RetryPolicy {
        max_attempts: attempts,
        initial_backoff_ms: ms,
        multiplier: 2.0,
        refresh_csrf_token: refresh,
    };
    let plain = |action, reason: String| Resolution {
        action,
        reason,
        correction: Vec::new(),
        retry: None,
        rule: None,
    };
    if failure.http_status == 403 && msg.to_lowercase().contains("csrf") {
        return Resolution {
            retry: Some(retry(3, 500, true)),
            ..plain(
                ExceptionAction::Retry,
                "HTTP 403 CSRF token validation failed: fetch a fresh token and resend".into(),
            )
        };
    }
    if matches!(failure.http_status, 429 | 502 | 503 | 504) {
        return Resolution {
            retry: Some(retry(5, 2000, false)),
            ..plain(
                ExceptionAction::Retry,
                format!("HTTP {} is transient: resend after a backoff", failure.http_status),
            )
        };
    }
    match code {
        "ME/006" => Resolution {
            retry: Some(retry(4, 5000, false)),
            ..plain(
                ExceptionAction::Retry,
                format!(
                    "ME/006: {msg}; the lock is released when the other user saves, so retry with backoff"
                ),
            )
        },
        "MM_IM_ODATA_API_MDOC/011" => goods_movement_fix(request, msg),
        "M7/360" => plain(
            ExceptionAction::Escalate,
            format!("M7/360: {msg}; the receipt and the PO disagree on the material, a buyer must decide"),
        ),
        "M7/053" => period_closed(request, msg),
        "M8/186" => balance(request, msg),
        "M8/108" => plain(
            ExceptionAction::Reject,
            format!("M8/108: {msg}; posting it again would pay the supplier twice"),
        ),
        _ => plain(
            ExceptionAction::Escalate,
            format!("{code}: {msg} (field {field}); no automatic handling is known for this code"),
        ),
    }
}

fn goods_movement_fix(request: &Value, msg: &str) -> Resolution {
    let (base, items) = items_path(request, "to_MaterialDocumentItem");
    let mut ops = Vec::new();
    if request.get("GoodsMovementCode").and_then(Value::as_str) != Some("01") {
        ops.push(add("/GoodsMovementCode".into(), json!("01")));
    }
    for (i, it) in items.iter().enumerate() {
        if it.get("PurchaseOrder").is_none() {
            continue;
        }
        if it.get("GoodsMovementRefDocType").and_then(Value::as_str) != Some("B") {
            ops.push(add(format!("{base}/{i}/GoodsMovementRefDocType"), json!("B")));
        }
        if it.get("GoodsMovementType").and_then(Value::as_str) != Some("101") {
            ops.push(add(format!("{base}/{i}/GoodsMovementType"), json!("101")));
        }
    }
    Resolution {
        action: ExceptionAction::AutoCorrect,
        reason: format!(
            "MM_IM_ODATA_API_MDOC/011: {msg}; a receipt for a PO is movement 101 with reference type B, so set them and resend"
        ),
        correction: ops,
        retry: None,
        rule: None,
    }
}

/// Periods named in "Posting only possible in periods 2024/04 and 2024/03 in company code 1010".
fn open_periods(msg: &str) -> Vec<(i32, u32)> {
    msg.split(|c: char| c.is_whitespace() || c == ',')
        .filter_map(|w| {
            let (y, m) = w.split_once('/')?;
            Some((y.parse().ok()?, m.parse().ok()?))
        })
        .filter(|(y, m)| *y > 1900 && (1..=12).contains(m))
        .collect()
}

fn period_closed(request: &Value, msg: &str) -> Resolution {
    let periods = open_periods(msg);
    let doc_date = request.get("DocumentDate").and_then(Value::as_str).and_then(odata::parse_date);
    let in_open = doc_date.filter(|d| periods.contains(&(d.year(), d.month())));
    match in_open {
        Some(d) => Resolution {
            action: ExceptionAction::ApplyRule,
            reason: format!(
                "M7/053: {msg}; the document date {d} lies in an open period, so the posting-date rule posts on it"
            ),
            correction: vec![add("/PostingDate".into(), json!(odata::date(d)))],
            retry: None,
            rule: Some("posting_date_into_open_period".into()),
        },
        None => Resolution {
            action: ExceptionAction::Escalate,
            reason: format!(
                "M7/053: {msg}; the document belongs to a closed period, accounting must decide where it posts"
            ),
            correction: Vec::new(),
            retry: None,
            rule: None,
        },
    }
}

fn balance(request: &Value, msg: &str) -> Resolution {
    let dec = |v: &Value, k: &str| v.get(k).and_then(odata::parse_decimal);
    let (_, po) = items_path(request, "to_SuplrInvcItemPurOrdRef");
    let (_, gl) = items_path(request, "to_SupplierInvoiceItemGLAcct");
    let (tax_base, taxes) = items_path(request, "to_SupplierInvoiceTax");
    let items: f64 = po.iter().chain(&gl).filter_map(|i| dec(i, "SupplierInvoiceItemAmount")).sum();
    let tax: f64 = taxes.iter().filter_map(|t| dec(t, "TaxAmount")).sum();
    let gross = dec(request, "InvoiceGrossAmount").unwrap_or(0.0);
    let diff = gross - items - tax;
    let rate = if items > 0.0 { diff / items * 100.0 } else { 0.0 };
    let known_rate =
        TAX_RATES.iter().find(|r| (rate - **r).abs() < 0.05 && (items * **r / 100.0 - diff).abs() < 0.015);
    let tax_code = po.iter().chain(&gl).find_map(|i| i.get("TaxCode").and_then(Value::as_str));
    match (taxes.is_empty(), known_rate, tax_code) {
        (true, Some(r), Some(code)) => {
            let currency = request.get("DocumentCurrency").cloned().unwrap_or(Value::Null);
            let line =
                json!({"TaxCode": code, "DocumentCurrency": currency, "TaxAmount": odata::decimal(diff, 3)});
            Resolution {
                action: ExceptionAction::AutoCorrect,
                reason: format!(
                    "M8/186: {msg}; the difference {diff:.2} is exactly {r}% of the items {items:.2}, so the tax line is missing: add it"
                ),
                correction: vec![add(format!("{tax_base}/-"), line)],
                retry: None,
                rule: None,
            }
        }
        _ => Resolution {
            action: ExceptionAction::Escalate,
            reason: format!(
                "M8/186: {msg}; the difference {diff:.2} is not a missing tax line, an accountant must check the amounts"
            ),
            correction: Vec::new(),
            retry: None,
            rule: None,
        },
    }
}

/// Applies `ops` to a copy of `payload`. Missing parents are created (`-` appends to an array).
pub fn apply_correction(payload: &Value, ops: &[PatchOp]) -> Result<Value, String> {
    let mut out = payload.clone();
    for op in ops {
        let parts: Vec<String> =
            op.path.split('/').skip(1).map(|p| p.replace("~1", "/").replace("~0", "~")).collect();
        let Some((last, parents)) = parts.split_last() else {
            return Err(format!("patch path {:?} must point inside the payload", op.path));
        };
        let mut cur = &mut out;
        for (i, p) in parents.iter().enumerate() {
            let next_is_index = parts.get(i + 1).is_some_and(|n| n == "-" || n.parse::<usize>().is_ok());
            cur = match cur {
                Value::Object(m) => {
                    m.entry(p.clone()).or_insert_with(|| if next_is_index { json!([]) } else { json!({}) })
                }
                Value::Array(a) => {
                    let idx: usize =
                        p.parse().map_err(|_| format!("{:?}: {p:?} is not an array index", op.path))?;
                    a.get_mut(idx).ok_or_else(|| format!("{:?}: index {idx} out of range", op.path))?
                }
                _ => return Err(format!("{:?}: {p:?} is not inside an object or array", op.path)),
            };
        }
        match (op.op.as_str(), cur) {
            ("add", Value::Object(m)) => {
                m.insert(last.clone(), op.value.clone().unwrap_or(Value::Null));
            }
            ("add", Value::Array(a)) if last == "-" => a.push(op.value.clone().unwrap_or(Value::Null)),
            ("remove", Value::Object(m)) => {
                m.remove(last);
            }
            (other, _) => return Err(format!("patch op {other:?} at {:?} is not supported here", op.path)),
        }
    }
    Ok(out)
}
