//! Refuses a TrainingRun or RoutingEndpoint whose memory plan (`sapllm_crds::plan`) does not fit
//! the GPU memory it requests, before any pod is scheduled: a Job that runs out of device memory
//! fails only after its GPU node was found and the model loaded, and fails again on every retry.
//!
//! The GPU's memory comes from `worker.gpuMemory`, else from a node-selector label naming a
//! known GPU model or the memory (the operator's default selector, overridden per key by the
//! resource's). When neither says, or the model's dimensions are not known (a Hugging Face base
//! without `architecture`), or the pods get no GPU, nothing is refused: the plan never guesses a
//! GPU.

use std::collections::BTreeMap;

use sapllm_crds::common::PodSettings;
use sapllm_crds::endpoint::RoutingEndpoint;
use sapllm_crds::plan::gpu::{from_node_selector, parse_quantity_bytes};
use sapllm_crds::plan::{ModelDims, Plan, StagePlan, gib, stages};
use sapllm_crds::training_run::TrainingRun;

use crate::config::OperatorConfig;
use crate::endpoint::build::{container_resources, workers};
use crate::invalid::Invalid;
use crate::pod;

/// The memory of the GPU a pod requests, and where that figure comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuMemory {
    /// Bytes of one GPU.
    pub bytes: u64,
    /// What said so, for the message: `spec.worker.gpuMemory 40Gi` or
    /// `node selector nvidia.com/gpu.product=NVIDIA-A100-SXM4-40GB`.
    pub source: String,
}

/// The GPU memory `settings` request (`field` is where the settings are, e.g. `spec.worker`).
/// An unreadable `gpuMemory` is an error naming it.
pub fn gpu_memory(settings: &PodSettings, cfg: &OperatorConfig, field: &str) -> Result<Option<GpuMemory>, Invalid> {
    if let Some(q) = &settings.gpu_memory {
        let bytes = parse_quantity_bytes(&q.0).map_err(|e| Invalid::new(format!("{field}.gpuMemory"), e))?;
        return Ok(Some(GpuMemory { bytes, source: format!("{field}.gpuMemory {}", q.0) }));
    }
    let mut selector: BTreeMap<String, String> = cfg.default_node_selector.clone();
    selector.extend(settings.node_selector.clone());
    Ok(from_node_selector(&selector).map(|(label, bytes)| GpuMemory { bytes, source: format!("node selector {label}") }))
}

/// The field to change and the settings that shrink `stage`.
fn remedy(stage: &str) -> (&'static str, &'static str) {
    match stage {
        "pretrain" => (
            "spec.stages.pretrain",
            "lower spec.stages.pretrain.batchSize or sequenceLength, or start from a smaller spec.baseModel.preset",
        ),
        "sft" => (
            "spec.stages.sft",
            "turn on spec.stages.sft.gradientCheckpointing, lower spec.stages.sft.batchSize or maxSequenceLength, or quantize the base (spec.stages.sft.quantization.type: nf4)",
        ),
        "ppo" => (
            "spec.stages.ppo",
            "lower spec.stages.ppo.batchSize or miniBatchSize, or spec.stages.sft.maxSequenceLength (RL runs at it)",
        ),
        // Evaluation loads int8 weights whatever the spec says: only the GPU can change.
        "evaluation" => ("spec.stages.evaluation", "evaluation decodes with int8 weights, which no setting shrinks"),
        _ => ("spec.precision", "serve with spec.precision int8 or int4, or lower spec.batching.maxBatch or workers"),
    }
}

/// The refusal of `s`, which needs more than `gpu` has.
fn refusal(s: &StagePlan, gpu: &GpuMemory, gpu_field: &str) -> Invalid {
    let (field, fix) = remedy(&s.stage);
    Invalid::new(
        field,
        format!(
            "stage {} needs {} on the device; the requested GPU has {} ({}): {}; fix: {fix}, or request a GPU with at least {} ({gpu_field}.gpuMemory or a node selector for a larger GPU)",
            s.stage,
            gib(s.device_bytes),
            gib(gpu.bytes),
            gpu.source,
            s.summary(),
            gib(s.device_bytes),
        ),
    )
}

/// Refuses `plan` when a stage does not fit `gpu` (the stage that needs the most is named).
pub fn check_plan(plan: &Plan, gpu: &GpuMemory, gpu_field: &str) -> Result<(), Invalid> {
    match plan.worst_misfit(gpu.bytes) {
        Some(s) => Err(refusal(s, gpu, gpu_field)),
        None => Ok(()),
    }
}

/// Refuses a TrainingRun whose stages do not fit the GPU its worker pods request. Every stage
/// that loads the model runs with `spec.worker` (one GPU unless `gpus` says otherwise).
pub fn check_training_run(run: &TrainingRun, cfg: &OperatorConfig) -> Result<(), Invalid> {
    let spec = &run.spec;
    if spec.worker.gpus == Some(0) {
        return Ok(());
    }
    let Some(gpu) = gpu_memory(&spec.worker, cfg, "spec.worker")? else { return Ok(()) };
    let Some(dims) = stages::run_dims(spec) else { return Ok(()) };
    check_plan(&stages::training_run(spec, &dims), &gpu, "spec.worker")
}

/// Refuses a RoutingEndpoint whose serving pods do not fit the GPU they request (pods without a
/// GPU are not planned).
pub fn check_endpoint(rep: &RoutingEndpoint, cfg: &OperatorConfig) -> Result<(), Invalid> {
    let spec = &rep.spec;
    let resources = container_resources(rep, cfg);
    if pod::gpus_in(&resources, &pod::gpu_resource_name(&spec.worker, cfg)) == 0 {
        return Ok(());
    }
    let Some(gpu) = gpu_memory(&spec.worker, cfg, "spec.worker")? else { return Ok(()) };
    let Some(dims) = spec.architecture.map(ModelDims::preset) else { return Ok(()) };
    check_plan(&stages::endpoint(spec, &dims, true, workers(rep, &resources)), &gpu, "spec.worker")
}
