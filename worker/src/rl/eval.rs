//! Greedy scoring of a policy on held-out problems: the before/after numbers of an RL run.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::reward::RewardWeights;
use super::rollout::{Problem, Rollout, SampleSettings, sample};
use sapllm_model::mixtral::Mixtral;
use sapllm_model::tokenizer::Tokenizer;
use sapllm_sap::catalog::Catalog;

/// Mean verifiable reward and its parts over a set of answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalStats {
    pub problems: usize,
    pub mean_reward: f64,
    pub api_accuracy: f64,
    pub parse_rate: f64,
    pub mean_rules: f64,
    pub mean_calibration: f64,
}

impl EvalStats {
    pub fn of(rollouts: &[Rollout]) -> Self {
        let n = rollouts.len().max(1) as f64;
        let mean = |f: &dyn Fn(&Rollout) -> f64| rollouts.iter().map(f).sum::<f64>() / n;
        EvalStats {
            problems: rollouts.len(),
            mean_reward: mean(&|r| r.reward.total),
            api_accuracy: mean(&|r| f64::from(u8::from(r.reward.endpoint_correct))),
            parse_rate: mean(&|r| f64::from(u8::from(r.reward.parsed))),
            mean_rules: mean(&|r| r.reward.rules),
            mean_calibration: mean(&|r| r.reward.calibration),
        }
    }
}

/// Greedy answers of `model` to `problems` (in chunks of `batch`), scored.
pub fn evaluate(
    model: &Mixtral,
    tok: &Tokenizer,
    catalog: &Catalog,
    weights: &RewardWeights,
    problems: &[Problem],
    batch: usize,
    max_new_tokens: usize,
) -> Result<EvalStats> {
    let mut all = Vec::with_capacity(problems.len());
    let idx: Vec<usize> = (0..problems.len()).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let s = SampleSettings { max_new_tokens, temperature: 0.0, seed: 0 };
        all.extend(sample(model, tok, catalog, weights, problems, chunk, &s)?);
    }
    Ok(EvalStats::of(&all))
}
