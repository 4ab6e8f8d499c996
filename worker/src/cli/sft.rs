//! `sapllm-worker sft`: QLoRA fine-tuning, from flags or from a TrainingRun manifest.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::driver::stages::{RunContext, sft_config};
use crate::progress::ProgressMode;
use crate::train::sft::{SftConfig, run};
use sapllm_engine::profile::PromptProfile;
use sapllm_model::linear::{LoraConfig, Precision};
use sapllm_model::peft::AdapterLayout;

/// Arguments of `sft`.
#[derive(Debug, Args)]
pub struct SftArgs {
    /// Take every setting from this TrainingRun manifest (flags below are then ignored).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Run directory when using a manifest (default `runs/<name>`).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Base model folder (config.json, safetensors, tokenizer.json).
    #[arg(long, required_unless_present = "file")]
    pub base_model: Option<PathBuf>,
    /// Data-prep output folder.
    #[arg(long, required_unless_present = "file")]
    pub data: Option<PathBuf>,
    /// Output folder (checkpoints, adapter, loss curve).
    #[arg(long, required_unless_present = "file")]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = 16)]
    pub lora_r: usize,
    #[arg(long, default_value_t = 32.0)]
    pub lora_alpha: f64,
    #[arg(long, default_value_t = 0.05)]
    pub lora_dropout: f64,
    /// Comma-separated modules: q_proj,k_proj,v_proj,o_proj,w1,w2,w3,gate.
    #[arg(long, default_value = "q_proj,k_proj,v_proj,o_proj", value_delimiter = ',')]
    pub target_modules: Vec<String>,
    /// Frozen base precision: f32, bf16, int8 or nf4.
    #[arg(long, default_value = "nf4")]
    pub precision: Precision,
    #[arg(long, default_value_t = 3)]
    pub epochs: u64,
    #[arg(long, default_value_t = 2e-5)]
    pub lr: f64,
    #[arg(long, default_value_t = 2)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 8)]
    pub grad_accum: usize,
    #[arg(long)]
    pub max_steps: Option<u64>,
    #[arg(long, default_value_t = 0.03)]
    pub warmup_ratio: f64,
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    #[arg(long, default_value_t = 512)]
    pub max_seq_len: usize,
    #[arg(long)]
    pub gradient_checkpointing: bool,
    #[arg(long, default_value_t = 100)]
    pub checkpoint_interval: u64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// List candidate APIs by name only in prompts (small presets); saved with the adapter.
    #[arg(long)]
    pub no_candidate_schemas: bool,
    /// Similar past cases shown in prompts at most.
    #[arg(long, default_value_t = 3)]
    pub max_similar_cases: usize,
    /// Leave the validator's blocking findings out of prompts (saved with the adapter).
    #[arg(long)]
    pub no_pre_checks: bool,
    /// Stop after this many steps in this invocation (a rerun resumes from the checkpoint).
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// Layout of the saved adapter: per-expert (Hub/transformers 4 names) or fused
    /// (transformers 5 + PEFT >= 0.18 `target_parameters`). Default: per-expert, or with --file
    /// the manifest's `spec.stages.sft.adapterLayout`, which the flag overrides.
    #[arg(long)]
    pub adapter_layout: Option<AdapterLayout>,
}

/// Runs SFT and prints its summary as JSON.
pub fn execute(args: SftArgs, progress: ProgressMode) -> anyhow::Result<ExitCode> {
    let mut cfg = match &args.file {
        Some(file) => sft_config(&RunContext::from_manifest(file, args.run_dir.clone(), progress)?),
        None => SftConfig {
            base_model: args.base_model.clone().expect("clap requires it"),
            data_dir: args.data.clone().expect("clap requires it"),
            out_dir: args.out.clone().expect("clap requires it"),
            lora: LoraConfig {
                r: args.lora_r,
                alpha: args.lora_alpha,
                dropout: args.lora_dropout,
                target_modules: args.target_modules.clone(),
            },
            precision: args.precision,
            epochs: args.epochs,
            learning_rate: args.lr,
            batch_size: args.batch_size,
            gradient_accumulation: args.grad_accum,
            max_steps: args.max_steps,
            warmup_ratio: args.warmup_ratio,
            weight_decay: args.weight_decay,
            max_grad_norm: args.max_grad_norm,
            max_seq_len: args.max_seq_len,
            gradient_checkpointing: args.gradient_checkpointing,
            checkpoint_interval: args.checkpoint_interval,
            seed: args.seed,
            prompt: PromptProfile {
                candidate_schemas: !args.no_candidate_schemas,
                max_similar_cases: args.max_similar_cases,
                pre_checks: !args.no_pre_checks,
            },
            stop_after: None,
            adapter_layout: AdapterLayout::default(),
            progress,
        },
    };
    cfg.stop_after = args.stop_after;
    if let Some(layout) = args.adapter_layout {
        cfg.adapter_layout = layout;
    }
    let summary = run(&cfg)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(ExitCode::SUCCESS)
}
