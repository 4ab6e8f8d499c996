//! Losses on full-sequence logits, built from differentiable ops.

use anyhow::{Context, Result, ensure};
use candle_core::{D, DType, Tensor};

use super::linear::log_softmax_last;
use super::mixtral::acc_dtype;

/// Log-probability of each target token: `logits [B, T, V]`, `targets [B, T]` -> `[B, T]`
/// (f32, or f64 for f64 logits).
pub fn token_logprobs(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (b, t, _) = logits.dims3().context("logits must be [batch, seq, vocab]")?;
    ensure!(targets.dims() == [b, t], "targets are {:?}, logits [{b}, {t}, _]", targets.dims());
    let lp = log_softmax_last(&logits.to_dtype(acc_dtype(logits.dtype()))?)?;
    let idx = targets.to_dtype(DType::U32)?.unsqueeze(2)?.contiguous()?;
    Ok(lp.gather(&idx, 2)?.squeeze(2)?)
}

/// Log-probabilities of the next tokens: position `i`'s logits scored on token `i+1`.
/// Returns `[B, T-1]`.
pub fn shifted_logprobs(logits: &Tensor, input_ids: &Tensor) -> Result<Tensor> {
    let (_, t, _) = logits.dims3()?;
    ensure!(t >= 2, "need at least 2 tokens for a causal LM loss");
    token_logprobs(&logits.narrow(1, 0, t - 1)?, &input_ids.narrow(1, 1, t - 1)?)
}

/// Mean next-token cross-entropy. `loss_mask [B, T]` (optional) selects which TARGET tokens
/// count (1 = count): e.g. the response part in SFT, real tokens when padded.
pub fn causal_lm_loss(logits: &Tensor, input_ids: &Tensor, loss_mask: Option<&Tensor>) -> Result<Tensor> {
    let lp = shifted_logprobs(logits, input_ids)?;
    let (_, t1) = lp.dims2()?;
    match loss_mask {
        None => Ok(lp.mean_all()?.neg()?),
        Some(m) => {
            ensure!(
                m.dims() == input_ids.dims(),
                "loss_mask is {:?}, input_ids {:?}",
                m.dims(),
                input_ids.dims()
            );
            let m = m.to_dtype(DType::F32)?.narrow(1, 1, t1)?;
            let n = m.sum_all()?.to_scalar::<f32>()?;
            let m = m.to_dtype(lp.dtype())?;
            ensure!(n > 0.0, "loss_mask selects no token");
            Ok(((lp * m)?.sum_all()? / (-(n as f64)))?)
        }
    }
}

/// Switch-Transformer load-balancing loss over the router logits of every layer, as HF's
/// `load_balancing_loss_func` (without padding mask): `E * sum_e(frac_tokens_e * mean_prob_e)`.
pub fn load_balancing_loss(router_logits: &[Tensor], num_experts: usize, top_k: usize) -> Result<Tensor> {
    ensure!(!router_logits.is_empty(), "no router logits (they are not kept under gradient checkpointing)");
    let all = Tensor::cat(router_logits, 0)?.to_dtype(DType::F32)?;
    let probs = candle_nn::ops::softmax(&all, D::Minus1)?;
    let idx = probs.detach().arg_sort_last_dim(false)?.narrow(1, 0, top_k)?.contiguous()?;
    let n = all.dim(0)?;
    // One-hot of the selected experts, summed over k: fraction of tokens routed to each expert.
    let mut counts = vec![0f32; num_experts];
    for row in idx.to_vec2::<u32>()? {
        for e in row {
            counts[e as usize] += 1.0;
        }
    }
    let frac: Vec<f32> = counts.iter().map(|c| c / (n * top_k) as f32).collect();
    let frac = Tensor::from_vec(frac, num_experts, all.device())?;
    let mean_prob = probs.mean(0)?;
    Ok(((frac * mean_prob)?.sum_all()? * (num_experts * top_k) as f64)?)
}
