//! TrainingRun: plan, children and the state machine, from YAML fixtures.

mod support;

use std::collections::BTreeMap;

use sapllm_crds::common::Verdict;
use sapllm_crds::contract::StageResult;
use sapllm_crds::evaluation::{Evaluation, EvaluationPhase, EvaluationStatus, GateResult};
use sapllm_crds::training_run::{Artifacts, RunPhase, StageName, StagePhase, TrainingRun};
use sapllm_operator::config::OperatorConfig;
use sapllm_operator::observe::{JobObservation, JobState};
use sapllm_operator::training::{self, Observed, PlannedStage};
use support::{assert_fixture, at, input};

fn tiny() -> TrainingRun {
    input("tr-tiny")
}

fn stage(plan: &[PlannedStage], s: StageName) -> &PlannedStage {
    plan.iter().find(|p| p.name == s).unwrap()
}

fn job(
    name: &str,
    state: JobState,
    attempts: u32,
    result: Option<StageResult>,
    message: Option<&str>,
) -> JobObservation {
    JobObservation {
        name: name.into(),
        state,
        attempts,
        suspended: false,
        result,
        message: message.map(String::from),
        pod_creation_failure: None,
    }
}

fn done(stage: StageName, artifacts: Artifacts) -> Option<StageResult> {
    Some(StageResult {
        stage: Some(stage),
        succeeded: true,
        artifacts: Some(artifacts),
        ..Default::default()
    })
}

#[test]
fn plan_runs_pretrain_for_presets_only_and_names_children_deterministically() {
    let plan = training::plan(&tiny());
    let names: Vec<_> = plan.iter().map(|p| p.name).collect();
    assert_eq!(names, StageName::ALL.to_vec());
    assert_eq!(plan, training::plan(&tiny()), "same spec, same plan");
    for p in &plan {
        assert!(p.child.len() <= 63);
        assert!(p.digest.starts_with("sha256:"));
    }
    assert!(stage(&plan, StageName::Sft).child.starts_with("routing-tiny-sft-"));
    assert!(stage(&plan, StageName::Evaluation).child.starts_with("routing-tiny-eval-"));
    let mixtral: TrainingRun = input("tr-mixtral");
    let names: Vec<_> = training::plan(&mixtral).iter().map(|p| p.name).collect();
    assert_eq!(names, vec![StageName::DataPrep, StageName::Sft, StageName::Ppo, StageName::Evaluation]);
}

#[test]
fn digests_change_from_the_first_edited_stage_on_and_ignore_retry_and_pod_settings() {
    let base = training::plan(&tiny());
    let mut edited = tiny();
    edited.spec.stages.sft.learning_rate = 0.002;
    let after = training::plan(&edited);
    let changed: Vec<StageName> =
        base.iter().zip(&after).filter(|(a, b)| a.digest != b.digest).map(|(a, _)| a.name).collect();
    assert_eq!(changed, vec![StageName::Sft, StageName::Ppo, StageName::Evaluation]);

    let mut ops = tiny();
    ops.spec.stages.sft.control.retry_limit = 7;
    ops.spec.stages.sft.control.deadline_seconds = Some(60);
    ops.spec.worker.image = Some("other:1".into());
    ops.spec.worker.cpu = None;
    assert_eq!(training::plan(&ops), base, "retries, deadlines and pod settings do not re-run stages");

    let mut data = tiny();
    data.spec.stages.data_prep.seed = 7;
    let after = training::plan(&data);
    assert!(base.iter().zip(&after).all(|(a, b)| a.digest != b.digest), "new data re-runs everything");
}

