//! Matrix-vector products `y[n] = w_n . x` over the rows of a weight stored as f32 or as
//! int8 bytes (u8, widened on the fly): what every decode step spends most of its arithmetic on.
//!
//! The kernels are written with explicit AVX-512 and AVX2+FMA intrinsics. Left to the
//! autovectoriser, a 16-lane version of the portable loop came out as 2-byte scalar loads
//! (slower than 8 lanes), and the 8-lane one summed each row's lanes with a chain of dependent
//! scalar adds. Here four weight rows share each load of `x` and run as four independent
//! accumulators, so the multiply-adds of one row do not wait for each other. Which kernel runs
//! is decided once per call; elsewhere the portable loop ([`super::int8_matmul::dot`]) runs.

/// A weight element: f32, or an int8 byte stored as `w / s + 128` (u8).
pub trait Elem: Copy + 'static
where
    f32: From<Self>,
{
    #[cfg(target_arch = "x86_64")]
    /// Sixteen elements from `p` as f32 lanes.
    ///
    /// # Safety
    /// `p` must point to 16 readable elements and the CPU must support AVX-512F.
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;

    #[cfg(target_arch = "x86_64")]
    /// Eight elements from `p` as f32 lanes.
    ///
    /// # Safety
    /// `p` must point to 8 readable elements and the CPU must support AVX2.
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;
}

impl Elem for f32 {
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const f32) -> std::arch::x86_64::__m512 {
        // SAFETY: the caller guarantees 16 readable f32 at p.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load8(p: *const f32) -> std::arch::x86_64::__m256 {
        // SAFETY: the caller guarantees 8 readable f32 at p.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }
}

impl Elem for u8 {
    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load16(p: *const u8) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees 16 readable bytes at p.
        let bytes = unsafe { _mm_loadu_si128(p.cast()) };
        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(bytes))
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load8(p: *const u8) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // SAFETY: the caller guarantees 8 readable bytes at p.
        let bytes = unsafe { _mm_loadl_epi64(p.cast()) };
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes))
    }
}

/// `y[n] = x . w[n*k .. (n+1)*k]` for every row of `w` (`y.len()` rows of `k = x.len()`).
pub fn dots<E: Elem>(x: &[f32], w: &[E], y: &mut [f32])
where
    f32: From<E>,
{
    let k = x.len();
    assert!(w.len() >= y.len() * k, "matvec: {} weights for {} rows of {k}", w.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is available (checked) and w holds y.len() rows of k (asserted).
            return unsafe { dots_avx512(x, w, y) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: AVX2 and FMA are available (checked) and w holds y.len() rows of k.
            return unsafe { dots_avx2(x, w, y) };
        }
    }
    for (yn, wn) in y.iter_mut().zip(w.chunks_exact(k.max(1))) {
        *yn = dot(x, wn);
    }
}

/// Rows handled together: they share each load of `x`, and their accumulators are independent.
const ROWS: usize = 4;

/// A vector width: its register type and the few operations the kernel uses. The methods are
/// compiled for their instruction set and inlined into the entry point that enables it.
#[cfg(target_arch = "x86_64")]
trait Width {
    type V: Copy;
    const LANES: usize;
    /// # Safety
    /// The CPU supports the width's instruction set.
    unsafe fn zero() -> Self::V;
    /// # Safety
    /// As [`Width::zero`], and `p` points to `LANES` readable f32.
    unsafe fn load(p: *const f32) -> Self::V;
    /// # Safety
    /// As [`Width::zero`], and `p` points to `LANES` readable elements.
    unsafe fn load_elem<E: Elem>(p: *const E) -> Self::V
    where
        f32: From<E>;
    /// `a * b + c`.
    /// # Safety
    /// As [`Width::zero`].
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// Sum of the lanes.
    /// # Safety
    /// As [`Width::zero`].
    unsafe fn sum(v: Self::V) -> f32;
}

