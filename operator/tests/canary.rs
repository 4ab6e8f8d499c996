//! RoutingEndpoint canary rollout (`spec.rollout`): the decisions step by step (start, steps,
//! dwell, rollback on each breach, readiness deadline, promotion, stop) and the canary's children.
//! Pure: `decide_with_canary` is driven like the controller drives it, status fed back each time.

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use sapllm_crds::endpoint::{CanarySignals, CanaryStatus, RoutingEndpoint};
use sapllm_crds::evaluation::Evaluation;
use sapllm_operator::config::OperatorConfig;
use sapllm_operator::endpoint::canary::{replicas_for, scrape_due};
use sapllm_operator::endpoint::{self, CanaryObs, DeploymentObs, EndpointDecision};
use support::{assert_fixture, at, input, version};

fn ev(name: &str, n: u8, passed: bool, completed_at: i64) -> Evaluation {
    support::evaluation(name, n, passed, completed_at)
}

/// `rep-latest` with `rollout: {steps: [25, 50], dwellSeconds: 60}` (default analysis, mirror
/// fraction 0.1); `rolloutDeadlineSeconds: 300`.
fn rep() -> RoutingEndpoint {
    input("rep-canary")
}

/// The current Deployment, rolled out on `v` with `ready` pods.
fn stable(v: &str, ready: i32) -> DeploymentObs {
    DeploymentObs { version: Some(v.into()), rolled_out: true, ready_replicas: ready }
}

/// What the controller sees of a canary Deployment of `v` with `ready` pods, no signals read.
fn canary_pods(v: &str, ready: i32) -> CanaryObs {
    let deployment = DeploymentObs { version: Some(v.into()), rolled_out: ready > 0, ready_replicas: ready };
    CanaryObs { deployment: Some(deployment), signals: None }
}

/// Signals that pass the default analysis (20 decisions, 20 comparisons), read at `t`.
fn healthy(t: i64) -> CanarySignals {
    CanarySignals {
        observed: Some(at(t)),
        decisions: 40,
        requests: 40,
        errors: 0,
        error_rate: Some(0.0),
        p95_latency_ms: Some(120.0),
        comparisons: 30,
        agreement: Some(1.0),
        abstention_rate: Some(0.1),
        baseline_abstention_rate: Some(0.1),
        restarts: 0,
        unreadable_pods: 0,
    }
}

/// `healthy(t)` as `describe` writes it against the default analysis.
const HEALTHY: &str = "40 decisions; error rate 0.0% (max 1.0%); P95 120 ms (max 500 ms); agreement 100.0% on 30 mirrored (min 95.0%); abstention 10.0% vs 10.0% (max +5.0 points)";

fn with(obs: CanaryObs, signals: CanarySignals) -> CanaryObs {
    CanaryObs { signals: Some(signals), ..obs }
}

/// One reconcile as the controller does it: select, look up the active version's candidate,
/// decide, write the status back.
fn reconcile(
    r: &mut RoutingEndpoint,
    evs: &[Evaluation],
    dep: Option<&DeploymentObs>,
    canary: &CanaryObs,
    t: i64,
) -> EndpointDecision {
    let sel = endpoint::select(r, evs);
    let active = r
        .status
        .as_ref()
        .and_then(|s| s.active_version.as_deref())
        .and_then(|v| endpoint::find_passing(v, evs));
    let d = endpoint::decide_with_canary(r, &sel, active.as_ref(), dep, canary, at(t));
    r.status = Some(d.status.clone());
    d
}

fn evs_v1() -> Vec<Evaluation> {
    vec![ev("a", 1, true, -300)]
}

fn evs_v2() -> Vec<Evaluation> {
    vec![ev("a", 1, true, -300), ev("b", 2, true, -10)]
}

/// `r` serving v1 on 3 ready replicas (rolled out at t=-200, promoted at t=-100).
fn serving_v1(r: &mut RoutingEndpoint) {
    reconcile(r, &evs_v1(), None, &CanaryObs::default(), -200);
    let d = reconcile(r, &evs_v1(), Some(&stable(&version(1), 3)), &CanaryObs::default(), -100);
    assert!(d.promoted);
    assert_eq!(d.status.active_version, Some(version(1)));
}

/// `r` serving v1, v2 passed: the canary of v2 started at t=0 and its one pod ready at t=10.
fn canary_ready(r: &mut RoutingEndpoint) {
    serving_v1(r);
    let s1 = stable(&version(1), 3);
    let d = reconcile(r, &evs_v2(), Some(&s1), &CanaryObs::default(), 0);
    assert!(d.status.canary.is_some());
    let d = reconcile(r, &evs_v2(), Some(&s1), &canary_pods(&version(2), 1), 10);
    assert_eq!(d.status.canary.unwrap().step_ready, Some(at(10)));
}

