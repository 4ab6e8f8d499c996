//! The worker pod shared by stage Jobs, evaluation Jobs and serving Deployments: image, resources,
//! GPUs, scheduling, security context and the volumes of the worker contract.

use std::collections::BTreeMap;

use sapllm_crds::common::{KeyRef, PodSettings};
use sapllm_crds::contract::{ARTIFACTS_MOUNT, CATALOG_DIR, claim_mount};
use serde_json::{Value, json};

use crate::config::OperatorConfig;

/// Name of the worker container (the operator reads its termination message).
pub const WORKER_CONTAINER: &str = "worker";
/// The UID the worker image runs as (see docker/worker.Dockerfile).
pub const WORKER_UID: i64 = 10001;

/// What goes into one worker pod besides the `PodSettings`.
#[derive(Clone, Debug, Default)]
pub struct WorkerPod<'a> {
    /// The container's arguments (the image's entrypoint is `sapllm-worker`).
    pub args: Vec<String>,
    /// GPUs when the settings do not say.
    pub default_gpus: u32,
    /// The artifact claim, mounted at `/artifacts`.
    pub artifacts_claim: &'a str,
    /// Further claims (mounted read-only at `/mnt/<claim>`).
    pub extra_claims: Vec<String>,
    /// ConfigMap holding the rendered TrainingRun, mounted at `/etc/sapllm`.
    pub manifest_config_map: Option<String>,
    /// The catalog ConfigMap, mounted at `/etc/sapllm-catalog`.
    pub catalog: Option<&'a KeyRef>,
    /// Whether the artifact claim is mounted read-only (serving).
    pub artifacts_read_only: bool,
}

/// The image a pod with `gpus` GPUs runs: the settings' image when they name one (it must then
/// be a CUDA build for a GPU pod), else the operator's CUDA image for a GPU pod and its CPU image
/// otherwise (the CPU build cannot use a GPU; the CUDA build is larger and needs the driver).
pub fn image(settings: &PodSettings, cfg: &OperatorConfig, gpus: u32) -> String {
    settings
        .image
        .clone()
        .unwrap_or_else(|| if gpus > 0 { cfg.worker_cuda_image.clone() } else { cfg.worker_image.clone() })
}

/// The worker's device flag, given to every subcommand a pod runs.
pub const DEVICE_FLAG: &str = "--device";

/// The `--device` value of a pod with `gpus` GPUs: `cuda` (the first GPU the device plugin
/// exposes to the container) or `cpu`. Never `auto`: a GPU pod whose image or driver cannot
/// reach the GPU must fail, not train on its CPU.
pub fn device(gpus: u32) -> &'static str {
    if gpus > 0 { "cuda" } else { "cpu" }
}

/// The extended resource GPUs are requested under for these settings.
pub fn gpu_resource_name(settings: &PodSettings, cfg: &OperatorConfig) -> String {
    settings.gpu_resource_name.clone().unwrap_or_else(|| cfg.gpu_resource_name.clone())
}

/// GPUs a container's `resources` ask for under `gpu_resource`: the limit (what the device
/// plugin allocates), else the request; 0 when neither names it or it is not a whole number.
pub fn gpus_in(resources: &Value, gpu_resource: &str) -> u32 {
    ["limits", "requests"]
        .iter()
        .find_map(|k| resources.get(k).and_then(|r| r.get(gpu_resource)))
        .and_then(|v| match v {
            Value::String(s) => s.trim().parse().ok(),
            Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            _ => None,
        })
        .unwrap_or(0)
}

/// CPU/memory request = limit (Guaranteed QoS for training), GPUs as request and limit.
pub fn resources(settings: &PodSettings, cfg: &OperatorConfig, default_gpus: u32) -> Value {
    let mut limits = serde_json::Map::new();
    if let Some(cpu) = &settings.cpu {
        limits.insert("cpu".into(), json!(cpu.0));
    }
    if let Some(mem) = &settings.memory {
        limits.insert("memory".into(), json!(mem.0));
    }
    let gpus = settings.gpus.unwrap_or(default_gpus);
    if gpus > 0 {
        limits.insert(gpu_resource_name(settings, cfg), json!(gpus.to_string()));
    }
    if limits.is_empty() { json!({}) } else { json!({ "requests": limits, "limits": limits }) }
}

