//! DPO (Rafailov et al. 2023) on `preference_pairs.jsonl`: offline, no sampling, no reward
//! model at training time. Loss per pair: `-log sigmoid(beta * ((logpi_c - logref_c) -
//! (logpi_r - logref_r)))` with sequence log-probabilities summed over response tokens (beta =
//! `kl_coef`; TRL's default is 0.1). Each iteration takes `batch_size` pairs (seeded by the
//! iteration) in mini-batches of `mini_batch_size` pairs, one optimizer step per mini-batch.
//!
//! A pair stores decisions (endpoint, payload, confidence), not text: both answers are rendered
//! with the shared template and the example's reasoning, so the pair differs exactly where the
//! decisions differ and DPO cannot learn a preference for some reasoning style instead.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Result, ensure};
use candle_core::{D, Tensor};

use super::Session;
use super::log::IterLog;
use super::ppo::mean;
use super::rollout::{Packed, pack, token_logprobs};
use crate::dataprep::examples::{Decision, PreferencePair, RoutingExample};
use crate::train::data::{read_jsonl, routing_sequence};
use sapllm_engine::format::{RoutingAnswer, answer_payload, clip_reasoning, round_confidence};
use sapllm_engine::profile::PromptProfile;
use sapllm_engine::template::response_text;
use sapllm_model::tokenizer::Tokenizer;
use sapllm_sap::catalog::Catalog;

/// A tokenized preference pair.
#[derive(Debug, Clone)]
pub struct PairSequences {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
}

fn answer_tokens(tok: &Tokenizer, catalog: &Catalog, ex: &RoutingExample, d: &Decision) -> Result<Vec<u32>> {
    let answer = RoutingAnswer {
        doc_type: ex.doc_type.clone(),
        endpoint: d.endpoint.clone(),
        payload: answer_payload(catalog, &d.endpoint, &d.payload),
        reasoning: clip_reasoning(&ex.reasoning_trace),
        confidence: round_confidence(d.confidence),
    };
    let mut ids = tok.encode(&response_text(&answer)?)?;
    ids.push(tok.eos_id);
    Ok(ids)
}

/// Training-split pairs, prompted as SFT prompted their example; pairs that do not fit
/// `max_seq_len` are skipped.
pub fn load_pairs(
    data_dir: &Path,
    catalog: &Catalog,
    tok: &Tokenizer,
    max_seq_len: usize,
    profile: &PromptProfile,
) -> Result<Vec<PairSequences>> {
    let pairs: Vec<PreferencePair> = read_jsonl(&data_dir.join("preference_pairs.jsonl"))?;
    let examples: Vec<RoutingExample> = read_jsonl(&data_dir.join("train_routing_examples.jsonl"))?;
    let by_id: HashMap<&str, &RoutingExample> = examples.iter().map(|e| (e.doc_id.as_str(), e)).collect();
    let mut out = Vec::new();
    for p in pairs.iter().filter(|p| p.split == "train") {
        let Some(ex) = by_id.get(p.doc_id.as_str()) else { continue };
        let Some((seq, _)) = routing_sequence(catalog, tok, ex, max_seq_len, profile)? else {
            continue;
        };
        let prompt_len = seq.loss_mask.iter().take_while(|&&m| m == 0).count();
        let chosen = answer_tokens(tok, catalog, ex, &p.chosen)?;
        let rejected = answer_tokens(tok, catalog, ex, &p.rejected)?;
        if prompt_len + chosen.len().max(rejected.len()) > max_seq_len {
            continue;
        }
        out.push(PairSequences { prompt: seq.ids[..prompt_len].to_vec(), chosen, rejected });
    }
    ensure!(
        !out.is_empty(),
        "no training preference pair in {} fits ppo max sequence length {max_seq_len}",
        data_dir.join("preference_pairs.jsonl").display()
    );
    Ok(out)
}

/// Summed response log-probabilities per row `[B]`.
fn seq_logprobs(lp: &Tensor, packed: &Packed) -> Result<Tensor> {
    Ok((lp * &packed.response_mask)?.sum(D::Minus1)?)
}

/// `log sigmoid(x)`, stable for large |x|: `min(x, 0) - log(1 + exp(-|x|))`.
fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let soft = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    Ok((x.minimum(0.0)? - soft)?)
}

/// Runs iteration `it` and reports it.
pub fn iteration(sess: &mut Session, it: u64) -> Result<IterLog> {
    let cfg = sess.cfg;
    let which = sess.pick(sess.pairs.len(), cfg.batch_size, it);
    let mut losses = Vec::new();
    let mut kls = Vec::new();
    let mut right = 0usize;
    for mb in which.chunks(cfg.mini_batch_size) {
        // Rows: chosen answers first, then the rejected ones in the same order.
        let mut rows: Vec<(&[u32], &[u32])> =
            mb.iter().map(|&i| (sess.pairs[i].prompt.as_slice(), sess.pairs[i].chosen.as_slice())).collect();
        rows.extend(mb.iter().map(|&i| (sess.pairs[i].prompt.as_slice(), sess.pairs[i].rejected.as_slice())));
        let packed = pack(&rows, sess.tok.pad_id, sess.policy.device())?;
        let ref_out = sess.reference.forward(&packed.ids, Some(&packed.attention))?;
        let ref_seq = seq_logprobs(&token_logprobs(&ref_out, &packed, 1.0)?, &packed)?.detach();
        let n = mb.len();
        let beta = cfg.kl_coef;
        let mut stats: (f64, Vec<f64>, Vec<f64>) = (0.0, Vec::new(), Vec::new());
        let (_, grads) = sess.policy.forward_backward(&packed.ids, Some(&packed.attention), &mut |out| {
            let pol_seq = seq_logprobs(&token_logprobs(out, &packed, 1.0)?, &packed)?;
            let ratio = (&pol_seq - &ref_seq)?;
            let margin = (ratio.narrow(0, 0, n)? - ratio.narrow(0, n, n)?)?;
            let loss = log_sigmoid(&(margin.clone() * beta)?)?.mean_all()?.neg()?;
            stats = (
                loss.to_scalar::<f32>()? as f64,
                margin.detach().to_vec1::<f32>()?.into_iter().map(f64::from).collect(),
                ratio.detach().to_vec1::<f32>()?.into_iter().map(f64::from).collect(),
            );
            Ok(loss)
        })?;
        sess.opt.step(&grads)?;
        losses.push(stats.0);
        right += stats.1.iter().filter(|&&m| m > 0.0).count();
        kls.extend(stats.2);
    }
    Ok(IterLog {
        iteration: it + 1,
        kl: mean(&kls),
        policy_loss: mean(&losses),
        preference_accuracy: Some(right as f64 / which.len().max(1) as f64),
        lr: sess.opt.current_lr(),
        ..IterLog::default()
    })
}
