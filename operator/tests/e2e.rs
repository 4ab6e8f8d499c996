//! End to end: the real controller loop against the in-process fake API server drives a
//! TrainingRun through every stage (the test completes each Job and writes the worker's
//! termination message), the run's Evaluation passes, a RoutingEndpoint rolls the version out;
//! then an edited spec re-runs from the changed stage, its Evaluation fails its gates and the
//! endpoint stays on the passing version, gate-blocked.

mod support;

use std::sync::Arc;
use std::time::Duration;

use sapllm_crds::contract::StageResult;
use sapllm_crds::evaluation::EvaluationMetrics;
use sapllm_crds::training_run::{Artifacts, StageName};
use sapllm_operator::config::OperatorConfig;
use sapllm_operator::controller::{self, Context};
use sapllm_operator::metrics::Metrics;
use serde_json::{Value, json};
use support::fake_api::*;

const NS: &str = "ml";

fn tiny_run() -> Value {
    let mut v: Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/trainingrun-tiny.yaml"))
            .unwrap(),
    )
    .unwrap();
    v["metadata"]["namespace"] = json!(NS);
    // The run feeds the endpoint (which does not exist yet when the first Evaluation is made).
    v["spec"]["endpoint"] = json!("sap-router");
    v
}

fn endpoint() -> Value {
    let mut v: Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/routingendpoint.yaml"))
            .unwrap(),
    )
    .unwrap();
    v["metadata"]["namespace"] = json!(NS);
    v
}

use support::version;

