//! Reading a Job's outcome from its pods' termination messages.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use sapllm_crds::training_run::StageName;
use sapllm_operator::observe::{JobState, creation_failure, may_lack_pods, observe_job, truncate};
use serde_json::json;

fn job(status: serde_json::Value) -> Job {
    serde_json::from_value(
        json!({ "metadata": { "name": "run-sft-0123456789" }, "spec": { "template": {} }, "status": status }),
    )
    .unwrap()
}

fn pod(name: &str, created: &str, exit: i32, message: &str, last_state: bool) -> Pod {
    let terminated = json!({ "terminated": { "exitCode": exit, "message": message } });
    let (state, last) =
        if last_state { (json!({ "waiting": {} }), terminated) } else { (terminated, json!({})) };
    serde_json::from_value(json!({
        "metadata": { "name": name, "creationTimestamp": created },
        "status": { "containerStatuses": [{ "name": "worker", "image": "w", "imageID": "", "ready": false,
            "restartCount": 0, "state": state, "lastState": last }] },
    }))
    .unwrap()
}

#[test]
fn a_completed_job_yields_the_newest_pods_stage_result() {
    let j =
        job(json!({ "succeeded": 1, "failed": 1, "conditions": [{ "type": "Complete", "status": "True" }] }));
    let pods = [
        pod(
            "p-new",
            "2027-01-01T00:00:09Z",
            0,
            r#"{"stage":"sft","succeeded":true,"artifacts":{"sftAdapter":"r/sft/adapter"}}"#,
            false,
        ),
        pod("p-old", "2027-01-01T00:00:01Z", 2, "OOM", false),
    ];
    let o = observe_job(&j, &pods);
    assert_eq!(o.state, JobState::Succeeded);
    assert_eq!(o.attempts, 2);
    let r = o.result.unwrap();
    assert_eq!(r.stage, Some(StageName::Sft));
    assert_eq!(r.artifacts.unwrap().sft_adapter.as_deref(), Some("r/sft/adapter"));
}

#[test]
fn a_crash_without_a_result_keeps_the_log_tail_and_the_jobs_reason() {
    let j = job(
        json!({ "failed": 3, "conditions": [{ "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "limit" }] }),
    );
    let o = observe_job(
        &j,
        &[pod("p", "2027-01-01T00:00:01Z", 137, "thread 'main' panicked: out of memory\n", true)],
    );
    assert_eq!(o.state, JobState::Failed);
    assert!(o.result.is_none());
    assert_eq!(
        o.message.as_deref(),
        Some(
            "BackoffLimitExceeded: limit; termination message: exit code 137: thread 'main' panicked: out of memory"
        )
    );
}

#[test]
fn a_failed_stage_result_is_combined_with_the_jobs_reason() {
    let j = job(
        json!({ "failed": 1, "conditions": [{ "type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "too slow" }] }),
    );
    let o = observe_job(
        &j,
        &[pod(
            "p",
            "2027-01-01T00:00:01Z",
            2,
            r#"{"succeeded":false,"message":"NaN loss at step 40"}"#,
            false,
        )],
    );
    assert_eq!(o.message.as_deref(), Some("DeadlineExceeded: too slow; worker: NaN loss at step 40"));
    let active = observe_job(&job(json!({ "active": 1 })), &[]);
    assert_eq!((active.state, active.attempts, active.result.is_none()), (JobState::Active, 1, true));
}

#[test]
fn long_messages_keep_their_end() {
    let long = format!("{}THE END", "x".repeat(5000));
    let t = truncate(&long);
    assert!(t.len() <= 1027 && t.starts_with("...") && t.ends_with("THE END"));
    let multibyte = "é".repeat(3000);
    assert!(truncate(&multibyte).is_char_boundary(3));
}

fn event(uid: &str, reason: &str, at: &str, message: &str) -> k8s_openapi::api::core::v1::Event {
    serde_json::from_value(json!({
        "metadata": { "name": format!("e-{reason}-{at}") },
        "involvedObject": { "kind": "Job", "name": "run-sft-0123456789", "uid": uid },
        "type": if reason == "FailedCreate" { "Warning" } else { "Normal" },
        "reason": reason, "message": message, "lastTimestamp": at,
    }))
    .unwrap()
}

/// The Job controller reports a pod it cannot create only as an Event on the Job: the newest
/// `FailedCreate` of this Job (by uid: a deleted Job of the same name does not count) is the
/// reason, unless a pod was created after it.
#[test]
fn a_jobs_failed_create_event_is_why_it_has_no_pod() {
    let mut j = job(json!({}));
    j.metadata.uid = Some("u1".into());
    assert!(may_lack_pods(&j), "active, no pod");
    let sa = "pods \"x\" is forbidden: serviceaccount \"sapllm-worker\" not found";
    let events = [
        event("u0", "FailedCreate", "2027-01-01T00:00:09Z", "of a deleted Job"),
        event("u1", "FailedCreate", "2027-01-01T00:00:05Z", sa),
        event("u1", "FailedCreate", "2027-01-01T00:00:01Z", "an older failure"),
    ];
    assert_eq!(creation_failure(&j, &events).as_deref(), Some(sa));
    let mut later = events.to_vec();
    later.push(event("u1", "SuccessfulCreate", "2027-01-01T00:00:07Z", "Created pod: x"));
    assert_eq!(creation_failure(&j, &later), None, "a pod was created since");
    assert!(!may_lack_pods(&job(json!({ "active": 1 }))), "a pod is active: no Event list");
    assert!(!may_lack_pods(&job(json!({ "conditions": [{ "type": "Complete", "status": "True" }] }))));
}
