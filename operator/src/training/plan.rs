//! The stages a run executes, each with a settings digest and a deterministic child name.
//!
//! The digest of a stage covers its own settings and everything it reads (base model, data,
//! storage location) and is chained through the previous stage's digest: editing the spec of a
//! finished run re-runs the first stage whose settings changed and every stage after it, and
//! nothing else. Retry limits and deadlines are left out (they do not change what a stage
//! produces), and so are pod settings (image, resources, scheduling) and the base model's
//! declared `architecture` (read by the memory plan only).

use sapllm_crds::contract::ARTIFACTS_MOUNT;
use sapllm_crds::training_run::{StageName, TrainingRun, TrainingRunSpec};
use serde_json::{Value, json};

use crate::names::{child_name, sha256_hex};

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
    let mut prev = String::new();
    run.spec
        .planned_stages()
        .into_iter()
        .map(|stage| {
            let inputs = json!({ "previous": prev, "stage": stage.as_str(), "inputs": stage_inputs(&run.spec, stage) });
            let digest = format!("sha256:{}", sha256_hex(inputs.to_string().as_bytes()));
            prev = digest.clone();
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

/// What one stage reads, as JSON (maps serialise in key order, so the digest is stable).
fn stage_inputs(spec: &TrainingRunSpec, stage: StageName) -> Value {
    let without_control = |v: Value| match v {
        Value::Object(mut m) => {
            m.remove("retryLimit");
            m.remove("deadlineSeconds");
            Value::Object(m)
        }
        v => v,
    };
    let to = |v: &dyn erased::Ser| without_control(v.value());
    match stage {
        StageName::DataPrep => json!({
            "storage": { "claimName": spec.storage.claim_name, "subPath": spec.storage.sub_path },
            // `architecture` only feeds the memory plan: declaring it must not re-run anything.
            "baseModel": match to(&spec.base_model) {
                Value::Object(mut m) => {
                    m.remove("architecture");
                    Value::Object(m)
                }
                v => v,
            },
            "data": to(&spec.data),
            "settings": to(&spec.stages.data_prep),
        }),
        StageName::Pretrain => to(&spec.stages.pretrain),
        StageName::Sft => to(&spec.stages.sft),
        StageName::Ppo => to(&spec.stages.ppo),
        StageName::Evaluation => to(&spec.stages.evaluation),
    }
}

/// Serialisation behind a trait object, so `stage_inputs` treats every settings type alike.
mod erased {
    pub trait Ser {
        fn value(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn value(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or_default()
        }
    }
}
