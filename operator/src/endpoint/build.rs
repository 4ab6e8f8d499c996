//! The serving children of a RoutingEndpoint.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use sapllm_crds::endpoint::RoutingEndpoint;
use serde_json::{Value, json};

use crate::config::OperatorConfig;
use crate::endpoint::select::Candidate;
use crate::names::{
    ANNOTATION_MODEL_VERSION, LABEL_ENDPOINT, base_labels, child_name, label_value, owner_ref,
};
use crate::pod::{self, WORKER_CONTAINER, WorkerPod};
use crate::training::build::from_json;

/// Where the auth token Secret is mounted.
pub const AUTH_DIR: &str = "/etc/sapllm-auth";
/// Threads per decode of the worker (`threads::init` reads it); set by `worker.env` to override.
pub const DECODE_THREADS_ENV: &str = "CANDLE_NUM_THREADS";
/// The per-pod metric the autoscaler reads through a metrics adapter.
pub const INFLIGHT_METRIC: &str = "sapllm_inflight_requests";
/// Where `spec.feedback.claimName` is mounted (read-write).
pub const FEEDBACK_MOUNT: &str = "/var/lib/sapllm-feedback";
/// The folder inside the feedback claim when `spec.feedback.path` is unset.
pub const FEEDBACK_DEFAULT_PATH: &str = "feedback";

/// The label that sets a canary's pods apart (`canary`); the current version's pods have none.
pub const LABEL_TRACK: &str = "sapllm.io/track";
/// The value of [`LABEL_TRACK`] on a canary's pods.
pub const TRACK_CANARY: &str = "canary";

/// Name of every child (Service names must be DNS labels: at most 63 characters).
pub fn child(rep: &RoutingEndpoint) -> String {
    child_name(&rep.name_any(), "")
}

/// Name of the headless Service under which each serving pod has a DNS name (feedback reaches
/// the replica that made the decision through it).
pub fn peers_child(rep: &RoutingEndpoint) -> String {
    child_name(&rep.name_any(), "peers")
}

/// The DNS domain of the serving pods under [`peers_service`]: `<dashed pod IP>.<domain>`.
pub fn peer_domain(rep: &RoutingEndpoint) -> String {
    format!("{}.{}.svc", peers_child(rep), rep.namespace().unwrap_or_default())
}

/// Name of the canary's Deployment and Service.
pub fn canary_child(rep: &RoutingEndpoint) -> String {
    child_name(&rep.name_any(), TRACK_CANARY)
}

/// Which of the two serving Deployments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Track {
    /// The current version, scaled by the autoscaler.
    Stable,
    /// A canary with a fixed replica count.
    Canary(i32),
}

/// The pods of the endpoint's Service: both tracks, so traffic splits by replica ratio.
fn selector(rep: &RoutingEndpoint) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_ENDPOINT.to_string(), label_value(&rep.name_any())),
        (crate::names::LABEL_COMPONENT.to_string(), "serving".to_string()),
    ])
}

/// The label selector of the endpoint's serving pods, both tracks (`k=v,k=v`).
pub fn pod_selector(rep: &RoutingEndpoint) -> String {
    selector(rep).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn canary_selector(rep: &RoutingEndpoint) -> BTreeMap<String, String> {
    let mut s = selector(rep);
    s.insert(LABEL_TRACK.into(), TRACK_CANARY.into());
    s
}

fn labels(rep: &RoutingEndpoint) -> BTreeMap<String, String> {
    let mut l = base_labels("serving");
    l.extend(selector(rep));
    l
}

fn metadata(rep: &RoutingEndpoint) -> Value {
    json!({ "name": child(rep), "namespace": rep.namespace(), "labels": labels(rep), "ownerReferences": [owner_ref(rep)] })
}

fn canary_metadata(rep: &RoutingEndpoint) -> Value {
    let mut l = labels(rep);
    l.insert(LABEL_TRACK.into(), TRACK_CANARY.into());
    json!({ "name": canary_child(rep), "namespace": rep.namespace(), "labels": l, "ownerReferences": [owner_ref(rep)] })
}

/// The in-cluster URL of the canary's Service (where the current version mirrors requests).
pub fn canary_url(rep: &RoutingEndpoint) -> String {
    format!("http://{}.{}.svc:{}", canary_child(rep), rep.namespace().unwrap_or_default(), rep.spec.port)
}

/// Model threads of the server: the spec's `batching.workers`, else the whole cores of the
/// container's CPU request (`resources` as the Deployment gets them), at least 1.
pub fn workers(rep: &RoutingEndpoint, resources: &Value) -> u32 {
    rep.spec.batching.workers.unwrap_or_else(|| {
        resources
            .pointer("/requests/cpu")
            .and_then(Value::as_str)
            .and_then(whole_cores)
            .unwrap_or(1)
            .clamp(1, 256)
    })
}

/// Whole cores of a CPU quantity: "2", "2.5" and "2500m" are 2; `None` when unreadable.
pub fn whole_cores(quantity: &str) -> Option<u32> {
    let q = quantity.trim();
    let cores = match q.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().ok()? / 1000.0,
        None => q.parse::<f64>().ok()?,
    };
    (cores.is_finite() && cores >= 0.0).then(|| cores.floor().min(u32::MAX as f64) as u32)
}

