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

use sapllm_crds::common::{PodSettings, Precision};
use sapllm_crds::endpoint::{RoutingEndpoint, RoutingEndpointSpec};
use sapllm_crds::plan::gpu::{from_node_selector, parse_quantity_bytes};
use sapllm_crds::plan::{ModelDims, Plan, StagePlan, gib, stages};
use sapllm_crds::training_run::{TrainingRun, TrainingRunSpec, WeightFormat};

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
pub fn gpu_memory(
    settings: &PodSettings,
    cfg: &OperatorConfig,
    field: &str,
) -> Result<Option<GpuMemory>, Invalid> {
    if let Some(q) = &settings.gpu_memory {
        let bytes = parse_quantity_bytes(&q.0).map_err(|e| Invalid::new(format!("{field}.gpuMemory"), e))?;
        return Ok(Some(GpuMemory { bytes, source: format!("{field}.gpuMemory {}", q.0) }));
    }
    let mut selector: BTreeMap<String, String> = cfg.default_node_selector.clone();
    selector.extend(settings.node_selector.clone());
    Ok(from_node_selector(&selector)
        .map(|(label, bytes)| GpuMemory { bytes, source: format!("node selector {label}") }))
}

/// What to change when a stage does not fit: the field the refusal names, and the settings
/// that would shrink the stage (only those not already at their smallest), if any.
pub struct Remedy {
    /// The field the condition names.
    pub field: &'static str,
    /// Settings that shrink the stage, as one clause; `None` when only a larger GPU helps.
    pub settings: Option<String>,
}

/// The remedy for `stage` of a TrainingRun.
fn training_remedy(stage: &str, spec: &TrainingRunSpec) -> Remedy {
    let sft = &spec.stages.sft;
    let (field, settings) = match stage {
        "pretrain" => (
            "spec.stages.pretrain",
            Some("lower spec.stages.pretrain.batchSize or sequenceLength, or start from a smaller spec.baseModel.preset".to_string()),
        ),
        "sft" | "ppo" => {
            let mut fixes = Vec::new();
            if !sft.gradient_checkpointing {
                fixes.push("turn on spec.stages.sft.gradientCheckpointing".to_string());
            }
            if stage == "ppo" {
                fixes.push("lower spec.stages.ppo.batchSize or miniBatchSize".to_string());
            }
            fixes.push("lower spec.stages.sft.batchSize or maxSequenceLength".to_string());
            if sft.quantization.type_ != WeightFormat::Nf4 {
                fixes.push("quantize the base with spec.stages.sft.quantization.type: nf4".to_string());
            }
            let field = if stage == "sft" { "spec.stages.sft" } else { "spec.stages.ppo" };
            (field, Some(fixes.join(", ")))
        }
        // Evaluation loads int8 weights whatever the spec says: only the GPU can change.
        _ => ("spec.stages.evaluation", None),
    };
    Remedy { field, settings }
}

/// The remedy for a RoutingEndpoint's serving stage.
fn serve_remedy(spec: &RoutingEndpointSpec) -> Remedy {
    let precision = match spec.precision {
        Precision::Bf16 | Precision::F32 => "serve with spec.precision int8 or int4, ",
        Precision::Int8 => "serve with spec.precision int4, ",
        Precision::Int4 => "",
    };
    Remedy {
        field: "spec.precision",
        settings: Some(format!("{precision}lower spec.batching.maxBatch or spec.batching.workers")),
    }
}

/// The refusal of `s`, the first stage that needs more than `gpu` has; `others` do too.
fn refusal(
    s: &StagePlan,
    others: &[&StagePlan],
    gpu: &GpuMemory,
    gpu_field: &str,
    remedy: Remedy,
) -> Invalid {
    let largest = others.iter().map(|o| o.device_bytes).fold(s.device_bytes, u64::max);
    let also = if others.is_empty() {
        String::new()
    } else {
        let list: Vec<String> =
            others.iter().map(|o| format!("{} {}", o.stage, gib(o.device_bytes))).collect();
        format!("; stages that do not fit either: {}", list.join(", "))
    };
    let larger = format!(
        "request a GPU with at least {} ({gpu_field}.gpuMemory, or a node selector for a larger GPU)",
        gib(largest)
    );
    let fix = match remedy.settings {
        Some(settings) => format!("{settings}, or {larger}"),
        None => format!("{larger}; no setting shrinks this stage"),
    };
    Invalid::new(
        remedy.field,
        format!(
            "stage {} needs {} on the device; the requested GPU has {} ({}): {}{also}; fix: {fix}",
            s.stage,
            gib(s.device_bytes),
            gib(gpu.bytes),
            gpu.source,
            s.summary(),
        ),
    )
}

/// Refuses `plan` when a stage does not fit `gpu`: the first such stage in execution order (the
/// one that would fail first) is described, the others are listed.
pub fn check_plan(
    plan: &Plan,
    gpu: &GpuMemory,
    gpu_field: &str,
    remedy: impl Fn(&str) -> Remedy,
) -> Result<(), Invalid> {
    match plan.misfits(gpu.bytes).split_first() {
        Some((first, others)) => Err(refusal(first, others, gpu, gpu_field, remedy(&first.stage))),
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
    check_plan(&stages::training_run(spec, &dims), &gpu, "spec.worker", |stage| training_remedy(stage, spec))
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
    let plan = stages::endpoint(spec, &dims, true, workers(rep, &resources));
    check_plan(&plan, &gpu, "spec.worker", |_| serve_remedy(spec))
}
