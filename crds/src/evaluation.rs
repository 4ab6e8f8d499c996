//! `Evaluation`: scores one model version against the gates and records the verdict.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{ArtifactStorage, Gates, PodSettings, Verdict};
use crate::training_run::{StageControl, VolumePath};

/// An evaluation of one model version against the gates.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "sapllm.io",
    version = "v1alpha1",
    kind = "Evaluation",
    namespaced,
    status = "EvaluationStatus",
    shortname = "slev",
    category = "sapllm",
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.modelVersion"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Routing","type":"number","jsonPath":".status.metrics.routingAccuracy"}"#,
    printcolumn = r#"{"name":"API","type":"number","jsonPath":".status.metrics.apiSelectionAccuracy"}"#,
    printcolumn = r#"{"name":"Payload","type":"number","jsonPath":".status.metrics.payloadAccuracy","priority":1}"#,
    printcolumn = r#"{"name":"P95ms","type":"number","jsonPath":".status.metrics.latencyP95Ms","priority":1}"#,
    printcolumn = r#"{"name":"Verdict","type":"string","jsonPath":".status.verdict"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EvaluationSpec {
    /// The model version to score.
    pub model: ModelRef,
    /// The examples file to score (JSONL of routing examples); defaults to the test split of the
    /// referenced TrainingRun's dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<VolumePath>,
    /// How many examples to score.
    #[serde(default = "default_samples")]
    #[schemars(range(min = 1))]
    pub samples: u64,
    /// The gates; each threshold is overridable.
    #[serde(default)]
    pub gates: Gates,
    /// Decisions below this confidence abstain (route to review) instead of guessing.
    #[serde(default = "crate::training_run::default_abstain")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub abstain_threshold: f64,
    /// The volume where the report is written (defaults to the TrainingRun's storage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<ArtifactStorage>,
    /// Settings of the evaluation pod.
    #[serde(default)]
    pub worker: PodSettings,
    /// Retry limit and deadline of the evaluation Job.
    #[serde(default, flatten)]
    pub control: StageControl,
}

fn default_samples() -> u64 {
    1000
}

/// Which model version: a TrainingRun's output, or explicit artifact paths. Exactly one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.trainingRun) != has(self.artifacts)").message("set exactly one of model.trainingRun and model.artifacts"))]
pub struct ModelRef {
    /// Name of a TrainingRun in the same namespace; its final adapter is scored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training_run: Option<String>,
    /// Explicit artifacts in the storage volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<ModelArtifacts>,
}

/// A model version given by its files.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelArtifacts {
    /// Base model directory (Hugging Face layout).
    pub base_model: String,
    /// Adapter directory (PEFT layout); absent scores the base alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    /// The version's content digest ("sha256:..."); computed from the files when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Lifecycle of an evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum EvaluationPhase {
    /// Waiting for its model (e.g. the TrainingRun has not produced an adapter yet).
    Pending,
    /// The evaluation Job runs.
    Running,
    /// Metrics and a verdict are recorded.
    Completed,
    /// The Job failed after its retries.
    Failed,
}

