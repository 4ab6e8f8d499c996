//! The whole run on one machine, from the same TrainingRun manifest the operator takes:
//! `sapllm-worker run -f run.yaml` runs every planned stage in order in a run directory;
//! `sapllm-worker stage <name> -f run.yaml --run-dir DIR` runs one (what each operator Job does).
//!
//! Each finished stage leaves `<stage>/stage_result.json` with the digest of the settings that
//! produced it; a re-run skips stages whose digest still matches and re-runs the first stage
//! whose settings changed and everything after it. Stages themselves resume from their own
//! checkpoints, so an interrupted run continues where it stopped.

pub mod manifest;
pub mod rl_stage;
pub mod stages;
pub mod termination;
pub mod version;

pub use stages::{RunOutcome, run_all, run_stage};
