//! The evaluate Job of an Evaluation.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use sapllm_crds::contract::{ARTIFACTS_MOUNT, exit_code};
use sapllm_crds::digest::digest_of;
use sapllm_crds::evaluation::Evaluation;
use serde_json::json;

use crate::config::OperatorConfig;
use crate::evaluation::resolve::Resolved;
use crate::names::{
    ANNOTATION_SETTINGS_DIGEST, LABEL_EVALUATION, LABEL_LINEAGE, base_labels, child_name, label_value,
    owner_ref,
};
use crate::pod::{self, WorkerPod};
use crate::training::build::from_json;

/// The worker's arguments for `r`.
pub fn evaluate_args(ev: &Evaluation, r: &Resolved) -> Vec<String> {
    let mut a = vec!["evaluate".to_string(), "--base-model".into(), pod::artifact_path(&r.base_model)];
    if let Some(ad) = &r.adapter {
        a.extend(["--adapter".into(), pod::artifact_path(ad)]);
    }
    a.extend([
        "--examples".into(),
        r.examples.clone(),
        "--samples".into(),
        ev.spec.samples.to_string(),
        "--gates".into(),
        serde_json::to_string(&ev.spec.gates).unwrap_or_default(),
        "--abstain-threshold".into(),
        ev.spec.abstain_threshold.to_string(),
        "--out".into(),
        format!("{ARTIFACTS_MOUNT}/{}", r.out),
        "--progress".into(),
        "json".into(),
    ]);
    a
}

/// The Job's name: it changes whenever what is scored changes (a new Job, never an edited one).
pub fn job_name(ev: &Evaluation, r: &Resolved) -> (String, String) {
    let digest = digest_of(&json!({ "args": evaluate_args(ev, r), "claim": r.claim }));
    (child_name(&ev.name_any(), &format!("eval-{}", &digest["sha256:".len().."sha256:".len() + 10])), digest)
}

/// The evaluate Job.
pub fn evaluation_job(ev: &Evaluation, r: &Resolved, cfg: &OperatorConfig) -> Job {
    let (name, digest) = job_name(ev, r);
    let wp = WorkerPod {
        args: evaluate_args(ev, r),
        default_gpus: 1,
        artifacts_claim: &r.claim,
        extra_claims: r
            .extra_claims
            .iter()
            .cloned()
            .chain(pod::claims_of([r.base_model.as_str()].into_iter().chain(r.adapter.as_deref())))
            .collect(),
        manifest_config_map: None,
        catalog: None,
        artifacts_read_only: false,
    };
    let (volumes, mounts) = pod::volumes(&wp);
    let container = pod::job_container(&ev.spec.worker, cfg, &wp, mounts);
    let mut pod_spec = pod::pod_spec(&ev.spec.worker, cfg, container, volumes);
    pod_spec["restartPolicy"] = json!("Never");
    let mut labels: BTreeMap<String, String> = base_labels("evaluation");
    labels.insert(LABEL_EVALUATION.into(), label_value(&ev.name_any()));
    if let Some(l) = ev.labels().get(LABEL_LINEAGE) {
        labels.insert(LABEL_LINEAGE.into(), l.clone());
    }
    let mut spec = json!({
        "backoffLimit": ev.spec.control.retry_limit,
        "podFailurePolicy": { "rules": [
            // Failed gates are a verdict, not an error: retrying would score the same model again.
            { "action": "FailJob", "onExitCodes": { "containerName": pod::WORKER_CONTAINER, "operator": "In", "values": [exit_code::GATES_FAILED] } },
            { "action": "Ignore", "onPodConditions": [{ "type": "DisruptionTarget", "status": "True" }] },
        ]},
        "template": { "metadata": { "labels": labels }, "spec": pod_spec },
    });
    if let Some(d) = ev.spec.control.deadline_seconds {
        spec["activeDeadlineSeconds"] = json!(d);
    }
    from_json(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": ev.namespace(),
            "labels": labels,
            "annotations": { ANNOTATION_SETTINGS_DIGEST: digest },
            "ownerReferences": [owner_ref(ev)],
        },
        "spec": spec,
    }))
}
