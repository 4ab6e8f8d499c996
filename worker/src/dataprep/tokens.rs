//! Retrieval terms and near-duplicate fingerprints of a document.
//!
//! Terms come from the canonical (parsed) document, so noise does not split a supplier into
//! "1010" and " 1010 ": `key:value` for short identifier-like values (supplier, PO number,
//! material, G/L account, plant...), `w:word` for title words, and the type.

use serde_json::Value;

use sapllm_sap::documents::AdcDocument;

/// Values longer than this, or with spaces, are text, not identifiers.
const MAX_ID_LEN: usize = 24;

/// Retrieval terms of `doc`.
pub fn terms(doc: &AdcDocument) -> Vec<String> {
    terms_of_json(doc.doc_type().as_str(), &doc.to_value())
}

/// Retrieval terms straight from extraction JSON (no typed round trip): identifiers are trimmed
/// and upper-cased, amounts, quantities and dates (whose noisy spellings vary) are skipped.
pub fn terms_of_json(doc_type: &str, v: &Value) -> Vec<String> {
    let mut out = Vec::with_capacity(48);
    out.push(format!("type:{doc_type}"));
    walk(v, "", &mut out);
    out
}

/// Keys whose values are amounts or quantities: noise writes them as locale strings.
const NUMERIC_KEYS: &[&str] =
    &["unit_price", "amount", "net_amount", "tax_amount", "gross_amount", "quantity"];

fn walk(v: &Value, key: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                walk(x, k, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| walk(x, key, out)),
        Value::String(s) if key == "document_title" => {
            out.extend(s.split_whitespace().map(|w| format!("w:{}", w.to_lowercase())));
        }
        Value::String(_)
            if key.ends_with("_date") || key.starts_with("valid_") || NUMERIC_KEYS.contains(&key) => {}
        Value::String(s) if is_id(s) => {
            let t = s.trim();
            if !t.is_empty() {
                out.push(format!("{key}:{}", t.to_uppercase()));
            }
        }
        _ => {}
    }
}

/// The terms of [`terms_of_json`] as hashes ([`term_hash`] of each), computed without building a
/// string per term: pass 1 of data-prep needs only ids, and 200K records x 40 terms of short-lived
/// strings would dominate its time.
pub fn term_hashes(doc_type: &str, v: &Value) -> Vec<u64> {
    let mut out = Vec::with_capacity(48);
    out.push(fnv_parts(b"type", doc_type.bytes()));
    walk_hash(v, "", &mut out);
    out
}

fn walk_hash(v: &Value, key: &str, out: &mut Vec<u64>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                walk_hash(x, k, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| walk_hash(x, key, out)),
        Value::String(s) if key == "document_title" => {
            out.extend(
                s.split_whitespace().map(|w| fnv_parts(b"w", w.bytes().map(|b| b.to_ascii_lowercase()))),
            );
        }
        Value::String(_)
            if key.ends_with("_date") || key.starts_with("valid_") || NUMERIC_KEYS.contains(&key) => {}
        Value::String(s) if is_id(s) => {
            let t = s.trim();
            if !t.is_empty() {
                out.push(fnv_parts(key.as_bytes(), t.bytes().map(|b| b.to_ascii_uppercase())));
            }
        }
        _ => {}
    }
}

/// FNV-1a of `key:value`, streaming.
fn fnv_parts(key: &[u8], value: impl Iterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.iter().copied().chain(std::iter::once(b':')).chain(value) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The hash of a term string as [`term_hashes`] computes it.
pub fn term_hash(term: &str) -> u64 {
    fnv(term.as_bytes())
}

/// An identifier-like value: short, one word once trimmed (extraction pads codes with spaces).
fn is_id(s: &str) -> bool {
    let t = s.trim();
    !t.is_empty() && t.len() <= MAX_ID_LEN && !t.contains(' ')
}

/// 64-bit FNV-1a: stable across runs and platforms (split assignment must not change when the
/// standard library's hasher does).
pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn normalise(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_uppercase()).collect()
}

/// The business identity of a document: type, partner and its own reference, normalised
/// (case, spaces and punctuation removed). Resubmissions of one document share it; `None` when
/// the document lacks a partner or a reference.
pub fn fingerprint(doc: &AdcDocument) -> Option<u64> {
    let partner = normalise(doc.partner()?);
    let reference = normalise(doc.reference()?);
    if partner.is_empty() || reference.is_empty() {
        return None;
    }
    Some(fnv(format!("{}|{partner}|{reference}", doc.doc_type().as_str()).as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hashed_terms_equal_hashes_of_the_string_terms() {
        let v = json!({"document_title": "Credit Note", "supplier_id": " 17300001 ", "currency": "eur",
                       "gross_amount": "1.190,00", "invoice_date": "15.03.2025", "description": "two words",
                       "items": [{"material": "tg-10001", "quantity": "5"}]});
        let strings = terms_of_json("supplier_credit_memo", &v);
        assert!(
            strings.contains(&"supplier_id:17300001".to_string())
                && strings.contains(&"material:TG-10001".to_string())
        );
        assert!(
            strings.iter().all(|t| !t.starts_with("gross_amount") && !t.starts_with("invoice_date")),
            "{strings:?}"
        );
        let hashed: Vec<u64> = strings.iter().map(|t| term_hash(t)).collect();
        assert_eq!(term_hashes("supplier_credit_memo", &v), hashed);
    }
}
