//! RoutingEndpoint: selection by gates, the rollout state machine and the serving children.

mod support;

use k8s_openapi::api::apps::v1::Deployment;
use sapllm_crds::endpoint::{FeedbackSink, PinnedModel, RoutingEndpoint};
use sapllm_crds::evaluation::{Evaluation, EvaluationPhase};
use sapllm_operator::config::OperatorConfig;
use sapllm_operator::endpoint::{self, DeploymentObs};
use support::{assert_fixture, at, input, version};

fn ev(name: &str, n: u8, passed: bool, completed_at: i64) -> Evaluation {
    support::evaluation(name, n, passed, completed_at)
}

fn rep() -> RoutingEndpoint {
    input("rep-latest")
}

fn ready_on(v: &str) -> DeploymentObs {
    DeploymentObs { version: Some(v.into()), rolled_out: true, ready_replicas: 2 }
}

#[test]
fn latest_passing_follows_the_newest_passing_version_and_reports_a_failing_newer_one() {
    let evs = vec![ev("a", 1, true, 10), ev("b", 2, true, 20), ev("c", 3, false, 30)];
    let s = endpoint::select(&rep(), &evs);
    assert_eq!(s.serve.as_ref().unwrap().version, version(2));
    let (reason, msg) = s.blocked.unwrap();
    assert_eq!(reason, "GatesFailed");
    assert!(msg.contains("Evaluation c") && msg.contains("routingAccuracy 0.9 < 0.97"), "{msg}");
    let none = endpoint::select(&rep(), &[ev("c", 3, false, 30)]);
    assert!(none.serve.is_none());
    assert_eq!(none.blocked.unwrap().0, "GatesFailed");
    assert_eq!(endpoint::select(&rep(), &[]).blocked.unwrap().0, "NoPassingVersion");
}

/// The served version re-evaluated with stricter gates: the condition says once what failed, where
/// it passed, and what is served (it read "version X failed…; serving the latest passing version
/// X; serving X").
#[test]
fn a_served_version_that_fails_a_stricter_re_evaluation_is_reported_once() {
    let mut r = rep();
    let evs = vec![ev("a", 1, true, 10)];
    let d = endpoint::decide(&r, &endpoint::select(&r, &evs), None, None, at(0));
    r.status = Some(d.status);
    let d = endpoint::decide(&r, &endpoint::select(&r, &evs), None, Some(&ready_on(&version(1))), at(10));
    r.status = Some(d.status);
    let evs = vec![ev("a", 1, true, 10), ev("strict", 1, false, 20)];
    let active = endpoint::find_passing(&version(1), &evs);
    let d = endpoint::decide(
        &r,
        &endpoint::select(&r, &evs),
        active.as_ref(),
        Some(&ready_on(&version(1))),
        at(20),
    );
    let c = d.status.conditions.iter().find(|c| c.type_ == "GateBlocked").unwrap();
    let v = version(1);
    assert_eq!(
        c.message,
        format!(
            "version {v} failed its gates in Evaluation strict (routingAccuracy 0.9 < 0.97) after passing in Evaluation a; serving {v}"
        )
    );
}

/// An Evaluation wakes an endpoint only when its verdict can matter to it.
#[test]
fn only_completed_evaluations_of_the_endpoints_lineage_or_versions_concern_it() {
    let r = rep();
    assert!(endpoint::select::concerns(&r, &ev("a", 1, true, 10)), "its lineage, completed");
    let mut running = ev("a", 1, true, 10);
    running.status.as_mut().unwrap().phase = Some(EvaluationPhase::Running);
    assert!(!endpoint::select::concerns(&r, &running), "progress of a running Evaluation");
    let mut other = ev("o", 2, true, 10);
    other.metadata.labels = Some([("sapllm.io/lineage".to_string(), "other".to_string())].into());
    assert!(!endpoint::select::concerns(&r, &other), "another lineage");
    let mut serving = r.clone();
    serving.status = Some(Default::default());
    serving.status.as_mut().unwrap().active_version = Some(version(2));
    assert!(endpoint::select::concerns(&serving, &other), "the version it serves, whatever its lineage");
    let mut pinned = r.clone();
    pinned.spec.model.latest_passing = None;
    pinned.spec.model.pinned = Some(PinnedModel { version: version(2) });
    assert!(endpoint::select::concerns(&pinned, &other));
    assert!(!endpoint::select::concerns(&pinned, &ev("a", 1, true, 10)));
}

