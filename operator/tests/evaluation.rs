//! Evaluation: resolution, the evaluate Job and the verdict, from YAML fixtures.

mod support;

use sapllm_crds::common::Verdict;
use sapllm_crds::contract::StageResult;
use sapllm_crds::evaluation::{Evaluation, EvaluationMetrics, EvaluationPhase};
use sapllm_crds::training_run::{
    Artifacts, StageName, StagePhase, StageStatus, TrainingRun, TrainingRunStatus,
};
use sapllm_operator::config::OperatorConfig;
use sapllm_operator::evaluation::{self, Resolution, build};
use sapllm_operator::observe::{JobObservation, JobState};
use sapllm_operator::training;
use support::{assert_fixture, at, input};

fn ready(ev: &Evaluation) -> evaluation::Resolved {
    match evaluation::resolve(ev, None).unwrap() {
        Resolution::Ready(r) => r,
        other => panic!("{other:?}"),
    }
}

fn metrics(routing: f64, p95: f64) -> EvaluationMetrics {
    EvaluationMetrics {
        samples: 500,
        routing_accuracy: routing,
        api_selection_accuracy: 1.0,
        payload_accuracy: 0.995,
        latency_p50_ms: 80.0,
        latency_p95_ms: p95,
        latency_p99_ms: p95 + 50.0,
        ..Default::default()
    }
}

fn finished(
    ev: &Evaluation,
    state: JobState,
    result: Option<StageResult>,
    message: Option<&str>,
) -> evaluation::EvalDecision {
    let r = ready(ev);
    let (job, _) = build::job_name(ev, &r);
    let obs = JobObservation {
        name: job.clone(),
        state,
        attempts: 1,
        suspended: false,
        result,
        message: message.map(Into::into),
        pod_creation_failure: None,
    };
    evaluation::decide(ev, &Ok(Resolution::Ready(r)), Some(&job), Some(&obs), at(100))
}

#[test]
fn the_evaluate_job_follows_the_contract() {
    let ev: Evaluation = input("ev-artifacts");
    let r = ready(&ev);
    let job = evaluation::evaluation_job(&ev, &r, &OperatorConfig::default());
    assert_fixture("ev-artifacts-job", &job);
    let args = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].args.clone().unwrap();
    assert_eq!(&args[..3], ["evaluate", "--base-model", "/artifacts/routing-tiny/pretrain/model"]);
    let gates = args.iter().position(|a| a == "--gates").unwrap();
    let g: sapllm_crds::common::Gates = serde_json::from_str(&args[gates + 1]).unwrap();
    assert_eq!(g.p95_latency_ms, 250.0);
    // An evaluation Job gets one GPU by default: the CUDA image, on the GPU.
    assert!(args.ends_with(&["--progress", "json", "--device", "cuda"].map(String::from)), "{args:?}");
    let c = &job.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0];
    assert_eq!(c.image.as_deref(), Some("ghcr.io/sapllm/sapllm-worker:0.1.0-cuda"));
    let rules = &job.spec.as_ref().unwrap().pod_failure_policy.as_ref().unwrap().rules;
    assert_eq!(rules[0].action, "FailJob", "failed gates are not retried");
}

#[test]
fn a_verdict_is_recomputed_from_the_metrics_with_the_specs_gates() {
    let ev: Evaluation = input("ev-artifacts");
    // The worker claims Passed, but p95 = 300 ms breaks this Evaluation's 250 ms gate.
    let result = StageResult {
        succeeded: true,
        metrics: Some(metrics(0.98, 300.0)),
        verdict: Some(Verdict::Passed),
        artifacts: Some(Artifacts {
            model_version: Some(format!("sha256:{}", "cd".repeat(32))),
            ..Default::default()
        }),
        report: Some("routing-tiny-recheck/evaluation/routing-tiny-recheck/EVALUATION_REPORT.md".into()),
        ..Default::default()
    };
    let d = finished(&ev, JobState::Succeeded, Some(result), None);
    assert_fixture("ev-artifacts-status-failed-gates", &d.status);
    assert_eq!(d.status.verdict, Some(Verdict::Failed));
    assert_eq!(d.status.phase, Some(EvaluationPhase::Completed));
    assert!(d.transitions.iter().any(|t| t.reason == "GatesFailed"));
}

