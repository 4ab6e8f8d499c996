//! The training model: Mixtral exactly as Hugging Face's `MixtralForCausalLM` computes it, built
//! only from differentiable candle ops (see `shared/notes/candle-training.md`):
//!
//! - RMSNorm from primitives (`x * rsqrt(mean(x^2) + eps) * w`, computed in f32);
//! - rotary embeddings by rotate-half with narrow/cat (HF's `apply_rotary_pos_emb`);
//! - attention as matmul + additive mask + `candle_nn::ops::softmax` (not `softmax_last_dim`),
//!   grouped KV heads repeated, optional sliding window;
//! - the sparse MoE block: router softmax in f32, top-k by `arg_sort` + `gather` (so the router
//!   gets a gradient through the selected probabilities), renormalised weights, SwiGLU experts
//!   (`w2(silu(w1 x) * w3 x)`), results scattered back with `index_add`;
//! - full-sequence logits `[B, T, V]`.
//!
//! Weight names are HF's, so a real checkpoint loads by name (see `hf_io.rs`).
//!
//! Every forward runs the decoder stack through one loop, [`Mixtral::run_layers`]; gradient
//! checkpointing ([`grad_checkpoint`]) recomputes it layer by layer. Inference, where no input
//! tracks a gradient, takes exact shortcuts through fused kernels ([`fused`]) unless the
//! [`ForwardPath`] says otherwise: same arithmetic, fewer ops per decoded token.

pub mod fused;
pub mod generation;
pub mod grad_checkpoint;
pub mod kv_cache;

use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use candle_core::backprop::GradStore;
use candle_core::{D, DType, Device, Tensor, Var};
use rand::SeedableRng;

use self::kv_cache::{KvCache, LayerCache};
use crate::config::MixtralConfig;
use crate::linear::{BaseWeight, Linear, LoraAdapter, LoraConfig, LoraControl, Param, Precision};
use crate::path::ForwardPath;

/// Additive mask value for disallowed attention positions: finite so that fully masked rows
/// (padding queries) give a uniform softmax instead of NaN, and representable in bf16.
const MASK_VALUE: f64 = -1e30;

/// How a model is built: base precision, compute dtype, adapters, what is trained.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// Storage of the base linear weights (attention projections and experts).
    pub precision: Precision,
    /// Dtype activations are computed in (F32 on CPU; BF16 on GPU).
    pub dtype: DType,
    /// Attach fresh LoRA adapters with this configuration (None: no adapters).
    pub lora: Option<LoraConfig>,
    /// Train every base parameter (pretraining). Requires a dense precision.
    pub train_base: bool,
    /// Train the router (`block_sparse_moe.gate.weight`) fully, besides any adapters.
    pub train_router: bool,
    /// Recompute each decoder layer in backward instead of keeping its activations.
    pub grad_checkpoint: bool,
    /// Seed for random initialisation (weights of random presets, LoRA A matrices).
    pub seed: u64,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            precision: Precision::F32,
            dtype: DType::F32,
            lora: None,
            train_base: false,
            train_router: false,
            grad_checkpoint: false,
            seed: 0,
        }
    }
}

/// What a weight is, which decides how a loader stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightKind {
    /// A projection or expert matrix: stored in `ModelOptions::precision`.
    Linear,
    /// The router: always dense (tiny and precision-sensitive).
    Router,
    /// Embeddings, norms, lm_head: dense in the compute dtype.
    Dense,
}

/// A weight as handed to the model builder by a loader.
pub enum LoadedWeight {
    Tensor(Tensor),
    Base(BaseWeight),
}

/// Supplies a weight by HF name, expected shape and kind.
pub type WeightSource<'a> = dyn FnMut(&str, &[usize], WeightKind) -> Result<LoadedWeight> + 'a;

/// The dtype reductions (norm variance, softmax) run in: f32, or f64 for f64 models (used by
/// the finite-difference gradient test).
pub fn acc_dtype(dt: DType) -> DType {
    if dt == DType::F64 { DType::F64 } else { DType::F32 }
}

/// RMSNorm as HF computes it: in f32, then back to the input dtype, then times the weight.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Param,
    pub eps: f64,
}

impl RmsNorm {
    pub fn forward(&self, x: &Tensor, path: ForwardPath) -> Result<Tensor> {
        let w = self.weight.tensor();
        if path.shortcut(&[x, w]) {
            let op = fused::RmsNormOp { eps: self.eps as f32 };
            return Ok(x.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &op)?);
        }
        let dt = x.dtype();
        let xf = x.to_dtype(acc_dtype(dt))?;
        let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = xf.broadcast_div(&(var + self.eps)?.sqrt()?)?.to_dtype(dt)?;
        Ok(normed.broadcast_mul(&self.weight.tensor().to_dtype(dt)?)?)
    }
}

