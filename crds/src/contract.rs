//! The contract between the operator and the worker it runs: command lines, mount paths, the
//! run-directory layout, and the stage result the worker leaves in its termination message.
//!
//! Progress travels as JSON lines on the worker's stdout, one [`ProgressLine`] each
//! (`{"event":"progress","stage":"sft","step":12,"total":300,"eta_s":41.0,"loss":1.9,
//! "tokens_per_s":850.0}`), written by the worker and read by the operator; the result of a stage
//! travels as one [`StageResult`] JSON object written to the container's termination-message file
//! (Kubernetes keeps up to 4 KiB of it in the pod status), so the operator learns artifacts,
//! metrics and verdicts without reading the volume.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::common::Verdict;
use crate::evaluation::{EvaluationMetrics, GateResult};
use crate::training_run::{Artifacts, StageName};

/// Where the operator mounts the rendered TrainingRun manifest (a ConfigMap key).
pub const MANIFEST_PATH: &str = "/etc/sapllm/trainingrun.yaml";
/// Where the operator mounts the artifact PVC.
pub const ARTIFACTS_MOUNT: &str = "/artifacts";
/// Environment variable naming the termination-message file; the operator sets it to
/// [`DEFAULT_TERMINATION_LOG`] in every Job. Unset, the worker writes no termination message
/// (on a workstation `/dev/termination-log` may exist and belong to something else).
pub const TERMINATION_LOG_ENV: &str = "SAPLLM_TERMINATION_LOG";
/// The default termination-message path of a Kubernetes container.
pub const DEFAULT_TERMINATION_LOG: &str = "/dev/termination-log";

/// Where the operator mounts every PersistentVolumeClaim a `VolumePath` names (a Hugging Face
/// base, transaction logs, a dataset): `<VOLUMES_ROOT>/<claim>`, the worker's default resolution of
/// a `VolumePath` (the artifact claim is additionally mounted at [`ARTIFACTS_MOUNT`]).
pub const VOLUMES_ROOT: &str = "/volumes";
/// Environment variable the worker reads the volumes root from (the operator sets it).
pub const VOLUMES_ROOT_ENV: &str = "SAPLLM_VOLUMES_ROOT";

/// The mount path of `claim`.
pub fn claim_mount(claim: &str) -> String {
    format!("{VOLUMES_ROOT}/{claim}")
}

/// Where the operator mounts the catalog ConfigMap (`data.catalog.configMap`): the key is a file
/// in this folder, named to the worker by [`CATALOG_FILE_ENV`].
pub const CATALOG_DIR: &str = "/etc/sapllm-catalog";
/// Environment variable naming the catalog file.
pub const CATALOG_FILE_ENV: &str = "SAPLLM_CATALOG_FILE";

/// Folder of each stage's output inside a run directory.
pub fn stage_dir(stage: StageName) -> &'static str {
    match stage {
        StageName::DataPrep => "data",
        StageName::Pretrain => "pretrain",
        StageName::Sft => "sft",
        StageName::Ppo => "ppo",
        StageName::Evaluation => "evaluation",
    }
}

/// What a finished (or failed) stage reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageResult {
    /// The stage (absent for a standalone `evaluate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<StageName>,
    /// Whether the stage completed.
    pub succeeded: bool,
    /// Failure reason or a one-line summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Artifacts produced so far, as paths relative to the artifact volume root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<Artifacts>,
    /// Evaluation metrics (evaluation only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<EvaluationMetrics>,
    /// Gate results (evaluation only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateResult>,
    /// Verdict (evaluation only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Path of EVALUATION_REPORT.md relative to the artifact volume root (evaluation only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    /// Where the stage computed: `cpu` or `cuda:N`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// What a progress line reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressEvent {
    /// A step of a running stage.
    Progress,
    /// The stage's last line.
    Done,
}

/// One progress line on the worker's stdout. Steps, totals and times are typed; the stage's
/// metrics (`loss`, `reward`, `lr`, `tokens_per_s`, ...) are the other keys of the same object,
/// `null` where a value is not finite.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgressLine {
    pub event: ProgressEvent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<StageName>,
    #[serde(default)]
    pub step: u64,
    /// Steps in all; 0 when unknown.
    #[serde(default)]
    pub total: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_s: Option<f64>,
    /// Estimated seconds to the end of the stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<f64>,
    #[serde(flatten)]
    pub metrics: BTreeMap<String, serde_json::Value>,
}

impl ProgressLine {
    /// A metric's value, when the line has it as a finite number.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics.get(name).and_then(serde_json::Value::as_f64).filter(|v| v.is_finite())
    }
}

/// Worker exit codes, so a Job's failure reason is machine-readable.
pub mod exit_code {
    /// Success; for evaluation: every gate passed.
    pub const OK: u8 = 0;
    /// Evaluation ran but at least one gate failed.
    pub const GATES_FAILED: u8 = 1;
    /// The stage could not run (bad input, I/O, model error).
    pub const ERROR: u8 = 2;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_progress_line_round_trips_with_its_metrics_beside_the_typed_fields() {
        let json = r#"{"event":"progress","stage":"sft","step":12,"total":300,"elapsed_s":9.5,"eta_s":41.0,"loss":1.9,"lr":null,"tokens_per_s":850.0}"#;
        let line: ProgressLine = serde_json::from_str(json).unwrap();
        assert_eq!(line.event, ProgressEvent::Progress);
        assert_eq!(line.stage, Some(StageName::Sft));
        assert_eq!((line.step, line.total, line.eta_s), (12, 300, Some(41.0)));
        assert_eq!(line.metric("loss"), Some(1.9));
        assert_eq!(line.metric("lr"), None, "null is no value");
        assert_eq!(line.metric("reward"), None);
        let again: ProgressLine = serde_json::from_str(&serde_json::to_string(&line).unwrap()).unwrap();
        assert_eq!(again, line);
        assert!(serde_json::from_str::<ProgressLine>(r#"{"event":"checkpoint","step":1}"#).is_err());
    }
}