/// Starts the three controllers; returns the task and a handle to stop it.
fn start_operator(
    api: &FakeApi,
    metrics: Arc<Metrics>,
) -> (tokio::task::JoinHandle<()>, tokio::sync::oneshot::Sender<()>) {
    let cfg = OperatorConfig {
        progress_interval: Duration::from_millis(100),
        resync_interval: Duration::from_secs(2),
        ..OperatorConfig::default()
    };
    let ctx = Arc::new(
        Context::new(api.client(), cfg, metrics, Some("test".into()))
            .with_pod_client(api.client_without_retry()),
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(controller::run_all(ctx, Some(NS.into()), async {
        let _ = rx.await;
    }));
    (task, tx)
}

/// The Job whose name starts with `prefix`.
fn job_named(api: &FakeApi, prefix: &str) -> Option<Value> {
    api.list(JOBS, NS).into_iter().find(|j| j["metadata"]["name"].as_str().unwrap().starts_with(prefix))
}

/// What the kubelet and the Job controller would do when the worker exits.
fn finish_job(api: &FakeApi, job: &Value, exit_code: i32, result: &StageResult) {
    api.finish_job(job, exit_code, &serde_json::to_string(result).unwrap());
}

fn run_status(api: &FakeApi) -> Value {
    api.get(TRAINING_RUNS, NS, "routing-tiny").map(|r| r["status"].clone()).unwrap_or(Value::Null)
}

async fn run_training(api: &FakeApi, run_dir_version: u8) {
    let stages = [
        (
            StageName::DataPrep,
            "routing-tiny-data-prep-",
            Artifacts { dataset: Some("routing-tiny/data".into()), ..Default::default() },
        ),
        (
            StageName::Pretrain,
            "routing-tiny-pretrain-",
            Artifacts { base_model: Some("routing-tiny/pretrain/model".into()), ..Default::default() },
        ),
        (
            StageName::Sft,
            "routing-tiny-sft-",
            Artifacts { sft_adapter: Some("routing-tiny/sft/adapter".into()), ..Default::default() },
        ),
        (
            StageName::Ppo,
            "routing-tiny-ppo-",
            Artifacts {
                ppo_adapter: Some("routing-tiny/ppo/adapter".into()),
                model_version: Some(version(run_dir_version)),
                ..Default::default()
            },
        ),
    ];
    for (stage, prefix, artifacts) in stages {
        let job = api
            .wait_for(30, &format!("the {} Job", stage.as_str()), |a| {
                job_named(a, prefix).filter(|j| j["status"]["conditions"].is_null())
            })
            .await;
        let result = StageResult {
            stage: Some(stage),
            succeeded: true,
            artifacts: Some(artifacts),
            ..Default::default()
        };
        finish_job(api, &job, 0, &result);
    }
}

fn metrics(routing: f64) -> EvaluationMetrics {
    EvaluationMetrics {
        samples: 200,
        routing_accuracy: routing,
        api_selection_accuracy: 1.0,
        payload_accuracy: 0.995,
        latency_p50_ms: 40.0,
        latency_p95_ms: 90.0,
        latency_p99_ms: 120.0,
        ..Default::default()
    }
}

/// Completes the evaluate Job of the run's newest Evaluation; returns its name.
async fn evaluate(api: &FakeApi, exclude: Option<&str>, routing: f64, v: u8) -> String {
    let ev = api
        .wait_for(30, "the run's Evaluation", |a| {
            a.list(EVALUATIONS, NS)
                .into_iter()
                .map(|e| e["metadata"]["name"].as_str().unwrap().to_string())
                .find(|n| Some(n.as_str()) != exclude)
        })
        .await;
    let job = api.wait_for(30, "the evaluate Job", |a| job_named(a, &format!("{ev}-eval-"))).await;
    let args: Vec<String> =
        serde_json::from_value(job["spec"]["template"]["spec"]["containers"][0]["args"].clone()).unwrap();
    assert_eq!(
        &args[..5],
        [
            "evaluate",
            "--base-model",
            "/artifacts/routing-tiny/pretrain/model",
            "--adapter",
            "/artifacts/routing-tiny/ppo/adapter"
        ]
    );
    assert!(args.contains(&"/artifacts/routing-tiny/data/test_routing_examples.jsonl".to_string()));
    let passed = routing >= 0.97;
    let result = StageResult {
        succeeded: true,
        metrics: Some(metrics(routing)),
        artifacts: Some(Artifacts { model_version: Some(version(v)), ..Default::default() }),
        report: Some(format!("routing-tiny/evaluation/{ev}/EVALUATION_REPORT.md")),
        ..Default::default()
    };
    finish_job(api, &job, if passed { 0 } else { 1 }, &result);
    ev
}

fn condition(obj: &Value, t: &str) -> Option<(String, String, String)> {
    obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == t).map(|c| {
        (
            c["status"].as_str().unwrap().into(),
            c["reason"].as_str().unwrap().into(),
            c["message"].as_str().unwrap().into(),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_evaluation_and_gated_rollout_end_to_end() {
    let api = FakeApi::start().await;
    let metrics = Arc::new(Metrics::new());
    let (task, stop) = start_operator(&api, metrics.clone());
    api.put(TRAINING_RUNS, tiny_run());

    // Data-prep starts; the claim and the rendered manifest exist.
    let job = api.wait_for(30, "the data-prep Job", |a| job_named(a, "routing-tiny-data-prep-")).await;
    assert!(api.get(CLAIMS, NS, "sapllm-artifacts").is_some());
    let cm = api.get(CONFIG_MAPS, NS, "routing-tiny-manifest").unwrap();
    assert!(cm["data"]["trainingrun.yaml"].as_str().unwrap().contains("kind: TrainingRun"));

    // Live progress: a running pod prints progress lines; the operator reads the log tail.
    let name = job["metadata"]["name"].as_str().unwrap();
    let mut labels = job["spec"]["template"]["metadata"]["labels"].clone();
    labels["batch.kubernetes.io/job-name"] = json!(name);
    api.put(PODS, json!({ "apiVersion": "v1", "kind": "Pod", "metadata": { "name": format!("{name}-run"), "namespace": NS, "labels": labels },
        "spec": { "containers": [{ "name": "worker", "image": "w" }] }, "status": { "phase": "Running" } }));
    api.set_log(
        NS,
        &format!("{name}-run"),
        "{\"event\":\"progress\",\"stage\":\"data-prep\",\"step\":1500,\"total\":3000,\"eta_s\":12}\n",
    );
    api.patch(JOBS, NS, name, json!({ "status": { "active": 1 } }));
    api.wait_for(30, "progress in status", |a| {
        (run_status(a)["progress"]["summary"] == "data-prep 1500/3000 (50%)").then_some(())
    })
    .await;
    api.delete(PODS, NS, &format!("{name}-run"));

    run_training(&api, 1).await;
    let ev1 = evaluate(&api, None, 0.985, 1).await;
    let ev = api
        .wait_for(30, "a passing verdict", |a| {
            a.get(EVALUATIONS, NS, &ev1).filter(|e| e["status"]["verdict"] == "Passed")
        })
        .await;
    assert_eq!(ev["metadata"]["ownerReferences"][0]["kind"], "TrainingRun");
    assert_eq!(
        ev["status"]["report"],
        format!("pvc://sapllm-artifacts/routing-tiny/evaluation/{ev1}/EVALUATION_REPORT.md")
    );
    let st = api
        .wait_for(30, "the run to succeed", |a| Some(run_status(a)).filter(|s| s["phase"] == "Succeeded"))
        .await;
    assert_eq!(st["verdict"], "Passed");
    assert_eq!(st["artifacts"]["modelVersion"], version(1));
    assert_eq!(condition(&json!({ "status": st }), "GatesPassed").unwrap().0, "True");

    // The endpoint rolls the passing version out and promotes it once the pods are ready.
    api.put(ENDPOINTS, endpoint());
    let dep = api.wait_for(30, "the Deployment", |a| a.get(DEPLOYMENTS, NS, "sap-router")).await;
    assert_eq!(dep["spec"]["template"]["metadata"]["annotations"]["sapllm.io/model-version"], version(1));
    // Applied one after the other, after the Deployment: wait for each.
    for r in [SERVICES, AUTOSCALERS, BUDGETS] {
        api.wait_for(10, r, |a| a.get(r, NS, "sap-router")).await;
    }
    let g = dep["metadata"]["generation"].clone();
    api.patch(DEPLOYMENTS, NS, "sap-router", json!({ "status": { "observedGeneration": g, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2 } }));
    let rep = api
        .wait_for(30, "the endpoint to serve v1", |a| {
            a.get(ENDPOINTS, NS, "sap-router").filter(|r| r["status"]["activeVersion"] == version(1))
        })
        .await;
    assert_eq!(condition(&rep, "Ready").unwrap().0, "True");
    assert_eq!(rep["status"]["url"], "http://sap-router.ml.svc:8080");

    // A spec edit re-runs from the first changed stage: data-prep and pretrain are kept.
    let kept: Vec<String> = ["routing-tiny-data-prep-", "routing-tiny-pretrain-"]
        .iter()
        .map(|p| job_named(&api, p).unwrap()["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let old_sft =
        job_named(&api, "routing-tiny-sft-").unwrap()["metadata"]["name"].as_str().unwrap().to_string();
    let mut edited = api.get(TRAINING_RUNS, NS, "routing-tiny").unwrap();
    edited["spec"]["stages"]["sft"]["learningRate"] = json!(0.0005);
    api.put(TRAINING_RUNS, edited);
    api.wait_for(30, "the old sft Job to be deleted", |a| a.get(JOBS, NS, &old_sft).is_none().then_some(()))
        .await;
    let st = api
        .wait_for(30, "the re-run", |a| {
            Some(run_status(a)).filter(|s| s["currentStage"] == "sft" && s["observedGeneration"] == 2)
        })
        .await;
    assert_eq!(st["phase"], "Running");
    for k in &kept {
        assert!(api.get(JOBS, NS, k).is_some(), "{k} is kept");
    }
    // Only sft and ppo run again.
    for (stage, prefix, a) in [
        (
            StageName::Sft,
            "routing-tiny-sft-",
            Artifacts { sft_adapter: Some("routing-tiny/sft/adapter".into()), ..Default::default() },
        ),
        (
            StageName::Ppo,
            "routing-tiny-ppo-",
            Artifacts {
                ppo_adapter: Some("routing-tiny/ppo/adapter".into()),
                model_version: Some(version(2)),
                ..Default::default()
            },
        ),
    ] {
        let job = api
            .wait_for(30, prefix, |a| job_named(a, prefix).filter(|j| j["status"]["conditions"].is_null()))
            .await;
        finish_job(
            &api,
            &job,
            0,
            &StageResult { stage: Some(stage), succeeded: true, artifacts: Some(a), ..Default::default() },
        );
    }
    // The new version fails its gates: the run finishes with GatesPassed=False and the endpoint
    // keeps serving v1, gate-blocked.
    let ev2 = evaluate(&api, Some(&ev1), 0.91, 2).await;
    let st = api
        .wait_for(30, "the re-run to finish", |a| {
            Some(run_status(a)).filter(|s| s["phase"] == "Succeeded" && s["verdict"] == "Failed")
        })
        .await;
    assert_eq!(st["evaluation"], ev2);
    let rep = api
        .wait_for(30, "GateBlocked", |a| {
            a.get(ENDPOINTS, NS, "sap-router")
                .filter(|r| condition(r, "GateBlocked").is_some_and(|c| c.0 == "True"))
        })
        .await;
    let (_, reason, message) = condition(&rep, "GateBlocked").unwrap();
    assert_eq!(reason, "GatesFailed");
    assert!(message.contains(&version(2)) && message.contains("routingAccuracy 0.91 < 0.97"), "{message}");
    assert_eq!(rep["status"]["activeVersion"], version(1));
    let dep = api.get(DEPLOYMENTS, NS, "sap-router").unwrap();
    assert_eq!(dep["spec"]["template"]["metadata"]["annotations"]["sapllm.io/model-version"], version(1));

    // Settled: nothing changes any more (a reconcile loop that keeps rewriting status or
    // children would show here; idempotent re-applies by the resync change nothing).
    let rv = api.rv();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let changes: Vec<String> = api.changes_after(rv).into_iter().filter(|c| !c.starts_with(EVENTS)).collect();
    assert!(changes.is_empty(), "changes while idle: {changes:?}");

    // A restarted operator adopts what exists: no Job is created twice.
    let applies_before = job_applies(&api);
    stop.send(()).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    let (task, stop) = start_operator(&api, metrics.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(job_applies(&api), applies_before, "a restart creates no Job");
    let mut names: Vec<String> = job_applies(&api).into_iter().collect();
    let n = names.len();
    names.dedup();
    assert_eq!(names.len(), n, "every Job was applied exactly once");

    // One field manager, server-side apply for children and status (Event series are patched by
    // kube-runtime's recorder).
    for r in api.requests().iter().filter(|r| r.method == "PATCH" && r.resource != EVENTS) {
        assert_eq!(r.query.get("fieldManager").map(String::as_str), Some("sapllm-operator"), "{r:?}");
        if r.content_type.contains("apply-patch") {
            assert_eq!(r.query.get("force").map(String::as_str), Some("true"), "{r:?}");
        }
    }
    // The spec of the endpoint was never written (GitOps): only its status.
    assert!(
        !api.requests().iter().any(|r| r.resource == ENDPOINTS
            && r.method != "GET"
            && r.subresource.as_deref() != Some("status"))
    );
    let reasons: Vec<String> =
        api.list(EVENTS, NS).iter().map(|e| e["reason"].as_str().unwrap_or_default().to_string()).collect();
    for want in [
        "StageStarted",
        "StageSucceeded",
        "RunSucceeded",
        "SpecChanged",
        "GatesPassed",
        "GatesFailed",
        "Promoted",
        "GateBlocked",
    ] {
        assert!(reasons.iter().any(|r| r == want), "Event {want} in {reasons:?}");
    }
    // Least privilege both ways: every request is allowed by the chart's ClusterRole/Role, and
    // every rule of the ClusterRole was needed by some request.
    let rules = chart_rules();
    let mut used = std::collections::BTreeSet::new();
    for r in api.requests() {
        let (group, resource) = group_resource(&r);
        let verb = verb(&r);
        let allowed =
            rules.iter().any(|(g, res, verbs)| g == &group && res == &resource && verbs.contains(&verb));
        assert!(allowed, "{verb} {group}/{resource} is not granted by the chart: {r:?}");
        used.insert((group.clone(), resource.clone(), verb.clone()));
        // Server-side apply creates missing objects: that needs "create" too.
        if r.content_type.contains("apply-patch") && r.subresource.is_none() {
            used.insert((group, resource, "create".to_string()));
        }
    }
    for (g, res, verbs) in &rules {
        for v in verbs {
            if res == "leases" {
                continue; // exercised by tests/operations.rs
            }
            if (res == "pods/proxy" && v == "get") || (res == "deployments" && v == "delete") {
                continue; // exercised by canary_rollouts_promote_a_good_version_and_roll_back_bad_ones
            }
            assert!(
                used.contains(&(g.clone(), res.clone(), v.clone())),
                "the chart grants {v} {g}/{res}, which the operator never used"
            );
        }
    }

    let text = metrics.render();
    assert!(text.contains("sapllm_operator_promotions_total 1"), "{text}");
    assert!(text.contains("sapllm_operator_gate_verdicts_total{verdict=\"Failed\"} 1"), "{text}");
    stop.send(()).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}

/// Names of the Jobs the operator applied, in order.
fn job_applies(api: &FakeApi) -> Vec<String> {
    let mut v: Vec<String> = api
        .requests()
        .into_iter()
        .filter(|r| r.resource == JOBS && r.method == "PATCH" && r.content_type.contains("apply-patch"))
        .filter_map(|r| r.name)
        .collect();
    v.sort();
    v
}

/// (apiGroup, resource, verbs) of the chart's ClusterRole and leader-election Role.
fn chart_rules() -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    for file in ["clusterrole.yaml", "leader-election-role.yaml"] {
        let path = format!("{}/../charts/sapllm-operator/templates/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(path).unwrap();
        // The rules are plain YAML between "rules:" and the next document; template lines aside.
        let body: String = text
            .split("rules:")
            .nth(1)
            .unwrap()
            .split("\n---")
            .next()
            .unwrap()
            .lines()
            .filter(|l| !l.contains("{{"))
            .map(|l| format!("{l}\n"))
            .collect();
        let rules: Vec<Value> = serde_yaml::from_str(&body).unwrap();
        for r in rules {
            let verbs: Vec<String> = serde_json::from_value(r["verbs"].clone()).unwrap();
            for g in r["apiGroups"].as_array().unwrap() {
                for res in r["resources"].as_array().unwrap() {
                    out.push((
                        g.as_str().unwrap().to_string(),
                        res.as_str().unwrap().to_string(),
                        verbs.clone(),
                    ));
                }
            }
        }
    }
    out
}

fn group_resource(r: &Request) -> (String, String) {
    let mut parts = r.resource.rsplitn(3, '/');
    let plural = parts.next().unwrap().to_string();
    let _version = parts.next();
    let group = parts.next().unwrap_or_default().to_string();
    let resource = match &r.subresource {
        Some(s) => format!("{plural}/{s}"),
        None => plural,
    };
    (group, resource)
}

fn verb(r: &Request) -> String {
    match (r.method.as_str(), &r.name) {
        ("GET", None) if r.query.get("watch").is_some_and(|w| w == "true" || w == "1") => "watch",
        ("GET", None) => "list",
        ("GET", Some(_)) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", _) => "delete",
        _ => "unknown",
    }
    .to_string()
}

/// A passing Evaluation of version `n` of the routing-tiny lineage, as the evaluate Job leaves it.
fn passing_evaluation(n: u8) -> Value {
    let mut v: Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/evaluation.yaml"))
            .unwrap(),
    )
    .unwrap();
    let adapter = format!("routing-tiny/v{n}/adapter");
    v["metadata"] = json!({ "name": format!("routing-tiny-v{n}"), "namespace": NS, "labels": { "sapllm.io/lineage": "routing-tiny" } });
    v["spec"]["model"]["artifacts"]["adapter"] = json!(adapter);
    v["status"] = json!({
        "phase": "Completed", "verdict": "Passed", "observedGeneration": 1, "jobName": format!("routing-tiny-v{n}-eval"),
        "modelVersion": version(n),
        "artifacts": { "baseModel": "routing-tiny/pretrain/model", "adapter": adapter, "version": version(n) },
        "completionTime": format!("2026-12-01T00:00:{n:02}Z"),
    });
    v
}

/// What the Deployment controller reports once every replica of the current template is ready.
fn roll_out(api: &FakeApi, name: &str, replicas: i64) {
    let g = api.get(DEPLOYMENTS, NS, name).unwrap()["metadata"]["generation"].clone();
    api.patch(DEPLOYMENTS, NS, name, json!({ "status": { "observedGeneration": g, "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas } }));
}

/// A ready pod of Deployment `dep` as the ReplicaSet controller makes it.
fn ready_pod(api: &FakeApi, dep: &Value, name: &str) {
    let meta = &dep["spec"]["template"]["metadata"];
    api.put(PODS, json!({ "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "namespace": NS, "labels": meta["labels"], "annotations": meta["annotations"] },
        "spec": { "containers": [{ "name": "worker", "image": "w" }] },
        "status": { "phase": "Running", "conditions": [{ "type": "Ready", "status": "True" }],
            "containerStatuses": [{ "name": "worker", "ready": true, "restartCount": 0, "image": "w", "imageID": "w" }] } }));
}

/// The exposition of a canary pod: `decisions` single-document decisions, no errors, every
/// request within `latency_s`.
fn canary_metrics(decisions: u32, latency_s: f64) -> String {
    let mut t = format!(
        "# TYPE sapllm_decisions_total counter\nsapllm_decisions_total{{kind=\"routing\",outcome=\"accepted\"}} {decisions}\n\
         sapllm_requests_total{{route=\"/v1/route\",status=\"200\"}} {decisions}\nsapllm_requests_total{{route=\"/readyz\",status=\"503\"}} 3\n"
    );
    for le in [0.1, 0.25, 0.5, 1.0, 2.5] {
        let n = if latency_s <= le { decisions } else { 0 };
        t.push_str(&format!(
            "sapllm_request_duration_seconds_bucket{{route=\"/v1/route\",le=\"{le}\"}} {n}\n"
        ));
    }
    t.push_str(&format!(
        "sapllm_request_duration_seconds_bucket{{route=\"/v1/route\",le=\"+Inf\"}} {decisions}\n"
    ));
    t
}

/// The exposition of a current-version pod that compared `agreed` + `differed` mirrored answers
/// of version `n`.
fn stable_metrics(n: u8, agreed: u32, differed: u32) -> String {
    let v = version(n);
    format!(
        "sapllm_mirror_comparisons_total{{outcome=\"agreed\",version=\"{v}\"}} {agreed}\n\
         sapllm_mirror_comparisons_total{{outcome=\"endpoint_differs\",version=\"{v}\"}} {differed}\n\
         sapllm_mirror_abstentions_total{{side=\"primary\",version=\"{v}\"}} 1\n\
         sapllm_mirror_abstentions_total{{side=\"mirror\",version=\"{v}\"}} 1\n"
    )
}

/// One series of an instant-query answer.
fn series(name: &str, labels: &[(&str, &str)], value: f64) -> Value {
    let mut metric = json!({ "__name__": name, "namespace": NS });
    for (k, v) in labels {
        metric[*k] = json!(v);
    }
    json!({ "metric": metric, "value": [1.8e9, value.to_string()] })
}

/// A Prometheus HTTP API answering every instant query with the `series` whose name the query
/// names; returns its URL and the queries it was asked.
async fn fake_prometheus(series: Vec<Value>) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::extract::Query;
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = asked.clone();
    let app = axum::Router::new().route(
        "/api/v1/query",
        axum::routing::get(move |Query(q): Query<std::collections::HashMap<String, String>>| {
            let query = q.get("query").cloned().unwrap_or_default();
            log.lock().unwrap().push(query.clone());
            let result: Vec<Value> = series
                .iter()
                .filter(|s| query.contains(s["metric"]["__name__"].as_str().unwrap()))
                .cloned()
                .collect();
            async move {
                axum::Json(
                    json!({ "status": "success", "data": { "resultType": "vector", "result": result } }),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, asked)
}

/// Canary rollouts with scripted live signals: a good canary passes its step and is promoted; a
/// canary that disagrees with the current version, and a slow one, are rolled back by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_rollouts_promote_a_good_version_and_roll_back_bad_ones() {
    let api = FakeApi::start().await;
    let metrics = Arc::new(Metrics::new());
    let (task, stop) = start_operator(&api, metrics.clone());
    api.put(EVALUATIONS, passing_evaluation(1));
    let mut rep = endpoint();
    rep["spec"]["rollout"] = json!({ "steps": [50], "dwellSeconds": 1,
        "analysis": { "intervalSeconds": 1, "minDecisions": 10, "minComparisons": 10 } });
    api.put(ENDPOINTS, rep);

    // The first version has nothing to be compared with: an ordinary rollout.
    let dep = api.wait_for(30, "the Deployment", |a| a.get(DEPLOYMENTS, NS, "sap-router")).await;
    roll_out(&api, "sap-router", 2);
    api.wait_for(30, "v1 serving", |a| {
        a.get(ENDPOINTS, NS, "sap-router").filter(|r| r["status"]["activeVersion"] == version(1))
    })
    .await;
    let args = dep["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(
        args.contains(
            "\"--mirror-to\",\"http://sap-router-canary.ml.svc:8080\",\"--mirror-fraction\",\"0.1\""
        ),
        "{args}"
    );
    let svc = api.wait_for(10, "the canary Service", |a| a.get(SERVICES, NS, "sap-router-canary")).await;
    assert_eq!(svc["spec"]["selector"]["sapllm.io/track"], "canary");
    ready_pod(&api, &dep, "sap-router-stable-a");

    // A good canary: 50 % of the pods, waits for traffic, passes, is promoted.
    api.put(EVALUATIONS, passing_evaluation(2));
    let canary = api
        .wait_for(30, "the canary Deployment", |a| {
            a.get(DEPLOYMENTS, NS, "sap-router-canary").filter(|d| {
                d["spec"]["template"]["metadata"]["annotations"]["sapllm.io/model-version"] == version(2)
            })
        })
        .await;
    assert_eq!(canary["spec"]["replicas"], 2, "50 % beside 2 current replicas");
    assert_eq!(canary["spec"]["selector"]["matchLabels"]["sapllm.io/track"], "canary");
    ready_pod(&api, &canary, "sap-router-canary-v2");
    roll_out(&api, "sap-router-canary", 2);
    let rep = api
        .wait_for(30, "the canary to wait for traffic", |a| {
            a.get(ENDPOINTS, NS, "sap-router").filter(|r| {
                r["status"]["canary"]["message"].as_str().is_some_and(|m| m.contains("waiting for traffic"))
            })
        })
        .await;
    assert_eq!(rep["status"]["canary"]["summary"], "1/1 50%");
    assert_eq!(condition(&rep, "Progressing").unwrap().1, "Canary");
    assert_eq!(rep["status"]["activeVersion"], version(1), "the current version serves beside it");
    api.set_metrics(NS, "sap-router-canary-v2", &canary_metrics(40, 0.08));
    api.set_metrics(NS, "sap-router-stable-a", &stable_metrics(2, 30, 0));
    api.wait_for(30, "the current Deployment to take v2 over", |a| {
        a.get(DEPLOYMENTS, NS, "sap-router").filter(|d| {
            d["spec"]["template"]["metadata"]["annotations"]["sapllm.io/model-version"] == version(2)
        })
    })
    .await;
    assert!(api.get(DEPLOYMENTS, NS, "sap-router-canary").is_some(), "the canary serves until then");
    roll_out(&api, "sap-router", 2);
    let rep = api
        .wait_for(30, "v2 promoted", |a| {
            a.get(ENDPOINTS, NS, "sap-router").filter(|r| r["status"]["activeVersion"] == version(2))
        })
        .await;
    assert!(rep["status"]["canary"].is_null());
    assert_eq!(rep["status"]["previousVersion"], version(1));
    api.wait_for(10, "the canary Deployment to go", |a| {
        a.get(DEPLOYMENTS, NS, "sap-router-canary").is_none().then_some(())
    })
    .await;
    api.delete(PODS, NS, "sap-router-canary-v2");

    // A disagreeing canary and a slow one are rolled back; v2 keeps serving.
    for (n, agreed, differed, latency, reason) in
        [(3u8, 10, 20, 0.08, "CanaryDisagreement"), (4, 30, 0, 0.9, "CanaryLatency")]
    {
        api.put(EVALUATIONS, passing_evaluation(n));
        let canary = api
            .wait_for(30, "the canary Deployment", |a| {
                a.get(DEPLOYMENTS, NS, "sap-router-canary").filter(|d| {
                    d["spec"]["template"]["metadata"]["annotations"]["sapllm.io/model-version"] == version(n)
                })
            })
            .await;
        let pod = format!("sap-router-canary-v{n}");
        ready_pod(&api, &canary, &pod);
        roll_out(&api, "sap-router-canary", 2);
        api.set_metrics(NS, &pod, &canary_metrics(40, latency));
        api.set_metrics(NS, "sap-router-stable-a", &stable_metrics(n, agreed, differed));
        let rep = api
            .wait_for(30, reason, |a| {
                a.get(ENDPOINTS, NS, "sap-router").filter(|r| r["status"]["rolledBackVersion"] == version(n))
            })
            .await;
        let (status, why, message) = condition(&rep, "RolledBack").unwrap();
        assert_eq!((status.as_str(), why.as_str()), ("True", reason), "{message}");
        assert!(message.contains(&format!("serving {}", version(2))), "{message}");
        assert_eq!(rep["status"]["activeVersion"], version(2));
        assert!(rep["status"]["canary"].is_null());
        api.wait_for(10, "the canary Deployment to go", |a| {
            a.get(DEPLOYMENTS, NS, "sap-router-canary").is_none().then_some(())
        })
        .await;
        let dep = api.get(DEPLOYMENTS, NS, "sap-router").unwrap();
        assert_eq!(dep["spec"]["template"]["metadata"]["annotations"]["sapllm.io/model-version"], version(2));
        api.delete(PODS, NS, &pod);
    }

    // Signals from Prometheus instead: the spec change is a new request, so the rolled-back v4
    // is tried again, and this time its signals (from Prometheus, not the slow pod's /metrics)
    // are good.
    let (prom_url, queries) = fake_prometheus(vec![
        series("sapllm_decisions_total", &[("kind", "routing"), ("outcome", "accepted")], 40.0),
        series("sapllm_requests_total", &[("route", "/v1/route"), ("status", "200")], 40.0),
        series("sapllm_request_duration_seconds_bucket", &[("route", "/v1/route"), ("le", "0.1")], 40.0),
        series("sapllm_request_duration_seconds_bucket", &[("route", "/v1/route"), ("le", "+Inf")], 40.0),
        series("sapllm_mirror_comparisons_total", &[("outcome", "agreed"), ("version", &version(4))], 30.0),
    ])
    .await;
    let mut rep = api.get(ENDPOINTS, NS, "sap-router").unwrap();
    rep["spec"]["rollout"]["prometheusUrl"] = json!(prom_url);
    api.put(ENDPOINTS, rep);
    let canary = api
        .wait_for(30, "the v4 canary again", |a| {
            a.get(DEPLOYMENTS, NS, "sap-router-canary").filter(|d| {
                d["spec"]["template"]["metadata"]["annotations"]["sapllm.io/model-version"] == version(4)
            })
        })
        .await;
    ready_pod(&api, &canary, "sap-router-canary-v4");
    roll_out(&api, "sap-router-canary", 2);
    api.wait_for(30, "the current Deployment to take v4 over", |a| {
        a.get(DEPLOYMENTS, NS, "sap-router").filter(|d| {
            d["spec"]["template"]["metadata"]["annotations"]["sapllm.io/model-version"] == version(4)
        })
    })
    .await;
    roll_out(&api, "sap-router", 2);
    api.wait_for(30, "v4 promoted", |a| {
        a.get(ENDPOINTS, NS, "sap-router").filter(|r| r["status"]["activeVersion"] == version(4))
    })
    .await;
    let asked = queries.lock().unwrap().clone();
    assert!(
        asked.iter().any(|q| q.contains("namespace=\"ml\"")
            && q.contains("pod=~\"sap-router-canary-[a-z0-9]+-[a-z0-9]+\"")),
        "{asked:?}"
    );
    assert!(
        asked.iter().any(|q| q.contains("sapllm_mirror_comparisons_total") && q.contains(&version(4))),
        "{asked:?}"
    );

    let reasons: Vec<String> =
        api.list(EVENTS, NS).iter().map(|e| e["reason"].as_str().unwrap_or_default().to_string()).collect();
    for want in ["RolloutStarted", "CanaryPassed", "Promoted", "RolledBack"] {
        assert!(reasons.iter().any(|r| r == want), "Event {want} in {reasons:?}");
    }
    let text = metrics.render();
    assert!(text.contains("sapllm_operator_promotions_total 3"), "{text}");
    assert!(text.contains("sapllm_operator_rollbacks_total 2"), "{text}");
    // Only status was written on the endpoint, and every request is one the chart grants.
    assert!(
        !api.requests().iter().any(|r| r.resource == ENDPOINTS
            && r.method != "GET"
            && r.subresource.as_deref() != Some("status"))
    );
    let rules = chart_rules();
    let mut used = std::collections::BTreeSet::new();
    for r in api.requests() {
        let (group, resource) = group_resource(&r);
        let verb = verb(&r);
        assert!(
            rules.iter().any(|(g, res, verbs)| g == &group && res == &resource && verbs.contains(&verb)),
            "{verb} {group}/{resource} is not granted by the chart: {r:?}"
        );
        used.insert((resource, verb));
    }
    assert!(used.contains(&("pods/proxy".to_string(), "get".to_string())));
    assert!(used.contains(&("deployments".to_string(), "delete".to_string())));
    stop.send(()).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}

/// A Deployment with the endpoint's child name that someone else made is not taken over (a
/// forced server-side apply would): the endpoint says so, and takes the name once it is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_name_held_by_someone_else_is_not_taken_over() {
    let api = FakeApi::start().await;
    let (task, stop) = start_operator(&api, Arc::new(Metrics::new()));
    let foreign = json!({ "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "sap-router", "namespace": NS, "labels": { "team": "payments" } },
        "spec": { "selector": { "matchLabels": { "app": "payments" } },
            "template": { "metadata": { "labels": { "app": "payments" } }, "spec": { "containers": [{ "name": "app", "image": "payments:1" }] } } } });
    api.put(DEPLOYMENTS, foreign.clone());
    api.put(EVALUATIONS, passing_evaluation(1));
    api.put(ENDPOINTS, endpoint());
    let rep = api
        .wait_for(30, "NameConflict", |a| {
            a.get(ENDPOINTS, NS, "sap-router")
                .filter(|r| condition(r, "NameConflict").is_some_and(|c| c.0 == "True"))
        })
        .await;
    let (_, _, message) = condition(&rep, "NameConflict").unwrap();
    assert!(message.contains("Deployment ml/sap-router belongs to no controller"), "{message}");
    let before = api.request_count();
    tokio::time::sleep(Duration::from_millis(2500)).await; // more than one resync
    let writes: Vec<Request> = api
        .requests_since(before)
        .into_iter()
        .filter(|r| r.resource == DEPLOYMENTS && r.method != "GET")
        .collect();
    assert!(writes.is_empty(), "the foreign Deployment was written: {writes:?}");
    assert_eq!(api.get(DEPLOYMENTS, NS, "sap-router").unwrap()["spec"], foreign["spec"]);
    assert!(api.list(EVENTS, NS).iter().any(|e| e["reason"] == "NameConflict"));

    // Once the name is free, the endpoint's own Deployment is made and the conflict clears.
    api.delete(DEPLOYMENTS, NS, "sap-router");
    api.wait_for(30, "the endpoint's own Deployment", |a| {
        a.get(DEPLOYMENTS, NS, "sap-router")
            .filter(|d| d["metadata"]["ownerReferences"][0]["kind"] == "RoutingEndpoint")
    })
    .await;
    api.wait_for(30, "NameConflict False", |a| {
        a.get(ENDPOINTS, NS, "sap-router")
            .filter(|r| condition(r, "NameConflict").is_some_and(|c| c.0 == "False"))
    })
    .await;
    stop.send(()).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}