#[test]
fn a_pinned_version_is_served_only_when_it_passed() {
    let mut r = rep();
    r.spec.model.latest_passing = None;
    r.spec.model.pinned = Some(PinnedModel { version: version(3) });
    let evs = vec![ev("a", 1, true, 10), ev("c", 3, false, 30)];
    let s = endpoint::select(&r, &evs);
    assert!(s.serve.is_none());
    assert_eq!(s.blocked.as_ref().unwrap().0, "GatesFailed");
    r.spec.model.pinned = Some(PinnedModel { version: version(9) });
    assert_eq!(endpoint::select(&r, &evs).blocked.unwrap().0, "NoVerdict");
    r.spec.model.pinned = Some(PinnedModel { version: version(1) });
    assert_eq!(endpoint::select(&r, &evs).serve.unwrap().evaluation, "a");
}

#[test]
fn rollout_promotes_when_ready_then_rolls_back_a_version_that_misses_its_deadline() {
    let mut r = rep();
    let evs = vec![ev("a", 1, true, 10)];
    // First rollout.
    let sel = endpoint::select(&r, &evs);
    let d = endpoint::decide(&r, &sel, None, None, at(0));
    assert_eq!(d.status.rollout_version, Some(version(1)));
    assert_eq!(d.serve.as_ref().unwrap().version, version(1));
    assert_eq!(d.requeue_after.map(|x| x.as_secs()), Some(300));
    r.status = Some(d.status);
    let d = endpoint::decide(&r, &sel, None, Some(&ready_on(&version(1))), at(30));
    assert!(d.promoted);
    assert_eq!(d.status.active_version, Some(version(1)));
    assert!(d.transitions.iter().any(|t| t.reason == "Promoted"));
    r.status = Some(d.status);

    // A new passing version is rolled out but never becomes ready.
    let evs = vec![ev("a", 1, true, 10), ev("b", 2, true, 100)];
    let sel = endpoint::select(&r, &evs);
    let active = endpoint::find_passing(&version(1), &evs);
    let d = endpoint::decide(&r, &sel, active.as_ref(), Some(&ready_on(&version(1))), at(100));
    assert_eq!(d.status.rollout_version, Some(version(2)));
    assert_eq!(d.serve.as_ref().unwrap().version, version(2));
    r.status = Some(d.status);
    let stuck = DeploymentObs { version: Some(version(2)), rolled_out: false, ready_replicas: 2 };
    let d = endpoint::decide(&r, &sel, active.as_ref(), Some(&stuck), at(399));
    assert!(!d.rolled_back && d.status.rollout_version.is_some());
    let d = endpoint::decide(&r, &sel, active.as_ref(), Some(&stuck), at(400));
    assert!(d.rolled_back);
    assert_eq!(
        d.serve.as_ref().unwrap().version,
        version(1),
        "the Deployment goes back to the previous version"
    );
    assert_fixture("rep-status-rolled-back", &d.status);
    r.status = Some(d.status);
    // The rolled-back version is not tried again by itself.
    let d = endpoint::decide(&r, &sel, active.as_ref(), Some(&ready_on(&version(1))), at(500));
    assert!(d.status.rollout_version.is_none());
    assert_eq!(d.serve.as_ref().unwrap().version, version(1));
    // A newer passing version is.
    let evs = vec![ev("a", 1, true, 10), ev("b", 2, true, 100), ev("d", 4, true, 600)];
    let d = endpoint::decide(
        &r,
        &endpoint::select(&r, &evs),
        active.as_ref(),
        Some(&ready_on(&version(1))),
        at(600),
    );
    assert_eq!(d.status.rollout_version, Some(version(4)));
}

#[test]
fn a_gate_blocked_version_keeps_the_current_one_serving() {
    let mut r = rep();
    r.spec.model.latest_passing = None;
    r.spec.model.pinned = Some(PinnedModel { version: version(1) });
    let evs = vec![ev("a", 1, true, 10), ev("c", 3, false, 30)];
    let d = endpoint::decide(&r, &endpoint::select(&r, &evs), None, None, at(0));
    r.status = Some(d.status);
    let d = endpoint::decide(&r, &endpoint::select(&r, &evs), None, Some(&ready_on(&version(1))), at(10));
    r.status = Some(d.status);
    let before = r.spec.clone();
    r.spec.model.pinned = Some(PinnedModel { version: version(3) });
    r.metadata.generation = Some(2);
    let active = endpoint::find_passing(&version(1), &evs);
    let d = endpoint::decide(
        &r,
        &endpoint::select(&r, &evs),
        active.as_ref(),
        Some(&ready_on(&version(1))),
        at(20),
    );
    assert_eq!(d.serve.as_ref().unwrap().version, version(1));
    assert!(d.status.rollout_version.is_none());
    assert_fixture("rep-status-gate-blocked", &d.status);
    assert!(d.transitions.iter().any(|t| t.reason == "GateBlocked" && t.warning));
    assert_ne!(before, r.spec, "only the test edits the spec; decide never returns one");
}

