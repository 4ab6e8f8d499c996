//! The Evaluation state machine: the status to write and whether to start the evaluate Job.
//!
//! The verdict is recomputed from the reported metrics with the Evaluation's own gates: the
//! gates in the spec are authoritative, so a worker that misreports a verdict cannot promote a
//! model.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use sapllm_crds::common::Verdict;
use sapllm_crds::conditions::set_condition;
use sapllm_crds::evaluation::{Evaluation, EvaluationPhase, EvaluationStatus, ModelArtifacts, verdict_of};

use crate::evaluation::resolve::Resolution;
use crate::invalid::Invalid;
use crate::observe::{JobObservation, JobState, POD_CREATION_FAILED};
use crate::transitions::Transition;

/// The decision for one Evaluation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EvalDecision {
    /// The status to apply.
    pub status: EvaluationStatus,
    /// Whether the evaluate Job must be created.
    pub create_job: bool,
    /// Events.
    pub transitions: Vec<Transition>,
}

/// Decides the status of `ev`. `job_name` is the Job the resolution calls for and `job` what
/// exists under that name.
pub fn decide(
    ev: &Evaluation,
    resolution: &Result<Resolution, Invalid>,
    job_name: Option<&str>,
    job: Option<&JobObservation>,
    now: Time,
) -> EvalDecision {
    let prev = ev.status.clone().unwrap_or_default();
    let g = ev.metadata.generation;
    // A recorded verdict is a fact about the version that was scored: it stands while the spec
    // is unchanged, whatever its TrainingRun does later (a re-run produces a new Evaluation).
    let recorded = prev.job_name.is_some()
        && matches!(prev.phase, Some(EvaluationPhase::Completed | EvaluationPhase::Failed));
    if recorded && prev.observed_generation == g {
        return EvalDecision { status: prev, create_job: false, transitions: Vec::new() };
    }
    let mut s = prev.clone();
    s.observed_generation = g;
    let mut d = EvalDecision::default();
    let c = &mut s.conditions;
    match resolution {
        Err(e) => {
            s.phase = Some(EvaluationPhase::Failed);
            set_condition(c, "Failed", true, "InvalidSpec", e.to_string(), g, now.clone());
            set_condition(c, "Running", false, "InvalidSpec", "the spec is invalid", g, now.clone());
            set_condition(c, "Completed", false, "InvalidSpec", "the spec is invalid", g, now.clone());
            set_condition(c, "Passed", false, "InvalidSpec", "the spec is invalid", g, now.clone());
        }
        Ok(Resolution::Waiting(why)) => {
            s.phase = Some(EvaluationPhase::Pending);
            set_condition(c, "Running", false, "WaitingForModel", why.clone(), g, now.clone());
            set_condition(c, "Completed", false, "WaitingForModel", why.clone(), g, now.clone());
        }
        Ok(Resolution::Ready(r)) => {
            let jn = job_name.unwrap_or_default().to_string();
            let recorded = prev.job_name.as_deref() == Some(jn.as_str())
                && matches!(prev.phase, Some(EvaluationPhase::Completed | EvaluationPhase::Failed));
            s.artifacts = Some(ModelArtifacts {
                base_model: r.base_model.clone(),
                adapter: r.adapter.clone(),
                version: r.version.clone().or(prev.model_version.clone()),
            });
            match job {
                // The Job is gone (TTL) after the verdict was recorded: keep it.
                None if recorded => {}
                None => {
                    d.create_job = true;
                    s = fresh(s, &jn);
                    s.phase = Some(EvaluationPhase::Running);
                    s.attempts = 1;
                    running(&mut s, &jn, None, g, &now);
                }
                Some(j) => {
                    if prev.job_name.as_deref() != Some(jn.as_str()) {
                        s = fresh(s, &jn);
                    }
                    s.attempts = j.attempts.max(1);
                    let metrics = j.result.as_ref().and_then(|r| r.metrics.clone());
                    match (j.state, metrics) {
                        (JobState::Active, _) => {
                            s.phase = Some(EvaluationPhase::Running);
                            running(&mut s, &jn, j.pod_creation_failure.as_deref(), g, &now);
                        }
                        (_, Some(m)) => {
                            let res = j.result.clone().unwrap_or_default();
                            let gates = ev.spec.gates.check(&m);
                            let verdict = verdict_of(&gates);
                            let version = res
                                .artifacts
                                .as_ref()
                                .and_then(|a| a.model_version.clone())
                                .or(r.version.clone());
                            s.phase = Some(EvaluationPhase::Completed);
                            s.metrics = Some(m);
                            s.gates = gates;
                            s.verdict = Some(verdict);
                            s.model_version = version.clone();
                            if let Some(a) = s.artifacts.as_mut() {
                                a.version = version;
                            }
                            let report =
                                res.report.unwrap_or_else(|| format!("{}/EVALUATION_REPORT.md", r.out));
                            s.report = Some(format!("pvc://{}/{}", r.claim, report.trim_start_matches('/')));
                            s.completion_time =
                                prev.completion_time.clone().filter(|_| recorded).or(Some(now.clone()));
                            let c = &mut s.conditions;
                            set_condition(
                                c,
                                "Running",
                                false,
                                "Completed",
                                "the evaluation finished",
                                g,
                                now.clone(),
                            );
                            set_condition(
                                c,
                                "Completed",
                                true,
                                "MetricsRecorded",
                                "metrics and gates are recorded",
                                g,
                                now.clone(),
                            );
                            if verdict == Verdict::Passed {
                                set_condition(
                                    c,
                                    "Passed",
                                    true,
                                    "GatesPassed",
                                    "every gate passed",
                                    g,
                                    now.clone(),
                                );
                                set_condition(
                                    c,
                                    "Failed",
                                    false,
                                    "GatesPassed",
                                    "every gate passed",
                                    g,
                                    now.clone(),
                                );
                            } else {
                                let failing = failing_gates(&s.gates);
                                let c = &mut s.conditions;
                                set_condition(
                                    c,
                                    "Passed",
                                    false,
                                    "GatesFailed",
                                    failing.clone(),
                                    g,
                                    now.clone(),
                                );
                                set_condition(c, "Failed", true, "GatesFailed", failing, g, now.clone());
                            }
                        }
                        (_, None) if j.state == JobState::Succeeded => {
                            job_failed(
                                &mut s,
                                "NoResult",
                                "the evaluate Job succeeded but left no metrics in its termination message"
                                    .into(),
                                g,
                                &now,
                            );
                        }
                        (_, None) => {
                            let why = format!(
                                "the evaluate Job failed after {} attempt(s): {}",
                                s.attempts,
                                j.message.clone().unwrap_or_default()
                            );
                            job_failed(&mut s, "JobFailed", why, g, &now);
                        }
                    }
                }
            }
        }
    }
    d.transitions = transitions(ev, &prev, &s);
    d.status = s;
    d
}

