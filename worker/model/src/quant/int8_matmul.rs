//! `x @ W^T` for an int8 weight without materialising `W` in f32 (CPU, few rows).
//!
//! Dequantizing the whole weight on every call (u8 -> f32, shift, scale: three full passes and
//! an allocation per linear) cost a third of a decode step at batch 1, more than the matmul
//! itself. Decode steps multiply a handful of rows, so a direct kernel reads each weight byte
//! once instead: `y[i, n] = s[n] * (x_i . q_n - 128 * sum(x_i))`, the stored bytes being
//! `w / s + 128`. Prefill and training (many rows) keep the dequantize + gemm path, where the
//! dequantization is amortised over the rows.

use anyhow::{Result, ensure};
use candle_core::{CpuStorage, DType, Layout, Shape, Tensor};

use super::int8::Int8Tensor;
use crate::cpu::matvec;

/// Rows up to which the direct kernel is used (above, dequantize + gemm is faster).
pub const DIRECT_MAX_ROWS: usize = 16;

/// Whether [`matmul_t`] applies to `x` (f32 on the CPU, at most [`DIRECT_MAX_ROWS`] rows).
pub fn applies(x: &Tensor) -> bool {
    let rows = x.elem_count() / x.dims().last().copied().unwrap_or(1).max(1);
    x.device().is_cpu() && x.dtype() == DType::F32 && rows <= DIRECT_MAX_ROWS
}

/// `x [.., in] @ w[out, in]^T` -> `[.., out]`, f32 on the CPU.
pub fn matmul_t(x: &Tensor, w: &Int8Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let in_dim = *dims.last().unwrap_or(&0);
    let (out_dim, w_in) = w.shape;
    ensure!(w_in == in_dim, "int8 linear: input has {in_dim} features, weight expects {w_in}");
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let x2 = x.reshape((rows, in_dim))?.contiguous()?;
    crate::path::note_cpu_kernel();
    let y = x2.apply_op1(Int8MatmulT { w: w.clone() })?;
    let mut out_dims = dims[..dims.len() - 1].to_vec();
    out_dims.push(out_dim);
    Ok(y.reshape(out_dims)?)
}

struct Int8MatmulT {
    w: Int8Tensor,
}

fn cpu_slice<'s, T: candle_core::WithDType>(
    storage: &'s CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'s [T]> {
    let (start, end) =
        layout.contiguous_offsets().ok_or(candle_core::Error::RequiresContiguous { op: "int8-matmul" })?;
    Ok(&storage.as_slice::<T>()?[start..end])
}

impl candle_core::CustomOp1 for Int8MatmulT {
    fn name(&self) -> &'static str {
        "int8-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x: &[f32] = cpu_slice(storage, layout)?;
        let (n, k) = self.w.shape;
        let m = x.len() / k.max(1);
        let (q_st, q_l) = self.w.q.storage_and_layout();
        let (s_st, s_l) = self.w.scale.storage_and_layout();
        let (candle_core::Storage::Cpu(q_st), candle_core::Storage::Cpu(s_st)) = (&*q_st, &*s_st) else {
            candle_core::bail!("int8-matmul: weights are not on the CPU")
        };
        let q: &[u8] = cpu_slice(q_st, q_l)?;
        let s: &[f32] = cpu_slice(s_st, s_l)?;
        let mut y = vec![0f32; m * n];
        rows_times_weight(x, q, s, k, &mut y);
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    /// The weight is frozen; the input's gradient is `grad @ W` (LoRA layers below need it).
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let w = self.w.dequantize(DType::F32).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(Some(grad_res.matmul(&w)?))
    }
}

/// `y[i, n] = s[n] * (x_i . q_n - 128 * sum(x_i))` for every row `i` of `x` and `n` of `q`
/// (the products by [`super::matvec::dots`], at the widest vector width the CPU has).
pub(crate) fn rows_times_weight(x: &[f32], q: &[u8], s: &[f32], k: usize, y: &mut [f32]) {
    let n = s.len();
    for (xi, yi) in x.chunks_exact(k).zip(y.chunks_exact_mut(n)) {
        let shift = 128.0 * xi.iter().sum::<f32>();
        matvec::dots(xi, q, yi);
        for (yv, &sn) in yi.iter_mut().zip(s) {
            *yv = sn * (*yv - shift);
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn equals_dequantize_then_matmul() {
        let (n, k) = (37, 70); // not multiples of 8: the remainder path runs too
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 263) as f32 - 131.0) / 97.0).collect();
        let q = Int8Tensor::quantize(&w, n, k, &Device::Cpu).unwrap();
        for rows in [1, 3, DIRECT_MAX_ROWS] {
            let xv: Vec<f32> = (0..rows * k).map(|i| ((i * 104_729 % 211) as f32 - 105.0) / 50.0).collect();
            let x = Tensor::from_vec(xv, (1, rows, k), &Device::Cpu).unwrap();
            assert!(applies(&x));
            let direct = matmul_t(&x, &q).unwrap();
            assert_eq!(direct.dims(), &[1, rows, n]);
            let reference =
                x.reshape((rows, k)).unwrap().matmul(&q.dequantize(DType::F32).unwrap().t().unwrap());
            let diff = (direct.reshape((rows, n)).unwrap() - reference.unwrap())
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-3, "rows {rows}: max difference {diff}");
        }
        // The input's gradient flows (LoRA layers below a frozen int8 one need it).
        let x = candle_core::Var::ones((2, k), DType::F32, &Device::Cpu).unwrap();
        let grads = matmul_t(x.as_tensor(), &q).unwrap().sum_all().unwrap().backward().unwrap();
        let gx = grads.get(x.as_tensor()).expect("x has a gradient");
        let want = q.dequantize(DType::F32).unwrap().sum_keepdim(0).unwrap().broadcast_as((2, k)).unwrap();
        let err = (gx - want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(err < 1e-4, "gradient differs by {err}");
        let many = Tensor::zeros((DIRECT_MAX_ROWS + 1, k), DType::F32, &Device::Cpu).unwrap();
        assert!(!applies(&many), "prefill-sized inputs keep the gemm path");
    }
}
