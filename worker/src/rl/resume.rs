//! Resumable RL checkpoints, laid out like SFT's (`checkpoint-<iteration>/` with the adapter in
//! PEFT layout, `optimizer.safetensors`, `state.json`, written as a `.tmp-` folder and renamed
//! once complete) plus the value head. Listing and restoring the adapter and optimizer reuse
//! [`crate::train::resume`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::eval::EvalStats;
use super::log::IterLog;
use super::value_head::ValueHead;
pub use crate::train::resume::{list, restore_adapter, restore_optimizer};
use sapllm_engine::profile::PromptProfile;
use sapllm_model::mixtral::Mixtral;
use sapllm_model::optim::AdamW;
use sapllm_model::peft;

const STATE_FILE: &str = "state.json";
const VALUE_HEAD_FILE: &str = "value_head.safetensors";

/// Where an RL run was when the checkpoint was taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RlState {
    /// Iterations done.
    pub iteration: u64,
    /// One entry per iteration done.
    pub history: Vec<IterLog>,
    /// The starting policy on the validation split (measured once, before the first update).
    pub before: Option<EvalStats>,
    /// Digest of the settings; resume refuses a different one.
    pub settings_digest: String,
}

/// Saves adapter (with its prompt profile), value head (if any), optimizer and state atomically;
/// keeps the newest two.
pub fn save(
    dir: &Path,
    model: &Mixtral,
    value_head: Option<&ValueHead>,
    opt: &AdamW,
    state: &RlState,
    base_name: &str,
    profile: &PromptProfile,
) -> Result<PathBuf> {
    // The newest two: one to resume from, one in case the newest is damaged on disk.
    let keep = 2;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let final_dir = dir.join(format!("checkpoint-{:08}", state.iteration));
    let tmp = dir.join(format!(".tmp-checkpoint-{:08}", state.iteration));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    peft::save_adapter(model, &tmp.join("adapter"), base_name)?;
    profile.save(&tmp.join("adapter"))?;
    if let Some(vh) = value_head {
        vh.save(&tmp.join(VALUE_HEAD_FILE))?;
    }
    opt.save(&tmp.join("optimizer.safetensors"))?;
    // The state goes last: `list` trusts a folder only once its state file exists.
    std::fs::write(tmp.join(STATE_FILE), serde_json::to_vec_pretty(state)?)?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir)?;
    }
    std::fs::rename(&tmp, &final_dir).with_context(|| format!("finalising {}", final_dir.display()))?;
    let all = list(dir)?;
    for old in all.iter().take(all.len().saturating_sub(keep)) {
        std::fs::remove_dir_all(old).with_context(|| format!("removing {}", old.display()))?;
    }
    Ok(final_dir)
}

pub fn read_state(checkpoint: &Path) -> Result<RlState> {
    let path = checkpoint.join(STATE_FILE);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not an RL training state", path.display()))
}

pub fn restore_value_head(checkpoint: &Path, vh: &ValueHead) -> Result<()> {
    vh.load(&checkpoint.join(VALUE_HEAD_FILE))
}

/// The adapter folder inside a checkpoint.
pub fn adapter_dir(checkpoint: &Path) -> PathBuf {
    checkpoint.join("adapter")
}
