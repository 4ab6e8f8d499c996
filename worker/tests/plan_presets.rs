//! The operator plans memory from `sapllm_crds::plan::dims::PRESETS`; the worker builds models
//! from `MixtralConfig::preset`. The two tables must agree, or the operator refuses (or admits)
//! runs on wrong figures.

use sapllm_crds::plan::dims::{PRESET_BPE_VOCAB, PRESETS};

#[test]
fn the_plans_tokenizer_size_is_pretrains_default() {
    assert_eq!(
        PRESET_BPE_VOCAB as usize,
        sapllm_worker::pretrain::PretrainConfig::new(Default::default(), Default::default(), Preset::Tiny)
            .vocab_size
    );
}
use sapllm_model::config::{MixtralConfig, Preset};

#[test]
fn the_operators_preset_table_is_the_models() {
    for (name, d) in PRESETS {
        let preset: Preset = name.parse().unwrap();
        // tiny and small take the tokenizer's size (the plan assumes the default BPE's).
        let c = MixtralConfig::preset(preset, d.vocab as usize);
        let got = (
            c.vocab_size as u64,
            c.hidden_size as u64,
            c.intermediate_size as u64,
            c.num_hidden_layers as u64,
            c.num_attention_heads as u64,
            c.num_key_value_heads as u64,
            c.num_local_experts as u64,
            c.num_experts_per_tok as u64,
            c.max_position_embeddings as u64,
        );
        let want = (
            d.vocab,
            d.hidden,
            d.intermediate,
            d.layers,
            d.heads,
            d.kv_heads,
            d.experts,
            d.experts_per_token,
            d.max_positions,
        );
        assert_eq!(got, want, "preset {name}");
    }
}