#[test]
fn serving_children_are_exact() {
    let r = rep();
    let c = endpoint::select(&r, &[ev("a", 1, true, 10)]).serve.unwrap();
    let dep: Deployment = endpoint::deployment(&r, &c, "sapllm-artifacts", &OperatorConfig::default());
    assert_fixture("rep-deployment", &dep);
    assert_fixture("rep-service", &endpoint::service(&r));
    assert_fixture("rep-hpa", &endpoint::autoscaler(&r));
    assert_fixture("rep-pdb", &endpoint::disruption_budget(&r));
    let c0 = &dep.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
    let args = c0.args.clone().unwrap();
    assert!(args.windows(2).any(|w| w == ["--auth-token-file", "/etc/sapllm-auth/token"]));
    assert!(args.windows(2).any(|w| w == ["--precision", "int8"]));
    assert!(args.windows(2).any(|w| w == ["--max-batch", "8"]), "an explicit maxBatch is passed on");
    // Left out, the server's own default applies (1 on the CPU): no flag at all.
    let mut unset = r.clone();
    unset.spec.batching.max_batch = None;
    let unset_args = endpoint::build::serve_args(&unset, &c, 2);
    assert!(!unset_args.iter().any(|a| a == "--max-batch"), "{unset_args:?}");
    let set_args = endpoint::build::serve_args(&r, &c, 2);
    assert_eq!(unset_args.len() + 2, set_args.len(), "only the --max-batch pair differs: {unset_args:?}");
    assert_eq!(args[..set_args.len()], set_args[..], "the container runs serve_args, then the device");
    assert_eq!(args[set_args.len()..], ["--device", "cpu"], "no GPU requested: the CPU");
    assert_eq!(c0.image.as_deref(), Some("ghcr.io/sapllm/sapllm-worker:0.1.0"), "the CPU image");
    // One model thread per whole core of the CPU request ('2'), one decode thread each.
    assert!(args.windows(2).any(|w| w == ["--workers", "2"]), "{args:?}");
    let env = c0.env.clone().unwrap_or_default();
    assert!(env.iter().any(|e| e.name == "CANDLE_NUM_THREADS" && e.value.as_deref() == Some("1")), "{env:?}");
    assert_eq!(
        c0.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(),
        Some("/readyz")
    );
    assert_eq!(
        c0.liveness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(),
        Some("/healthz")
    );
    assert!(dep.spec.as_ref().unwrap().replicas.is_none(), "replicas belong to the autoscaler");
    let hpa = endpoint::autoscaler(&r);
    let metrics = hpa.spec.unwrap().metrics.unwrap();
    assert_eq!(metrics[1].pods.as_ref().unwrap().metric.name, "sapllm_inflight_requests");
}

