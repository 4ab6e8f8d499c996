//! A linear layer with a frozen (or, for pretraining, trainable) base weight in f32 / bf16 /
//! int8 / NF4 and an optional LoRA branch: `y = x W^T + (alpha/r) * dropout(x) A^T B^T`.
//!
//! Quantized base weights are dequantized inside `forward` to a plain tensor (a constant), so the
//! matmul still passes the gradient to its input and thus to the adapters upstream; no fused
//! (gradient-dropping) quantized matmul is used.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{Context, Result, bail, ensure};
use candle_core::{D, DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::path::{ForwardPath, note_cpu_kernel};
use crate::quant::int8::Int8Tensor;
use crate::quant::int8_matmul;
use crate::quant::nf4::Nf4Tensor;

/// How the base (non-adapter) linear weights are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 (training from scratch, reference numerics).
    #[default]
    F32,
    /// bf16 storage.
    Bf16,
    /// 8 bits, absmax per row.
    Int8,
    /// 4-bit NormalFloat with double quantization (QLoRA).
    Nf4,
}

impl std::str::FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "int8" | "8bit" => Ok(Precision::Int8),
            "nf4" | "4bit" => Ok(Precision::Nf4),
            other => bail!("unknown precision {other:?} (expected f32, bf16, int8 or nf4)"),
        }
    }
}

/// A model parameter: a frozen constant, or a `Var` when it is trained.
#[derive(Debug, Clone)]
pub struct Param {
    tensor: Tensor,
    var: Option<Var>,
}

impl Param {
    /// A frozen parameter (detached: no gradient is computed for it).
    pub fn frozen(t: Tensor) -> Self {
        Param { tensor: t.detach(), var: None }
    }

    /// A trainable parameter.
    pub fn trainable(t: &Tensor) -> Result<Self> {
        let var = Var::from_tensor(t)?;
        Ok(Param { tensor: var.as_tensor().clone(), var: Some(var) })
    }

    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }

    pub fn var(&self) -> Option<&Var> {
        self.var.as_ref()
    }
}

/// The base weight of a linear layer, `[out, in]`.
#[derive(Debug, Clone)]
pub enum BaseWeight {
    /// f32 or bf16, possibly trainable (pretraining).
    Dense(Param),
    Int8(Int8Tensor),
    Nf4(Nf4Tensor),
}

impl BaseWeight {
    /// Converts a dense f32/bf16 weight to the requested precision. `trainable` only applies to
    /// dense precisions (quantized bases are always frozen).
    pub fn from_dense(w: &Tensor, precision: Precision, trainable: bool) -> Result<Self> {
        let device = w.device().clone();
        match precision {
            Precision::F32 | Precision::Bf16 => {
                let dt = if precision == Precision::F32 { DType::F32 } else { DType::BF16 };
                let w = w.to_dtype(dt)?;
                Ok(BaseWeight::Dense(if trainable { Param::trainable(&w)? } else { Param::frozen(w) }))
            }
            Precision::Int8 => {
                let (r, c) = w.dims2()?;
                let v = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                Ok(BaseWeight::Int8(Int8Tensor::quantize(&v, r, c, &device)?))
            }
            Precision::Nf4 => {
                let dims = w.dims().to_vec();
                let v = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                Ok(BaseWeight::Nf4(Nf4Tensor::quantize(&v, &dims, &device)?))
            }
        }
    }