/// The container's security context: non-root, no privilege escalation, no capabilities,
/// read-only root filesystem (the worker writes only to /artifacts and /tmp).
pub fn container_security() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "capabilities": { "drop": ["ALL"] },
    })
}

/// Environment: the settings' variables in name order (stable output, no spurious rollouts),
/// then JSON-line logs (`SAPLLM_LOG_FORMAT=json`, what cluster log collectors parse) unless the
/// settings choose a format.
pub fn env(settings: &PodSettings) -> Vec<Value> {
    let mut env: Vec<Value> = settings.env.iter().map(|(k, v)| json!({ "name": k, "value": v })).collect();
    if !settings.env.contains_key(LOG_FORMAT_ENV) {
        env.push(json!({ "name": LOG_FORMAT_ENV, "value": "json" }));
    }
    env
}

/// The worker's log format switch (`json` or text).
pub const LOG_FORMAT_ENV: &str = "SAPLLM_LOG_FORMAT";

/// Volumes and mounts of the worker contract.
pub fn volumes(p: &WorkerPod) -> (Vec<Value>, Vec<Value>) {
    let mut volumes = vec![
        json!({ "name": "artifacts", "persistentVolumeClaim": { "claimName": p.artifacts_claim } }),
        json!({ "name": "tmp", "emptyDir": {} }),
    ];
    let mut mounts = vec![json!({ "name": "artifacts", "mountPath": ARTIFACTS_MOUNT })];
    if p.artifacts_read_only {
        mounts[0]["readOnly"] = json!(true);
    }
    mounts.push(json!({ "name": "tmp", "mountPath": "/tmp" }));
    if let Some(cm) = &p.manifest_config_map {
        volumes.push(json!({ "name": "manifest", "configMap": { "name": cm } }));
        mounts.push(json!({ "name": "manifest", "mountPath": "/etc/sapllm", "readOnly": true }));
    }
    if let Some(cat) = p.catalog {
        volumes.push(json!({ "name": "catalog", "configMap": { "name": cat.name, "items": [{ "key": cat.key, "path": cat.key }] } }));
        mounts.push(json!({ "name": "catalog", "mountPath": CATALOG_DIR, "readOnly": true }));
    }
    let mut extra: Vec<&String> = p.extra_claims.iter().collect();
    extra.sort();
    extra.dedup();
    let mut i = 0;
    for claim in extra {
        // A claim is one volume per pod; the artifact claim is mounted a second time where the
        // worker resolves `VolumePath`s.
        let name = if claim == p.artifacts_claim {
            "artifacts".to_string()
        } else {
            let n = format!("claim-{i}");
            i += 1;
            volumes.push(
                json!({ "name": n, "persistentVolumeClaim": { "claimName": claim, "readOnly": true } }),
            );
            n
        };
        mounts.push(json!({ "name": name, "mountPath": claim_mount(claim), "readOnly": true }));
    }
    (volumes, mounts)
}