/// `spec.feedback`: the claim mounted read-write, `--feedback-dir` inside it, the pod's name for
/// its own file; the default Deployment (no feedback) is unchanged (`rep-deployment`).
#[test]
fn a_feedback_claim_is_mounted_read_write_with_one_file_per_pod() {
    let mut r = rep();
    r.spec.feedback = Some(FeedbackSink {
        claim_name: "sapllm-feedback".into(),
        path: Some("prod/feedback".into()),
        capacity: Some(5000),
    });
    let c = endpoint::select(&r, &[ev("a", 1, true, 10)]).serve.unwrap();
    let dep: Deployment = endpoint::deployment(&r, &c, "sapllm-artifacts", &OperatorConfig::default());
    assert_fixture("rep-deployment-feedback", &dep);
    let pod = dep.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let c0 = &pod.containers[0];
    let args = c0.args.clone().unwrap();
    // Feedback reaching another replica is forwarded to the one that decided: every pod has a
    // DNS name under the headless peers Service, which selects the pods of both tracks.
    let peers = endpoint::build::peers_service(&r);
    assert_fixture("rep-peers-service", &peers);
    assert_eq!(peers.metadata.name.as_deref(), Some("sap-router-peers"));
    let pod_ip = c0.env.iter().flatten().find(|e| e.name == "POD_IP").expect("POD_IP");
    assert_eq!(pod_ip.value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path, "status.podIP");
    assert_eq!(peers.spec.as_ref().unwrap().selector, endpoint::service(&r).spec.unwrap().selector);
    assert!(args.windows(2).any(|w| w == ["--peer-domain", "sap-router-peers.ml.svc"]), "{args:?}");
    assert!(
        args.windows(2).any(|w| w == ["--feedback-dir", "/var/lib/sapllm-feedback/prod/feedback"]),
        "{args:?}"
    );
    assert!(args.windows(2).any(|w| w == ["--feedback-capacity", "5000"]), "{args:?}");
    let mount = c0
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.mount_path == "/var/lib/sapllm-feedback")
        .unwrap();
    assert_ne!(mount.read_only, Some(true), "feedback is written");
    let vol = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == mount.name).unwrap();
    assert_eq!(vol.persistent_volume_claim.as_ref().unwrap().claim_name, "sapllm-feedback");
    let env = c0.env.clone().unwrap_or_default();
    let pod_name = env.iter().find(|e| e.name == "POD_NAME").expect("POD_NAME");
    assert_eq!(pod_name.value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path, "metadata.name");

    // Feedback on the artifacts claim: its one volume, now also mounted read-write for feedback
    // (the model stays read-only), default folder and capacity.
    r.spec.feedback =
        Some(FeedbackSink { claim_name: "sapllm-artifacts".into(), path: None, capacity: None });
    let dep: Deployment = endpoint::deployment(&r, &c, "sapllm-artifacts", &OperatorConfig::default());
    let pod = dep.spec.unwrap().template.spec.unwrap();
    let claims: Vec<_> =
        pod.volumes.unwrap().iter().filter_map(|v| v.persistent_volume_claim.clone()).collect();
    assert_eq!(claims.iter().filter(|p| p.claim_name == "sapllm-artifacts").count(), 1, "{claims:?}");
    let c0 = &pod.containers[0];
    let args = c0.args.clone().unwrap();
    assert!(
        args.windows(2).any(|w| w == ["--feedback-dir", "/var/lib/sapllm-feedback/feedback"]),
        "{args:?}"
    );
    assert!(!args.iter().any(|a| a == "--feedback-capacity"));
    let mounts = c0.volume_mounts.clone().unwrap();
    let fb = mounts.iter().find(|m| m.mount_path == "/var/lib/sapllm-feedback").unwrap();
    assert_eq!(fb.name, "artifacts");
    assert_ne!(fb.read_only, Some(true));
    assert!(
        mounts.iter().any(|m| m.name == "artifacts" && m.read_only == Some(true)),
        "the model stays read-only"
    );
}

/// Unset, the endpoint abstains at the threshold its Evaluation scored with (the tiny run
/// evaluates at 0.25; a fixed 0.5 made every answer of that model abstain); set, it wins.
#[test]
fn the_abstention_threshold_defaults_to_the_evaluations() {
    let threshold = |args: Vec<String>| {
        args.windows(2).find(|w| w[0] == "--abstain-threshold").map(|w| w[1].clone()).unwrap()
    };
    let mut e = ev("a", 1, true, 10);
    e.spec.abstain_threshold = 0.25;
    let mut r = rep();
    r.spec.abstain_threshold = None;
    let c = endpoint::select(&r, &[e]).serve.unwrap();
    assert_eq!(threshold(endpoint::build::serve_args(&r, &c, 1)), "0.25");
    r.spec.abstain_threshold = Some(0.7);
    assert_eq!(threshold(endpoint::build::serve_args(&r, &c, 1)), "0.7");
}

