//! One cached decode step of ONE sequence on plain slices: the same arithmetic as
//! `Mixtral::forward` through the KV cache, without a candle op per tensor.
//!
//! Why: a decode step of a small model multiplies a few vectors by a few small matrices, and on
//! a CPU each candle op (allocation, dispatch, shape checks) costs about as much as its
//! arithmetic. Measured on the tiny preset (one decision = ~160 steps): a step through candle is
//! ~40 ops per layer, about half a millisecond; here it is a handful of loops over weights that
//! were copied once into flat vectors. Prefill, option scoring and batches of several rows keep
//! the candle path, which this step continues from: it reads and extends the same [`KvCache`].
//!
//! It applies only where it is exact: f32 compute on the CPU, base weights in f32 or int8 with
//! no unmerged LoRA branch (serving merges adapters), no sliding window. [`DecodeWeights::new`]
//! says `None` otherwise and callers take the candle path.

use anyhow::{Result, ensure};
use candle_core::{DType, Tensor};

use super::fused::{rms_norm_row, route, softmax_row};
use super::int8_matmul::{self, dot};
use super::kv_cache::KvCache;
use super::linear::{BaseWeight, Linear};
use super::mixtral::Mixtral;

/// Most new tokens per step (forced tokens + drafts); longer steps go through candle.
pub const MAX_STEP_TOKENS: usize = 16;

/// Weights above this size are not copied (the copy doubles them in memory).
const MAX_COPY_BYTES: usize = 512 << 20;

/// A frozen linear weight `[out, in]` as a flat copy.
enum Weight {
    F32 {
        w: Vec<f32>,
        k: usize,
    },
    /// Stored bytes `w / s + 128` and the per-row scale, as [`super::int8::Int8Tensor`] holds them.
    Int8 {
        q: Vec<u8>,
        s: Vec<f32>,
        k: usize,
    },
}

impl Weight {
    fn new(lin: &Linear) -> Option<Weight> {
        if lin.lora.is_some() {
            return None;
        }
        match &lin.base {
            BaseWeight::Dense(p) if p.tensor().dtype() == DType::F32 => {
                let (_, k) = p.tensor().dims2().ok()?;
                Some(Weight::F32 { w: p.tensor().flatten_all().ok()?.to_vec1().ok()?, k })
            }
            BaseWeight::Int8(q) => Some(Weight::Int8 {
                q: q.q.flatten_all().ok()?.to_vec1().ok()?,
                s: q.scale.flatten_all().ok()?.to_vec1().ok()?,
                k: q.shape.1,
            }),
            _ => None,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Weight::F32 { w, .. } => 4 * w.len(),
            Weight::Int8 { q, s, .. } => q.len() + 4 * s.len(),
        }
    }

    /// `y = W x` for one input row.
    fn apply(&self, x: &[f32], y: &mut Vec<f32>) {
        match self {
            Weight::F32 { w, k } => {
                y.resize(w.len() / k, 0.0);
                rows_times_dense(x, w, *k, y);
            }
            Weight::Int8 { q, s, k } => {
                y.resize(s.len(), 0.0);
                int8_matmul::rows_times_weight(x, q, s, *k, y);
            }
        }
    }
}

struct Expert {
    w1: Weight,
    w2: Weight,
    w3: Weight,
}

struct Layer {
    input_norm: Vec<f32>,
    post_norm: Vec<f32>,
    q: Weight,
    k: Weight,
    v: Weight,
    o: Weight,
    gate: Weight,
    experts: Vec<Expert>,
}

/// The model's weights as flat copies, for [`DecodeWeights::step`].
pub struct DecodeWeights {
    layers: Vec<Layer>,
    embed: Vec<f32>,
    final_norm: Vec<f32>,
    /// `[vocab, hidden]` (the embedding when tied).
    head: Vec<f32>,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    top_k: usize,
    eps: f32,
    inv_freq: Vec<f32>,
}

fn dense(t: &Tensor) -> Option<Vec<f32>> {
    (t.dtype() == DType::F32).then(|| t.flatten_all().ok()?.to_vec1().ok()).flatten()
}