#[test]
fn stage_job_of_the_tiny_run_is_exact() {
    let run = tiny();
    let plan = training::plan(&run);
    let job = training::stage_job(&run, stage(&plan, StageName::Sft), &OperatorConfig::default());
    assert_fixture("tr-tiny-sft-job", &job);
    let c = &job.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
    assert_eq!(
        c.args.clone().unwrap(),
        [
            "stage",
            "sft",
            "-f",
            "/etc/sapllm/trainingrun.yaml",
            "--run-dir",
            "/artifacts/routing-tiny",
            "--progress",
            "json",
            "--device",
            "cpu"
        ]
    );
    assert_eq!(c.image.as_deref(), Some("ghcr.io/sapllm/sapllm-worker:0.1.0"), "gpus: 0 runs the CPU image");
    assert_eq!(c.termination_message_policy.as_deref(), Some("FallbackToLogsOnError"));
    let spec = job.spec.as_ref().unwrap();
    assert_eq!(spec.backoff_limit, Some(2), "the stage's retry limit");
    assert_eq!(spec.suspend, Some(false));
    let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
        ("TrainingRun", "0b6c1f0e-1111-4a1a-9a55-000000000001", Some(true))
    );
}

#[test]
fn stage_job_carries_gpus_scheduling_kueue_and_extra_claims() {
    let run: TrainingRun = input("tr-mixtral");
    let plan = training::plan(&run);
    let cfg = OperatorConfig {
        default_node_selector: BTreeMap::from([("pool".to_string(), "gpu".to_string())]),
        ..OperatorConfig::default()
    };
    let job = training::stage_job(&run, stage(&plan, StageName::Sft), &cfg);
    assert_fixture("tr-mixtral-sft-job", &job);
    let spec = job.spec.as_ref().unwrap();
    assert_eq!(spec.suspend, Some(true), "Kueue admits suspended Jobs");
    assert_eq!(spec.active_deadline_seconds, Some(172800));
    assert_eq!(job.metadata.labels.as_ref().unwrap()["kueue.x-k8s.io/queue-name"], "gpu-training");
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.node_selector.as_ref().unwrap().len(), 2, "operator default + the run's selector");
    let limits = pod.containers[0].resources.as_ref().unwrap().limits.clone().unwrap();
    assert_eq!(limits["nvidia.com/gpu"].0, "1");
    // A GPU pod that names no image runs the CUDA build, on the GPU.
    assert_eq!(pod.containers[0].image.as_deref(), Some("ghcr.io/sapllm/sapllm-worker:0.1.0-cuda"));
    assert_eq!(
        pod.containers[0].args.clone().unwrap(),
        [
            "stage",
            "sft",
            "-f",
            "/etc/sapllm/trainingrun.yaml",
            "--run-dir",
            "/artifacts/runs/mixtral",
            "--progress",
            "json",
            "--device",
            "cuda"
        ]
    );
    let mounts: Vec<String> =
        pod.containers[0].volume_mounts.clone().unwrap().into_iter().map(|m| m.mount_path).collect();
    for m in
        ["/artifacts", "/etc/sapllm", "/etc/sapllm-catalog", "/volumes/models", "/volumes/sap-logs", "/tmp"]
    {
        assert!(mounts.contains(&m.to_string()), "{m} in {mounts:?}");
    }
    let data_prep = training::stage_job(&run, stage(&plan, StageName::DataPrep), &cfg);
    let dp = data_prep.spec.unwrap().template.spec.unwrap().containers[0]
        .resources
        .clone()
        .unwrap()
        .limits
        .unwrap();
    assert_eq!(dp["nvidia.com/gpu"].0, "1", "the run asks for 1 GPU explicitly, so data-prep gets it too");
}

#[test]
fn manifest_is_the_whole_run_and_the_claim_is_created_unowned() {
    let run = tiny();
    let cm = training::manifest_config_map(&run).unwrap();
    let yaml = &cm.data.as_ref().unwrap()["trainingrun.yaml"];
    let back: TrainingRun = serde_yaml::from_str(yaml).unwrap();
    assert_eq!(back.spec, run.spec);
    assert_eq!(back.metadata.name.as_deref(), Some("routing-tiny"));
    assert_eq!(cm.metadata.name.as_deref(), Some("routing-tiny-manifest"));
    let pvc = training::storage_claim(
        &run,
        &OperatorConfig { storage_class: Some("fast".into()), ..Default::default() },
    )
    .unwrap();
    assert_fixture("tr-tiny-pvc", &pvc);
    assert!(pvc.metadata.owner_references.is_none(), "artifacts outlive the run");
    assert!(training::storage_claim(&input("tr-mixtral"), &OperatorConfig::default()).is_none());
}