#[cfg(target_arch = "x86_64")]
struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Width for Avx512 {
    type V = std::arch::x86_64::__m512;
    const LANES: usize = 16;

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn zero() -> Self::V {
        std::arch::x86_64::_mm512_setzero_ps()
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load(p: *const f32) -> Self::V {
        // SAFETY: the caller guarantees 16 readable f32 at p.
        unsafe { std::arch::x86_64::_mm512_loadu_ps(p) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_elem<E: Elem>(p: *const E) -> Self::V
    where
        f32: From<E>,
    {
        // SAFETY: the caller guarantees 16 readable elements at p.
        unsafe { E::load16(p) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        std::arch::x86_64::_mm512_fmadd_ps(a, b, c)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn sum(v: Self::V) -> f32 {
        std::arch::x86_64::_mm512_reduce_add_ps(v)
    }
}

#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Width for Avx2 {
    type V = std::arch::x86_64::__m256;
    const LANES: usize = 8;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn zero() -> Self::V {
        std::arch::x86_64::_mm256_setzero_ps()
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load(p: *const f32) -> Self::V {
        // SAFETY: the caller guarantees 8 readable f32 at p.
        unsafe { std::arch::x86_64::_mm256_loadu_ps(p) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_elem<E: Elem>(p: *const E) -> Self::V
    where
        f32: From<E>,
    {
        // SAFETY: the caller guarantees 8 readable elements at p.
        unsafe { E::load8(p) }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        std::arch::x86_64::_mm256_fmadd_ps(a, b, c)
    }

    /// Pairwise: halves, then quarters, then the last two lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn sum(v: Self::V) -> f32 {
        use std::arch::x86_64::*;
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dots_avx512<E: Elem>(x: &[f32], w: &[E], y: &mut [f32])
where
    f32: From<E>,
{
    // SAFETY: AVX-512F is enabled here; the caller asserted y.len() rows of w.
    unsafe { dots_in::<Avx512, E>(x, w, y) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_avx2<E: Elem>(x: &[f32], w: &[E], y: &mut [f32])
where
    f32: From<E>,
{
    // SAFETY: AVX2 and FMA are enabled here; the caller asserted y.len() rows of w.
    unsafe { dots_in::<Avx2, E>(x, w, y) }
}

/// The kernel at width `W`: blocks of [`ROWS`] rows, then the rows left one by one.
///
/// # Safety
/// The CPU supports `W`, and `w` holds `y.len()` rows of `x.len()` elements.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dots_in<W: Width, E: Elem>(x: &[f32], w: &[E], y: &mut [f32])
where
    f32: From<E>,
{
    let mut n = 0;
    while n + ROWS <= y.len() {
        // SAFETY: rows n..n+ROWS exist (the caller's contract).
        unsafe { rows_in::<W, E, ROWS>(x, w, n, &mut y[n..n + ROWS]) };
        n += ROWS;
    }
    while n < y.len() {
        // SAFETY: as above, for row n.
        unsafe { rows_in::<W, E, 1>(x, w, n, &mut y[n..n + 1]) };
        n += 1;
    }
}

/// Rows `n..n+R` of `w` times `x` into `y` (`R` is a constant, so the row loop unrolls and
/// the accumulators stay in registers).
///
/// # Safety
/// The CPU supports `W`, and `w` holds rows `n..n+R` of `x.len()` elements.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn rows_in<W: Width, E: Elem, const R: usize>(x: &[f32], w: &[E], n: usize, y: &mut [f32])
where
    f32: From<E>,
{
    let k = x.len();
    let body = k - k % W::LANES;
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    // SAFETY (every block below): the CPU supports W (the caller's contract); c + LANES <= k and
    // rows n..n+R exist, so every load is in bounds.
    let mut acc = [unsafe { W::zero() }; R];
    let mut c = 0;
    while c < body {
        unsafe {
            let xv = W::load(xp.add(c));
            for (r, a) in acc.iter_mut().enumerate() {
                *a = W::fma(xv, W::load_elem(wp.add((n + r) * k + c)), *a);
            }
        }
        c += W::LANES;
    }
    for (r, (a, yr)) in acc.iter().zip(y.iter_mut()).enumerate() {
        // The elements after the last full vector.
        let row = &w[(n + r) * k..(n + r + 1) * k];
        let tail: f32 = x[body..].iter().zip(&row[body..]).map(|(&a, &b)| a * f32::from(b)).sum();
        *yr = unsafe { W::sum(*a) } + tail;
    }
}

/// `x . w` with eight independent partial sums, so the compiler can keep them in one vector
/// register (float addition is not reassociated otherwise), added up pairwise at the end (with
/// constant bounds: a loop over a variable width would keep them in memory). `w` is f32, or
/// u8 widened on the fly.
#[inline(always)]
pub fn dot<T: Copy>(x: &[f32], w: &[T]) -> f32
where
    f32: From<T>,
{
    let mut acc = [0f32; 8];
    let (xc, wc) = (x.chunks_exact(8), w.chunks_exact(8));
    let (xr, wr) = (xc.remainder(), wc.remainder());
    for (xs, ws) in xc.zip(wc) {
        for i in 0..8 {
            acc[i] += xs[i] * f32::from(ws[i]);
        }
    }
    for i in 0..4 {
        acc[i] += acc[i + 4];
    }
    for i in 0..2 {
        acc[i] += acc[i + 2];
    }
    let mut total = acc[0] + acc[1];
    for (&a, &b) in xr.iter().zip(wr) {
        total += a * f32::from(b);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `y = w x` by each kernel this CPU can run (the portable loop always), so that the AVX2
    /// kernel is checked on an AVX-512 machine too.
    fn each_kernel<E: Elem>(x: &[f32], w: &[E], n: usize) -> Vec<(&'static str, Vec<f32>)>
    where
        f32: From<E>,
    {
        let k = x.len();
        let mut out = Vec::new();
        let mut y = vec![0f32; n];
        for (yn, wn) in y.iter_mut().zip(w.chunks_exact(k)) {
            *yn = dot(x, wn);
        }
        out.push(("portable", y.clone()));
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                // SAFETY: AVX2 and FMA are available; w holds n rows of k.
                unsafe { dots_avx2(x, w, &mut y) };
                out.push(("avx2", y.clone()));
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512F is available; w holds n rows of k.
                unsafe { dots_avx512(x, w, &mut y) };
                out.push(("avx512", y.clone()));
            }
        }
        dots(x, w, &mut y);
        out.push(("dispatched", y));
        out
    }

    /// Every row count around the block of four, row lengths with and without a tail, f32
    /// and u8 weights: against a plain sum.
    #[test]
    fn dots_match_a_plain_sum() {
        for k in [1usize, 8, 16, 37, 128] {
            for n in [1usize, 3, 4, 5, 9] {
                let x: Vec<f32> = (0..k).map(|i| ((i * 31 % 17) as f32 - 8.0) / 5.0).collect();
                let wf: Vec<f32> = (0..n * k).map(|i| ((i * 7 % 23) as f32 - 11.0) / 3.0).collect();
                let wb: Vec<u8> = (0..n * k).map(|i| (i * 89 % 256) as u8).collect();
                let want_f: Vec<f32> = (0..n).map(|r| (0..k).map(|c| x[c] * wf[r * k + c]).sum()).collect();
                let want_b: Vec<f32> =
                    (0..n).map(|r| (0..k).map(|c| x[c] * f32::from(wb[r * k + c])).sum()).collect();
                let results =
                    [(each_kernel(&x, &wf, n), &want_f, "f32"), (each_kernel(&x, &wb, n), &want_b, "u8")];
                for (got, want, elem) in results {
                    for (kernel, y) in got {
                        for r in 0..n {
                            let tol = 1e-3 * want[r].abs().max(1.0);
                            assert!(
                                (y[r] - want[r]).abs() < tol,
                                "{kernel} {elem} k={k} n={n} row {r}: {} vs {}",
                                y[r],
                                want[r]
                            );
                        }
                    }
                }
            }
        }
    }
}
