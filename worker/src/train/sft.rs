//! `sapllm-worker sft`: QLoRA supervised fine-tuning.
//!
//! The frozen base is loaded in the configured precision (NF4 with double quantization by
//! default) and fresh LoRA adapters are trained on the response tokens of the routing and
//! exception examples. AdamW with weight decay, global-norm clipping, linear warm-up then cosine
//! decay, gradient accumulation over micro-batches (each response token weighs the same in a
//! step, however the micro-batches split them). Checkpoints every N steps; a killed run started
//! again with the same arguments resumes from the newest checkpoint and ends with the same
//! adapter as an uninterrupted run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::batcher::{Batch, collate, epoch_batches};
use super::data;
use super::resume::{self, TrainState};
use crate::plot::{Series, line_chart};
use crate::progress::{Progress, ProgressMode};
use sapllm_engine::profile::PromptProfile;
use sapllm_model::hf_io::load_model;
use sapllm_model::linear::{LoraConfig, Precision};
use sapllm_model::loss::shifted_logprobs;
use sapllm_model::mixtral::{Mixtral, ModelOptions};
use sapllm_model::optim::{AdamW, AdamWConfig, LrSchedule};
use sapllm_model::peft::{self, AdapterLayout};
use sapllm_model::tokenizer::Tokenizer;
use sapllm_sap::catalog::Catalog;

/// Settings of one SFT run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftConfig {
    /// Base model directory (config.json, safetensors, tokenizer.json).
    pub base_model: PathBuf,
    /// Data-prep output folder.
    pub data_dir: PathBuf,
    /// Where checkpoints, the adapter and the loss curve go.
    pub out_dir: PathBuf,
    pub lora: LoraConfig,
    /// Storage of the frozen base weights.
    pub precision: Precision,
    pub epochs: u64,
    pub learning_rate: f64,
    pub batch_size: usize,
    pub gradient_accumulation: usize,
    pub max_steps: Option<u64>,
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub max_seq_len: usize,
    pub gradient_checkpointing: bool,
    pub checkpoint_interval: u64,
    pub seed: u64,
    /// How routing prompts are rendered; saved with the adapter for evaluation and serving.
    pub prompt: PromptProfile,
    /// Stop (as if killed) after this many optimizer steps in this process; for resume tests.
    #[serde(skip)]
    pub stop_after: Option<u64>,
    /// Layout of the final adapter (`--adapter-layout`; checkpoints stay per-expert).
    #[serde(skip)]
    pub adapter_layout: AdapterLayout,
    #[serde(skip)]
    pub progress: ProgressMode,
}

impl SftConfig {
    /// Rejects settings that cannot train, naming the setting.
    pub fn check(&self) -> Result<()> {
        self.lora.validate()?;
        ensure!(self.epochs >= 1, "sft.epochs must be >= 1");
        ensure!(self.batch_size >= 1, "sft.batchSize must be >= 1");
        ensure!(self.gradient_accumulation >= 1, "sft.gradientAccumulation must be >= 1");
        ensure!(self.learning_rate > 0.0 && self.learning_rate.is_finite(), "sft.learningRate must be > 0");
        ensure!((0.0..1.0).contains(&self.warmup_ratio), "sft.warmupRatio must be in [0, 1)");
        ensure!(self.max_seq_len >= 16, "sft.maxSequenceLength must be >= 16");
        ensure!(self.checkpoint_interval >= 1, "sft.checkpointInterval must be >= 1");
        Ok(())
    }

    /// Digest of everything that shapes the result: resume refuses a checkpoint of other settings.
    pub fn digest(&self) -> String {
        let mut v = serde_json::to_value(self).expect("config serializes");
        // Where the output goes does not change what is learnt.
        v.as_object_mut().map(|o| o.remove("out_dir"));
        let mut h = Sha256::new();
        h.update(v.to_string().as_bytes());
        format!("{:x}", h.finalize())
    }
}

