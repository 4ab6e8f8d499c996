//! Whole-model checkpoints in Hugging Face layout: `config.json` + `model.safetensors`, or
//! `model-0000i-of-0000N.safetensors` shards with `model.safetensors.index.json`.
//!
//! Loading streams shard by shard: each shard is memory-mapped, its tensors are converted to the
//! requested precision one at a time (NF4/int8 quantization happens here), and the shard is
//! unmapped before the next, so peak memory is the converted model plus one tensor, never the
//! full-precision model. Accepted tensor layouts:
//! - the Hub's per-expert Mixtral names (`block_sparse_moe.experts.E.w1.weight`, ...);
//! - transformers 5's fused experts (`mlp.experts.gate_up_proj` [E, 2I, H],
//!   `mlp.experts.down_proj` [E, H, I], `mlp.gate.weight`);
//! - bitsandbytes NF4-prequantized linears (`weight` + `weight.absmax`, `weight.quant_map`,
//!   `weight.nested_absmax`, `weight.nested_quant_map`, `weight.quant_state.bitsandbytes__nf4`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::config::MixtralConfig;
use super::linear::{BaseWeight, Precision};
use super::mixtral::{LoadedWeight, Mixtral, ModelOptions, WeightKind};
use crate::quant::nf4::Nf4Tensor;

/// Name of the single-file checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of the shard index.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// How a checkpoint is written.
#[derive(Debug, Clone)]
pub struct SaveOptions {
    /// Dtype of dense tensors (F32 or BF16).
    pub dtype: DType,
    /// Start a new shard once this many bytes are in the current one.
    pub max_shard_bytes: usize,
    /// Write NF4 bases in bitsandbytes' layout (else dequantized to `dtype`).
    pub keep_nf4: bool,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions { dtype: DType::F32, max_shard_bytes: 2 << 30, keep_nf4: false }
    }
}

/// Which kind a checkpoint tensor name is, by HF naming.
pub fn weight_kind(name: &str) -> WeightKind {
    if name.ends_with("block_sparse_moe.gate.weight") {
        WeightKind::Router
    } else if name.contains(".self_attn.") && name.ends_with("_proj.weight")
        || name.contains(".experts.")
            && (name.ends_with(".w1.weight") || name.ends_with(".w2.weight") || name.ends_with(".w3.weight"))
    {
        WeightKind::Linear
    } else {
        WeightKind::Dense
    }
}

fn dtype_name(dt: DType) -> &'static str {
    match dt {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
}

/// The tensors of a model as HF names them (bases only; adapters are saved by `peft.rs`).
fn named_tensors(model: &Mixtral, opts: &SaveOptions) -> Result<Vec<(String, Tensor)>> {
    let dt = opts.dtype;
    let mut out: Vec<(String, Tensor)> = Vec::new();
    out.push(("model.embed_tokens.weight".into(), model.embed_tokens.tensor().to_dtype(dt)?));
    let linears = model.linears();
    let mut by_layer: BTreeMap<usize, Vec<(String, &super::linear::Linear)>> = BTreeMap::new();
    for (_, path, lin) in linears {
        let l: usize = path.split('.').nth(2).and_then(|s| s.parse().ok()).context("layer index")?;
        by_layer.entry(l).or_default().push((path, lin));
    }
    for (l, layer) in model.layers.iter().enumerate() {
        let p = format!("model.layers.{l}");
        out.push((
            format!("{p}.input_layernorm.weight"),
            layer.input_layernorm.weight.tensor().to_dtype(dt)?,
        ));
        out.push((
            format!("{p}.post_attention_layernorm.weight"),
            layer.post_attention_layernorm.weight.tensor().to_dtype(dt)?,
        ));
        for (path, lin) in by_layer.remove(&l).unwrap_or_default() {
            let name = format!("{path}.weight");
            match &lin.base {
                BaseWeight::Nf4(q) if opts.keep_nf4 => {
                    let dev = q.packed.device();
                    let packed = q.packed_bytes()?;
                    let n = packed.len();
                    out.push((name.clone(), Tensor::from_vec(packed, (n, 1), dev)?));
                    let qa = q.qabsmax_bytes()?;
                    let na = qa.len();
                    out.push((format!("{name}.absmax"), Tensor::from_vec(qa, na, dev)?));
                    out.push((format!("{name}.quant_map"), q.code.clone()));
                    out.push((format!("{name}.nested_absmax"), q.nested_absmax.flatten_all()?));
                    out.push((format!("{name}.nested_quant_map"), q.nested_code.clone()));
                    let state = serde_json::to_vec(&q.quant_state_json(dtype_name(dt)))?;
                    let ns = state.len();
                    out.push((
                        format!("{name}.quant_state.bitsandbytes__nf4"),
                        Tensor::from_vec(state, ns, dev)?,
                    ));
                }
                base => out.push((name, base.weight(dt)?)),
            }
        }
    }
    out.push(("model.norm.weight".into(), model.norm.weight.tensor().to_dtype(dt)?));
    if let Some(h) = &model.lm_head {
        out.push(("lm_head.weight".into(), h.tensor().to_dtype(dt)?));
    }
    Ok(out)
}

