//! `RoutingEndpoint`: serves a model version that passed its gates, autoscaled.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{ArtifactStorage, KeyRef, PodSettings, Precision, Resources};

/// A production routing endpoint: a Deployment of `sapllm-worker serve`, a Service, a
/// HorizontalPodAutoscaler and a PodDisruptionBudget. It only ever rolls out a model version
/// whose Evaluation passed.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "sapllm.io",
    version = "v1alpha1",
    kind = "RoutingEndpoint",
    namespaced,
    status = "RoutingEndpointStatus",
    shortname = "slrep",
    category = "sapllm",
    printcolumn = r#"{"name":"Active","type":"string","jsonPath":".status.activeVersion"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Canary","type":"string","jsonPath":".status.canary.summary"}"#,
    printcolumn = r#"{"name":"Blocked","type":"string","jsonPath":".status.conditions[?(@.type==\"GateBlocked\")].status","priority":1}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RoutingEndpointSpec {
    /// Which model version to serve.
    pub model: EndpointModel,
    /// Replica bounds for the autoscaler.
    #[serde(default)]
    pub replicas: ReplicaRange,
    /// Autoscaling targets.
    #[serde(default)]
    pub autoscaling: Autoscaling,
    /// The served model's dimensions, named by the preset that has them (`tiny`, `small`,
    /// `mixtral-8x7b`). Only the memory plan reads it: without it the endpoint is not planned and
    /// never refused for GPU memory (the operator does not read the model from the volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<crate::training_run::ModelPreset>,
    /// Precision of the frozen base weights at inference (the adapter is merged first).
    #[serde(default)]
    pub precision: Precision,
    /// Resources of the serving container (CPU, memory, GPUs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Pod settings (image, node selector, tolerations, priority class, service account).
    #[serde(default)]
    pub worker: PodSettings,
    /// The volume that holds the model artifacts (defaults to the lineage's TrainingRun storage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<ArtifactStorage>,
    /// Port of the HTTP service.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Secret key holding the bearer token clients must send; no auth when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_secret: Option<KeyRef>,
    /// Dynamic batching of concurrent requests.
    #[serde(default)]
    pub batching: Batching,
    /// Decisions below this confidence abstain (route to review). Unset: the threshold of the
    /// Evaluation that passed the served version, so the endpoint abstains exactly where the
    /// gates were measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub abstain_threshold: Option<f64>,
    /// A rollout that is not ready within this many seconds is rolled back.
    #[serde(default = "default_rollout_deadline")]
    #[schemars(range(min = 10))]
    pub rollout_deadline_seconds: i64,
    /// Production feedback for retraining: when set, `POST /v1/feedback` is enabled and each
    /// feedback (posted, rejected, corrected) is appended with its decision and document as a
    /// transaction-log line to `<path>/feedback-<pod>.jsonl` on this claim, one file per pod. A
    /// TrainingRun trains on it with `data.transactionLogs: {claimName, path}` naming the same
    /// folder. With more than one replica the claim must be ReadWriteMany.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<FeedbackSink>,
    /// Canary rollout of a new version: it first serves a share of the traffic beside the
    /// current one, is judged on live signals at every step, and is promoted or rolled back by
    /// itself. Unset: a new version replaces the current one as soon as its pods are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

/// A canary rollout: steps of traffic share, each held for a dwell time while the canary is
/// judged. Traffic is split by replica ratio behind the one Service (no mesh needed), so a
/// step's share is approximate: the status says the share the pods give.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.steps.all(s, s >= 1 && s <= 99)").message("rollout.steps: each step is a traffic percentage from 1 to 99 (the version is promoted after the last)"))]
pub struct Rollout {
    /// Traffic percentages the canary serves, in increasing order; the version is promoted
    /// after the last step has passed (default `[10, 50]`).
    #[serde(default = "default_steps")]
    #[schemars(length(min = 1, max = 10))]
    pub steps: Vec<i32>,
    /// How long each step lasts once its canary pods are ready, in seconds (default 300).
    #[serde(default = "default_dwell")]
    #[schemars(range(min = 1))]
    pub dwell_seconds: i64,
    /// Share of the current version's live requests mirrored to the canary to measure decision
    /// agreement (default 0.1).
    #[serde(default = "default_mirror_fraction")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub mirror_fraction: f64,
    /// What the canary must show to go on.
    #[serde(default)]
    pub analysis: CanaryAnalysis,
    /// Read the signals from this Prometheus (e.g.
    /// `http://prometheus-operated.monitoring.svc:9090`) instead of from each serving pod's
    /// `/metrics` through the API server's pod proxy. Its series must carry the pod's `namespace`
    /// and `pod` labels, as kube-prometheus' and the Prometheus chart's pod scraping write them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("rollout.prometheusUrl must be an http:// or https:// URL"))]
    pub prometheus_url: Option<String>,
}

