//! The TrainingRun state machine: from the run, its plan and what exists, the next action and the
//! exact status to write. No client; the controller executes the decision.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use sapllm_crds::common::Verdict;
use sapllm_crds::conditions::set_condition;
use sapllm_crds::evaluation::{Evaluation, EvaluationPhase};
use sapllm_crds::training_run::{
    Artifacts, Progress, RunPhase, StageName, StagePhase, StageStatus, TrainingRun, TrainingRunStatus,
};

use crate::invalid::Invalid;
use crate::observe::{JobObservation, JobState, POD_CREATION_FAILED};
use crate::training::plan::PlannedStage;
use crate::transitions::Transition;

/// What exists for a run.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The run's Jobs (owned by it), by name.
    pub jobs: BTreeMap<String, JobObservation>,
    /// The run's Evaluations (owned by it), by name.
    pub evaluations: BTreeMap<String, Evaluation>,
    /// Progress read from the running stage's pod.
    pub progress: Option<Progress>,
    /// Why the running stage's log could not be read for progress (the API server cannot
    /// reach the kubelet, RBAC lacks `pods/log`), when it could not.
    pub progress_unavailable: Option<String>,
    /// The lineage of the model version serving at `spec.endpoint`, when it names one that
    /// exists and has a passing version.
    pub endpoint_lineage: Option<String>,
}

/// What to do next and the status to write.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    /// The status to apply.
    pub status: TrainingRunStatus,
    /// Start this stage (create its Job, or its Evaluation for the evaluation stage).
    pub start: Option<PlannedStage>,
    /// Jobs from an earlier generation of the spec: their stage re-runs, so they are deleted.
    pub delete_jobs: Vec<String>,
    /// Jobs whose `suspend` must change (`spec.suspend` toggled).
    pub suspend_jobs: Vec<(String, bool)>,
    /// Events for what changed.
    pub transitions: Vec<Transition>,
    /// Whether a stage runs (poll its progress soon).
    pub running: bool,
}

/// The status of a run whose spec the operator cannot act on: Failed, naming the field.
pub fn invalid_status(run: &TrainingRun, err: &Invalid, now: Time) -> (TrainingRunStatus, Vec<Transition>) {
    let prev = run.status.clone().unwrap_or_default();
    let mut status = prev.clone();
    status.phase = Some(RunPhase::Failed);
    status.progress = None;
    status.observed_generation = run.metadata.generation;
    let g = run.metadata.generation;
    let c = &mut status.conditions;
    set_condition(c, "Failed", true, "InvalidSpec", err.to_string(), g, now.clone());
    set_condition(c, "Running", false, "InvalidSpec", "the spec is invalid", g, now.clone());
    set_condition(c, "Succeeded", false, "InvalidSpec", "the spec is invalid", g, now);
    let mut t = Vec::new();
    if prev.phase != Some(RunPhase::Failed) || !message_is(&prev.conditions, "Failed", &err.to_string()) {
        t.push(Transition::warning("InvalidSpec", err.to_string()));
    }
    (status, t)
}

fn message_is(conditions: &[Condition], type_: &str, msg: &str) -> bool {
    conditions.iter().any(|c| c.type_ == type_ && c.message == msg)
}

