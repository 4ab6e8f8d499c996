//! Batched generation with a KV cache: greedy / temperature / top-p sampling, stop token ids,
//! stop sequences, a token budget, and the log-probability of every generated token (PPO).
//!
//! Prompts of different lengths are LEFT-padded so every sequence's next token is at the same
//! column; positions come from the padding mask, so padding does not shift them.

use anyhow::{Result, bail, ensure};
use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::Mixtral;
use super::kv_cache::KvCache;
use crate::path::ForwardPath;

/// Sampling settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    /// 0 = greedy (argmax).
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `top_p`
    /// (1.0 = no truncation).
    pub top_p: f64,
    /// Token ids that end a sequence (EOS); the stop token is kept in `tokens`.
    pub stop_token_ids: Vec<u32>,
    /// Strings that end a sequence; `text` is cut before the first occurrence.
    pub stop_sequences: Vec<String>,
    /// Id used for left padding (any valid id: padded positions are masked out).
    pub pad_token_id: u32,
    pub seed: u64,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig {
            max_new_tokens: 128,
            temperature: 0.0,
            top_p: 1.0,
            stop_token_ids: Vec::new(),
            stop_sequences: Vec::new(),
            pad_token_id: 0,
            seed: 0,
        }
    }
}

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    StopToken,
    StopSequence,
    MaxTokens,
}

/// One generated continuation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated token ids (prompt excluded).
    pub tokens: Vec<u32>,
    /// Per generated token, its log-probability under the sampling distribution before top-p
    /// truncation: `log_softmax(logits / temperature)` (plain `log_softmax(logits)` when
    /// greedy) — the quantity PPO recomputes from full-sequence logits.
    pub logprobs: Vec<f32>,
    /// Decoded text of `tokens`, cut at a stop sequence (empty when no decoder was given).
    pub text: String,
    pub finish: FinishReason,
}

/// `log_softmax` of one row, in f64 for stability.
fn log_softmax_row(logits: &[f32], temperature: f64) -> Vec<f64> {
    let t = if temperature > 0.0 { temperature } else { 1.0 };
    let scaled: Vec<f64> = logits.iter().map(|&l| l as f64 / t).collect();
    let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = scaled.iter().map(|&s| (s - max).exp()).sum::<f64>().ln() + max;
    scaled.into_iter().map(|s| s - lse).collect()
}

