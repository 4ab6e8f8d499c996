//! The memory plan: per stage, the bytes a manifest needs on its device, part by part.
//!
//! A pure function of the model's dimensions ([`ModelDims`], from a preset or a declared
//! architecture) and the stage settings of a TrainingRun or a RoutingEndpoint. The operator
//! refuses a resource whose plan does not fit the GPU it requests; `sapllm-worker plan` prints
//! the same table. The counting rules are written where each part is computed:
//! [`weights`] (base weights at their precision), [`activations`] (activations with and without
//! gradient checkpointing, logits, LoRA adapters, KV cache), [`stages`] (what each stage holds),
//! and [`overhead`] (the margin every stage gets).

pub mod activations;
pub mod dims;
pub mod gpu;
pub mod stages;
pub mod weights;

use std::fmt;

pub use dims::{ModelDims, PRESETS};
pub use stages::{EVAL_ANSWER_TOKENS, GPU_DEFAULT_MAX_BATCH, GRPO_GROUP_SIZE, SERVE_CONTEXT_TOKENS};
pub use weights::WeightStorage;

/// One GiB.
pub const GIB: u64 = 1 << 30;

/// Fixed part of every stage's margin: the CUDA context, cuBLAS workspaces and the kernels'
/// module images (about 0.5-0.8 GiB on an H100 with CUDA 12), rounded up.
pub const OVERHEAD_FIXED: u64 = GIB;
/// Share of everything else added for the caching allocator's fragmentation and short-lived
/// temporaries the parts do not name, in percent.
pub const OVERHEAD_PERCENT: u64 = 5;

/// The margin added to `bytes` of named parts: [`OVERHEAD_FIXED`] + [`OVERHEAD_PERCENT`] %.
pub fn overhead(bytes: u64) -> u64 {
    OVERHEAD_FIXED + bytes * OVERHEAD_PERCENT / 100
}

/// What one stage needs on its device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagePlan {
    /// The stage (`pretrain`, `sft`, `ppo`, `evaluation`, `serve`).
    pub stage: String,
    /// Sum of the parts.
    pub device_bytes: u64,
    /// Each part and its bytes, in the order the table prints them; the last is the overhead.
    pub parts: Vec<(String, u64)>,
    /// What a setting would change (e.g. the same stage without gradient checkpointing).
    pub notes: Vec<String>,
}

impl StagePlan {
    /// A stage from its named parts; the overhead is added as the last part.
    pub fn new(stage: impl Into<String>, mut parts: Vec<(String, u64)>) -> StagePlan {
        let named: u64 = parts.iter().map(|(_, b)| b).sum();
        parts.push((
            format!("overhead ({} GiB + {OVERHEAD_PERCENT} %)", OVERHEAD_FIXED / GIB),
            overhead(named),
        ));
        StagePlan { stage: stage.into(), device_bytes: named + overhead(named), parts, notes: Vec::new() }
    }

    /// Bytes of the part whose name starts with `prefix`.
    pub fn part(&self, prefix: &str) -> Option<u64> {
        self.parts.iter().find(|(n, _)| n.starts_with(prefix)).map(|(_, b)| *b)
    }

    /// The parts as one line, largest first: "base weights (nf4) 22.8 GiB, activations ...".
    pub fn summary(&self) -> String {
        let mut parts: Vec<&(String, u64)> = self.parts.iter().collect();
        parts.sort_by_key(|p| std::cmp::Reverse(p.1));
        parts.iter().map(|(n, b)| format!("{n} {}", gib(*b))).collect::<Vec<_>>().join(", ")
    }
}

/// The plan of a resource: one entry per stage that runs on the device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// The stages in execution order.
    pub stages: Vec<StagePlan>,
}

impl Plan {
    /// Whether every stage fits a device of `gpu_bytes`.
    pub fn fits(&self, gpu_bytes: u64) -> bool {
        self.stages.iter().all(|s| s.device_bytes <= gpu_bytes)
    }

    /// The stages that do not fit `gpu_bytes`, in execution order.
    pub fn misfits(&self, gpu_bytes: u64) -> Vec<&StagePlan> {
        self.stages.iter().filter(|s| s.device_bytes > gpu_bytes).collect()
    }

    /// The stage `name`.
    pub fn stage(&self, name: &str) -> Option<&StagePlan> {
        self.stages.iter().find(|s| s.stage == name)
    }
}

/// `bytes` in GiB with one decimal: "22.8 GiB".
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB as f64)
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width =
            self.stages.iter().flat_map(|s| s.parts.iter().map(|(n, _)| n.len())).max().unwrap_or(0).max(5);
        writeln!(f, "{:<10}  {:<width$}  {:>9}", "stage", "part", "GiB")?;
        for s in &self.stages {
            for (i, (name, bytes)) in s.parts.iter().enumerate() {
                let stage = if i == 0 { s.stage.as_str() } else { "" };
                writeln!(f, "{stage:<10}  {name:<width$}  {:>9.1}", *bytes as f64 / GIB as f64)?;
            }
            writeln!(
                f,
                "{:<10}  {:<width$}  {:>9.1}",
                "",
                "total on the device",
                s.device_bytes as f64 / GIB as f64
            )?;
            for n in &s.notes {
                writeln!(f, "{:<10}  note: {n}", "")?;
            }
        }
        Ok(())
    }
}