/// Decides the next step of `run`.
pub fn decide(run: &TrainingRun, plan: &[PlannedStage], obs: &Observed, now: Time) -> Decision {
    let prev = run.status.clone().unwrap_or_default();
    let generation = run.metadata.generation;
    let suspend = run.spec.suspend;
    let mut d = Decision::default();
    let mut stages: Vec<StageStatus> = Vec::new();
    let mut artifacts = prev.artifacts.clone().unwrap_or_default();
    let mut blocked = false;
    let mut failed: Option<(StageName, String)> = None;
    let mut current: Option<StageName> = None;
    let mut evaluation: Option<&Evaluation> = None;
    let mut rerun_from: Option<StageName> = None;
    let mut pods_failing: Option<(StageName, String)> = None;

    let plan = adopt_recorded(plan, &prev, generation);
    let plan = plan.as_slice();
    for ps in plan {
        let before = prev.stages.iter().find(|s| s.name == ps.name);
        let same = before.is_some_and(|b| b.settings_digest.as_deref() == Some(ps.digest.as_str()));
        if before.is_some_and(|b| b.settings_digest.is_some() && !same) && rerun_from.is_none() {
            rerun_from = Some(ps.name);
        }
        let mut st = bare_stage(ps.name, StagePhase::Pending);
        if blocked {
            stages.push(st);
            continue;
        }
        st.settings_digest = Some(ps.digest.clone());
        st.job_name = Some(ps.child.clone());
        st.start_time = before.filter(|_| same).and_then(|b| b.start_time.clone()).or(Some(now.clone()));
        let kept = |phase| before.filter(|b| same && b.phase == phase).cloned();
        let kept_succeeded = kept(StagePhase::Succeeded);
        let start = if ps.name == StageName::Evaluation {
            let ev = obs.evaluations.get(&ps.child);
            evaluation = evaluation.or(ev);
            evaluation_stage(&mut st, ps, ev, kept_succeeded, suspend, &mut artifacts)
        } else {
            let job = obs.jobs.get(&ps.child);
            if let Some(m) =
                job.filter(|j| j.state == JobState::Active).and_then(|j| j.pod_creation_failure.clone())
            {
                pods_failing = Some((ps.name, m));
            }
            let outcome =
                job_stage(&mut st, run, job, kept_succeeded, kept(StagePhase::Failed), &mut artifacts);
            if let Some(toggle) = outcome.suspend {
                d.suspend_jobs.push(toggle);
            }
            outcome.start
        };
        if start {
            d.start = Some(ps.clone());
        }
        if matches!(st.phase, StagePhase::Succeeded | StagePhase::Failed) {
            st.completion_time = before
                .filter(|b| same && b.phase == st.phase)
                .and_then(|b| b.completion_time.clone())
                .or(Some(now.clone()));
        }
        match st.phase {
            StagePhase::Succeeded => {}
            StagePhase::Failed => {
                failed = Some((ps.name, st.message.clone().unwrap_or_default()));
                current = Some(ps.name);
                blocked = true;
            }
            _ => {
                current = Some(ps.name);
                blocked = true;
            }
        }
        stages.push(st);
    }
    let all = with_skipped(stages, plan);

    // Jobs of superseded settings: their outputs are about to be overwritten, so they must not
    // run on (or be adopted later).
    let wanted: Vec<&str> = plan.iter().map(|p| p.child.as_str()).collect();
    d.delete_jobs = obs.jobs.keys().filter(|n| !wanted.contains(&n.as_str())).cloned().collect();

    let trained = plan
        .iter()
        .filter(|p| p.name != StageName::Evaluation)
        .all(|p| all.iter().any(|s| s.name == p.name && s.phase == StagePhase::Succeeded));
    if !trained {
        artifacts.model_version = None;
    }
    let phase = run_phase(failed.is_some(), current.is_some(), suspend, &all);
    d.running = phase == RunPhase::Running;

    let mut status = TrainingRunStatus {
        phase: Some(phase),
        current_stage: current.filter(|_| phase != RunPhase::Succeeded),
        stages: all,
        progress: None,
        artifacts: (artifacts != Artifacts::default()).then_some(artifacts),
        evaluation: prev.evaluation.clone(),
        verdict: prev.verdict,
        conditions: prev.conditions.clone(),
        observed_generation: generation,
    };
    if phase == RunPhase::Running {
        status.progress = match (&obs.progress, &prev.progress) {
            (Some(p), _) if p.stage.is_none() || p.stage == current => Some(p.clone()),
            (_, Some(p)) if p.stage == current && current.is_some() => Some(p.clone()),
            _ => None,
        };
    }
    if let Some(ev) = evaluation {
        status.evaluation = ev.metadata.name.clone();
        status.verdict = ev.status.as_ref().and_then(|s| s.verdict);
    } else if rerun_from.is_some() || !trained {
        status.evaluation = None;
        status.verdict = None;
    }

    set_conditions(
        &mut status,
        Outcome { phase, failed, current, rerun_from, suspend, evaluation, pods_failing },
        generation,
        &now,
    );

    progress_condition(&mut status.conditions, obs, generation, &now);

    d.transitions =
        transitions(&prev, &status, rerun_from.filter(|_| prev.observed_generation != generation));
    d.status = status;
    d
}

/// The plan with recorded digests and children adopted. Digests are compared only when the
/// spec changed. With the same generation a different digest means the operator computes them
/// differently now (an upgrade, a new defaulted field): the recorded digest and child are
/// adopted instead of re-training finished stages.
fn adopt_recorded(
    plan: &[PlannedStage],
    prev: &TrainingRunStatus,
    generation: Option<i64>,
) -> Vec<PlannedStage> {
    let same_generation = prev.observed_generation.is_some() && prev.observed_generation == generation;
    plan.iter()
        .map(|ps| match prev.stages.iter().find(|s| s.name == ps.name) {
            Some(StageStatus { settings_digest: Some(d), job_name: Some(j), .. }) if same_generation => {
                PlannedStage { name: ps.name, digest: d.clone(), child: j.clone() }
            }
            _ => ps.clone(),
        })
        .collect()
}