/// Observed state of an Evaluation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EvaluationStatus {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<EvaluationPhase>,
    /// The model version scored (content digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    /// Base model and adapter paths that were scored (what a RoutingEndpoint serves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<ModelArtifacts>,
    /// Every metric the evaluation produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<EvaluationMetrics>,
    /// Each gate with its threshold, value and result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub gates: Vec<GateResult>,
    /// The verdict: Passed only when every gate passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Where EVALUATION_REPORT.md lives ("pvc://<claim>/<path>").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    /// The evaluation Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// Attempts made so far.
    #[serde(default)]
    pub attempts: u32,
    /// When the verdict was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Conditions: Running, Completed, Passed, Failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The metrics of one evaluation (fractions in [0, 1], latencies in milliseconds).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EvaluationMetrics {
    /// Examples scored.
    pub samples: u64,
    /// Endpoint and payload both right, over all examples (abstentions count as wrong).
    pub routing_accuracy: f64,
    /// Right endpoint, over all examples.
    pub api_selection_accuracy: f64,
    /// Examples with >= 90 % of payload fields right.
    pub payload_accuracy: f64,
    /// Mean share of payload fields right.
    #[serde(default)]
    pub mean_field_accuracy: f64,
    /// Right action on exception-handling examples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exception_action_accuracy: Option<f64>,
    /// Share of decisions not abstained.
    #[serde(default)]
    pub coverage: f64,
    /// API selection accuracy on accepted (non-abstained) decisions.
    #[serde(default)]
    pub accepted_accuracy: f64,
    /// Median latency of one decision.
    pub latency_p50_ms: f64,
    /// 95th-percentile latency.
    pub latency_p95_ms: f64,
    /// 99th-percentile latency.
    pub latency_p99_ms: f64,
    /// Mean stated confidence.
    #[serde(default)]
    pub mean_confidence: f64,
    /// Expected calibration error (10 bins).
    #[serde(default)]
    pub expected_calibration_error: f64,
}

/// One gate's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateResult {
    /// The gate: routingAccuracy, apiSelectionAccuracy, payloadAccuracy or p95LatencyMs.
    pub name: String,
    /// How value is compared to threshold (">=" or "<").
    pub comparator: String,
    /// The threshold.
    pub threshold: f64,
    /// The measured value.
    pub value: f64,
    /// Whether the gate passed.
    pub passed: bool,
}

impl Gates {
    /// Checks metrics against the gates: accuracies must reach their threshold, P95 latency must
    /// stay strictly below its limit.
    pub fn check(&self, m: &EvaluationMetrics) -> Vec<GateResult> {
        let at_least = |name: &str, threshold: f64, value: f64| GateResult {
            name: name.into(),
            comparator: ">=".into(),
            threshold,
            value,
            // Accuracies are ratios of counts; tolerate float noise so 0.97 passes 0.97.
            passed: value + 1e-9 >= threshold,
        };
        vec![
            at_least("routingAccuracy", self.routing_accuracy, m.routing_accuracy),
            at_least("apiSelectionAccuracy", self.api_selection_accuracy, m.api_selection_accuracy),
            at_least("payloadAccuracy", self.payload_accuracy, m.payload_accuracy),
            GateResult {
                name: "p95LatencyMs".into(),
                comparator: "<".into(),
                threshold: self.p95_latency_ms,
                value: m.latency_p95_ms,
                passed: m.latency_p95_ms < self.p95_latency_ms,
            },
        ]
    }
}

/// The verdict of a set of gate results.
pub fn verdict_of(gates: &[GateResult]) -> Verdict {
    if gates.iter().all(|g| g.passed) { Verdict::Passed } else { Verdict::Failed }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(routing: f64, api: f64, payload: f64, p95: f64) -> EvaluationMetrics {
        EvaluationMetrics {
            samples: 100,
            routing_accuracy: routing,
            api_selection_accuracy: api,
            payload_accuracy: payload,
            latency_p95_ms: p95,
            ..Default::default()
        }
    }

    #[test]
    fn default_gates_are_the_seeds() {
        let g = Gates::default();
        assert_eq!((g.routing_accuracy, g.api_selection_accuracy, g.payload_accuracy), (0.97, 1.0, 0.99));
        assert_eq!(g.p95_latency_ms, 500.0);
    }

    #[test]
    fn thresholds_are_inclusive_for_accuracy_and_strict_for_latency() {
        let g = Gates::default();
        let pass = g.check(&metrics(0.97, 1.0, 0.99, 499.9));
        assert_eq!(verdict_of(&pass), Verdict::Passed);
        let slow = g.check(&metrics(0.99, 1.0, 1.0, 500.0));
        assert_eq!(verdict_of(&slow), Verdict::Failed);
        assert!(!slow.iter().find(|r| r.name == "p95LatencyMs").unwrap().passed);
        let wrong_api = g.check(&metrics(0.99, 0.999, 1.0, 10.0));
        assert_eq!(verdict_of(&wrong_api), Verdict::Failed);
    }
}