fn canary(d: &EndpointDecision) -> &CanaryStatus {
    d.status.canary.as_ref().expect("status.canary")
}

fn condition<'a>(d: &'a EndpointDecision, type_: &str) -> &'a Condition {
    d.status.conditions.iter().find(|c| c.type_ == type_).unwrap_or_else(|| panic!("no {type_} condition"))
}

fn reasons(d: &EndpointDecision) -> Vec<&str> {
    d.transitions.iter().map(|t| t.reason.as_str()).collect()
}

fn served(d: &EndpointDecision) -> Option<&str> {
    d.serve.as_ref().map(|c| c.version.as_str())
}

fn canary_run(d: &EndpointDecision) -> Option<(&str, i32)> {
    d.canary.as_ref().map(|(c, n)| (c.version.as_str(), *n))
}

fn requeue(d: &EndpointDecision) -> Option<u64> {
    d.requeue_after.map(|x| x.as_secs())
}

#[test]
fn a_healthy_canary_walks_every_step_then_is_promoted() {
    let mut r = rep();
    serving_v1(&mut r);
    let (v1, v2) = (version(1), version(2));
    let s1 = stable(&v1, 3);
    let evs = evs_v2();

    // t=0: v2 passed; the canary starts at the first step beside the 3 current pods.
    let d = reconcile(&mut r, &evs, Some(&s1), &CanaryObs::default(), 0);
    assert_eq!(replicas_for(25, 3), 1);
    let c = canary(&d);
    assert_eq!(
        c,
        &CanaryStatus {
            version: v2.clone(),
            step: 1,
            steps: 2,
            weight: 25,
            replicas: 1,
            ready_replicas: 0,
            traffic_percent: 0,
            started: at(0),
            step_requested: at(0),
            step_ready: None,
            signals: None,
            summary: "1/2 0%".into(),
            message: "step 1/2 (0% of the traffic): 0 of 1 canary replica(s) ready".into(),
        }
    );
    assert_eq!(served(&d), Some(v1.as_str()), "the current Deployment stays on v1");
    assert_eq!(canary_run(&d), Some((v2.as_str(), 1)));
    assert_eq!(d.canary.as_ref().unwrap().0.evaluation, "b");
    assert_eq!(d.status.rollout_version, Some(v2.clone()));
    assert_eq!(d.status.rollout_started, Some(at(0)));
    assert_eq!(d.status.active_version, Some(v1.clone()));
    assert_eq!(reasons(&d), ["RolloutStarted"]);
    assert_eq!(
        d.transitions[0].note,
        format!("rolling out {v2} (Evaluation b) as a canary, 25% of the traffic first")
    );
    assert_eq!(d.transitions[0].action, v2);
    let p = condition(&d, "Progressing");
    assert_eq!((p.status.as_str(), p.reason.as_str()), ("True", "Canary"));
    assert_eq!(
        p.message,
        format!("canary {v2}: step 1/2 (0% of the traffic): 0 of 1 canary replica(s) ready")
    );
    assert_eq!(condition(&d, "Ready").status, "True", "v1 keeps serving");
    assert_eq!(requeue(&d), Some(30), "signals are due in one interval");
    assert!(!d.promoted && !d.rolled_back);

    // t=5: the canary's pod is not ready yet: wait (well before the deadline).
    let d = reconcile(&mut r, &evs, Some(&s1), &canary_pods(&v2, 0), 5);
    assert!(!d.rolled_back);
    assert_eq!(canary(&d).step_ready, None);
    assert_eq!(requeue(&d), Some(30));
    assert_eq!(canary_run(&d), Some((v2.as_str(), 1)));
    assert!(d.transitions.is_empty(), "{:?}", d.transitions);

    // t=10: ready; the dwell time starts now.
    let d = reconcile(&mut r, &evs, Some(&s1), &canary_pods(&v2, 1), 10);
    let c = canary(&d);
    assert_eq!(c.step_ready, Some(at(10)));
    assert_eq!((c.ready_replicas, c.traffic_percent), (1, 25));
    assert_eq!(c.summary, "1/2 25%");
    assert_eq!(c.message, "step 1/2 (25% of the traffic): waiting for traffic (no signals read yet)");
    assert_eq!(requeue(&d), Some(1), "signals are read as soon as the step's pods are ready");
    assert!(scrape_due(c, r.spec.rollout.as_ref().unwrap(), &at(10)));

    // t=20: healthy signals, but the dwell time (60 s from t=10) is not over.
    let d = reconcile(&mut r, &evs, Some(&s1), &with(canary_pods(&v2, 1), healthy(20)), 20);
    let c = canary(&d);
    assert_eq!((c.step, c.weight, c.replicas), (1, 25, 1));
    assert_eq!(c.step_ready, Some(at(10)));
    assert_eq!(c.signals, Some(healthy(20)));
    assert_eq!(c.message, format!("step 1/2 (25% of the traffic): {HEALTHY}"));
    assert_eq!(requeue(&d), Some(30), "next read in 30 s (the dwell ends in 50 s)");
    assert!(d.transitions.is_empty(), "{:?}", d.transitions);
    assert_eq!(served(&d), Some(v1.as_str()));
    assert_fixture("rep-status-canary", &d.status);

    // t=69: one second short of the dwell time.
    let d = reconcile(&mut r, &evs, Some(&s1), &canary_pods(&v2, 1), 69);
    assert_eq!(canary(&d).step, 1);
    assert_eq!(requeue(&d), Some(1), "the dwell ends in 1 s");

    // t=70: dwelt 60 s, healthy: step 2, 50 %, replicas for 50 % beside 3.
    let d = reconcile(&mut r, &evs, Some(&s1), &with(canary_pods(&v2, 1), healthy(70)), 70);
    let c = canary(&d);
    assert_eq!((c.step, c.steps, c.weight), (2, 2, 50));
    assert_eq!(c.replicas, replicas_for(50, 3));
    assert_eq!(c.replicas, 3);
    assert_eq!(c.step_requested, at(70));
    assert_eq!(c.step_ready, None, "the dwell waits for the new step's pods");
    assert_eq!(c.started, at(0));
    assert_eq!(c.message, format!("{v2} passed step 1/2 (25% of the traffic): {HEALTHY}; going to 50%"));
    assert_eq!(reasons(&d), ["CanaryStep"]);
    assert_eq!(d.transitions[0].note, c.message);
    assert_eq!(d.transitions[0].action, format!("{v2} step 2"));
    assert_eq!(canary_run(&d), Some((v2.as_str(), 3)));
    assert_eq!(served(&d), Some(v1.as_str()));
    assert_eq!(d.status.rollout_version, Some(v2.clone()));

    // t=80: 1 of 3 ready: no dwell yet.
    let d = reconcile(&mut r, &evs, Some(&s1), &canary_pods(&v2, 1), 80);
    let c = canary(&d);
    assert_eq!(c.step_ready, None);
    assert_eq!(c.message, "step 2/2 (25% of the traffic): 1 of 3 canary replica(s) ready");
    assert_eq!(requeue(&d), Some(20), "signals read at t=70 are due again at t=100");

    // t=100: all 3 ready (50 % of the pods); t=130: healthy but dwelt only 30 s.
    let d = reconcile(&mut r, &evs, Some(&s1), &canary_pods(&v2, 3), 100);
    assert_eq!(canary(&d).step_ready, Some(at(100)));
    assert_eq!(canary(&d).traffic_percent, 50);
    assert_eq!(canary(&d).summary, "2/2 50%");
    let d = reconcile(&mut r, &evs, Some(&s1), &with(canary_pods(&v2, 3), healthy(130)), 130);
    assert_eq!(canary(&d).step, 2);
    assert!(d.transitions.is_empty(), "{:?}", d.transitions);

    // t=160: the last step passed: the current Deployment takes v2 over, the canary keeps
    // serving beside it until that rollout is done.
    let d = reconcile(&mut r, &evs, Some(&s1), &with(canary_pods(&v2, 3), healthy(160)), 160);
    let c = canary(&d);
    assert_eq!((c.step, c.steps), (3, 2));
    assert_eq!(c.summary, "promoting");
    assert_eq!(c.message, format!("{v2} passed step 2/2 (50% of the traffic): {HEALTHY}; promoting"));
    assert_eq!(reasons(&d), ["CanaryPassed"]);
    assert_eq!(served(&d), Some(v2.as_str()));
    assert_eq!(canary_run(&d), Some((v2.as_str(), 3)));
    assert_eq!(d.status.rollout_started, Some(at(160)), "the ordinary rollout's deadline starts now");
    assert_eq!(d.status.active_version, Some(v1.clone()));
    assert_eq!(requeue(&d), Some(300));
    assert_eq!(condition(&d, "Progressing").reason, "RollingOut");
    assert!(!d.promoted);

    // t=170: the current Deployment is rolling to v2, not done.
    let rolling = DeploymentObs { version: Some(v2.clone()), rolled_out: false, ready_replicas: 2 };
    let d = reconcile(&mut r, &evs, Some(&rolling), &canary_pods(&v2, 3), 170);
    assert!(!d.promoted && !d.rolled_back);
    assert_eq!(served(&d), Some(v2.as_str()));
    assert_eq!(canary_run(&d), Some((v2.as_str(), 3)), "the canary serves until the rollout is done");
    assert_eq!(requeue(&d), Some(290));

    // t=200: rolled out on v2: promoted, the canary goes.
    let d = reconcile(&mut r, &evs, Some(&stable(&v2, 3)), &canary_pods(&v2, 3), 200);
    assert!(d.promoted && !d.rolled_back);
    assert_eq!(reasons(&d), ["Promoted"]);
    assert_eq!(d.status.active_version, Some(v2.clone()));
    assert_eq!(d.status.previous_version, Some(v1.clone()));
    assert_eq!(d.status.rollout_version, None);
    assert_eq!(d.status.rollout_started, None);
    assert_eq!(d.status.canary, None);
    assert_eq!(d.canary, None);
    assert_eq!(served(&d), Some(v2.as_str()));
    let rb = condition(&d, "RolledBack");
    assert_eq!((rb.status.as_str(), rb.reason.as_str()), ("False", "Promoted"));
    assert_eq!(condition(&d, "Progressing").reason, "Stable");
    assert_eq!(d.requeue_after, None);
}

