//! Payload field accuracy: how many of the target payload's fields the prediction got right.
//!
//! Both payloads are flattened to leaf paths (`to_Item/results/0/Material`, deep-insert arrays by
//! index). A field is right when the predicted leaf equals the target's (numbers compared as
//! numbers, so "10.50" and 10.5 agree; strings exactly, after trimming). Extra fields the target
//! does not have count against the prediction, so padding a payload with guesses never helps.

use std::collections::BTreeMap;

use serde_json::Value;

/// Right fields out of the fields that count.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FieldScore {
    /// Target leaves the prediction matched.
    pub right: usize,
    /// Target leaves plus predicted leaves the target does not have.
    pub total: usize,
}

impl FieldScore {
    /// Share of fields right; an empty target matched by an empty prediction is fully right.
    pub fn accuracy(&self) -> f64 {
        if self.total == 0 { 1.0 } else { self.right as f64 / self.total as f64 }
    }
}

/// Compares a predicted payload with the target payload.
pub fn score_fields(target: &Value, predicted: &Value) -> FieldScore {
    let t = flatten(target);
    let p = flatten(predicted);
    let right = t.iter().filter(|(k, v)| p.get(*k).is_some_and(|pv| same_leaf(v, pv))).count();
    let extra = p.keys().filter(|k| !t.contains_key(*k)).count();
    FieldScore { right, total: t.len() + extra }
}

/// Leaf paths of a JSON value. `null` leaves are dropped: an absent optional field and an
/// explicit null mean the same to SAP.
pub fn flatten(v: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    walk(v, String::new(), &mut out);
    out
}

fn walk(v: &Value, prefix: String, out: &mut BTreeMap<String, Value>) {
    let join = |k: &str| if prefix.is_empty() { k.to_string() } else { format!("{prefix}/{k}") };
    match v {
        Value::Object(map) => map.iter().for_each(|(k, child)| walk(child, join(k), out)),
        Value::Array(items) => {
            items.iter().enumerate().for_each(|(i, child)| walk(child, join(&i.to_string()), out))
        }
        Value::Null => {}
        leaf => {
            out.insert(prefix, leaf.clone());
        }
    }
}

fn same_leaf(a: &Value, b: &Value) -> bool {
    match (as_number(a), as_number(b)) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => match (a, b) {
            (Value::String(x), Value::String(y)) => x.trim() == y.trim(),
            _ => a == b,
        },
    }
}

/// Numbers and numeric strings (OData V2 sends decimals as strings) compare as numbers; item
/// numbers like "00010" stay strings because their zero padding matters to SAP.
fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) if s.contains('.') => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exact_payload_is_fully_right() {
        let t = json!({"CompanyCode": "1010", "to_Item": {"results": [{"Item": "00010", "Qty": "5.000"}]}});
        let s = score_fields(&t, &t);
        assert_eq!(s, FieldScore { right: 3, total: 3 });
        assert_eq!(s.accuracy(), 1.0);
    }

    #[test]
    fn decimals_compare_as_numbers_but_item_numbers_keep_their_padding() {
        let t = json!({"Amount": "10.50", "Item": "00010"});
        let p = json!({"Amount": "10.5", "Item": "10"});
        assert_eq!(score_fields(&t, &p), FieldScore { right: 1, total: 2 });
    }

    #[test]
    fn missing_wrong_and_extra_fields_all_cost() {
        let t = json!({"A": "1", "B": "2", "C": "3"});
        let p = json!({"A": "1", "B": "x", "D": "4"});
        let s = score_fields(&t, &p);
        assert_eq!(s, FieldScore { right: 1, total: 4 });
        assert!((s.accuracy() - 0.25).abs() < 1e-12);
    }

    #[test]
    fn null_and_absent_are_the_same() {
        assert_eq!(score_fields(&json!({"A": "1", "B": null}), &json!({"A": "1"})).accuracy(), 1.0);
        assert_eq!(score_fields(&Value::Null, &Value::Null).accuracy(), 1.0);
        assert_eq!(score_fields(&Value::Null, &json!({"A": 1})).accuracy(), 0.0);
    }
}