/// Picks a token from `logp` (already temperature-scaled).
fn sample(logp: &[f64], cfg: &GenerationConfig, rng: &mut rand::rngs::StdRng) -> u32 {
    if cfg.temperature <= 0.0 {
        let mut best = 0;
        for (i, &v) in logp.iter().enumerate() {
            if v > logp[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let mut order: Vec<usize> = (0..logp.len()).collect();
    order.sort_by(|&a, &b| logp[b].partial_cmp(&logp[a]).unwrap_or(std::cmp::Ordering::Equal));
    let mut kept = Vec::new();
    let mut cum = 0.0;
    for &i in &order {
        let p = logp[i].exp();
        kept.push((i, p));
        cum += p;
        if cum >= cfg.top_p {
            break;
        }
    }
    let mut u = rng.random::<f64>() * cum;
    for &(i, p) in &kept {
        if u < p {
            return i as u32;
        }
        u -= p;
    }
    kept.last().map_or(0, |&(i, _)| i as u32)
}

/// Turns token ids into text (a tokenizer's decode).
pub type Decoder<'a> = &'a dyn Fn(&[u32]) -> Result<String>;

impl Mixtral {
    /// Generates a continuation of every prompt (token ids) as one batch. `decode` turns token
    /// ids into text; it is required for `stop_sequences` and fills `Generation::text`.
    /// LoRA dropout is off while generating (training mode is restored afterwards).
    pub fn generate(
        &self,
        prompts: &[Vec<u32>],
        cfg: &GenerationConfig,
        decode: Option<Decoder<'_>>,
    ) -> Result<Vec<Generation>> {
        self.generate_on(prompts, cfg, decode, ForwardPath::Fused)
    }

    /// [`Mixtral::generate`] through a chosen graph path (e.g. [`ForwardPath::Generic`]).
    pub fn generate_on(
        &self,
        prompts: &[Vec<u32>],
        cfg: &GenerationConfig,
        decode: Option<Decoder<'_>>,
        path: ForwardPath,
    ) -> Result<Vec<Generation>> {
        ensure!(!prompts.is_empty(), "generate: no prompts");
        ensure!(prompts.iter().all(|p| !p.is_empty()), "generate: empty prompt");
        ensure!(cfg.top_p > 0.0 && cfg.top_p <= 1.0, "top_p must be in (0, 1], got {}", cfg.top_p);
        if !cfg.stop_sequences.is_empty() && decode.is_none() {
            bail!("stop_sequences need a decoder");
        }
        let vocab = self.cfg.vocab_size as u32;
        for p in prompts {
            if let Some(&bad) = p.iter().find(|&&t| t >= vocab) {
                bail!("prompt token id {bad} is outside the vocabulary ({vocab})");
            }
        }
        let was_training = self.control.training();
        self.control.set_training(false);
        let result = self.generate_inner(prompts, cfg, decode, path);
        self.control.set_training(was_training);
        result
    }

    fn generate_inner(
        &self,
        prompts: &[Vec<u32>],
        cfg: &GenerationConfig,
        decode: Option<Decoder<'_>>,
        path: ForwardPath,
    ) -> Result<Vec<Generation>> {
        let b = prompts.len();
        let max_len = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(b * max_len);
        let mut mask = Vec::with_capacity(b);
        for p in prompts {
            let pad = max_len - p.len();
            ids.extend(std::iter::repeat_n(cfg.pad_token_id, pad));
            ids.extend_from_slice(p);
            let mut m = vec![0u8; pad];
            m.extend(std::iter::repeat_n(1u8, p.len()));
            mask.push(m);
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
        let mut cache = KvCache::new(self.layers.len(), b);
        let input = Tensor::from_vec(ids, (b, max_len), self.device())?;
        let logits = self.forward_cached(&input, &mask, &mut cache, path)?;
        let mut last =
            logits.narrow(1, max_len - 1, 1)?.squeeze(1)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;

        let mut out: Vec<Generation> = (0..b)
            .map(|_| Generation {
                tokens: Vec::new(),
                logprobs: Vec::new(),
                text: String::new(),
                finish: FinishReason::MaxTokens,
            })
            .collect();
        let mut done = vec![false; b];
        for step in 0..cfg.max_new_tokens {
            let mut next = vec![cfg.pad_token_id; b];
            for i in 0..b {
                if done[i] {
                    continue;
                }
                let logp = log_softmax_row(&last[i], cfg.temperature);
                let tok = sample(&logp, cfg, &mut rng);
                next[i] = tok;
                let g = &mut out[i];
                g.tokens.push(tok);
                g.logprobs.push(logp[tok as usize] as f32);
                if cfg.stop_token_ids.contains(&tok) {
                    g.finish = FinishReason::StopToken;
                    done[i] = true;
                } else if let Some(dec) = decode
                    && !cfg.stop_sequences.is_empty()
                {
                    let text = dec(&g.tokens)?;
                    if let Some(cut) = cfg.stop_sequences.iter().filter_map(|s| text.find(s.as_str())).min() {
                        g.text = text[..cut].to_string();
                        g.finish = FinishReason::StopSequence;
                        done[i] = true;
                    }
                }
            }
            if done.iter().all(|&d| d) || step + 1 == cfg.max_new_tokens {
                break;
            }
            let input = Tensor::from_vec(next, (b, 1), self.device())?;
            let m: Vec<Vec<u8>> = done.iter().map(|&d| vec![u8::from(!d)]).collect();
            let logits = self.forward_cached(&input, &m, &mut cache, path)?;
            last = logits.squeeze(1)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        }
        if let Some(dec) = decode {
            for g in out.iter_mut() {
                if g.finish != FinishReason::StopSequence {
                    g.text = dec(&g.tokens)?;
                }
            }
        }
        Ok(out)
    }
}