#[test]
fn each_breach_rolls_the_canary_back_before_its_dwell_ends() {
    type Breach = fn(&mut CanarySignals);
    let cases: [(&str, &str, Breach); 5] = [
        ("CanaryDisagreement", "decision agreement 80.0% < 95.0% on 30 mirrored requests", |s| {
            s.agreement = Some(0.8)
        }),
        ("CanaryLatency", "P95 latency 900 ms > 500 ms", |s| s.p95_latency_ms = Some(900.0)),
        ("CanaryErrorRate", "error rate 10.0% > 1.0% (4 of 40 requests)", |s| {
            s.errors = 4;
            s.error_rate = Some(0.1);
        }),
        (
            "CanaryAbstention",
            "abstention rate 20.0% vs 10.0% for the current version on the same documents (at most +5.0 points)",
            |s| s.abstention_rate = Some(0.2),
        ),
        ("CanaryRestarted", "1 container restart(s) of canary pods", |s| s.restarts = 1),
    ];
    let (v1, v2) = (version(1), version(2));
    let s1 = stable(&v1, 3);
    for (reason, what, breach) in cases {
        let mut r = rep();
        canary_ready(&mut r);
        let mut sig = healthy(20);
        breach(&mut sig);
        // t=20: 10 s into a 60 s dwell.
        let d = reconcile(&mut r, &evs_v2(), Some(&s1), &with(canary_pods(&v2, 1), sig), 20);
        assert!(d.rolled_back && !d.promoted, "{reason}");
        let rb = condition(&d, "RolledBack");
        assert_eq!((rb.status.as_str(), rb.reason.as_str()), ("True", reason));
        assert!(
            rb.message.starts_with(&format!("canary {v2} rolled back at step 1/2: {what} (")),
            "{reason}: {}",
            rb.message
        );
        assert!(rb.message.ends_with(&format!("); serving {v1}")), "{reason}: {}", rb.message);
        assert_eq!(reasons(&d), ["RolledBack"], "{reason}");
        assert!(d.transitions[0].warning);
        assert_eq!(d.transitions[0].note, rb.message);
        assert_eq!(d.status.rolled_back_version, Some(v2.clone()), "{reason}");
        assert_eq!(d.status.rollout_version, None);
        assert_eq!(d.status.rollout_started, None);
        assert_eq!(d.status.canary, None);
        assert_eq!(d.status.active_version, Some(v1.clone()));
        assert_eq!(served(&d), Some(v1.as_str()), "{reason}");
        assert_eq!(d.canary, None, "{reason}: the canary Deployment is deleted");
        let p = condition(&d, "Progressing");
        assert_eq!((p.status.as_str(), p.reason.as_str()), ("False", "RolledBack"));
        assert_eq!(p.message, format!("{v2} was rolled back"));

        // The same Evaluations later: v2 is not tried again.
        let d = reconcile(&mut r, &evs_v2(), Some(&s1), &canary_pods(&v2, 1), 400);
        assert!(!d.rolled_back && d.transitions.is_empty(), "{reason}: {:?}", d.transitions);
        assert_eq!(d.status.canary, None);
        assert_eq!(d.status.rollout_version, None);
        assert_eq!(d.status.rolled_back_version, Some(v2.clone()));
        assert_eq!(d.canary, None);
        assert_eq!(served(&d), Some(v1.as_str()));

        // A newer passing version starts a canary of its own.
        let mut evs = evs_v2();
        evs.push(ev("c", 3, true, 450));
        let d = reconcile(&mut r, &evs, Some(&s1), &CanaryObs::default(), 500);
        let c = canary(&d);
        assert_eq!((c.version.as_str(), c.step, c.weight, c.replicas), (version(3).as_str(), 1, 25, 1));
        assert_eq!(c.started, at(500));
        assert_eq!(c.signals, None, "{reason}: nothing of v2's canary is carried over");
        assert_eq!(d.status.rollout_version, Some(version(3)));
        assert_eq!(canary_run(&d), Some((version(3).as_str(), 1)));
        assert_eq!(served(&d), Some(v1.as_str()));
        assert_eq!(reasons(&d), ["RolloutStarted"]);
    }
}

