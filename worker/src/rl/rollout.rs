//! Rollouts: prompts as SFT rendered them, sampled answers with their rewards, and the packed
//! tensors PPO / GRPO score them with.
//!
//! Sequences are packed RIGHT-padded (`prompt ++ response ++ pad`); positions come from the
//! attention mask, so padding never shifts them. A response token `j` sits at absolute position
//! `p + j` (`p` = prompt length) and its log-probability is read from the logits at `p + j - 1`,
//! which is also where its state value is read (the state before emitting it).

use std::path::Path;

use anyhow::{Context, Result, ensure};
use candle_core::{DType, Device, Tensor};

use super::reward::{Reward, RewardWeights, score_text};
use crate::dataprep::examples::RoutingExample;
use crate::train::data::{read_jsonl, routing_sequence};
use sapllm_engine::profile::PromptProfile;
use sapllm_engine::template::STOP_SEQUENCE;
use sapllm_model::linear::log_softmax_last;
use sapllm_model::loss::shifted_logprobs;
use sapllm_model::mixtral::generation::GenerationConfig;
use sapllm_model::mixtral::{Mixtral, ModelOutput};
use sapllm_model::tokenizer::Tokenizer;
use sapllm_sap::catalog::Catalog;

/// One routing problem: its example and the prompt tokens the policy reads.
#[derive(Debug, Clone)]
pub struct Problem {
    pub example: RoutingExample,
    pub prompt: Vec<u32>,
}

/// Loads the routing examples of `split` as problems. Prompts are rendered exactly as SFT
/// rendered them (the adapter's prompt profile, the same shortening when they do not fit
/// `max_seq_len`); problems whose prompt leaves no room for `max_new_tokens` within the model's
/// context are skipped.
pub fn load_problems(
    data_dir: &Path,
    split: &str,
    catalog: &Catalog,
    tok: &Tokenizer,
    fit: &PromptFit,
) -> Result<(Vec<Problem>, usize)> {
    let path = data_dir.join(format!("{split}_routing_examples.jsonl"));
    let examples: Vec<RoutingExample> = read_jsonl(&path)?;
    let mut out = Vec::new();
    let mut skipped = 0;
    for ex in examples {
        let Some((seq, _)) = routing_sequence(catalog, tok, &ex, fit.max_seq_len, &fit.profile)? else {
            skipped += 1;
            continue;
        };
        let prompt_len = seq.loss_mask.iter().take_while(|&&m| m == 0).count();
        if prompt_len + fit.max_new_tokens > fit.max_positions {
            skipped += 1;
            continue;
        }
        out.push(Problem { prompt: seq.ids[..prompt_len].to_vec(), example: ex });
    }
    Ok((out, skipped))
}

/// How prompts are rendered and what must fit.
#[derive(Debug, Clone)]
pub struct PromptFit {
    /// Prompt + response budget of SFT (prompts are shortened the way SFT shortened them).
    pub max_seq_len: usize,
    /// Room left after the prompt for the answer.
    pub max_new_tokens: usize,
    /// The model's context.
    pub max_positions: usize,
    /// The adapter's prompt profile.
    pub profile: PromptProfile,
}

/// One sampled answer.
#[derive(Debug, Clone)]
pub struct Rollout {
    pub problem: usize,
    pub prompt: Vec<u32>,
    /// Generated tokens (stop token included).
    pub response: Vec<u32>,
    pub text: String,
    pub reward: Reward,
}

/// Sampling settings of rollouts.
#[derive(Debug, Clone)]
pub struct SampleSettings {
    pub max_new_tokens: usize,
    /// 0 = greedy (evaluation).
    pub temperature: f64,
    pub seed: u64,
}

/// Samples one answer per entry of `which` (indices into `problems`; repeat an index for a
/// group) with the policy as it is, and scores each.
pub fn sample(
    model: &Mixtral,
    tok: &Tokenizer,
    catalog: &Catalog,
    weights: &RewardWeights,
    problems: &[Problem],
    which: &[usize],
    s: &SampleSettings,
) -> Result<Vec<Rollout>> {
    let prompts: Vec<Vec<u32>> = which.iter().map(|&i| problems[i].prompt.clone()).collect();
    let cfg = GenerationConfig {
        max_new_tokens: s.max_new_tokens,
        temperature: s.temperature,
        top_p: 1.0,
        stop_token_ids: vec![tok.eos_id],
        stop_sequences: vec![STOP_SEQUENCE.to_string()],
        pad_token_id: tok.pad_id,
        seed: s.seed,
    };
    let decode = |ids: &[u32]| tok.decode(ids);
    let gens = model.generate(&prompts, &cfg, Some(&decode))?;
    Ok(which
        .iter()
        .zip(prompts)
        .zip(gens)
        .map(|((&i, prompt), g)| Rollout {
            problem: i,
            reward: score_text(catalog, weights, &problems[i].example, &g.text),
            prompt,
            response: g.tokens,
            text: g.text,
        })
        .collect())
}

