//! LoRA adapters in PEFT's on-disk layout, so they load in Python (`PeftModel.from_pretrained`)
//! and PEFT adapters load here. Two layouts ([`AdapterLayout`]), both read by [`load_adapter`]:
//!
//! **Per-expert** (the Hub's Mixtral names, transformers 4; what [`save_adapter`] writes):
//! - `adapter_config.json`: peft_type "LORA", task_type "CAUSAL_LM", r, lora_alpha, lora_dropout,
//!   target_modules, base_model_name_or_path (and modules_to_save when the router is trained);
//! - `adapter_model.safetensors`: `base_model.model.{module}.lora_A.weight` [r, in] and
//!   `.lora_B.weight` [out, r], e.g.
//!   `base_model.model.model.layers.0.block_sparse_moe.experts.3.w1.lora_A.weight`; a fully
//!   trained router is saved as `base_model.model.{...}.block_sparse_moe.gate.weight`.
//!
//! **Fused** (transformers 5, PEFT >= 0.18): the experts of a layer are the 3-D parameters
//! `mlp.experts.gate_up_proj` [E, 2I, H] (w1 rows, then w3 rows) and `mlp.experts.down_proj`
//! [E, H, I], the router the parameter `mlp.gate.weight` [E, H]; PEFT adapts them through
//! `target_parameters` (`lora.ParamWrapper`). With E experts and rank R, a fused parameter's
//! adapter is one `lora_A.weight` [E*R, in] and one `lora_B.weight` [out, E*R]: expert e's A is
//! rows `e*R..(e+1)*R` of lora_A, its B the columns `j*E + e` (j < R) of lora_B, and its delta
//! `scaling * B_e A_e`. Both wrappers sit on the `experts` module, nested: gate_up_proj inner
//! (`...mlp.experts.base_layer.lora_A.weight`), down_proj outer (`...mlp.experts.lora_A.weight`);
//! this reader tells them apart by shape. The router's adapter is `...mlp.gate.lora_A.weight`
//! [r, H] / `lora_B.weight` [E, r] (target parameter `gate.weight`).
//!
//! Loading maps a fused adapter onto the per-expert adapters this crate computes with, exactly:
//! gate_up's rows split into w1 (first I) and w3 (last I). A native fused adapter shares one A
//! between w1 and w3 of an expert, so w1 and w3 each get a rank-R adapter with (a copy of) that A
//! and their half of B. PEFT's conversion of a per-expert adapter (and a fused save of ours) is the
//! block-diagonal form at rank 2r, `A = [A1; A3]`, `B = [[B1, 0], [0, B3]]`, with
//! `rank_pattern`/`alpha_pattern` `2r`/`2 alpha` for gate_up_proj: when the off-diagonal blocks are
//! exactly zero it loads back as rank-r adapters on w1 and w3. Writing the fused layout does the
//! reverse (shared form when w1 and w3 of every expert have identical A, else block-diagonal);
//! `lora_dropout` is then written as 0, since PEFT refuses dropout on parameter targets.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Device, Tensor, Var};
use serde_json::{Map, Value, json};

use super::linear::{BaseWeight, LoraAdapter, LoraConfig, Param};
use super::mixtral::{Expert, Mixtral};

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
const PREFIX: &str = "base_model.model.";
const ATTENTION: [&str; 4] = ["q_proj", "k_proj", "v_proj", "o_proj"];

/// How the experts' adapters are written (the reader takes both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdapterLayout {
    /// One adapter per expert and projection (`block_sparse_moe.experts.E.w1`), the Hub's
    /// Mixtral names: what transformers 4 + PEFT read and write.
    #[default]
    PerExpert,
    /// transformers 5's fused expert parameters (`mlp.experts.gate_up_proj` / `down_proj`,
    /// `mlp.gate.weight`) as PEFT >= 0.18 writes them with `target_parameters`.
    Fused,
}

impl FromStr for AdapterLayout {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "per-expert" => Ok(AdapterLayout::PerExpert),
            "fused" => Ok(AdapterLayout::Fused),
            _ => bail!("unknown adapter layout {s:?} (per-expert or fused)"),
        }
    }
}