/// A breach needs its minimum sample: 5 decisions with 2 errors are not judged, and do not let
/// the step pass either, however long the dwell.
#[test]
fn too_few_decisions_never_pass_a_step() {
    let mut r = rep();
    canary_ready(&mut r);
    let v2 = version(2);
    let s1 = stable(&version(1), 3);
    let few = CanarySignals { decisions: 5, requests: 5, errors: 2, error_rate: Some(0.4), ..healthy(80) };
    for t in [80, 200, 280] {
        let few = CanarySignals { observed: Some(at(t)), ..few.clone() };
        let d = reconcile(&mut r, &evs_v2(), Some(&s1), &with(canary_pods(&v2, 1), few), t);
        assert!(!d.rolled_back, "t={t}");
        let c = canary(&d);
        assert_eq!((c.step, c.weight), (1, 25), "t={t}");
        assert_eq!(c.step_ready, Some(at(10)));
        assert_eq!(c.message, "step 1/2 (25% of the traffic): waiting for traffic (5 of 20 decisions)");
        assert!(d.transitions.is_empty(), "t={t}: {:?}", d.transitions);
        assert_eq!(requeue(&d), Some(30), "t={t}");
        assert_eq!(served(&d), Some(version(1).as_str()));
    }
    // The readiness deadline does not apply once the pods are ready: still waiting at t=400.
    let d = reconcile(&mut r, &evs_v2(), Some(&s1), &canary_pods(&v2, 1), 400);
    assert!(!d.rolled_back);
    assert_eq!(canary(&d).step, 1);
    // Enough traffic at last: the step passes.
    let d = reconcile(&mut r, &evs_v2(), Some(&s1), &with(canary_pods(&v2, 1), healthy(410)), 410);
    assert_eq!(reasons(&d), ["CanaryStep"]);
    assert_eq!(canary(&d).step, 2);
}

