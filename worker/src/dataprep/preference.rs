//! Preference pairs: the target decision against a plausible wrong one, each scored with the
//! verifiable reward PPO uses, so the margin says how much better the chosen one is.

use serde_json::{Value, json};

use super::examples::{Decision, PreferencePair};
use sapllm_sap::catalog::Catalog;
use sapllm_sap::routing::EXCEPTION_ENDPOINT;
use sapllm_sap::rules::{RuleContext, pass_rate, validate};

/// The verifiable reward: 0.7 x (correct endpoint ? +1 : -1) + 0.2 x rule pass rate + 0.1 x
/// calibration, where calibration = 1 - (confidence - correct)^2 (a Brier-style term).
pub fn verifiable_reward(endpoint_correct: bool, rule_pass_rate: f64, confidence: f64) -> f64 {
    let correct = if endpoint_correct { 1.0 } else { 0.0 };
    0.7 * (2.0 * correct - 1.0) + 0.2 * rule_pass_rate + 0.1 * (1.0 - (confidence - correct).powi(2))
}

/// Rule pass rate of `payload` at `endpoint` (0 for exception handling or an unknown/read-only
/// API: nothing valid can be posted there).
fn rules_at(catalog: &Catalog, endpoint: &str, payload: &Value, ctx: &RuleContext) -> f64 {
    if endpoint == EXCEPTION_ENDPOINT {
        return if payload.is_null() { 1.0 } else { 0.0 };
    }
    match catalog.api_for_endpoint(endpoint) {
        Some(api) if !api.read_only => pass_rate(&validate(api, payload, ctx)),
        _ => 0.0,
    }
}

pub struct PairInput<'a> {
    pub doc_id: &'a str,
    pub doc_type: &'a str,
    pub split: &'a str,
    pub adc_json: &'a Value,
    pub target_endpoint: &'a str,
    pub target_payload: &'a Value,
    /// The payload the serving API would get (also for exception targets).
    pub built_payload: Option<&'a Value>,
    pub serving_endpoint: Option<&'a str>,
    pub confidence: f64,
    /// A wrong endpoint this case was really sent to.
    pub logged_misroute: Option<&'a str>,
    pub candidates: &'a [String],
    pub variant_seed: u64,
    /// The target payload's rule pass rate when the caller already has it (saves a validation).
    pub target_pass_rate: Option<f64>,
}

/// The rejected side of a pair and both rewards.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredRejection {
    pub endpoint: String,
    pub payload: Value,
    pub kind: &'static str,
    pub chosen_reward: f64,
    pub rejected_reward: f64,
}

impl ScoredRejection {
    pub fn margin(&self) -> f64 {
        self.chosen_reward - self.rejected_reward
    }
}

/// Picks the rejected decision and scores both sides; `None` when no wrong alternative scores
/// lower. [`pair`] wraps it into an owned [`PreferencePair`].
pub fn score_rejection(catalog: &Catalog, ctx: &RuleContext, p: &PairInput) -> Option<ScoredRejection> {
    let (endpoint, payload, kind) = rejected(p)?;
    let chosen_rules =
        p.target_pass_rate.unwrap_or_else(|| rules_at(catalog, p.target_endpoint, p.target_payload, ctx));
    let chosen_reward = verifiable_reward(true, chosen_rules, p.confidence);
    let rejected_reward = verifiable_reward(
        endpoint == p.target_endpoint,
        rules_at(catalog, &endpoint, &payload, ctx),
        p.confidence,
    );
    let s = ScoredRejection { endpoint, payload, kind, chosen_reward, rejected_reward };
    (s.margin() > 1e-9).then_some(s)
}