/// Saves `config.json` and the weights (sharded above `max_shard_bytes`) into `dir`.
pub fn save_model(model: &Mixtral, dir: &Path, opts: &SaveOptions) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cfg_json = model.cfg.to_hf_json();
    cfg_json["torch_dtype"] = dtype_name(opts.dtype).into();
    if opts.keep_nf4 && model.linears().iter().any(|(_, _, l)| matches!(l.base, BaseWeight::Nf4(_))) {
        cfg_json["quantization_config"] = serde_json::json!({
            "quant_method": "bitsandbytes",
            "load_in_4bit": true,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_use_double_quant": true,
            "bnb_4bit_compute_dtype": dtype_name(opts.dtype),
        });
    }
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg_json)?)
        .with_context(|| format!("writing {}", cfg_path.display()))?;

    let tensors = named_tensors(model, opts)?;
    // Plan shards by size, keeping a weight and its quantization state together.
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut cur = 0usize;
    let mut total = 0usize;
    for (i, (name, t)) in tensors.iter().enumerate() {
        let bytes = t.elem_count() * t.dtype().size_in_bytes();
        let is_aux = name.contains(".weight.");
        if cur > 0 && cur + bytes > opts.max_shard_bytes && !is_aux {
            shards.push(Vec::new());
            cur = 0;
        }
        shards.last_mut().expect("non-empty").push(i);
        cur += bytes;
        total += bytes;
    }
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    // Remove stale files of an earlier save with another shard count.
    for entry in std::fs::read_dir(dir)?.flatten() {
        let n = entry.file_name().to_string_lossy().to_string();
        if n == SINGLE_FILE || n == INDEX_FILE || (n.starts_with("model-") && n.ends_with(".safetensors")) {
            std::fs::remove_file(entry.path())?;
        }
    }
    if shards.len() == 1 {
        let path = dir.join(SINGLE_FILE);
        let data = tensors.iter().map(|(n, t)| (n.as_str(), t));
        safetensors::tensor::serialize_to_file(data, Some(meta), &path)
            .with_context(|| format!("writing {}", path.display()))?;
        return Ok(());
    }
    let n = shards.len();
    let mut weight_map = BTreeMap::new();
    for (s, idxs) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", s + 1, n);
        let path = dir.join(&file);
        let data = idxs.iter().map(|&i| (tensors[i].0.as_str(), &tensors[i].1));
        safetensors::tensor::serialize_to_file(data, Some(meta.clone()), &path)
            .with_context(|| format!("writing {}", path.display()))?;
        for &i in idxs {
            weight_map.insert(tensors[i].0.clone(), file.clone());
        }
    }
    let index = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
    let path = dir.join(INDEX_FILE);
    std::fs::write(&path, serde_json::to_string_pretty(&index)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The weight files of a checkpoint directory (from the index when sharded).
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(INDEX_FILE);
    if index.exists() {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&index).with_context(|| format!("reading {}", index.display()))?,
        )
        .with_context(|| format!("parsing {}", index.display()))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .with_context(|| format!("{} has no weight_map", index.display()))?;
        let mut files: Vec<String> = map
            .values()
            .filter_map(|f| f.as_str().map(String::from))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        files.sort();
        let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
        for f in &files {
            ensure!(f.exists(), "shard {} named in {} is missing", f.display(), index.display());
        }
        return Ok(files);
    }
    let single = dir.join(SINGLE_FILE);
    ensure!(single.exists(), "{} has neither {SINGLE_FILE} nor {INDEX_FILE}", dir.display());
    Ok(vec![single])
}

const BNB_SUFFIXES: [&str; 5] =
    [".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", ".quant_state.bitsandbytes__nf4"];

/// Converts one checkpoint tensor for the model being built.
fn convert(t: Tensor, kind: WeightKind, opts: &ModelOptions) -> Result<LoadedWeight> {
    let trainable_dense = opts.train_base;
    Ok(match kind {
        WeightKind::Linear if !trainable_dense => {
            LoadedWeight::Base(BaseWeight::from_dense(&t, opts.precision, false)?)
        }
        WeightKind::Dense if !trainable_dense => LoadedWeight::Tensor(t.to_dtype(opts.dtype)?),
        _ => LoadedWeight::Tensor(t.to_dtype(DType::F32)?),
    })
}

/// Loads a checkpoint directory (config.json + safetensors) into a model built with `opts`.
pub fn load_model(dir: &Path, opts: &ModelOptions, device: &Device) -> Result<Mixtral> {
    let cfg = MixtralConfig::from_file(&dir.join("config.json"))?;
    load_model_with_config(dir, &cfg, opts, device)
}