/// The `serve` arguments for `c`, with `workers` model threads.
pub fn serve_args(rep: &RoutingEndpoint, c: &Candidate, workers: u32) -> Vec<String> {
    let s = &rep.spec;
    let mut a = vec!["serve".to_string(), "--base-model".into(), pod::artifact_path(&c.artifacts.base_model)];
    if let Some(ad) = &c.artifacts.adapter {
        a.extend(["--adapter".into(), pod::artifact_path(ad)]);
    }
    a.extend(["--precision".into(), s.precision.as_str().into(), "--port".into(), s.port.to_string()]);
    // Unset: the server's default (see `Batching::max_batch`).
    if let Some(m) = s.batching.max_batch {
        a.extend(["--max-batch".into(), m.to_string()]);
    }
    a.extend([
        "--workers".into(),
        workers.to_string(),
        "--max-wait-ms".into(),
        s.batching.max_wait_ms.to_string(),
        "--max-queue".into(),
        s.batching.max_queue.to_string(),
        "--request-timeout-ms".into(),
        s.batching.request_timeout_ms.to_string(),
        "--abstain-threshold".into(),
        s.abstain_threshold.unwrap_or(c.abstain_threshold).to_string(),
    ]);
    if let Some(k) = &s.auth_secret {
        a.extend(["--auth-token-file".into(), format!("{AUTH_DIR}/{}", k.key)]);
    }
    if let Some(f) = &s.feedback {
        let path = f.path.as_deref().map(|p| p.trim_matches('/')).filter(|p| !p.is_empty());
        a.extend([
            "--feedback-dir".into(),
            format!("{FEEDBACK_MOUNT}/{}", path.unwrap_or(FEEDBACK_DEFAULT_PATH)),
        ]);
        if let Some(c) = f.capacity {
            a.extend(["--feedback-capacity".into(), c.to_string()]);
        }
    }
    a
}

/// The serving container's resources: `spec.resources` as written, else those of
/// `spec.worker` (no GPU unless it asks), with a CPU request of 1 when none is given (the CPU
/// target of the autoscaler is a share of the request: without one it cannot scale).
pub fn container_resources(rep: &RoutingEndpoint, cfg: &OperatorConfig) -> Value {
    let s = &rep.spec;
    let mut resources = match &s.resources {
        Some(r) => serde_json::to_value(r).unwrap_or_default(),
        None => pod::resources(&s.worker, cfg, 0),
    };
    if resources.pointer("/requests/cpu").is_none() {
        resources["requests"]["cpu"] = json!("1");
    }
    resources
}

/// The Deployment serving `c` from `claim`. Replicas are left to the autoscaler. With
/// `spec.rollout` its pods say their version and mirror a sample of their requests to the
/// canary's Service (nothing listens there between canaries: the mirror is refused at once).
pub fn deployment(rep: &RoutingEndpoint, c: &Candidate, claim: &str, cfg: &OperatorConfig) -> Deployment {
    serving(rep, c, claim, cfg, Track::Stable)
}

/// The canary's Deployment: `replicas` pods of `c` beside the current version's, behind the same
/// Service. Its selector adds the track label; the current Deployment's selector (immutable since
/// the endpoint was created) also matches these pods, but a Deployment only manages the
/// ReplicaSets it owns, so the two never take each other's pods.
pub fn canary_deployment(
    rep: &RoutingEndpoint,
    c: &Candidate,
    claim: &str,
    cfg: &OperatorConfig,
    replicas: i32,
) -> Deployment {
    serving(rep, c, claim, cfg, Track::Canary(replicas))
}

