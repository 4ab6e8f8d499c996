// PEFT's fused-expert adapter layout (transformers 5, PEFT >= 0.18: `target_parameters` on
// `experts.gate_up_proj` / `experts.down_proj` and `gate.weight`), checked against the fixture
// PEFT 0.21 wrote (bench/peft_fused_fixture.py): a native fused adapter and PEFT's conversion of
// a per-expert one load with PEFT's logits; a fused save has PEFT's key names, shapes, values and
// rank/alpha patterns; save -> load in either layout gives identical logits.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sapllm_model::config::MixtralConfig;
use sapllm_model::hf_io::load_model;
use sapllm_model::linear::LoraConfig;
use sapllm_model::mixtral::{Mixtral, ModelOptions};
use sapllm_model::peft::{AdapterLayout, load_adapter, read_adapter_config, save_adapter_as};

fn base() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_mixtral")
}

fn fixture() -> PathBuf {
    base().join("peft_fused")
}

fn golden() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture().join("golden.safetensors"), &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

fn tiny() -> Mixtral {
    load_model(&base(), &ModelOptions::default(), &Device::Cpu).unwrap()
}

fn logits(m: &Mixtral, ids: &Tensor) -> Tensor {
    m.forward(ids, None).unwrap().logits
}

fn ids() -> Tensor {
    golden()["input_ids"].to_dtype(DType::U32).unwrap()
}

fn weights(dir: &Path) -> BTreeMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu)
        .unwrap()
        .into_iter()
        .collect()
}

fn config(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json")).unwrap()).unwrap()
}

fn strings(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn numbers(v: &serde_json::Value) -> BTreeMap<String, f64> {
    v.as_object().unwrap().iter().map(|(k, x)| (k.clone(), x.as_f64().unwrap())).collect()
}

/// Same tensor names, shapes and values, and the same PEFT settings.
fn assert_same_adapter(ours: &Path, peft: &Path) {
    let (a, b) = (weights(ours), weights(peft));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "tensor names");
    for (k, t) in &a {
        assert_eq!(t.dims(), b[k].dims(), "{k}");
        assert_eq!(max_diff(t, &b[k]), 0.0, "{k}");
    }
    let (ca, cb) = (config(ours), config(peft));
    for f in
        ["peft_type", "task_type", "r", "lora_dropout", "use_rslora", "use_dora", "bias", "fan_in_fan_out"]
    {
        assert_eq!(
            ca[f].as_f64().map(|x| x.to_string()).unwrap_or(ca[f].to_string()),
            cb[f].as_f64().map(|x| x.to_string()).unwrap_or(cb[f].to_string()),
            "{f}"
        );
    }
    assert_eq!(ca["lora_alpha"].as_f64(), cb["lora_alpha"].as_f64());
    for f in ["target_modules", "target_parameters"] {
        assert_eq!(strings(&ca[f]), strings(&cb[f]), "{f}");
    }
    for f in ["rank_pattern", "alpha_pattern"] {
        assert_eq!(numbers(&ca[f]), numbers(&cb[f]), "{f}");
    }
}

#[test]
fn native_fused_adapter_matches_peft() {
    let mut m = tiny();
    load_adapter(&mut m, &fixture().join("fused")).unwrap();
    let d = max_diff(&logits(&m, &ids()), &golden()["logits_fused"]);
    assert!(d < 1e-4, "max |logits - transformers 5 + peft fused| = {d}");
    // gate_up's one A per expert: w1 and w3 both rank r, same A, B split by rows.
    let ex = &m.layers[1].block_sparse_moe.experts[2];
    let (w1, w3) = (ex.w1.lora.as_ref().unwrap(), ex.w3.lora.as_ref().unwrap());
    assert_eq!(w1.a.dims(), &[4, 32]);
    assert_eq!(w1.b.dims(), &[48, 4]);
    assert_eq!(max_diff(w1.a.as_tensor(), w3.a.as_tensor()), 0.0);
    assert_eq!(ex.w2.lora.as_ref().unwrap().a.dims(), &[4, 48]);
    let (cfg, rslora) = read_adapter_config(&fixture().join("fused")).unwrap();
    assert!(!rslora);
    let mut t = cfg.target_modules.clone();
    t.sort();
    assert_eq!(t, ["gate", "k_proj", "o_proj", "q_proj", "v_proj", "w1", "w2", "w3"]);
    // The experts' part is what this checks: without it the logits are far off.
    for (module, _, lin) in m.linears_mut() {
        if matches!(module, "w1" | "w2" | "w3") {
            lin.lora = None;
        }
    }
    assert!(max_diff(&logits(&m, &ids()), &golden()["logits_fused"]) > 1e-2);
}