    /// `[out, in]`.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            BaseWeight::Dense(p) => {
                let d = p.tensor().dims();
                (d[0], d[1])
            }
            BaseWeight::Int8(q) => q.shape,
            BaseWeight::Nf4(q) => (q.shape[0], q.shape[1]),
        }
    }

    /// The weight as a plain tensor of `dtype` (dequantized if needed; tracked if trainable).
    pub fn weight(&self, dtype: DType) -> Result<Tensor> {
        match self {
            BaseWeight::Dense(p) => Ok(p.tensor().to_dtype(dtype)?),
            BaseWeight::Int8(q) => q.dequantize(dtype),
            BaseWeight::Nf4(q) => q.dequantize(dtype),
        }
    }

    /// [`BaseWeight::weight`] as `path` computes it in a forward pass. An NF4 weight on the CPU
    /// is dequantized by the one-pass CPU loop, or under [`ForwardPath::Generic`] by the tensor-op
    /// formulation a GPU runs (the same values bit for bit: `tests/model_nf4.rs`); off the CPU
    /// it is always the device's own dequantization.
    pub fn weight_on(&self, dtype: DType, path: ForwardPath) -> Result<Tensor> {
        match self {
            BaseWeight::Nf4(q) if q.packed.device().is_cpu() => {
                if path.cpu_kernels() {
                    note_cpu_kernel();
                    q.dequantize(dtype)
                } else {
                    q.dequantize_with_tensor_ops(dtype)
                }
            }
            _ => self.weight(dtype),
        }
    }

    pub fn var(&self) -> Option<&Var> {
        match self {
            BaseWeight::Dense(p) => p.var(),
            _ => None,
        }
    }

    /// Storage bytes of the base weight.
    pub fn storage_bytes(&self) -> usize {
        match self {
            BaseWeight::Dense(p) => p.tensor().elem_count() * p.tensor().dtype().size_in_bytes(),
            BaseWeight::Int8(q) => q.shape.0 * q.shape.1 + 4 * q.shape.0,
            BaseWeight::Nf4(q) => q.storage_bytes(),
        }
    }
}

/// LoRA settings (PEFT `LoraConfig` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Module names as PEFT matches them: `q_proj`, `k_proj`, `v_proj`, `o_proj`, `w1`, `w2`,
    /// `w3` (every expert) and `gate` (the router).
    pub target_modules: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 16,
            alpha: 32.0,
            dropout: 0.05,
            target_modules: ["q_proj", "k_proj", "v_proj", "o_proj", "w1", "w2", "w3", "gate"]
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }
}

impl LoraConfig {
    /// The module names this crate knows.
    pub const KNOWN_TARGETS: [&'static str; 8] =
        ["q_proj", "k_proj", "v_proj", "o_proj", "w1", "w2", "w3", "gate"];

    pub fn validate(&self) -> Result<()> {
        ensure!(self.r > 0, "LoRA r must be > 0");
        ensure!((0.0..1.0).contains(&self.dropout), "LoRA dropout must be in [0, 1), got {}", self.dropout);
        for t in &self.target_modules {
            ensure!(
                Self::KNOWN_TARGETS.contains(&t.as_str()),
                "unknown LoRA target module {t:?} (known: {:?})",
                Self::KNOWN_TARGETS
            );
        }
        Ok(())
    }

    /// `alpha / r`, the factor on the adapter branch.
    pub fn scaling(&self) -> f64 {
        self.alpha / self.r as f64
    }

    pub fn targets(&self, module: &str) -> bool {
        self.target_modules.iter().any(|t| t == module)
    }
}

/// Switches shared by every adapter of a model: whether adapters are applied (off = the base
/// model, PPO's reference policy), a global multiplier on the adapter branch, and whether dropout
/// is active (training) — plus a counter that gives each dropout mask a distinct seed.
#[derive(Debug)]
pub struct LoraControl {
    enabled: AtomicBool,
    training: AtomicBool,
    scale_bits: AtomicU64,
    dropout_counter: AtomicU64,
}

impl Default for LoraControl {
    fn default() -> Self {
        LoraControl {
            enabled: AtomicBool::new(true),
            training: AtomicBool::new(false),
            scale_bits: AtomicU64::new(1f64.to_bits()),
            dropout_counter: AtomicU64::new(0),
        }
    }
}

impl LoraControl {
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed)
    }
    pub fn training(&self) -> bool {
        self.training.load(Ordering::Relaxed)
    }
    pub fn set_training(&self, on: bool) {
        self.training.store(on, Ordering::Relaxed)
    }
    pub fn scale(&self) -> f64 {
        f64::from_bits(self.scale_bits.load(Ordering::Relaxed))
    }
    pub fn set_scale(&self, s: f64) {
        self.scale_bits.store(s.to_bits(), Ordering::Relaxed)
    }
    /// The dropout mask counter (gradient checkpointing replays masks by restoring it).
    pub fn dropout_counter(&self) -> u64 {
        self.dropout_counter.load(Ordering::Relaxed)
    }
    pub fn set_dropout_counter(&self, c: u64) {
        self.dropout_counter.store(c, Ordering::Relaxed)
    }
    fn next_seed(&self) -> u64 {
        self.dropout_counter.fetch_add(1, Ordering::Relaxed)
    }
}