/// A step passes only on signals read after its pods were all ready: with a dwell shorter than
/// the read interval, signals read before would otherwise pass it without its new pods.
#[test]
fn a_step_passes_only_on_signals_read_after_its_pods_were_ready() {
    let mut r = rep();
    r.spec.rollout.as_mut().unwrap().dwell_seconds = 1;
    serving_v1(&mut r);
    let (v2, s1) = (version(2), stable(&version(1), 3));
    reconcile(&mut r, &evs_v2(), Some(&s1), &CanaryObs::default(), 0);
    // Healthy signals read at t=5, before the pod was ready at t=10.
    let d = reconcile(&mut r, &evs_v2(), Some(&s1), &with(canary_pods(&v2, 0), healthy(5)), 5);
    assert_eq!(canary(&d).step_ready, None);
    let d = reconcile(&mut r, &evs_v2(), Some(&s1), &canary_pods(&v2, 1), 10);
    assert_eq!(canary(&d).step_ready, Some(at(10)));
    // Dwelt 10 s (> 1 s) and healthy, but read before the step was ready: no pass; read now.
    let d = reconcile(&mut r, &evs_v2(), Some(&s1), &canary_pods(&v2, 1), 20);
    assert_eq!(canary(&d).step, 1);
    assert!(d.transitions.is_empty(), "{:?}", d.transitions);
    assert_eq!(requeue(&d), Some(1));
    assert!(scrape_due(canary(&d), r.spec.rollout.as_ref().unwrap(), &at(20)));
    let d = reconcile(&mut r, &evs_v2(), Some(&s1), &with(canary_pods(&v2, 1), healthy(21)), 21);
    assert_eq!(reasons(&d), ["CanaryStep"]);
    assert_eq!(requeue(&d), Some(30), "the new step is looked at within one read interval");
}