#[test]
fn peft_conversion_of_a_per_expert_adapter_loads_back_at_rank_r() {
    let (mut conv, mut per) = (tiny(), tiny());
    load_adapter(&mut conv, &fixture().join("converted")).unwrap();
    load_adapter(&mut per, &fixture().join("per_expert")).unwrap();
    let g = golden();
    for (name, m) in [("converted", &conv), ("per_expert", &per)] {
        let d = max_diff(&logits(m, &ids()), &g["logits_per_expert"]);
        assert!(d < 1e-4, "{name}: max |logits - PEFT| = {d}");
    }
    // The block-diagonal rank-2r gate_up comes back as the rank-r w1 and w3 it was made of.
    for (lc, lp) in conv.lora_vars().iter().zip(per.lora_vars().iter()) {
        assert_eq!(lc.0, lp.0);
        assert_eq!(lc.1.dims(), lp.1.dims(), "{}", lc.0);
        assert_eq!(max_diff(lc.1.as_tensor(), lp.1.as_tensor()), 0.0, "{}", lc.0);
    }
}

#[test]
fn fused_save_is_what_peft_writes() {
    // sapllm's per-expert adapter saved fused == PEFT's own conversion of it (converted/).
    let dir = tempfile::tempdir().unwrap();
    let mut m = tiny();
    load_adapter(&mut m, &fixture().join("per_expert")).unwrap();
    save_adapter_as(&m, dir.path(), "tiny", AdapterLayout::Fused).unwrap();
    assert_same_adapter(dir.path(), &fixture().join("converted"));
    // A native fused adapter saved fused again: the same tensors (shared-A form, rank r).
    let dir2 = tempfile::tempdir().unwrap();
    let mut f = tiny();
    load_adapter(&mut f, &fixture().join("fused")).unwrap();
    save_adapter_as(&f, dir2.path(), "tiny", AdapterLayout::Fused).unwrap();
    let (a, b) = (weights(dir2.path()), weights(&fixture().join("fused")));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, t) in &a {
        assert_eq!(max_diff(t, &b[k]), 0.0, "{k}");
    }
    let c = config(dir2.path());
    assert_eq!(c["rank_pattern"], serde_json::json!({}));
    assert_eq!(
        strings(&c["target_parameters"]),
        ["down_proj", "gate.weight", "gate_up_proj"].map(String::from).into()
    );
}

#[test]
fn either_layout_round_trips_exactly() {
    let dir = tempfile::tempdir().unwrap();
    for start in ["fused", "per_expert", "converted"] {
        let mut m = tiny();
        load_adapter(&mut m, &fixture().join(start)).unwrap();
        let want = logits(&m, &ids());
        for layout in [AdapterLayout::Fused, AdapterLayout::PerExpert] {
            let out = dir.path().join(format!("{start}-{layout}"));
            save_adapter_as(&m, &out, "tiny", layout).unwrap();
            let mut r = tiny();
            load_adapter(&mut r, &out).unwrap();
            assert_eq!(max_diff(&logits(&r, &ids()), &want), 0.0, "{start} saved {layout}");
        }
    }
}