/// The evaluation stage from its Evaluation (or, when that is gone, from its recorded
/// success). Returns whether the Evaluation is to be created now.
fn evaluation_stage(
    st: &mut StageStatus,
    ps: &PlannedStage,
    ev: Option<&Evaluation>,
    kept_succeeded: Option<StageStatus>,
    suspend: bool,
    artifacts: &mut Artifacts,
) -> bool {
    let Some(ev) = ev else {
        return match kept_succeeded {
            // The Evaluation was deleted after it completed: the verdict stays recorded.
            Some(b) => {
                *st = b;
                false
            }
            None if suspend => {
                st.phase = StagePhase::Pending;
                false
            }
            None => {
                st.phase = StagePhase::Running;
                st.attempts = 1;
                true
            }
        };
    };
    let es = ev.status.clone().unwrap_or_default();
    st.attempts = es.attempts.max(1);
    match es.phase {
        Some(EvaluationPhase::Completed) => st.phase = StagePhase::Succeeded,
        Some(EvaluationPhase::Failed) => {
            st.phase = StagePhase::Failed;
            let why = es.conditions.iter().find(|c| c.type_ == "Failed").map(|c| c.message.clone());
            st.message = Some(why.unwrap_or_else(|| format!("evaluation {} failed", ps.child)));
        }
        _ => {
            st.phase = StagePhase::Running;
            st.message = es.conditions.iter().find(|c| c.type_ == "Running").map(|c| c.message.clone());
        }
    }
    if let Some(v) = es.model_version {
        artifacts.model_version = Some(v);
    }
    false
}

/// What a worker stage's Job asks of the operator.
struct JobOutcome {
    /// Create the stage's Job now.
    start: bool,
    /// Suspend (true) or resume (false) the Job.
    suspend: Option<(String, bool)>,
}

/// A worker stage from its Job (or, when that is gone, from its recorded outcome).
fn job_stage(
    st: &mut StageStatus,
    run: &TrainingRun,
    job: Option<&JobObservation>,
    kept_succeeded: Option<StageStatus>,
    kept_failed: Option<StageStatus>,
    artifacts: &mut Artifacts,
) -> JobOutcome {
    let suspend = run.spec.suspend;
    let mut out = JobOutcome { start: false, suspend: None };
    let Some(job) = job else {
        match (kept_succeeded, kept_failed) {
            // The Job is gone (TTL, manual delete) but its outcome is recorded; the outputs
            // are on the volume, so the stage is not run twice.
            (Some(b), _) | (None, Some(b)) => *st = b,
            (None, None) if suspend => st.phase = StagePhase::Pending,
            (None, None) => {
                st.phase = StagePhase::Running;
                st.attempts = 1;
                out.start = true;
            }
        }
        return out;
    };
    st.attempts = job.attempts.max(1);
    match job.state {
        JobState::Succeeded => {
            st.phase = StagePhase::Succeeded;
            if let Some(a) = job.result.as_ref().and_then(|r| r.artifacts.as_ref()) {
                merge_artifacts(artifacts, a);
            }
            st.message = job.result.as_ref().and_then(|r| r.message.clone());
        }
        JobState::Failed => {
            st.phase = StagePhase::Failed;
            st.message = job.message.clone().or(Some("the stage's Job failed".into()));
        }
        JobState::Active => {
            st.phase = StagePhase::Running;
            st.message = job.pod_creation_failure.as_ref().map(|m| format!("no pod can be created: {m}"));
            // With a queue, Kueue owns `suspend` once the Job is admitted; the operator only
            // ever suspends queued Jobs, never admits them.
            if job.suspended != suspend && (suspend || run.spec.queue_name.is_none()) {
                out.suspend = Some((job.name.clone(), suspend));
            }
        }
    }
    out
}

/// A stage with nothing started: no Job, no attempts, no times.
fn bare_stage(name: StageName, phase: StagePhase) -> StageStatus {
    StageStatus {
        name,
        phase,
        job_name: None,
        attempts: 0,
        start_time: None,
        completion_time: None,
        settings_digest: None,
        message: None,
    }
}

/// Every stage in order: the planned ones as decided, the others listed as Skipped so
/// `kubectl describe` shows the plan.
fn with_skipped(stages: Vec<StageStatus>, plan: &[PlannedStage]) -> Vec<StageStatus> {
    let mut all: Vec<StageStatus> = StageName::ALL
        .into_iter()
        .map(|n| {
            stages.iter().find(|s| s.name == n).cloned().unwrap_or_else(|| bare_stage(n, StagePhase::Skipped))
        })
        .collect();
    all.retain(|s| s.phase != StagePhase::Skipped || !plan.iter().any(|p| p.name == s.name));
    all
}