impl fmt::Display for AdapterLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AdapterLayout::PerExpert => "per-expert",
            AdapterLayout::Fused => "fused",
        })
    }
}

/// Writes the model's adapters (and a trained router) into `dir` in PEFT's per-expert layout.
pub fn save_adapter(model: &Mixtral, dir: &Path, base_model_name_or_path: &str) -> Result<()> {
    save_adapter_as(model, dir, base_model_name_or_path, AdapterLayout::PerExpert)
}

/// Writes the model's adapters (and a trained router) into `dir` in PEFT layout `layout`.
pub fn save_adapter_as(
    model: &Mixtral,
    dir: &Path,
    base_model_name_or_path: &str,
    layout: AdapterLayout,
) -> Result<()> {
    let lcfg = model.opts.lora.as_ref().context("the model has no LoRA adapters to save")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let fused = layout == AdapterLayout::Fused;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut ranks = RankTable::default();
    let mut target_parameters: Vec<&str> = Vec::new();
    for (module, path, lin) in model.linears() {
        let Some(l) = &lin.lora else { continue };
        let expert = matches!(module, "w1" | "w2" | "w3");
        if fused && expert {
            continue; // written per layer below
        }
        let (name, group, full) = if fused && module == "gate" {
            let p = path.replace(".block_sparse_moe.", ".mlp.");
            let full = format!("{p}.weight");
            (p, "gate.weight".to_string(), full)
        } else {
            (path.clone(), module.to_string(), path)
        };
        if fused && module == "gate" && !target_parameters.contains(&"gate.weight") {
            target_parameters.push("gate.weight");
        }
        tensors.push((format!("{PREFIX}{name}.lora_A.weight"), l.a.as_tensor().to_dtype(DType::F32)?));
        tensors.push((format!("{PREFIX}{name}.lora_B.weight"), l.b.as_tensor().to_dtype(DType::F32)?));
        ranks.add(&group, &full, l.a.dim(0)?, l.scaling * l.a.dim(0)? as f64);
    }
    if fused {
        for (l, layer) in model.layers.iter().enumerate() {
            let experts = &layer.block_sparse_moe.experts;
            let gate_up = fuse_gate_up(experts, l)?;
            let down = fuse_down(experts, l)?;
            let stem = format!("model.layers.{l}.mlp.experts");
            // PEFT nests the two ParamWrappers on `experts`: gate_up_proj inside, down_proj outside.
            let gate_up_name = if down.is_some() { format!("{stem}.base_layer") } else { stem.clone() };
            for (f, name, param) in
                [(gate_up, gate_up_name, "gate_up_proj"), (down, stem.clone(), "down_proj")]
            {
                let Some(f) = f else { continue };
                tensors.push((format!("{PREFIX}{name}.lora_A.weight"), f.a));
                tensors.push((format!("{PREFIX}{name}.lora_B.weight"), f.b));
                ranks.add(
                    &format!(".*\\.{param}"),
                    &format!("{stem}.{param}"),
                    f.rank,
                    f.scaling * f.rank as f64,
                );
                if !target_parameters.contains(&param) {
                    target_parameters.push(param);
                }
            }
        }
        target_parameters.sort_unstable();
    }
    let router = model.router_vars();
    for (name, var) in &router {
        let name = if fused { name.replace(".block_sparse_moe.", ".mlp.") } else { name.clone() };
        tensors.push((format!("{PREFIX}{name}"), var.as_tensor().to_dtype(DType::F32)?));
    }
    let (rank_pattern, alpha_pattern) = ranks.patterns(lcfg.r, lcfg.alpha);
    let target_modules: Vec<&String> = if fused {
        lcfg.target_modules.iter().filter(|t| ATTENTION.contains(&t.as_str())).collect()
    } else {
        lcfg.target_modules.iter().collect()
    };
    // PEFT's ParamWrapper refuses dropout: a fused adapter with parameter targets says 0.
    let dropout = if target_parameters.is_empty() { lcfg.dropout } else { 0.0 };
    let mut config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": lcfg.r,
        "lora_alpha": lcfg.alpha,
        "lora_dropout": dropout,
        "target_modules": target_modules,
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
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "revision": null,
    });
    if fused {
        config["target_parameters"] = json!(target_parameters);
    }
    let cfg_path = dir.join(ADAPTER_CONFIG);
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&config)?)
        .with_context(|| format!("writing {}", cfg_path.display()))?;
    let path = dir.join(ADAPTER_WEIGHTS);
    let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::tensor::serialize_to_file(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(meta), &path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Ranks and alphas of the written adapters, by pattern group (a module name such as `q_proj`,
/// or `.*\.gate_up_proj`) and full key; becomes `rank_pattern`/`alpha_pattern` wherever they
/// differ from the config's `r`/`lora_alpha`.
#[derive(Default)]
struct RankTable {
    /// (group, full key, rank, alpha) in the order written.
    rows: Vec<(String, String, usize, f64)>,
}

impl RankTable {
    fn add(&mut self, group: &str, full: &str, rank: usize, alpha: f64) {
        self.rows.push((group.to_string(), full.to_string(), rank, tidy(alpha)));
    }

    fn patterns(&self, r: usize, alpha: f64) -> (Map<String, Value>, Map<String, Value>) {
        let mut groups: Vec<&str> = Vec::new();
        for (g, ..) in &self.rows {
            if !groups.contains(&g.as_str()) {
                groups.push(g);
            }
        }
        let (mut ranks, mut alphas) = (Map::new(), Map::new());
        for g in groups {
            let rows: Vec<_> = self.rows.iter().filter(|row| row.0 == g).collect();
            if rows.iter().all(|row| row.2 == rows[0].2) {
                if rows[0].2 != r {
                    ranks.insert(g.to_string(), json!(rows[0].2));
                }
            } else {
                for row in rows.iter().filter(|row| row.2 != r) {
                    ranks.insert(escape(&row.1), json!(row.2));
                }
            }
            if rows.iter().all(|row| approx_eq(row.3, rows[0].3)) {
                if !approx_eq(rows[0].3, alpha) {
                    alphas.insert(g.to_string(), json!(rows[0].3));
                }
            } else {
                for row in rows.iter().filter(|row| !approx_eq(row.3, alpha)) {
                    alphas.insert(escape(&row.1), json!(row.3));
                }
            }
        }
        (ranks, alphas)
    }
}

/// `scaling * rank` comes back as alpha up to rounding: snap near-integers.
fn tidy(x: f64) -> f64 {
    if (x - x.round()).abs() <= 1e-9 * x.abs().max(1.0) { x.round() } else { x }
}

fn approx_eq(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// A module path as a PEFT pattern (a regex): dots escaped.
fn escape(key: &str) -> String {
    key.replace('.', "\\.")
}

/// One fused parameter's adapter: lora_A [E*R, in], lora_B [out, E*R].
struct Fused {
    a: Tensor,
    b: Tensor,
    rank: usize,
    scaling: f64,
}

/// Stacks per-expert (A_e [R, in], B_e [out, R]) into PEFT's fused lora_A / lora_B.
fn assemble(parts: Vec<(Tensor, Tensor, f64)>, layer: usize, what: &str) -> Result<Fused> {
    let rank = parts[0].0.dim(0)?;
    let scaling = parts[0].2;
    for (e, (a, _, s)) in parts.iter().enumerate() {
        ensure!(
            a.dim(0)? == rank && approx_eq(*s, scaling),
            "layer {layer}: expert {e}'s {what} adapter has rank {} / scaling {s}, expert 0's {rank} / \
             {scaling}: one fused parameter needs one rank and scaling",
            a.dim(0)?
        );
    }
    let a = Tensor::cat(&parts.iter().map(|p| &p.0).collect::<Vec<_>>(), 0)?;
    // [out, R, E] flattened: column j*E + e is expert e's column j (PEFT's reshape(out, R, E)).
    let b = Tensor::stack(&parts.iter().map(|p| &p.1).collect::<Vec<_>>(), 2)?;
    let out = b.dim(0)?;
    let b = b.reshape((out, rank * parts.len()))?;
    Ok(Fused { a, b, rank, scaling })
}

fn f32_of(v: &Var) -> Result<Tensor> {
    Ok(v.as_tensor().to_dtype(DType::F32)?)
}

/// A layer's w2 adapters as one down_proj adapter, if its experts have them.
fn fuse_down(experts: &[Expert], layer: usize) -> Result<Option<Fused>> {
    let n = experts.iter().filter(|e| e.w2.lora.is_some()).count();
    if n == 0 {
        return Ok(None);
    }
    ensure!(n == experts.len(), "layer {layer}: only {n} of {} experts have a w2 adapter", experts.len());
    let parts = experts
        .iter()
        .map(|e| {
            let l = e.w2.lora.as_ref().expect("counted");
            Ok((f32_of(&l.a)?, f32_of(&l.b)?, l.scaling))
        })
        .collect::<Result<Vec<_>>>()?;
    assemble(parts, layer, "down_proj").map(Some)
}

/// A layer's w1/w3 adapters as one gate_up_proj adapter (rows: w1's outputs, then w3's).
fn fuse_gate_up(experts: &[Expert], layer: usize) -> Result<Option<Fused>> {
    let n = experts.len();
    let n1 = experts.iter().filter(|e| e.w1.lora.is_some()).count();
    let n3 = experts.iter().filter(|e| e.w3.lora.is_some()).count();
    ensure!(
        (n1 == 0 || n1 == n) && (n3 == 0 || n3 == n),
        "layer {layer}: w1/w3 adapters on some experts only ({n1}/{n3} of {n})"
    );
    if n1 == 0 && n3 == 0 {
        return Ok(None);
    }
    // Shared form (what PEFT trains natively): w1 and w3 of every expert have the same A.
    let mut shared = n1 == n && n3 == n;
    if shared {
        for e in experts {
            let (g, u) = (e.w1.lora.as_ref().expect("n1"), e.w3.lora.as_ref().expect("n3"));
            if g.a.dims() != u.a.dims()
                || !approx_eq(g.scaling, u.scaling)
                || (f32_of(&g.a)? - f32_of(&u.a)?)?.abs()?.max_all()?.to_scalar::<f32>()? != 0.0
            {
                shared = false;
                break;
            }
        }
    }
    let mut parts = Vec::with_capacity(n);
    for e in experts {
        let part = match (&e.w1.lora, &e.w3.lora) {
            (Some(g), Some(u)) if shared => {
                (f32_of(&g.a)?, Tensor::cat(&[f32_of(&g.b)?, f32_of(&u.b)?], 0)?, g.scaling)
            }
            (Some(g), Some(u)) => {
                ensure!(
                    approx_eq(g.scaling, u.scaling),
                    "layer {layer}: w1 and w3 adapters scale differently ({} and {}): one gate_up_proj \
                     adapter has one scaling",
                    g.scaling,
                    u.scaling
                );
                let (b1, b3) = (f32_of(&g.b)?, f32_of(&u.b)?);
                let (r1, r3) = (b1.dim(1)?, b3.dim(1)?);
                let dev = b1.device();
                let top = Tensor::cat(&[&b1, &Tensor::zeros((b1.dim(0)?, r3), DType::F32, dev)?], 1)?;
                let bottom = Tensor::cat(&[&Tensor::zeros((b3.dim(0)?, r1), DType::F32, dev)?, &b3], 1)?;
                (Tensor::cat(&[f32_of(&g.a)?, f32_of(&u.a)?], 0)?, Tensor::cat(&[top, bottom], 0)?, g.scaling)
            }
            (Some(g), None) => {
                let b1 = f32_of(&g.b)?;
                let z = Tensor::zeros(b1.dims2()?, DType::F32, b1.device())?;
                (f32_of(&g.a)?, Tensor::cat(&[&b1, &z], 0)?, g.scaling)
            }
            (None, Some(u)) => {
                let b3 = f32_of(&u.b)?;
                let z = Tensor::zeros(b3.dims2()?, DType::F32, b3.device())?;
                (f32_of(&u.a)?, Tensor::cat(&[&z, &b3], 0)?, u.scaling)
            }
            (None, None) => unreachable!("all or none, checked above"),
        };
        parts.push(part);
    }
    assemble(parts, layer, "gate_up_proj").map(Some)
}

/// What `adapter_config.json` says, with PEFT's `rank_pattern` / `alpha_pattern`.
struct AdapterSpec {
    cfg: LoraConfig,
    rslora: bool,
    rank_pattern: Vec<(String, usize)>,
    alpha_pattern: Vec<(String, f64)>,
}

impl AdapterSpec {
    /// Rank and scaling of the module PEFT would know by any of `keys` (PEFT matches a pattern
    /// against the module's full name: `(.*\.)?(pattern)$`).
    fn rank_scaling(&self, keys: &[String]) -> (usize, f64) {
        let hit = |p: &str| keys.iter().any(|k| pattern_matches(p, k));
        let r = self.rank_pattern.iter().find(|(p, _)| hit(p)).map_or(self.cfg.r, |(_, r)| *r);
        let alpha = self.alpha_pattern.iter().find(|(p, _)| hit(p)).map_or(self.cfg.alpha, |(_, a)| *a);
        let scaling = if self.rslora { alpha / (r as f64).sqrt() } else { alpha / r as f64 };
        (r, scaling)
    }
}

/// The subset of Python regexes PEFT's patterns use in practice: a literal module name or path
/// (dots escaped or not), optionally after `.*`.
fn check_pattern(p: &str) -> Result<()> {
    let lit = p.strip_prefix(".*").unwrap_or(p).replace("\\.", ".");
    ensure!(
        !lit.is_empty() && !lit.contains(['*', '+', '?', '(', ')', '[', ']', '{', '}', '|', '^', '$', '\\']),
        "rank_pattern/alpha_pattern key {p:?} is a regex this reader does not support (use module names \
         or paths, optionally after `.*`)"
    );
    Ok(())
}

fn pattern_matches(p: &str, key: &str) -> bool {
    match p.strip_prefix(".*") {
        Some(rest) => key.ends_with(&rest.replace("\\.", ".")),
        None => {
            let lit = p.replace("\\.", ".");
            key == lit || key.ends_with(&format!(".{lit}"))
        }
    }
}

/// The per-expert modules a PEFT `target_parameters` entry adapts.
fn parameter_targets(p: &str) -> Option<&'static [&'static str]> {
    let last = p.rsplit('.').next().unwrap_or(p);
    if p == "gate.weight" || p.ends_with(".gate.weight") {
        Some(&["gate"])
    } else if last == "gate_up_proj" {
        Some(&["w1", "w3"])
    } else if last == "down_proj" {
        Some(&["w2"])
    } else {
        None
    }
}

fn read_spec(dir: &Path) -> Result<AdapterSpec> {
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
        Some(Value::Null) | None if v.get("target_parameters").is_some_and(Value::is_array) => Vec::new(),
        _ => bail!("{}: field `target_modules` missing", path.display()),
    };
    // transformers 5's router and experts are parameters, not Linears: PEFT lists them under
    // `target_parameters` (router "gate.weight", fused experts "gate_up_proj" / "down_proj").
    if let Some(Value::Array(params)) = v.get("target_parameters") {
        for p in params {
            let p = p.as_str().context("target_parameters entry is not a string")?;
            let modules = parameter_targets(p).with_context(|| {
                format!(
                    "{}: target_parameters entry {p:?} is not a Mixtral parameter this crate adapts \
                     (gate.weight, experts.gate_up_proj, experts.down_proj)",
                    path.display()
                )
            })?;
            targets.extend(modules.iter().map(|m| m.to_string()));
        }
    }
    let mut seen = std::collections::HashSet::new();
    targets.retain(|t| seen.insert(t.clone()));
    if v.get("use_dora").and_then(Value::as_bool).unwrap_or(false) {
        bail!("{}: DoRA adapters are not supported", path.display());
    }
    let rslora = v.get("use_rslora").and_then(Value::as_bool).unwrap_or(false);
    let pattern = |field: &str| -> Result<Vec<(String, f64)>> {
        let mut out = Vec::new();
        if let Some(Value::Object(m)) = v.get(field) {
            for (k, x) in m {
                check_pattern(k).with_context(|| format!("{}", path.display()))?;
                let x = x
                    .as_f64()
                    .with_context(|| format!("{}: {field}[{k:?}] is not a number", path.display()))?;
                out.push((k.clone(), x));
            }
        }
        Ok(out)
    };
    let rank_pattern = pattern("rank_pattern")?
        .into_iter()
        .map(|(k, x)| {
            ensure!(
                x >= 1.0 && x.fract() == 0.0,
                "{}: rank_pattern[{k:?}] = {x} is not a rank",
                path.display()
            );
            Ok((k, x as usize))
        })
        .collect::<Result<Vec<_>>>()?;
    let alpha_pattern = pattern("alpha_pattern")?;
    let cfg = LoraConfig { r, alpha, dropout, target_modules: targets };
    cfg.validate().with_context(|| format!("{}", path.display()))?;
    Ok(AdapterSpec { cfg, rslora, rank_pattern, alpha_pattern })
}

/// Reads `adapter_config.json` into a [`LoraConfig`] (plus whether rsLoRA scaling is used).
/// Fused-expert targets come back as the per-expert modules they cover (`w1`, `w3`, `w2`).
pub fn read_adapter_config(dir: &Path) -> Result<(LoraConfig, bool)> {
    let s = read_spec(dir)?;
    Ok((s.cfg, s.rslora))
}

/// `model.layers.{l}.mlp.experts[.base_layer]*.lora_{A,B}.weight` -> (l, stem, is A).
fn fused_key(k: &str) -> Option<(usize, String, bool)> {
    let rest = k.strip_prefix("model.layers.")?;
    let (l, rest) = rest.split_once('.')?;
    let l: usize = l.parse().ok()?;
    let rest =
        rest.strip_prefix("mlp.experts.").or_else(|| rest.strip_prefix("block_sparse_moe.experts."))?;
    let (stem, is_a) = match (rest.strip_suffix("lora_A.weight"), rest.strip_suffix("lora_B.weight")) {
        (Some(s), _) => (s, true),
        (_, Some(s)) => (s, false),
        _ => return None,
    };
    stem.split_terminator('.').all(|p| p == "base_layer").then(|| (l, stem.to_string(), is_a))
}

fn all_zero(t: &Tensor) -> Result<bool> {
    Ok(t.elem_count() == 0 || t.abs()?.max_all()?.to_scalar::<f32>()? == 0.0)
}

/// Takes the fused expert adapters out of `tensors` and returns the per-expert adapters they
/// equal, by per-expert HF path (`model.layers.{l}.block_sparse_moe.experts.{e}.w1`).
fn split_fused(
    tensors: &mut HashMap<String, Tensor>,
    model: &Mixtral,
    spec: &AdapterSpec,
    file: &Path,
) -> Result<HashMap<String, LoraAdapter>> {
    let (h, inter, n) = (model.cfg.hidden_size, model.cfg.intermediate_size, model.cfg.num_local_experts);
    let mut groups: Vec<(usize, String)> =
        tensors.keys().filter_map(|k| fused_key(k)).map(|(l, s, _)| (l, s)).collect();
    groups.sort();
    groups.dedup();
    let mut out = HashMap::new();
    let mut seen: HashMap<(usize, &str), String> = HashMap::new();
    for (l, stem) in groups {
        let name = |w: &str| format!("model.layers.{l}.mlp.experts.{stem}{w}.weight");
        let mut take = |w: &str| -> Result<Tensor> {
            let t = tensors
                .remove(&name(w))
                .or_else(|| tensors.remove(&name(w).replace(".mlp.", ".block_sparse_moe.")))
                .with_context(|| format!("{} lacks tensor `{PREFIX}{}`", file.display(), name(w)))?;
            Ok(t.to_dtype(DType::F32)?)
        };
        let (a, b) = (take("lora_A")?, take("lora_B")?);
        let key = name("lora_A");
        let ((re, inp), (out_f, re_b)) = (a.dims2()?, b.dims2()?);
        ensure!(
            re == re_b && re % n == 0 && re > 0,
            "`{PREFIX}{key}` [{re}, {inp}] and its lora_B [{out_f}, {re_b}] are not a fused adapter over {n} experts"
        );
        let param = match (inp, out_f) {
            (i, o) if i == h && o == 2 * inter => "gate_up_proj",
            (i, o) if i == inter && o == h => "down_proj",
            _ => bail!(
                "`{PREFIX}{key}` adapts a [{out_f}, {inp}] expert weight: neither gate_up_proj [{}, {h}] nor \
                 down_proj [{h}, {inter}]",
                2 * inter
            ),
        };
        if let Some(other) = seen.insert((l, param), key.clone()) {
            bail!("`{PREFIX}{key}` and `{PREFIX}{other}` both adapt layer {l}'s {param}");
        }
        let rank = re / n;
        let (r_cfg, scaling) = spec.rank_scaling(&[format!("model.layers.{l}.mlp.experts.{param}")]);
        ensure!(
            rank == r_cfg,
            "`{PREFIX}{key}` has rank {rank} per expert where the config (r / rank_pattern) says {r_cfg}"
        );
        let b3 = b.reshape((out_f, rank, n))?;
        let per: Vec<(Tensor, Tensor)> = (0..n)
            .map(|e| Ok((a.narrow(0, e * rank, rank)?, b3.narrow(2, e, 1)?.squeeze(2)?.contiguous()?)))
            .collect::<Result<_>>()?;
        let dropout = spec.cfg.dropout;
        let adapter = |a: Tensor, b: Tensor| -> Result<LoraAdapter> {
            Ok(LoraAdapter {
                a: Var::from_tensor(&a.contiguous()?)?,
                b: Var::from_tensor(&b.contiguous()?)?,
                scaling,
                dropout,
            })
        };
        let ep = |e: usize, w: &str| format!("model.layers.{l}.block_sparse_moe.experts.{e}.{w}");
        if param == "down_proj" {
            for (e, (a, b)) in per.into_iter().enumerate() {
                out.insert(ep(e, "w2"), adapter(a, b)?);
            }
            continue;
        }
        // Block-diagonal rank 2r (PEFT's conversion of per-expert w1/w3, or our fused save):
        // back to rank-r adapters on w1 and w3, exactly.
        let half = rank / 2;
        let mut block = rank % 2 == 0 && half == spec.cfg.r;
        for (_, b) in &per {
            if !block {
                break;
            }
            block = all_zero(&b.narrow(0, 0, inter)?.narrow(1, half, half)?)?
                && all_zero(&b.narrow(0, inter, inter)?.narrow(1, 0, half)?)?;
        }
        for (e, (a, b)) in per.into_iter().enumerate() {
            let (b1, b3) = (b.narrow(0, 0, inter)?, b.narrow(0, inter, inter)?);
            if block {
                out.insert(ep(e, "w1"), adapter(a.narrow(0, 0, half)?, b1.narrow(1, 0, half)?)?);
                out.insert(ep(e, "w3"), adapter(a.narrow(0, half, half)?, b3.narrow(1, half, half)?)?);
            } else {
                // One A shared by w1 and w3: each gets its own copy (a rank-`rank` adapter).
                out.insert(ep(e, "w1"), adapter(a.clone(), b1)?);
                out.insert(ep(e, "w3"), adapter(a, b3)?);
            }
        }
    }
    Ok(out)
}

/// Loads a PEFT adapter (per-expert or fused layout) from `dir` into `model`, replacing any
/// adapters it had.
pub fn load_adapter(model: &mut Mixtral, dir: &Path) -> Result<()> {
    let spec = read_spec(dir)?;
    let path = dir.join(ADAPTER_WEIGHTS);
    let device: Device = model.device().clone();
    let raw = candle_core::safetensors::load(&path, &device)
        .with_context(|| format!("reading {}", path.display()))?;
    // Keys without the `base_model.model.` prefix; some writers keep the adapter name
    // ("default") in the key; transformers 5 names the MoE block `mlp` where the Hub layout
    // says `block_sparse_moe`.
    let mut tensors: HashMap<String, Tensor> = HashMap::with_capacity(raw.len());
    for (k, t) in raw {
        let norm = k
            .strip_prefix(PREFIX)
            .unwrap_or(&k)
            .replace(".default.", ".")
            .replace(".mlp.gate.", ".block_sparse_moe.gate.");
        tensors.insert(norm, t);
    }
    let mut fused = split_fused(&mut tensors, model, &spec, &path)?;
    let cfg = spec.cfg.clone();
    let train_router = model.opts.train_router;
    for (module, hf, lin) in model.linears_mut() {
        if module == "gate"
            && let Some(t) = tensors.remove(&format!("{hf}.weight"))
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
        if let Some(ad) = fused.remove(&hf) {
            let (ra, ia) = ad.a.as_tensor().dims2()?;
            let (ob, rb) = ad.b.as_tensor().dims2()?;
            ensure!(
                ia == inp && ob == out && ra == rb,
                "the fused adapter of `{hf}` does not fit [{out}, {inp}]"
            );
            lin.lora = Some(ad);
            continue;
        }
        let mlp = hf.replace(".block_sparse_moe.", ".mlp.");
        let keys = [hf.clone(), format!("{mlp}.weight"), mlp];
        let (r, scaling) = spec.rank_scaling(&keys);
        let mut take = |which: &str, shape: [usize; 2]| -> Result<Var> {
            let key = format!("{hf}.{which}.weight");
            let t = tensors
                .remove(&key)
                .with_context(|| format!("{} lacks tensor `{PREFIX}{key}`", path.display()))?;
            ensure!(t.dims() == shape, "`{PREFIX}{key}` has shape {:?}, expected {shape:?}", t.dims());
            Ok(Var::from_tensor(&t.to_dtype(DType::F32)?)?)
        };
        let a = take("lora_A", [r, inp])?;
        let b = take("lora_B", [out, r])?;
        lin.lora = Some(LoraAdapter { a, b, scaling, dropout: cfg.dropout });
    }
    if !fused.is_empty() {
        let mut extra: Vec<&String> = fused.keys().collect();
        extra.sort();
        bail!(
            "{} has fused expert adapters the config does not target (target_parameters), e.g. for `{}`",
            path.display(),
            extra[0]
        );
    }
    if !tensors.is_empty() {
        let mut extra: Vec<&String> = tensors.keys().collect();
        extra.sort();
        bail!(
            "{} has {} tensors this model has no place for, e.g. `{PREFIX}{}`",
            path.display(),
            extra.len(),
            extra[0]
        );
    }
    model.opts.lora = Some(cfg);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_parses_and_prints() {
        for l in [AdapterLayout::PerExpert, AdapterLayout::Fused] {
            assert_eq!(l.to_string().parse::<AdapterLayout>().unwrap(), l);
        }
        assert!("fused-experts".parse::<AdapterLayout>().is_err());
        assert_eq!(AdapterLayout::default(), AdapterLayout::PerExpert);
    }

    #[test]
    fn peft_patterns_match_like_python() {
        // re.match(rf"(.*\.)?({key})$", name)
        assert!(pattern_matches(".*\\.gate_up_proj", "model.layers.0.mlp.experts.gate_up_proj"));
        assert!(pattern_matches("gate_up_proj", "model.layers.0.mlp.experts.gate_up_proj"));
        assert!(!pattern_matches("up_proj", "model.layers.0.mlp.experts.gate_up_proj"));
        assert!(pattern_matches("gate.weight", "model.layers.1.mlp.gate.weight"));
        assert!(pattern_matches(
            "model\\.layers\\.1\\.self_attn\\.q_proj",
            "model.layers.1.self_attn.q_proj"
        ));
        assert!(!pattern_matches(
            "model\\.layers\\.1\\.self_attn\\.q_proj",
            "model.layers.11.self_attn.q_proj"
        ));
        assert!(check_pattern(".*\\.gate_up_proj").is_ok());
        assert!(check_pattern("layers\\.(0|1)\\.q_proj").is_err());
    }

    #[test]
    fn fused_keys() {
        assert_eq!(fused_key("model.layers.3.mlp.experts.lora_A.weight"), Some((3, String::new(), true)));
        assert_eq!(
            fused_key("model.layers.0.mlp.experts.base_layer.lora_B.weight"),
            Some((0, "base_layer.".to_string(), false))
        );
        assert_eq!(fused_key("model.layers.0.block_sparse_moe.experts.2.w1.lora_A.weight"), None);
        assert_eq!(fused_key("model.layers.0.self_attn.q_proj.lora_A.weight"), None);
    }
}
