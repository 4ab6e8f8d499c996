// Checkpoint, adapter and config I/O: save -> reload gives identical logits (single file,
// sharded, NF4 in bitsandbytes layout), PEFT key names, merge == unmerged, config tolerance.

use candle_core::{DType, Device, Tensor};
use sapllm_model::config::MixtralConfig;
use sapllm_model::hf_io::{INDEX_FILE, SaveOptions, load_model, save_model};
use sapllm_model::linear::{LoraConfig, Precision};
use sapllm_model::mixtral::{Mixtral, ModelOptions};
use sapllm_model::peft::{load_adapter, save_adapter};

const VOCAB: usize = 64;

fn ids() -> Tensor {
    let v: Vec<u32> = (0..24u32).map(|i| (i * 7 + 3) % VOCAB as u32).collect();
    Tensor::from_vec(v, (2, 12), &Device::Cpu).unwrap()
}

fn logits(m: &Mixtral) -> Tensor {
    m.forward(&ids(), None).unwrap().logits
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

/// RMS of the difference over RMS of `a`.
fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let rms = |t: &Tensor| t.sqr().unwrap().mean_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
    rms(&(a - b).unwrap()) / rms(a)
}

fn random_model(opts: &ModelOptions) -> Mixtral {
    Mixtral::new_random(&MixtralConfig::micro(VOCAB), opts, &Device::Cpu).unwrap()
}

#[test]
fn save_and_reload_gives_identical_logits() {
    let dir = tempfile::tempdir().unwrap();
    let m = random_model(&ModelOptions::default());
    save_model(&m, dir.path(), &SaveOptions::default()).unwrap();
    assert!(dir.path().join("model.safetensors").exists());
    assert!(!dir.path().join(INDEX_FILE).exists());
    let r = load_model(dir.path(), &ModelOptions::default(), &Device::Cpu).unwrap();
    assert_eq!(r.cfg, m.cfg);
    assert_eq!(max_diff(&logits(&m), &logits(&r)), 0.0);
}

#[test]
fn sharded_save_and_reload() {
    let dir = tempfile::tempdir().unwrap();
    let m = random_model(&ModelOptions::default());
    save_model(&m, dir.path(), &SaveOptions { max_shard_bytes: 64 * 1024, ..Default::default() }).unwrap();
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(INDEX_FILE)).unwrap()).unwrap();
    let map = index["weight_map"].as_object().unwrap();
    let mut files: Vec<&str> = map.values().map(|v| v.as_str().unwrap()).collect();
    files.sort();
    files.dedup();
    assert!(files.len() >= 2, "expected several shards, got {files:?}");
    assert!(files[0].starts_with("model-00001-of-"));
    assert!(map.contains_key("model.layers.1.block_sparse_moe.experts.3.w2.weight"));
    assert!(index["metadata"]["total_size"].as_u64().unwrap() > 0);
    let r = load_model(dir.path(), &ModelOptions::default(), &Device::Cpu).unwrap();
    assert_eq!(max_diff(&logits(&m), &logits(&r)), 0.0);
}

#[test]
fn missing_tensor_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let m = random_model(&ModelOptions::default());
    save_model(&m, dir.path(), &SaveOptions::default()).unwrap();
    // Rewrite the file without one tensor.
    let path = dir.path().join("model.safetensors");
    let mut t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    t.remove("model.layers.1.self_attn.k_proj.weight");
    candle_core::safetensors::save(&t, &path).unwrap();
    let err = load_model(dir.path(), &ModelOptions::default(), &Device::Cpu).unwrap_err();
    assert!(format!("{err:#}").contains("model.layers.1.self_attn.k_proj.weight"), "{err:#}");
}