/// One LoRA adapter: `A` [r, in] (Kaiming-uniform like PEFT), `B` [out, r] (zeros).
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub a: Var,
    pub b: Var,
    pub scaling: f64,
    pub dropout: f64,
}

impl LoraAdapter {
    /// PEFT's default init: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform with a=sqrt(5)), B = 0,
    /// so a fresh adapter leaves the model unchanged.
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        cfg: &LoraConfig,
        rng: &mut impl rand::Rng,
        device: &Device,
    ) -> Result<Self> {
        let bound = 1.0 / (in_dim as f64).sqrt();
        let a: Vec<f32> = (0..cfg.r * in_dim).map(|_| rng.random_range(-bound..bound) as f32).collect();
        let a = Var::from_tensor(&Tensor::from_vec(a, (cfg.r, in_dim), device)?)?;
        let b = Var::zeros((out_dim, cfg.r), DType::F32, device)?;
        Ok(LoraAdapter { a, b, scaling: cfg.scaling(), dropout: cfg.dropout })
    }

    /// `scaling * B A`, `[out, in]` in f32.
    pub fn delta(&self) -> Result<Tensor> {
        Ok((self.b.as_tensor().matmul(self.a.as_tensor())? * self.scaling)?)
    }
}

/// A linear layer (no bias: Mixtral has none) with an optional LoRA branch.
#[derive(Debug, Clone)]
pub struct Linear {
    pub base: BaseWeight,
    pub lora: Option<LoraAdapter>,
    pub control: Arc<LoraControl>,
}

impl Linear {
    pub fn new(base: BaseWeight, control: Arc<LoraControl>) -> Self {
        Linear { base, lora: None, control }
    }

    /// `x [.., in] -> [.., out]` in the dtype of `x`, with the CPU kernels where they apply.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_on(x, ForwardPath::Fused)
    }

    /// [`Linear::forward`] as `path` computes it: on the CPU, the direct int8 kernel (few rows),
    /// the one-pass NF4 dequantization and the `FrozenMatmul` op for a frozen base, unless
    /// `path` is [`ForwardPath::Generic`], which dequantizes with tensor ops and multiplies with
    /// candle's `matmul` as a GPU does.
    pub fn forward_on(&self, x: &Tensor, path: ForwardPath) -> Result<Tensor> {
        let cpu_kernels = path.cpu_kernels();
        let y = match &self.base {
            BaseWeight::Int8(q) if cpu_kernels && int8_matmul::applies(x) => int8_matmul::matmul_t(x, q)?,
            _ => {
                let w = self.base.weight_on(x.dtype(), path)?;
                if self.base.var().is_some() || !cpu_kernels {
                    matmul_t(x, &w)?
                } else {
                    frozen_matmul_t(x, &w)?
                }
            }
        };
        match &self.lora {
            Some(lora) if self.control.enabled() => {
                let mut h = x.clone();
                if self.control.training() && lora.dropout > 0.0 {
                    h = dropout(&h, lora.dropout, self.control.next_seed())?;
                }
                let a = lora.a.as_tensor().to_dtype(x.dtype())?;
                let b = lora.b.as_tensor().to_dtype(x.dtype())?;
                let z = matmul_t(&matmul_t(&h, &a)?, &b)?;
                Ok((y + (z * (lora.scaling * self.control.scale()))?)?)
            }
            _ => Ok(y),
        }
    }

    /// Folds the adapter into a dense base weight (`W + scaling * B A`) and removes it.
    /// Quantized bases are dequantized first and re-quantized to `precision`.
    pub fn merge(&mut self, precision: Precision) -> Result<()> {
        if let Some(lora) = self.lora.take() {
            let w = self.base.weight(DType::F32)?;
            let merged = (w + lora.delta()?)?;
            self.base = BaseWeight::from_dense(&merged, precision, false)?;
        }
        Ok(())
    }
}

