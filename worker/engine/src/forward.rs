//! One cached forward step that computes logits only where the decoder needs them.
//!
//! `Mixtral::forward_cached` applies the LM head at every new position; for a 1k-token prompt
//! that is a `T x H x V` matmul of which the decoder reads one row. This is the same step built
//! from the model's public pieces (embed, decoder layers with their KV caches, head), with the
//! head applied to the selected positions only.

use anyhow::{Context, Result, ensure};
use candle_core::{DType, Tensor};

use sapllm_model::ForwardPath;
use sapllm_model::mixtral::Mixtral;
use sapllm_model::mixtral::kv_cache::KvCache;
use sapllm_model::plain::DecodeWeights;

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

/// Runs `step` after the cached positions (appending to `cache`) through the candle graph
/// (`path` says whether with its fused shortcuts) and returns the logits (f32, full vocabulary)
/// at each `(row, column)` of `select`, in that order.
pub fn forward_select(
    model: &Mixtral,
    step: &Step,
    cache: &mut KvCache,
    select: &[(usize, usize)],
    path: ForwardPath,
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
    let inp = model.attn_inputs(b, q, k_len, Some(&cache.mask), path)?;
    let input = Tensor::from_vec(step.ids.clone(), (b, q), model.device())?;
    let (x, _) = model.run_layers(model.embed(&input)?, &inp, Some(&mut cache.layers))?;
    if select.is_empty() {
        return Ok(Vec::new());
    }
    let hidden = x.reshape((b * q, model.cfg.hidden_size))?;
    let idx: Vec<u32> = select.iter().map(|&(r, c)| (r * q + c) as u32).collect();
    let idx = Tensor::from_vec(idx, select.len(), model.device())?;
    let picked = hidden.index_select(&idx, 0)?.unsqueeze(0)?;
    let (_, logits) = model.head(&picked, path)?;
    logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec2::<f32>().context("reading logits")
}

/// [`forward_select`] through the plain-slice forward ([`DecodeWeights::step`]) when it is
/// given and applies: one row without padding (a prefill or a generation step). Same logits up
/// to float rounding.
pub fn forward_select_with(
    model: &Mixtral,
    fast: Option<&DecodeWeights>,
    step: &Step,
    cache: &mut KvCache,
    select: &[(usize, usize)],
    path: ForwardPath,
) -> Result<Vec<Vec<f32>>> {
    if let Some(w) = fast
        && step.batch == 1
        && w.applies(cache, step.len)
        && step.mask[0].iter().all(|&m| m != 0)
    {
        let cols: Vec<usize> = select.iter().map(|&(_, c)| c).collect();
        return w.step(&step.ids, cache, &cols);
    }
    forward_select(model, step, cache, select, path)
}

/// Logits after each token of one branch.
pub type BranchLogits = Vec<Vec<f32>>;

/// Tree-attention step: per row, several independent BRANCHES (token lists) that all continue
/// the cached prefix, run as ONE forward. Each branch token attends to the row's cached real
/// positions and to the earlier tokens of its own branch only, and gets the position it would
/// have if its branch were alone; so its logits equal those of feeding that branch by itself.
/// The cache is left holding every branch (callers run this on a throw-away clone).
///
/// Returns, per row and branch, the logits after each of the branch's tokens. Needs full
/// attention (no sliding window); the positions and rotary tables follow
/// `Mixtral::attn_inputs`.
pub fn forward_branches(
    model: &Mixtral,
    cache: &mut KvCache,
    branches: &[Vec<&[u32]>],
    pad: u32,
    path: ForwardPath,
) -> Result<Vec<Vec<BranchLogits>>> {
    ensure!(model.cfg.sliding_window.is_none(), "branch scoring needs full attention");
    let b = branches.len();
    ensure!(cache.mask.len() == b, "cache is for batch {}, got {b} rows", cache.mask.len());
    let q = branches.iter().map(|r| r.iter().map(|t| t.len()).sum::<usize>()).max().unwrap_or(0).max(1);
    let k_old = cache.len();
    let k_len = k_old + q;
    let mut ids = vec![pad; b * q];
    let mut pos = vec![0f32; b * q];
    let mut bias = vec![-1e30f32; b * q * k_len];
    let mut select = Vec::new();
    let mut new_mask = Vec::with_capacity(b);
    for (r, row) in branches.iter().enumerate() {
        let prefix_real = cache.mask[r].iter().filter(|&&m| m != 0).count();
        // (branch index, offset) of each new column of this row.
        let mut cols: Vec<(usize, usize)> = Vec::with_capacity(q);
        for (bi, toks) in row.iter().enumerate() {
            for (o, &t) in toks.iter().enumerate() {
                ids[r * q + cols.len()] = t;
                pos[r * q + cols.len()] = (prefix_real + o) as f32;
                select.push((r, cols.len()));
                cols.push((bi, o));
            }
        }
        let mut m = vec![1u8; cols.len()];
        m.resize(q, 0);
        new_mask.push(m);
        for (j, &(bj, oj)) in cols.iter().enumerate() {
            let row_bias = &mut bias[(r * q + j) * k_len..(r * q + j + 1) * k_len];
            for (t, &real) in cache.mask[r].iter().enumerate() {
                if real != 0 {
                    row_bias[t] = 0.0;
                }
            }
            for (j2, &(b2, o2)) in cols.iter().enumerate() {
                if b2 == bj && o2 <= oj {
                    row_bias[k_old + j2] = 0.0;
                }
            }
        }
    }
    for (row, m) in cache.mask.iter_mut().zip(&new_mask) {
        row.extend_from_slice(m);
    }
    let dev = model.device();
    let inp = model.attn_inputs_from(pos, bias, b, q, k_len, path)?;
    let input = Tensor::from_vec(ids, (b, q), dev)?;
    let (x, _) = model.run_layers(model.embed(&input)?, &inp, Some(&mut cache.layers))?;
    let hidden = x.reshape((b * q, model.cfg.hidden_size))?;
    let idx: Vec<u32> = select.iter().map(|&(r, c)| (r * q + c) as u32).collect();
    let idx = Tensor::from_vec(idx, select.len(), dev)?;
    let (_, logits) = model.head(&hidden.index_select(&idx, 0)?.unsqueeze(0)?, path)?;
    let mut rows = logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec2::<f32>()?.into_iter();
    let mut out = Vec::with_capacity(b);
    for row in branches {
        let mut per_branch = Vec::with_capacity(row.len());
        for toks in row {
            per_branch.push(rows.by_ref().take(toks.len()).collect());
        }
        out.push(per_branch);
    }
    Ok(out)
}
