//! AdamW with decoupled weight decay, global-norm gradient clipping, a warmup + cosine learning
//! rate schedule, and state save/load for resuming. candle-nn's AdamW has no clipping or schedule
//! and keeps its moments in the parameter dtype; here moments are always f32.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

/// Learning-rate schedule: linear warmup from 0, then cosine decay to `min_lr_ratio * lr`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub min_lr_ratio: f64,
}

impl LrSchedule {
    pub fn constant(lr: f64) -> Self {
        LrSchedule { lr, warmup_steps: 0, total_steps: 0, min_lr_ratio: 1.0 }
    }

    /// The learning rate for optimizer step `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        if self.warmup_steps > 0 && step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        if self.total_steps <= self.warmup_steps {
            return self.lr;
        }
        let progress =
            ((step - self.warmup_steps) as f64 / (self.total_steps - self.warmup_steps) as f64).min(1.0);
        let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
        self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cos)
    }
}

/// AdamW hyper-parameters (defaults as torch.optim.AdamW, weight decay 0.0 as HF Trainer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub schedule: LrSchedule,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global L2 norm of all gradients to this (None: no clipping).
    pub max_grad_norm: Option<f64>,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            schedule: LrSchedule::constant(1e-3),
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: Some(1.0),
        }
    }
}

/// What one `step` did.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

struct ParamState {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    /// Weight decay applies to matrices only (not norms / 1-D), as usual for transformers.
    decay: bool,
}

/// AdamW over named variables.
pub struct AdamW {
    pub cfg: AdamWConfig,
    params: Vec<ParamState>,
    step: usize,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let mut params = Vec::with_capacity(vars.len());
        for (name, var) in vars {
            let z = Tensor::zeros(var.shape(), DType::F32, var.device())?;
            let decay = var.rank() >= 2;
            params.push(ParamState { name, var, m: z.clone(), v: z, decay });
        }
        Ok(AdamW { cfg, params, step: 0 })
    }

    /// Optimizer steps taken so far.
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// The learning rate the next step will use.
    pub fn current_lr(&self) -> f64 {
        self.cfg.schedule.lr_at(self.step)
    }

    /// Global L2 norm of the gradients of the optimized variables.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sq = 0f64;
        for p in &self.params {
            if let Some(g) = grads.get(&p.var) {
                sq += g.to_dtype(DType::F32)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            }
        }
        Ok(sq.sqrt())
    }

    /// One update from `grads` (variables without a gradient are left unchanged, their
    /// moments untouched). Gradients are clipped to `max_grad_norm` first.
    pub fn step(&mut self, grads: &GradStore) -> Result<StepStats> {
        let grad_norm = self.grad_norm(grads)?;
        ensure!(grad_norm.is_finite(), "gradient norm is {grad_norm} at step {}", self.step);
        let clip = match self.cfg.max_grad_norm {
            Some(max) if grad_norm > max => max / (grad_norm + 1e-6),
            _ => 1.0,
        };
        let lr = self.cfg.schedule.lr_at(self.step);
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        for p in self.params.iter_mut() {
            let Some(g) = grads.get(&p.var) else { continue };
            let g = (g.to_dtype(DType::F32)? * clip)?;
            p.m = ((&p.m * b1)? + (&g * (1.0 - b1))?)?;
            p.v = ((&p.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let mhat = (&p.m / bc1)?;
            let vhat = (&p.v / bc2)?;
            let update = (mhat / (vhat.sqrt()? + self.cfg.eps)?)?;
            let cur = p.var.as_tensor().detach().to_dtype(DType::F32)?;
            let decayed = if p.decay && self.cfg.weight_decay > 0.0 {
                (cur * (1.0 - lr * self.cfg.weight_decay))?
            } else {
                cur
            };
            let new = (decayed - (update * lr)?)?;
            p.var.set(&new.to_dtype(p.var.dtype())?)?;
        }
        Ok(StepStats { lr, grad_norm })
    }

    /// Saves moments (`{name}.exp_avg`, `{name}.exp_avg_sq`) to a safetensors file and the step
    /// and configuration to `{path}.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for p in &self.params {
            tensors.insert(format!("{}.exp_avg", p.name), p.m.clone());
            tensors.insert(format!("{}.exp_avg_sq", p.name), p.v.clone());
        }
        candle_core::safetensors::save(&tensors, path)
            .with_context(|| format!("writing {}", path.display()))?;
        let meta = serde_json::json!({ "step": self.step, "config": self.cfg });
        let meta_path = path.with_extension("json");
        std::fs::write(&meta_path, serde_json::to_string_pretty(&meta)?)
            .with_context(|| format!("writing {}", meta_path.display()))?;
        Ok(())
    }

    /// Restores what [`AdamW::save`] wrote (the step counter and the moments). The current
    /// configuration is kept (a resumed run may change e.g. the total steps).
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let tensors = candle_core::safetensors::load(path, &self.device())
            .with_context(|| format!("reading optimizer state {}", path.display()))?;
        let meta_path = path.with_extension("json");
        let meta: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&meta_path)
                .with_context(|| format!("reading {}", meta_path.display()))?,
        )?;
        let step =
            meta.get("step").and_then(|s| s.as_u64()).context("optimizer state has no `step`")? as usize;
        for p in self.params.iter_mut() {
            for (suffix, slot) in [("exp_avg", &mut p.m), ("exp_avg_sq", &mut p.v)] {
                let key = format!("{}.{suffix}", p.name);
                let t = tensors.get(&key).with_context(|| format!("optimizer state lacks `{key}`"))?;
                ensure!(
                    t.dims() == p.var.dims(),
                    "optimizer state `{key}` has shape {:?}, expected {:?}",
                    t.dims(),
                    p.var.dims()
                );
                *slot = t.to_dtype(DType::F32)?;
            }
        }
        self.step = step;
        Ok(())
    }

    fn device(&self) -> candle_core::Device {
        self.params.first().map_or(candle_core::Device::Cpu, |p| p.var.device().clone())
    }
}