/// What an SFT run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SftSummary {
    pub adapter_dir: PathBuf,
    pub steps: u64,
    pub first_loss: f64,
    pub final_loss: f64,
    pub routing_examples: usize,
    pub exception_examples: usize,
    pub skipped_too_long: usize,
    pub tokens_per_second: f64,
    pub resumed_from_step: Option<u64>,
    /// False when the run stopped early on purpose (`stop_after`).
    pub completed: bool,
    /// The loss on held-out (validation split) sequences with and without the adapter, when
    /// the run completed and the data has a validation split.
    #[serde(default)]
    pub held_out: Option<HeldOutLoss>,
}

/// Loss (same weighting as training) on validation sequences the run never trained on. Per-step
/// training losses are of different batches and swing with their mix; this compares the same
/// sequences before (adapter off: the base) and after SFT.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeldOutLoss {
    pub sequences: usize,
    pub base_loss: f64,
    pub adapter_loss: f64,
}

/// Sum over the batch of each target token's log-probability times its loss weight (0 on the
/// prompt and padding): the loss is its negation over the summed weights.
fn weighted_logprob_sum(logits: &Tensor, batch: &Batch) -> Result<Tensor> {
    let lp = shifted_logprobs(logits, &batch.input_ids)?;
    let mask = batch.loss_mask.narrow(1, 1, lp.dim(1)?)?;
    Ok((lp * mask)?.sum_all()?)
}

/// Validation sequences the held-out loss uses at most (forward passes only).
const HELD_OUT_SEQUENCES: usize = 32;

/// [`HeldOutLoss`] of `model` on the first [`HELD_OUT_SEQUENCES`] validation sequences.
fn held_out_loss(
    cfg: &SftConfig,
    model: &Mixtral,
    tok: &Tokenizer,
    catalog: &Catalog,
) -> Result<Option<HeldOutLoss>> {
    if !cfg.data_dir.join("val_routing_examples.jsonl").exists() {
        return Ok(None);
    }
    let val = data::load(&cfg.data_dir, "val", catalog, tok, cfg.max_seq_len, &cfg.prompt)?;
    let seqs: Vec<&data::SftSequence> = val.sequences.iter().take(HELD_OUT_SEQUENCES).collect();
    let device = sapllm_model::device::selected();
    let loss = |adapter: bool| -> Result<f64> {
        model.control.set_enabled(adapter);
        let (mut sum, mut weight) = (0.0, 0.0);
        for chunk in seqs.chunks(cfg.batch_size.max(1)) {
            let pairs: Vec<(&[u32], &[u8])> =
                chunk.iter().map(|s| (s.ids.as_slice(), s.loss_mask.as_slice())).collect();
            let batch = collate(&pairs, tok.pad_id, &device)?;
            let out = model.forward(&batch.input_ids, Some(&batch.attention_mask))?;
            sum -= weighted_logprob_sum(&out.logits, &batch)?.to_scalar::<f32>()? as f64;
            weight += batch.loss_weight;
        }
        Ok(sum / weight.max(1e-9))
    };
    model.set_training(false);
    let measured = loss(false).and_then(|base| Ok((base, loss(true)?)));
    model.control.set_enabled(true);
    let (base_loss, adapter_loss) = measured?;
    Ok(Some(HeldOutLoss { sequences: seqs.len(), base_loss, adapter_loss }))
}

