//! Mixtral hyper-parameters: parsed from a Hugging Face `config.json` or taken from a preset.
//!
//! Real config.json files vary between transformers versions: `sliding_window` may be `null`,
//! `head_dim` may be `null` or absent (then it is `hidden_size / num_attention_heads`), and
//! transformers 5 moves `rope_theta` into `rope_parameters`. Parsing accepts all of these and
//! names the field when a required one is missing or malformed.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

/// The architecture hyper-parameters of a Mixtral model (HF `MixtralConfig` field names).
#[derive(Debug, Clone, PartialEq)]
pub struct MixtralConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// `None`: full causal attention.
    pub sliding_window: Option<usize>,
    pub num_local_experts: usize,
    pub num_experts_per_tok: usize,
    pub router_aux_loss_coef: f64,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    pub initializer_range: f64,
}

/// Named model sizes for from-scratch training and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// ~3M parameters: CPU tests and the embedded default.
    Tiny,
    /// ~200M parameters.
    Small,
    /// The real Mixtral-8x7B dimensions (46.7B parameters).
    #[serde(rename = "mixtral-8x7b")]
    Mixtral8x7b,
}

impl std::str::FromStr for Preset {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tiny" => Ok(Preset::Tiny),
            "small" => Ok(Preset::Small),
            "mixtral-8x7b" | "mixtral_8x7b" => Ok(Preset::Mixtral8x7b),
            other => bail!("unknown model preset {other:?} (expected tiny, small or mixtral-8x7b)"),
        }
    }
}

impl MixtralConfig {
    /// The configuration of a preset. `vocab_size` is the tokenizer's size for from-scratch
    /// presets (the tokenizer is trained first); Mixtral-8x7B ignores it and uses 32000.
    pub fn preset(preset: Preset, vocab_size: usize) -> Self {
        match preset {
            // 4 layers x (attention 4*128*128 + 4 experts x 3*128*256) ≈ 2.8M + embeddings.
            Preset::Tiny => MixtralConfig {
                vocab_size,
                hidden_size: 128,
                intermediate_size: 256,
                num_hidden_layers: 4,
                num_attention_heads: 4,
                num_key_value_heads: 2,
                head_dim: 32,
                max_position_embeddings: 1024,
                rms_norm_eps: 1e-5,
                rope_theta: 10_000.0,
                sliding_window: None,
                num_local_experts: 4,
                num_experts_per_tok: 2,
                router_aux_loss_coef: 0.02,
                tie_word_embeddings: false,
                bos_token_id: None,
                eos_token_id: None,
                pad_token_id: None,
                initializer_range: 0.02,
            },
            // 8 layers x (attention 2.6M + 8 experts x 3*512*1536=18.9M) ≈ 172M + embeddings.
            Preset::Small => MixtralConfig {
                vocab_size,
                hidden_size: 512,
                intermediate_size: 1536,
                num_hidden_layers: 8,
                num_attention_heads: 8,
                num_key_value_heads: 4,
                head_dim: 64,
                max_position_embeddings: 2048,
                rms_norm_eps: 1e-5,
                rope_theta: 1_000_000.0,
                sliding_window: None,
                num_local_experts: 8,
                num_experts_per_tok: 2,
                router_aux_loss_coef: 0.02,
                tie_word_embeddings: false,
                bos_token_id: None,
                eos_token_id: None,
                pad_token_id: None,
                initializer_range: 0.02,
            },
            Preset::Mixtral8x7b => MixtralConfig {
                vocab_size: 32000,
                hidden_size: 4096,
                intermediate_size: 14336,
                num_hidden_layers: 32,
                num_attention_heads: 32,
                num_key_value_heads: 8,
                head_dim: 128,
                max_position_embeddings: 32768,
                rms_norm_eps: 1e-5,
                rope_theta: 1_000_000.0,
                sliding_window: None,
                num_local_experts: 8,
                num_experts_per_tok: 2,
                router_aux_loss_coef: 0.02,
                tie_word_embeddings: false,
                bos_token_id: Some(1),
                eos_token_id: Some(2),
                pad_token_id: None,
                initializer_range: 0.02,
            },
        }
    }

    /// A micro model (hidden 32, 2 layers, 4 experts) for unit tests: builds and runs a
    /// forward+backward in milliseconds even in a debug build.
    pub fn micro(vocab_size: usize) -> Self {
        MixtralConfig {
            vocab_size,
            hidden_size: 32,
            intermediate_size: 48,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 8,
            max_position_embeddings: 256,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            sliding_window: None,
            num_local_experts: 4,
            num_experts_per_tok: 2,
            router_aux_loss_coef: 0.02,
            tie_word_embeddings: false,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
            pad_token_id: None,
            initializer_range: 0.2,
        }
    }

