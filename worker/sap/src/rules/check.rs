//! Scores a model-produced payload against the expected one, field by field, and against the
//! catalog and rules. Evaluation reports `field_accuracy`; the PPO reward can use `rule_pass_rate`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::schema::nav_results;
use super::{RuleContext, RuleOutcome, pass_rate, validate};
use crate::catalog::ApiSpec;
use crate::odata;

/// How a predicted payload compares to the expected one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PayloadCheck {
    /// Expected leaf fields the prediction got exactly right (decimals compared numerically).
    pub correct: usize,
    /// Leaf fields in the expected payload.
    pub expected: usize,
    /// Leaf fields in the predicted payload.
    pub predicted: usize,
    /// correct / expected (1.0 when nothing was expected).
    pub field_accuracy: f64,
    /// Harmonic mean of precision (correct / predicted) and recall (field_accuracy).
    pub f1: f64,
    pub missing: Vec<String>,
    pub wrong: Vec<String>,
    pub extra: Vec<String>,
    /// The validator's outcomes on the prediction.
    pub rules: Vec<RuleOutcome>,
    pub rule_pass_rate: f64,
}

/// Compares `predicted` with `expected` for `api`, and validates `predicted`.
pub fn check_payload(api: &ApiSpec, predicted: &Value, expected: &Value, ctx: &RuleContext) -> PayloadCheck {
    let mut exp = BTreeMap::new();
    let mut pred = BTreeMap::new();
    flatten(expected, String::new(), &mut exp);
    flatten(predicted, String::new(), &mut pred);
    let mut correct = 0;
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    for (path, ev) in &exp {
        match pred.get(path) {
            None => missing.push(path.clone()),
            Some(pv) if same(ev, pv) => correct += 1,
            Some(_) => wrong.push(path.clone()),
        }
    }
    let extra: Vec<String> = pred.keys().filter(|k| !exp.contains_key(*k)).cloned().collect();
    let field_accuracy = if exp.is_empty() { 1.0 } else { correct as f64 / exp.len() as f64 };
    let precision = if pred.is_empty() {
        if exp.is_empty() { 1.0 } else { 0.0 }
    } else {
        correct as f64 / pred.len() as f64
    };
    let f1 = if precision + field_accuracy > 0.0 {
        2.0 * precision * field_accuracy / (precision + field_accuracy)
    } else {
        0.0
    };
    let rules = validate(api, predicted, ctx);
    PayloadCheck {
        correct,
        expected: exp.len(),
        predicted: pred.len(),
        field_accuracy,
        f1,
        missing,
        wrong,
        extra,
        rule_pass_rate: pass_rate(&rules),
        rules,
    }
}

/// Leaf values by path; `{"results": [...]}` and bare arrays flatten the same way.
fn flatten(v: &Value, path: String, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(o) if o.len() == 1 && o.contains_key("results") => {
            if let Some(a) = nav_results(v) {
                flatten(&Value::Array(a.clone()), path, out);
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                flatten(x, p, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                flatten(x, format!("{path}[{i}]"), out);
            }
        }
        leaf => {
            out.insert(path, leaf.clone());
        }
    }
}

/// Equal as SAP would read them: decimals numerically ("10" == "10.000"), strings trimmed.
fn same(a: &Value, b: &Value) -> bool {
    if a == b {
        return true;
    }
    match (a, b) {
        (Value::String(x), Value::String(y)) if x.trim() == y.trim() => true,
        _ => match (odata::parse_decimal(a), odata::parse_decimal(b)) {
            (Some(x), Some(y)) => (x - y).abs() < 1e-9,
            _ => false,
        },
    }
}
