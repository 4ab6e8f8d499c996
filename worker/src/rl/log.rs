//! What one iteration reports, and the run's history as JSON lines and PNG curves.

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::plot::{Series, line_chart};

/// Metrics of one iteration. Fields an algorithm does not produce are `None` (DPO samples
/// nothing, so it has no rollout reward; GRPO and DPO have no value loss).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IterLog {
    pub iteration: u64,
    /// Mean total reward of the iteration's rollouts and its three (unweighted) parts.
    pub reward: Option<f64>,
    pub reward_api: Option<f64>,
    pub reward_rules: Option<f64>,
    pub reward_calibration: Option<f64>,
    /// Share of rollouts choosing the right endpoint, and that parsed at all.
    pub api_accuracy: Option<f64>,
    pub parse_rate: Option<f64>,
    /// Mean over responses of sum_t (log pi - log pi_ref): KL to the reference (k1).
    pub kl: f64,
    pub policy_loss: f64,
    pub value_loss: Option<f64>,
    /// Share of response tokens whose ratio left [1 - clip, 1 + clip] (PPO, GRPO).
    pub clip_fraction: Option<f64>,
    /// Mean per-token entropy of the sampling distribution.
    pub entropy: Option<f64>,
    /// DPO: share of pairs whose implicit reward prefers the chosen answer.
    pub preference_accuracy: Option<f64>,
    pub lr: f64,
}

impl IterLog {
    /// The (name, value) pairs for the progress bar / JSON lines.
    pub fn metrics(&self) -> Vec<(&'static str, f64)> {
        let mut m = Vec::new();
        let mut push = |n: &'static str, v: Option<f64>| {
            if let Some(v) = v {
                m.push((n, v));
            }
        };
        push("reward", self.reward);
        push("reward_api", self.reward_api);
        push("reward_rules", self.reward_rules);
        push("reward_calibration", self.reward_calibration);
        push("api_accuracy", self.api_accuracy);
        push("parse_rate", self.parse_rate);
        push("kl", Some(self.kl));
        push("policy_loss", Some(self.policy_loss));
        push("value_loss", self.value_loss);
        push("clip_fraction", self.clip_fraction);
        push("entropy", self.entropy);
        push("preference_accuracy", self.preference_accuracy);
        push("lr", Some(self.lr));
        m
    }
}

/// Writes `history.jsonl`, `reward_curve.png` and `kl_curve.png` under `out_dir`.
pub fn write_history(out_dir: &Path, history: &[IterLog]) -> Result<()> {
    let mut lines = String::new();
    for h in history {
        lines.push_str(&serde_json::to_string(h)?);
        lines.push('\n');
    }
    std::fs::write(out_dir.join("history.jsonl"), lines)?;
    if history.is_empty() {
        return Ok(());
    }
    let pts = |f: &dyn Fn(&IterLog) -> Option<f64>| -> Vec<(f64, f64)> {
        history.iter().filter_map(|h| f(h).map(|v| (h.iteration as f64, v))).collect()
    };
    let reward_series = [
        Series { name: "total", points: pts(&|h| h.reward) },
        Series { name: "api", points: pts(&|h| h.reward_api) },
        Series { name: "rules", points: pts(&|h| h.reward_rules) },
        Series { name: "calibration", points: pts(&|h| h.reward_calibration) },
    ];
    if reward_series.iter().any(|s| !s.points.is_empty()) {
        let series: Vec<Series> = reward_series.into_iter().filter(|s| !s.points.is_empty()).collect();
        line_chart(
            &out_dir.join("reward_curve.png"),
            "RL reward (rollout mean)",
            "iteration",
            "reward",
            &series,
        )?;
    } else {
        // DPO samples nothing: its curve is the preference accuracy.
        line_chart(
            &out_dir.join("reward_curve.png"),
            "DPO preference accuracy",
            "iteration",
            "share of pairs",
            &[Series { name: "accuracy", points: pts(&|h| h.preference_accuracy) }],
        )?;
    }
    line_chart(
        &out_dir.join("kl_curve.png"),
        "KL to the reference (SFT) policy",
        "iteration",
        "nats per response",
        &[Series { name: "kl", points: pts(&|h| Some(h.kl)) }],
    )?;
    Ok(())
}
