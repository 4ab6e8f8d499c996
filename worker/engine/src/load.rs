//! Building an [`Engine`] from disk: a base model directory (HF layout or a preset checkpoint:
//! `config.json` + safetensors + `tokenizer.json`), an optional PEFT adapter merged into the
//! base, at a serving precision.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::DType;
use serde::Serialize;

use super::engine::{Engine, EngineConfig};
use sapllm_model::hf_io::load_model;
use sapllm_model::linear::Precision;
use sapllm_model::mixtral::ModelOptions;
use sapllm_model::peft::load_adapter;
use sapllm_model::tokenizer::{TOKENIZER_FILE, Tokenizer};
use sapllm_sap::catalog::Catalog;

/// Serving precision as the CLI names it (`int4` is NF4).
pub fn parse_precision(s: &str) -> Result<Precision> {
    match s.to_ascii_lowercase().as_str() {
        "int4" | "nf4" => Ok(Precision::Nf4),
        "int8" => Ok(Precision::Int8),
        "bf16" => Ok(Precision::Bf16),
        "f32" | "fp32" => Ok(Precision::F32),
        other => bail!("unknown precision {other:?} (expected int8, int4, bf16 or f32)"),
    }
}

/// What is loaded, for `/v1/models` and logs.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub base: String,
    pub adapter: Option<String>,
    /// The adapter's version: the name of its directory (runs write `adapter/<step>` or a tag).
    pub adapter_version: Option<String>,
    pub precision: String,
    pub parameters: usize,
    pub vocab_size: usize,
    /// Where it computes: `cpu` or `cuda:N` (`--device`).
    pub device: String,
}

/// Loads base + adapter, merging the adapter (computed in f32, then stored at `precision`, so
/// the adapter is folded in before any rounding).
pub fn load_engine(
    base: &Path,
    adapter: Option<&Path>,
    precision: Precision,
    catalog: Catalog,
    mut config: EngineConfig,
) -> Result<(Engine, ModelInfo)> {
    let device = sapllm_model::device::selected();
    // Render prompts as the model was trained to read them (the adapter's profile wins).
    config.prompt = match adapter {
        Some(a) if a.join(super::profile::PROFILE_FILE).exists() => super::profile::PromptProfile::load(a)?,
        _ => super::profile::PromptProfile::load(base)?,
    };
    let tokenizer = match adapter.filter(|a| a.join(TOKENIZER_FILE).exists()) {
        Some(a) => Tokenizer::from_dir(a)?,
        None => Tokenizer::from_dir(base)
            .with_context(|| format!("loading the tokenizer of {}", base.display()))?,
    };
    let load_precision = if adapter.is_some() { Precision::F32 } else { precision };
    let opts = ModelOptions { precision: load_precision, dtype: DType::F32, ..ModelOptions::default() };
    let mut model = load_model(base, &opts, &device)
        .with_context(|| format!("loading the base model {}", base.display()))?;
    if let Some(dir) = adapter {
        load_adapter(&mut model, dir).with_context(|| format!("loading the adapter {}", dir.display()))?;
        model.merge_adapters(precision).context("merging the adapter")?;
    }
    let info = ModelInfo {
        base: base.display().to_string(),
        adapter: adapter.map(|a| a.display().to_string()),
        adapter_version: adapter.and_then(|a| a.file_name()).map(|n| n.to_string_lossy().into_owned()),
        precision: format!("{precision:?}").to_lowercase(),
        parameters: model.cfg.num_parameters(),
        vocab_size: model.cfg.vocab_size,
        device: sapllm_model::device::describe(&device),
    };
    // The CPU fast paths (plain-slice forward, fused kernels) are CPU code.
    config.decode.path = config.decode.path.for_device(&device);
    Ok((Engine::new(model, tokenizer, catalog, config)?, info))
}

/// `PathBuf` helper for optional CLI paths.
pub fn opt_path(p: &Option<PathBuf>) -> Option<&Path> {
    p.as_deref()
}