/// Per-forward constants shared by every layer: rotary tables and the attention bias.
pub struct AttnInputs {
    /// `[B, 1, T, head_dim]` in the compute dtype.
    pub cos: Tensor,
    pub sin: Tensor,
    /// Additive bias `[B, 1, T_q, T_k]`.
    pub bias: Tensor,
    /// `[B, T, head_dim / 2]`, contiguous: the tables of the fused rotary kernel.
    pub cos_half: Tensor,
    pub sin_half: Tensor,
    /// Which implementation the layers use.
    pub path: ForwardPath,
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    Ok(Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?)
}

fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    Ok((x.broadcast_mul(cos)? + rotate_half(x)?.broadcast_mul(sin)?)?)
}

impl Attention {
    /// `x [B, T, H]`; with a cache, the new keys/values are appended and attention covers the
    /// cached positions too (generation only, never during training).
    pub fn forward(&self, x: &Tensor, inp: &AttnInputs, cache: Option<&mut LayerCache>) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let p = inp.path;
        let q = self.q_proj.forward_on(x, p)?.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?;
        let k = self.k_proj.forward_on(x, p)?.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let v = self.v_proj.forward_on(x, p)?.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        // candle's rope runs one-position inputs on the calling thread and longer ones on
        // rayon (see `fused.rs` on why that costs more than it saves here).
        let (q, k) = if t == 1 && inp.path.shortcut(&[&q, &k, &inp.cos_half]) {
            (
                candle_nn::rotary_emb::rope(&q, &inp.cos_half, &inp.sin_half)?,
                candle_nn::rotary_emb::rope(&k, &inp.cos_half, &inp.sin_half)?,
            )
        } else {
            (apply_rope(&q, &inp.cos, &inp.sin)?, apply_rope(&k, &inp.cos, &inp.sin)?)
        };
        let (k, v) = match cache {
            Some(c) => c.append(&k, &v)?,
            None => (k, v),
        };
        // Grouped-query attention without materialising HF's `repeat_kv`: the `rep` query heads
        // that share a key/value head (consecutive, as `repeat_kv` orders them) are stacked
        // along the query axis, so each kv head is read in place by one matmul. Same sums as
        // repeating K/V, minus two copies of the whole cache per layer and step.
        let rep = nh / nkv;
        let s = k.dim(2)?;
        let qg = q.reshape((b, nkv, rep * t, hd))?;
        let scores = (qg.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?.reshape((b, nh, t, s))?;
        let acc = acc_dtype(x.dtype());
        let scores = scores.to_dtype(acc)?.broadcast_add(&inp.bias.to_dtype(acc)?)?;
        let probs = if inp.path.shortcut(&[&scores]) {
            scores.contiguous()?.apply_op1_no_bwd(&fused::SoftmaxOp)?.to_dtype(x.dtype())?
        } else {
            candle_nn::ops::softmax(&scores, D::Minus1)?.to_dtype(x.dtype())?
        };
        let out = probs.reshape((b, nkv, rep * t, s))?.matmul(&v)?.reshape((b, nh, t, hd))?;
        let out = out.transpose(1, 2)?.reshape((b, t, nh * hd))?;
        self.o_proj.forward_on(&out, p)
    }
}

/// One SwiGLU expert.
#[derive(Debug, Clone)]
pub struct Expert {
    pub w1: Linear,
    pub w2: Linear,
    pub w3: Linear,
}

impl Expert {
    pub fn forward(&self, x: &Tensor, path: ForwardPath) -> Result<Tensor> {
        let g = candle_nn::ops::silu(&self.w1.forward_on(x, path)?)?;
        self.w2.forward_on(&(g * self.w3.forward_on(x, path)?)?, path)
    }
}

/// The sparse mixture-of-experts block (HF `MixtralSparseMoeBlock`).
#[derive(Debug, Clone)]
pub struct SparseMoe {
    pub gate: Linear,
    pub experts: Vec<Expert>,
    pub top_k: usize,
}

impl SparseMoe {
    /// Returns the output `[B, T, H]` and the router logits `[B*T, E]` (for an auxiliary loss).
    pub fn forward(&self, x: &Tensor, path: ForwardPath) -> Result<(Tensor, Tensor)> {
        let (b, t, h) = x.dims3()?;
        let xs = x.reshape((b * t, h))?;
        let router_logits = self.gate.forward_on(&xs, path)?;
        if path.shortcut(&[&xs, &router_logits]) {
            return Ok((
                self.forward_routed_on_host(&xs, &router_logits, path)?.reshape((b, t, h))?,
                router_logits,
            ));
        }
        let probs = candle_nn::ops::softmax(&router_logits.to_dtype(acc_dtype(x.dtype()))?, D::Minus1)?;
        // The selection itself is discrete; the gradient reaches the router through `gather`.
        let idx = probs.detach().arg_sort_last_dim(false)?.narrow(1, 0, self.top_k)?.contiguous()?;
        let top = probs.gather(&idx, 1)?;
        let top = top.broadcast_div(&top.sum_keepdim(1)?)?.to_dtype(x.dtype())?;
        let top_flat = top.flatten_all()?;
        let idx_host = idx.to_vec2::<u32>()?;
        let n_exp = self.experts.len();
        let mut rows: Vec<Vec<u32>> = vec![Vec::new(); n_exp];
        let mut slots: Vec<Vec<u32>> = vec![Vec::new(); n_exp];
        for (tok, sel) in idx_host.iter().enumerate() {
            for (k, &e) in sel.iter().enumerate() {
                rows[e as usize].push(tok as u32);
                slots[e as usize].push((tok * self.top_k + k) as u32);
            }
        }
        let mut out = xs.zeros_like()?;
        for (e, expert) in self.experts.iter().enumerate() {
            if rows[e].is_empty() {
                continue;
            }
            let n = rows[e].len();
            let rows_t = Tensor::from_slice(&rows[e], n, x.device())?;
            let slots_t = Tensor::from_slice(&slots[e], n, x.device())?;
            let xe = xs.index_select(&rows_t, 0)?;
            let ye = expert.forward(&xe, path)?;
            let we = top_flat.index_select(&slots_t, 0)?.unsqueeze(1)?;
            out = out.index_add(&rows_t, &ye.broadcast_mul(&we)?, 0)?;
        }
        Ok((out.reshape((b, t, h))?, router_logits))
    }