/// A status for a new Job: the previous Job's results are dropped.
fn fresh(prev: EvaluationStatus, job: &str) -> EvaluationStatus {
    EvaluationStatus {
        job_name: Some(job.to_string()),
        artifacts: prev.artifacts,
        conditions: prev.conditions,
        observed_generation: prev.observed_generation,
        ..Default::default()
    }
}

/// The conditions of a running Job; `pods_failing` says why it cannot create its pod (Kubernetes
/// keeps retrying, so the Evaluation is not failed, but says why nothing runs).
fn running(s: &mut EvaluationStatus, job: &str, pods_failing: Option<&str>, g: Option<i64>, now: &Time) {
    let c = &mut s.conditions;
    let (reason, m) = match pods_failing {
        Some(why) => (POD_CREATION_FAILED, format!("Job {job} cannot create its pod: {why}")),
        None => ("JobRunning", format!("Job {job} scores the model")),
    };
    set_condition(c, "Running", true, reason, m.clone(), g, now.clone());
    set_condition(c, "Completed", false, reason, m.clone(), g, now.clone());
    c.retain(|x| x.type_ != "Passed" && x.type_ != "Failed");
}

fn job_failed(s: &mut EvaluationStatus, reason: &str, why: String, g: Option<i64>, now: &Time) {
    s.phase = Some(EvaluationPhase::Failed);
    s.verdict = Some(Verdict::Error);
    s.completion_time = Some(now.clone());
    let c = &mut s.conditions;
    set_condition(c, "Running", false, reason, why.clone(), g, now.clone());
    set_condition(c, "Completed", false, reason, why.clone(), g, now.clone());
    set_condition(c, "Passed", false, reason, why.clone(), g, now.clone());
    set_condition(c, "Failed", true, reason, why, g, now.clone());
}

/// `routingAccuracy 0.91 < 0.97, p95LatencyMs 612 >= 500`.
pub fn failing_gates(gates: &[sapllm_crds::evaluation::GateResult]) -> String {
    gates
        .iter()
        .filter(|x| !x.passed)
        .map(|x| {
            format!("{} {} {} {}", x.name, x.value, if x.comparator == "<" { ">=" } else { "<" }, x.threshold)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn transitions(ev: &Evaluation, prev: &EvaluationStatus, now: &EvaluationStatus) -> Vec<Transition> {
    let mut t = Vec::new();
    let name = ev.name_any();
    if prev.phase != now.phase || prev.job_name != now.job_name {
        match now.phase {
            Some(EvaluationPhase::Running) if prev.phase != now.phase || prev.job_name != now.job_name => t
                .push(
                    Transition::normal(
                        "EvaluationStarted",
                        format!("Job {} started", now.job_name.clone().unwrap_or_default()),
                    )
                    .about(now.job_name.as_deref().unwrap_or_default()),
                ),
            Some(EvaluationPhase::Failed) => {
                let m = now
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Failed")
                    .map(|c| c.message.clone())
                    .unwrap_or_default();
                t.push(
                    Transition::warning("EvaluationFailed", m)
                        .about(now.job_name.as_deref().unwrap_or_default()),
                )
            }
            Some(EvaluationPhase::Pending) => {
                t.push(Transition::normal("WaitingForModel", format!("{name} waits for its model")))
            }
            _ => {}
        }
    }
    if now.phase == Some(EvaluationPhase::Completed)
        && (prev.verdict != now.verdict || prev.phase != now.phase)
    {
        let v = now.model_version.clone().unwrap_or_default();
        match now.verdict {
            Some(Verdict::Passed) => {
                t.push(Transition::normal("GatesPassed", format!("{v} passed every gate")).about(&v))
            }
            _ => t.push(
                Transition::warning("GatesFailed", format!("{v}: {}", failing_gates(&now.gates))).about(&v),
            ),
        }
    }
    t
}