/// Thresholds a canary is judged by, on signals read from the serving pods' `/metrics`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryAnalysis {
    /// Largest share of the canary's API requests answered with a server error (5xx)
    /// (default 0.01).
    #[serde(default = "default_max_error_rate")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_rate: f64,
    /// Largest P95 latency of the canary's single-document decisions (`/v1/route`), in
    /// milliseconds (default 500, the latency gate).
    #[serde(default = "default_max_p95")]
    #[schemars(range(min = 1.0))]
    pub max_p95_latency_ms: f64,
    /// Smallest share of mirrored requests where the canary chose the same endpoint and the
    /// same payload values as the current version (default 0.95).
    #[serde(default = "default_min_agreement")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_agreement: f64,
    /// Largest rise of the abstention rate on the mirrored documents, canary minus current
    /// version (default 0.05: five points).
    #[serde(default = "default_max_abstention_increase")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_abstention_increase: f64,
    /// Decisions the canary must have made before error rate and latency are judged and a step
    /// may pass (default 20).
    #[serde(default = "default_min_samples")]
    #[schemars(range(min = 1))]
    pub min_decisions: i64,
    /// Mirrored comparisons needed before agreement and abstention are judged and a step may
    /// pass (default 20).
    #[serde(default = "default_min_samples")]
    #[schemars(range(min = 1))]
    pub min_comparisons: i64,
    /// How often the operator reads the serving pods' metrics during a canary, in seconds
    /// (default 30).
    #[serde(default = "default_interval")]
    #[schemars(range(min = 1))]
    pub interval_seconds: i64,
}

fn default_steps() -> Vec<i32> {
    vec![10, 50]
}
fn default_dwell() -> i64 {
    300
}
fn default_mirror_fraction() -> f64 {
    0.1
}
fn default_max_error_rate() -> f64 {
    0.01
}
fn default_max_p95() -> f64 {
    500.0
}
fn default_min_agreement() -> f64 {
    0.95
}
fn default_max_abstention_increase() -> f64 {
    0.05
}
fn default_min_samples() -> i64 {
    20
}
fn default_interval() -> i64 {
    30
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            steps: default_steps(),
            dwell_seconds: default_dwell(),
            mirror_fraction: default_mirror_fraction(),
            analysis: CanaryAnalysis::default(),
            prometheus_url: None,
        }
    }
}

impl Default for CanaryAnalysis {
    fn default() -> Self {
        CanaryAnalysis {
            max_error_rate: default_max_error_rate(),
            max_p95_latency_ms: default_max_p95(),
            min_agreement: default_min_agreement(),
            max_abstention_increase: default_max_abstention_increase(),
            min_decisions: default_min_samples(),
            min_comparisons: default_min_samples(),
            interval_seconds: default_interval(),
        }
    }
}

/// Where a RoutingEndpoint writes production feedback.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeedbackSink {
    /// PersistentVolumeClaim the serving pods mount read-write (ReadWriteMany for more than one
    /// replica).
    #[x_kube(validation = kube::core::Rule::new("self.size() > 0").message("claimName must not be empty"))]
    pub claim_name: String,
    /// Folder inside the claim (default `feedback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("!self.startsWith('/') && !self.contains('..')").message("path must be relative to the claim, without '..'"))]
    pub path: Option<String>,
    /// Recent decisions each pod keeps for joining feedback (default 10000); feedback for an
    /// older decision is refused with 404.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub capacity: Option<u32>,
}

fn default_port() -> i32 {
    8080
}
fn default_rollout_deadline() -> i64 {
    600
}

/// The model to serve: a pinned version (GitOps) or the latest version of a TrainingRun lineage
/// that passed its gates. Exactly one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.pinned) != has(self.latestPassing)").message("set exactly one of model.pinned and model.latestPassing"))]
pub struct EndpointModel {
    /// A pinned model version; the operator never changes it, only reports in status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned: Option<PinnedModel>,
    /// Follow the newest passing version of a lineage by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_passing: Option<Lineage>,
}

/// A pinned model version.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PinnedModel {
    /// The version's content digest ("sha256:..."), as in an Evaluation's status.
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('sha256:')").message("pinned.version must be a content digest \"sha256:...\""))]
    pub version: String,
}

/// A TrainingRun lineage: the runs labelled `sapllm.io/lineage: <name>` (or the run named so).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Lineage {
    /// The lineage name.
    #[x_kube(validation = kube::core::Rule::new("self.size() > 0").message("latestPassing.lineage must not be empty"))]
    pub lineage: String,
}

/// Replica bounds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.min <= self.max").message("replicas.min must be <= replicas.max"))]
pub struct ReplicaRange {
    /// Fewest replicas.
    #[serde(default = "default_min")]
    #[schemars(range(min = 1))]
    pub min: i32,
    /// Most replicas.
    #[serde(default = "default_max")]
    #[schemars(range(min = 1))]
    pub max: i32,
}