/// `spec.stages.sft.adapterLayout: fused` reaches the sft and ppo Jobs through the manifest they
/// read (`stage sft|ppo -f /etc/sapllm/trainingrun.yaml`, the worker's `--adapter-layout` from
/// the spec), re-runs SFT and what follows, and leaves the Job arguments as they are.
#[test]
fn the_adapter_layout_reaches_the_sft_and_ppo_jobs_through_the_manifest() {
    use sapllm_crds::training_run::AdapterLayout;
    let base = tiny();
    let cm = training::manifest_config_map(&base).unwrap();
    assert!(!cm.data.as_ref().unwrap()["trainingrun.yaml"].contains("adapterLayout"), "unset: not written");
    let mut run = tiny();
    run.spec.stages.sft.adapter_layout = AdapterLayout::Fused;
    let cm = training::manifest_config_map(&run).unwrap();
    let yaml = &cm.data.as_ref().unwrap()["trainingrun.yaml"];
    assert!(yaml.contains("adapterLayout: fused"), "{yaml}");
    let back: TrainingRun = serde_yaml::from_str(yaml).unwrap();
    assert_eq!(back.spec.stages.sft.adapter_layout, AdapterLayout::Fused);

    let (before, after) = (training::plan(&base), training::plan(&run));
    let changed: Vec<StageName> =
        before.iter().zip(&after).filter(|(a, b)| a.digest != b.digest).map(|(a, _)| a.name).collect();
    assert_eq!(changed, vec![StageName::Sft, StageName::Ppo, StageName::Evaluation]);
    let cfg = OperatorConfig::default();
    for s in [StageName::Sft, StageName::Ppo] {
        let args = |run: &TrainingRun, plan: &[PlannedStage]| {
            let job = training::stage_job(run, stage(plan, s), &cfg);
            job.spec.unwrap().template.spec.unwrap().containers[0].args.clone().unwrap()
        };
        let fused = args(&run, &after);
        assert_eq!(fused, args(&base, &before), "{s:?}: the manifest carries the layout");
        assert_eq!(fused[..3], ["stage", s.as_str(), "-f"]);
        assert_eq!(fused[3], "/etc/sapllm/trainingrun.yaml");
    }
    let mut explicit = tiny();
    explicit.spec.stages.sft.adapter_layout = AdapterLayout::PerExpert;
    assert_eq!(training::plan(&explicit), before, "the default written down re-runs nothing");
}

#[test]
fn invalid_specs_name_the_field() {
    let mut run = tiny();
    run.spec.storage.sub_path = Some("../escape".into());
    assert_eq!(training::validate(&run).unwrap_err().field, "spec.storage.subPath");
    let mut run = tiny();
    run.spec.base_model.hugging_face = Some(Default::default());
    assert_eq!(training::validate(&run).unwrap_err().field, "spec.baseModel");
    let mut run: TrainingRun = input("tr-mixtral");
    run.spec.base_model.hugging_face.as_mut().unwrap().path = "/abs".into();
    assert_eq!(training::validate(&run).unwrap_err().field, "spec.baseModel.huggingFace.path");
    let mut run = tiny();
    run.spec.worker.gpu_resource_name = Some("gpu".into());
    assert_eq!(training::validate(&run).unwrap_err().field, "spec.worker.gpuResourceName");
    let (status, events) = training::invalid_status(&run, &training::validate(&run).unwrap_err(), at(0));
    assert_eq!(status.phase, Some(RunPhase::Failed));
    let failed = status.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
    assert_eq!((failed.status.as_str(), failed.reason.as_str()), ("True", "InvalidSpec"));
    assert!(failed.message.starts_with("spec.worker.gpuResourceName:"), "{}", failed.message);
    assert_eq!(events.len(), 1);
    assert!(training::validate(&tiny()).is_ok());
    assert!(training::validate(&input::<TrainingRun>("tr-mixtral")).is_ok());
}