/// Runs (or resumes) SFT.
pub fn run(cfg: &SftConfig) -> Result<SftSummary> {
    cfg.check()?;
    let device = sapllm_model::device::selected();
    let tok = Tokenizer::from_dir(&cfg.base_model)
        .with_context(|| format!("loading the tokenizer of {}", cfg.base_model.display()))?;
    let catalog = Catalog::builtin();
    let mut data = data::load(&cfg.data_dir, "train", &catalog, &tok, cfg.max_seq_len, &cfg.prompt)?;
    data.repeat_exception_decisions();
    let lengths: Vec<usize> = data.sequences.iter().map(|s| s.ids.len()).collect();

    let opts = ModelOptions {
        precision: cfg.precision,
        dtype: DType::F32,
        lora: Some(cfg.lora.clone()),
        grad_checkpoint: cfg.gradient_checkpointing,
        seed: cfg.seed,
        ..ModelOptions::default()
    };
    let mut model = load_model(&cfg.base_model, &opts, &device)
        .with_context(|| format!("loading the base model {}", cfg.base_model.display()))?;

    let micro_per_epoch = data.sequences.len().div_ceil(cfg.batch_size) as u64;
    let steps_per_epoch = micro_per_epoch.div_ceil(cfg.gradient_accumulation as u64).max(1);
    let total_steps = (steps_per_epoch * cfg.epochs).min(cfg.max_steps.unwrap_or(u64::MAX));
    let ckpt_dir = cfg.out_dir.join("checkpoints");
    let digest = cfg.digest();

    let mut state = TrainState {
        step: 0,
        epoch: 0,
        batch_in_epoch: 0,
        dropout_counter: 0,
        losses: Vec::new(),
        settings_digest: digest.clone(),
    };
    let latest = resume::list(&ckpt_dir)?.pop();
    if let Some(ck) = &latest {
        state = resume::read_state(ck)?;
        if state.settings_digest != digest {
            bail!(
                "{} was written by an SFT run with different settings; use another output directory or delete it",
                ck.display()
            );
        }
        resume::restore_adapter(ck, &mut model)?;
    }
    model.set_training(true);
    let schedule = LrSchedule {
        lr: cfg.learning_rate,
        warmup_steps: (total_steps as f64 * cfg.warmup_ratio).round() as usize,
        total_steps: total_steps as usize,
        min_lr_ratio: 0.1,
    };
    let opt_cfg = AdamWConfig {
        schedule,
        weight_decay: cfg.weight_decay,
        max_grad_norm: Some(cfg.max_grad_norm),
        ..AdamWConfig::default()
    };
    let vars = model.trainable_vars();
    ensure!(!vars.is_empty(), "the model has no trainable adapter: check sft.lora.targetModules");
    let mut opt = AdamW::new(vars, opt_cfg)?;
    if let Some(ck) = &latest {
        resume::restore_optimizer(ck, &mut opt)?;
        model.control.set_dropout_counter(state.dropout_counter);
    }
    let resumed_from = latest.as_ref().map(|_| state.step);

    let mut progress = Progress::new(cfg.progress, sapllm_crds::StageName::Sft, total_steps);
    progress.resume_from(state.step);
    progress.println(&format!(
        "sft: {} routing + {} exception sequences ({} shortened, {} too long; exception-handling \
         routing decisions used {}x), {} steps{}",
        data.routing,
        data.exceptions,
        data.shortened,
        data.too_long,
        data.exception_repeats,
        total_steps,
        resumed_from.map(|s| format!(", resuming at step {s}")).unwrap_or_default()
    ));
    let mut batches = epoch_batches(&lengths, cfg.batch_size, cfg.seed, state.epoch);
    let started = Instant::now();
    let mut tokens_seen = 0usize;
    let mut steps_here = 0u64;
    let base_name = cfg.base_model.display().to_string();

    while state.step < total_steps {
        // Gather this step's micro-batches first: the loss is normalised by the response tokens
        // of the whole accumulation window.
        let mut window = Vec::with_capacity(cfg.gradient_accumulation);
        for _ in 0..cfg.gradient_accumulation {
            if state.batch_in_epoch >= batches.len() {
                state.epoch += 1;
                state.batch_in_epoch = 0;
                if state.epoch >= cfg.epochs && !window.is_empty() {
                    break;
                }
                batches = epoch_batches(&lengths, cfg.batch_size, cfg.seed, state.epoch);
            }
            let idx = &batches[state.batch_in_epoch];
            state.batch_in_epoch += 1;
            let seqs: Vec<(&[u32], &[u8])> = idx
                .iter()
                .map(|&i| (data.sequences[i].ids.as_slice(), data.sequences[i].loss_mask.as_slice()))
                .collect();
            window.push(collate(&seqs, tok.pad_id, &device)?);
        }
        let window_weight: f64 = window.iter().map(|b| b.loss_weight).sum();
        ensure!(window_weight > 0.0, "a training window has no response token (check the data)");
        let mut acc: Option<GradStore> = None;
        let mut loss_sum = 0.0;
        for batch in &window {
            let denom = window_weight;
            let (loss, grads) =
                model.forward_backward(&batch.input_ids, Some(&batch.attention_mask), &mut |out| {
                    Ok(weighted_logprob_sum(&out.logits, batch)?.affine(-1.0 / denom, 0.0)?)
                })?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            tokens_seen += batch.tokens;
            acc = Some(match acc {
                None => grads,
                Some(mut total) => {
                    add_grads(&mut total, grads, &opt_vars(&model))?;
                    total
                }
            });
        }
        ensure!(
            loss_sum.is_finite(),
            "loss became {loss_sum} at step {}: lower sft.learningRate",
            state.step
        );
        let stats = opt.step(acc.as_ref().expect("window is never empty"))?;
        state.step += 1;
        steps_here += 1;
        state.losses.push((state.step, loss_sum));
        state.dropout_counter = model.control.dropout_counter();
        let tps = tokens_seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
        progress.update(
            state.step,
            &[("loss", loss_sum), ("lr", stats.lr), ("grad_norm", stats.grad_norm), ("tokens_per_s", tps)],
        );
        let at_end = state.step == total_steps;
        if state.step.is_multiple_of(cfg.checkpoint_interval) || at_end {
            resume::save(&ckpt_dir, &model, &opt, &state, &base_name, 2)?;
        }
        if cfg.stop_after.is_some_and(|n| steps_here >= n) && !at_end {
            return Ok(summary(cfg, &state, &data, tps, resumed_from, false));
        }
    }

    let adapter_dir = cfg.out_dir.join("adapter");
    peft::save_adapter_as(&model, &adapter_dir, &base_name, cfg.adapter_layout)?;
    cfg.prompt.save(&adapter_dir)?;
    let tps = tokens_seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
    let mut out = summary(cfg, &state, &data, tps, resumed_from, true);
    out.held_out = held_out_loss(cfg, &model, &tok, &catalog)?;
    if let Some(h) = &out.held_out {
        progress.println(&format!(
            "sft: held-out loss on {} validation sequences {:.3} (base) -> {:.3} (adapter)",
            h.sequences, h.base_loss, h.adapter_loss
        ));
    }
    write_outputs(&cfg.out_dir, &state, &out)?;
    progress.finish(&[("loss", out.final_loss), ("tokens_per_s", tps)]);
    Ok(out)
}

