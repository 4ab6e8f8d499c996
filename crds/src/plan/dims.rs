//! Model dimensions and the presets' table, as the memory plan needs them.

use crate::training_run::ModelPreset;

/// The dimensions of a Mixtral-architecture model that decide how much memory it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelDims {
    /// Tokens in the vocabulary (rows of the embedding and of the untied lm_head).
    pub vocab: u64,
    /// Hidden size.
    pub hidden: u64,
    /// Intermediate size of one expert.
    pub intermediate: u64,
    /// Decoder layers.
    pub layers: u64,
    /// Query heads.
    pub heads: u64,
    /// Key/value heads (grouped-query attention).
    pub kv_heads: u64,
    /// Experts per layer.
    pub experts: u64,
    /// Experts each token is routed to.
    pub experts_per_token: u64,
    /// Longest context the positions support.
    pub max_positions: u64,
}

/// The vocabulary the pretrain stage trains its tokenizer to for `tiny` and `small`: the
/// worker's default BPE size (`sapllm-worker pretrain --vocab-size`, default 2048; the stage
/// does not change it). The tokenizer may come out smaller, never larger, so the plan is an
/// upper bound. Mixtral-8x7B keeps its own 32000 tokens whatever the tokenizer says.
pub const PRESET_BPE_VOCAB: u64 = 2048;

/// The presets by name, with the dimensions `MixtralConfig::preset` gives them
/// (worker/model/src/config.rs): the two must change together.
pub const PRESETS: [(&str, ModelDims); 3] = [
    (
        "tiny",
        ModelDims {
            vocab: PRESET_BPE_VOCAB,
            hidden: 128,
            intermediate: 256,
            layers: 4,
            heads: 4,
            kv_heads: 2,
            experts: 4,
            experts_per_token: 2,
            max_positions: 1024,
        },
    ),
    (
        "small",
        ModelDims {
            vocab: PRESET_BPE_VOCAB,
            hidden: 512,
            intermediate: 1536,
            layers: 8,
            heads: 8,
            kv_heads: 4,
            experts: 8,
            experts_per_token: 2,
            max_positions: 2048,
        },
    ),
    (
        "mixtral-8x7b",
        ModelDims {
            vocab: 32000,
            hidden: 4096,
            intermediate: 14336,
            layers: 32,
            heads: 32,
            kv_heads: 8,
            experts: 8,
            experts_per_token: 2,
            max_positions: 32768,
        },
    ),
];

impl ModelDims {
    /// The dimensions of the preset called `name` (`tiny`, `small`, `mixtral-8x7b`).
    pub fn by_name(name: &str) -> Option<ModelDims> {
        PRESETS.iter().find(|(n, _)| *n == name).map(|(_, d)| *d)
    }

    /// The dimensions of `preset`.
    pub fn preset(preset: ModelPreset) -> ModelDims {
        Self::by_name(preset.as_str()).expect("every ModelPreset is in PRESETS")
    }

    /// Size of one head (every preset has `hidden = heads x head_dim`).
    pub fn head_dim(&self) -> u64 {
        self.hidden / self.heads
    }

    /// Width of the key (and of the value) projection: `kv_heads x head_dim`.
    pub fn kv_dim(&self) -> u64 {
        self.kv_heads * self.head_dim()
    }

    /// Parameters of the attention projections of one layer: q and o are `hidden x hidden`,
    /// k and v are `kv_dim x hidden`.
    pub fn attention_params(&self) -> u64 {
        2 * self.hidden * self.hidden + 2 * self.kv_dim() * self.hidden
    }

    /// Parameters of one expert's w1, w2 and w3 (`intermediate x hidden` each).
    pub fn expert_params(&self) -> u64 {
        3 * self.hidden * self.intermediate
    }

    /// Parameters of one layer's linear weights (attention + every expert): what quantization
    /// applies to.
    pub fn layer_linear_params(&self) -> u64 {
        self.attention_params() + self.experts * self.expert_params()
    }

    /// Parameters kept in 16 bits whatever the precision: token embeddings, the untied lm_head,
    /// the RMSNorm weights (two per layer and the final one) and the routers.
    pub fn unquantized_params(&self) -> u64 {
        2 * self.vocab * self.hidden
            + (2 * self.layers + 1) * self.hidden
            + self.layers * self.experts * self.hidden
    }

    /// Every parameter (what `MixtralConfig::num_parameters` counts).
    pub fn total_params(&self) -> u64 {
        self.layers * self.layer_linear_params() + self.unquantized_params()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixtral_8x7b_has_46_7_billion_parameters() {
        let d = ModelDims::preset(ModelPreset::Mixtral8x7b);
        // attention 2*4096^2 + 2*1024*4096 = 41,943,040; experts 8 * 3*4096*14336 = 1,409,286,144;
        // norms 2*4096, router 8*4096 per layer; embeddings + lm_head 2*32000*4096; final norm.
        assert_eq!(d.attention_params(), 41_943_040);
        assert_eq!(d.layers * d.layer_linear_params(), 46_439_333_888);
        assert_eq!(d.unquantized_params(), 262_144_000 + 266_240 + 1_048_576);
        assert_eq!(d.total_params(), 46_702_792_704);
        assert_eq!(d.head_dim(), 128);
    }

    #[test]
    fn every_preset_is_found_by_its_name_and_has_whole_heads() {
        for p in [ModelPreset::Tiny, ModelPreset::Small, ModelPreset::Mixtral8x7b] {
            let d = ModelDims::preset(p);
            assert_eq!(d.head_dim() * d.heads, d.hidden, "{}", p.as_str());
        }
        assert_eq!(ModelDims::by_name("tiny").unwrap().hidden, 128);
        assert!(ModelDims::by_name("llama").is_none());
    }
}
