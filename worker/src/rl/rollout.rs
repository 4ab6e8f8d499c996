//! Rollouts: prompts as SFT rendered them, answers sampled under the grammar serving uses, with
//! their rewards, and the packed tensors PPO / GRPO score them with.
//!
//! A rollout is a grounded decision, as the engine makes one: the policy's probabilities of the
//! offered options (type-consistent endpoints whose payload grounds, and exception handling) are
//! the sequence probabilities of each option's choice tokens, renormalised over the options; one
//! option is sampled (greedy for evaluation); the rest of the answer is what the grammar forces
//! for it (the grounded payload, the reasoning the document supports) and the confidence is the
//! chosen option's probability, the number serving reports. So every rollout parses and the
//! reward is about the decision. Only the choice tokens are the policy's action: the packed
//! sequences mark them alone as the response ([`pack_spans`]), so the policy-gradient ratio, the
//! KL to the reference and the advantages are over what the policy chose; forced tokens have
//! probability 1 under the grammar and contribute nothing.
//!
//! Sequences are packed RIGHT-padded (`prompt ++ response ++ pad`); positions come from the
//! attention mask, so padding never shifts them. A response token `j` sits at absolute position
//! `p + j` (`p` = prompt length) and its log-probability is read from the logits at `p + j - 1`,
//! which is also where its state value is read (the state before emitting it).

use std::path::Path;

use anyhow::{Context, Result, ensure};
use candle_core::{DType, Device, Tensor};

use rand::{Rng, SeedableRng};

use super::reward::{Reward, RewardWeights, score_text};
use crate::dataprep::examples::RoutingExample;
use crate::train::data::{read_jsonl, routing_sequence};
use sapllm_engine::Engine;
use sapllm_engine::engine::split_prefix;
use sapllm_engine::format::routing_query;
use sapllm_engine::grounded::GroundedRequest;
use sapllm_engine::profile::PromptProfile;
use sapllm_engine::template::response_text;
use sapllm_model::linear::log_softmax_last;
use sapllm_model::loss::shifted_logprobs;
use sapllm_model::mixtral::{Mixtral, ModelOutput};
use sapllm_model::tokenizer::Tokenizer;
use sapllm_sap::catalog::Catalog;

/// One routing problem: its example, the prompt tokens the policy reads, and its grounded
/// options.
#[derive(Debug, Clone)]
pub struct Problem {
    pub example: RoutingExample,
    pub prompt: Vec<u32>,
    pub grounded: GroundedRequest,
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
        let q = routing_query(&ex);
        let grounded = GroundedRequest::new(catalog, &q, &Engine::offered_endpoints(&q, false))?;
        out.push(Problem { prompt: seq.ids[..prompt_len].to_vec(), example: ex, grounded });
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
    /// Answer tokens (stop token included).
    pub response: Vec<u32>,
    /// The policy's action inside `response`: (start, length) of the chosen option's choice
    /// tokens; the rest is forced.
    pub choice: (usize, usize),
    pub text: String,
    pub reward: Reward,
}

/// Sampling settings of rollouts.
#[derive(Debug, Clone)]
pub struct SampleSettings {
    /// 0 = greedy (evaluation).
    pub temperature: f64,
    pub seed: u64,
}

/// Samples one grounded answer per entry of `which` (indices into `problems`; repeat an index
/// for a group) with the policy as it is, and scores each.
pub fn sample(
    model: &Mixtral,
    tok: &Tokenizer,
    catalog: &Catalog,
    weights: &RewardWeights,
    problems: &[Problem],
    which: &[usize],
    s: &SampleSettings,
) -> Result<Vec<Rollout>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(s.seed);
    let mut out = Vec::with_capacity(which.len());
    for &i in which {
        let p = &problems[i];
        let texts = p.grounded.choice_texts();
        let seqs: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t)).collect::<Result<_>>()?;
        let (prefix, suffixes) = split_prefix(&seqs);
        let probs = option_probabilities(model, tok, &p.prompt, &prefix, &suffixes)?;
        let choice = pick(&probs, s.temperature, &mut rng);
        let answer = p.grounded.answer(choice, probs[choice]);
        let text = response_text(&answer)?;
        let rest =
            text.strip_prefix(texts[choice].as_str()).context("an answer starts with its choice text")?;
        let mut response = prefix.clone();
        response.extend(&suffixes[choice]);
        response.extend(tok.encode(rest)?);
        response.push(tok.eos_id);
        out.push(Rollout {
            problem: i,
            reward: score_text(catalog, weights, &p.example, &text),
            prompt: p.prompt.clone(),
            choice: (prefix.len(), suffixes[choice].len()),
            response,
            text,
        });
    }
    Ok(out)
}