fn serving(
    rep: &RoutingEndpoint,
    c: &Candidate,
    claim: &str,
    cfg: &OperatorConfig,
    track: Track,
) -> Deployment {
    let s = &rep.spec;
    let paths = [c.artifacts.base_model.as_str()].into_iter().chain(c.artifacts.adapter.as_deref());
    let wp = WorkerPod {
        artifacts_claim: claim,
        artifacts_read_only: true,
        extra_claims: pod::claims_of(paths),
        ..Default::default()
    };
    let (mut volumes, mut mounts) = pod::volumes(&wp);
    if let Some(k) = &s.auth_secret {
        volumes.push(json!({ "name": "auth", "secret": { "secretName": k.name, "items": [{ "key": k.key, "path": k.key }] } }));
        mounts.push(json!({ "name": "auth", "mountPath": AUTH_DIR, "readOnly": true }));
    }
    if let Some(f) = &s.feedback {
        // The claim read-write; a claim already mounted (the artifacts) keeps its one volume.
        let claim = Some(f.claim_name.as_str());
        let name = match volumes
            .iter_mut()
            .find(|v| v.pointer("/persistentVolumeClaim/claimName").and_then(Value::as_str) == claim)
        {
            Some(v) => {
                if let Some(pvc) = v.get_mut("persistentVolumeClaim").and_then(Value::as_object_mut) {
                    pvc.remove("readOnly");
                }
                v["name"].clone()
            }
            None => {
                volumes.push(
                    json!({ "name": "feedback", "persistentVolumeClaim": { "claimName": f.claim_name } }),
                );
                json!("feedback")
            }
        };
        mounts.push(json!({ "name": name, "mountPath": FEEDBACK_MOUNT }));
    }
    let resources = container_resources(rep, cfg);
    let gpus = pod::gpus_in(&resources, &pod::gpu_resource_name(&s.worker, cfg));
    let mut args = serve_args(rep, c, workers(rep, &resources));
    args.extend([pod::DEVICE_FLAG.to_string(), pod::device(gpus).to_string()]);
    match (track, &s.rollout) {
        (Track::Canary(_), _) => args.extend(["--model-version".into(), c.version.clone()]),
        (Track::Stable, Some(ro)) => {
            args.extend(["--model-version".into(), c.version.clone()]);
            if ro.mirror_fraction > 0.0 {
                args.extend([
                    "--mirror-to".into(),
                    canary_url(rep),
                    "--mirror-fraction".into(),
                    ro.mirror_fraction.to_string(),
                ]);
            }
        }
        (Track::Stable, None) => {}
    }
    if s.feedback.is_some() {
        // Feedback may reach any replica; it is forwarded to the one that made the decision.
        args.extend(["--peer-domain".into(), peer_domain(rep)]);
    }
    let probe = |path: &str, period: i32, failures: i32| json!({ "httpGet": { "path": path, "port": "http" }, "periodSeconds": period, "failureThreshold": failures, "timeoutSeconds": 2 });
    let mut container = json!({
        "name": WORKER_CONTAINER,
        "image": pod::image(&s.worker, cfg, gpus),
        "args": args,
        "ports": [{ "name": "http", "containerPort": s.port, "protocol": "TCP" }],
        "resources": resources,
        // Loading and quantising the weights takes a while: the startup probe allows 10 minutes
        // before liveness applies.
        "startupProbe": probe("/healthz", 5, 120),
        "livenessProbe": probe("/healthz", 10, 3),
        "readinessProbe": probe("/readyz", 5, 2),
        "securityContext": pod::container_security(),
        "volumeMounts": mounts,
    });
    if let Some(pp) = s.worker.image_pull_policy {
        container["imagePullPolicy"] = json!(pp.as_str());
    }
    let mut env = pod::env(&s.worker);
    // One thread per decode (each model thread decodes on one core: the fastest setting for a
    // CPU). Without it candle sizes its thread pool to the node's cores, not the container's.
    if !s.worker.env.contains_key(DECODE_THREADS_ENV) {
        env.push(json!({ "name": DECODE_THREADS_ENV, "value": "1" }));
    }
    // Each replica appends feedback to its own file, named by the pod, and is known to the
    // others by its address under the peers Service (`--peer-domain`).
    if s.feedback.is_some() {
        for (name, field) in [("POD_NAME", "metadata.name"), ("POD_IP", "status.podIP")] {
            if !s.worker.env.contains_key(name) {
                env.push(json!({ "name": name, "valueFrom": { "fieldRef": { "fieldPath": field } } }));
            }
        }
    }
    container["env"] = json!(env);
    let pod_spec = pod::pod_spec(&s.worker, cfg, container, volumes);
    let (meta, pod_labels, selector) = match track {
        Track::Stable => (metadata(rep), labels(rep), selector(rep)),
        Track::Canary(_) => {
            let meta = canary_metadata(rep);
            let l = serde_json::from_value(meta["labels"].clone()).unwrap_or_default();
            (meta, l, canary_selector(rep))
        }
    };
    let mut d: Deployment = from_json(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "selector": { "matchLabels": selector },
            // Old pods serve until new ones are ready: a rollout never drops capacity.
            "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 0, "maxSurge": 1 } },
            "progressDeadlineSeconds": s.rollout_deadline_seconds,
            "revisionHistoryLimit": 5,
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": {
                        ANNOTATION_MODEL_VERSION: c.version,
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": s.port.to_string(),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod_spec,
            },
        },
    }));
    if let (Track::Canary(n), Some(spec)) = (track, d.spec.as_mut()) {
        spec.replicas = Some(n.max(1));
    }
    d
}