/// Builds the pair, or `None` when no wrong alternative scores lower.
pub fn pair(catalog: &Catalog, ctx: &RuleContext, p: &PairInput) -> Option<PreferencePair> {
    let r = score_rejection(catalog, ctx, p)?;
    Some(PreferencePair {
        doc_id: p.doc_id.into(),
        doc_type: p.doc_type.into(),
        split: p.split.into(),
        adc_json: p.adc_json.clone(),
        chosen: Decision {
            endpoint: p.target_endpoint.into(),
            payload: p.target_payload.clone(),
            confidence: p.confidence,
            reward: r.chosen_reward,
        },
        margin: r.margin(),
        rejected: Decision {
            endpoint: r.endpoint,
            payload: r.payload,
            confidence: p.confidence,
            reward: r.rejected_reward,
        },
        rejection_kind: r.kind.into(),
    })
}

fn rejected(p: &PairInput) -> Option<(String, Value, &'static str)> {
    if let Some(wrong) = p.logged_misroute {
        return Some((wrong.into(), p.target_payload.clone(), "logged_misroute"));
    }
    if p.target_endpoint == EXCEPTION_ENDPOINT {
        // Posting an incomplete document anyway.
        let e = p.serving_endpoint?;
        return Some((e.into(), p.built_payload?.clone(), "posted_incomplete_document"));
    }
    let pl = p.target_payload;
    if pl.get("SupplierInvoiceIsCreditMemo").and_then(Value::as_str) == Some("X") {
        let mut v = pl.clone();
        v.as_object_mut()?.remove("SupplierInvoiceIsCreditMemo");
        negate_amounts(&mut v);
        return Some((p.target_endpoint.into(), v, "missing_credit_memo_flag"));
    }
    if pl.get("to_SuplrInvcItemPurOrdRef").is_some() && p.variant_seed.is_multiple_of(2) {
        let mut v = pl.clone();
        let items = v.as_object_mut()?.remove("to_SuplrInvcItemPurOrdRef")?;
        let gl: Vec<Value> = items["results"]
            .as_array()?
            .iter()
            .map(|i| json!({"SupplierInvoiceItem": i["SupplierInvoiceItem"].as_str().map(|s| s[2..].to_string()), "SupplierInvoiceItemAmount": i["SupplierInvoiceItemAmount"], "DocumentCurrency": i["DocumentCurrency"]}))
            .collect();
        v["to_SupplierInvoiceItemGLAcct"] = json!({"results": gl});
        return Some((p.target_endpoint.into(), v, "ignored_po_reference"));
    }
    if p.variant_seed.is_multiple_of(3) {
        let mut v = pl.clone();
        break_odata_formats(&mut v);
        if v != *pl {
            return Some((p.target_endpoint.into(), v, "odata_format_errors"));
        }
    }
    let wrong = p.candidates.iter().find(|c| c.as_str() != p.target_endpoint)?;
    Some((wrong.clone(), pl.clone(), "wrong_api"))
}

fn negate_amounts(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k.ends_with("Amount") {
                    if let Some(s) = x.as_str() {
                        *x = json!(format!("-{s}"));
                    }
                } else {
                    negate_amounts(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(negate_amounts),
        _ => {}
    }
}

/// What a naive writer produces: ISO dates instead of /Date(ms)/, unpadded item numbers, items
/// as a bare list of numbers-as-numbers.
fn break_odata_formats(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if let Some(s) = x.as_str() {
                    if let Some(d) = sapllm_sap::odata::parse_date(s) {
                        *x = json!(d.to_string());
                    } else if k.ends_with("Item") && s.len() >= 4 && s.chars().all(|c| c.is_ascii_digit()) {
                        *x = json!(s.trim_start_matches('0'));
                    }
                } else {
                    break_odata_formats(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(break_odata_formats),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reward_matches_the_documented_formula() {
        assert!((verifiable_reward(true, 1.0, 1.0) - 1.0).abs() < 1e-12);
        assert!((verifiable_reward(false, 0.0, 1.0) - (-0.7)).abs() < 1e-12);
        // 0.7 + 0.2*0.5 + 0.1*(1 - 0.2^2)
        assert!((verifiable_reward(true, 0.5, 0.8) - 0.896).abs() < 1e-12);
    }
}
