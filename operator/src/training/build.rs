//! The children of a TrainingRun: the rendered manifest, the artifact claim, one Job per stage and
//! the Evaluation the final stage produces. Pure functions of the run and the operator config.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim};
use kube::ResourceExt;
use sapllm_crds::contract::MANIFEST_PATH;
use sapllm_crds::evaluation::{Evaluation, EvaluationSpec, ModelRef};
use sapllm_crds::training_run::{StageName, TrainingRun, VolumePath};
use serde_json::{Value, json};

use crate::config::OperatorConfig;
use crate::names::{
    ANNOTATION_RUN_GENERATION, ANNOTATION_SETTINGS_DIGEST, LABEL_KUEUE_QUEUE, LABEL_LINEAGE, LABEL_RUN,
    LABEL_STAGE, base_labels, child_name, label_value, owner_ref,
};
use crate::pod::{self, WorkerPod};
use crate::training::plan::{PlannedStage, run_dir};

/// Key of the manifest in its ConfigMap (the file name under `/etc/sapllm`).
pub fn manifest_key() -> &'static str {
    MANIFEST_PATH.rsplit('/').next().unwrap_or("trainingrun.yaml")
}

/// Name of the run's manifest ConfigMap.
pub fn manifest_name(run: &TrainingRun) -> String {
    child_name(&run.name_any(), "manifest")
}

/// The lineage a run feeds: its `sapllm.io/lineage` label, or its own name.
pub fn lineage(run: &TrainingRun) -> String {
    run.labels().get(LABEL_LINEAGE).cloned().unwrap_or_else(|| label_value(&run.name_any()))
}

fn labels(run: &TrainingRun, component: &str) -> BTreeMap<String, String> {
    let mut l = base_labels(component);
    l.insert(LABEL_RUN.into(), label_value(&run.name_any()));
    l
}

/// The whole TrainingRun as YAML (the worker reads it at `MANIFEST_PATH`). Status and
/// server-managed metadata are left out so the ConfigMap changes only when the spec does.
pub fn manifest_config_map(run: &TrainingRun) -> Result<ConfigMap, serde_yaml::Error> {
    let rendered = json!({
        "apiVersion": "sapllm.io/v1alpha1",
        "kind": "TrainingRun",
        "metadata": { "name": run.name_any(), "namespace": run.namespace(), "labels": run.labels() },
        "spec": run.spec,
    });
    let yaml = serde_yaml::to_string(&rendered)?;
    Ok(from_json(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": manifest_name(run),
            "namespace": run.namespace(),
            "labels": labels(run, "training"),
            "ownerReferences": [owner_ref(run)],
        },
        "data": { manifest_key(): yaml },
    })))
}

/// The artifact claim, when the run asks the operator to create it (`storage.size`). It is not
/// owned by the run: artifacts outlive it (endpoints may serve them).
pub fn storage_claim(run: &TrainingRun, cfg: &OperatorConfig) -> Option<PersistentVolumeClaim> {
    let s = &run.spec.storage;
    let size = s.size.as_ref()?;
    let mut spec = json!({
        "accessModes": ["ReadWriteOnce"],
        "resources": { "requests": { "storage": size.0 } },
    });
    if let Some(sc) = s.storage_class_name.clone().or_else(|| cfg.storage_class.clone()) {
        spec["storageClassName"] = json!(sc);
    }
    Some(from_json(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": { "name": s.claim_name, "namespace": run.namespace(), "labels": base_labels("artifacts") },
        "spec": spec,
    })))
}

