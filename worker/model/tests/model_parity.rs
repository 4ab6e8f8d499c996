// Parity with the reference implementation: logits of a tiny random Mixtral computed by
// Hugging Face transformers (and with a PEFT adapter) — the fixture written by
// bench/golden_mixtral.py — must match this crate's forward pass.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use sapllm_model::hf_io::load_model;
use sapllm_model::mixtral::ModelOptions;
use sapllm_model::peft::load_adapter;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_mixtral")
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

fn golden() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture().join("golden.safetensors"), &Device::Cpu).unwrap()
}

#[test]
fn logits_match_transformers() {
    let g = golden();
    let ids = g["input_ids"].to_dtype(DType::U32).unwrap();
    let m = load_model(&fixture(), &ModelOptions::default(), &Device::Cpu).unwrap();
    let logits = m.forward(&ids, None).unwrap().logits;
    assert_eq!(logits.dims(), g["logits"].dims());
    let d = max_diff(&logits, &g["logits"]);
    assert!(d < 1e-4, "max |logits - transformers| = {d}");
}

#[test]
fn left_padded_logits_match_transformers() {
    let g = golden();
    let ids = g["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = &g["attention_mask"];
    let m = load_model(&fixture(), &ModelOptions::default(), &Device::Cpu).unwrap();
    let logits = m.forward(&ids, Some(mask)).unwrap().logits;
    // Compare real (unpadded) positions only: padded queries are garbage in both.
    let rows = mask.to_dtype(DType::U32).unwrap().to_vec2::<u32>().unwrap();
    for (b, row) in rows.iter().enumerate() {
        for (t, &keep) in row.iter().enumerate() {
            if keep == 0 {
                continue;
            }
            let a = logits.get(b).unwrap().get(t).unwrap();
            let e = g["logits_masked"].get(b).unwrap().get(t).unwrap();
            let d = max_diff(&a, &e);
            assert!(d < 1e-4, "row {b} position {t}: max diff {d}");
        }
    }
}

#[test]
fn peft_adapter_from_python_matches() {
    let g = golden();
    let ids = g["input_ids"].to_dtype(DType::U32).unwrap();
    let mut m = load_model(&fixture(), &ModelOptions::default(), &Device::Cpu).unwrap();
    load_adapter(&mut m, &fixture().join("adapter")).unwrap();
    let logits = m.forward(&ids, None).unwrap().logits;
    let d = max_diff(&logits, &g["logits_lora"]);
    assert!(d < 1e-4, "max |logits - transformers+peft| = {d}");
    // And the adapter matters: without it, the base logits come back.
    m.set_adapter_enabled(false);
    assert!(max_diff(&m.forward(&ids, None).unwrap().logits, &g["logits"]) < 1e-4);
}