/// The run's phase from its stages.
fn run_phase(failed: bool, current: bool, suspend: bool, stages: &[StageStatus]) -> RunPhase {
    if failed {
        RunPhase::Failed
    } else if !current {
        RunPhase::Succeeded
    } else if suspend {
        RunPhase::Suspended
    } else if stages.iter().any(|s| s.phase == StagePhase::Running) {
        RunPhase::Running
    } else {
        RunPhase::Pending
    }
}

/// `ProgressAvailable`: whether live progress can be read from the running pod's log. Stages
/// complete without it (their results come from the termination message); the condition says
/// why `kubectl get` shows no step/loss/ETA, instead of an error in the operator's log.
fn progress_condition(c: &mut Vec<Condition>, obs: &Observed, g: Option<i64>, now: &Time) {
    match (&obs.progress_unavailable, &obs.progress) {
        (Some(why), _) => {
            let m = format!("cannot read the running pod's log for progress: {why}");
            set_condition(c, PROGRESS_AVAILABLE, false, "LogUnavailable", m, g, now.clone());
        }
        (None, Some(_)) => set_condition(
            c,
            PROGRESS_AVAILABLE,
            true,
            "LogRead",
            "progress is read from the pod's log",
            g,
            now.clone(),
        ),
        (None, None) => {}
    }
}

/// The condition saying whether live progress can be read.
pub const PROGRESS_AVAILABLE: &str = "ProgressAvailable";

/// What the conditions are written from.
struct Outcome<'a> {
    phase: RunPhase,
    failed: Option<(StageName, String)>,
    current: Option<StageName>,
    rerun_from: Option<StageName>,
    suspend: bool,
    evaluation: Option<&'a Evaluation>,
    /// A running stage whose Job cannot create its pod, and why.
    pods_failing: Option<(StageName, String)>,
}

/// The Running / Succeeded / Failed / Suspended / GatesPassed conditions.
fn set_conditions(status: &mut TrainingRunStatus, o: Outcome<'_>, g: Option<i64>, now: &Time) {
    let Outcome { phase, failed, current, rerun_from, suspend, evaluation, pods_failing } = o;
    let evaluation_name = status.evaluation.clone().unwrap_or_default();
    let verdict = status.verdict;
    let failed_attempts = |s: StageName| status.stages.iter().find(|x| x.name == s).map_or(0, |x| x.attempts);
    let failed_attempts = failed.as_ref().map_or(0, |(s, _)| failed_attempts(*s));
    let c = &mut status.conditions;
    let stage_s = |s: Option<StageName>| s.map(|s| s.as_str()).unwrap_or("-");
    match phase {
        RunPhase::Failed => {
            let (s, m) = failed.clone().unwrap_or((StageName::DataPrep, String::new()));
            let msg = format!("stage {} failed after {failed_attempts} attempt(s): {m}", s.as_str());
            set_condition(c, "Failed", true, "StageFailed", msg, g, now.clone());
            set_condition(
                c,
                "Running",
                false,
                "StageFailed",
                format!("stage {} failed", s.as_str()),
                g,
                now.clone(),
            );
            set_condition(
                c,
                "Succeeded",
                false,
                "StageFailed",
                format!("stage {} failed", s.as_str()),
                g,
                now.clone(),
            );
        }
        RunPhase::Succeeded => {
            set_condition(
                c,
                "Succeeded",
                true,
                "AllStagesSucceeded",
                "every stage completed",
                g,
                now.clone(),
            );
            set_condition(c, "Running", false, "AllStagesSucceeded", "every stage completed", g, now.clone());
            set_condition(c, "Failed", false, "AllStagesSucceeded", "every stage completed", g, now.clone());
        }
        RunPhase::Running | RunPhase::Pending | RunPhase::Suspended => {
            let running = phase == RunPhase::Running;
            let reason = match (&pods_failing, rerun_from) {
                (Some(_), _) => POD_CREATION_FAILED,
                (None, Some(_)) => "SpecChanged",
                (None, None) => "StageRunning",
            };
            let msg = match &pods_failing {
                Some((s, why)) => format!("stage {} cannot create its pod: {why}", s.as_str()),
                None => format!(
                    "stage {} {}",
                    stage_s(current),
                    if running { "is running" } else { "is pending" }
                ),
            };
            set_condition(c, "Running", running, reason, msg.clone(), g, now.clone());
            set_condition(c, "Succeeded", false, reason, msg.clone(), g, now.clone());
            set_condition(c, "Failed", false, reason, msg, g, now.clone());
        }
    }
    // Kubernetes keeps retrying the pod (a missing ServiceAccount may be created, quota freed):
    // the run is not failed, but says why nothing runs.
    match &pods_failing {
        Some((s, why)) => {
            let m = format!("the Job of stage {} cannot create its pod: {why}", s.as_str());
            set_condition(c, POD_CREATION_FAILED, true, "FailedCreate", m, g, now.clone());
        }
        None if c.iter().any(|x| x.type_ == POD_CREATION_FAILED) => {
            set_condition(
                c,
                POD_CREATION_FAILED,
                false,
                "PodsCreated",
                "the current Job created its pod",
                g,
                now.clone(),
            );
        }
        None => {}
    }
    let (sus_reason, sus_msg) = if suspend {
        ("Suspended", "spec.suspend is true: no new stage starts and running Jobs are suspended")
    } else {
        ("NotSuspended", "spec.suspend is false")
    };
    set_condition(c, "Suspended", suspend, sus_reason, sus_msg, g, now.clone());
    match verdict {
        Some(Verdict::Passed) => {
            let m = format!("{evaluation_name} passed every gate");
            set_condition(c, "GatesPassed", true, "GatesPassed", m, g, now.clone());
        }
        Some(v) => {
            let failing = evaluation
                .and_then(|e| e.status.as_ref())
                .map(|s| crate::evaluation::decide::failing_gates(&s.gates))
                .unwrap_or_default();
            let reason = if v == Verdict::Error { "EvaluationError" } else { "GatesFailed" };
            let m = format!("{evaluation_name}: {failing}");
            set_condition(c, "GatesPassed", false, reason, m, g, now.clone());
        }
        None => c.retain(|x| x.type_ != "GatesPassed"),
    }
}

