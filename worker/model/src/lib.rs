//! The model: a Mixtral-architecture causal LM with LoRA adapters over frozen f32 / bf16 / int8 /
//! NF4 base weights, trainable in candle (every op on the training path is differentiable). It
//! knows nothing of SAP, HTTP or Kubernetes.
//!
//! # Layout: one model, three ways to run its forward pass
//!
//! - [`mixtral`]: the model as the paper reads (attention, sparse MoE, decoder layers, the one
//!   layer loop [`Mixtral::run_layers`] that training, gradient checkpointing and cached
//!   generation share), its KV cache, generation and gradient checkpointing. Its `fused`
//!   module holds the in-graph CPU shortcuts of inference.
//! - [`plain`]: the plain-slice forward (flat copies of the weights, gemm and matrix-vector
//!   kernels on slices) for single-row prefill and generation steps on a CPU.
//! - [`cpu`]: SIMD kernels (matrix-vector with its portable `dot`, fast exp/max/sum, row
//!   kernels). [`quant`]: int8 and NF4 weights.
//! - Which path runs is one [`ForwardPath`] value ([`path`]), passed where a forward is asked
//!   for; there is no global switch. [`ForwardPath::Generic`] is what a GPU executes (candle's
//!   built-in ops only), runnable on the CPU so that CI tests it against the fast paths.
//!
//! # Public API (what SFT, PPO, evaluation and serving build on)
//!
//! Build or load a model:
//! - [`MixtralConfig::preset`]`(Preset::Tiny | Small | Mixtral8x7b, vocab)`,
//!   [`MixtralConfig::from_file`]`(config.json)`, [`MixtralConfig::micro`] (unit tests).
//! - [`ModelOptions`] `{ precision: Precision::{F32,Bf16,Int8,Nf4}, dtype, lora: Option<LoraConfig>,
//!   train_base, train_router, grad_checkpoint, seed }`.
//! - [`Mixtral::new_random`]`(&cfg, &opts, &device)`; [`load_model`]`(dir, &opts, &device)` (HF
//!   layout, sharded or not, per-expert or fused experts, bitsandbytes NF4 keys; quantizes tensor
//!   by tensor while streaming shards).
//! - [`save_model`]`(&model, dir, &SaveOptions { dtype, max_shard_bytes, keep_nf4 })`.
//!
//! Train:
//! - [`Mixtral::forward`]`(&input_ids [B,T], Option<&attention_mask [B,T]>) -> ModelOutput
//!   { logits [B,T,V], hidden [B,T,H], router_logits }` (positions from the mask, so left or right
//!   padding both work).
//! - [`Mixtral::forward_backward`]`(&ids, mask, &mut |out| loss) -> (loss, GradStore)`: honours
//!   gradient checkpointing ([`Mixtral::set_grad_checkpoint`]); use it for every training step
//!   ([`Mixtral::forward_backward_on`] through a chosen [`ForwardPath`]).
//! - [`Mixtral::trainable_vars`] (adapters, a trained router, all weights with `train_base`),
//!   [`Mixtral::lora_vars`], [`Mixtral::router_vars`]; names are HF/PEFT module paths.
//! - [`AdamW`]`::new(vars, AdamWConfig { schedule: LrSchedule {lr, warmup_steps, total_steps,
//!   min_lr_ratio}, beta1, beta2, eps, weight_decay, max_grad_norm })`, `.step(&grads) -> StepStats
//!   { lr, grad_norm }`, `.save(path)` / `.load(path)` for resume.
//! - Losses: [`loss::causal_lm_loss`]`(logits, ids, Option<loss_mask>)`,
//!   [`loss::token_logprobs`], [`loss::shifted_logprobs`], [`loss::load_balancing_loss`].
//! - [`Mixtral::set_training`] (LoRA dropout on/off).
//!
//! Adapters:
//! - [`Mixtral::add_lora`], [`save_adapter`]`(&model, dir, base_name)` / [`load_adapter`]`(&mut model,
//!   dir)` (PEFT layout and key names), [`Mixtral::merge_adapters`]`(precision)`;
//!   [`save_adapter_as`]`(.., AdapterLayout::Fused)` writes transformers 5 / PEFT's fused-expert
//!   layout (`target_parameters`), which [`load_adapter`] reads too.
//! - [`Mixtral::set_adapter_enabled`]`(false)`: the base model (PPO's reference policy) without
//!   a second copy; [`Mixtral::set_adapter_scale`].
//!
//! Generate:
//! - [`Mixtral::generate`]`(&prompts_ids, &GenerationConfig { max_new_tokens, temperature, top_p,
//!   stop_token_ids, stop_sequences, pad_token_id, seed }, Some(&decode)) -> Vec<Generation
//!   { tokens, logprobs, text, finish }>`: batched (left padding), KV cache, per-token log-probs
//!   ([`Mixtral::generate_on`] through a chosen [`ForwardPath`]).
//! - [`Mixtral::forward_cached`] with a [`KvCache`] for custom decoding loops (constrained
//!   decoding).
//!
//! Text:
//! - [`Tokenizer`]: `from_dir`, `from_file`, `train_bpe(texts, vocab_size)` (byte-level, no
//!   prefix space), `save(dir)`, `encode`, `decode`, `bos_id`/`eos_id`/`pad_id`.
//! - [`template`]: `routing_prompt`, `exception_prompt`, `response_text`, `encode_prompt`,
//!   `encode_example` (ids + loss mask), `parse_response`, `STOP_SEQUENCE`. One template for
//!   every stage.
//!
//! Pretraining a from-scratch preset lives in the worker binary (`sapllm-worker pretrain`).

pub mod config;
pub mod cpu;
pub mod device;
pub mod hf_io;
pub mod linear;
pub mod loss;
pub mod mixtral;
pub mod optim;
pub mod path;
pub mod peft;
pub mod plain;
pub mod quant;
pub mod threads;
pub mod tokenizer;

pub use config::{MixtralConfig, Preset};
pub use hf_io::{SaveOptions, load_model, save_model};
pub use linear::{LoraConfig, Precision};
pub use mixtral::generation::{FinishReason, Generation, GenerationConfig};
pub use mixtral::kv_cache::KvCache;
pub use mixtral::{Mixtral, ModelOptions, ModelOutput};
pub use optim::{AdamW, AdamWConfig, LrSchedule, StepStats};
pub use path::ForwardPath;
pub use peft::{AdapterLayout, load_adapter, save_adapter, save_adapter_as};
pub use tokenizer::Tokenizer;
