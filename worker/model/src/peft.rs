//! LoRA adapters in PEFT's on-disk layout, so they load in Python (`PeftModel.from_pretrained`)
//! and PEFT adapters load here:
//! - `adapter_config.json`: peft_type "LORA", task_type "CAUSAL_LM", r, lora_alpha, lora_dropout,
//!   target_modules, base_model_name_or_path (and modules_to_save when the router is trained);
//! - `adapter_model.safetensors`: `base_model.model.{module}.lora_A.weight` [r, in] and
//!   `.lora_B.weight` [out, r], e.g.
//!   `base_model.model.model.layers.0.block_sparse_moe.experts.3.w1.lora_A.weight`; a fully
//!   trained router is saved as `base_model.model.{...}.block_sparse_moe.gate.weight`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Tensor, Var};
use serde_json::{Value, json};

use super::linear::{BaseWeight, LoraAdapter, LoraConfig, Param};
use super::mixtral::Mixtral;

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
const PREFIX: &str = "base_model.model.";

/// Writes the model's adapters (and a trained router) into `dir` in PEFT layout.
pub fn save_adapter(model: &Mixtral, dir: &Path, base_model_name_or_path: &str) -> Result<()> {
    let lcfg = model.opts.lora.as_ref().context("the model has no LoRA adapters to save")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (name, var) in model.lora_vars() {
        tensors.push((format!("{PREFIX}{name}"), var.as_tensor().to_dtype(DType::F32)?));
    }
    let router = model.router_vars();
    for (name, var) in &router {
        tensors.push((format!("{PREFIX}{name}"), var.as_tensor().to_dtype(DType::F32)?));
    }
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": lcfg.r,
        "lora_alpha": lcfg.alpha,
        "lora_dropout": lcfg.dropout,
        "target_modules": lcfg.target_modules,
        "base_model_name_or_path": base_model_name_or_path,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": if router.is_empty() { Value::Null } else { json!(["gate"]) },
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
    });
    let cfg_path = dir.join(ADAPTER_CONFIG);
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&config)?)
        .with_context(|| format!("writing {}", cfg_path.display()))?;
    let path = dir.join(ADAPTER_WEIGHTS);
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::tensor::serialize_to_file(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(meta), &path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Reads `adapter_config.json` into a [`LoraConfig`] (plus whether rsLoRA scaling is used).
pub fn read_adapter_config(dir: &Path) -> Result<(LoraConfig, bool)> {
    let path = dir.join(ADAPTER_CONFIG);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let peft_type = v.get("peft_type").and_then(Value::as_str).unwrap_or("LORA");
    ensure!(peft_type == "LORA", "{}: peft_type {peft_type:?} is not supported (only LORA)", path.display());
    let r = v
        .get("r")
        .and_then(Value::as_u64)
        .with_context(|| format!("{}: field `r` missing", path.display()))? as usize;
    let alpha = v.get("lora_alpha").and_then(Value::as_f64).unwrap_or(8.0);
    let dropout = v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0);
    let mut targets = match v.get("target_modules") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| t.as_str().map(String::from).context("target_modules entry is not a string"))
            .collect::<Result<Vec<_>>>()?,
        Some(Value::String(s)) => {
            bail!("{}: target_modules as a regex ({s:?}) is not supported; list module names", path.display())
        }
        _ => bail!("{}: field `target_modules` missing", path.display()),
    };
    // transformers 5's router is a parameter, not a Linear: PEFT then lists it under
    // `target_parameters` as "gate.weight" (same A/B shapes and math as a Linear adapter).
    if let Some(Value::Array(params)) = v.get("target_parameters") {
        for p in params {
            match p.as_str() {
                Some("gate.weight") => targets.push("gate".to_string()),
                other => bail!(
                    "{}: target_parameters entry {other:?} is not supported (fused-expert adapters; \
                     target the per-expert w1/w2/w3 modules instead)",
                    path.display()
                ),
            }
        }
    }
    if v.get("use_dora").and_then(Value::as_bool).unwrap_or(false) {
        bail!("{}: DoRA adapters are not supported", path.display());
    }
    let rslora = v.get("use_rslora").and_then(Value::as_bool).unwrap_or(false);
    let cfg = LoraConfig { r, alpha, dropout, target_modules: targets };
    cfg.validate().with_context(|| format!("{}", path.display()))?;
    Ok((cfg, rslora))
}

/// Loads a PEFT adapter from `dir` into `model`, replacing any adapters it had.
pub fn load_adapter(model: &mut Mixtral, dir: &Path) -> Result<()> {
    let (cfg, rslora) = read_adapter_config(dir)?;
    let path = dir.join(ADAPTER_WEIGHTS);
    let device = model.device().clone();
    let mut tensors = candle_core::safetensors::load(&path, &device)
        .with_context(|| format!("reading {}", path.display()))?;
    // Some writers keep the adapter name ("default") in the key; transformers 5 names the MoE
    // block `mlp` where the Hub layout says `block_sparse_moe`.
    let keys: Vec<String> = tensors.keys().cloned().collect();
    for k in keys {
        let norm = k.replace(".default.", ".").replace(".mlp.gate.", ".block_sparse_moe.gate.");
        if norm != k {
            let t = tensors.remove(&k).expect("listed");
            tensors.insert(norm, t);
        }
    }
    let scaling = if rslora { cfg.alpha / (cfg.r as f64).sqrt() } else { cfg.scaling() };
    let train_router = model.opts.train_router;
    for (module, hf, lin) in model.linears_mut() {
        if module == "gate"
            && let Some(t) = tensors.remove(&format!("{PREFIX}{hf}.weight"))
        {
            let (o, i) = lin.base.dims();
            ensure!(
                t.dims() == [o, i],
                "`{PREFIX}{hf}.weight` has shape {:?}, expected [{o}, {i}]",
                t.dims()
            );
            let t = t.to_dtype(DType::F32)?;
            lin.base = BaseWeight::Dense(if train_router { Param::trainable(&t)? } else { Param::frozen(t) });
        }
        if !cfg.targets(module) {
            lin.lora = None;
            continue;
        }
        let (out, inp) = lin.base.dims();
        let mut take = |which: &str, shape: [usize; 2]| -> Result<Var> {
            let key = format!("{PREFIX}{hf}.{which}.weight");
            let t =
                tensors.remove(&key).with_context(|| format!("{} lacks tensor `{key}`", path.display()))?;
            ensure!(t.dims() == shape, "`{key}` has shape {:?}, expected {shape:?}", t.dims());
            Ok(Var::from_tensor(&t.to_dtype(DType::F32)?)?)
        };
        let a = take("lora_A", [cfg.r, inp])?;
        let b = take("lora_B", [out, cfg.r])?;
        lin.lora = Some(LoraAdapter { a, b, scaling, dropout: cfg.dropout });
    }
    if !tensors.is_empty() {
        let mut extra: Vec<&String> = tensors.keys().collect();
        extra.sort();
        bail!(
            "{} has {} tensors this model has no place for, e.g. `{}`",
            path.display(),
            extra.len(),
            extra[0]
        );
    }
    model.opts.lora = Some(cfg);
    Ok(())
}