#[test]
fn a_new_run_starts_data_prep() {
    let run = tiny();
    let plan = training::plan(&run);
    let d = training::decide(&run, &plan, &Observed::default(), at(0));
    assert_eq!(d.start.as_ref().map(|s| s.name), Some(StageName::DataPrep));
    assert!(d.running);
    assert_fixture("tr-tiny-status-start", &d.status);
    let reasons: Vec<&str> = d.transitions.iter().map(|t| t.reason.as_str()).collect();
    assert_eq!(reasons, ["StageStarted", "PhaseChanged"]);
}

/// Drives the state machine like the controller does: the status written by one step is the
/// input of the next.
fn step(run: &mut TrainingRun, obs: &Observed, secs: i64) -> training::Decision {
    let plan = training::plan(run);
    let d = training::decide(run, &plan, obs, at(secs));
    run.status = Some(d.status.clone());
    d
}

fn full_pipeline(run: &mut TrainingRun) -> Observed {
    full_pipeline_with_events(run).0
}

/// [`full_pipeline`], with every Event the steps asked for.
fn full_pipeline_with_events(
    run: &mut TrainingRun,
) -> (Observed, Vec<sapllm_operator::transitions::Transition>) {
    let plan = training::plan(run);
    let mut obs = Observed::default();
    let mut events = Vec::new();
    let arts = [
        (StageName::DataPrep, Artifacts { dataset: Some("routing-tiny/data".into()), ..Default::default() }),
        (
            StageName::Pretrain,
            Artifacts { base_model: Some("routing-tiny/pretrain/model".into()), ..Default::default() },
        ),
        (
            StageName::Sft,
            Artifacts { sft_adapter: Some("routing-tiny/sft/adapter".into()), ..Default::default() },
        ),
        (
            StageName::Ppo,
            Artifacts {
                ppo_adapter: Some("routing-tiny/ppo/adapter".into()),
                model_version: Some(format!("sha256:{}", "ab".repeat(32))),
                ..Default::default()
            },
        ),
    ];
    for (i, (s, a)) in arts.into_iter().enumerate() {
        let d = step(run, &obs, i as i64 * 100);
        assert_eq!(d.start.as_ref().map(|p| p.name), Some(s), "stage {s:?} starts next");
        events.extend(d.transitions);
        let name = stage(&plan, s).child.clone();
        obs.jobs.insert(name.clone(), job(&name, JobState::Succeeded, 1, done(s, a), None));
    }
    let d = step(run, &obs, 500);
    assert_eq!(d.start.as_ref().map(|p| p.name), Some(StageName::Evaluation));
    events.extend(d.transitions);
    (obs, events)
}

/// A Job that cannot create its pod (the namespace lacks the worker's ServiceAccount) shows in
/// the run's status and conditions at once, with the reason; the run is not failed (Kubernetes
/// keeps retrying), and once the pod exists the condition clears.
#[test]
fn a_job_that_cannot_create_its_pod_shows_in_status_with_the_reason() {
    let mut run = tiny();
    let plan = training::plan(&run);
    let d = step(&mut run, &Observed::default(), 0);
    assert_eq!(d.start.as_ref().map(|s| s.name), Some(StageName::DataPrep));
    let name = stage(&plan, StageName::DataPrep).child.clone();
    let why = "pods \"x\" is forbidden: error looking up service account ml/sapllm-worker: serviceaccount \"sapllm-worker\" not found";
    let mut blocked = job(&name, JobState::Active, 0, None, None);
    blocked.pod_creation_failure = Some(why.into());
    let mut obs = Observed::default();
    obs.jobs.insert(name.clone(), blocked);
    let d = step(&mut run, &obs, 10);
    assert_eq!(d.status.phase, Some(RunPhase::Running), "not failed: the Job controller retries");
    let data = d.status.stages.iter().find(|s| s.name == StageName::DataPrep).unwrap();
    assert_eq!(data.message.as_deref(), Some(format!("no pod can be created: {why}").as_str()));
    let c = d.status.conditions.iter().find(|c| c.type_ == "PodCreationFailed").expect("a condition");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "FailedCreate"));
    assert!(c.message.contains("serviceaccount \"sapllm-worker\" not found"), "{}", c.message);
    let running = d.status.conditions.iter().find(|c| c.type_ == "Running").unwrap();
    assert_eq!(running.reason, "PodCreationFailed");
    // The ServiceAccount is created, the pod runs: the condition turns False.
    obs.jobs.insert(name.clone(), job(&name, JobState::Active, 1, None, None));
    let d = step(&mut run, &obs, 20);
    let c = d.status.conditions.iter().find(|c| c.type_ == "PodCreationFailed").unwrap();
    assert_eq!(c.status, "False");
    let data = d.status.stages.iter().find(|s| s.name == StageName::DataPrep).unwrap();
    assert_eq!(data.message, None);
}