/// The Job of one training stage (not the evaluation stage, which is an Evaluation).
pub fn stage_job(run: &TrainingRun, stage: &PlannedStage, cfg: &OperatorConfig) -> Job {
    let spec = &run.spec;
    let control = match stage.name {
        StageName::DataPrep => &spec.stages.data_prep.control,
        StageName::Pretrain => &spec.stages.pretrain.control,
        StageName::Sft => &spec.stages.sft.control,
        StageName::Ppo => &spec.stages.ppo.control,
        StageName::Evaluation => &spec.stages.evaluation.control,
    };
    let args: Vec<String> =
        ["stage", stage.name.as_str(), "-f", MANIFEST_PATH, "--run-dir", &run_dir(run), "--progress", "json"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let claims: Vec<&VolumePath> =
        [spec.base_model.hugging_face.as_ref(), spec.data.transaction_logs.as_ref()]
            .into_iter()
            .flatten()
            .collect();
    let wp = WorkerPod {
        args,
        // Data preparation is CPU work; the training stages get one GPU unless told otherwise.
        default_gpus: if stage.name == StageName::DataPrep { 0 } else { 1 },
        artifacts_claim: &spec.storage.claim_name,
        extra_claims: claims.iter().filter_map(|c| c.claim_name.clone()).collect(),
        manifest_config_map: Some(manifest_name(run)),
        catalog: spec.data.catalog.config_map.as_ref(),
        artifacts_read_only: false,
    };
    let (volumes, mounts) = pod::volumes(&wp);
    let container = pod::job_container(&spec.worker, cfg, &wp, mounts);
    let mut pod_spec = pod::pod_spec(&spec.worker, cfg, container, volumes);
    pod_spec["restartPolicy"] = json!("Never");
    let mut job_labels = labels(run, "training");
    job_labels.insert(LABEL_STAGE.into(), stage.name.as_str().into());
    job_labels.insert(LABEL_LINEAGE.into(), lineage(run));
    let pod_labels = job_labels.clone();
    if let Some(q) = &spec.queue_name {
        job_labels.insert(LABEL_KUEUE_QUEUE.into(), q.clone());
    }
    let mut job_spec = json!({
        // Each retry is a new pod; the worker resumes from the stage's last checkpoint.
        "backoffLimit": control.retry_limit,
        // Kueue admits suspended Jobs; `spec.suspend` holds the stage back.
        "suspend": spec.suspend || spec.queue_name.is_some(),
        "podFailurePolicy": { "rules": [
            // A node drain or preemption is not the stage's fault: it does not use up a retry.
            { "action": "Ignore", "onPodConditions": [{ "type": "DisruptionTarget", "status": "True" }] },
        ]},
        "template": { "metadata": { "labels": pod_labels }, "spec": pod_spec },
    });
    if let Some(d) = control.deadline_seconds {
        job_spec["activeDeadlineSeconds"] = json!(d);
    }
    from_json(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": stage.child,
            "namespace": run.namespace(),
            "labels": job_labels,
            "annotations": { ANNOTATION_SETTINGS_DIGEST: stage.digest },
            "ownerReferences": [owner_ref(run)],
        },
        "spec": job_spec,
    }))
}

/// The Evaluation the final stage produces: owned by the run, labelled with its lineage (so a
/// `latestPassing` endpoint finds it), scoring the run's final adapter with the run's gates.
/// `feeds` is the lineage of the endpoint named by `spec.endpoint`, when it follows one: the
/// run's version then joins that lineage.
pub fn run_evaluation(run: &TrainingRun, stage: &PlannedStage, feeds: Option<&str>) -> Evaluation {
    let spec = &run.spec;
    let eval = &spec.stages.evaluation;
    let mut storage = spec.storage.clone();
    // The claim exists by now; the Evaluation must not try to create or resize it.
    storage.size = None;
    storage.storage_class_name = None;
    storage.sub_path = Some(crate::training::plan::run_dir_rel(run));
    let mut ev = Evaluation::new(
        &stage.child,
        EvaluationSpec {
            model: ModelRef { training_run: Some(run.name_any()), artifacts: None },
            dataset: None,
            samples: eval.samples,
            gates: eval.gates.clone(),
            abstain_threshold: eval.abstain_threshold,
            storage: Some(storage),
            worker: spec.worker.clone(),
            control: eval.control.clone(),
        },
    );
    ev.metadata.namespace = run.namespace();
    let mut l = labels(run, "evaluation");
    l.insert(LABEL_LINEAGE.into(), feeds.map(label_value).unwrap_or_else(|| lineage(run)));
    ev.metadata.labels = Some(l);
    ev.metadata.annotations = Some(BTreeMap::from([
        (ANNOTATION_SETTINGS_DIGEST.to_string(), stage.digest.clone()),
        (ANNOTATION_RUN_GENERATION.to_string(), run.metadata.generation.unwrap_or(0).to_string()),
    ]));
    ev.metadata.owner_references = Some(vec![owner_ref(run)]);
    ev
}

/// Builds a typed object from JSON the builders wrote; a mismatch is a bug in this crate, caught
/// by the fixture tests, so it panics with the JSON.
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> T {
    match serde_json::from_value(v.clone()) {
        Ok(t) => t,
        Err(e) => panic!("builder produced an invalid object ({e}): {v}"),
    }
}
