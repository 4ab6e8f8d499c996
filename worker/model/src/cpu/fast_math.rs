//! `exp` for the inference kernels, written so that a loop of them vectorises.
//!
//! `f32::exp` is a call into libm per element: a decode step of the tiny model takes ~10k of
//! them (attention softmax over every cached position, SiLU of every expert unit) and a
//! 400-token prefill over a million, which made exp the largest single cost of attention after
//! the dot products. This is Cephes' `expf` (range reduction by `ln 2`, degree-6 polynomial),
//! about 1 ulp from libm, with only adds, multiplies, a min/max and an integer shift: inside a
//! loop compiled for AVX2 it runs 8 lanes at a time.

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `ln 2` split in two so that `n * LN2_HI` is exact for the `n` that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Below this `exp` underflows to 0 (as libm's does, one subnormal binade earlier).
const MIN_ARG: f32 = -87.33;
const MAX_ARG: f32 = 88.72;
/// Adding and subtracting `1.5 * 2^23` rounds to the nearest integer (ties to even) with plain
/// float adds, which vectorise on every x86-64 (`round_ties_even` needs SSE4.1 or a libm call).
const ROUND: f32 = 12_582_912.0;

/// `e^x`: relative error below 3e-7 for `x` in [-87.3, 88.7], 0 below, `f32::MAX`-ish above,
/// NaN for NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let xc = x.clamp(MIN_ARG, MAX_ARG);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^n with n in [-126, 128], as two factors 2^a * 2^b (a = round(n / 2)) so that n = 128
    // (x >= 88.38) stays finite. Each exponent field is built from the bits of `a + ROUND`,
    // which are `ROUND`'s plus `a`: integer ops only (`as i32` does not vectorise).
    let a = (n * 0.5 + ROUND) - ROUND;
    let y = e * pow2(a) * pow2(n - a);
    if x < MIN_ARG { 0.0 } else { y }
}

/// `2^n` for an integer-valued `n` in [-126, 127].
#[inline(always)]
fn pow2(n: f32) -> f32 {
    let n_int = (n + ROUND).to_bits().wrapping_sub(ROUND.to_bits());
    f32::from_bits(n_int.wrapping_add(127) << 23)
}

/// Sum of `x` in eight interleaved partial sums (one vector register; a single running sum is
/// a chain of dependent adds that cannot vectorise).
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Largest value of `x` (-inf for an empty slice; NaNs are skipped, as `f32::max` does), in
/// eight interleaved lanes.
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for c in chunks {
        for i in 0..8 {
            // `a > b ? a : b` (not `f32::max`'s NaN rules) is one vector max instruction.
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    acc.iter().copied().fold(rest, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_and_max_of_any_length() {
        for n in [0usize, 1, 7, 8, 9, 100] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
            let want_sum: f32 = x.iter().sum();
            assert!((sum(&x) - want_sum).abs() < 1e-4, "sum of {n}");
            let want_max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&x), want_max, "max of {n}");
        }
        assert_eq!(max(&[f32::NEG_INFINITY, -3.0, f32::NEG_INFINITY]), -3.0);
    }

    #[test]
    fn matches_libm_over_the_whole_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "relative error {worst}");
        for x in [0.0f32, 1.0, -1.0, 0.5, -0.5, 1e-8, -1e-8] {
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            assert!(((got - want) / want).abs() < 3e-7, "exp({x}) = {got}, want {want}");
        }
    }

    #[test]
    fn edges_are_zero_large_and_nan() {
        // A masked attention score (-1e30 bias) must weigh exactly nothing.
        assert_eq!(exp(-1e30), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(88.5).is_finite() && exp(88.5) > 1e38);
        assert!(exp(1e10).is_finite() && exp(1e10) > 1e38);
        assert!(exp(f32::NAN).is_nan());
    }
}