impl DecodeWeights {
    /// Copies the weights when the step applies to this model (see the module docs).
    pub fn new(model: &Mixtral) -> Option<DecodeWeights> {
        let cfg = &model.cfg;
        if !model.device().is_cpu() || model.opts.dtype != DType::F32 || cfg.sliding_window.is_some() {
            return None;
        }
        let mut layers = Vec::with_capacity(model.layers.len());
        for l in &model.layers {
            let a = &l.self_attn;
            let moe = &l.block_sparse_moe;
            let experts = moe
                .experts
                .iter()
                .map(|e| {
                    Some(Expert { w1: Weight::new(&e.w1)?, w2: Weight::new(&e.w2)?, w3: Weight::new(&e.w3)? })
                })
                .collect::<Option<Vec<_>>>()?;
            layers.push(Layer {
                input_norm: dense(l.input_layernorm.weight.tensor())?,
                post_norm: dense(l.post_attention_layernorm.weight.tensor())?,
                q: Weight::new(&a.q_proj)?,
                k: Weight::new(&a.k_proj)?,
                v: Weight::new(&a.v_proj)?,
                o: Weight::new(&a.o_proj)?,
                gate: Weight::new(&moe.gate)?,
                experts,
            });
        }
        let embed = dense(model.embed_tokens.tensor())?;
        let head = match &model.lm_head {
            Some(p) => dense(p.tensor())?,
            None => embed.clone(),
        };
        let hd = cfg.head_dim;
        let w = DecodeWeights {
            layers,
            embed,
            final_norm: dense(model.norm.weight.tensor())?,
            head,
            hidden: cfg.hidden_size,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: hd,
            top_k: model.layers.first().map_or(1, |l| l.block_sparse_moe.top_k),
            eps: model.norm.eps as f32,
            // As `Mixtral::attn_inputs_from` computes them.
            inv_freq: (0..hd / 2)
                .map(|i| 1.0 / (cfg.rope_theta as f32).powf((2 * i) as f32 / hd as f32))
                .collect(),
        };
        (w.bytes() <= MAX_COPY_BYTES).then_some(w)
    }

