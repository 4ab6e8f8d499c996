//! Activations, logits, LoRA adapters and the KV cache: what the device holds besides the base.
//!
//! The counting model, per token and decoder layer, of what a training forward keeps for its
//! backward (elements, stored in the compute dtype):
//! - attention: the norm's input and output (2h), q (h), k and v (2 x kv), the softmax
//!   probabilities (heads x seq: attention is computed in full, there is no flash attention on
//!   this path), the attention output (h), the second norm's input and output (2h);
//! - router: logits and probabilities (2 x experts);
//! - each of the experts a token is routed to: its gathered input (h), w1's and w3's outputs,
//!   SiLU(w1) and the product fed to w2 (4 x intermediate);
//! - each LoRA branch: the dropped-out input when dropout is on (its own mask, as PEFT does) and
//!   the rank-r down projection; expert branches once per routed expert.
//!
//! Without gradient checkpointing every layer keeps that, and the backward of one layer holds as
//! much again in gradients: `(layers + 1) x layer`. With checkpointing only each layer's input
//! (h) is kept and one layer is recomputed during backward, with its gradients:
//! `layers x h + 2 x layer`.

use crate::plan::dims::ModelDims;
use crate::training_run::{LoraSettings, LoraTarget};

/// LoRA adapters in the shape the plan needs.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraShape {
    /// Rank.
    pub r: u64,
    /// Modules that carry an adapter.
    pub targets: Vec<LoraTarget>,
    /// Whether dropout is applied on the adapter input (each branch then keeps its own copy).
    pub dropout: bool,
}

impl From<&LoraSettings> for LoraShape {
    fn from(l: &LoraSettings) -> Self {
        let mut targets = l.target_modules.clone();
        targets.sort_by_key(|t| t.as_str());
        targets.dedup();
        LoraShape { r: u64::from(l.r), targets, dropout: l.dropout > 0.0 }
    }
}

/// `(in, out, copies per layer for parameters, copies per token for activations)` of a target.
fn target_shape(d: &ModelDims, t: LoraTarget) -> (u64, u64, u64, u64) {
    let (h, kv, i) = (d.hidden, d.kv_dim(), d.intermediate);
    match t {
        LoraTarget::QProj | LoraTarget::OProj => (h, h, 1, 1),
        LoraTarget::KProj | LoraTarget::VProj => (h, kv, 1, 1),
        LoraTarget::W1 | LoraTarget::W3 => (h, i, d.experts, d.experts_per_token),
        LoraTarget::W2 => (i, h, d.experts, d.experts_per_token),
        LoraTarget::Gate => (h, d.experts, 1, 1),
    }
}

/// Parameters of the adapters: `r x (in + out)` per adapted matrix (A is `[r, in]`, B `[out, r]`).
pub fn lora_params(d: &ModelDims, lora: &LoraShape) -> u64 {
    let per_layer: u64 = lora
        .targets
        .iter()
        .map(|&t| {
            let (i, o, copies, _) = target_shape(d, t);
            copies * lora.r * (i + o)
        })
        .sum();
    d.layers * per_layer
}

/// Elements one layer keeps per token for its backward (see the module docs), at sequence
/// length `seq`.
pub fn layer_elems_per_token(d: &ModelDims, seq: u64, lora: Option<&LoraShape>) -> u64 {
    let (h, kv, i) = (d.hidden, d.kv_dim(), d.intermediate);
    let attention = 6 * h + 2 * kv + d.heads * seq;
    let router = 2 * d.experts;
    let experts = d.experts_per_token * (h + 4 * i);
    let adapters: u64 = lora
        .map(|l| {
            l.targets
                .iter()
                .map(|&t| {
                    let (input, _, _, per_token) = target_shape(d, t);
                    per_token * (if l.dropout { input } else { 0 } + l.r)
                })
                .sum()
        })
        .unwrap_or(0);
    attention + router + experts + adapters
}