/// The pod spec around `container`: scheduling (the operator's defaults, the settings win per
/// key), service account, pod security context and `volumes`.
pub fn pod_spec(
    settings: &PodSettings,
    cfg: &OperatorConfig,
    container: Value,
    volumes: Vec<Value>,
) -> Value {
    let mut node_selector: BTreeMap<String, String> = cfg.default_node_selector.clone();
    node_selector.extend(settings.node_selector.clone());
    let mut tolerations: Vec<Value> =
        cfg.default_tolerations.iter().map(|t| serde_json::to_value(t).unwrap_or_default()).collect();
    for t in &settings.tolerations {
        let t = serde_json::to_value(t).unwrap_or_default();
        if !tolerations.contains(&t) {
            tolerations.push(t);
        }
    }
    let mut spec = json!({
        "serviceAccountName": settings.service_account_name.clone().unwrap_or_else(|| cfg.worker_service_account.clone()),
        // Workers never talk to the API server (progress is read from their logs).
        "automountServiceAccountToken": false,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": WORKER_UID,
            "runAsGroup": WORKER_UID,
            "fsGroup": WORKER_UID,
            "seccompProfile": { "type": "RuntimeDefault" },
        },
        "containers": [container],
        "volumes": volumes,
    });
    if !node_selector.is_empty() {
        spec["nodeSelector"] = json!(node_selector);
    }
    if !tolerations.is_empty() {
        spec["tolerations"] = json!(tolerations);
    }
    if let Some(pc) = &settings.priority_class_name {
        spec["priorityClassName"] = json!(pc);
    }
    spec
}

/// The worker container of a Job (stage or evaluation): `p.args` and the `--device` of its GPUs.
pub fn job_container(
    settings: &PodSettings,
    cfg: &OperatorConfig,
    p: &WorkerPod,
    mounts: Vec<Value>,
) -> Value {
    let resources = resources(settings, cfg, p.default_gpus);
    let gpus = gpus_in(&resources, &gpu_resource_name(settings, cfg));
    let mut args = p.args.clone();
    args.extend([DEVICE_FLAG.to_string(), device(gpus).to_string()]);
    let mut c = json!({
        "name": WORKER_CONTAINER,
        "image": image(settings, cfg, gpus),
        "args": args,
        "resources": resources,
        "securityContext": container_security(),
        "volumeMounts": mounts,
        "terminationMessagePath": sapllm_crds::contract::DEFAULT_TERMINATION_LOG,
        // A crash before the worker writes its result still leaves the log tail in the status.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    });
    if let Some(pp) = settings.image_pull_policy {
        c["imagePullPolicy"] = json!(pp.as_str());
    }
    let mut env = env(settings);
    env.push(json!({ "name": sapllm_crds::contract::VOLUMES_ROOT_ENV, "value": sapllm_crds::contract::VOLUMES_ROOT }));
    // The worker writes its result only where told to: outside a pod it must not.
    env.push(json!({
        "name": sapllm_crds::contract::TERMINATION_LOG_ENV,
        "value": sapllm_crds::contract::DEFAULT_TERMINATION_LOG,
    }));
    if let Some(cat) = p.catalog {
        let file = format!("{CATALOG_DIR}/{}", cat.key);
        env.push(json!({ "name": sapllm_crds::contract::CATALOG_FILE_ENV, "value": file }));
    }
    c["env"] = json!(env);
    c
}

/// An artifact path from a stage result as the worker sees it: relative paths are inside the
/// artifact claim; absolute ones (a Hugging Face base on another claim) stay as they are.
pub fn artifact_path(path: &str) -> String {
    if path.starts_with('/') { path.to_string() } else { format!("{ARTIFACTS_MOUNT}/{path}") }
}

/// The claims that absolute artifact paths live on (`/volumes/<claim>/...`), to be mounted.
pub fn claims_of<'a>(paths: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let root = format!("{}/", sapllm_crds::contract::VOLUMES_ROOT);
    paths.into_iter().filter_map(|p| p.strip_prefix(&root)?.split('/').next().map(String::from)).collect()
}

/// A path a `VolumePath` names, as the worker sees it.
pub fn volume_path(vp: &sapllm_crds::training_run::VolumePath, artifacts_claim: &str) -> String {
    match &vp.claim_name {
        Some(c) if c == artifacts_claim => format!("{ARTIFACTS_MOUNT}/{}", vp.path.trim_start_matches('/')),
        Some(c) => format!("{}/{}", claim_mount(c), vp.path.trim_start_matches('/')),
        None => vp.path.clone(),
    }
}