    fn bytes(&self) -> usize {
        let per_layer: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.q, &l.k, &l.v, &l.o, &l.gate].iter().map(|w| w.bytes()).sum::<usize>()
                    + l.experts.iter().map(|e| e.w1.bytes() + e.w2.bytes() + e.w3.bytes()).sum::<usize>()
            })
            .sum();
        per_layer + 4 * (self.embed.len() + self.head.len())
    }

    /// Whether [`DecodeWeights::step`] takes these new tokens with this cache.
    pub fn applies(&self, cache: &KvCache, new_tokens: usize) -> bool {
        cache.mask.len() == 1 && !cache.is_empty() && (1..=MAX_STEP_TOKENS).contains(&new_tokens)
    }

    /// Runs `ids` (one sequence, no padding) after the cached positions, appends their keys
    /// and values to `cache`, and returns the logits after each token listed in `select`
    /// (indices into `ids`), in that order.
    pub fn step(&self, ids: &[u32], cache: &mut KvCache, select: &[usize]) -> Result<Vec<Vec<f32>>> {
        ensure!(
            self.applies(cache, ids.len()),
            "decode step: one prefilled row and 1..={MAX_STEP_TOKENS} new tokens"
        );
        ensure!(select.iter().all(|&c| c < ids.len()), "decode step: selected token outside the step");
        let (h, hd, nh, nkv) = (self.hidden, self.head_dim, self.heads, self.kv_heads);
        let vocab = self.embed.len() / h;
        let t = ids.len();
        let old_len = cache.len();
        // Cached positions that are real tokens (padding and rejected drafts are not attended).
        let visible_old: Vec<usize> = (0..old_len).filter(|&j| cache.mask[0][j] != 0).collect();
        let real_before = visible_old.len();
        cache.mask[0].extend(std::iter::repeat_n(1u8, t));

        let mut x: Vec<f32> = Vec::with_capacity(t * h);
        for &id in ids {
            let id = id as usize;
            ensure!(id < vocab, "token {id} outside the vocabulary of {vocab}");
            x.extend_from_slice(&self.embed[id * h..(id + 1) * h]);
        }
        // Positions: real tokens before each new one (`cumsum(mask) - 1`, as attn_inputs).
        let (cos, sin) = self.rope_tables(real_before, t);
        let mut normed = vec![0f32; h];
        let (mut qv, mut kv, mut vv, mut tmp) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (layer, lc) in self.layers.iter().zip(cache.layers.iter_mut()) {
            // Attention: project every new token, rotate, append to the cache.
            let mut q_all = vec![0f32; t * nh * hd];
            let mut k_new = vec![0f32; nkv * t * hd]; // [n_kv, t, hd], the cache's layout
            let mut v_new = vec![0f32; nkv * t * hd];
            for i in 0..t {
                rms_norm_row(&x[i * h..(i + 1) * h], &layer.input_norm, self.eps, &mut normed);
                layer.q.apply(&normed, &mut qv);
                layer.k.apply(&normed, &mut kv);
                layer.v.apply(&normed, &mut vv);
                let (c, s) = (&cos[i * hd / 2..(i + 1) * hd / 2], &sin[i * hd / 2..(i + 1) * hd / 2]);
                for head in 0..nh {
                    let dst = &mut q_all[(i * nh + head) * hd..(i * nh + head + 1) * hd];
                    rope(&qv[head * hd..(head + 1) * hd], c, s, dst);
                }
                for head in 0..nkv {
                    let at = (head * t + i) * hd;
                    rope(&kv[head * hd..(head + 1) * hd], c, s, &mut k_new[at..at + hd]);
                    v_new[at..at + hd].copy_from_slice(&vv[head * hd..(head + 1) * hd]);
                }
            }
            let dev = candle_core::Device::Cpu;
            lc.append(
                &Tensor::from_vec(k_new, (1, nkv, t, hd), &dev)?,
                &Tensor::from_vec(v_new, (1, nkv, t, hd), &dev)?,
            )?;
            let mut attn = vec![0f32; t * nh * hd];
            lc.with_cpu_slices(|keys, values, cap| {
                let shape = AttnShape { heads: nh, kv_heads: nkv, head_dim: hd, cap, old_len, new: t };
                attend(&shape, &q_all, keys, values, &visible_old, &mut attn);
            })?;
            for i in 0..t {
                layer.o.apply(&attn[i * nh * hd..(i + 1) * nh * hd], &mut tmp);
                add(&mut x[i * h..(i + 1) * h], &tmp);
            }
            // Mixture of experts.
            for i in 0..t {
                rms_norm_row(&x[i * h..(i + 1) * h], &layer.post_norm, self.eps, &mut normed);
                layer.gate.apply(&normed, &mut tmp);
                let mut route = route(std::slice::from_ref(&tmp), self.top_k).pop().unwrap_or_default();
                // Summed in expert order, as the candle path does (same float rounding).
                route.sort_by_key(|r| r.0);
                let mut moe = vec![0f32; h];
                let (mut a, mut b, mut y) = (Vec::new(), Vec::new(), Vec::new());
                for (e, w) in route {
                    let ex = &layer.experts[e];
                    ex.w1.apply(&normed, &mut a);
                    ex.w3.apply(&normed, &mut b);
                    for (ai, bi) in a.iter_mut().zip(&b) {
                        *ai = *ai / (1.0 + (-*ai).exp()) * bi;
                    }
                    ex.w2.apply(&a, &mut y);
                    for (m, yi) in moe.iter_mut().zip(&y) {
                        *m += yi * w;
                    }
                }
                add(&mut x[i * h..(i + 1) * h], &moe);
            }
        }
        let mut out = Vec::with_capacity(select.len());
        for &c in select {
            rms_norm_row(&x[c * h..(c + 1) * h], &self.final_norm, self.eps, &mut normed);
            let mut logits = vec![0f32; vocab];
            rows_times_dense(&normed, &self.head, h, &mut logits);
            out.push(logits);
        }
        Ok(out)
    }

    /// cos / sin of the `t` positions after `start`, `[t, hd/2]` each.
    fn rope_tables(&self, start: usize, t: usize) -> (Vec<f32>, Vec<f32>) {
        let mut cos = Vec::with_capacity(t * self.inv_freq.len());
        let mut sin = Vec::with_capacity(t * self.inv_freq.len());
        for i in 0..t {
            let pos = (start + i) as f32;
            for &f in &self.inv_freq {
                let a = pos * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        (cos, sin)
    }
}

/// Sizes of one attention call of [`attend`].
struct AttnShape {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Positions the cache buffers have room for (their stride along the sequence).
    cap: usize,
    /// Cached positions before this step's tokens.
    old_len: usize,
    /// This step's tokens (already appended to the cache).
    new: usize,
}

/// Causal attention of the step's queries `q` `[new, heads, hd]` over the cached keys/values
/// (`[kv_heads, cap, hd]`: the real cached positions `visible_old`, then the step's own) into `out`
/// `[new, heads * hd]`. Grouped heads as `repeat_kv` orders them; masked positions skipped
/// (the candle path gives them a -1e30 bias, so they weigh exactly 0 there too).
fn attend(s: &AttnShape, q: &[f32], keys: &[f32], values: &[f32], visible_old: &[usize], out: &mut [f32]) {
    let (nh, hd, cap) = (s.heads, s.head_dim, s.cap);
    let rep = nh / s.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut scores: Vec<f32> = Vec::with_capacity(visible_old.len() + s.new);
    let mut probs: Vec<f32> = Vec::with_capacity(visible_old.len() + s.new);
    let mut visible = visible_old.to_vec();
    for i in 0..s.new {
        visible.push(s.old_len + i);
        for head in 0..nh {
            let kvh = head / rep;
            let (kb, vb) = (&keys[kvh * cap * hd..], &values[kvh * cap * hd..]);
            let qh = &q[(i * nh + head) * hd..(i * nh + head + 1) * hd];
            scores.clear();
            scores.extend(visible.iter().map(|&j| dot(qh, &kb[j * hd..(j + 1) * hd]) * scale));
            probs.resize(scores.len(), 0.0);
            softmax_row(&scores, &mut probs);
            let o = &mut out[(i * nh + head) * hd..(i * nh + head + 1) * hd];
            for (&p, &j) in probs.iter().zip(&visible) {
                for (oi, &v) in o.iter_mut().zip(&vb[j * hd..(j + 1) * hd]) {
                    *oi += p * v;
                }
            }
        }
    }
}

/// Rotary embedding, halves layout (HF `rotate_half`).
fn rope(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = x.len() / 2;
    for i in 0..half {
        let (a, b) = (x[i], x[i + half]);
        out[i] = a * cos[i] - b * sin[i];
        out[i + half] = b * cos[i] + a * sin[i];
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// `y[n] = w_n . x` for every row `n` of `w` `[n, k]`.
fn rows_times_dense(x: &[f32], w: &[f32], k: usize, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        return unsafe { rows_times_dense_avx2(x, w, k, y) };
    }
    rows_times_dense_portable(x, w, k, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_times_dense_avx2(x: &[f32], w: &[f32], k: usize, y: &mut [f32]) {
    rows_times_dense_portable(x, w, k, y)
}

#[inline(always)]
fn rows_times_dense_portable(x: &[f32], w: &[f32], k: usize, y: &mut [f32]) {
    for (yn, wn) in y.iter_mut().zip(w.chunks_exact(k)) {
        *yn = dot(x, wn);
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::model::config::{MixtralConfig, Preset};
    use crate::model::linear::Precision;
    use crate::model::mixtral::ModelOptions;

    fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// Runs `ids` after the cache through candle, returning the logits after every token.
    fn candle_step(m: &Mixtral, cache: &mut KvCache, ids: &[u32]) -> Vec<Vec<f32>> {
        let t = ids.len();
        let input = Tensor::from_vec(ids.to_vec(), (1, t), &Device::Cpu).unwrap();
        let logits = m.forward_cached(&input, &[vec![1u8; t]], cache).unwrap();
        logits.squeeze(0).unwrap().to_vec2::<f32>().unwrap()
    }

    #[test]
    fn the_plain_step_gives_the_logits_of_the_candle_path() {
        for precision in [Precision::F32, Precision::Int8] {
            let cfg = MixtralConfig::preset(Preset::Tiny, 256);
            let opts = ModelOptions { precision, ..Default::default() };
            let m = Mixtral::new_random(&cfg, &opts, &Device::Cpu).unwrap();
            let w = DecodeWeights::new(&m).expect("f32 / int8 on the CPU without adapters");
            let prompt: Vec<u32> = (0..23u32).map(|i| (i * 37 + 3) % 256).collect();
            let mut a = KvCache::new(&m, 1);
            candle_step(&m, &mut a, &prompt);
            // A masked position inside the cache (a rejected draft token): skipped by both.
            candle_step(&m, &mut a, &[9, 10]);
            let n = a.mask[0].len();
            a.mask[0][n - 1] = 0;
            let mut b = a.fork().unwrap();
            // One token, then several at once (forced tokens), selecting some of them.
            for step in [vec![5u32], vec![17, 200, 3], vec![42], vec![1, 2, 3, 4, 5, 6, 7, 8]] {
                let want = candle_step(&m, &mut a, &step);
                let all: Vec<usize> = (0..step.len()).collect();
                let got = w.step(&step, &mut b, &all).unwrap();
                let d = max_diff(&want, &got);
                assert!(d < 1e-4, "{precision:?}, step {step:?}: logits differ by {d}");
                assert_eq!(a.mask, b.mask, "both caches record the same positions");
            }
            let last = w.step(&[7, 8], &mut b, &[1]).unwrap();
            assert_eq!(last.len(), 1, "only the selected position");
            assert!(last[0].iter().any(|&x| x.abs() > 1e-3), "non-trivial logits");
        }
    }

    #[test]
    fn it_declines_what_it_cannot_compute_exactly() {
        let cfg = MixtralConfig::preset(Preset::Tiny, 64);
        let nf4 = ModelOptions { precision: Precision::Nf4, ..Default::default() };
        assert!(DecodeWeights::new(&Mixtral::new_random(&cfg, &nf4, &Device::Cpu).unwrap()).is_none());
        let lora = ModelOptions { lora: Some(Default::default()), ..Default::default() };
        assert!(DecodeWeights::new(&Mixtral::new_random(&cfg, &lora, &Device::Cpu).unwrap()).is_none());
        let m = Mixtral::new_random(&cfg, &ModelOptions::default(), &Device::Cpu).unwrap();
        let w = DecodeWeights::new(&m).unwrap();
        assert!(!w.applies(&KvCache::new(&m, 2), 1), "one sequence only");
        assert!(!w.applies(&KvCache::new(&m, 1), MAX_STEP_TOKENS + 1));
        assert!(w.step(&[1], &mut KvCache::new(&m, 2), &[0]).is_err());
    }
}
