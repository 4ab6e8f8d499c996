//! Checks a TrainingRun beyond what the CRD's schema and CEL rules catch (those run at apply time;
//! these need the operator's view, e.g. paths that must stay inside the volume).

use sapllm_crds::training_run::{TrainingRun, VolumePath};

use crate::invalid::{Invalid, check_object_name, check_relative_path};

/// The first problem of `run`'s spec, naming the field.
pub fn validate(run: &TrainingRun) -> Result<(), Invalid> {
    let spec = &run.spec;
    check_object_name("spec.storage.claimName", &spec.storage.claim_name)?;
    if let Some(sub) = &spec.storage.sub_path {
        check_relative_path("spec.storage.subPath", sub)?;
    }
    match (&spec.base_model.preset, &spec.base_model.hugging_face) {
        (Some(_), None) => {}
        (None, Some(hf)) => check_volume_path("spec.baseModel.huggingFace", hf)?,
        _ => return Err(Invalid::new("spec.baseModel", "set exactly one of preset and huggingFace")),
    }
    if spec.data.synthetic.is_some() && spec.data.transaction_logs.is_some() {
        return Err(Invalid::new("spec.data", "set at most one of synthetic and transactionLogs"));
    }
    if let Some(logs) = &spec.data.transaction_logs {
        check_volume_path("spec.data.transactionLogs", logs)?;
    }
    if let Some(cm) = &spec.data.catalog.config_map {
        check_object_name("spec.data.catalog.configMap.name", &cm.name)?;
        if cm.key.is_empty() || cm.key.contains('/') {
            return Err(Invalid::new("spec.data.catalog.configMap.key", "must be a file name"));
        }
    }
    if let Some(g) = &spec.worker.gpu_resource_name
        && !g.contains('/')
    {
        return Err(Invalid::new(
            "spec.worker.gpuResourceName",
            format!("{g:?} is not an extended resource name (vendor/name)"),
        ));
    }
    if let Some(q) = &spec.queue_name {
        check_object_name("spec.queueName", q)?;
    }
    if let Some(e) = &spec.endpoint {
        check_object_name("spec.endpoint", e)?;
    }
    let ppo = &spec.stages.ppo;
    if ppo.enabled && (ppo.mini_batch_size == 0 || !ppo.batch_size.is_multiple_of(ppo.mini_batch_size)) {
        return Err(Invalid::new("spec.stages.ppo.miniBatchSize", "must divide spec.stages.ppo.batchSize"));
    }
    Ok(())
}

/// A path in a claim is relative to it; a path without a claim is absolute in the worker image.
fn check_volume_path(field: &str, vp: &VolumePath) -> Result<(), Invalid> {
    match &vp.claim_name {
        Some(c) => {
            check_object_name(&format!("{field}.claimName"), c)?;
            check_relative_path(&format!("{field}.path"), &vp.path)
        }
        None if vp.path.starts_with('/') => Ok(()),
        None => Err(Invalid::new(format!("{field}.path"), "must be absolute when no claimName is given")),
    }
}
