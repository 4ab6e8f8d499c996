//! A cached forward of ONE sequence on plain slices: the same arithmetic as
//! `Mixtral::forward` through the KV cache, without a candle op per tensor. It runs the
//! prompt's prefill and every generation step of a one-row decode.
//!
//! Why: a decode step of a small model multiplies a few vectors by a few small matrices, and on
//! a CPU each candle op (allocation, dispatch, shape checks) costs about as much as its
//! arithmetic. Measured on the tiny preset (one decision = ~160 steps): a step through candle is
//! ~40 ops per layer, about half a millisecond; here it is a handful of loops over weights that
//! were copied once into flat vectors. A prefill through candle spent most of its time outside
//! the matrix multiplies too (the MoE's gathers and scatters, full T x T attention scores and
//! softmax over masked positions, allocations); here the projections of all rows are one gemm
//! per weight, the experts one gemm each over the rows routed to them, and attention touches
//! only the causal positions. Option scoring (tree attention) and batches of several rows keep
//! the candle path; both read and extend the same [`KvCache`].
//!
//! It applies only where it is exact up to float rounding: f32 compute on the CPU, base weights
//! in f32 or int8 with no unmerged LoRA branch (serving merges adapters), no sliding window.
//! [`DecodeWeights::new`] says `None` otherwise and callers take the candle path.

use anyhow::{Result, ensure};
use candle_core::{DType, Tensor};

use crate::cpu::fast_math;
use crate::cpu::rows::{rms_norm_row, route};
use crate::mixtral::kv_cache::KvCache;

pub mod attention;
pub mod linear;
use self::attention::{AttnShape, attend};
use self::linear::Weight;
use crate::mixtral::Mixtral;

/// Weights above this size are not copied (the copy doubles them in memory).
const MAX_COPY_BYTES: usize = 512 << 20;

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
    head: Weight,
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