    /// The same block without gradients: routing decided on the host (`cpu::rows::route`), each
    /// chosen expert run on its rows, weighted, summed. `xs` `[N, H]`, `router_logits` `[N, E]`.
    fn forward_routed_on_host(
        &self,
        xs: &Tensor,
        router_logits: &Tensor,
        path: ForwardPath,
    ) -> Result<Tensor> {
        let n = xs.dim(0)?;
        let routes =
            crate::cpu::rows::route(&router_logits.to_dtype(DType::F32)?.to_vec2::<f32>()?, self.top_k);
        let mut out: Option<Tensor> = None;
        for (e, expert) in self.experts.iter().enumerate() {
            let (rows, weights): (Vec<u32>, Vec<f32>) = routes
                .iter()
                .enumerate()
                .filter_map(|(row, r)| r.iter().find(|c| c.0 == e).map(|c| (row as u32, c.1)))
                .unzip();
            if rows.is_empty() {
                continue;
            }
            let w = Tensor::from_vec(weights, (rows.len(), 1), xs.device())?.to_dtype(xs.dtype())?;
            if rows.len() == n {
                // Every row (single-row decoding): no gather, no scatter.
                let y = expert.forward(xs, path)?.broadcast_mul(&w)?;
                out = Some(match out {
                    Some(o) => (o + y)?,
                    None => y,
                });
            } else {
                let idx = Tensor::from_vec(rows.clone(), rows.len(), xs.device())?;
                let y = expert.forward(&xs.index_select(&idx, 0)?, path)?.broadcast_mul(&w)?;
                let base = match out {
                    Some(o) => o,
                    None => xs.zeros_like()?,
                };
                out = Some(base.index_add(&idx, &y, 0)?);
            }
        }
        match out {
            Some(o) => Ok(o),
            None => Ok(xs.zeros_like()?),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub block_sparse_moe: SparseMoe,
}

impl DecoderLayer {
    pub fn forward(
        &self,
        x: &Tensor,
        inp: &AttnInputs,
        cache: Option<&mut LayerCache>,
    ) -> Result<(Tensor, Tensor)> {
        let h = self.self_attn.forward(&self.input_layernorm.forward(x, inp.path)?, inp, cache)?;
        let x = (x + h)?;
        let normed = self.post_attention_layernorm.forward(&x, inp.path)?;
        let (m, router) = self.block_sparse_moe.forward(&normed, inp.path)?;
        Ok(((x + m)?, router))
    }
}

/// What a forward pass returns.
pub struct ModelOutput {
    /// `[B, T, V]`, in the compute dtype.
    pub logits: Tensor,
    /// The final (normed) hidden states `[B, T, H]` (for a value head).
    pub hidden: Tensor,
    /// Per layer, the router logits `[B*T, E]` (empty under gradient checkpointing).
    pub router_logits: Vec<Tensor>,
}

/// `MixtralForCausalLM`.
///
/// `Clone` is shallow: the clone shares parameters (Vars) and the adapter switches
/// ([`LoraControl`]) with the original; only replacing a layer (merge, add_lora) diverges them.
/// The switches are model-wide, so toggle them between passes, not during concurrent ones.
#[derive(Debug, Clone)]
pub struct Mixtral {
    pub cfg: MixtralConfig,
    pub opts: ModelOptions,
    pub embed_tokens: Param,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    /// `None` when tied to the embeddings.
    pub lm_head: Option<Param>,
    pub control: Arc<LoraControl>,
    device: Device,
}

/// Normal(0, std) samples from a seeded generator (Box-Muller), for reproducible random init.
pub(crate) fn randn_vec(rng: &mut rand::rngs::StdRng, n: usize, std: f64) -> Vec<f32> {
    use rand::Rng;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let u1: f64 = rng.random::<f64>().max(1e-300);
        let u2: f64 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt();
        let th = std::f64::consts::TAU * u2;
        out.push((r * th.cos() * std) as f32);
        if out.len() < n {
            out.push((r * th.sin() * std) as f32);
        }
    }
    out
}

impl Mixtral {
    /// A randomly initialised model (HF init: normal(0, initializer_range), norms = 1).
    pub fn new_random(cfg: &MixtralConfig, opts: &ModelOptions, device: &Device) -> Result<Self> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
        let std = cfg.initializer_range;
        let dev = device.clone();
        let mut source = move |name: &str, shape: &[usize], kind: WeightKind| -> Result<LoadedWeight> {
            let n: usize = shape.iter().product();
            let t = if name.ends_with("norm.weight") {
                Tensor::ones(shape, DType::F32, &dev)?
            } else {
                Tensor::from_vec(randn_vec(&mut rng, n, std), shape, &dev)?
            };
            let _ = kind;
            Ok(LoadedWeight::Tensor(t))
        };
        Self::build(cfg, opts, device, &mut source)
    }

