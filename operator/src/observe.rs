//! What the operator observes of a worker Job: its state, attempts, and the stage result the
//! worker left in its pod's termination message.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use sapllm_crds::contract::StageResult;

/// The observed state of one worker Job.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobObservation {
    /// The Job's name.
    pub name: String,
    /// Job state.
    pub state: JobState,
    /// Attempts so far (failed pods + the running one).
    pub attempts: u32,
    /// Whether the Job is suspended (by `spec.suspend`, or waiting for Kueue).
    pub suspended: bool,
    /// The parsed stage result of the newest terminated pod, when it wrote one.
    pub result: Option<StageResult>,
    /// Why the Job failed / the raw termination message when it is not a stage result (the
    /// kubelet falls back to the log tail with `FallbackToLogsOnError`).
    pub message: Option<String>,
    /// Why the Job cannot create its pod (a missing ServiceAccount, PVC or Secret, a quota, an
    /// admission webhook), from its newest `FailedCreate` Event. The Job itself says nothing:
    /// it stays active with no pod while the Job controller retries.
    pub pod_creation_failure: Option<String>,
}

/// Lifecycle of a Job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum JobState {
    /// Created, pods pending or running (or suspended, waiting for admission).
    #[default]
    Active,
    /// The Job's `Complete` condition is true.
    Succeeded,
    /// The Job's `Failed` condition is true (retries exhausted, deadline, failure policy).
    Failed,
}

/// Termination messages are capped by the kubelet at 4 KiB; status messages stay shorter.
const MAX_MESSAGE: usize = 1024;

/// Observes `job` and the pods it created (any order).
pub fn observe_job(job: &Job, pods: &[Pod]) -> JobObservation {
    let status = job.status.clone().unwrap_or_default();
    let cond =
        |t: &str| status.conditions.iter().flatten().find(|c| c.type_ == t && c.status == "True").cloned();
    let (state, job_reason) = if cond("Complete").is_some() {
        (JobState::Succeeded, None)
    } else if let Some(c) = cond("Failed") {
        (
            JobState::Failed,
            Some(format!("{}: {}", c.reason.unwrap_or_default(), c.message.unwrap_or_default())),
        )
    } else {
        (JobState::Active, None)
    };
    let failed = status.failed.unwrap_or(0).max(0) as u32;
    let active = status.active.unwrap_or(0).max(0) as u32;
    let succeeded = status.succeeded.unwrap_or(0).max(0) as u32;
    let attempts = failed + active + succeeded;
    let (result, raw) = newest_termination(pods);
    let message = match (&result, job_reason, raw) {
        (Some(r), reason, _) => match (reason, &r.message) {
            (Some(reason), Some(m)) => Some(format!("{reason}; worker: {m}")),
            (Some(reason), None) => Some(reason),
            (None, m) => m.clone(),
        },
        (None, Some(reason), Some(raw)) => Some(format!("{reason}; termination message: {raw}")),
        (None, reason, raw) => reason.or(raw),
    };
    let suspended = job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
    JobObservation {
        name: job.metadata.name.clone().unwrap_or_default(),
        state,
        attempts,
        suspended,
        result,
        message,
        pod_creation_failure: None,
    }
}

/// The condition (and reason) of a resource whose current Job cannot create its pod.
pub const POD_CREATION_FAILED: &str = "PodCreationFailed";

/// Whether the Job may be failing to create its pod: active, not suspended, and no pod active.
/// Only then are its Events read, so a healthy namespace costs no Event list.
pub fn may_lack_pods(job: &Job) -> bool {
    let status = job.status.clone().unwrap_or_default();
    let finished = status
        .conditions
        .iter()
        .flatten()
        .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True");
    let suspended = job.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
    !finished && !suspended && status.active.unwrap_or(0) == 0
}

/// The newest `FailedCreate` warning among `events` about `job` (matched by uid), as
/// `"<message>"`; `None` when a pod was created after it (a `SuccessfulCreate` is newer).
pub fn creation_failure(job: &Job, events: &[k8s_openapi::api::core::v1::Event]) -> Option<String> {
    let uid = job.metadata.uid.as_deref()?;
    let when = |e: &k8s_openapi::api::core::v1::Event| {
        e.last_timestamp.as_ref().map(|t| t.0).or(e.event_time.as_ref().map(|t| t.0)).or(e
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0))
    };
    let newest = events
        .iter()
        .filter(|e| e.involved_object.uid.as_deref() == Some(uid))
        .filter(|e| matches!(e.reason.as_deref(), Some("FailedCreate" | "SuccessfulCreate")))
        .max_by_key(|e| when(e))?;
    (newest.reason.as_deref() == Some("FailedCreate"))
        .then(|| truncate(newest.message.as_deref().unwrap_or("FailedCreate")))
}

/// The termination message of the newest pod whose worker container terminated: the parsed
/// `StageResult`, or else the raw text (e.g. the log tail of a crash).
fn newest_termination(pods: &[Pod]) -> (Option<StageResult>, Option<String>) {
    let mut terminated: Vec<(&Pod, String, i32)> = pods
        .iter()
        .filter_map(|p| {
            let statuses = p.status.as_ref()?.container_statuses.as_ref()?;
            let cs = statuses.iter().find(|c| c.name == crate::pod::WORKER_CONTAINER)?;
            let t = cs
                .state
                .as_ref()
                .and_then(|s| s.terminated.clone())
                .or_else(|| cs.last_state.as_ref().and_then(|s| s.terminated.clone()))?;
            Some((p, t.message.unwrap_or_default(), t.exit_code))
        })
        .collect();
    terminated.sort_by_key(|(p, _, _)| (p.metadata.creation_timestamp.clone(), p.metadata.name.clone()));
    let Some((_, message, exit_code)) = terminated.pop() else { return (None, None) };
    let trimmed = message.trim();
    match serde_json::from_str::<StageResult>(trimmed) {
        Ok(r) => (Some(r), None),
        Err(_) if trimmed.is_empty() => (None, Some(format!("exit code {exit_code}"))),
        Err(_) => (None, Some(format!("exit code {exit_code}: {}", truncate(trimmed)))),
    }
}

/// Cuts `s` to the status message limit on a character boundary, keeping the end (the last
/// lines of a log say why it failed).
pub fn truncate(s: &str) -> String {
    if s.len() <= MAX_MESSAGE {
        return s.to_string();
    }
    let mut start = s.len() - MAX_MESSAGE;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}

/// The newest pod of a Job that is running (for its log tail).
pub fn running_pod(pods: &[Pod]) -> Option<&Pod> {
    pods.iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .max_by_key(|p| (p.metadata.creation_timestamp.clone(), p.metadata.name.clone()))
}
