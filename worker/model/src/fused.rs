//! Shortcuts for inference, where nothing needs a gradient: the same arithmetic as the
//! differentiable path in `mixtral.rs`, in fewer candle ops.
//!
//! Decoding one token through the tiny model is a few hundred small ops, and on a CPU each op
//! costs about as much in dispatch and allocation as in arithmetic. Four blocks are the most
//! op-heavy and have an exact shortcut when no input tracks a gradient:
//! - RMSNorm: one pass per row ([`RmsNormOp`], one op instead of seven);
//! - rotary embeddings of one new position: candle's fused `rope` over half-width tables (one
//!   op instead of seven);
//! - attention softmax: one pass per row ([`SoftmaxOp`], one op and one buffer instead of five
//!   and four);
//! - the MoE router: softmax and top-k of a handful of logits on the host, then each chosen
//!   expert runs on its rows with host-built weights (no arg_sort / gather / index_add when
//!   every row goes to the expert, as in single-row decoding).
//!
//! RMSNorm and softmax are our own sequential kernels, not candle's `rms_norm` /
//! `softmax_last_dim`: those split rows over rayon even for one row, and a call from outside
//! the pool parks the caller until a pool thread has run it, two context switches per op
//! (measured: decoding 50 % slower than without any shortcut, a fifth of the time in the
//! scheduler).
//!
//! None of the fused ops has a backward pass, which is why training never takes them:
//! [`enabled`] is false as soon as one input tracks an op. [`set_enabled`] turns the shortcuts
//! off for the calling thread, for the equivalence tests and the side-by-side benchmark
//! (thread-local, so a test cannot change the path of another test running beside it).

use std::cell::Cell;

use anyhow::Result;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};

use super::fast_math;

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// Turns the shortcuts on or off for forwards run on this thread (default on).
pub fn set_enabled(on: bool) {
    ENABLED.with(|e| e.set(on));
}

/// Whether a block over these inputs may take its shortcut: switched on for this thread, f32 (the fused CPU
/// kernels accumulate in f32, which is the reference arithmetic only for f32 activations) and
/// no input tracking a gradient.
pub fn enabled(inputs: &[&Tensor]) -> bool {
    ENABLED.with(Cell::get)
        && inputs.iter().all(|t| t.dtype() == DType::F32 && t.device().is_cpu() && !t.track_op())
}

/// The contiguous f32 data of a CPU tensor argument and its last dimension.
fn rows<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<(&'a [f32], usize)> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("fused kernels take f32") };
    let Some((from, to)) = l.contiguous_offsets() else {
        candle_core::bail!("fused kernels take contiguous input")
    };
    let d = *l.dims().last().unwrap_or(&1);
    Ok((&v[from..to], d.max(1)))
}

/// Softmax of one row `x` into `y` (also the plain-slice decode step's). Inlined so that it
/// vectorises in the callers compiled for AVX2.
#[inline(always)]
pub fn softmax_row(x: &[f32], y: &mut [f32]) {
    let max = fast_math::max(x);
    for (xi, yi) in x.iter().zip(y.iter_mut()) {
        *yi = fast_math::exp(xi - max);
    }
    let sum = fast_math::sum(y);
    for yi in y.iter_mut() {
        *yi /= sum;
    }
}

/// `x / sqrt(mean(x^2) + eps) * w` of one row into `y` (also the plain-slice decode step's).
#[inline(always)]
pub fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) {
    let mean = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let denom = (mean + eps).sqrt();
    for ((xi, yi), wi) in x.iter().zip(y.iter_mut()).zip(w) {
        *yi = xi / denom * wi;
    }
}

/// Softmax over the last dimension, row by row on the calling thread.
pub struct SoftmaxOp;

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "sapllm-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (src, d) = rows(s, l)?;
        let mut dst = vec![0f32; src.len()];
        softmax_rows(src, d, &mut dst);
        Ok((CpuStorage::F32(dst), l.shape().clone()))
    }
}

/// [`softmax_row`] of every row of `d` values, compiled for AVX2 where the CPU has it.
fn softmax_rows(src: &[f32], d: usize, dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        return unsafe { softmax_rows_avx2(src, d, dst) };
    }
    softmax_rows_portable(src, d, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_rows_avx2(src: &[f32], d: usize, dst: &mut [f32]) {
    softmax_rows_portable(src, d, dst)
}

#[inline(always)]
fn softmax_rows_portable(src: &[f32], d: usize, dst: &mut [f32]) {
    for (x, y) in src.chunks(d).zip(dst.chunks_mut(d)) {
        softmax_row(x, y);
    }
}

/// `x / sqrt(mean(x^2) + eps) * w` over the last dimension, row by row on the calling thread.
pub struct RmsNormOp {
    pub eps: f32,
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "sapllm-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (src, d) = rows(s1, l1)?;
        let (w, dw) = rows(s2, l2)?;
        if w.len() != d || dw != d {
            candle_core::bail!("rms-norm weight has {} values for rows of {d}", w.len());
        }
        let mut dst = vec![0f32; src.len()];
        for (x, y) in src.chunks(d).zip(dst.chunks_mut(d)) {
            rms_norm_row(x, w, self.eps, y);
        }
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }
}