/// Bytes of training activations for `sequences` sequences of `seq` tokens, each element
/// `elem_bytes` wide.
pub fn training_activation_bytes(
    d: &ModelDims,
    sequences: u64,
    seq: u64,
    lora: Option<&LoraShape>,
    checkpointing: bool,
    elem_bytes: u64,
) -> u64 {
    let tokens = sequences * seq;
    let layer = layer_elems_per_token(d, seq, lora) * tokens * elem_bytes;
    if checkpointing { d.layers * d.hidden * tokens * elem_bytes + 2 * layer } else { (d.layers + 1) * layer }
}

/// Bytes of the logits of `tokens` positions for a loss: f32 logits and their gradient
/// (log-softmax) side by side.
pub fn training_logits_bytes(d: &ModelDims, tokens: u64) -> u64 {
    2 * tokens * d.vocab * 4
}

/// Bytes of one inference forward over `tokens` positions at context `context`: one layer's
/// working set at a time (nothing is kept for a backward) plus the f32 logits of every position
/// of a prefill.
pub fn inference_activation_bytes(d: &ModelDims, tokens: u64, context: u64, elem_bytes: u64) -> u64 {
    layer_elems_per_token(d, context, None) * tokens * elem_bytes + tokens * d.vocab * 4
}

/// Bytes of the key/value cache of `sequences` sequences of `context` tokens in bf16: keys and
/// values of `kv_heads x head_dim` per token and layer.
pub fn kv_cache_bytes(d: &ModelDims, sequences: u64, context: u64) -> u64 {
    sequences * context * d.layers * 2 * d.kv_dim() * 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training_run::ModelPreset;

    fn mixtral() -> ModelDims {
        ModelDims::preset(ModelPreset::Mixtral8x7b)
    }

    fn attention_lora() -> LoraShape {
        LoraShape::from(&LoraSettings::default())
    }

    #[test]
    fn lora_r16_on_the_attention_of_mixtral_has_13_6_million_parameters() {
        // Per layer: q, o 16 x (4096 + 4096) = 131,072 each; k, v 16 x (4096 + 1024) = 81,920
        // each; 425,984 per layer, x 32 = 13,631,488.
        assert_eq!(lora_params(&mixtral(), &attention_lora()), 13_631_488);
        // w2 on every expert: 8 x 16 x (14336 + 4096) = 2,359,296 per layer, x 32.
        let w2 = LoraShape { r: 16, targets: vec![LoraTarget::W2], dropout: false };
        assert_eq!(lora_params(&mixtral(), &w2), 75_497_472);
    }

    #[test]
    fn a_mixtral_layer_keeps_182_352_elements_per_token_at_512() {
        // attention 6 x 4096 + 2 x 1024 + 32 x 512 = 43,008; router 16; experts 2 x (4096 +
        // 4 x 14336) = 122,880; LoRA with dropout on q, k, v, o: 4 x (4096 + 16) = 16,448.
        assert_eq!(layer_elems_per_token(&mixtral(), 512, Some(&attention_lora())), 182_352);
        // At 2048 the attention probabilities grow by 32 x 1536 = 49,152.
        assert_eq!(layer_elems_per_token(&mixtral(), 2048, Some(&attention_lora())), 231_504);
        assert_eq!(layer_elems_per_token(&mixtral(), 512, None), 182_352 - 16_448);
    }

    #[test]
    fn checkpointing_keeps_layer_inputs_and_one_layer_twice() {
        let (d, l) = (mixtral(), attention_lora());
        // 2 x 512 tokens in bf16: inputs 32 x 4096 x 1024 x 2 = 268,435,456; one layer
        // 182,352 x 1024 x 2 = 373,456,896, twice.
        assert_eq!(training_activation_bytes(&d, 2, 512, Some(&l), true, 2), 268_435_456 + 2 * 373_456_896);
        // Without: 33 layers' worth.
        assert_eq!(training_activation_bytes(&d, 2, 512, Some(&l), false, 2), 33 * 373_456_896);
    }

    #[test]
    fn the_kv_cache_of_mixtral_is_128_kib_per_token() {
        // 32 layers x (k + v) x 1024 x 2 bytes = 131,072 bytes per token.
        assert_eq!(kv_cache_bytes(&mixtral(), 1, 1), 131_072);
        assert_eq!(kv_cache_bytes(&mixtral(), 8, 2048), 2 << 30);
    }
}