#[test]
fn a_canary_never_ready_is_rolled_back_at_the_deadline_from_its_step_request() {
    let (v1, v2) = (version(1), version(2));
    let s1 = stable(&v1, 3);
    let mut r = rep();
    serving_v1(&mut r);
    reconcile(&mut r, &evs_v2(), Some(&s1), &CanaryObs::default(), 0);
    let d = reconcile(&mut r, &evs_v2(), Some(&s1), &canary_pods(&v2, 0), 299);
    assert!(!d.rolled_back);
    assert_eq!(requeue(&d), Some(1), "the deadline passes in 1 s");
    let d = reconcile(&mut r, &evs_v2(), Some(&s1), &canary_pods(&v2, 0), 300);
    assert!(d.rolled_back);
    let rb = condition(&d, "RolledBack");
    assert_eq!((rb.status.as_str(), rb.reason.as_str()), ("True", "CanaryNotReady"));
    assert_eq!(
        rb.message,
        format!(
            "canary {v2} rolled back at step 1/2: 0 of 1 canary replica(s) ready after 300s; serving {v1}"
        )
    );
    assert_eq!(d.status.rolled_back_version, Some(v2.clone()));
    assert_eq!((d.status.canary.as_ref(), d.canary.as_ref()), (None, None));
    assert_eq!(served(&d), Some(v1.as_str()));

    // At step 2 the deadline counts from the step's request (t=70), not the canary's start.
    let mut r = rep();
    canary_ready(&mut r);
    let d = reconcile(&mut r, &evs_v2(), Some(&s1), &with(canary_pods(&v2, 1), healthy(70)), 70);
    assert_eq!(canary(&d).step_requested, at(70));
    let d = reconcile(&mut r, &evs_v2(), Some(&s1), &canary_pods(&v2, 2), 369);
    assert!(!d.rolled_back, "369 s after the start, 299 s after the step was requested");
    assert_eq!(canary(&d).message, "step 2/2 (40% of the traffic): 2 of 3 canary replica(s) ready");
    let d = reconcile(&mut r, &evs_v2(), Some(&s1), &canary_pods(&v2, 2), 370);
    assert!(d.rolled_back);
    let rb = condition(&d, "RolledBack");
    assert_eq!(rb.reason, "CanaryNotReady");
    assert_eq!(
        rb.message,
        format!(
            "canary {v2} rolled back at step 2/2: 2 of 3 canary replica(s) ready after 300s; serving {v1}"
        )
    );
    assert_eq!(served(&d), Some(v1.as_str()));
    assert_eq!(d.canary, None);
}

#[test]
fn the_first_version_is_rolled_out_without_a_canary() {
    let mut r = rep();
    let v1 = version(1);
    let d = reconcile(&mut r, &evs_v1(), None, &CanaryObs::default(), 0);
    assert_eq!(d.status.canary, None);
    assert_eq!(d.canary, None);
    assert_eq!(d.status.rollout_version, Some(v1.clone()));
    assert_eq!(served(&d), Some(v1.as_str()));
    assert_eq!(reasons(&d), ["RolloutStarted", "NotReady"]);
    assert_eq!(d.transitions[0].note, format!("rolling out {v1} (Evaluation a)"));
    assert_eq!(condition(&d, "Progressing").reason, "RollingOut");
    assert_eq!(d.requeue_after, Some(Duration::from_secs(300)));
    let d = reconcile(&mut r, &evs_v1(), Some(&stable(&v1, 3)), &CanaryObs::default(), 30);
    assert!(d.promoted);
    assert_eq!(d.status.active_version, Some(v1.clone()));

    // A version serving on no ready pod is nothing to compare with: no canary either.
    let d = reconcile(&mut r, &evs_v2(), Some(&stable(&v1, 0)), &CanaryObs::default(), 60);
    assert_eq!(d.status.canary, None);
    assert_eq!(d.canary, None);
    assert_eq!(served(&d), Some(version(2).as_str()));
}

#[test]
fn removing_the_rollout_mid_canary_goes_on_as_an_ordinary_rollout() {
    let (v1, v2) = (version(1), version(2));
    let s1 = stable(&v1, 3);
    let mut r = rep();
    canary_ready(&mut r);
    r.spec.rollout = None;
    r.metadata.generation = Some(2);
    let d = reconcile(&mut r, &evs_v2(), Some(&s1), &canary_pods(&v2, 1), 30);
    assert_eq!(reasons(&d), ["CanaryStopped"]);
    assert!(!d.transitions[0].warning);
    assert_eq!(d.transitions[0].note, format!("spec.rollout was removed; rolling out {v2} without a canary"));
    assert_eq!(d.status.canary, None);
    assert_eq!(d.canary, None);
    assert_eq!(served(&d), Some(v2.as_str()));
    assert_eq!(d.status.rollout_version, Some(v2.clone()));
    assert_eq!(d.status.rollout_started, Some(at(30)), "its own deadline from now");
    assert_eq!(d.status.observed_generation, Some(2));
    assert_eq!(condition(&d, "Progressing").reason, "RollingOut");
    assert_eq!(requeue(&d), Some(300));
    assert!(!d.rolled_back && !d.promoted);
    let d = reconcile(&mut r, &evs_v2(), Some(&stable(&v2, 3)), &CanaryObs::default(), 60);
    assert!(d.promoted);
    assert_eq!(d.status.active_version, Some(v2.clone()));
    assert_eq!(d.status.previous_version, Some(v1.clone()));
}