/// Per row, the `top_k` experts with the largest router logits and their weights: the softmax
/// over all experts restricted to the chosen ones and renormalised, which is the softmax over
/// the chosen logits alone (as HF's `routing_weights /= routing_weights.sum()` computes).
/// Ties go to the lower expert index.
pub fn route(logits: &[Vec<f32>], top_k: usize) -> Vec<Vec<(usize, f32)>> {
    logits
        .iter()
        .map(|row| {
            let mut order: Vec<usize> = (0..row.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            order.truncate(top_k);
            let max = order.iter().map(|&e| row[e]).fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = order.iter().map(|&e| (row[e] - max).exp()).collect();
            let z: f32 = exps.iter().sum();
            order.into_iter().zip(exps).map(|(e, x)| (e, x / z)).collect()
        })
        .collect()
}

/// `[B, T, hd/2]` cos / sin tables for candle's fused `rope` from per-row positions
/// `[B*T, hd/2]` frequencies.
pub fn half_tables(freqs: &Tensor, b: usize, t: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
    let half = freqs.dim(1)?;
    let f = freqs.reshape((b, t, half))?;
    Ok((f.cos()?.to_dtype(dtype)?.contiguous()?, f.sin()?.to_dtype(dtype)?.contiguous()?))
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::config::{MixtralConfig, Preset};
    use crate::kv_cache::KvCache;
    use crate::linear::Precision;
    use crate::mixtral::{Mixtral, ModelOptions};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn shortcuts_give_the_logits_of_the_differentiable_path() {
        for precision in [Precision::F32, Precision::Int8] {
            let cfg = MixtralConfig::preset(Preset::Tiny, 256);
            let m =
                Mixtral::new_random(&cfg, &ModelOptions { precision, ..Default::default() }, &Device::Cpu)
                    .unwrap();
            let dev = Device::Cpu;
            let ids: Vec<u32> = (0..18u32).map(|i| (i * 37 + 3) % 256).collect();
            let ids = Tensor::from_vec(ids, (2, 9), &dev).unwrap();
            // A left-padded row and a full one: several rows per expert, and row-wise positions.
            let mask = vec![vec![0, 0, 1, 1, 1, 1, 1, 1, 1], vec![1u8; 9]];
            let step = Tensor::from_vec(vec![5u32, 7], (2, 1), &dev).unwrap();
            let run = |on: bool| {
                set_enabled(on);
                let mut cache = KvCache::new(&m, 2);
                let prefill = m.forward_cached(&ids, &mask, &mut cache).unwrap();
                let decode = m.forward_cached(&step, &[vec![1], vec![1]], &mut cache).unwrap();
                let one_row = m.forward(&ids.narrow(0, 1, 1).unwrap(), None).unwrap().logits;
                set_enabled(true);
                (prefill, decode, one_row)
            };
            let (p0, d0, f0) = run(false);
            let (p1, d1, f1) = run(true);
            // Exact up to float summation order.
            assert!(max_diff(&p0, &p1) < 1e-4, "prefill {precision:?}: {}", max_diff(&p0, &p1));
            assert!(max_diff(&d0, &d1) < 1e-4, "decode {precision:?}: {}", max_diff(&d0, &d1));
            assert!(max_diff(&f0, &f1) < 1e-4, "forward {precision:?}: {}", max_diff(&f0, &f1));
            assert!(max_diff(&p0, &p0.zeros_like().unwrap()) > 1e-3, "non-trivial logits");
        }
    }

    #[test]
    fn anything_that_tracks_a_gradient_takes_the_differentiable_path() {
        let plain = Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(enabled(&[&plain]));
        let var = Var::ones((2, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(!enabled(&[&plain, var.as_tensor()]));
        let derived = (var.as_tensor() * 2.0).unwrap();
        assert!(!enabled(&[&derived]), "a tensor computed from a Var tracks it");
        assert!(!enabled(&[&plain.to_dtype(DType::F64).unwrap()]), "only f32 has the reference arithmetic");
        set_enabled(false);
        assert!(!enabled(&[&plain]));
        set_enabled(true);
    }

    #[test]
    fn routing_keeps_the_largest_logits_and_renormalises_their_softmax() {
        let r = route(&[vec![0.1, 2.0, -1.0, 1.0]], 2);
        assert_eq!(r[0].iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 3]);
        let (a, b) = (r[0][0].1, r[0][1].1);
        assert!((a + b - 1.0).abs() < 1e-6);
        assert!((a / b - 1.0f32.exp()).abs() < 1e-5, "weights keep the softmax ratio e^(2-1)");
        // Ties: the lower index first.
        let t = route(&[vec![1.0, 1.0, 1.0]], 2);
        assert_eq!(t[0].iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 1]);
    }
}
