//! `sapllm-worker pretrain`: full-parameter causal-LM pretraining of a from-scratch preset.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::pretrain::{PretrainConfig, run};
use crate::progress::ProgressMode;
use sapllm_model::config::Preset;

/// Arguments of `pretrain`.
#[derive(Debug, Args)]
pub struct PretrainArgs {
    /// Corpus: a .jsonl/.txt file or a folder of them (JSON lines use `text`, or `prompt`+`response`).
    #[arg(long)]
    pub corpus: PathBuf,
    /// Output folder: config.json, model.safetensors, tokenizer.json, pretrain_report.json, loss PNG.
    #[arg(long)]
    pub output: PathBuf,
    /// Model preset: tiny, small or mixtral-8x7b.
    #[arg(long, default_value = "tiny")]
    pub preset: Preset,
    #[arg(long, default_value_t = 2000)]
    pub steps: usize,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Peak learning rate (linear warmup, then cosine decay to lr * min_lr_ratio).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 100)]
    pub warmup_steps: usize,
    #[arg(long, default_value_t = 0.1)]
    pub min_lr_ratio: f64,
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// BPE vocabulary size to train (ignored with --tokenizer).
    #[arg(long, default_value_t = 2048)]
    pub vocab_size: usize,
    /// Use the tokenizer.json in this folder instead of training one.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Save a resumable checkpoint every N steps (a rerun resumes from it).
    #[arg(long, default_value_t = 200)]
    pub checkpoint_every: usize,
    /// Fraction of the corpus held out for the final eval loss.
    #[arg(long, default_value_t = 0.05)]
    pub eval_fraction: f64,
    /// Recompute decoder layers in backward (less memory, ~30% slower).
    #[arg(long)]
    pub grad_checkpoint: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop after this many steps in this invocation, leaving a checkpoint (a rerun resumes).
    #[arg(long)]
    pub max_steps_this_run: Option<usize>,
    /// Share of the windows that end a quarter-window into a response (prompt/response
    /// corpora): the end of a prompt next to the start of its answer.
    #[arg(long, default_value_t = 0.5)]
    pub anchored_fraction: f64,
    /// Strings the trained BPE keeps as one token each (comma-separated): document types and
    /// API endpoints. Default: those of the API catalog (`--catalog`, or the built-in one).
    #[arg(long, value_delimiter = ',')]
    pub domain_tokens: Option<Vec<String>>,
    /// API catalog JSON the default domain tokens come from (default: the built-in catalog).
    #[arg(long)]
    pub catalog: Option<PathBuf>,
}

/// Runs the stage and prints the report as JSON on success.
pub fn execute(args: PretrainArgs, progress: ProgressMode) -> anyhow::Result<ExitCode> {
    let cfg = PretrainConfig {
        corpus: args.corpus,
        output_dir: args.output,
        preset: args.preset,
        steps: args.steps,
        batch_size: args.batch_size,
        seq_len: args.seq_len,
        lr: args.lr,
        warmup_steps: args.warmup_steps,
        min_lr_ratio: args.min_lr_ratio,
        weight_decay: args.weight_decay,
        max_grad_norm: args.max_grad_norm,
        vocab_size: args.vocab_size,
        tokenizer: args.tokenizer,
        checkpoint_every: args.checkpoint_every,
        eval_fraction: args.eval_fraction,
        grad_checkpoint: args.grad_checkpoint,
        seed: args.seed,
        max_steps_this_run: args.max_steps_this_run,
        anchored_fraction: args.anchored_fraction,
        domain_tokens: match args.domain_tokens {
            Some(t) => t,
            None => match &args.catalog {
                Some(p) => sapllm_sap::catalog::Catalog::load(p)?.domain_tokens(),
                None => sapllm_sap::catalog::Catalog::builtin().domain_tokens(),
            },
        },
    };
    let report = run(&cfg, progress)?;
    eprintln!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}