#[test]
fn trained_adapters_round_trip_through_the_fused_layout() {
    // Independent w1/w3 adapters (as after training), a fully trained router and attention:
    // the fused save is block-diagonal (rank 2r, alpha 2 alpha) and loads back exactly.
    let cfg = MixtralConfig::micro(64);
    let lora = LoraConfig { r: 3, alpha: 6.0, dropout: 0.05, ..LoraConfig::default() };
    let opts = ModelOptions { lora: Some(lora), train_router: true, ..Default::default() };
    let m = Mixtral::new_random(&cfg, &opts, &Device::Cpu).unwrap();
    m.randomize_lora_b(0.05, 7).unwrap();
    let ids =
        Tensor::from_vec((0..24u32).map(|i| (i * 7 + 3) % 64).collect(), (2, 12), &Device::Cpu).unwrap();
    let want = logits(&m, &ids);
    let dir = tempfile::tempdir().unwrap();
    save_adapter_as(&m, dir.path(), "micro", AdapterLayout::Fused).unwrap();
    let c = config(dir.path());
    assert_eq!(c["rank_pattern"][".*\\.gate_up_proj"], 6);
    assert_eq!(c["alpha_pattern"][".*\\.gate_up_proj"].as_f64(), Some(12.0));
    assert_eq!(c["lora_dropout"].as_f64(), Some(0.0));
    assert_eq!(c["modules_to_save"], serde_json::json!(["gate"]));
    let w = weights(dir.path());
    let (e, h, i) = (cfg.num_local_experts, cfg.hidden_size, cfg.intermediate_size);
    assert_eq!(w["base_model.model.model.layers.0.mlp.experts.base_layer.lora_A.weight"].dims(), &[6 * e, h]);
    assert_eq!(
        w["base_model.model.model.layers.0.mlp.experts.base_layer.lora_B.weight"].dims(),
        &[2 * i, 6 * e]
    );
    assert_eq!(w["base_model.model.model.layers.0.mlp.experts.lora_A.weight"].dims(), &[3 * e, i]);
    assert_eq!(w["base_model.model.model.layers.0.mlp.experts.lora_B.weight"].dims(), &[h, 3 * e]);
    assert_eq!(w["base_model.model.model.layers.0.mlp.gate.lora_B.weight"].dims(), &[e, 3]);
    assert!(w.contains_key("base_model.model.model.layers.0.mlp.gate.weight"));
    let mut r =
        Mixtral::new_random(&cfg, &ModelOptions { train_router: true, ..Default::default() }, &Device::Cpu)
            .unwrap();
    load_adapter(&mut r, dir.path()).unwrap();
    assert_eq!(max_diff(&logits(&r, &ids), &want), 0.0);
    for (a, b) in m.lora_vars().iter().zip(r.lora_vars().iter()) {
        assert_eq!(a.0, b.0);
        assert_eq!(max_diff(a.1.as_tensor(), b.1.as_tensor()), 0.0, "{}", a.0);
    }
    assert_eq!(r.router_vars().len(), cfg.num_hidden_layers);
}

#[test]
fn fused_adapter_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture().join("fused");
    std::fs::copy(src.join("adapter_model.safetensors"), dir.path().join("adapter_model.safetensors"))
        .unwrap();
    let mut c = config(&src);
    c["target_parameters"] = serde_json::json!(["experts.gate_up_proj", "gate.weight"]);
    std::fs::write(dir.path().join("adapter_config.json"), c.to_string()).unwrap();
    let err = load_adapter(&mut tiny(), dir.path()).unwrap_err().to_string();
    assert!(err.contains("does not target"), "{err}");
    c["target_parameters"] = serde_json::json!(["experts.gate_up_proj", "experts.down_proj", "gate.weight"]);
    c["rank_pattern"] = serde_json::json!({"down_proj": 8});
    std::fs::write(dir.path().join("adapter_config.json"), c.to_string()).unwrap();
    let err = load_adapter(&mut tiny(), dir.path()).unwrap_err().to_string();
    assert!(err.contains("rank 4 per expert where the config"), "{err}");
    c["rank_pattern"] = serde_json::json!({});
    c["target_parameters"] =
        serde_json::json!(["experts.gate_up_proj", "experts.down_proj", "lm_head.weight"]);
    std::fs::write(dir.path().join("adapter_config.json"), c.to_string()).unwrap();
    let err = load_adapter(&mut tiny(), dir.path()).unwrap_err().to_string();
    assert!(err.contains("lm_head.weight"), "{err}");
}

