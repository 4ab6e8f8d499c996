//! Pretraining a from-scratch preset: full-parameter causal-LM training on a text corpus.
//!
//! A random base has no knowledge, and LoRA on it cannot learn much; this stage turns a preset
//! into an ordinary base checkpoint (`config.json` + safetensors + `tokenizer.json`, HF layout)
//! that the QLoRA stages then load and quantize exactly like a downloaded Mixtral.
//!
//! - Corpus: a `.jsonl` / `.txt` file or a folder of them. A JSON line contributes its `text`
//!   field, or `prompt` + `response` / `completion` (joined by the shared template's layout
//!   when both exist); any other line contributes itself as plain text.
//! - Tokenizer: an existing one (`tokenizer` option) or a byte-level BPE trained on the corpus.
//! - Every document becomes `<s> ids </s>`; documents are concatenated into one stream, the
//!   last `eval_fraction` is held out, and each step samples `batch_size` random windows of
//!   `seq_len` tokens (the window start is derived from (seed, step), so a resumed run samples
//!   exactly what an uninterrupted one would).
//! - Response-anchored windows: for prompt/response documents, a share (`anchored_fraction`)
//!   of the windows end a quarter-window into a response, so they hold the end of a prompt
//!   next to the start of its answer. Prompts are longer than a window, so random windows
//!   almost never show a question with its answer's first tokens (the decision itself).
//! - AdamW + global-norm clipping + linear warmup + cosine decay; checkpoints (model, optimizer
//!   moments, step, losses) every `checkpoint_every` steps in `output/checkpoint/`, resumed
//!   automatically; progress through the shared reporter; a loss-curve PNG at the end.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::progress::{Progress, ProgressMode};
use sapllm_model::config::{MixtralConfig, Preset};
use sapllm_model::hf_io::{SaveOptions, load_model, save_model};
use sapllm_model::linear::Precision;
use sapllm_model::loss::causal_lm_loss;
use sapllm_model::mixtral::{Mixtral, ModelOptions};
use sapllm_model::optim::{AdamW, AdamWConfig, LrSchedule};
use sapllm_model::tokenizer::Tokenizer;

/// Settings of a pretraining run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainConfig {
    pub corpus: PathBuf,
    pub output_dir: PathBuf,
    pub preset: Preset,
    pub steps: usize,
    pub batch_size: usize,
    pub seq_len: usize,
    pub lr: f64,
    pub warmup_steps: usize,
    pub min_lr_ratio: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    /// Size of the BPE vocabulary to train (ignored with `tokenizer`).
    pub vocab_size: usize,
    /// Use this tokenizer folder (tokenizer.json) instead of training one.
    pub tokenizer: Option<PathBuf>,
    pub checkpoint_every: usize,
    pub eval_fraction: f64,
    pub grad_checkpoint: bool,
    pub seed: u64,
    /// Stop after this many steps in this invocation, leaving a checkpoint to resume from
    /// (time-sliced jobs); None runs to `steps`.
    pub max_steps_this_run: Option<usize>,
    /// Share of the windows anchored at a response start (0 = all random).
    #[serde(default)]
    pub anchored_fraction: f64,
    /// Strings a trained BPE keeps whole, one token each (ignored with `tokenizer`): the
    /// document types and endpoints a routing answer chooses between. Split into subwords, a
    /// choice such as `sales_order` / `sales_quotation` is decided by its third token, after
    /// two that every sales type shares; a small model learns to look at the first one.
    #[serde(default)]
    pub domain_tokens: Vec<String>,
}