/// The policy's probability of each option: each option's choice-token log-probability after
/// the prompt and the shared prefix, renormalised over the options (the decoder's formula).
fn option_probabilities(
    model: &Mixtral,
    tok: &Tokenizer,
    prompt: &[u32],
    prefix: &[u32],
    suffixes: &[Vec<u32>],
) -> Result<Vec<f64>> {
    let heads: Vec<Vec<u32>> = suffixes.iter().map(|_| [prompt, prefix].concat()).collect();
    let pairs: Vec<(&[u32], &[u32])> =
        heads.iter().zip(suffixes).map(|(h, s)| (h.as_slice(), s.as_slice())).collect();
    let packed = pack(&pairs, tok.pad_id, model.device())?;
    let out = model.forward(&packed.ids, Some(&packed.attention))?;
    let lp = packed.rows(&token_logprobs(&out, &packed, 1.0)?.detach())?;
    let scores: Vec<f64> = lp.iter().map(|r| r.iter().sum()).collect();
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let z: f64 = exp.iter().sum();
    Ok(exp.iter().map(|e| e / z).collect())
}

/// An option drawn from `probs` at `temperature` (0: the most probable).
fn pick(probs: &[f64], temperature: f64, rng: &mut impl Rng) -> usize {
    let best = || probs.iter().enumerate().fold(0, |b, (i, &p)| if p > probs[b] { i } else { b });
    if temperature <= 0.0 {
        return best();
    }
    let w: Vec<f64> = probs.iter().map(|p| p.max(1e-300).powf(1.0 / temperature)).collect();
    let z: f64 = w.iter().sum();
    let mut u = rng.random::<f64>() * z;
    for (i, x) in w.iter().enumerate() {
        u -= x;
        if u <= 0.0 {
            return i;
        }
    }
    best()
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

/// Packs (prompt, response) pairs, right-padded with `pad`; every response token counts.
pub fn pack(pairs: &[(&[u32], &[u32])], pad: u32, device: &Device) -> Result<Packed> {
    let all: Vec<(usize, usize)> = pairs.iter().map(|(_, r)| (0, r.len())).collect();
    pack_spans(pairs, &all, pad, device)
}

/// Packs rollouts with only their choice tokens as the response (the policy's action; the
/// rest of each answer is forced and takes no part in ratios, KL or advantages).
pub fn pack_rollouts(rollouts: &[&Rollout], pad: u32, device: &Device) -> Result<Packed> {
    let pairs: Vec<(&[u32], &[u32])> =
        rollouts.iter().map(|r| (r.prompt.as_slice(), r.response.as_slice())).collect();
    let spans: Vec<(usize, usize)> = rollouts.iter().map(|r| r.choice).collect();
    pack_spans(&pairs, &spans, pad, device)
}

/// Packs (prompt, response) pairs, right-padded with `pad`, counting the `(start, len)` span of
/// each response as its response tokens.
pub fn pack_spans(
    pairs: &[(&[u32], &[u32])],
    spans: &[(usize, usize)],
    pad: u32,
    device: &Device,
) -> Result<Packed> {
    ensure!(!pairs.is_empty(), "nothing to pack");
    let t = pairs.iter().map(|(p, r)| p.len() + r.len()).max().unwrap_or(0);
    ensure!(t >= 2, "a sequence needs at least a prompt token and a response token");
    let b = pairs.len();
    let mut ids = Vec::with_capacity(b * t);
    let mut att = Vec::with_capacity(b * t);
    let mut resp = vec![0f32; b * (t - 1)];
    ensure!(spans.len() == b, "one response span per sequence");
    let mut out_spans = Vec::with_capacity(b);
    for (row, ((p, r), &(s0, len))) in pairs.iter().zip(spans).enumerate() {
        ensure!(!p.is_empty() && !r.is_empty(), "every rollout needs a prompt and a response");
        ensure!(
            len > 0 && s0 + len <= r.len(),
            "row {row}: span ({s0}, {len}) outside its {} response tokens",
            r.len()
        );
        let n = p.len() + r.len();
        ids.extend_from_slice(p);
        ids.extend_from_slice(r);
        ids.extend(std::iter::repeat_n(pad, t - n));
        att.extend(std::iter::repeat_n(1u32, n));
        att.extend(std::iter::repeat_n(0u32, t - n));
        let start = p.len() - 1 + s0;
        for j in 0..len {
            resp[row * (t - 1) + start + j] = 1.0;
        }
        out_spans.push((start, len));
    }
    let spans = out_spans;
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