    /// Builds the model, asking `source` for every weight by HF name. Linear weights are
    /// converted to `opts.precision` (unless the source already did), so a loader can quantize
    /// tensor by tensor without ever holding the full-precision model.
    pub fn build(
        cfg: &MixtralConfig,
        opts: &ModelOptions,
        device: &Device,
        source: &mut WeightSource,
    ) -> Result<Self> {
        cfg.validate()?;
        if opts.train_base && matches!(opts.precision, Precision::Int8 | Precision::Nf4) {
            bail!("train_base needs a dense precision (f32/bf16), not {:?}", opts.precision);
        }
        if let Some(l) = &opts.lora {
            l.validate()?;
        }
        let control = Arc::new(LoraControl::default());
        let dtype = opts.dtype;
        let h = cfg.hidden_size;
        let (nh, nkv, hd, inter) =
            (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size);
        let mut lora_rng = rand::rngs::StdRng::seed_from_u64(opts.seed.wrapping_add(0x10_4a));

        let embed_tokens =
            load_dense(source, "model.embed_tokens.weight", &[cfg.vocab_size, h], opts.train_base, dtype)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let mut lin =
                |module: &str, path: &str, out: usize, inp: usize, kind: WeightKind| -> Result<Linear> {
                    let trainable = opts.train_base || (kind == WeightKind::Router && opts.train_router);
                    let base =
                        load_linear(source, &format!("{path}.weight"), out, inp, kind, trainable, opts)?;
                    let mut linear = Linear::new(base, control.clone());
                    if let Some(lcfg) = &opts.lora
                        && lcfg.targets(module)
                    {
                        linear.lora = Some(LoraAdapter::new(inp, out, lcfg, &mut lora_rng, device)?);
                    }
                    Ok(linear)
                };
            let a = format!("{p}.self_attn");
            let self_attn = Attention {
                q_proj: lin("q_proj", &format!("{a}.q_proj"), nh * hd, h, WeightKind::Linear)?,
                k_proj: lin("k_proj", &format!("{a}.k_proj"), nkv * hd, h, WeightKind::Linear)?,
                v_proj: lin("v_proj", &format!("{a}.v_proj"), nkv * hd, h, WeightKind::Linear)?,
                o_proj: lin("o_proj", &format!("{a}.o_proj"), h, nh * hd, WeightKind::Linear)?,
                num_heads: nh,
                num_kv_heads: nkv,
                head_dim: hd,
            };
            let m = format!("{p}.block_sparse_moe");
            let gate = lin("gate", &format!("{m}.gate"), cfg.num_local_experts, h, WeightKind::Router)?;
            let mut experts = Vec::with_capacity(cfg.num_local_experts);
            for e in 0..cfg.num_local_experts {
                let ep = format!("{m}.experts.{e}");
                experts.push(Expert {
                    w1: lin("w1", &format!("{ep}.w1"), inter, h, WeightKind::Linear)?,
                    w2: lin("w2", &format!("{ep}.w2"), h, inter, WeightKind::Linear)?,
                    w3: lin("w3", &format!("{ep}.w3"), inter, h, WeightKind::Linear)?,
                });
            }
            let input_layernorm = RmsNorm {
                weight: load_dense(
                    source,
                    &format!("{p}.input_layernorm.weight"),
                    &[h],
                    opts.train_base,
                    dtype,
                )?,
                eps: cfg.rms_norm_eps,
            };
            let post_attention_layernorm = RmsNorm {
                weight: load_dense(
                    source,
                    &format!("{p}.post_attention_layernorm.weight"),
                    &[h],
                    opts.train_base,
                    dtype,
                )?,
                eps: cfg.rms_norm_eps,
            };
            layers.push(DecoderLayer {
                input_layernorm,
                self_attn,
                post_attention_layernorm,
                block_sparse_moe: SparseMoe { gate, experts, top_k: cfg.num_experts_per_tok },
            });
        }
        let norm = RmsNorm {
            weight: load_dense(source, "model.norm.weight", &[h], opts.train_base, dtype)?,
            eps: cfg.rms_norm_eps,
        };
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(load_dense(source, "lm_head.weight", &[cfg.vocab_size, h], opts.train_base, dtype)?)
        };
        Ok(Mixtral {
            cfg: cfg.clone(),
            opts: opts.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            control,
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.opts.dtype
    }

    pub fn config(&self) -> &MixtralConfig {
        &self.cfg
    }

    /// Applies (true) or bypasses (false) every LoRA adapter: bypassed, the model is the base
    /// model, e.g. PPO's reference policy.
    pub fn set_adapter_enabled(&self, on: bool) {
        self.control.set_enabled(on)
    }

    /// A global multiplier on every adapter branch (1.0 by default).
    pub fn set_adapter_scale(&self, s: f64) {
        self.control.set_scale(s)
    }

    /// Training mode turns LoRA dropout on.
    pub fn set_training(&self, on: bool) {
        self.control.set_training(on)
    }

    /// Switches gradient checkpointing for `forward_backward`.
    pub fn set_grad_checkpoint(&mut self, on: bool) {
        self.opts.grad_checkpoint = on;
    }

    /// Attaches fresh adapters (replacing any) to the modules `cfg` targets.
    pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<()> {
        cfg.validate()?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let device = self.device.clone();
        for (module, _, lin) in self.linears_mut() {
            lin.lora = if cfg.targets(module) {
                let (out, inp) = lin.base.dims();
                Some(LoraAdapter::new(inp, out, cfg, &mut rng, &device)?)
            } else {
                None
            };
        }
        self.opts.lora = Some(cfg.clone());
        Ok(())
    }

    /// Sets every adapter's B matrix to normal(0, std) noise (a fresh adapter has B = 0, which
    /// makes the model equal to its base and A's gradient zero): for tests and benchmarks.
    pub fn randomize_lora_b(&self, std: f64, seed: u64) -> Result<()> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for (_, _, lin) in self.linears() {
            if let Some(l) = &lin.lora {
                let n = l.b.elem_count();
                let t = Tensor::from_vec(randn_vec(&mut rng, n, std), l.b.shape(), l.b.device())?;
                l.b.set(&t.to_dtype(l.b.dtype())?)?;
            }
        }
        Ok(())
    }

    /// Every linear layer as (PEFT module name, HF path without `.weight`, layer).
    pub fn linears(&self) -> Vec<(&'static str, String, &Linear)> {
        let mut out = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            let a = format!("model.layers.{l}.self_attn");
            let at = &layer.self_attn;
            out.push(("q_proj", format!("{a}.q_proj"), &at.q_proj));
            out.push(("k_proj", format!("{a}.k_proj"), &at.k_proj));
            out.push(("v_proj", format!("{a}.v_proj"), &at.v_proj));
            out.push(("o_proj", format!("{a}.o_proj"), &at.o_proj));
            let m = format!("model.layers.{l}.block_sparse_moe");
            out.push(("gate", format!("{m}.gate"), &layer.block_sparse_moe.gate));
            for (e, ex) in layer.block_sparse_moe.experts.iter().enumerate() {
                out.push(("w1", format!("{m}.experts.{e}.w1"), &ex.w1));
                out.push(("w2", format!("{m}.experts.{e}.w2"), &ex.w2));
                out.push(("w3", format!("{m}.experts.{e}.w3"), &ex.w3));
            }
        }
        out
    }

    /// Mutable version of [`Mixtral::linears`].
    pub fn linears_mut(&mut self) -> Vec<(&'static str, String, &mut Linear)> {
        let mut out = Vec::new();
        for (l, layer) in self.layers.iter_mut().enumerate() {
            let a = format!("model.layers.{l}.self_attn");
            let at = &mut layer.self_attn;
            out.push(("q_proj", format!("{a}.q_proj"), &mut at.q_proj));
            out.push(("k_proj", format!("{a}.k_proj"), &mut at.k_proj));
            out.push(("v_proj", format!("{a}.v_proj"), &mut at.v_proj));
            out.push(("o_proj", format!("{a}.o_proj"), &mut at.o_proj));
            let m = format!("model.layers.{l}.block_sparse_moe");
            let moe = &mut layer.block_sparse_moe;
            out.push(("gate", format!("{m}.gate"), &mut moe.gate));
            for (e, ex) in moe.experts.iter_mut().enumerate() {
                out.push(("w1", format!("{m}.experts.{e}.w1"), &mut ex.w1));
                out.push(("w2", format!("{m}.experts.{e}.w2"), &mut ex.w2));
                out.push(("w3", format!("{m}.experts.{e}.w3"), &mut ex.w3));
            }
        }
        out
    }

    /// The LoRA variables, named `{hf module path}.lora_A.weight` / `.lora_B.weight`
    /// (PEFT's names without the `base_model.model.` prefix).
    pub fn lora_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (_, path, lin) in self.linears() {
            if let Some(l) = &lin.lora {
                out.push((format!("{path}.lora_A.weight"), l.a.clone()));
                out.push((format!("{path}.lora_B.weight"), l.b.clone()));
            }
        }
        out
    }

    /// The router weights when trained fully (`ModelOptions::train_router`).
    pub fn router_vars(&self) -> Vec<(String, Var)> {
        self.linears()
            .into_iter()
            .filter(|(m, _, _)| *m == "gate")
            .filter_map(|(_, path, lin)| lin.base.var().map(|v| (format!("{path}.weight"), v.clone())))
            .collect()
    }

    /// Every variable an optimizer should update: adapters, a trained router, and with
    /// `train_base` every base weight (HF names).
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        if let Some(v) = self.embed_tokens.var() {
            out.push(("model.embed_tokens.weight".to_string(), v.clone()));
        }
        for (l, layer) in self.layers.iter().enumerate() {
            for (n, norm) in [
                ("input_layernorm", &layer.input_layernorm),
                ("post_attention_layernorm", &layer.post_attention_layernorm),
            ] {
                if let Some(v) = norm.weight.var() {
                    out.push((format!("model.layers.{l}.{n}.weight"), v.clone()));
                }
            }
        }
        for (_, path, lin) in self.linears() {
            if let Some(v) = lin.base.var() {
                out.push((format!("{path}.weight"), v.clone()));
            }
            if let Some(l) = &lin.lora {
                out.push((format!("{path}.lora_A.weight"), l.a.clone()));
                out.push((format!("{path}.lora_B.weight"), l.b.clone()));
            }
        }
        if let Some(v) = self.norm.weight.var() {
            out.push(("model.norm.weight".to_string(), v.clone()));
        }
        if let Some(v) = self.lm_head.as_ref().and_then(|p| p.var()) {
            out.push(("lm_head.weight".to_string(), v.clone()));
        }
        out
    }

    /// Folds every adapter into its base weight (re-quantized to `precision`) and drops the
    /// adapters: the serving model then runs without the LoRA branch.
    pub fn merge_adapters(&mut self, precision: Precision) -> Result<()> {
        for (_, _, lin) in self.linears_mut() {
            if lin.lora.is_some() {
                lin.merge(precision)?;
            }
        }
        self.opts.lora = None;
        Ok(())
    }

    /// Token embeddings `[B, T, H]` in the compute dtype.
    pub fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, t) = input_ids.dims2().context("input_ids must be [batch, seq]")?;
        let ids = input_ids.to_dtype(DType::U32)?.flatten_all()?;
        let e = self.embed_tokens.tensor().index_select(&ids, 0)?;
        Ok(e.reshape((b, t, self.cfg.hidden_size))?.to_dtype(self.opts.dtype)?)
    }

    /// Final norm + lm_head: `hidden [B, T, H]` -> (normed hidden, logits `[B, T, V]`).
    pub fn head(&self, hidden: &Tensor, path: ForwardPath) -> Result<(Tensor, Tensor)> {
        let hidden = self.norm.forward(hidden, path)?;
        let p = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        let w = p.tensor().to_dtype(hidden.dtype())?;
        let logits = if p.var().is_some() || !path.cpu_kernels() {
            crate::linear::matmul_t(&hidden, &w)?
        } else {
            crate::linear::frozen_matmul_t(&hidden, &w)?
        };
        Ok((hidden, logits))
    }

    /// THE decoder stack: every layer in order over `x [B, T, H]`, each appending its new keys
    /// and values to its cache when `cache` is given (one per layer). Returns the last layer's
    /// output (before the final norm) and each layer's router logits.
    pub fn run_layers(
        &self,
        mut x: Tensor,
        inp: &AttnInputs,
        cache: Option<&mut [LayerCache]>,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut router_logits = Vec::with_capacity(self.layers.len());
        let mut caches = cache.map(|c| c.iter_mut());
        if let Some(c) = &caches {
            ensure!(
                c.len() == self.layers.len(),
                "cache has {} layers, model {}",
                c.len(),
                self.layers.len()
            );
        }
        for layer in &self.layers {
            let lc = caches.as_mut().and_then(|c| c.next());
            let (y, r) = layer.forward(&x, inp, lc)?;
            x = y;
            router_logits.push(r);
        }
        Ok((x, router_logits))
    }

    /// Rotary tables and attention bias for queries at the last `q_len` of `k_len` positions.
    /// `key_mask` is `[B, k_len]` (1 = real token, 0 = padding) or None (no padding).
    /// Positions are `cumsum(mask) - 1`, so left padding (batched generation) and right
    /// padding (training) both give real tokens positions 0, 1, 2, ...
    pub fn attn_inputs(
        &self,
        b: usize,
        q_len: usize,
        k_len: usize,
        key_mask: Option<&[Vec<u8>]>,
        path: ForwardPath,
    ) -> Result<AttnInputs> {
        ensure!(q_len <= k_len, "attention: {q_len} queries over {k_len} keys");
        if let Some(m) = key_mask {
            ensure!(m.len() == b, "attention mask has {} rows for batch {b}", m.len());
            for row in m {
                ensure!(row.len() == k_len, "attention mask row has {} entries, expected {k_len}", row.len());
            }
        }
        let off = k_len - q_len;
        let mut pos = vec![0f32; b * q_len];
        let mut bias = vec![0f32; b * q_len * k_len];
        let window = self.cfg.sliding_window;
        for bi in 0..b {
            let row = key_mask.map(|m| &m[bi]);
            let mut cum = 0i64;
            let mut positions = vec![0i64; k_len];
            for (j, p) in positions.iter_mut().enumerate() {
                let real = row.is_none_or(|r| r[j] != 0);
                if real {
                    cum += 1;
                }
                *p = (cum - 1).max(0);
            }
            for i in 0..q_len {
                let qi = off + i;
                pos[bi * q_len + i] = positions[qi] as f32;
                for j in 0..k_len {
                    let real = row.is_none_or(|r| r[j] != 0);
                    // Causal, and (HF sliding window) at most `w - 1` positions back.
                    let visible = j <= qi && window.is_none_or(|w| qi - j < w);
                    if !(real && visible) {
                        bias[(bi * q_len + i) * k_len + j] = MASK_VALUE as f32;
                    }
                }
            }
        }
        self.attn_inputs_from(pos, bias, b, q_len, k_len, path)
    }

    /// [`AttnInputs`] from per-query positions `[B * T_q]` and the additive bias
    /// `[B * T_q * T_k]` (row-major), for callers that lay attention out themselves.
    pub fn attn_inputs_from(
        &self,
        pos: Vec<f32>,
        bias: Vec<f32>,
        b: usize,
        q_len: usize,
        k_len: usize,
        path: ForwardPath,
    ) -> Result<AttnInputs> {
        let hd = self.cfg.head_dim;
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| 1.0 / (self.cfg.rope_theta as f32).powf((2 * i) as f32 / hd as f32))
            .collect();
        let inv = Tensor::from_vec(inv, (1, hd / 2), &self.device)?;
        let pos = Tensor::from_vec(pos, (b * q_len, 1), &self.device)?;
        let freqs = pos.matmul(&inv)?;
        let emb = Tensor::cat(&[&freqs, &freqs], 1)?.reshape((b, 1, q_len, hd))?;
        let (cos_half, sin_half) = fused::half_tables(&freqs, b, q_len, self.opts.dtype)?;
        Ok(AttnInputs {
            cos: emb.cos()?.to_dtype(self.opts.dtype)?,
            sin: emb.sin()?.to_dtype(self.opts.dtype)?,
            bias: Tensor::from_vec(bias, (b, 1, q_len, k_len), &self.device)?,
            cos_half,
            sin_half,
            path,
        })
    }

    /// Full-sequence forward for training and scoring. `input_ids` `[B, T]` (U32/I64),
    /// `attention_mask` `[B, T]` (1 = token, 0 = padding; any integer or float dtype). Takes the
    /// fused shortcuts where nothing tracks a gradient ([`ForwardPath::Fused`]).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<ModelOutput> {
        self.forward_on(input_ids, attention_mask, ForwardPath::Fused)
    }

    /// [`Mixtral::forward`] through a chosen graph path.
    pub fn forward_on(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        path: ForwardPath,
    ) -> Result<ModelOutput> {
        let (b, t) = input_ids.dims2().context("input_ids must be [batch, seq]")?;
        let mask = mask_rows(attention_mask, b, t)?;
        let inp = self.attn_inputs(b, t, t, mask.as_deref(), path)?;
        let (x, router_logits) = self.run_layers(self.embed(input_ids)?, &inp, None)?;
        let (hidden, logits) = self.head(&x, path)?;
        Ok(ModelOutput { logits, hidden, router_logits })
    }

    /// Runs `input_ids` `[B, q]` after the cached positions, appends their keys/values, and
    /// returns the logits `[B, q, V]`. `mask` gives 1/0 (real/padding) for the new positions.
    pub fn forward_cached(
        &self,
        input_ids: &Tensor,
        mask: &[Vec<u8>],
        cache: &mut KvCache,
        path: ForwardPath,
    ) -> Result<Tensor> {
        let (b, q) = input_ids.dims2().context("input_ids must be [batch, seq]")?;
        ensure!(cache.mask.len() == b, "cache is for batch {}, input has {b}", cache.mask.len());
        ensure!(mask.len() == b, "mask has {} rows for batch {b}", mask.len());
        for (row, m) in cache.mask.iter_mut().zip(mask) {
            ensure!(m.len() == q, "mask row has {} entries for {q} tokens", m.len());
            row.extend_from_slice(m);
        }
        let k_len = cache.len();
        let inp = self.attn_inputs(b, q, k_len, Some(&cache.mask), path)?;
        let (x, _) = self.run_layers(self.embed(input_ids)?, &inp, Some(&mut cache.layers))?;
        let (_, logits) = self.head(&x, path)?;
        Ok(logits.detach())
    }

    /// Runs forward, applies `loss_fn` to the output, and back-propagates, with or without
    /// gradient checkpointing (`ModelOptions::grad_checkpoint`). Returns the loss and the
    /// gradients (look them up with `grads.get(var)`). Variables outside the model used by
    /// `loss_fn` (e.g. a value head) get their gradients too.
    pub fn forward_backward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        loss_fn: &mut dyn FnMut(&ModelOutput) -> Result<Tensor>,
    ) -> Result<(Tensor, GradStore)> {
        self.forward_backward_on(input_ids, attention_mask, ForwardPath::Fused, loss_fn)
    }

    /// [`Mixtral::forward_backward`] through a chosen path (the graph is differentiable on every
    /// path; the path decides which kernels compute it, e.g. [`ForwardPath::Generic`]).
    pub fn forward_backward_on(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        path: ForwardPath,
        loss_fn: &mut dyn FnMut(&ModelOutput) -> Result<Tensor>,
    ) -> Result<(Tensor, GradStore)> {
        if self.opts.grad_checkpoint {
            return grad_checkpoint::forward_backward(self, input_ids, attention_mask, path, loss_fn);
        }
        let out = self.forward_on(input_ids, attention_mask, path)?;
        let loss = loss_fn(&out)?;
        let grads = loss.backward()?;
        Ok((loss.detach(), grads))
    }

    /// Total bytes of the base weights (quantized sizes where quantized) and parameter count
    /// of the quantizable linears, for bits/param reporting.
    pub fn linear_storage(&self) -> (usize, usize) {
        let mut bytes = 0;
        let mut params = 0;
        for (m, _, lin) in self.linears() {
            if m == "gate" {
                continue;
            }
            let (o, i) = lin.base.dims();
            bytes += lin.base.storage_bytes();
            params += o * i;
        }
        (bytes, params)
    }
}