impl PretrainConfig {
    /// Defaults sized for the tiny preset on a laptop CPU.
    pub fn new(corpus: PathBuf, output_dir: PathBuf, preset: Preset) -> Self {
        PretrainConfig {
            corpus,
            output_dir,
            preset,
            steps: 2000,
            batch_size: 8,
            seq_len: 256,
            lr: 1e-3,
            warmup_steps: 100,
            min_lr_ratio: 0.1,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            vocab_size: 2048,
            tokenizer: None,
            checkpoint_every: 200,
            eval_fraction: 0.05,
            grad_checkpoint: false,
            seed: 0,
            max_steps_this_run: None,
            anchored_fraction: 0.5,
            domain_tokens: Vec::new(),
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PretrainReport {
    pub steps: usize,
    pub parameters: usize,
    pub vocab_size: usize,
    pub corpus_tokens: usize,
    pub tokens_trained: usize,
    pub first_loss: f64,
    /// Moving average of the last ~10% of steps (at most 20).
    pub final_loss: f64,
    /// Mean loss on held-out windows (None when the held-out part is shorter than a window).
    pub eval_loss: Option<f64>,
    /// False when stopped by `max_steps_this_run` (a checkpoint is left to resume from).
    pub complete: bool,
    pub tokens_per_s: f64,
    pub output_dir: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct TrainState {
    step: usize,
    losses: Vec<f64>,
    tokens_trained: usize,
}

/// The texts of a corpus file or folder.
pub fn read_corpus(path: &Path) -> Result<Vec<String>> {
    Ok(read_documents(path)?.into_iter().map(|d| d.text).collect())
}

/// One corpus document: its text and, for prompt/response lines, the byte where the
/// response starts.
pub struct CorpusDoc {
    pub text: String,
    pub response_at: Option<usize>,
}

/// The documents of a corpus file or folder.
pub fn read_documents(path: &Path) -> Result<Vec<CorpusDoc>> {
    let mut files = Vec::new();
    if path.is_dir() {
        for e in std::fs::read_dir(path).with_context(|| format!("listing {}", path.display()))? {
            let p = e?.path();
            if matches!(p.extension().and_then(|e| e.to_str()), Some("jsonl" | "txt" | "json")) {
                files.push(p);
            }
        }
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    ensure!(!files.is_empty(), "corpus {} has no .jsonl/.txt files", path.display());
    let mut texts = Vec::new();
    for f in files {
        let content =
            std::fs::read_to_string(&f).with_context(|| format!("reading corpus {}", f.display()))?;
        for line in content.lines() {
            let line = line.trim_end();
            if line.trim().is_empty() {
                continue;
            }
            texts.push(line_doc(line));
        }
    }
    ensure!(!texts.is_empty(), "corpus {} is empty", path.display());
    Ok(texts)
}

fn line_doc(line: &str) -> CorpusDoc {
    let plain = |text: String| CorpusDoc { text, response_at: None };
    let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(line) else {
        return plain(line.to_string());
    };
    let s = |k: &str| o.get(k).and_then(|v| v.as_str());
    if let Some(t) = s("text") {
        return plain(t.to_string());
    }
    match (s("prompt"), s("response").or_else(|| s("completion"))) {
        (Some(p), Some(r)) => CorpusDoc { text: format!("{p}{r}"), response_at: Some(p.len()) },
        (Some(p), None) => plain(p.to_string()),
        (None, Some(r)) => plain(r.to_string()),
        (None, None) => plain(line.to_string()),
    }
}

/// A deterministic per-step generator, so resumed runs sample the same batches.
fn step_rng(seed: u64, step: usize) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Where the training windows come from.
struct Windows<'a> {
    stream: &'a [u32],
    /// Stream positions where a response starts.
    anchors: &'a [usize],
    anchored_fraction: f64,
    len: usize,
}

impl Windows<'_> {
    fn start(&self, rng: &mut impl Rng) -> usize {
        let max = self.stream.len() - self.len;
        if !self.anchors.is_empty() && rng.random::<f64>() < self.anchored_fraction {
            let a = self.anchors[rng.random_range(0..self.anchors.len())];
            // A quarter of the window inside the response, the rest on the prompt's end.
            return (a + self.len / 4).saturating_sub(self.len).min(max);
        }
        rng.random_range(0..=max)
    }

    fn batch(&self, batch: usize, rng: &mut impl Rng, device: &Device) -> Result<Tensor> {
        let mut ids = Vec::with_capacity(batch * self.len);
        for _ in 0..batch {
            let start = self.start(rng);
            ids.extend_from_slice(&self.stream[start..start + self.len]);
        }
        Ok(Tensor::from_vec(ids, (batch, self.len), device)?)
    }
}

fn save_checkpoint(dir: &Path, model: &Mixtral, opt: &AdamW, state: &TrainState) -> Result<()> {
    // Write to a sibling folder and rename, so an interruption never leaves a half checkpoint.
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    save_model(model, &tmp, &SaveOptions::default())?;
    opt.save(&tmp.join("optimizer.safetensors"))?;
    std::fs::write(tmp.join("state.json"), serde_json::to_string(state)?)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("moving checkpoint into {}", dir.display()))?;
    Ok(())
}

/// Mean loss over up to 8 windows of the held-out stream.
fn eval_loss(model: &Mixtral, held: &[u32], cfg: &PretrainConfig, device: &Device) -> Result<Option<f64>> {
    if held.len() < cfg.seq_len + 1 {
        return Ok(None);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed ^ 0xE7A1);
    let mut total = 0.0;
    let n = 8usize.div_ceil(cfg.batch_size).max(1);
    let windows = Windows { stream: held, anchors: &[], anchored_fraction: 0.0, len: cfg.seq_len };
    for _ in 0..n {
        let ids = windows.batch(cfg.batch_size.min(8), &mut rng, device)?;
        let out = model.forward(&ids, None)?;
        total += causal_lm_loss(&out.logits, &ids, None)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    }
    Ok(Some(total / n as f64))
}

/// Runs (or resumes) pretraining; see the module docs.
pub fn run(cfg: &PretrainConfig, mode: ProgressMode) -> Result<PretrainReport> {
    ensure!(cfg.steps > 0, "pretrain: steps must be > 0");
    ensure!(cfg.batch_size > 0 && cfg.seq_len >= 2, "pretrain: batch_size must be > 0 and seq_len >= 2");
    ensure!((0.0..0.5).contains(&cfg.eval_fraction), "pretrain: eval_fraction must be in [0, 0.5)");
    let device = sapllm_model::device::selected();
    let out = &cfg.output_dir;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let ckpt_dir = out.join("checkpoint");

    ensure!((0.0..=1.0).contains(&cfg.anchored_fraction), "pretrain: anchored_fraction must be in [0, 1]");
    let docs = read_documents(&cfg.corpus)?;
    let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
    // The tokenizer is saved before training starts, so a resumed run reuses the same one.
    let tok = if out.join("tokenizer.json").exists() {
        Tokenizer::from_dir(out)?
    } else {
        let t = match &cfg.tokenizer {
            Some(dir) => Tokenizer::from_dir(dir)?,
            None => Tokenizer::train_bpe_with_words(texts.iter(), cfg.vocab_size, &cfg.domain_tokens)?,
        };
        t.save(out)?;
        t
    };
    let mut stream = Vec::new();
    let mut anchors = Vec::new();
    for d in &docs {
        stream.extend(tok.bos_id);
        let (ids, spans) = tok.encode_with_offsets(&d.text)?;
        if let Some(at) = d.response_at
            && let Some(i) = spans.iter().position(|&(from, _)| from >= at)
        {
            anchors.push(stream.len() + i);
        }
        stream.extend(ids);
        stream.push(tok.eos_id);
    }
    let corpus_tokens = stream.len();
    let n_held = (stream.len() as f64 * cfg.eval_fraction) as usize;
    let held = stream.split_off(stream.len() - n_held);
    if stream.len() < cfg.seq_len {
        bail!("corpus has {} training tokens, fewer than one sequence of {}", stream.len(), cfg.seq_len);
    }
    // Anchors whose window would reach into the held-out part are not trained on.
    anchors.retain(|&a| a + cfg.seq_len / 4 <= stream.len());
    let windows = Windows {
        stream: &stream,
        anchors: &anchors,
        anchored_fraction: cfg.anchored_fraction,
        len: cfg.seq_len,
    };

    let mut mcfg = MixtralConfig::preset(cfg.preset, tok.vocab_size());
    ensure!(
        mcfg.vocab_size >= tok.vocab_size(),
        "preset {:?} has a fixed vocabulary of {} but the tokenizer has {} tokens",
        cfg.preset,
        mcfg.vocab_size,
        tok.vocab_size()
    );
    mcfg.bos_token_id = tok.bos_id;
    mcfg.eos_token_id = Some(tok.eos_id);
    mcfg.pad_token_id = Some(tok.pad_id);
    mcfg.max_position_embeddings = mcfg.max_position_embeddings.max(cfg.seq_len);
    let opts = ModelOptions {
        precision: Precision::F32,
        dtype: DType::F32,
        train_base: true,
        grad_checkpoint: cfg.grad_checkpoint,
        seed: cfg.seed,
        ..Default::default()
    };
    let opt_cfg = AdamWConfig {
        schedule: LrSchedule {
            lr: cfg.lr,
            warmup_steps: cfg.warmup_steps,
            total_steps: cfg.steps,
            min_lr_ratio: cfg.min_lr_ratio,
        },
        weight_decay: cfg.weight_decay,
        max_grad_norm: Some(cfg.max_grad_norm),
        ..Default::default()
    };
    let (model, mut opt, mut state) = if ckpt_dir.join("state.json").exists() {
        let model = load_model(&ckpt_dir, &opts, &device).context("loading the pretrain checkpoint")?;
        ensure!(model.cfg == mcfg, "checkpoint in {} is for another configuration", ckpt_dir.display());
        let mut opt = AdamW::new(model.trainable_vars(), opt_cfg)?;
        opt.load(&ckpt_dir.join("optimizer.safetensors"))?;
        let state: TrainState = serde_json::from_str(&std::fs::read_to_string(ckpt_dir.join("state.json"))?)?;
        tracing::info!(step = state.step, "resuming pretraining");
        (model, opt, state)
    } else {
        let model = Mixtral::new_random(&mcfg, &opts, &device)?;
        let opt = AdamW::new(model.trainable_vars(), opt_cfg)?;
        (model, opt, TrainState { step: 0, losses: Vec::new(), tokens_trained: 0 })
    };

    let mut progress = Progress::new(mode, sapllm_crds::StageName::Pretrain, cfg.steps as u64);
    progress.resume_from(state.step as u64);
    progress.println(&format!(
        "pretrain {:?}: {:.2}M parameters, vocab {}, {} corpus tokens ({} held out)",
        cfg.preset,
        mcfg.num_parameters() as f64 / 1e6,
        tok.vocab_size(),
        corpus_tokens,
        held.len()
    ));
    let started = Instant::now();
    let start_tokens = state.tokens_trained;
    let start_step = state.step;
    while state.step < cfg.steps {
        if cfg.max_steps_this_run.is_some_and(|n| state.step - start_step >= n) {
            save_checkpoint(&ckpt_dir, &model, &opt, &state)?;
            progress.finish(&[("loss", state.losses.last().copied().unwrap_or(f64::NAN))]);
            return Ok(PretrainReport {
                steps: state.step,
                parameters: mcfg.num_parameters(),
                vocab_size: tok.vocab_size(),
                corpus_tokens,
                tokens_trained: state.tokens_trained,
                first_loss: state.losses.first().copied().unwrap_or(f64::NAN),
                final_loss: state.losses.last().copied().unwrap_or(f64::NAN),
                eval_loss: None,
                complete: false,
                tokens_per_s: (state.tokens_trained - start_tokens) as f64
                    / started.elapsed().as_secs_f64().max(1e-9),
                output_dir: out.clone(),
            });
        }
        let mut rng = step_rng(cfg.seed, state.step);
        let ids = windows.batch(cfg.batch_size, &mut rng, &device)?;
        let (loss, grads) =
            model.forward_backward(&ids, None, &mut |o| causal_lm_loss(&o.logits, &ids, None))?;
        let loss = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        ensure!(loss.is_finite(), "pretrain: loss became {loss} at step {}", state.step);
        let stats = opt.step(&grads)?;
        state.step += 1;
        state.losses.push(loss);
        state.tokens_trained += cfg.batch_size * cfg.seq_len;
        let tps = (state.tokens_trained - start_tokens) as f64 / started.elapsed().as_secs_f64().max(1e-9);
        progress.update(
            state.step as u64,
            &[("loss", loss), ("lr", stats.lr), ("grad_norm", stats.grad_norm), ("tokens_per_s", tps)],
        );
        if state.step % cfg.checkpoint_every.max(1) == 0 && state.step < cfg.steps {
            save_checkpoint(&ckpt_dir, &model, &opt, &state)?;
        }
    }
    let tokens_per_s =
        (state.tokens_trained - start_tokens) as f64 / started.elapsed().as_secs_f64().max(1e-9);

    save_model(&model, out, &SaveOptions::default())?;
    let eval = eval_loss(&model, &held, cfg, &device)?;
    let points: Vec<(f64, f64)> =
        state.losses.iter().enumerate().map(|(i, &l)| ((i + 1) as f64, l)).collect();
    // A window of ~10% of the run (1..=20 steps), so short runs are not dominated by early steps.
    let window = (state.losses.len() / 10).clamp(1, 20);
    let smooth = smooth(&state.losses, window);
    let smooth_name = format!("moving avg ({window})");
    let smooth_pts: Vec<(f64, f64)> = smooth.iter().enumerate().map(|(i, &l)| ((i + 1) as f64, l)).collect();
    crate::plot::line_chart(
        &out.join("pretrain_loss.png"),
        &format!("pretrain {:?}: training loss", cfg.preset),
        "step",
        "cross-entropy",
        &[
            crate::plot::Series { name: "loss", points },
            crate::plot::Series { name: &smooth_name, points: smooth_pts },
        ],
    )?;
    let report = PretrainReport {
        steps: state.step,
        parameters: mcfg.num_parameters(),
        vocab_size: tok.vocab_size(),
        corpus_tokens,
        tokens_trained: state.tokens_trained,
        first_loss: state.losses.first().copied().unwrap_or(f64::NAN),
        final_loss: smooth.last().copied().unwrap_or(f64::NAN),
        eval_loss: eval,
        complete: true,
        tokens_per_s,
        output_dir: out.clone(),
    };
    std::fs::write(out.join("pretrain_report.json"), serde_json::to_string_pretty(&report)?)?;
    if ckpt_dir.exists() {
        std::fs::remove_dir_all(&ckpt_dir)?;
    }
    progress.finish(&[
        ("loss", report.final_loss),
        ("eval_loss", eval.unwrap_or(f64::NAN)),
        ("tokens_per_s", tokens_per_s),
    ]);
    Ok(report)
}

/// Trailing moving average.
fn smooth(xs: &[f64], w: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(xs.len());
    let mut sum = 0.0;
    for i in 0..xs.len() {
        sum += xs[i];
        if i >= w {
            sum -= xs[i - w];
        }
        out.push(sum / (i + 1).min(w) as f64);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchored_windows_hold_a_prompt_end_and_its_response_start() {
        let stream: Vec<u32> = (0..1000).collect();
        let anchors = [300, 700];
        let w = Windows { stream: &stream, anchors: &anchors, anchored_fraction: 1.0, len: 64 };
        let mut rng = step_rng(3, 0);
        for _ in 0..20 {
            let s = w.start(&mut rng);
            let hit = anchors.iter().find(|&&a| s < a && a < s + 64).expect("an anchor inside the window");
            assert_eq!(s + 64 - hit, 16, "a quarter of the window is response");
        }
        let random = Windows { anchored_fraction: 0.0, ..w };
        let starts: Vec<usize> = (0..20).map(|_| random.start(&mut rng)).collect();
        assert!(starts.iter().any(|s| ![300 - 48, 700 - 48].contains(s)), "plain windows are random");
    }

    #[test]
    fn prompt_response_lines_mark_where_the_response_starts() {
        let d = line_doc(r#"{"prompt": "Q: two?\n", "response": "2"}"#);
        assert_eq!((d.text.as_str(), d.response_at), ("Q: two?\n2", Some(8)));
        assert_eq!(line_doc("plain text").response_at, None);
        assert_eq!(line_doc(r#"{"text": "t"}"#).response_at, None);
    }
}
