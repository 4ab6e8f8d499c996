//! One cached forward step that computes logits only where the decoder needs them.
//!
//! `Mixtral::forward_cached` applies the LM head at every new position; for a 1k-token prompt
//! that is a `T x H x V` matmul of which the decoder reads one row. This is the same step built
//! from the model's public pieces (embed, decoder layers with their KV caches, head), with the
//! head applied to the selected positions only.

use anyhow::{Context, Result, ensure};
use candle_core::{DType, Tensor};

use crate::model::kv_cache::KvCache;
use crate::model::mixtral::Mixtral;

/// A batch of new tokens per row (right-padded to the longest; `mask` 1 = real, 0 = padding).
pub struct Step {
    pub ids: Vec<u32>,
    pub mask: Vec<Vec<u8>>,
    pub batch: usize,
    pub len: usize,
}

impl Step {
    /// Right-pads every row's tokens (padding is masked out, so it shifts no position).
    pub fn right_padded(rows: &[&[u32]], pad: u32) -> Step {
        let len = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(rows.len() * len);
        let mut mask = Vec::with_capacity(rows.len());
        for r in rows {
            ids.extend_from_slice(r);
            ids.extend(std::iter::repeat_n(pad, len - r.len()));
            let mut m = vec![1u8; r.len()];
            m.resize(len, 0);
            mask.push(m);
        }
        Step { ids, mask, batch: rows.len(), len }
    }

    /// Left-pads every row (prompts: each row's last token lands in the last column).
    pub fn left_padded(rows: &[&[u32]], pad: u32) -> Step {
        let len = rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(rows.len() * len);
        let mut mask = Vec::with_capacity(rows.len());
        for r in rows {
            ids.extend(std::iter::repeat_n(pad, len - r.len()));
            ids.extend_from_slice(r);
            let mut m = vec![0u8; len - r.len()];
            m.resize(len, 1);
            mask.push(m);
        }
        Step { ids, mask, batch: rows.len(), len }
    }
}

/// Runs `step` after the cached positions (appending to `cache`) and returns the logits (f32,
/// full vocabulary) at each `(row, column)` of `select`, in that order.
pub fn forward_select(
    model: &Mixtral,
    step: &Step,
    cache: &mut KvCache,
    select: &[(usize, usize)],
) -> Result<Vec<Vec<f32>>> {
    let (b, q) = (step.batch, step.len);
    ensure!(cache.mask.len() == b, "cache is for batch {}, step has {b}", cache.mask.len());
    for &(r, c) in select {
        ensure!(r < b && c < q, "selected position ({r}, {c}) outside the step [{b}, {q}]");
    }
    for (row, m) in cache.mask.iter_mut().zip(&step.mask) {
        row.extend_from_slice(m);
    }
    let k_len = cache.len();
    let inp = model.attn_inputs(b, q, k_len, Some(&cache.mask))?;
    let input = Tensor::from_vec(step.ids.clone(), (b, q), model.device())?;
    let mut x = model.embed(&input)?;
    for (layer, lc) in model.layers.iter().zip(cache.layers.iter_mut()) {
        x = layer.forward(&x, &inp, Some(lc))?.0;
    }
    if select.is_empty() {
        return Ok(Vec::new());
    }
    let hidden = x.reshape((b * q, model.cfg.hidden_size))?;
    let idx: Vec<u32> = select.iter().map(|&(r, c)| (r * q + c) as u32).collect();
    let idx = Tensor::from_vec(idx, select.len(), model.device())?;
    let picked = hidden.index_select(&idx, 0)?.unsqueeze(0)?;
    let (_, logits) = model.head(&picked)?;
    logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec2::<f32>().context("reading logits")
}
