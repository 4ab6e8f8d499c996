//! The stages a run executes, each with a settings digest and a deterministic child name.
//!
//! The digests are [`sapllm_crds::digest::stage_digests`], the function the worker uses to
//! decide whether a finished stage is still current.

use sapllm_crds::contract::ARTIFACTS_MOUNT;
use sapllm_crds::digest::stage_digests;
use sapllm_crds::training_run::{StageName, TrainingRun};

use crate::names::child_name;

/// One stage the run executes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedStage {
    /// The stage.
    pub name: StageName,
    /// `sha256:<hex>` of its inputs, chained through the previous stage.
    pub digest: String,
    /// Its Job (training stages) or Evaluation (the evaluation stage).
    pub child: String,
}

/// The run's stages in order.
pub fn plan(run: &TrainingRun) -> Vec<PlannedStage> {
    let name = run.metadata.name.as_deref().unwrap_or_default();
    stage_digests(&run.spec)
        .into_iter()
        .map(|(stage, digest)| {
            let short = &digest["sha256:".len().."sha256:".len() + 10];
            let suffix = match stage {
                StageName::Evaluation => format!("eval-{short}"),
                s => format!("{}-{short}", s.as_str()),
            };
            PlannedStage { name: stage, digest, child: child_name(name, &suffix) }
        })
        .collect()
}

/// The run directory relative to the volume root: `storage.subPath` or the run's name.
pub fn run_dir_rel(run: &TrainingRun) -> String {
    run.spec.storage.sub_path.clone().unwrap_or_else(|| run.metadata.name.clone().unwrap_or_default())
}

/// The run directory as the worker sees it.
pub fn run_dir(run: &TrainingRun) -> String {
    format!("{ARTIFACTS_MOUNT}/{}", run_dir_rel(run))
}
