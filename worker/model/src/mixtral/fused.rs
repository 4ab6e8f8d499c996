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
//! [`ForwardPath::shortcut`](crate::ForwardPath::shortcut) is false as soon as one input tracks
//! an op. [`ForwardPath::Candle`](crate::ForwardPath::Candle) turns them off, for the
//! equivalence tests and the side-by-side benchmark.

use anyhow::Result;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};

use crate::cpu::rows::{rms_norm_row, softmax_rows};

/// The contiguous f32 data of a CPU tensor argument and its last dimension.
fn rows<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<(&'a [f32], usize)> {
    let CpuStorage::F32(v) = s else { candle_core::bail!("fused kernels take f32") };
    let Some((from, to)) = l.contiguous_offsets() else {
        candle_core::bail!("fused kernels take contiguous input")
    };
    let d = *l.dims().last().unwrap_or(&1);
    Ok((&v[from..to], d.max(1)))
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

/// `[B, T, hd/2]` cos / sin tables for candle's fused `rope` from per-row positions
/// `[B*T, hd/2]` frequencies.
pub fn half_tables(freqs: &Tensor, b: usize, t: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
    let half = freqs.dim(1)?;
    let f = freqs.reshape((b, t, half))?;
    Ok((f.cos()?.to_dtype(dtype)?.contiguous()?, f.sin()?.to_dtype(dtype)?.contiguous()?))
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::config::{MixtralConfig, Preset};
    use crate::linear::Precision;
    use crate::mixtral::kv_cache::KvCache;
    use crate::mixtral::{Mixtral, ModelOptions};
    use crate::path::ForwardPath;

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
            let run = |path: ForwardPath| {
                let mut cache = KvCache::new(cfg.num_hidden_layers, 2);
                let prefill = m.forward_cached(&ids, &mask, &mut cache, path).unwrap();
                let decode = m.forward_cached(&step, &[vec![1], vec![1]], &mut cache, path).unwrap();
                let one_row = m.forward_on(&ids.narrow(0, 1, 1).unwrap(), None, path).unwrap().logits;
                (prefill, decode, one_row)
            };
            let (p0, d0, f0) = run(ForwardPath::Candle);
            let (p1, d1, f1) = run(ForwardPath::Fused);
            // Exact up to float summation order.
            assert!(max_diff(&p0, &p1) < 1e-4, "prefill {precision:?}: {}", max_diff(&p0, &p1));
            assert!(max_diff(&d0, &d1) < 1e-4, "decode {precision:?}: {}", max_diff(&d0, &d1));
            assert!(max_diff(&f0, &f1) < 1e-4, "forward {precision:?}: {}", max_diff(&f0, &f1));
            assert!(max_diff(&p0, &p0.zeros_like().unwrap()) > 1e-3, "non-trivial logits");
        }
    }
}