#[test]
fn mixed_ranks_are_written_as_rank_and_alpha_patterns() {
    // w1 at rank 5 / alpha 10 (same scaling 2 as the config's r 3 / alpha 6): the per-expert
    // layout says so in rank_pattern/alpha_pattern, the fused one as a rank-8 gate_up_proj.
    use rand::SeedableRng;
    use sapllm_model::linear::LoraAdapter;
    let cfg = MixtralConfig::micro(64);
    let lora = LoraConfig { r: 3, alpha: 6.0, dropout: 0.0, ..LoraConfig::default() };
    let mut m =
        Mixtral::new_random(&cfg, &ModelOptions { lora: Some(lora), ..Default::default() }, &Device::Cpu)
            .unwrap();
    let wide = LoraConfig { r: 5, alpha: 10.0, dropout: 0.0, ..LoraConfig::default() };
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for (module, _, lin) in m.linears_mut() {
        if module == "w1" {
            let (out, inp) = lin.base.dims();
            lin.lora = Some(LoraAdapter::new(inp, out, &wide, &mut rng, &Device::Cpu).unwrap());
        }
    }
    m.randomize_lora_b(0.05, 3).unwrap();
    let ids =
        Tensor::from_vec((0..24u32).map(|i| (i * 5 + 1) % 64).collect(), (2, 12), &Device::Cpu).unwrap();
    let want = logits(&m, &ids);
    let dir = tempfile::tempdir().unwrap();
    let fresh = || Mixtral::new_random(&cfg, &ModelOptions::default(), &Device::Cpu).unwrap();

    let per = dir.path().join("per");
    save_adapter_as(&m, &per, "micro", AdapterLayout::PerExpert).unwrap();
    let c = config(&per);
    assert_eq!(numbers(&c["rank_pattern"]), [("w1".to_string(), 5.0)].into());
    assert_eq!(numbers(&c["alpha_pattern"]), [("w1".to_string(), 10.0)].into());
    let mut r = fresh();
    load_adapter(&mut r, &per).unwrap();
    assert_eq!(max_diff(&logits(&r, &ids), &want), 0.0);

    let fused = dir.path().join("fused");
    save_adapter_as(&m, &fused, "micro", AdapterLayout::Fused).unwrap();
    let c = config(&fused);
    assert_eq!(numbers(&c["rank_pattern"]), [(".*\\.gate_up_proj".to_string(), 8.0)].into());
    assert_eq!(numbers(&c["alpha_pattern"]), [(".*\\.gate_up_proj".to_string(), 16.0)].into());
    let mut r = fresh();
    load_adapter(&mut r, &fused).unwrap();
    // Not the r-3 split PEFT's conversion makes: w1 and w3 each keep the whole rank-8 block row
    // (exact math; zeros in the product can only reorder float sums).
    let ex = &r.layers[0].block_sparse_moe.experts[0];
    assert_eq!(ex.w1.lora.as_ref().unwrap().a.dims(), &[8, cfg.hidden_size]);
    let d = max_diff(&logits(&r, &ids), &want);
    assert!(d < 1e-5, "fused mixed-rank round trip differs by {d}");
    // ... and that model saves per-expert with its ranks in the patterns, and loads again.
    let again = dir.path().join("again");
    save_adapter_as(&r, &again, "micro", AdapterLayout::PerExpert).unwrap();
    let c = config(&again);
    assert_eq!(numbers(&c["rank_pattern"]), [("w1".to_string(), 8.0), ("w3".to_string(), 8.0)].into());
    let mut r2 = fresh();
    load_adapter(&mut r2, &again).unwrap();
    assert_eq!(max_diff(&logits(&r2, &ids), &logits(&r, &ids)), 0.0);
}

#[test]
fn fused_adapter_merges_into_the_base_for_serving() {
    use sapllm_model::linear::Precision;
    let mut m = tiny();
    load_adapter(&mut m, &fixture().join("fused")).unwrap();
    m.merge_adapters(Precision::F32).unwrap();
    assert!(m.lora_vars().is_empty());
    let d = max_diff(&logits(&m, &ids()), &golden()["logits_fused"]);
    assert!(d < 1e-4, "merged fused adapter: max |logits - PEFT| = {d}");
}