/// Converts an optional `[B, T]` mask tensor to host rows of 0/1.
pub fn mask_rows(mask: Option<&Tensor>, b: usize, t: usize) -> Result<Option<Vec<Vec<u8>>>> {
    let Some(m) = mask else { return Ok(None) };
    let (mb, mt) = m.dims2().context("attention_mask must be [batch, seq]")?;
    ensure!((mb, mt) == (b, t), "attention_mask is [{mb}, {mt}], input_ids are [{b}, {t}]");
    let rows = m.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    Ok(Some(rows.into_iter().map(|r| r.into_iter().map(|v| u8::from(v != 0.0)).collect()).collect()))
}

fn load_dense(
    source: &mut WeightSource,
    name: &str,
    shape: &[usize],
    trainable: bool,
    dtype: DType,
) -> Result<Param> {
    let t = match source(name, shape, WeightKind::Dense)? {
        LoadedWeight::Tensor(t) => t,
        LoadedWeight::Base(b) => b.weight(DType::F32)?,
    };
    check_shape(name, &t, shape)?;
    // Trained weights stay f32 whatever the compute dtype (updates below bf16 resolution).
    let t = t.to_dtype(if trainable { DType::F32 } else { dtype })?;
    if trainable { Param::trainable(&t) } else { Ok(Param::frozen(t)) }
}

