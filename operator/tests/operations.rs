//! Operations against the fake API server: leader election on a Lease, the probe and metrics
//! endpoints, and the automatic rollback of a rollout that misses its deadline.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use sapllm_operator::config::OperatorConfig;
use sapllm_operator::controller::{Context, endpoint};
use sapllm_operator::http::{Health, router};
use sapllm_operator::leader::{LeaseConfig, release, try_acquire_or_renew};
use sapllm_operator::metrics::Metrics;
use serde_json::{Value, json};
use support::fake_api::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn lease(identity: &str) -> LeaseConfig {
    LeaseConfig {
        name: "sapllm-operator".into(),
        namespace: "sapllm-system".into(),
        identity: identity.into(),
        duration: Duration::from_secs(15),
        retry: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn one_replica_leads_until_its_lease_expires_or_is_released() {
    let api = FakeApi::start().await;
    let leases: Api<Lease> = Api::namespaced(api.client(), "sapllm-system");
    let (a, b) = (lease("pod-a"), lease("pod-b"));
    let t0 = Timestamp::now();
    assert!(try_acquire_or_renew(&leases, &a, t0).await.unwrap(), "a creates the Lease");
    assert!(!try_acquire_or_renew(&leases, &b, t0).await.unwrap(), "b waits while a's lease is valid");
    let t1 = t0 + SignedDuration::from_secs(10);
    assert!(try_acquire_or_renew(&leases, &a, t1).await.unwrap(), "a renews");
    assert!(
        !try_acquire_or_renew(&leases, &b, t1 + SignedDuration::from_secs(14)).await.unwrap(),
        "renewal restarted the clock"
    );
    let t2 = t1 + SignedDuration::from_secs(15);
    assert!(try_acquire_or_renew(&leases, &b, t2).await.unwrap(), "b takes over an expired lease");
    assert!(!try_acquire_or_renew(&leases, &a, t2).await.unwrap(), "a has lost it");
    let l = api.get(LEASES, "sapllm-system", "sapllm-operator").unwrap();
    assert_eq!(l["spec"]["holderIdentity"], "pod-b");
    assert_eq!(l["spec"]["leaseTransitions"], 1);
    release(&leases, &b).await;
    assert!(try_acquire_or_renew(&leases, &a, t2).await.unwrap(), "a released lease is free at once");
    // Every write carried the resourceVersion read before it (optimistic concurrency).
    let puts: Vec<_> = api.requests().into_iter().filter(|r| r.method == "PUT").collect();
    assert!(!puts.is_empty());
}

#[tokio::test]
async fn a_stale_resource_version_loses_the_race() {
    let api = FakeApi::start().await;
    let leases: Api<Lease> = Api::namespaced(api.client(), "sapllm-system");
    let t0 = Timestamp::now();
    assert!(try_acquire_or_renew(&leases, &lease("pod-a"), t0).await.unwrap());
    let mut stale: Lease = leases.get("sapllm-operator").await.unwrap();
    // Someone else writes in between; the stale replace must fail with 409.
    let mut current = api.get(LEASES, "sapllm-system", "sapllm-operator").unwrap();
    current["spec"]["holderIdentity"] = json!("pod-c");
    api.put(LEASES, current);
    stale.spec.as_mut().unwrap().holder_identity = Some("pod-b".into());
    let err = leases.replace("sapllm-operator", &Default::default(), &stale).await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(e) if e.code == 409));
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn probes_and_metrics_are_served() {
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health { metrics: metrics.clone(), ready: false.into() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(health.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    assert!(http_get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
    assert!(http_get(addr, "/readyz").await.starts_with("HTTP/1.1 503"));
    health.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(http_get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
    metrics.runs_by_phase([Some("Running"), None, Some("Failed")]);
    let _t = metrics.reconcile("TrainingRun");
    let text = http_get(addr, "/metrics").await;
    for line in [
        "sapllm_operator_training_runs{phase=\"Running\"} 1",
        "sapllm_operator_training_runs{phase=\"Pending\"} 1",
        "sapllm_operator_training_runs{phase=\"Succeeded\"} 0",
        "sapllm_operator_reconciles_total{kind=\"TrainingRun\"} 1",
        "sapllm_operator_leader 0",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}

use support::version;

fn passed_evaluation(name: &str, n: u8, completed: &str) -> Value {
    json!({
        "apiVersion": "sapllm.io/v1alpha1", "kind": "Evaluation",
        "metadata": { "name": name, "namespace": "ml", "labels": { "sapllm.io/lineage": "routing-tiny" } },
        "spec": { "model": { "artifacts": { "baseModel": format!("v{n}/model"), "adapter": format!("v{n}/adapter") } },
                  "storage": { "claimName": "sapllm-artifacts" }, "dataset": { "claimName": "sapllm-artifacts", "path": "test.jsonl" } },
        "status": { "phase": "Completed", "verdict": "Passed", "modelVersion": version(n), "completionTime": completed,
                    "artifacts": { "baseModel": format!("v{n}/model"), "adapter": format!("v{n}/adapter"), "version": version(n) } },
    })
}

fn served(api: &FakeApi) -> Option<String> {
    let d = api.get(DEPLOYMENTS, "ml", "sap-router")?;
    d["spec"]["template"]["metadata"]["annotations"]["sapllm.io/model-version"].as_str().map(String::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_that_misses_its_deadline_is_rolled_back() {
    let api = FakeApi::start().await;
    let metrics = Arc::new(Metrics::new());
    let ctx = Arc::new(Context::new(api.client(), OperatorConfig::default(), metrics.clone(), None));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let ctl = endpoint::controller(ctx.clone(), Some("ml"))
        .graceful_shutdown_on(async {
            let _ = rx.await;
        })
        .run(endpoint::reconcile, endpoint::error_policy, ctx)
        .for_each(|_| async {});
    let task = tokio::spawn(ctl);

    api.put(EVALUATIONS, passed_evaluation("ev-1", 1, "2027-01-01T00:00:00Z"));
    // The schema's minimum is 10 s; the fake API does not enforce it, so the test need not wait.
    api.put(
        ENDPOINTS,
        json!({ "apiVersion": "sapllm.io/v1alpha1", "kind": "RoutingEndpoint",
                "metadata": { "name": "sap-router", "namespace": "ml" },
                "spec": { "model": { "latestPassing": { "lineage": "routing-tiny" } }, "rolloutDeadlineSeconds": 1 } }),
    );
    api.wait_for(30, "v1 rolled out", |a| (served(a) == Some(version(1))).then_some(())).await;
    let g = api.get(DEPLOYMENTS, "ml", "sap-router").unwrap()["metadata"]["generation"].clone();
    api.patch(DEPLOYMENTS, "ml", "sap-router", json!({ "status": { "observedGeneration": g, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1 } }));
    api.wait_for(30, "v1 active", |a| {
        a.get(ENDPOINTS, "ml", "sap-router").filter(|r| r["status"]["activeVersion"] == version(1))
    })
    .await;

    // v2 passes, is rolled out, and its pods never become ready.
    api.put(EVALUATIONS, passed_evaluation("ev-2", 2, "2027-01-02T00:00:00Z"));
    api.wait_for(30, "v2 rolling out", |a| (served(a) == Some(version(2))).then_some(())).await;
    let rep = api
        .wait_for(30, "the rollback", |a| {
            a.get(ENDPOINTS, "ml", "sap-router").filter(|r| r["status"]["rolledBackVersion"] == version(2))
        })
        .await;
    assert_eq!(served(&api), Some(version(1)), "the Deployment runs v1 again");
    assert_eq!(rep["status"]["activeVersion"], version(1));
    let rb = rep["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "RolledBack")
        .unwrap()
        .clone();
    assert_eq!(rb["status"], "True");
    assert_eq!(rb["reason"], "RolloutDeadlineExceeded");
    // It stays rolled back: v2 is not retried by itself.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(served(&api), Some(version(1)));
    assert!(metrics.render().contains("sapllm_operator_rollbacks_total 1"));
    let _ = tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}

fn run_status(api: &FakeApi, name: &str) -> Value {
    api.get(TRAINING_RUNS, "ml", name).map(|r| r["status"].clone()).unwrap_or(Value::Null)
}

fn failed_condition(status: &Value) -> Option<(String, String, String)> {
    status["conditions"].as_array()?.iter().find(|c| c["type"] == "Failed").map(|c| {
        (
            c["status"].as_str().unwrap().into(),
            c["reason"].as_str().unwrap().into(),
            c["message"].as_str().unwrap().into(),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_exhausted_retries_reach_status_and_conditions() {
    let api = FakeApi::start().await;
    let cfg = OperatorConfig { progress_interval: Duration::from_millis(100), ..OperatorConfig::default() };
    let ctx = Arc::new(Context::new(api.client(), cfg, Arc::new(Metrics::new()), None));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sapllm_operator::controller::run_all(ctx, Some("ml".into()), async {
        let _ = rx.await;
    }));
    let run = |name: &str, sub_path: &str| {
        json!({ "apiVersion": "sapllm.io/v1alpha1", "kind": "TrainingRun",
                "metadata": { "name": name, "namespace": "ml" },
                "spec": { "baseModel": { "preset": "tiny" }, "storage": { "claimName": "artifacts", "subPath": sub_path } } })
    };
    // Bad input: Failed, reason InvalidSpec, the message names the field; no Job is created.
    api.put(TRAINING_RUNS, run("bad", "../outside"));
    let st = api
        .wait_for(30, "InvalidSpec", |a| Some(run_status(a, "bad")).filter(|s| s["phase"] == "Failed"))
        .await;
    let (status, reason, message) = failed_condition(&st).unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("True", "InvalidSpec"));
    assert!(message.starts_with("spec.storage.subPath:"), "{message}");

    // A stage whose retries are exhausted: the Job's reason and the worker's message in status.
    api.put(TRAINING_RUNS, run("crashy", "runs/crashy"));
    let job = api
        .wait_for(30, "the data-prep Job", |a| {
            a.list(JOBS, "ml")
                .into_iter()
                .find(|j| j["metadata"]["name"].as_str().unwrap().starts_with("crashy-data-prep-"))
        })
        .await;
    let name = job["metadata"]["name"].as_str().unwrap().to_string();
    assert_eq!(job["spec"]["backoffLimit"], 2);
    for i in 0..3 {
        let mut labels = job["spec"]["template"]["metadata"]["labels"].clone();
        labels["batch.kubernetes.io/job-name"] = json!(name);
        let result = json!({ "stage": "data-prep", "succeeded": false, "message": format!("attempt {i}: catalog.json: missing field `apis`") });
        api.put(
            PODS,
            json!({ "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": format!("{name}-{i}"), "namespace": "ml", "labels": labels, "creationTimestamp": format!("2027-01-01T00:00:0{i}Z") },
                "spec": { "containers": [{ "name": "worker", "image": "w" }] },
                "status": { "phase": "Failed", "containerStatuses": [{ "name": "worker", "image": "w", "imageID": "", "ready": false, "restartCount": 0,
                    "state": { "terminated": { "exitCode": 2, "message": result.to_string() } } }] } }),
        );
    }
    api.patch(
        JOBS,
        "ml",
        &name,
        json!({ "status": { "failed": 3, "conditions": [{ "type": "Failed", "status": "True",
        "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit" }] } }),
    );
    let st = api
        .wait_for(30, "the run to fail", |a| Some(run_status(a, "crashy")).filter(|s| s["phase"] == "Failed"))
        .await;
    let (_, reason, message) = failed_condition(&st).unwrap();
    assert_eq!(reason, "StageFailed");
    assert!(message.contains("data-prep failed after 3 attempt(s)"), "{message}");
    assert!(
        message.contains("BackoffLimitExceeded") && message.contains("attempt 2: catalog.json"),
        "the newest pod's message: {message}"
    );
    assert_eq!(st["stages"][0]["attempts"], 3);
    assert_eq!(st["currentStage"], "data-prep");
    // Nothing is started after the failure.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !api.list(JOBS, "ml")
            .iter()
            .any(|j| j["metadata"]["name"].as_str().unwrap().starts_with("crashy-pretrain-"))
    );
    let _ = tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}