#[test]
fn passing_metrics_pass_and_a_crash_without_metrics_is_an_error() {
    let ev: Evaluation = input("ev-artifacts");
    let ok = StageResult { succeeded: true, metrics: Some(metrics(0.98, 120.0)), ..Default::default() };
    let d = finished(&ev, JobState::Succeeded, Some(ok), None);
    assert_eq!(d.status.verdict, Some(Verdict::Passed));
    assert!(d.status.conditions.iter().any(|c| c.type_ == "Passed" && c.status == "True"));
    assert_eq!(
        d.status.report.as_deref(),
        Some(
            "pvc://sapllm-artifacts/routing-tiny-recheck/evaluation/routing-tiny-recheck/EVALUATION_REPORT.md"
        )
    );

    let d = finished(
        &ev,
        JobState::Failed,
        None,
        Some("BackoffLimitExceeded: ; termination message: exit code 2: out of memory"),
    );
    assert_eq!(d.status.phase, Some(EvaluationPhase::Failed));
    assert_eq!(d.status.verdict, Some(Verdict::Error));
    let f = d.status.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
    assert_eq!(f.reason, "JobFailed");
    assert!(f.message.contains("out of memory"));
}

#[test]
fn bad_input_names_the_field_and_a_missing_run_waits() {
    let mut ev: Evaluation = input("ev-artifacts");
    ev.spec.storage = None;
    assert_eq!(evaluation::resolve(&ev, None).unwrap_err().field, "spec.storage");
    let mut ev: Evaluation = input("ev-artifacts");
    ev.spec.model.artifacts.as_mut().unwrap().adapter = Some("../../etc".into());
    assert_eq!(evaluation::resolve(&ev, None).unwrap_err().field, "spec.model.artifacts.adapter");
    let mut ev: Evaluation = input("ev-artifacts");
    ev.spec.model.artifacts.as_mut().unwrap().version = Some("v1".into());
    let err = evaluation::resolve(&ev, None).unwrap_err();
    assert_eq!(err.field, "spec.model.artifacts.version");
    let d = evaluation::decide(&ev, &Err(err), None, None, at(0));
    assert_eq!(d.status.phase, Some(EvaluationPhase::Failed));
    assert!(
        d.status
            .conditions
            .iter()
            .any(|c| c.reason == "InvalidSpec" && c.message.starts_with("spec.model.artifacts.version"))
    );

    let run: TrainingRun = input("tr-tiny");
    let ev = training::run_evaluation(&run, training::plan(&run).last().unwrap(), None);
    assert!(
        matches!(evaluation::resolve(&ev, None).unwrap(), Resolution::Waiting(m) if m.contains("does not exist"))
    );
    assert!(
        matches!(evaluation::resolve(&ev, Some(&run)).unwrap(), Resolution::Waiting(m) if m.contains("data-prep, pretrain, sft, ppo"))
    );
}