fn load_linear(
    source: &mut WeightSource,
    name: &str,
    out: usize,
    inp: usize,
    kind: WeightKind,
    trainable: bool,
    opts: &ModelOptions,
) -> Result<BaseWeight> {
    // The router and trained weights are dense; everything else takes the asked precision.
    let prec = if kind == WeightKind::Router || trainable {
        if trainable || opts.dtype == DType::F32 { Precision::F32 } else { Precision::Bf16 }
    } else {
        opts.precision
    };
    let shape = [out, inp];
    match source(name, &shape, kind)? {
        LoadedWeight::Base(b) => {
            let (o, i) = b.dims();
            ensure!((o, i) == (out, inp), "tensor `{name}` has shape [{o}, {i}], expected [{out}, {inp}]");
            let same = match (&b, prec) {
                (BaseWeight::Dense(p), Precision::F32) => p.tensor().dtype() == DType::F32,
                (BaseWeight::Dense(p), Precision::Bf16) => p.tensor().dtype() == DType::BF16,
                (BaseWeight::Int8(_), Precision::Int8) | (BaseWeight::Nf4(_), Precision::Nf4) => true,
                _ => false,
            };
            if same && !trainable {
                Ok(b)
            } else {
                BaseWeight::from_dense(&b.weight(DType::F32)?, prec, trainable)
            }
        }
        LoadedWeight::Tensor(t) => {
            check_shape(name, &t, &shape)?;
            BaseWeight::from_dense(&t, prec, trainable)
        }
    }
}

fn check_shape(name: &str, t: &Tensor, shape: &[usize]) -> Result<()> {
    ensure!(t.dims() == shape, "tensor `{name}` has shape {:?}, expected {shape:?}", t.dims());
    Ok(())
}