fn default_min() -> i32 {
    1
}
fn default_max() -> i32 {
    3
}

impl Default for ReplicaRange {
    fn default() -> Self {
        ReplicaRange { min: default_min(), max: default_max() }
    }
}

/// Autoscaling targets (HorizontalPodAutoscaler autoscaling/v2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// Target average CPU utilisation, percent of the request.
    #[serde(default = "default_cpu_target")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: i32,
    /// Target average in-flight requests per pod (the `sapllm_inflight_requests` pod metric; needs
    /// a metrics adapter such as prometheus-adapter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_in_flight_requests: Option<i32>,
}

fn default_cpu_target() -> i32 {
    70
}

impl Default for Autoscaling {
    fn default() -> Self {
        Autoscaling { target_cpu_utilization: default_cpu_target(), target_in_flight_requests: None }
    }
}

/// Dynamic batching of concurrent decisions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Batching {
    /// Most requests decoded together. Unset: the worker's default for its device: 8 on a GPU,
    /// where one step over 8 rows costs about one step over one; 1 on a CPU, where a batch costs
    /// more than its requests one by one (every row waits for the longest answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub max_batch: Option<u32>,
    /// Model threads decoding requests in parallel over one copy of the model, each on one
    /// core (one decode per core is the fastest use of a CPU for small models). Unset: the
    /// whole cores of the container's CPU request, at least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub workers: Option<u32>,
    /// Longest a request waits for others to join its batch, in milliseconds.
    #[serde(default = "default_max_wait")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_wait_ms: u32,
    /// Queued requests beyond which the server answers 429.
    #[serde(default = "default_queue")]
    #[schemars(range(min = 1))]
    pub max_queue: u32,
    /// Per-request timeout in milliseconds.
    #[serde(default = "default_timeout")]
    #[schemars(range(min = 1))]
    pub request_timeout_ms: u32,
}

fn default_max_wait() -> u32 {
    5
}
fn default_queue() -> u32 {
    64
}
fn default_timeout() -> u32 {
    10_000
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            max_batch: None,
            workers: None,
            max_wait_ms: default_max_wait(),
            max_queue: default_queue(),
            request_timeout_ms: default_timeout(),
        }
    }
}

/// Observed state of a RoutingEndpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoutingEndpointStatus {
    /// The version serving traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_version: Option<String>,
    /// The version served before, the target of a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<String>,
    /// A version being rolled out, not yet ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_version: Option<String>,
    /// A version whose rollout missed its deadline and was rolled back; it is not tried again until
    /// the spec changes or another version is selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_version: Option<String>,
    /// When the current rollout started (for its deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_started: Option<Time>,
    /// Replicas ready to serve.
    #[serde(default)]
    pub ready_replicas: i32,
    /// In-cluster URL of the service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Conditions: Ready, Progressing, GateBlocked, RolledBack.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The canary being judged (`spec.rollout`), until it is promoted or rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
}

/// Where a canary rollout stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    /// The version on trial.
    pub version: String,
    /// The step it is at, from 1; `steps + 1` while it is being promoted.
    pub step: i32,
    /// The number of steps.
    pub steps: i32,
    /// The traffic percentage this step asks for.
    pub weight: i32,
    /// Canary replicas for that share, given the current version's ready replicas.
    pub replicas: i32,
    /// Canary replicas ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// The share of serving pods that run the canary, percent: the traffic share it gets.
    #[serde(default)]
    pub traffic_percent: i32,
    /// When the canary started.
    pub started: Time,
    /// When this step's replicas were asked for (the rollout deadline counts from here).
    pub step_requested: Time,
    /// When this step's replicas were all ready (the dwell time counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_ready: Option<Time>,
    /// The signals last read, cumulative since the canary started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signals: Option<CanarySignals>,
    /// One line for `kubectl get`: "2/3 50%", "promoting".
    pub summary: String,
    /// Why the canary is where it is: the signals against their thresholds.
    #[serde(default)]
    pub message: String,
}

/// Live signals of a canary, cumulative since it started.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanarySignals {
    /// When they were read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<Time>,
    /// Decisions the canary made.
    pub decisions: i64,
    /// API requests it answered, and those with a server error.
    pub requests: i64,
    /// Requests answered with 5xx.
    pub errors: i64,
    /// `errors / requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    /// P95 latency of `/v1/route`, milliseconds (interpolated within histogram buckets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_latency_ms: Option<f64>,
    /// Mirrored requests both versions answered.
    pub comparisons: i64,
    /// Share of them with the same endpoint and payload values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement: Option<f64>,
    /// Abstention rate of the canary on the mirrored documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abstention_rate: Option<f64>,
    /// Abstention rate of the current version on the same documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_abstention_rate: Option<f64>,
    /// Container restarts of the canary's pods.
    pub restarts: i32,
    /// Canary pods whose metrics could not be read.
    #[serde(default)]
    pub unreadable_pods: i32,
}