/// As [`load_model`], with an explicit configuration.
pub fn load_model_with_config(
    dir: &Path,
    cfg: &MixtralConfig,
    opts: &ModelOptions,
    device: &Device,
) -> Result<Mixtral> {
    let files = weight_files(dir)?;
    // Header pass: which file holds which name (for bitsandbytes parts that may sit elsewhere).
    let mut routing: HashMap<String, usize> = HashMap::new();
    for (i, f) in files.iter().enumerate() {
        // SAFETY: the file is only read; a concurrent writer would be a user error.
        let st = unsafe { MmapedSafetensors::new(f) }.with_context(|| format!("opening {}", f.display()))?;
        for (name, _) in st.tensors() {
            routing.insert(name, i);
        }
    }
    let is_bnb = |name: &str| routing.contains_key(&format!("{name}.quant_state.bitsandbytes__nf4"));
    let mut loaded: HashMap<String, LoadedWeight> = HashMap::new();
    let (e, inter, h) = (cfg.num_local_experts, cfg.intermediate_size, cfg.hidden_size);
    for (i, f) in files.iter().enumerate() {
        // SAFETY: as above.
        let st = unsafe { MmapedSafetensors::new(f) }.with_context(|| format!("opening {}", f.display()))?;
        let mut names: Vec<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
        names.sort();
        for name in names {
            if BNB_SUFFIXES.iter().any(|s| name.ends_with(s)) {
                continue;
            }
            if is_bnb(&name) {
                let get = |suffix: &str| -> Result<Option<Tensor>> {
                    let key = format!("{name}{suffix}");
                    match routing.get(&key) {
                        None => Ok(None),
                        Some(&j) if j == i => Ok(Some(st.load(&key, device)?)),
                        Some(&j) => {
                            // SAFETY: as above.
                            let other = unsafe { MmapedSafetensors::new(&files[j]) }?;
                            Ok(Some(other.load(&key, device)?))
                        }
                    }
                };
                let q = Nf4Tensor::from_bnb(&name, &get, device)?;
                let base = BaseWeight::Nf4(q);
                let w = if weight_kind(&name) == WeightKind::Linear
                    && opts.precision == Precision::Nf4
                    && !opts.train_base
                {
                    LoadedWeight::Base(base)
                } else {
                    convert(base.weight(DType::F32)?, weight_kind(&name), opts)?
                };
                loaded.insert(name, w);
                continue;
            }
            let t = st
                .load(&name, device)
                .with_context(|| format!("loading tensor `{name}` from {}", f.display()))?;
            if let Some(prefix) = name.strip_suffix(".mlp.experts.gate_up_proj") {
                // [E, 2I, H]: rows 0..I are w1 (gate), I..2I are w3 (up).
                ensure!(
                    t.dims() == [e, 2 * inter, h],
                    "tensor `{name}` has shape {:?}, expected [{e}, {}, {h}]",
                    t.dims(),
                    2 * inter
                );
                for ex in 0..e {
                    let te = t.get(ex)?;
                    let base = format!("{prefix}.block_sparse_moe.experts.{ex}");
                    loaded.insert(
                        format!("{base}.w1.weight"),
                        convert(te.narrow(0, 0, inter)?.contiguous()?, WeightKind::Linear, opts)?,
                    );
                    loaded.insert(
                        format!("{base}.w3.weight"),
                        convert(te.narrow(0, inter, inter)?.contiguous()?, WeightKind::Linear, opts)?,
                    );
                }
            } else if let Some(prefix) = name.strip_suffix(".mlp.experts.down_proj") {
                ensure!(
                    t.dims() == [e, h, inter],
                    "tensor `{name}` has shape {:?}, expected [{e}, {h}, {inter}]",
                    t.dims()
                );
                for ex in 0..e {
                    let w2 = format!("{prefix}.block_sparse_moe.experts.{ex}.w2.weight");
                    loaded.insert(w2, convert(t.get(ex)?.contiguous()?, WeightKind::Linear, opts)?);
                }
            } else if let Some(prefix) = name.strip_suffix(".mlp.gate.weight") {
                loaded.insert(
                    format!("{prefix}.block_sparse_moe.gate.weight"),
                    convert(t, WeightKind::Router, opts)?,
                );
            } else {
                let kind = weight_kind(&name);
                loaded.insert(name, convert(t, kind, opts)?);
            }
        }
        drop(st);
    }
    let mut source = |name: &str, _shape: &[usize], _kind: WeightKind| -> Result<LoadedWeight> {
        loaded.remove(name).with_context(|| format!("checkpoint {} lacks tensor `{name}`", dir.display()))
    };
    let model = Mixtral::build(cfg, opts, device, &mut source)?;
    if !loaded.is_empty() {
        let mut extra: Vec<&String> = loaded.keys().collect();
        extra.sort();
        tracing::warn!(count = extra.len(), first = %extra[0], "checkpoint tensors not used by the model");
    }
    Ok(model)
}
