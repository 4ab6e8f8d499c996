//! CPU kernels of the inference paths: explicit AVX-512 / AVX2+FMA matrix-vector products with
//! their portable fallback ([`matvec`]), vectorisable exp/max/sum ([`fast_math`]) and the row
//! kernels (RMSNorm, softmax, MoE routing) both the fused ops and the plain-slice forward use
//! ([`rows`]). Nothing here knows the model.

pub mod fast_math;
pub mod matvec;
pub mod rows;
