//! The verifiable reward of one routing answer.
//!
//! `total = w_api * api + w_rules * rules + w_conf * calibration`, weights from the TrainingRun
//! (`spec.stages.ppo.rewardWeights`, default 0.7 / 0.2 / 0.1):
//! - `api`: +1 when the answer's endpoint is the target endpoint, -1 otherwise (also when the
//!   answer cannot be parsed: no endpoint is a wrong endpoint).
//! - `rules`: +0.25 per satisfied business rule, at most 1.0. The rules are data-prep's validator
//!   ([`sapllm_sap::rules::validate`]) run on the answer's payload as a create to the ANSWER's
//!   endpoint (what SAP would receive). A rule (by its stable id) is satisfied when every check
//!   of it passed. Exception handling with no payload satisfies the rules outright (nothing is
//!   posted, data-prep scores it the same way); a payload for exception handling, a read-only or
//!   an unknown API, or an unparseable answer satisfies none.
//! - `calibration`: a Brier score mapped to [-1, 1]: `1 - 2 (c - y)^2`, with `c` the stated
//!   confidence clamped to [0, 1] and `y` = 1 when the endpoint is right, else 0. Confident and
//!   right gives +1, confident and wrong -1, 0.5 either way +0.5. The Brier score is a proper
//!   scoring rule: its expectation is maximised by stating the true probability of being right,
//!   so the policy is paid for calibration, not for always saying 1 (a linear `c if right else
//!   -c` would push every confidence to 0 or 1). An unparseable answer scores -1.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::dataprep::examples::RoutingExample;
use sapllm_engine::format::RoutingAnswer;
use sapllm_engine::template::parse_response;
use sapllm_sap::catalog::Catalog;
use sapllm_sap::routing::EXCEPTION_ENDPOINT;
use sapllm_sap::rules::{RuleContext, validate};

/// Credit per satisfied rule and its cap, as the business specified.
pub const RULE_CREDIT: f64 = 0.25;
pub const RULES_CAP: f64 = 1.0;

/// Weights of the three parts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RewardWeights {
    pub api: f64,
    pub rules: f64,
    pub confidence: f64,
}

impl Default for RewardWeights {
    fn default() -> Self {
        RewardWeights { api: 0.7, rules: 0.2, confidence: 0.1 }
    }
}

impl From<&sapllm_crds::RewardWeights> for RewardWeights {
    fn from(w: &sapllm_crds::RewardWeights) -> Self {
        RewardWeights { api: w.api, rules: w.business_rules, confidence: w.confidence }
    }
}

impl RewardWeights {
    /// Rejects weights that cannot score, naming the setting.
    pub fn check(&self) -> anyhow::Result<()> {
        for (name, w) in [("api", self.api), ("businessRules", self.rules), ("confidence", self.confidence)] {
            anyhow::ensure!(w.is_finite() && w >= 0.0, "ppo.rewardWeights.{name} must be >= 0, got {w}");
        }
        anyhow::ensure!(
            self.api + self.rules + self.confidence > 0.0,
            "ppo.rewardWeights: at least one weight must be > 0"
        );
        Ok(())
    }
}

/// The three parts of a reward (unweighted) and the weighted total.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reward {
    pub total: f64,
    /// +1 / -1.
    pub api: f64,
    /// In [0, 1].
    pub rules: f64,
    /// In [-1, 1].
    pub calibration: f64,
    /// Whether the answer parsed as a routing answer.
    pub parsed: bool,
    pub endpoint_correct: bool,
}

/// Rules term of `payload` posted to `endpoint`.
pub fn rules_term(catalog: &Catalog, endpoint: &str, payload: &Value) -> f64 {
    if endpoint == EXCEPTION_ENDPOINT {
        return if payload.is_null() { RULES_CAP } else { 0.0 };
    }
    let Some(api) = catalog.api_for_endpoint(endpoint) else { return 0.0 };
    if api.read_only {
        return 0.0;
    }
    // A rule id is satisfied when all of its checks passed.
    let mut by_rule: BTreeMap<String, bool> = BTreeMap::new();
    for o in validate(api, payload, &RuleContext::default()) {
        let e = by_rule.entry(o.rule_id).or_insert(true);
        *e &= o.passed;
    }
    let satisfied = by_rule.values().filter(|&&ok| ok).count() as f64;
    (RULE_CREDIT * satisfied).min(RULES_CAP)
}

/// Brier calibration mapped to [-1, 1].
pub fn calibration_term(confidence: f64, correct: bool) -> f64 {
    let c = if confidence.is_finite() { confidence.clamp(0.0, 1.0) } else { 0.5 };
    let y = if correct { 1.0 } else { 0.0 };
    1.0 - 2.0 * (c - y).powi(2)
}

/// Scores a parsed (or unparseable) answer against the example's target.
pub fn score_answer(
    catalog: &Catalog,
    weights: &RewardWeights,
    ex: &RoutingExample,
    answer: Option<&RoutingAnswer>,
) -> Reward {
    let (api, rules, calibration, correct) = match answer {
        None => (-1.0, 0.0, -1.0, false),
        Some(a) => {
            let correct = a.endpoint == ex.target_endpoint;
            let api = if correct { 1.0 } else { -1.0 };
            (
                api,
                rules_term(catalog, &a.endpoint, &a.payload),
                calibration_term(a.confidence, correct),
                correct,
            )
        }
    };
    Reward {
        total: weights.api * api + weights.rules * rules + weights.confidence * calibration,
        api,
        rules,
        calibration,
        parsed: answer.is_some(),
        endpoint_correct: correct,
    }
}

/// Parses generated text with the shared template and scores it.
pub fn score_text(catalog: &Catalog, weights: &RewardWeights, ex: &RoutingExample, text: &str) -> Reward {
    let answer: Option<RoutingAnswer> = parse_response(text).ok();
    score_answer(catalog, weights, ex, answer.as_ref())
}