/// `x [.., in] @ w[out, in]^T`, flattening leading dims (candle's batched matmul wants equal
/// batch dims on both sides).
pub fn matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let in_dim = *dims.last().context("matmul on a 0-d tensor")?;
    let (out_dim, w_in) = w.dims2()?;
    ensure!(w_in == in_dim, "linear: input has {in_dim} features, weight expects {w_in}");
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let y = x.reshape((rows, in_dim))?.matmul(&w.t()?)?;
    let mut out_dims = dims[..dims.len() - 1].to_vec();
    out_dims.push(out_dim);
    Ok(y.reshape(out_dims)?)
}

/// `x @ w^T` for a FROZEN `w`, as a custom op whose backward returns only `grad_x = grad_y @ w`.
///
/// candle's matmul backward always computes (and keeps in the GradStore) the gradient of both
/// operands, even a constant one: for QLoRA that doubled the backward FLOPs and held a
/// full-size gradient of every frozen weight (measured: a QLoRA step on `small` took 2x the time
/// and 4x the memory of a full-parameter one). On non-CPU devices this falls back to the plain
/// matmul.
pub fn frozen_matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return matmul_t(x, w);
    }
    note_cpu_kernel();
    let dims = x.dims().to_vec();
    let in_dim = *dims.last().context("matmul on a 0-d tensor")?;
    let (out_dim, w_in) = w.dims2()?;
    ensure!(w_in == in_dim, "linear: input has {in_dim} features, weight expects {w_in}");
    ensure!(
        w.dtype() == x.dtype(),
        "linear: weight dtype {:?} differs from input {:?}",
        w.dtype(),
        x.dtype()
    );
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let x2 = x.reshape((rows, in_dim))?.contiguous()?;
    let y = x2.apply_op1(FrozenMatmul { w: w.contiguous()?.detach() })?;
    let mut out_dims = dims[..dims.len() - 1].to_vec();
    out_dims.push(out_dim);
    Ok(y.reshape(out_dims)?)
}

struct FrozenMatmul {
    /// `[out, in]`, contiguous, same dtype as the input.
    w: Tensor,
}

impl candle_core::CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage as C;
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::RequiresContiguous { op: "frozen-matmul" })?;
        let shape = layout.shape().clone();
        let dev = Device::Cpu;
        // Wrap the input as a tensor (one copy of x, small next to the matmul), multiply with
        // candle's gemm, and hand back the result's storage.
        let x = match storage {
            C::F32(v) => Tensor::from_slice(&v[start..end], shape, &dev)?,
            C::F64(v) => Tensor::from_slice(&v[start..end], shape, &dev)?,
            C::BF16(v) => Tensor::from_slice(&v[start..end], shape, &dev)?,
            C::F16(v) => Tensor::from_slice(&v[start..end], shape, &dev)?,
            _ => return Err(candle_core::Error::Msg("frozen-matmul: unsupported dtype".into())),
        };
        let y = x.matmul(&self.w.t()?)?.contiguous()?;
        let (st, yl) = y.storage_and_layout();
        match &*st {
            candle_core::Storage::Cpu(c) if yl.start_offset() == 0 => Ok((c.clone(), yl.shape().clone())),
            _ => Err(candle_core::Error::Msg("frozen-matmul: unexpected result storage".into())),
        }
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.matmul(&self.w)?))
    }
}

/// Inverted dropout with a deterministic mask from `seed` (host-generated, then uploaded).
pub fn dropout(x: &Tensor, p: f64, seed: u64) -> Result<Tensor> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    let keep = 1.0 - p;
    let n = x.elem_count();
    let mask: Vec<f32> =
        (0..n).map(|_| if rng.random::<f64>() < keep { (1.0 / keep) as f32 } else { 0.0 }).collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    Ok((x * mask)?)
}

/// Row-wise log-softmax (differentiable: built from primitives).
pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}
