//! PPO's value head: a linear map from the policy's final hidden state to a scalar (TRL's
//! `v_head.summary`). It reads the same hidden states as the LM head, so the value loss also
//! shapes the shared LoRA adapters (weighted by `vf_coef`), as in TRL's policy-with-value-head.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use candle_core::{DType, Device, Tensor, Var};

use sapllm_model::linear::matmul_t;

const WEIGHT: &str = "v_head.summary.weight";
const BIAS: &str = "v_head.summary.bias";

/// `V(h) = h · w + b`.
#[derive(Debug, Clone)]
pub struct ValueHead {
    pub weight: Var,
    pub bias: Var,
}

impl ValueHead {
    /// Zero-initialised: every state is worth 0 until the head has learnt otherwise, a neutral
    /// baseline that does not disturb the first advantages.
    pub fn new(hidden: usize, device: &Device) -> Result<Self> {
        Ok(ValueHead {
            weight: Var::zeros((1, hidden), DType::F32, device)?,
            bias: Var::zeros(1, DType::F32, device)?,
        })
    }

    /// `hidden [B, T, H]` -> values `[B, T]` (f32).
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = hidden.to_dtype(DType::F32)?;
        let v = matmul_t(&h, self.weight.as_tensor())?.squeeze(2)?;
        Ok(v.broadcast_add(self.bias.as_tensor())?)
    }

    /// The optimizer's view of the head.
    pub fn vars(&self) -> Vec<(String, Var)> {
        vec![(WEIGHT.to_string(), self.weight.clone()), (BIAS.to_string(), self.bias.clone())]
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let map: HashMap<String, Tensor> =
            self.vars().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
        candle_core::safetensors::save(&map, path).with_context(|| format!("writing {}", path.display()))
    }

    /// Loads weights saved by [`ValueHead::save`] into this head (same hidden size).
    pub fn load(&self, path: &Path) -> Result<()> {
        let t = candle_core::safetensors::load(path, self.weight.device())
            .with_context(|| format!("reading {}", path.display()))?;
        for (name, var) in self.vars() {
            let v = t.get(&name).with_context(|| format!("{} lacks `{name}`", path.display()))?;
            ensure!(
                v.dims() == var.dims(),
                "`{name}` in {} has shape {:?}, expected {:?}",
                path.display(),
                v.dims(),
                var.dims()
            );
            var.set(&v.to_dtype(DType::F32)?)?;
        }
        Ok(())
    }
}