/// The operator skips re-applying a Deployment it applied, unless the live one no longer holds
/// what it set: defaults added by the API server do not count as a change, an edit does.
#[test]
fn a_live_deployment_matches_what_was_applied_until_someone_edits_it() {
    let r = rep();
    let c = endpoint::select(&r, &[ev("a", 1, true, 10)]).serve.unwrap();
    let desired: Deployment = endpoint::deployment(&r, &c, "sapllm-artifacts", &OperatorConfig::default());
    let mut live = serde_json::to_value(&desired).unwrap();
    live["metadata"]["resourceVersion"] = serde_json::json!("42");
    live["spec"]["minReadySeconds"] = serde_json::json!(0);
    live["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] =
        serde_json::json!("/dev/termination-log");
    live["status"] = serde_json::json!({ "readyReplicas": 2 });
    let live: Deployment = serde_json::from_value(live).unwrap();
    assert!(endpoint::build::matches_applied(&live, &desired), "server defaults are not an edit");
    let mut edited = serde_json::to_value(&live).unwrap();
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = serde_json::json!("someone/else:latest");
    let edited: Deployment = serde_json::from_value(edited).unwrap();
    assert!(!endpoint::build::matches_applied(&edited, &desired));
}

#[test]
fn model_threads_follow_the_spec_or_the_cpu_request() {
    use endpoint::build::{whole_cores, workers};
    for (q, want) in [("2", Some(2)), ("2.5", Some(2)), ("2500m", Some(2)), ("500m", Some(0)), ("x", None)] {
        assert_eq!(whole_cores(q), want, "{q}");
    }
    let r = rep();
    let req = |cpu: &str| serde_json::json!({ "requests": { "cpu": cpu } });
    let mut unset = r.clone();
    unset.spec.batching.workers = None;
    assert_eq!(workers(&unset, &req("4")), 4);
    assert_eq!(workers(&unset, &req("1500m")), 1);
    assert_eq!(workers(&unset, &req("250m")), 1, "at least one");
    assert_eq!(workers(&unset, &serde_json::json!({})), 1, "no request: one");
    let mut set = r.clone();
    set.spec.batching.workers = Some(3);
    assert_eq!(workers(&set, &req("8")), 3, "the spec wins");
    // A CANDLE_NUM_THREADS or log format of the user's is kept, not overridden.
    let mut own = r.clone();
    own.spec.worker.env.insert("CANDLE_NUM_THREADS".into(), "4".into());
    own.spec.worker.env.insert("SAPLLM_LOG_FORMAT".into(), "text".into());
    let c = endpoint::select(&own, &[ev("a", 1, true, 10)]).serve.unwrap();
    let dep = endpoint::deployment(&own, &c, "sapllm-artifacts", &OperatorConfig::default());
    let env = dep.spec.unwrap().template.spec.unwrap().containers[0].env.clone().unwrap();
    let threads: Vec<_> = env.iter().filter(|e| e.name == "CANDLE_NUM_THREADS").collect();
    assert_eq!(threads.len(), 1);
    assert_eq!(threads[0].value.as_deref(), Some("4"));
    let format: Vec<_> = env.iter().filter(|e| e.name == "SAPLLM_LOG_FORMAT").collect();
    assert_eq!(format.len(), 1);
    assert_eq!(format[0].value.as_deref(), Some("text"));
}

#[test]
fn verdicts_in_the_same_second_are_ordered_by_run_generation() {
    let with_gen = |mut e: Evaluation, g: &str| {
        e.metadata.annotations = Some([("sapllm.io/run-generation".to_string(), g.to_string())].into());
        e
    };
    // Names sort the other way round on purpose: the generation decides.
    let old = with_gen(ev("z-gen1", 1, true, 10), "1");
    let new = with_gen(ev("a-gen2", 2, false, 10), "2");
    let s = endpoint::select(&rep(), &[old.clone(), new.clone()]);
    assert_eq!(s.serve.unwrap().version, version(1));
    assert!(s.blocked.unwrap().1.contains("Evaluation a-gen2"));
    let newer_passing = with_gen(ev("a-gen3", 3, true, 10), "3");
    let s = endpoint::select(&rep(), &[old, new, newer_passing]);
    assert_eq!(s.serve.unwrap().version, version(3));
    assert!(s.blocked.is_none());
}

#[test]
fn a_serving_pod_with_a_gpu_runs_the_cuda_image_on_cuda() {
    let mut r = rep();
    r.spec
        .resources
        .as_mut()
        .unwrap()
        .limits
        .as_mut()
        .unwrap()
        .insert("nvidia.com/gpu".into(), k8s_openapi::apimachinery::pkg::api::resource::Quantity("1".into()));
    let c = endpoint::select(&r, &[ev("a", 1, true, 10)]).serve.unwrap();
    let cfg =
        OperatorConfig { worker_cuda_image: "registry.local/worker:7-cuda".into(), ..Default::default() };
    let dep = endpoint::deployment(&r, &c, "sapllm-artifacts", &cfg);
    let c0 = &dep.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(c0.image.as_deref(), Some("registry.local/worker:7-cuda"));
    let args = c0.args.clone().unwrap();
    let mut want = endpoint::build::serve_args(&r, &c, 2);
    want.extend(["--device".to_string(), "cuda".to_string()]);
    assert_eq!(args, want);
    // GPUs asked for through spec.worker (no spec.resources) count the same.
    let mut w = rep();
    w.spec.resources = None;
    w.spec.worker.gpus = Some(1);
    let dep = endpoint::deployment(&w, &c, "sapllm-artifacts", &cfg);
    let c0 = &dep.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(c0.image.as_deref(), Some("registry.local/worker:7-cuda"));
    assert_eq!(c0.args.clone().unwrap().last().map(String::as_str), Some("cuda"));
}
