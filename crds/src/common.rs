//! Types shared by the three resources: worker pod settings, artifact storage, gates, precision.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The image the operator runs when a resource does not name one.
pub const DEFAULT_WORKER_IMAGE: &str = "ghcr.io/sapllm/sapllm-worker:0.1.0";
/// The image the operator runs on pods with GPUs when a resource names none: the same worker
/// built with `--features cuda` (docker/worker.Dockerfile, `CARGO_FEATURES=cuda`).
pub const DEFAULT_WORKER_CUDA_IMAGE: &str = "ghcr.io/sapllm/sapllm-worker:0.1.0-cuda";
/// The extended resource name of NVIDIA GPUs (device plugin).
pub const DEFAULT_GPU_RESOURCE: &str = "nvidia.com/gpu";

/// Settings of the pods that run the worker (training Jobs, evaluation Jobs, serving pods).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// Worker container image. Defaults to the operator's configured worker image: its CUDA
    /// build for pods with GPUs, its CPU build otherwise. An image named here is used for every
    /// pod, so for GPU pods it must be a CUDA build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image pull policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Number of GPUs per pod. Training defaults to 1, serving to 0 (CPU inference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16))]
    pub gpus: Option<u32>,
    /// Memory of one GPU, as a quantity ("80Gi", "40G"). The operator plans each stage's device
    /// memory and refuses a resource that does not fit. Unset: taken from a node-selector label
    /// that names a known GPU model (`nvidia.com/gpu.product`, `cloud.google.com/gke-accelerator`)
    /// or the memory (`nvidia.com/gpu.memory`, MiB); with neither, nothing is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory: Option<Quantity>,
    /// Extended resource name the GPUs are requested under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_resource_name: Option<String>,
    /// CPU request (and limit) of the worker container, e.g. "4" or "3500m".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory request (and limit) of the worker container, e.g. "32Gi".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Node labels the pod must match, e.g. a GPU node pool.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations, e.g. for tainted GPU nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// ServiceAccount the pods run as. Defaults to the chart's worker ServiceAccount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Extra environment variables for the worker container.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// When the kubelet pulls the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PullPolicy {
    /// Every time the pod starts.
    Always,
    /// Only when the node does not have it.
    IfNotPresent,
    /// Never; the image must be on the node.
    Never,
}

impl PullPolicy {
    /// The name Kubernetes uses.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Where artifacts (datasets, checkpoints, adapters, reports) live: a PersistentVolumeClaim.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactStorage {
    /// Name of the PersistentVolumeClaim in the resource's namespace.
    #[x_kube(validation = kube::core::Rule::new("self.size() > 0").message("claimName must not be empty"))]
    pub claim_name: String,
    /// Folder inside the volume under which this resource writes (default: the resource's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
    /// When set, the operator creates the claim with this size if it does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    /// StorageClass for a claim the operator creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// The gates a model version must pass before it may serve traffic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Gates {
    /// Minimum routing accuracy (endpoint and payload both right), in [0, 1].
    #[serde(default = "default_routing_accuracy")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub routing_accuracy: f64,
    /// Minimum API selection accuracy (right endpoint), in [0, 1].
    #[serde(default = "default_api_selection_accuracy")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub api_selection_accuracy: f64,
    /// Minimum payload accuracy (share of examples with >= 90 % of fields right), in [0, 1].
    #[serde(default = "default_payload_accuracy")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub payload_accuracy: f64,
    /// P95 latency of one routing decision must be below this many milliseconds.
    #[serde(default = "default_p95_latency_ms")]
    #[schemars(range(min = 1.0))]
    pub p95_latency_ms: f64,
}

fn default_routing_accuracy() -> f64 {
    0.97
}
fn default_api_selection_accuracy() -> f64 {
    1.0
}
fn default_payload_accuracy() -> f64 {
    0.99
}
fn default_p95_latency_ms() -> f64 {
    500.0
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            routing_accuracy: default_routing_accuracy(),
            api_selection_accuracy: default_api_selection_accuracy(),
            payload_accuracy: default_payload_accuracy(),
            p95_latency_ms: default_p95_latency_ms(),
        }
    }
}

/// Numeric precision of the frozen base weights at inference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 8-bit absmax-quantized weights (default: 4x smaller than f32, near-lossless).
    #[default]
    Int8,
    /// 4-bit NF4 weights (smallest; slight accuracy cost).
    Int4,
    /// bfloat16 weights.
    Bf16,
    /// float32 weights (reference; largest).
    F32,
}

impl Precision {
    /// The name used on the command line and in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Int8 => "int8",
            Precision::Int4 => "int4",
            Precision::Bf16 => "bf16",
            Precision::F32 => "f32",
        }
    }
}

/// Verdict of an evaluation against its gates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Verdict {
    /// Every gate passed: the version may be promoted.
    Passed,
    /// At least one gate failed.
    Failed,
    /// The evaluation could not produce metrics.
    Error,
}

/// Reference to one key of a Secret (or ConfigMap) in the same namespace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRef {
    /// Name of the object.
    pub name: String,
    /// Key inside the object's data.
    pub key: String,
}

/// Resources for a serving container, as Kubernetes writes them.
pub type Resources = ResourceRequirements;