#[test]
fn a_canary_whose_version_is_no_longer_selected_is_stopped() {
    let (v1, v2) = (version(1), version(2));
    let s1 = stable(&v1, 3);
    let failed_again = vec![ev("a", 1, true, -300), ev("b", 2, false, 25)];
    for (what, evs) in [("failed on re-evaluation", failed_again), ("Evaluation removed", evs_v1())] {
        let mut r = rep();
        canary_ready(&mut r);
        let d = reconcile(&mut r, &evs, Some(&s1), &canary_pods(&v2, 1), 30);
        assert_eq!(d.transitions[0].reason, "CanaryStopped", "{what}");
        assert!(d.transitions[0].warning);
        assert_eq!(
            d.transitions[0].note,
            format!("{v2} is no longer the version to serve; its canary is stopped")
        );
        assert_eq!(d.status.canary, None, "{what}");
        assert_eq!(d.status.rollout_version, None);
        assert_eq!(d.status.rollout_started, None);
        assert_eq!(d.status.active_version, Some(v1.clone()));
        assert_eq!(d.canary, None);
        assert_eq!(served(&d), Some(v1.as_str()), "{what}");
        assert!(!d.rolled_back && !d.promoted);
        assert_eq!(condition(&d, "Progressing").reason, "Stable");
        // And it stays so.
        let d = reconcile(&mut r, &evs, Some(&s1), &CanaryObs::default(), 60);
        assert!(d.status.canary.is_none() && d.canary.is_none());
        assert_eq!(served(&d), Some(v1.as_str()));
    }
}

/// A newer version passes while a canary is judged: the old canary stops, the new one starts
/// afresh. The signals of this reconcile were read from the old canary's pods (the controller
/// reads the pods of the version in `status.canary`): they are not the new canary's.
#[test]
fn a_newer_version_replaces_a_running_canary_without_its_signals() {
    let (v2, v3) = (version(2), version(3));
    let s1 = stable(&version(1), 3);
    let mut r = rep();
    canary_ready(&mut r);
    let mut evs = evs_v2();
    evs.push(ev("c", 3, true, 25));
    // v2's pods restarted (or disagree): a breach of v2, read in the same reconcile v3 is seen.
    let bad_v2 = CanarySignals { restarts: 2, ..healthy(30) };
    let d = reconcile(&mut r, &evs, Some(&s1), &with(canary_pods(&v2, 1), bad_v2), 30);
    assert!(!d.rolled_back, "v3 is judged on v2's signals: {:?}", d.transitions);
    assert_eq!(reasons(&d), ["CanaryStopped", "RolloutStarted"]);
    let c = canary(&d);
    assert_eq!((c.version.as_str(), c.step, c.ready_replicas), (v3.as_str(), 1, 0));
    assert_eq!(c.signals, None, "v2's signals are not v3's");
    assert_eq!(d.status.rolled_back_version, None);
    assert_eq!(canary_run(&d), Some((v3.as_str(), 1)));
}

#[test]
fn without_mirroring_agreement_is_not_awaited() {
    let v2 = version(2);
    let s1 = stable(&version(1), 3);
    let unmirrored = CanarySignals {
        comparisons: 0,
        agreement: None,
        abstention_rate: None,
        baseline_abstention_rate: None,
        ..healthy(70)
    };
    // Mirroring (0.1): no comparisons, no pass.
    let mut r = rep();
    canary_ready(&mut r);
    let d = reconcile(&mut r, &evs_v2(), Some(&s1), &with(canary_pods(&v2, 1), unmirrored.clone()), 70);
    assert_eq!(canary(&d).step, 1);
    assert_eq!(
        canary(&d).message,
        "step 1/2 (25% of the traffic): waiting for traffic (0 of 20 mirrored comparisons)"
    );
    // mirrorFraction 0: decisions are enough.
    let mut r = rep();
    r.spec.rollout.as_mut().unwrap().mirror_fraction = 0.0;
    canary_ready(&mut r);
    let d = reconcile(&mut r, &evs_v2(), Some(&s1), &with(canary_pods(&v2, 1), unmirrored), 70);
    assert_eq!(reasons(&d), ["CanaryStep"]);
    assert_eq!((canary(&d).step, canary(&d).weight), (2, 50));

    // The current Deployment says its version but mirrors nowhere.
    let c = endpoint::select(&r, &evs_v2()).serve.unwrap();
    let args = container_args(&endpoint::deployment(&r, &c, "sapllm-artifacts", &OperatorConfig::default()));
    assert!(args.windows(2).any(|w| w == ["--model-version", v2.as_str()]), "{args:?}");
    assert!(!args.iter().any(|a| a.starts_with("--mirror")), "{args:?}");
}

fn container_args(d: &Deployment) -> Vec<String> {
    d.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].args.clone().unwrap()
}

