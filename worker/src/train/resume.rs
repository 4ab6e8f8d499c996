//! Resumable training checkpoints: adapter (PEFT layout), optimizer moments and step, the data
//! cursor, the dropout counter and the loss history, written atomically.
//!
//! A checkpoint is a folder `checkpoint-<step>`; it is written as `.tmp-checkpoint-<step>` and
//! renamed once complete, so a run killed mid-write never leaves a half checkpoint that resume
//! would trust. The newest two are kept.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use sapllm_model::mixtral::Mixtral;
use sapllm_model::optim::AdamW;
use sapllm_model::peft;

/// Where the data loader and the run were when the checkpoint was taken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: u64,
    /// Epoch of the next micro-batch.
    pub epoch: u64,
    /// Index of the next micro-batch within the epoch's batch order.
    pub batch_in_epoch: usize,
    /// LoRA dropout mask counter (seeds the next dropout mask).
    pub dropout_counter: u64,
    /// (step, mean loss) of every optimizer step so far.
    pub losses: Vec<(u64, f64)>,
    /// Digest of the settings that produced this run; resume refuses a different one.
    pub settings_digest: String,
}

const STATE_FILE: &str = "state.json";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const ADAPTER_DIR: &str = "adapter";

/// Saves a checkpoint of `model`'s adapters, the optimizer and `state` under `dir`.
pub fn save(
    dir: &Path,
    model: &Mixtral,
    opt: &AdamW,
    state: &TrainState,
    base_name: &str,
    keep: usize,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let final_dir = dir.join(format!("checkpoint-{:08}", state.step));
    let tmp = dir.join(format!(".tmp-checkpoint-{:08}", state.step));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    peft::save_adapter(model, &tmp.join(ADAPTER_DIR), base_name)?;
    opt.save(&tmp.join(OPTIMIZER_FILE))?;
    std::fs::write(tmp.join(STATE_FILE), serde_json::to_vec_pretty(state)?)?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir)?;
    }
    std::fs::rename(&tmp, &final_dir).with_context(|| format!("finalising {}", final_dir.display()))?;
    prune(dir, keep)?;
    Ok(final_dir)
}

/// Complete checkpoints under `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    if !dir.exists() {
        return Ok(found);
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let complete =
            path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("checkpoint-"))
                && path.join(STATE_FILE).exists();
        if complete {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

fn prune(dir: &Path, keep: usize) -> Result<()> {
    let all = list(dir)?;
    for old in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        std::fs::remove_dir_all(old).with_context(|| format!("removing {}", old.display()))?;
    }
    Ok(())
}

/// Reads the state of a checkpoint.
pub fn read_state(checkpoint: &Path) -> Result<TrainState> {
    let path = checkpoint.join(STATE_FILE);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not a training state", path.display()))
}

/// Loads a checkpoint's adapter into `model` (replacing its adapters). Call before building the
/// optimizer over the model's variables, then [`restore_optimizer`].
pub fn restore_adapter(checkpoint: &Path, model: &mut Mixtral) -> Result<()> {
    peft::load_adapter(model, &checkpoint.join(ADAPTER_DIR))
}

/// Loads the optimizer's moments and step from a checkpoint.
pub fn restore_optimizer(checkpoint: &Path, opt: &mut AdamW) -> Result<()> {
    opt.load(&checkpoint.join(OPTIMIZER_FILE))
}