#[test]
fn nf4_quantized_at_load_and_saved_in_bitsandbytes_layout() {
    let dir = tempfile::tempdir().unwrap();
    // Realistic weight scale (std 0.02): NF4's ~10% per-weight error then moves logits ~6%.
    let cfg = MixtralConfig { initializer_range: 0.02, ..MixtralConfig::micro(VOCAB) };
    let m = Mixtral::new_random(&cfg, &ModelOptions::default(), &Device::Cpu).unwrap();
    save_model(&m, dir.path(), &SaveOptions::default()).unwrap();
    let nf4 = ModelOptions { precision: Precision::Nf4, ..Default::default() };
    let q = load_model(dir.path(), &nf4, &Device::Cpu).unwrap();
    let (bytes, params) = q.linear_storage();
    let bits = bytes as f64 * 8.0 / params as f64;
    assert!(bits < 4.3, "NF4 bits/param {bits}");
    // Quantization changes logits a little, not a lot.
    let d = rel_diff(&logits(&m), &logits(&q));
    assert!(d > 0.0 && d < 0.12, "NF4 vs f32 logits differ by {d} (relative RMS)");
    // Save in bitsandbytes layout and reload: bit-identical to the quantized model.
    let qdir = tempfile::tempdir().unwrap();
    save_model(&q, qdir.path(), &SaveOptions { keep_nf4: true, ..Default::default() }).unwrap();
    let st = candle_core::safetensors::load(qdir.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let w = "model.layers.0.self_attn.q_proj.weight";
    assert_eq!(st[w].dtype(), DType::U8);
    for s in
        [".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", ".quant_state.bitsandbytes__nf4"]
    {
        assert!(st.contains_key(&format!("{w}{s}")), "missing {w}{s}");
    }
    let r = load_model(qdir.path(), &nf4, &Device::Cpu).unwrap();
    assert_eq!(max_diff(&logits(&q), &logits(&r)), 0.0);
}

#[test]
fn int8_and_bf16_bases_stay_close_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    let m = random_model(&ModelOptions::default());
    save_model(&m, dir.path(), &SaveOptions::default()).unwrap();
    for (prec, dtype, tol) in [(Precision::Int8, DType::F32, 0.05), (Precision::Bf16, DType::BF16, 0.1)] {
        let r = load_model(
            dir.path(),
            &ModelOptions { precision: prec, dtype, ..Default::default() },
            &Device::Cpu,
        )
        .unwrap();
        let d = rel_diff(&logits(&m), &logits(&r).to_dtype(DType::F32).unwrap());
        assert!(d < tol, "{prec:?}: logits differ by {d}");
    }
}

fn lora() -> LoraConfig {
    LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, ..LoraConfig::default() }
}

#[test]
fn peft_adapter_save_load_key_names() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ModelOptions { lora: Some(lora()), ..Default::default() };
    let m = random_model(&opts);
    m.randomize_lora_b(0.05, 1).unwrap();
    save_adapter(&m, dir.path(), "sapllm/tiny").unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8.0);
    assert_eq!(cfg["base_model_name_or_path"], "sapllm/tiny");
    let st =
        candle_core::safetensors::load(dir.path().join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    let a = &st["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"];
    assert_eq!(a.dims(), &[4, 32]);
    let b = &st["base_model.model.model.layers.1.block_sparse_moe.experts.3.w2.lora_B.weight"];
    assert_eq!(b.dims(), &[32, 4]);
    assert!(st.contains_key("base_model.model.model.layers.1.block_sparse_moe.gate.lora_A.weight"));
    assert_eq!(st.len(), 2 * (4 + 1 + 12) * 2);
    // A model with the same base and a fresh adapter, then the loaded one: identical logits.
    let mut r = random_model(&ModelOptions::default());
    load_adapter(&mut r, dir.path()).unwrap();
    assert_eq!(max_diff(&logits(&m), &logits(&r)), 0.0);
}

#[test]
fn merged_adapter_equals_unmerged_forward() {
    let opts = ModelOptions { lora: Some(lora()), ..Default::default() };
    let m = random_model(&opts);
    m.randomize_lora_b(0.05, 2).unwrap();
    let mut merged = m.clone();
    merged.merge_adapters(Precision::F32).unwrap();
    assert!(merged.lora_vars().is_empty());
    let d = max_diff(&logits(&m), &logits(&merged));
    assert!(d < 1e-4, "merged differs by {d}");
    // Against the base: the adapter does change the model.
    m.set_adapter_enabled(false);
    assert!(max_diff(&logits(&m), &logits(&merged)) > 1e-3);
}

#[test]
fn config_json_tolerates_nulls_absent_keys_and_rope_parameters() {
    let text = r#"{
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
        "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": null, "sliding_window": null,
        "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
        "eos_token_id": [2, 3]
    }"#;
    let c = MixtralConfig::from_json_str(text).unwrap();
    assert_eq!(c.head_dim, 128);
    assert_eq!(c.sliding_window, None);
    assert_eq!(c.rope_theta, 1e6);
    assert_eq!(c.num_local_experts, 8);
    assert_eq!(c.eos_token_id, Some(2));
    assert_eq!(c.rms_norm_eps, 1e-5);
    let with_window = text.replace("\"sliding_window\": null", "\"sliding_window\": 4096");
    assert_eq!(MixtralConfig::from_json_str(&with_window).unwrap().sliding_window, Some(4096));
    // Round trip through our own writer.
    let again = MixtralConfig::from_json_str(&c.to_hf_json().to_string()).unwrap();
    assert_eq!(again, c);
    // A missing required key is named.
    let err = MixtralConfig::from_json_str(&text.replace("\"intermediate_size\": 14336,", "")).unwrap_err();
    assert!(err.to_string().contains("intermediate_size"), "{err}");
    let err =
        MixtralConfig::from_json_str(&text.replace("\"hidden_size\": 4096", "\"hidden_size\": \"big\""))
            .unwrap_err();
    assert!(err.to_string().contains("hidden_size"), "{err}");
}