/// Prompt + response sequences packed into tensors.
pub struct Packed {
    pub ids: Tensor,
    pub attention: Tensor,
    /// `[B, T-1]`, 1 where the logits predict a response token.
    pub response_mask: Tensor,
    /// Per row: the index in `[T-1]` of its first response token's prediction, and its length.
    pub spans: Vec<(usize, usize)>,
    pub t: usize,
}

/// Packs (prompt, response) pairs, right-padded with `pad`.
pub fn pack(pairs: &[(&[u32], &[u32])], pad: u32, device: &Device) -> Result<Packed> {
    ensure!(!pairs.is_empty(), "nothing to pack");
    let t = pairs.iter().map(|(p, r)| p.len() + r.len()).max().unwrap_or(0);
    ensure!(t >= 2, "a sequence needs at least a prompt token and a response token");
    let b = pairs.len();
    let mut ids = Vec::with_capacity(b * t);
    let mut att = Vec::with_capacity(b * t);
    let mut resp = vec![0f32; b * (t - 1)];
    let mut spans = Vec::with_capacity(b);
    for (row, (p, r)) in pairs.iter().enumerate() {
        ensure!(!p.is_empty() && !r.is_empty(), "every rollout needs a prompt and a response");
        let n = p.len() + r.len();
        ids.extend_from_slice(p);
        ids.extend_from_slice(r);
        ids.extend(std::iter::repeat_n(pad, t - n));
        att.extend(std::iter::repeat_n(1u32, n));
        att.extend(std::iter::repeat_n(0u32, t - n));
        let start = p.len() - 1;
        for j in 0..r.len() {
            resp[row * (t - 1) + start + j] = 1.0;
        }
        spans.push((start, r.len()));
    }
    Ok(Packed {
        ids: Tensor::from_vec(ids, (b, t), device)?,
        attention: Tensor::from_vec(att, (b, t), device)?,
        response_mask: Tensor::from_vec(resp, (b, t - 1), device)?,
        spans,
        t,
    })
}

impl Packed {
    /// Lays per-response values (one per response token) onto the `[B, T-1]` grid.
    pub fn grid(&self, rows: &[Vec<f64>]) -> Result<Tensor> {
        ensure!(rows.len() == self.spans.len(), "one row of values per sequence");
        let t1 = self.t - 1;
        let mut g = vec![0f32; rows.len() * t1];
        for (row, ((start, len), vals)) in self.spans.iter().zip(rows).enumerate() {
            ensure!(vals.len() == *len, "row {row}: {} values for {len} response tokens", vals.len());
            for (j, v) in vals.iter().enumerate() {
                g[row * t1 + start + j] = *v as f32;
            }
        }
        Ok(Tensor::from_vec(g, (rows.len(), t1), self.ids.device())?)
    }

    /// Reads each row's response span out of a `[B, T-1]` tensor.
    pub fn rows(&self, grid: &Tensor) -> Result<Vec<Vec<f64>>> {
        let g = grid.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        Ok(self.spans.iter().zip(g).map(|((s, l), r)| r[*s..*s + *l].to_vec()).collect())
    }
}

/// Per-token log-probabilities `[B, T-1]` of the packed sequences under `out`'s logits at
/// `temperature` (the distribution the rollout was sampled from; 1 for greedy).
pub fn token_logprobs(out: &ModelOutput, packed: &Packed, temperature: f64) -> Result<Tensor> {
    let t = if temperature > 0.0 { temperature } else { 1.0 };
    let logits = out.logits.to_dtype(DType::F32)?.affine(1.0 / t, 0.0)?;
    shifted_logprobs(&logits, &packed.ids).context("scoring rollouts")
}

/// Per-token entropy `[B, T-1]` of the sampling distribution (for logging; no gradient).
pub fn token_entropy(out: &ModelOutput, temperature: f64) -> Result<Tensor> {
    let t = if temperature > 0.0 { temperature } else { 1.0 };
    let (_, len, _) = out.logits.dims3()?;
    let logits = out.logits.narrow(1, 0, len - 1)?.to_dtype(DType::F32)?.affine(1.0 / t, 0.0)?;
    let lp = log_softmax_last(&logits.detach())?;
    Ok((lp.exp()? * &lp)?.sum(2)?.neg()?)
}

/// Mean of `x` over the mask (0 when the mask is empty).
pub fn masked_mean(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let n = mask.sum_all()?.to_scalar::<f32>()?.max(1.0);
    Ok(((x * mask)?.sum_all()? / n as f64)?)
}
