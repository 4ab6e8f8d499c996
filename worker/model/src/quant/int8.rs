//! Int8 weights with one absmax scale per row (LLM.int8()-style "vector-wise" quantization,
//! without the outlier decomposition). Used for inference when NF4 is too lossy and bf16 too big.
//!
//! candle has no i8 dtype, so values are stored as `q + 128` in U8 and shifted back on the device.

use anyhow::{Result, ensure};
use candle_core::{DType, Device, Tensor};

/// A frozen 2-D weight `[rows, cols]` in 8 bits with an f32 scale per row.
#[derive(Debug, Clone)]
pub struct Int8Tensor {
    pub shape: (usize, usize),
    /// `round(w / absmax_row * 127) + 128`, U8 [rows, cols].
    pub q: Tensor,
    /// `absmax_row / 127`, F32 [rows, 1].
    pub scale: Tensor,
}

impl Int8Tensor {
    /// Quantizes row-major f32 values of shape `[rows, cols]`.
    pub fn quantize(values: &[f32], rows: usize, cols: usize, device: &Device) -> Result<Self> {
        ensure!(values.len() == rows * cols, "int8 quantize: {} values for [{rows}, {cols}]", values.len());
        let mut q = Vec::with_capacity(values.len());
        let mut scale = Vec::with_capacity(rows);
        for r in 0..rows {
            let row = &values[r * cols..(r + 1) * cols];
            let amax = row.iter().fold(0f32, |m, &x| m.max(x.abs()));
            ensure!(amax.is_finite(), "int8 quantize: non-finite value in row {r}");
            let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
            scale.push(s);
            for &x in row {
                q.push(((x / s).round().clamp(-127.0, 127.0) as i32 + 128) as u8);
            }
        }
        Ok(Int8Tensor {
            shape: (rows, cols),
            q: Tensor::from_vec(q, (rows, cols), device)?,
            scale: Tensor::from_vec(scale, (rows, 1), device)?,
        })
    }

    /// Dequantizes to `dtype` (a constant: no gradient flows into the weight).
    pub fn dequantize(&self, dtype: DType) -> Result<Tensor> {
        let w = (self.q.to_dtype(DType::F32)? - 128.0)?.broadcast_mul(&self.scale)?;
        Ok(w.to_dtype(dtype)?)
    }

    /// Storage bits per parameter (8 + 32/cols).
    pub fn bits_per_param(&self) -> f64 {
        let (r, c) = self.shape;
        ((r * c + 4 * r) * 8) as f64 / (r * c) as f64
    }
}
