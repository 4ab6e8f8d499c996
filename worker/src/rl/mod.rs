//! `sapllm-worker ppo`: reinforcement learning of the SFT policy on the verifiable reward.
//!
//! Three algorithms share one stage ([`RlAlgorithm`]): PPO (value head, GAE, per-token KL
//! penalty, clipped policy and value losses), GRPO (group-relative advantages, no value head)
//! and DPO (offline, on `preference_pairs.jsonl`).
//!
//! # Which algorithm
//! **PPO** (the default) is the full recipe: on-policy samples, a learned value baseline with
//! GAE for per-token credit, and a per-token KL penalty that keeps the policy near the SFT
//! model. Pick it when the reward is the verifiable one and there is compute for sampling and
//! a second forward pass per step. **GRPO** drops the value head: it samples a group of answers
//! per document and uses each answer's reward relative to its group as the advantage. Pick it
//! when the critic is the problem (small models, sparse end-of-answer rewards, memory), and
//! when the policy still varies its answers to one document; a group whose answers all score
//! the same teaches nothing. **DPO** samples nothing: it raises the likelihood of data-prep's
//! chosen decisions over the rejected ones relative to the SFT model. Pick it for a cheap,
//! stable first improvement, or when rollouts are too slow; it cannot discover answers outside
//! `preference_pairs.jsonl`, and `klPenalty` acts as its beta (TRL's default is 0.1).
//!
//! # Policy and reference
//! The policy is the base model with the SFT adapter loaded as its (trainable) LoRA: RL keeps
//! training the same adapter, so the result is one PEFT adapter that serving and evaluation load
//! like SFT's. The reference is a shallow clone of the policy (the frozen base weights are
//! shared, not copied) into which the SFT adapter is loaded again as separate, never-updated
//! tensors. `set_adapter_enabled(false)` would give the bare base, not the SFT policy, so it is
//! not the reference here; merging the SFT adapter into the base and training a second adapter
//! would make the output two adapters (and re-quantize an NF4 base). The clone costs one extra
//! copy of the adapter only. LoRA dropout stays off throughout (as TRL does for PPO): dropout
//! would make the policy ratio noisy even before any update.
//!
//! # Loop
//! Every iteration samples problems (seeded by iteration, so a resumed run draws the same
//! ones), runs the algorithm's update, logs, checks the guard rails (non-finite reward or loss,
//! KL above `max_kl`) and checkpoints every `checkpoint_interval` iterations. A guard trip stops
//! the run with an error, leaves the checkpoints as they are and copies the newest one's
//! adapter (or the SFT adapter) to `last_good_adapter/`.

pub mod dpo;
pub mod eval;
pub mod gae;
pub mod grpo;
pub mod log;
pub mod ppo;
pub mod resume;
pub mod reward;
pub mod rollout;
pub mod run;
pub mod score;
pub mod value_head;

use std::path::PathBuf;

use anyhow::{Result, ensure};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use run::run;
pub use sapllm_crds::RlAlgorithm;

use self::eval::EvalStats;
use self::reward::RewardWeights;
use self::rollout::Problem;
use self::value_head::ValueHead;
use crate::progress::ProgressMode;
use sapllm_model::linear::Precision;
use sapllm_model::mixtral::Mixtral;
use sapllm_model::optim::AdamW;
use sapllm_model::peft::AdapterLayout;
use sapllm_model::tokenizer::Tokenizer;
use sapllm_sap::catalog::Catalog;

