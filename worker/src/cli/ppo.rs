//! `sapllm-worker ppo`: RL of the SFT policy (PPO, GRPO or DPO), from flags or from a
//! TrainingRun manifest.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::driver::rl_stage as stage;
use crate::driver::stages::RunContext;
use crate::progress::ProgressMode;
use crate::rl::reward::RewardWeights;
use crate::rl::{RlAlgorithm, RlConfig, run};
use sapllm_model::linear::Precision;
use sapllm_model::peft::AdapterLayout;

/// The algorithm on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AlgorithmArg {
    Ppo,
    Grpo,
    Dpo,
}

impl From<AlgorithmArg> for RlAlgorithm {
    fn from(a: AlgorithmArg) -> Self {
        match a {
            AlgorithmArg::Ppo => RlAlgorithm::Ppo,
            AlgorithmArg::Grpo => RlAlgorithm::Grpo,
            AlgorithmArg::Dpo => RlAlgorithm::Dpo,
        }
    }
}

/// Arguments of `ppo`.
#[derive(Debug, Args)]
pub struct PpoArgs {
    /// Take every setting from this TrainingRun manifest (flags below are then ignored, except
    /// --stop-after).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Run directory when using a manifest (default `runs/<name>`).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Base model folder (config.json, safetensors, tokenizer.json).
    #[arg(long, required_unless_present = "file")]
    pub base_model: Option<PathBuf>,
    /// The SFT adapter to improve (also the frozen reference policy).
    #[arg(long, required_unless_present = "file")]
    pub adapter: Option<PathBuf>,
    /// Data-prep output folder.
    #[arg(long, required_unless_present = "file")]
    pub data: Option<PathBuf>,
    /// Output folder (checkpoints, adapter, history, curves).
    #[arg(long, required_unless_present = "file")]
    pub out: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "ppo")]
    pub algorithm: AlgorithmArg,
    /// Frozen base precision: f32, bf16, int8 or nf4.
    #[arg(long, default_value = "nf4")]
    pub precision: Precision,
    #[arg(long, default_value_t = 5000)]
    pub iterations: u64,
    #[arg(long, default_value_t = 1e-6)]
    pub lr: f64,
    /// Per-token KL penalty (PPO), KL loss weight (GRPO), beta (DPO).
    #[arg(long, default_value_t = 0.05)]
    pub kl_coef: f64,
    /// Problems per iteration (DPO: pairs).
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 2)]
    pub mini_batch_size: usize,
    #[arg(long, default_value_t = 4)]
    pub ppo_epochs: usize,
    #[arg(long, default_value_t = 0.2)]
    pub clip_range: f64,
    /// GRPO: answers per problem.
    #[arg(long, default_value_t = 8)]
    pub group_size: usize,
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    #[arg(long, default_value_t = 384)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 1024)]
    pub max_seq_len: usize,
    /// Reward weights: API success, business rules, confidence calibration.
    #[arg(long, default_value_t = 0.7)]
    pub w_api: f64,
    #[arg(long, default_value_t = 0.2)]
    pub w_rules: f64,
    #[arg(long, default_value_t = 0.1)]
    pub w_conf: f64,
    /// Stop when the KL to the reference exceeds this (nats per response).
    #[arg(long, default_value_t = 25.0)]
    pub max_kl: f64,
    #[arg(long, default_value_t = 50)]
    pub checkpoint_interval: u64,
    /// Validation problems scored greedily before and after.
    #[arg(long, default_value_t = 32)]
    pub eval_samples: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Stop after this many iterations in this invocation (a rerun resumes from the checkpoint).
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// Layout of the saved adapter: per-expert (Hub/transformers 4 names) or fused
    /// (transformers 5 + PEFT >= 0.18 `target_parameters`). Default: per-expert, or with --file
    /// the manifest's `spec.stages.sft.adapterLayout`, which the flag overrides. The SFT adapter
    /// it starts from may be in either.
    #[arg(long)]
    pub adapter_layout: Option<AdapterLayout>,
}

/// Runs the RL stage and prints its summary as JSON.
pub fn execute(args: PpoArgs, progress: ProgressMode) -> anyhow::Result<ExitCode> {
    let mut cfg = match &args.file {
        Some(file) => stage::config(&RunContext::from_manifest(file, args.run_dir.clone(), progress)?),
        None => {
            let mut c = RlConfig::new(
                args.base_model.clone().expect("clap requires it"),
                args.adapter.clone().expect("clap requires it"),
                args.data.clone().expect("clap requires it"),
                args.out.clone().expect("clap requires it"),
            );
            c.algorithm = args.algorithm.into();
            c.precision = args.precision;
            c.iterations = args.iterations;
            c.learning_rate = args.lr;
            c.kl_coef = args.kl_coef;
            c.batch_size = args.batch_size;
            c.mini_batch_size = args.mini_batch_size;
            c.ppo_epochs = args.ppo_epochs;
            c.clip_range = args.clip_range;
            c.group_size = args.group_size;
            c.temperature = args.temperature;
            c.max_new_tokens = args.max_new_tokens;
            c.max_seq_len = args.max_seq_len;
            c.reward_weights =
                RewardWeights { api: args.w_api, rules: args.w_rules, confidence: args.w_conf };
            c.max_kl = args.max_kl;
            c.checkpoint_interval = args.checkpoint_interval;
            c.eval_samples = args.eval_samples;
            c.seed = args.seed;
            c.progress = progress;
            c
        }
    };
    cfg.stop_after = args.stop_after;
    if let Some(layout) = args.adapter_layout {
        cfg.adapter_layout = layout;
    }
    let summary = run(&cfg)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(ExitCode::SUCCESS)
}