/// A pod log that cannot be read (the API server cannot reach the kubelet) is a condition, not
/// a failure: the run goes on, and `kubectl describe` says why there is no live progress.
#[test]
fn unreadable_progress_is_a_condition_not_a_failure() {
    let mut run = tiny();
    let plan = training::plan(&run);
    step(&mut run, &Observed::default(), 0);
    let name = stage(&plan, StageName::DataPrep).child.clone();
    let mut obs = Observed::default();
    obs.jobs.insert(name.clone(), job(&name, JobState::Active, 1, None, None));
    obs.progress_unavailable =
        Some("the server has asked for the client to provide credentials (500)".into());
    let d = step(&mut run, &obs, 10);
    assert_eq!(d.status.phase, Some(RunPhase::Running));
    let c = d.status.conditions.iter().find(|c| c.type_ == "ProgressAvailable").expect("a condition");
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "LogUnavailable"));
    assert!(c.message.contains("(500)"), "{}", c.message);
}

/// The Event recorder merges Events with the same type, reason and action on one object: every
/// stage's start and success must stay its own Event (`kubectl describe` names each stage).
#[test]
fn every_stage_gets_its_own_events() {
    let mut run = tiny();
    let (_, events) = full_pipeline_with_events(&mut run);
    for reason in ["StageStarted", "StageSucceeded"] {
        let of: Vec<_> = events.iter().filter(|t| t.reason == reason).collect();
        let keys: std::collections::BTreeSet<_> = of.iter().map(|t| t.merge_key()).collect();
        assert_eq!(keys.len(), of.len(), "{reason} Events would merge: {of:?}");
        let expected = if reason == "StageStarted" { 5 } else { 4 };
        assert_eq!(of.len(), expected, "{reason}: {of:?}");
    }
    let started: Vec<&str> =
        events.iter().filter(|t| t.reason == "StageStarted").map(|t| t.note.as_str()).collect();
    for s in ["data-prep", "pretrain", "sft", "ppo", "evaluation"] {
        assert!(started.iter().any(|n| n.contains(&format!("stage {s} started"))), "{s}: {started:?}");
    }
}

fn evaluation(name: &str, phase: EvaluationPhase, verdict: Option<Verdict>) -> Evaluation {
    let mut ev =
        training::run_evaluation(&tiny(), stage(&training::plan(&tiny()), StageName::Evaluation), None);
    ev.metadata.name = Some(name.into());
    ev.status = Some(EvaluationStatus {
        phase: Some(phase),
        model_version: Some(format!("sha256:{}", "ab".repeat(32))),
        verdict,
        gates: vec![GateResult {
            name: "routingAccuracy".into(),
            comparator: ">=".into(),
            threshold: 0.97,
            value: if verdict == Some(Verdict::Passed) { 0.98 } else { 0.91 },
            passed: verdict == Some(Verdict::Passed),
        }],
        ..Default::default()
    });
    ev
}

