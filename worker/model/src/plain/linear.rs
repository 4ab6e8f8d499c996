//! A frozen linear layer's weight as a flat copy, multiplied on plain slices (the plain-slice
//! forward of [`super`]).
//!
//! Two regimes, as in the candle path (`int8_matmul`): a few rows (decode steps) are
//! matrix-vector products that read each weight once, straight from its int8 bytes; many rows
//! (a prompt's prefill) go through `gemm` (the multiply candle's CPU backend uses), on the
//! weight dequantized once per call, which the rows amortise.

use candle_core::DType;

use crate::cpu::matvec;
use crate::linear::{BaseWeight, Linear};
use crate::quant::int8_matmul;

/// Rows from which a product goes through gemm (its packing pays off); below, one
/// matrix-vector product per row. The int8 direct kernel's bound in the candle path.
pub const GEMM_MIN_ROWS: usize = int8_matmul::DIRECT_MAX_ROWS + 1;

/// A frozen linear weight `[out, in]` as a flat copy.
pub enum Weight {
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
    /// A copy of `lin`'s weight; `None` for NF4 / bf16 weights or an unmerged LoRA branch.
    pub fn new(lin: &Linear) -> Option<Weight> {
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

    /// A dense f32 weight `[out, k]` (the LM head, a tied embedding).
    pub fn dense(w: Vec<f32>, k: usize) -> Weight {
        Weight::F32 { w, k }
    }

    pub fn bytes(&self) -> usize {
        match self {
            Weight::F32 { w, .. } => 4 * w.len(),
            Weight::Int8 { q, s, .. } => q.len() + 4 * s.len(),
        }
    }

    fn in_out(&self) -> (usize, usize) {
        match self {
            Weight::F32 { w, k } => (*k, w.len() / k),
            Weight::Int8 { s, k, .. } => (*k, s.len()),
        }
    }

    /// `y = W x` for one input row.
    pub fn apply(&self, x: &[f32], y: &mut Vec<f32>) {
        self.apply_rows(x, y, &mut Vec::new());
    }

    /// `y [rows, out] = x [rows, k] W^T` (rows = `x.len() / k`). `scratch` holds the
    /// dequantized weight of an int8 product through gemm (kept by the caller between calls).
    #[inline(always)]
    pub fn apply_rows(&self, x: &[f32], y: &mut Vec<f32>, scratch: &mut Vec<f32>) {
        let (k, n) = self.in_out();
        let rows = x.len() / k;
        y.clear();
        y.resize(rows * n, 0.0);
        match self {
            Weight::F32 { w, .. } if rows >= GEMM_MIN_ROWS => gemm_t(x, w, k, y),
            Weight::F32 { w, .. } => {
                for (xi, yi) in x.chunks_exact(k).zip(y.chunks_exact_mut(n)) {
                    matvec::dots(xi, w, yi);
                }
            }
            Weight::Int8 { q, s, .. } if rows >= GEMM_MIN_ROWS => {
                // (q - 128) * s, as `Int8Tensor::dequantize` computes it.
                scratch.clear();
                scratch.resize(q.len(), 0.0);
                for ((dst, row), &sn) in scratch.chunks_exact_mut(k).zip(q.chunks_exact(k)).zip(s) {
                    for (d, &b) in dst.iter_mut().zip(row) {
                        *d = (f32::from(b) - 128.0) * sn;
                    }
                }
                gemm_t(x, scratch, k, y);
            }
            Weight::Int8 { q, s, .. } => int8_matmul::rows_times_weight(x, q, s, k, y),
        }
    }
}

/// `y [m, n] = x [m, k] w^T` with `w` `[n, k]` row-major.
fn gemm_t(x: &[f32], w: &[f32], k: usize, y: &mut [f32]) {
    let (m, n) = (x.len() / k, w.len() / k);
    gemm_strided((m, n, k), (y, n, 1), (x, k, 1), (w, 1, k));
}

/// `dst [m, n] = lhs [m, k] . rhs [k, n]` through gemm, each matrix given as (slice starting
/// at its first element, row stride, column stride); rayon threads when the pool has several,
/// as candle's matmul. Panics if a matrix does not fit in its slice.
pub fn gemm_strided(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs, dst_cs): (&mut [f32], usize, usize),
    (lhs, lhs_rs, lhs_cs): (&[f32], usize, usize),
    (rhs, rhs_rs, rhs_cs): (&[f32], usize, usize),
) {
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for i in 0..m {
            for j in 0..n {
                dst[i * dst_rs + j * dst_cs] = 0.0;
            }
        }
        return;
    }
    assert!(
        last(m, n, dst_rs, dst_cs) < dst.len()
            && last(m, k, lhs_rs, lhs_cs) < lhs.len()
            && last(k, n, rhs_rs, rhs_cs) < rhs.len(),
        "gemm operands out of bounds"
    );
    let threads = rayon::current_num_threads();
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: the assertion above keeps every element gemm reads or writes inside its slice,
    // and `dst` is borrowed mutably, so it overlaps neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            false,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::quant::int8::Int8Tensor;

    /// Both regimes (row by row, gemm) of both weight kinds against a plain triple loop.
    #[test]
    fn both_regimes_compute_x_times_w_transposed() {
        let (n, k) = (37, 70); // not multiples of the vector width
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 263) as f32 - 131.0) / 97.0).collect();
        let q = Int8Tensor::quantize(&w, n, k, &Device::Cpu).unwrap();
        let deq: Vec<f32> = q.dequantize(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let weights = [
            (Weight::dense(w.clone(), k), w.clone()),
            (
                Weight::Int8 {
                    q: q.q.flatten_all().unwrap().to_vec1().unwrap(),
                    s: q.scale.flatten_all().unwrap().to_vec1().unwrap(),
                    k,
                },
                deq,
            ),
        ];
        for (weight, dense) in &weights {
            for rows in [1, 3, GEMM_MIN_ROWS - 1, GEMM_MIN_ROWS, 45] {
                let x: Vec<f32> =
                    (0..rows * k).map(|i| ((i * 104_729 % 211) as f32 - 105.0) / 50.0).collect();
                let (mut y, mut scratch) = (Vec::new(), Vec::new());
                weight.apply_rows(&x, &mut y, &mut scratch);
                assert_eq!(y.len(), rows * n);
                for i in 0..rows {
                    for j in 0..n {
                        let want: f32 = (0..k).map(|c| x[i * k + c] * dense[j * k + c]).sum();
                        let got = y[i * n + j];
                        assert!(
                            (got - want).abs() < 1e-3 * want.abs().max(1.0),
                            "[{i}, {j}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
