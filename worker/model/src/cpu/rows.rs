//! Row kernels: one row at a time on the calling thread, shared by the in-graph fused ops
//! (`mixtral::fused`) and the plain-slice forward (`plain`). Inlined so that they vectorise in
//! callers compiled for AVX2.

use super::fast_math;

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

/// [`softmax_row`] of every row of `d` values, compiled for AVX2 where the CPU has it.
pub fn softmax_rows(src: &[f32], d: usize, dst: &mut [f32]) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