#[test]
fn a_run_goes_through_every_stage_and_records_the_verdict() {
    let mut run = tiny();
    let mut obs = full_pipeline(&mut run);
    let ev_name = stage(&training::plan(&run), StageName::Evaluation).child.clone();
    obs.evaluations.insert(ev_name.clone(), evaluation(&ev_name, EvaluationPhase::Running, None));
    let d = step(&mut run, &obs, 600);
    assert_eq!(d.status.phase, Some(RunPhase::Running));
    assert_eq!(d.status.current_stage, Some(StageName::Evaluation));
    assert!(d.start.is_none());
    obs.evaluations
        .insert(ev_name.clone(), evaluation(&ev_name, EvaluationPhase::Completed, Some(Verdict::Passed)));
    let d = step(&mut run, &obs, 700);
    assert_fixture("tr-tiny-status-succeeded", &d.status);
    let reasons: Vec<&str> = d.transitions.iter().map(|t| t.reason.as_str()).collect();
    assert_eq!(reasons, ["StageSucceeded", "RunSucceeded", "GatesPassed"]);
    // Level-triggered: the same observation again changes nothing and says nothing.
    let again = step(&mut run, &obs, 800);
    assert_eq!(again.status, d.status);
    assert!(again.transitions.is_empty() && again.start.is_none() && again.delete_jobs.is_empty());
}

#[test]
fn failing_gates_finish_the_run_with_gates_passed_false() {
    let mut run = tiny();
    let mut obs = full_pipeline(&mut run);
    let ev_name = stage(&training::plan(&run), StageName::Evaluation).child.clone();
    obs.evaluations
        .insert(ev_name.clone(), evaluation(&ev_name, EvaluationPhase::Completed, Some(Verdict::Failed)));
    let d = step(&mut run, &obs, 600);
    assert_eq!(d.status.phase, Some(RunPhase::Succeeded));
    assert_eq!(d.status.verdict, Some(Verdict::Failed));
    let g = d.status.conditions.iter().find(|c| c.type_ == "GatesPassed").unwrap();
    assert_eq!((g.status.as_str(), g.reason.as_str()), ("False", "GatesFailed"));
    assert!(g.message.contains("routingAccuracy 0.91 < 0.97"), "{}", g.message);
    assert!(d.transitions.iter().any(|t| t.reason == "GatesFailed" && t.warning));
}

#[test]
fn a_stage_that_exhausts_its_retries_fails_the_run_with_the_termination_message() {
    let mut run = tiny();
    let plan = training::plan(&run);
    let mut obs = Observed::default();
    let dp = stage(&plan, StageName::DataPrep).child.clone();
    step(&mut run, &obs, 0);
    obs.jobs.insert(
        dp.clone(),
        job(&dp, JobState::Failed, 3, None, Some("BackoffLimitExceeded: Job has reached the specified backoff limit; termination message: exit code 2: catalog.json: missing field `apis`")),
    );
    let d = step(&mut run, &obs, 100);
    assert!(d.start.is_none());
    assert_fixture("tr-tiny-status-failed", &d.status);
    let failed = d.status.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
    assert!(failed.message.contains("after 3 attempt(s)") && failed.message.contains("missing field `apis`"));
    assert!(d.transitions.iter().any(|t| t.reason == "StageFailed" && t.warning));
    // The failure is not retried behind the user's back, even if the Job disappears.
    obs.jobs.clear();
    let d = step(&mut run, &obs, 200);
    assert!(d.start.is_none());
    assert_eq!(d.status.phase, Some(RunPhase::Failed));
}