fn merge_artifacts(into: &mut Artifacts, from: &Artifacts) {
    let set = |dst: &mut Option<String>, src: &Option<String>| {
        if src.is_some() {
            dst.clone_from(src);
        }
    };
    set(&mut into.dataset, &from.dataset);
    set(&mut into.base_model, &from.base_model);
    set(&mut into.sft_adapter, &from.sft_adapter);
    set(&mut into.ppo_adapter, &from.ppo_adapter);
    set(&mut into.model_version, &from.model_version);
}

/// Events for stage and run transitions.
fn transitions(
    prev: &TrainingRunStatus,
    now: &TrainingRunStatus,
    rerun: Option<StageName>,
) -> Vec<Transition> {
    let mut t = Vec::new();
    if let Some(s) = rerun {
        t.push(
            Transition::normal(
                "SpecChanged",
                format!("settings changed: re-running from stage {}", s.as_str()),
            )
            .about(s.as_str()),
        );
    }
    for s in &now.stages {
        let before = prev.stages.iter().find(|b| b.name == s.name);
        let changed = before.is_none_or(|b| b.phase != s.phase || b.settings_digest != s.settings_digest);
        if !changed {
            continue;
        }
        let job = s.job_name.clone().unwrap_or_default();
        match s.phase {
            StagePhase::Running => t.push(
                Transition::normal("StageStarted", format!("stage {} started ({job})", s.name.as_str()))
                    .about(&job),
            ),
            StagePhase::Succeeded => t.push(
                Transition::normal("StageSucceeded", format!("stage {} succeeded ({job})", s.name.as_str()))
                    .about(&job),
            ),
            StagePhase::Failed => t.push(
                Transition::warning(
                    "StageFailed",
                    format!("stage {} failed: {}", s.name.as_str(), s.message.clone().unwrap_or_default()),
                )
                .about(&job),
            ),
            _ => {}
        }
    }
    if prev.phase != now.phase {
        let p = format!("{:?}", now.phase.unwrap_or(RunPhase::Pending));
        match now.phase {
            Some(RunPhase::Failed) => t.push(Transition::warning("RunFailed", "the run failed")),
            Some(RunPhase::Succeeded) => t.push(Transition::normal("RunSucceeded", "every stage completed")),
            _ => t.push(Transition::normal("PhaseChanged", format!("phase is now {p}")).about(&p)),
        }
    }
    if prev.verdict != now.verdict
        && let Some(v) = now.verdict
    {
        let ev = now.evaluation.clone().unwrap_or_default();
        match v {
            Verdict::Passed => {
                t.push(Transition::normal("GatesPassed", format!("{ev} passed every gate")).about(&ev))
            }
            _ => t.push(Transition::warning("GatesFailed", format!("{ev}: verdict {v:?}")).about(&ev)),
        }
    }
    t
}