#[test]
fn canary_children_are_exact() {
    let r = rep();
    let cfg = OperatorConfig::default();
    let v2 = version(2);
    let c = endpoint::select(&r, &evs_v2()).serve.unwrap();
    assert_eq!(c.version, v2);

    let canary = endpoint::canary_deployment(&r, &c, "sapllm-artifacts", &cfg, 2);
    assert_fixture("rep-canary-deployment", &canary);
    assert_eq!(canary.metadata.name.as_deref(), Some("sap-router-canary"));
    let spec = canary.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2), "a canary has a fixed size, no autoscaler");
    let selector = spec.selector.match_labels.clone().unwrap();
    assert_eq!(selector.get("sapllm.io/track").map(String::as_str), Some("canary"));
    let pod_labels = spec.template.metadata.as_ref().unwrap().labels.clone().unwrap();
    assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)), "its pods match its selector");
    let args = container_args(&canary);
    assert!(args.windows(2).any(|w| w == ["--model-version", v2.as_str()]), "{args:?}");
    assert!(!args.iter().any(|a| a.starts_with("--mirror")), "a canary mirrors nothing: {args:?}");

    let svc = endpoint::canary_service(&r);
    assert_fixture("rep-canary-service", &svc);
    assert_eq!(svc.metadata.name.as_deref(), Some("sap-router-canary"));
    let sel = svc.spec.as_ref().unwrap().selector.clone().unwrap();
    assert_eq!(sel, selector, "the canary Service reaches the canary's pods only");

    let dep = endpoint::deployment(&r, &c, "sapllm-artifacts", &cfg);
    assert_fixture("rep-deployment-rollout", &dep);
    let args = container_args(&dep);
    assert!(args.windows(2).any(|w| w == ["--model-version", v2.as_str()]), "{args:?}");
    assert!(
        args.windows(2).any(|w| w == ["--mirror-to", "http://sap-router-canary.ml.svc:8080"]),
        "{args:?}"
    );
    assert!(args.windows(2).any(|w| w == ["--mirror-fraction", "0.1"]), "{args:?}");
    let spec = dep.spec.as_ref().unwrap();
    assert!(spec.replicas.is_none(), "replicas belong to the autoscaler");
    // The current Deployment's selector is immutable: spec.rollout must not change it, and it
    // has no track label.
    let mut plain = r.clone();
    plain.spec.rollout = None;
    let plain_dep = endpoint::deployment(&plain, &c, "sapllm-artifacts", &cfg);
    assert_eq!(spec.selector, plain_dep.spec.as_ref().unwrap().selector);
    assert!(!spec.selector.match_labels.as_ref().unwrap().contains_key("sapllm.io/track"));
    // The endpoint's Service selects both tracks.
    let main = endpoint::service(&r).spec.unwrap().selector.unwrap();
    assert!(main.iter().all(|(k, v)| pod_labels.get(k) == Some(v)), "the Service reaches canary pods");
    assert!(!main.contains_key("sapllm.io/track"));
    // Without spec.rollout, nothing is added to the current Deployment's arguments.
    let plain_args = container_args(&plain_dep);
    assert!(!plain_args.iter().any(|a| a == "--model-version" || a.starts_with("--mirror")));
}

/// `spec.rollout.steps` edited mid-canary: a step added after the current one is still run
/// (the step count in the status follows the spec), and one removed does not cut the step being
/// judged short.
#[test]
fn steps_edited_mid_canary_are_followed() {
    let (v1, v2) = (version(1), version(2));
    let s1 = stable(&v1, 3);
    let mut r = rep();
    canary_ready(&mut r);
    reconcile(&mut r, &evs_v2(), Some(&s1), &with(canary_pods(&v2, 1), healthy(70)), 70);
    reconcile(&mut r, &evs_v2(), Some(&s1), &canary_pods(&v2, 3), 100);
    let mut grown = r.clone();
    grown.spec.rollout.as_mut().unwrap().steps = vec![25, 50, 75];
    grown.metadata.generation = Some(2);
    let d = reconcile(&mut grown, &evs_v2(), Some(&s1), &with(canary_pods(&v2, 3), healthy(160)), 160);
    assert_eq!(reasons(&d), ["CanaryStep"], "{:?}", d.transitions);
    let c = canary(&d);
    assert_eq!((c.step, c.steps, c.weight, c.replicas), (3, 3, 75, 9));
    assert_eq!(c.summary, "3/3 50%");
    assert_eq!(served(&d), Some(v1.as_str()), "v2 is not rolled out before its last step");
    assert_eq!(d.status.active_version, Some(v1.clone()));

    // Shrunk to one step while the second is judged: it is judged to its end, then promoted.
    let mut shrunk = r.clone();
    shrunk.spec.rollout.as_mut().unwrap().steps = vec![25];
    shrunk.metadata.generation = Some(2);
    let d = reconcile(&mut shrunk, &evs_v2(), Some(&s1), &with(canary_pods(&v2, 3), healthy(130)), 130);
    assert!(d.transitions.is_empty(), "{:?}", d.transitions);
    assert_eq!(canary(&d).step, 2);
    assert_eq!(served(&d), Some(v1.as_str()), "the step being judged is not skipped");
    let d = reconcile(&mut shrunk, &evs_v2(), Some(&s1), &with(canary_pods(&v2, 3), healthy(160)), 160);
    assert_eq!(reasons(&d), ["CanaryPassed"]);
    assert_eq!(canary(&d).summary, "promoting");
    assert_eq!(served(&d), Some(v2.as_str()));
}