#[test]
fn editing_a_finished_run_reruns_from_the_first_changed_stage() {
    let mut run = tiny();
    let mut obs = full_pipeline(&mut run);
    let old_plan = training::plan(&run);
    let ev_name = stage(&old_plan, StageName::Evaluation).child.clone();
    obs.evaluations
        .insert(ev_name.clone(), evaluation(&ev_name, EvaluationPhase::Completed, Some(Verdict::Passed)));
    step(&mut run, &obs, 600);
    assert_eq!(run.status.as_ref().unwrap().phase, Some(RunPhase::Succeeded));

    run.spec.stages.sft.learning_rate = 0.0005;
    run.metadata.generation = Some(2);
    let new_plan = training::plan(&run);
    let d = step(&mut run, &obs, 700);
    assert_eq!(d.start.as_ref().map(|s| s.name), Some(StageName::Sft));
    assert_eq!(d.start.as_ref().unwrap().child, stage(&new_plan, StageName::Sft).child);
    let mut deleted = d.delete_jobs.clone();
    deleted.sort();
    let mut expect =
        vec![stage(&old_plan, StageName::Sft).child.clone(), stage(&old_plan, StageName::Ppo).child.clone()];
    expect.sort();
    assert_eq!(deleted, expect, "the superseded sft and ppo Jobs go; data-prep and pretrain stay");
    assert_fixture("tr-tiny-status-rerun", &d.status);
    assert_eq!(d.transitions[0].reason, "SpecChanged");
    assert!(d.transitions[0].note.contains("from stage sft"));
}

#[test]
fn suspend_holds_new_stages_and_suspends_running_jobs() {
    let mut run = tiny();
    let plan = training::plan(&run);
    let mut obs = Observed::default();
    step(&mut run, &obs, 0);
    let dp = stage(&plan, StageName::DataPrep).child.clone();
    obs.jobs.insert(dp.clone(), job(&dp, JobState::Active, 1, None, None));
    run.spec.suspend = true;
    let d = step(&mut run, &obs, 10);
    assert_eq!(d.suspend_jobs, vec![(dp.clone(), true)]);
    assert_eq!(d.status.phase, Some(RunPhase::Suspended));
    assert!(d.status.conditions.iter().any(|c| c.type_ == "Suspended" && c.status == "True"));
    obs.jobs.get_mut(&dp).unwrap().state = JobState::Succeeded;
    obs.jobs.get_mut(&dp).unwrap().suspended = true;
    let d = step(&mut run, &obs, 20);
    assert!(d.start.is_none(), "no new stage while suspended");
    run.spec.suspend = false;
    let d = step(&mut run, &obs, 30);
    assert_eq!(d.start.as_ref().map(|s| s.name), Some(StageName::Pretrain));
}

#[test]
fn progress_of_the_running_stage_reaches_status() {
    let mut run = tiny();
    let plan = training::plan(&run);
    let mut obs = Observed::default();
    step(&mut run, &obs, 0);
    let dp = stage(&plan, StageName::DataPrep).child.clone();
    obs.jobs.insert(dp.clone(), job(&dp, JobState::Active, 1, None, None));
    obs.progress = sapllm_operator::progress::parse_latest(
        "{\"event\":\"progress\",\"stage\":\"data-prep\",\"step\":1500,\"total\":3000,\"eta_s\":30}",
        at(5),
    );
    let d = step(&mut run, &obs, 5);
    let p = d.status.progress.unwrap();
    assert_eq!(p.summary.as_deref(), Some("data-prep 1500/3000 (50%)"));
    assert_eq!(p.eta.as_deref(), Some("30s"));
    assert_eq!(d.status.stages[0].attempts, 1);
}

#[test]
fn a_job_removed_after_success_is_not_run_again() {
    let mut run = tiny();
    let plan = training::plan(&run);
    let mut obs = Observed::default();
    step(&mut run, &obs, 0);
    let dp = stage(&plan, StageName::DataPrep).child.clone();
    obs.jobs.insert(
        dp.clone(),
        job(&dp, JobState::Succeeded, 1, done(StageName::DataPrep, Artifacts::default()), None),
    );
    step(&mut run, &obs, 10);
    obs.jobs.remove(&dp);
    let d = step(&mut run, &obs, 20);
    assert_eq!(d.start.as_ref().map(|s| s.name), Some(StageName::Pretrain));
    assert_eq!(d.status.stages[0].phase, StagePhase::Succeeded);
}