/// The headless Service of every serving pod (both tracks), ready or not (a draining pod still
/// takes feedback for its decisions). Cluster DNS names each of its addresses
/// `<address with dashes>.<name>-peers.<namespace>.svc` (Deployment pods have no hostname of
/// their own); a replica forwards feedback there, and only the endpoint's own pods resolve.
pub fn peers_service(rep: &RoutingEndpoint) -> Service {
    let mut meta = metadata(rep);
    meta["name"] = json!(peers_child(rep));
    from_json(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": selector(rep),
            "ports": [{ "name": "http", "port": rep.spec.port, "targetPort": "http", "protocol": "TCP" }],
        },
    }))
}

/// The canary's own Service: the current version's pods mirror requests to it.
pub fn canary_service(rep: &RoutingEndpoint) -> Service {
    from_json(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": canary_metadata(rep),
        "spec": {
            "type": "ClusterIP",
            "selector": canary_selector(rep),
            "ports": [{ "name": "http", "port": rep.spec.port, "targetPort": "http", "protocol": "TCP" }],
        },
    }))
}

/// The ClusterIP Service.
pub fn service(rep: &RoutingEndpoint) -> Service {
    from_json(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(rep),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(rep),
            "ports": [{ "name": "http", "port": rep.spec.port, "targetPort": "http", "protocol": "TCP" }],
        },
    }))
}

/// The autoscaler: CPU, plus in-flight requests per pod when a target is set.
pub fn autoscaler(rep: &RoutingEndpoint) -> HorizontalPodAutoscaler {
    let s = &rep.spec;
    let mut metrics = vec![json!({
        "type": "Resource",
        "resource": { "name": "cpu", "target": { "type": "Utilization", "averageUtilization": s.autoscaling.target_cpu_utilization } },
    })];
    if let Some(t) = s.autoscaling.target_in_flight_requests {
        metrics.push(json!({
            "type": "Pods",
            "pods": { "metric": { "name": INFLIGHT_METRIC }, "target": { "type": "AverageValue", "averageValue": t.to_string() } },
        }));
    }
    from_json(json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(rep),
        "spec": {
            "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": child(rep) },
            "minReplicas": s.replicas.min,
            "maxReplicas": s.replicas.max,
            "metrics": metrics,
        },
    }))
}

/// The disruption budget: one pod at a time may be evicted (a single-replica endpoint can still
/// be drained).
pub fn disruption_budget(rep: &RoutingEndpoint) -> PodDisruptionBudget {
    from_json(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(rep),
        "spec": { "selector": { "matchLabels": selector(rep) }, "maxUnavailable": 1 },
    }))
}

/// Whether the live Deployment still holds what `desired` sets: every field of the desired
/// metadata labels/annotations and spec is present with the same value (the API server adds
/// defaults, so the live object is a superset). False when someone edited a field the operator
/// owns.
pub fn matches_applied(live: &Deployment, desired: &Deployment) -> bool {
    let (Ok(live), Ok(desired)) = (serde_json::to_value(live), serde_json::to_value(desired)) else {
        return false;
    };
    ["labels", "annotations"].iter().all(|k| subset(&desired["metadata"][*k], &live["metadata"][*k]))
        && subset(&desired["spec"], &live["spec"])
}

/// `a` is contained in `b`: objects key by key, arrays element by element (same length).
fn subset(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Null, _) => true,
        (Value::Object(a), Value::Object(b)) => a.iter().all(|(k, v)| b.get(k).is_some_and(|w| subset(v, w))),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(v, w)| subset(v, w))
        }
        (a, b) => a == b,
    }
}