/// Buffers one [`DecodeWeights::step`] reuses across its layers.
#[derive(Default)]
struct Scratch {
    normed: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    proj: Vec<f32>,
    gate: Vec<f32>,
    rows: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    y: Vec<f32>,
    /// An int8 weight dequantized for gemm.
    deq: Vec<f32>,
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
            head: Weight::dense(head, cfg.hidden_size),
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
        per_layer + 4 * self.embed.len() + self.head.bytes()
    }

    /// Whether [`DecodeWeights::step`] takes new tokens with this cache: one sequence (the
    /// cache may be empty: that is a prefill).
    pub fn applies(&self, cache: &KvCache, new_tokens: usize) -> bool {
        cache.mask.len() == 1 && new_tokens >= 1
    }

    /// Runs `ids` (one sequence, no padding) after the cached positions, appends their keys
    /// and values to `cache`, and returns the logits after each token listed in `select`
    /// (indices into `ids`), in that order.
    pub fn step(&self, ids: &[u32], cache: &mut KvCache, select: &[usize]) -> Result<Vec<Vec<f32>>> {
        ensure!(self.applies(cache, ids.len()), "plain forward: one sequence and at least one new token");
        ensure!(select.iter().all(|&c| c < ids.len()), "plain forward: selected token outside the step");
        let vocab = self.embed.len() / self.hidden;
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            anyhow::bail!("token {id} outside the vocabulary of {vocab}");
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { self.step_avx2(ids, cache, select) };
        }
        self.step_body(ids, cache, select)
    }

    /// [`Self::step_body`] compiled with AVX2: the row loops it inlines (norms, rotary, SiLU,
    /// residual adds) run 8 lanes wide with the same operations in the same order.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn step_avx2(&self, ids: &[u32], cache: &mut KvCache, select: &[usize]) -> Result<Vec<Vec<f32>>> {
        self.step_body(ids, cache, select)
    }

    #[inline(always)]
    fn step_body(&self, ids: &[u32], cache: &mut KvCache, select: &[usize]) -> Result<Vec<Vec<f32>>> {
        let (h, hd, nh, nkv) = (self.hidden, self.head_dim, self.heads, self.kv_heads);
        let t = ids.len();
        let old_len = cache.len();
        // Cached positions that are real tokens (padding and rejected drafts are not attended).
        let visible_old: Vec<usize> = (0..old_len).filter(|&j| cache.mask[0][j] != 0).collect();
        let real_before = visible_old.len();
        cache.mask[0].extend(std::iter::repeat_n(1u8, t));

        let mut x: Vec<f32> = Vec::with_capacity(t * h);
        for &id in ids {
            let id = id as usize;
            x.extend_from_slice(&self.embed[id * h..(id + 1) * h]);
        }
        // Positions: real tokens before each new one (`cumsum(mask) - 1`, as attn_inputs).
        let (cos, sin) = self.rope_tables(real_before, t);
        let mut sc = Scratch::default();
        for (layer, lc) in self.layers.iter().zip(cache.layers.iter_mut()) {
            // Attention: project every new token, rotate, append to the cache.
            norm_rows(&x, &layer.input_norm, self.eps, &mut sc.normed);
            layer.q.apply_rows(&sc.normed, &mut sc.q, &mut sc.deq);
            layer.k.apply_rows(&sc.normed, &mut sc.k, &mut sc.deq);
            layer.v.apply_rows(&sc.normed, &mut sc.v, &mut sc.deq);
            let mut q_all = vec![0f32; t * nh * hd];
            let mut k_new = vec![0f32; nkv * t * hd]; // [n_kv, t, hd], the cache's layout
            let mut v_new = vec![0f32; nkv * t * hd];
            for i in 0..t {
                let (c, s) = (&cos[i * hd / 2..(i + 1) * hd / 2], &sin[i * hd / 2..(i + 1) * hd / 2]);
                for head in 0..nh {
                    let at = (i * nh + head) * hd;
                    rope(&sc.q[at..at + hd], c, s, &mut q_all[at..at + hd]);
                }
                for head in 0..nkv {
                    let (src, at) = ((i * nkv + head) * hd, (head * t + i) * hd);
                    rope(&sc.k[src..src + hd], c, s, &mut k_new[at..at + hd]);
                    v_new[at..at + hd].copy_from_slice(&sc.v[src..src + hd]);
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
            layer.o.apply_rows(&attn, &mut sc.proj, &mut sc.deq);
            add(&mut x, &sc.proj);
            // Mixture of experts: each expert runs once over the rows routed to it.
            norm_rows(&x, &layer.post_norm, self.eps, &mut sc.normed);
            layer.gate.apply_rows(&sc.normed, &mut sc.gate, &mut sc.deq);
            let n_experts = layer.experts.len();
            let logits: Vec<Vec<f32>> = sc.gate.chunks_exact(n_experts).map(<[f32]>::to_vec).collect();
            let routes = route(&logits, self.top_k);
            let mut moe = vec![0f32; t * h];
            for (e, ex) in layer.experts.iter().enumerate() {
                // Rows in order; each row's experts are summed in expert order, as the candle
                // path does (same float rounding).
                let picked: Vec<(usize, f32)> = routes
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| r.iter().find(|(re, _)| *re == e).map(|&(_, w)| (i, w)))
                    .collect();
                if picked.is_empty() {
                    continue;
                }
                sc.rows.clear();
                for &(i, _) in &picked {
                    sc.rows.extend_from_slice(&sc.normed[i * h..(i + 1) * h]);
                }
                ex.w1.apply_rows(&sc.rows, &mut sc.a, &mut sc.deq);
                ex.w3.apply_rows(&sc.rows, &mut sc.b, &mut sc.deq);
                silu_mul(&mut sc.a, &sc.b);
                ex.w2.apply_rows(&sc.a, &mut sc.y, &mut sc.deq);
                for (&(i, w), y) in picked.iter().zip(sc.y.chunks_exact(h)) {
                    for (m, yi) in moe[i * h..(i + 1) * h].iter_mut().zip(y) {
                        *m += yi * w;
                    }
                }
            }
            add(&mut x, &moe);
        }
        let mut out = Vec::with_capacity(select.len());
        let mut normed = vec![0f32; h];
        for &c in select {
            rms_norm_row(&x[c * h..(c + 1) * h], &self.final_norm, self.eps, &mut normed);
            let mut logits = Vec::new();
            self.head.apply(&normed, &mut logits);
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

/// RMSNorm of every row of `x` (rows of `w.len()`) into `y`.
#[inline(always)]
fn norm_rows(x: &[f32], w: &[f32], eps: f32, y: &mut Vec<f32>) {
    y.clear();
    y.resize(x.len(), 0.0);
    for (xi, yi) in x.chunks_exact(w.len()).zip(y.chunks_exact_mut(w.len())) {
        rms_norm_row(xi, w, eps, yi);
    }
}

/// `a = silu(a) * b`, SiLU as the candle path computes it (`a / (1 + e^-a)`).
#[inline(always)]
fn silu_mul(a: &mut [f32], b: &[f32]) {
    for (ai, bi) in a.iter_mut().zip(b) {
        *ai = *ai / (1.0 + fast_math::exp(-*ai)) * bi;
    }
}

/// Rotary embedding, halves layout (HF `rotate_half`).
#[inline(always)]
fn rope(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32]) {
    let half = x.len() / 2;
    for i in 0..half {
        let (a, b) = (x[i], x[i + half]);
        out[i] = a * cos[i] - b * sin[i];
        out[i + half] = b * cos[i] + a * sin[i];
    }
}

#[inline(always)]
fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::config::{MixtralConfig, Preset};
    use crate::linear::Precision;
    use crate::mixtral::ModelOptions;
    use crate::path::ForwardPath;

    fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// Runs `ids` after the cache through candle, returning the logits after every token.
    fn candle_step(m: &Mixtral, cache: &mut KvCache, ids: &[u32]) -> Vec<Vec<f32>> {
        let t = ids.len();
        let input = Tensor::from_vec(ids.to_vec(), (1, t), &Device::Cpu).unwrap();
        let logits = m.forward_cached(&input, &[vec![1u8; t]], cache, ForwardPath::Fused).unwrap();
        logits.squeeze(0).unwrap().to_vec2::<f32>().unwrap()
    }

    #[test]
    fn the_plain_forward_gives_the_logits_of_the_candle_path() {
        for precision in [Precision::F32, Precision::Int8] {
            let cfg = MixtralConfig::preset(Preset::Tiny, 256);
            let opts = ModelOptions { precision, ..Default::default() };
            let m = Mixtral::new_random(&cfg, &opts, &Device::Cpu).unwrap();
            let w = DecodeWeights::new(&m).expect("f32 / int8 on the CPU without adapters");
            // The prefill: longer than GEMM_MIN_ROWS, so its projections go through gemm.
            let prompt: Vec<u32> = (0..23u32).map(|i| (i * 37 + 3) % 256).collect();
            assert!(prompt.len() >= crate::plain::linear::GEMM_MIN_ROWS);
            let mut a = KvCache::new(m.cfg.num_hidden_layers, 1);
            let want = candle_step(&m, &mut a, &prompt);
            let mut b = KvCache::new(m.cfg.num_hidden_layers, 1);
            assert!(w.applies(&b, prompt.len()), "a prefill into an empty cache");
            let got = w.step(&prompt, &mut b, &(0..prompt.len()).collect::<Vec<_>>()).unwrap();
            let d = max_diff(&want, &got);
            assert!(d < 1e-4, "{precision:?}, prefill: logits differ by {d}");
            // A masked position inside the cache (a rejected draft token): skipped by both.
            candle_step(&m, &mut a, &[9, 10]);
            w.step(&[9, 10], &mut b, &[]).unwrap();
            for c in [&mut a, &mut b] {
                let n = c.mask[0].len();
                c.mask[0][n - 1] = 0;
            }
            // One token, then several at once (forced tokens), and a long step after the cache
            // (gemm again), selecting some of them.
            let long: Vec<u32> = (0..20u32).map(|i| (i * 11 + 5) % 256).collect();
            for step in [vec![5u32], vec![17, 200, 3], vec![42], vec![1, 2, 3, 4, 5, 6, 7, 8], long] {
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
        assert!(!w.applies(&KvCache::new(m.cfg.num_hidden_layers, 2), 1), "one sequence only");
        assert!(!w.applies(&KvCache::new(m.cfg.num_hidden_layers, 1), 0), "no new token");
        assert!(
            w.step(&[64], &mut KvCache::new(m.cfg.num_hidden_layers, 1), &[0]).is_err(),
            "a token outside the vocabulary"
        );
        assert!(w.step(&[1], &mut KvCache::new(m.cfg.num_hidden_layers, 2), &[0]).is_err());
    }
}