#[test]
fn a_run_owned_evaluation_scores_the_runs_final_adapter_on_its_test_split() {
    let mut run: TrainingRun = input("tr-tiny");
    let stages = [StageName::DataPrep, StageName::Pretrain, StageName::Sft, StageName::Ppo]
        .into_iter()
        .map(|name| StageStatus {
            name,
            phase: StagePhase::Succeeded,
            job_name: None,
            attempts: 1,
            start_time: None,
            completion_time: None,
            settings_digest: None,
            message: None,
        })
        .collect();
    run.status = Some(TrainingRunStatus {
        stages,
        artifacts: Some(Artifacts {
            dataset: Some("routing-tiny/data".into()),
            base_model: Some("routing-tiny/pretrain/model".into()),
            sft_adapter: Some("routing-tiny/sft/adapter".into()),
            ppo_adapter: Some("routing-tiny/ppo/adapter".into()),
            model_version: Some(format!("sha256:{}", "ab".repeat(32))),
        }),
        ..Default::default()
    });
    let mut ev = training::run_evaluation(&run, training::plan(&run).last().unwrap(), None);
    ev.metadata.uid = Some("uid-ev".into());
    let Resolution::Ready(r) = evaluation::resolve(&ev, Some(&run)).unwrap() else { panic!() };
    assert_eq!(r.adapter.as_deref(), Some("routing-tiny/ppo/adapter"), "PPO's adapter is the final one");
    assert_eq!(r.examples, "/artifacts/routing-tiny/data/test_routing_examples.jsonl");
    assert_eq!(r.version, run.status.as_ref().unwrap().artifacts.as_ref().unwrap().model_version);
    let (job, _) = build::job_name(&ev, &r);
    let d = evaluation::decide(&ev, &Ok(Resolution::Ready(r)), Some(&job), None, at(0));
    assert!(d.create_job);
    assert_eq!(d.status.phase, Some(EvaluationPhase::Running));
    assert_eq!(d.status.job_name.as_deref(), Some(job.as_str()));
}

#[test]
fn an_absolute_base_on_another_claim_is_used_as_is_and_mounted() {
    // A Hugging Face base on claim "models": the worker reports it where it read it.
    let mut ev: Evaluation = input("ev-artifacts");
    let r = evaluation::Resolved {
        base_model: "/volumes/models/mistralai/Mixtral-8x7B-Instruct-v0.1".into(),
        ..ready(&ev)
    };
    ev.spec.model.artifacts.as_mut().unwrap().base_model = r.base_model.clone();
    let job = evaluation::evaluation_job(&ev, &r, &OperatorConfig::default());
    let pod = job.spec.unwrap().template.spec.unwrap();
    let args = pod.containers[0].args.clone().unwrap();
    assert_eq!(args[2], "/volumes/models/mistralai/Mixtral-8x7B-Instruct-v0.1");
    assert_eq!(args[4], "/artifacts/routing-tiny/ppo/adapter");
    let mounts: Vec<String> =
        pod.containers[0].volume_mounts.clone().unwrap().into_iter().map(|m| m.mount_path).collect();
    assert!(mounts.contains(&"/volumes/models".to_string()), "{mounts:?}");
    let claims: Vec<String> = pod
        .volumes
        .unwrap()
        .into_iter()
        .filter_map(|v| v.persistent_volume_claim.map(|c| c.claim_name))
        .collect();
    assert_eq!(claims, ["sapllm-artifacts", "models"]);
}

#[test]
fn a_recorded_verdict_stands_when_the_run_moves_on() {
    let ev: Evaluation = input("ev-artifacts");
    let ok = StageResult { succeeded: true, metrics: Some(metrics(0.98, 120.0)), ..Default::default() };
    let done = finished(&ev, JobState::Succeeded, Some(ok), None);
    let mut ev = ev;
    ev.status = Some(done.status.clone());
    // Its run re-trains: the model is "not ready" again, yet the verdict about the scored version stays.
    let d = evaluation::decide(
        &ev,
        &Ok(Resolution::Waiting("TrainingRun x has not finished stage(s) sft".into())),
        None,
        None,
        at(500),
    );
    assert_eq!(d.status, done.status);
    assert!(!d.create_job && d.transitions.is_empty());
    // A spec change (new generation) evaluates again.
    ev.metadata.generation = Some(2);
    ev.spec.samples = 1000;
    let r = ready(&ev);
    let (job, _) = build::job_name(&ev, &r);
    let d = evaluation::decide(&ev, &Ok(Resolution::Ready(r)), Some(&job), None, at(600));
    assert!(d.create_job);
    assert_eq!(d.status.phase, Some(EvaluationPhase::Running));
    assert!(d.status.verdict.is_none() && d.status.metrics.is_none());
}