fn opt_vars(model: &Mixtral) -> Vec<Tensor> {
    model.trainable_vars().into_iter().map(|(_, v)| v.as_tensor().clone()).collect()
}

/// Adds `more`'s gradients of `vars` into `total`.
fn add_grads(total: &mut GradStore, mut more: GradStore, vars: &[Tensor]) -> Result<()> {
    for v in vars {
        if let Some(g) = more.remove(v) {
            let sum = match total.remove(v) {
                Some(t) => (t + g)?,
                None => g,
            };
            total.insert(v, sum);
        }
    }
    Ok(())
}

fn summary(
    cfg: &SftConfig,
    state: &TrainState,
    data: &data::SftData,
    tps: f64,
    resumed_from: Option<u64>,
    completed: bool,
) -> SftSummary {
    SftSummary {
        adapter_dir: cfg.out_dir.join("adapter"),
        steps: state.step,
        first_loss: state.losses.first().map_or(f64::NAN, |l| l.1),
        final_loss: state.losses.last().map_or(f64::NAN, |l| l.1),
        routing_examples: data.routing,
        exception_examples: data.exceptions,
        skipped_too_long: data.too_long,
        tokens_per_second: tps,
        resumed_from_step: resumed_from,
        completed,
        held_out: None,
    }
}

fn write_outputs(out_dir: &Path, state: &TrainState, s: &SftSummary) -> Result<()> {
    std::fs::write(out_dir.join("sft_summary.json"), serde_json::to_vec_pretty(s)?)?;
    let mut log = String::new();
    for (step, loss) in &state.losses {
        log.push_str(&format!("{{\"step\":{step},\"loss\":{loss}}}\n"));
    }
    std::fs::write(out_dir.join("loss_history.jsonl"), log)?;
    let points: Vec<(f64, f64)> = state.losses.iter().map(|(s, l)| (*s as f64, *l)).collect();
    line_chart(
        &out_dir.join("loss_curve.png"),
        "SFT loss (response tokens)",
        "optimizer step",
        "loss",
        &[Series { name: "train", points }],
    )?;
    Ok(())
}
