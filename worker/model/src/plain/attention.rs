//! Causal attention of a step's queries over a one-sequence KV cache, on plain slices (the
//! plain-slice forward of [`super`]).

use super::linear::gemm_strided;
use crate::cpu::rows::softmax_row;

/// Sizes of one [`attend`] call.
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Positions the cache buffers have room for (their stride along the sequence).
    pub cap: usize,
    /// Cached positions before this step's tokens.
    pub old_len: usize,
    /// This step's tokens (already appended to the cache).
    pub new: usize,
}

/// Causal attention of the step's queries `q` `[new, heads, hd]` over the cached keys/values
/// (`[kv_heads, cap, hd]`: the real cached positions `visible_old`, then the step's own) into
/// `out` `[new, heads * hd]`. Grouped heads as `repeat_kv` orders them.
pub fn attend(
    s: &AttnShape,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    visible_old: &[usize],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        return unsafe { attend_avx2(s, q, keys, values, visible_old, out) };
    }
    attend_portable(s, q, keys, values, visible_old, out)
}

/// [`attend_portable`] compiled with AVX2: its scaling, masking and softmax run 8 lanes wide
/// (the same operations in the same order, so the same results).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2(
    s: &AttnShape,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    visible_old: &[usize],
    out: &mut [f32],
) {
    attend_portable(s, q, keys, values, visible_old, out)
}

/// Per head, the scores of every new token against every cached position are one gemm, the
/// weighted sum of the values another: the keys and values are read once per head, not once
/// per new token. (`bench_model --decode-steps`: a step of 8 tokens over 768 cached positions
/// took 1.8 ms token by token, 1.1 ms so; a single token costs the same either way.)
/// Positions a token must not see (masked cache entries, later tokens of the step) get a
/// score of -inf, so the softmax gives them exactly 0 (the candle path adds a -1e30 bias).
#[inline(always)]
fn attend_portable(
    s: &AttnShape,
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    visible_old: &[usize],
    out: &mut [f32],
) {
    let (nh, hd, cap, t) = (s.heads, s.head_dim, s.cap, s.new);
    let rep = nh / s.kv_heads;
    let n = s.old_len + t;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut hidden_old = vec![true; s.old_len];
    for &j in visible_old {
        hidden_old[j] = false;
    }
    let mut scores = vec![0f32; t * n];
    let mut probs = vec![0f32; t * n];
    for head in 0..nh {
        let kvh = head / rep;
        let (kb, vb) = (
            &keys[kvh * cap * hd..kvh * cap * hd + n * hd],
            &values[kvh * cap * hd..kvh * cap * hd + n * hd],
        );
        // scores [t, n] = q_head [t, hd] (rows nh * hd apart) . K^T [hd, n]
        gemm_strided((t, n, hd), (&mut scores, n, 1), (&q[head * hd..], nh * hd, 1), (kb, 1, hd));
        for i in 0..t {
            // Token i sees the cache and the step's tokens up to itself.
            let seen = s.old_len + i + 1;
            let row = &mut scores[i * n..i * n + seen];
            for v in row.iter_mut() {
                *v *= scale;
            }
            for (v, &hidden) in row.iter_mut().zip(&hidden_old) {
                if hidden {
                    *v = f32::NEG_INFINITY;
                }
            }
            softmax_row(row, &mut probs[i * n..i * n + seen]);
            probs[i * n + seen..(i + 1) * n].fill(0.0);
        }
        // out_head [t, hd] (rows nh * hd apart) = probs [t, n] . V [n, hd]
        gemm_strided((t, hd, n), (&mut out[head * hd..], nh * hd, 1), (&probs, n, 1), (vb, hd, 1));
    }
}
