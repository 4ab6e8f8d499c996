//! Operator-wide settings (from the command line / the chart's values).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Toleration;
use sapllm_crds::common::{DEFAULT_GPU_RESOURCE, DEFAULT_WORKER_CUDA_IMAGE, DEFAULT_WORKER_IMAGE};

/// Defaults the operator applies to every worker pod a resource does not configure itself.
#[derive(Clone, Debug, PartialEq)]
pub struct OperatorConfig {
    /// Worker image when a resource names none.
    pub worker_image: String,
    /// Worker image (a `cuda` feature build) for pods with GPUs when a resource names none.
    pub worker_cuda_image: String,
    /// Extended resource GPUs are requested under when a resource names none.
    pub gpu_resource_name: String,
    /// ServiceAccount of worker pods when a resource names none.
    pub worker_service_account: String,
    /// Node labels every worker pod must match (a resource's own selector wins per key).
    pub default_node_selector: BTreeMap<String, String>,
    /// Tolerations added to every worker pod.
    pub default_tolerations: Vec<Toleration>,
    /// StorageClass of claims the operator creates when the resource names none.
    pub storage_class: Option<String>,
    /// How often a running stage is polled for progress (its pod's log tail).
    pub progress_interval: Duration,
    /// Requeue interval of settled objects (level-triggered safety net).
    pub resync_interval: Duration,
    /// Most reconciles in flight per controller. Unbounded, a start or a resync of thousands of
    /// objects runs them all at once: every one holds its lists in memory at the same time and
    /// the API server sees a burst; bounded, they queue and memory stays flat.
    pub concurrency: u16,
}

/// Default of [`OperatorConfig::concurrency`].
pub const DEFAULT_CONCURRENCY: u16 = 8;

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig {
            worker_image: DEFAULT_WORKER_IMAGE.to_string(),
            worker_cuda_image: DEFAULT_WORKER_CUDA_IMAGE.to_string(),
            gpu_resource_name: DEFAULT_GPU_RESOURCE.to_string(),
            worker_service_account: "sapllm-worker".to_string(),
            default_node_selector: BTreeMap::new(),
            default_tolerations: Vec::new(),
            storage_class: None,
            concurrency: DEFAULT_CONCURRENCY,
            progress_interval: Duration::from_secs(15),
            resync_interval: Duration::from_secs(300),
        }
    }
}