/// Settings of one RL run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RlConfig {
    pub algorithm: RlAlgorithm,
    /// Base model directory (config.json, safetensors, tokenizer.json).
    pub base_model: PathBuf,
    /// The SFT adapter: the starting policy and the frozen reference.
    pub sft_adapter: PathBuf,
    /// Data-prep output folder.
    pub data_dir: PathBuf,
    /// Where checkpoints, the adapter, the history and the curves go.
    pub out_dir: PathBuf,
    pub precision: Precision,
    pub iterations: u64,
    pub learning_rate: f64,
    /// Per-token KL penalty coefficient (PPO), KL loss weight (GRPO), beta (DPO).
    pub kl_coef: f64,
    /// Problems per iteration (DPO: preference pairs).
    pub batch_size: usize,
    /// Problems per gradient step.
    pub mini_batch_size: usize,
    /// Optimisation epochs over each iteration's rollouts.
    pub ppo_epochs: usize,
    pub clip_range: f64,
    pub value_clip_range: f64,
    pub vf_coef: f64,
    pub gamma: f64,
    pub lambda: f64,
    /// Sampling temperature of rollouts (log-probabilities are taken at the same temperature).
    pub temperature: f64,
    pub max_new_tokens: usize,
    /// Prompt + response budget; prompts are shortened as SFT shortened them.
    pub max_seq_len: usize,
    /// GRPO: answers sampled per problem.
    pub group_size: usize,
    pub reward_weights: RewardWeights,
    pub checkpoint_interval: u64,
    /// Guard rail: stop when the mean KL to the reference (nats per response) exceeds this.
    pub max_kl: f64,
    pub max_grad_norm: f64,
    /// Validation problems scored greedily before and after (0 = skip).
    pub eval_samples: usize,
    pub seed: u64,
    /// Stop (as if killed) after this many iterations in this process; for resume tests.
    #[serde(skip)]
    pub stop_after: Option<u64>,
    /// Layout of the final adapter (`--adapter-layout`; checkpoints stay per-expert).
    #[serde(skip)]
    pub adapter_layout: AdapterLayout,
    #[serde(skip)]
    pub progress: ProgressMode,
}

impl RlConfig {
    /// TRL's defaults and the seed's (5000 iterations, lr 1e-6, KL 0.05, batch 8, mini-batch 2).
    pub fn new(base_model: PathBuf, sft_adapter: PathBuf, data_dir: PathBuf, out_dir: PathBuf) -> Self {
        RlConfig {
            algorithm: RlAlgorithm::Ppo,
            base_model,
            sft_adapter,
            data_dir,
            out_dir,
            precision: Precision::Nf4,
            iterations: 5000,
            learning_rate: 1e-6,
            kl_coef: 0.05,
            batch_size: 8,
            mini_batch_size: 2,
            ppo_epochs: 4,
            clip_range: 0.2,
            value_clip_range: 0.2,
            vf_coef: 0.1,
            gamma: 1.0,
            lambda: 0.95,
            temperature: 0.7,
            max_new_tokens: 384,
            max_seq_len: 1024,
            group_size: 8,
            reward_weights: RewardWeights::default(),
            checkpoint_interval: 50,
            max_kl: 25.0,
            max_grad_norm: 1.0,
            eval_samples: 32,
            seed: 42,
            stop_after: None,
            adapter_layout: AdapterLayout::PerExpert,
            progress: ProgressMode::Auto,
        }
    }

    /// Rejects settings that cannot train, naming the setting.
    pub fn check(&self) -> Result<()> {
        ensure!(self.iterations >= 1, "ppo.iterations must be >= 1");
        ensure!(
            self.learning_rate > 0.0 && self.learning_rate.is_finite(),
            "ppo.learningRate must be > 0, got {}",
            self.learning_rate
        );
        ensure!(self.kl_coef >= 0.0 && self.kl_coef.is_finite(), "ppo.klPenalty must be >= 0");
        ensure!(self.batch_size >= 1, "ppo.batchSize must be >= 1");
        ensure!(self.mini_batch_size >= 1, "ppo.miniBatchSize must be >= 1");
        ensure!(
            self.batch_size.is_multiple_of(self.mini_batch_size),
            "ppo.miniBatchSize ({}) must divide ppo.batchSize ({})",
            self.mini_batch_size,
            self.batch_size
        );
        ensure!(self.ppo_epochs >= 1, "ppo.ppoEpochs must be >= 1");
        ensure!(self.clip_range > 0.0 && self.clip_range < 1.0, "ppo.clipRange must be in (0, 1)");
        ensure!(self.value_clip_range > 0.0, "value clip range must be > 0");
        ensure!((0.0..=1.0).contains(&self.gamma), "gamma must be in [0, 1]");
        ensure!((0.0..=1.0).contains(&self.lambda), "lambda must be in [0, 1]");
        ensure!(self.temperature > 0.0, "rollout temperature must be > 0 (RL needs sampling)");
        ensure!(self.max_new_tokens >= 1, "max new tokens must be >= 1");
        ensure!(self.group_size >= 2 || self.algorithm != RlAlgorithm::Grpo, "GRPO needs a group size >= 2");
        ensure!(self.checkpoint_interval >= 1, "ppo.checkpointInterval must be >= 1");
        ensure!(self.max_kl > 0.0, "max KL must be > 0");
        self.reward_weights.check()
    }