    /// Reads and parses `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_json_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Parses the text of a Hugging Face `config.json`.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).context("config.json is not valid JSON")?;
        let obj = v.as_object().context("config.json must be a JSON object")?;
        let hidden_size = req_usize(obj, "hidden_size")?;
        let num_attention_heads = req_usize(obj, "num_attention_heads")?;
        if num_attention_heads == 0 {
            bail!("config field `num_attention_heads` must be > 0");
        }
        let head_dim = opt_usize(obj, "head_dim")?.unwrap_or(hidden_size / num_attention_heads);
        let num_key_value_heads = opt_usize(obj, "num_key_value_heads")?.unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            bail!(
                "config field `num_key_value_heads` ({num_key_value_heads}) must divide \
                 `num_attention_heads` ({num_attention_heads})"
            );
        }
        // transformers 5 writes rope_parameters: {rope_theta, rope_type}; older files rope_theta.
        let rope_theta = match opt_f64(obj, "rope_theta")? {
            Some(t) => t,
            None => match obj.get("rope_parameters") {
                Some(Value::Object(rp)) => opt_f64(rp, "rope_theta")?.unwrap_or(1e6),
                _ => 1e6,
            },
        };
        if let Some(Value::Object(rp)) = obj.get("rope_parameters")
            && let Some(t) = rp.get("rope_type").and_then(Value::as_str)
            && t != "default"
        {
            bail!("config field `rope_parameters.rope_type` = {t:?} is not supported (only \"default\")");
        }
        let cfg = MixtralConfig {
            vocab_size: req_usize(obj, "vocab_size")?,
            hidden_size,
            intermediate_size: req_usize(obj, "intermediate_size")?,
            num_hidden_layers: req_usize(obj, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: opt_usize(obj, "max_position_embeddings")?.unwrap_or(4096 * 32),
            rms_norm_eps: opt_f64(obj, "rms_norm_eps")?.unwrap_or(1e-5),
            rope_theta,
            sliding_window: opt_usize(obj, "sliding_window")?,
            num_local_experts: opt_usize(obj, "num_local_experts")?.unwrap_or(8),
            num_experts_per_tok: opt_usize(obj, "num_experts_per_tok")?.unwrap_or(2),
            router_aux_loss_coef: opt_f64(obj, "router_aux_loss_coef")?.unwrap_or(0.001),
            tie_word_embeddings: match obj.get("tie_word_embeddings") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(other) => bail!("config field `tie_word_embeddings` must be a boolean, got {other}"),
            },
            bos_token_id: opt_token_id(obj, "bos_token_id")?,
            eos_token_id: opt_token_id(obj, "eos_token_id")?,
            pad_token_id: opt_token_id(obj, "pad_token_id")?,
            initializer_range: opt_f64(obj, "initializer_range")?.unwrap_or(0.02),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks internal consistency (every field positive, top-k within the expert count).
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("head_dim", self.head_dim),
            ("num_local_experts", self.num_local_experts),
            ("num_experts_per_tok", self.num_experts_per_tok),
        ] {
            if v == 0 {
                bail!("config field `{name}` must be > 0");
            }
        }
        if !self.head_dim.is_multiple_of(2) {
            bail!("config field `head_dim` ({}) must be even for rotary embeddings", self.head_dim);
        }
        if self.num_experts_per_tok > self.num_local_experts {
            bail!(
                "config field `num_experts_per_tok` ({}) exceeds `num_local_experts` ({})",
                self.num_experts_per_tok,
                self.num_local_experts
            );
        }
        Ok(())
    }

    /// The config.json transformers writes for this configuration (loadable by
    /// `MixtralForCausalLM.from_pretrained`).
    pub fn to_hf_json(&self) -> Value {
        json!({
            "architectures": ["MixtralForCausalLM"],
            "model_type": "mixtral",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "sliding_window": self.sliding_window,
            "num_local_experts": self.num_local_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "router_aux_loss_coef": self.router_aux_loss_coef,
            "output_router_logits": false,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "initializer_range": self.initializer_range,
            "hidden_act": "silu",
            "attention_dropout": 0.0,
            "torch_dtype": "float32",
        })
    }

    /// Writes config.json into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join("config.json");
        let text = serde_json::to_string_pretty(&self.to_hf_json())?;
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Total number of parameters (embeddings and lm_head included).
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let attn = h * self.num_attention_heads * self.head_dim * 2
            + h * self.num_key_value_heads * self.head_dim * 2;
        let moe = self.num_local_experts * 3 * h * self.intermediate_size + self.num_local_experts * h;
        let per_layer = attn + moe + 2 * h;
        let emb = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { self.vocab_size * h };
        emb + head + h + self.num_hidden_layers * per_layer
    }
}

fn req_usize(obj: &Map<String, Value>, key: &str) -> Result<usize> {
    opt_usize(obj, key)?.with_context(|| format!("config field `{key}` is missing or null"))
}

fn opt_usize(obj: &Map<String, Value>, key: &str) -> Result<Option<usize>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(u) => Ok(Some(u as usize)),
            None => bail!("config field `{key}` must be a non-negative integer, got {n}"),
        },
        Some(other) => bail!("config field `{key}` must be an integer, got {other}"),
    }
}

fn opt_f64(obj: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(other) => bail!("config field `{key}` must be a number, got {other}"),
    }
}

/// Token ids may be an integer or (newer configs) a list; the first entry is used.
fn opt_token_id(obj: &Map<String, Value>, key: &str) -> Result<Option<u32>> {
    match obj.get(key) {
        Some(Value::Array(items)) => match items.first() {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_u64().map(|u| u as u32)),
            Some(other) => bail!("config field `{key}` must hold integers, got {other}"),
        },
        _ => Ok(opt_usize(obj, key)?.map(|u| u as u32)),
    }
}