#[test]
fn the_final_stage_produces_an_owned_evaluation_in_the_runs_lineage() {
    let run = tiny();
    let plan = training::plan(&run);
    let ev = training::run_evaluation(&run, stage(&plan, StageName::Evaluation), None);
    assert_fixture("tr-tiny-evaluation", &ev);
    assert_eq!(ev.spec.model.training_run.as_deref(), Some("routing-tiny"));
    assert_eq!(ev.metadata.labels.as_ref().unwrap()["sapllm.io/lineage"], "routing-tiny");
    assert_eq!(ev.spec.samples, 200);
    // A run that names an endpoint joins the lineage that endpoint follows.
    let fed = training::run_evaluation(&run, stage(&plan, StageName::Evaluation), Some("sap-router-lineage"));
    assert_eq!(fed.metadata.labels.as_ref().unwrap()["sapllm.io/lineage"], "sap-router-lineage");
}

#[test]
fn changed_digest_computation_without_a_spec_change_retrains_nothing() {
    let mut run = tiny();
    let mut obs = full_pipeline(&mut run);
    let plan = training::plan(&run);
    let ev_name = stage(&plan, StageName::Evaluation).child.clone();
    obs.evaluations
        .insert(ev_name.clone(), evaluation(&ev_name, EvaluationPhase::Completed, Some(Verdict::Passed)));
    let done = step(&mut run, &obs, 600).status;
    // An operator upgrade digests differently (e.g. a new defaulted field): same generation.
    let mut status = done.clone();
    for s in &mut status.stages {
        s.settings_digest = s.settings_digest.as_ref().map(|d| d.replace("sha256:", "sha256:old"));
        s.job_name = s.job_name.as_ref().map(|j| format!("{j}-old"));
    }
    run.status = Some(status.clone());
    let renamed: BTreeMap<String, JobObservation> = obs
        .jobs
        .values()
        .map(|j| (format!("{}-old", j.name), JobObservation { name: format!("{}-old", j.name), ..j.clone() }))
        .collect();
    obs.jobs = renamed;
    obs.evaluations = obs
        .evaluations
        .into_values()
        .map(|mut e| {
            let n = format!("{}-old", e.metadata.name.clone().unwrap());
            e.metadata.name = Some(n.clone());
            (n, e)
        })
        .collect();
    let d = training::decide(&run, &plan, &obs, at(700));
    assert!(d.start.is_none() && d.delete_jobs.is_empty(), "{:?} {:?}", d.start, d.delete_jobs);
    assert_eq!(d.status.phase, Some(RunPhase::Succeeded));
    assert_eq!(d.status.stages, status.stages, "recorded digests and Jobs are adopted");
    assert!(d.transitions.is_empty());
}

#[test]
fn an_image_the_run_names_is_used_as_is_and_the_device_follows_the_gpus() {
    let mut run: TrainingRun = input("tr-mixtral");
    run.spec.worker.image = Some("registry.local/my-cuda-worker:1".into());
    let plan = training::plan(&run);
    let cfg = OperatorConfig { worker_cuda_image: "unused:cuda".into(), ..OperatorConfig::default() };
    let job = training::stage_job(&run, stage(&plan, StageName::Sft), &cfg);
    let c = &job.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(c.image.as_deref(), Some("registry.local/my-cuda-worker:1"));
    assert_eq!(c.args.clone().unwrap()[8..], ["--device", "cuda"]);
    // The same run without GPUs: the CPU image of the operator, on the CPU.
    let mut cpu: TrainingRun = input("tr-mixtral");
    cpu.spec.worker.gpus = Some(0);
    let job = training::stage_job(&cpu, stage(&plan, StageName::Sft), &cfg);
    let c = &job.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(c.image.as_deref(), Some(cfg.worker_image.as_str()));
    assert_eq!(c.args.clone().unwrap()[8..], ["--device", "cpu"]);
    // Declaring the base's architecture (for the memory plan) re-runs nothing.
    let mut declared: TrainingRun = input("tr-mixtral");
    declared.spec.base_model.architecture = Some(sapllm_crds::training_run::ModelPreset::Mixtral8x7b);
    assert_eq!(training::plan(&declared), training::plan(&input::<TrainingRun>("tr-mixtral")));
}
