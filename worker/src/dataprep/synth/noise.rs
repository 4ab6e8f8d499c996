//! Extraction noise: what OCR and extraction systems do to a document's values without changing
//! its meaning. Dates in local formats, amounts as locale strings, codes in the wrong case or with
//! stray spaces, OCR confusions in free text, optional fields not found. The typed models parse all
//! of it back to the same facts (the tests check that).

use rand::Rng;
use rand::rngs::SmallRng;
use serde_json::{Map, Value, json};

const DATE_KEYS: &[&str] = &[
    "po_date",
    "invoice_date",
    "posting_date",
    "credit_memo_date",
    "customer_po_date",
    "requested_delivery_date",
    "quotation_date",
    "valid_from",
    "valid_to",
    "return_date",
    "receipt_date",
    "delivery_date",
    "planned_goods_issue_date",
];
const AMOUNT_KEYS: &[&str] = &["unit_price", "amount", "net_amount", "tax_amount", "gross_amount"];
/// Optional fields an extraction may miss without making the document incomplete.
const DROPPABLE: &[&str] = &[
    "supplier_name",
    "supplier_vat_id",
    "payment_terms",
    "incoterms",
    "customer_name",
    "description",
    "bill_of_lading",
    "customer_material",
    "net_amount",
    "storage_location",
    "batch",
    "iban",
    "credit_reason",
    "line_number",
];
const CODE_KEYS: &[&str] = &["currency", "unit", "tax_code", "incoterms", "country", "language"];

/// Applies noise to a rendered document in place; `level` in [0, 1] scales every probability.
pub fn apply(v: &mut Value, r: &mut SmallRng, level: f64) {
    if let Value::Object(m) = v {
        object(m, r, level);
    }
}

fn object(m: &mut Map<String, Value>, r: &mut SmallRng, level: f64) {
    let keys: Vec<String> = m.keys().cloned().collect();
    for k in keys {
        if DROPPABLE.contains(&k.as_str()) && r.random_bool(0.15 * level) {
            m.remove(&k);
            continue;
        }
        let Some(val) = m.get_mut(&k) else { continue };
        match val {
            Value::Array(items) => {
                for it in items.iter_mut() {
                    if let Value::Object(o) = it {
                        object(o, r, level);
                    }
                }
            }
            Value::String(s) if DATE_KEYS.contains(&k.as_str()) && r.random_bool(0.5 * level) => {
                *s = reformat_date(s, r)
            }
            Value::Number(n) if AMOUNT_KEYS.contains(&k.as_str()) && r.random_bool(0.35 * level) => {
                let x = n.as_f64().unwrap_or(0.0);
                *val = json!(locale_amount(x, r));
            }
            Value::Number(n) if k == "quantity" && r.random_bool(0.15 * level) => {
                let x = n.as_f64().unwrap_or(0.0);
                *val = json!(format!("{x}"));
            }
            Value::String(s) if CODE_KEYS.contains(&k.as_str()) && r.random_bool(0.1 * level) => {
                *s = if r.random_bool(0.5) { s.to_lowercase() } else { format!(" {s} ") };
            }
            Value::String(s) if k == "description" && r.random_bool(0.1 * level) => *s = ocr(s, r),
            Value::String(s) if k == "document_title" && r.random_bool(0.2 * level) => *s = s.to_uppercase(),
            _ => {}
        }
    }
}

fn reformat_date(iso: &str, r: &mut SmallRng) -> String {
    let Ok(d) = chrono::NaiveDate::parse_from_str(iso, "%Y-%m-%d") else { return iso.to_string() };
    let fmt = ["%d.%m.%Y", "%m/%d/%Y", "%d %b %Y", "%b %d, %Y", "%Y%m%d"][r.random_range(0..5)];
    d.format(fmt).to_string()
}

fn locale_amount(x: f64, r: &mut SmallRng) -> String {
    let neg = x < 0.0;
    let s = format!("{:.2}", x.abs());
    let (int, frac) = s.split_once('.').expect("formatted with 2 decimals");
    let grouped = |sep: char| {
        let mut out = String::new();
        for (i, c) in int.chars().enumerate() {
            if i > 0 && (int.len() - i) % 3 == 0 {
                out.push(sep);
            }
            out.push(c);
        }
        out
    };
    let body = match r.random_range(0..3) {
        0 => format!("{},{frac}", grouped('.')),
        1 => format!("{}.{frac}", grouped(',')),
        _ => format!("{int}.{frac}"),
    };
    match (neg, r.random_bool(0.5)) {
        (false, _) => body,
        (true, true) => format!("-{body}"),
        (true, false) => format!("{body}-"),
    }
}

fn ocr(s: &str, r: &mut SmallRng) -> String {
    s.chars()
        .map(|c| match c {
            'o' if r.random_bool(0.3) => '0',
            'l' if r.random_bool(0.3) => '1',
            'e' if r.random_bool(0.1) => 'c',
            other => other,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use sapllm_sap::documents::Amount;

    #[test]
    fn locale_amounts_parse_back_to_the_same_value() {
        let mut r = SmallRng::seed_from_u64(1);
        for x in [0.5, 12.0, 1234.56, -119.0, 1_234_567.89] {
            for _ in 0..10 {
                let s = locale_amount(x, &mut r);
                assert_eq!(Amount::parse(&s), Some(Amount(x)), "{s}");
            }
        }
    }
}