    /// Digest of everything that shapes the result: resume refuses a checkpoint of other settings.
    pub fn digest(&self) -> String {
        let mut v = serde_json::to_value(self).expect("config serializes");
        if let Some(o) = v.as_object_mut() {
            o.remove("out_dir");
            // More iterations continue a run; they do not change what was learnt so far.
            o.remove("iterations");
        }
        let mut h = Sha256::new();
        h.update(v.to_string().as_bytes());
        format!("{:x}", h.finalize())
    }
}

/// What an RL run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RlSummary {
    pub algorithm: RlAlgorithm,
    pub adapter_dir: PathBuf,
    pub iterations: u64,
    pub train_problems: usize,
    /// Mean rollout reward of the first and last iterations (PPO / GRPO).
    pub first_reward: Option<f64>,
    pub final_reward: Option<f64>,
    pub final_kl: f64,
    /// Greedy answers on the validation split before and after.
    pub before: Option<EvalStats>,
    pub after: Option<EvalStats>,
    pub resumed_from_iteration: Option<u64>,
    pub completed: bool,
    /// True when the run made the validation reward worse and `adapter_dir` holds the starting
    /// adapter instead of the trained one.
    #[serde(default)]
    pub kept_starting_adapter: bool,
}

/// Everything an algorithm's iteration works with.
pub struct Session<'a> {
    pub cfg: &'a RlConfig,
    pub tok: Tokenizer,
    pub catalog: Catalog,
    pub problems: Vec<Problem>,
    pub policy: Mixtral,
    pub reference: Mixtral,
    pub value_head: Option<ValueHead>,
    pub opt: AdamW,
    /// DPO's training pairs (empty for the others).
    pub pairs: Vec<dpo::PairSequences>,
}

impl Session<'_> {
    /// Indices of the problems of `iteration` (`n` of them, sampled without replacement from
    /// `len`, seeded by the iteration so a resumed run draws the same).
    /// Samples one answer for each problem index in `which` (repeats give a group), seeded by
    /// the iteration so a resumed run samples what an uninterrupted one would.
    pub fn rollouts(&self, which: &[usize], iteration: u64) -> Result<Vec<rollout::Rollout>> {
        let cfg = self.cfg;
        let settings = rollout::SampleSettings {
            max_new_tokens: cfg.max_new_tokens,
            temperature: cfg.temperature,
            seed: mix(cfg.seed, iteration),
        };
        rollout::sample(
            &self.policy,
            &self.tok,
            &self.catalog,
            &cfg.reward_weights,
            &self.problems,
            which,
            &settings,
        )
    }

    pub fn pick(&self, len: usize, n: usize, iteration: u64) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..len).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(mix(self.cfg.seed, iteration));
        idx.shuffle(&mut rng);
        idx.truncate(n.min(len));
        idx
    }
}

/// A seed for (run seed, iteration, salt).
pub fn mix(seed: u64, iteration: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ iteration.wrapping_add(1).wrapping_mul(0xBF58_476D_1CE4_E5B9)
}
