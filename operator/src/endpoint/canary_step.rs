//! The steps of a canary rollout (`spec.rollout`): start at the first traffic step, hold each
//! step for its dwell time once its pods are ready, go on while the signals hold, roll back at
//! the first breach, and hand over to the ordinary rollout (promotion) after the last step.
//!
//! State lives in `status.canary` only (the operator never writes the spec: GitOps-safe), so a
//! restarted operator resumes a canary where it was.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sapllm_crds::conditions::set_condition;
use sapllm_crds::endpoint::{CanaryStatus, Rollout, RoutingEndpoint, RoutingEndpointStatus};

use crate::endpoint::canary::{self, Judgement};
use crate::endpoint::decide::{CanaryObs, DeploymentObs, EndpointDecision};
use crate::endpoint::select::Selection;
use crate::transitions::Transition;

/// A canary of `version` at its first step, beside `stable_ready` replicas of the current one.
pub fn start(version: &str, ro: &Rollout, stable_ready: i32, now: &Time) -> CanaryStatus {
    let weight = ro.steps.first().copied().unwrap_or(10);
    let mut c = CanaryStatus {
        version: version.to_string(),
        step: 1,
        steps: ro.steps.len().max(1) as i32,
        weight,
        replicas: canary::replicas_for(weight, stable_ready),
        ready_replicas: 0,
        traffic_percent: 0,
        started: now.clone(),
        step_requested: now.clone(),
        step_ready: None,
        signals: None,
        summary: String::new(),
        message: format!("starting {} canary pod(s)", canary::replicas_for(weight, stable_ready)),
    };
    c.summary = summary(&c);
    c
}

fn summary(c: &CanaryStatus) -> String {
    if canary::judging(c) {
        format!("{}/{} {}%", c.step, c.steps, c.traffic_percent)
    } else {
        "promoting".into()
    }
}

/// Stops a canary that is no longer wanted: `spec.rollout` was removed (the version goes on as
/// an ordinary rollout), or its version is no longer the one to serve (its gates failed on
/// re-evaluation, or a newer version passed; the newer one starts afresh).
pub fn stop_unwanted(
    rep: &RoutingEndpoint,
    selection: &Selection,
    s: &mut RoutingEndpointStatus,
    d: &mut EndpointDecision,
    now: &Time,
) {
    let Some(c) = s.canary.clone() else { return };
    let selected = selection.serve.as_ref().is_some_and(|x| x.version == c.version);
    if !selected {
        s.canary = None;
        s.rollout_version = None;
        s.rollout_started = None;
        d.transitions.push(
            Transition::warning(
                "CanaryStopped",
                format!("{} is no longer the version to serve; its canary is stopped", c.version),
            )
            .about(&c.version),
        );
    } else if rep.spec.rollout.is_none() {
        s.canary = None;
        if canary::judging(&c) {
            // From here on an ordinary rollout, with its own deadline.
            s.rollout_started = Some(now.clone());
        }
        d.transitions.push(
            Transition::normal(
                "CanaryStopped",
                format!("spec.rollout was removed; rolling out {} without a canary", c.version),
            )
            .about(&c.version),
        );
    }
}

/// One look at a canary being judged: update what its pods give, judge the signals, and roll
/// back, wait, or go to the next step (after the last: promote).
pub fn advance(
    rep: &RoutingEndpoint,
    ro: &Rollout,
    s: &mut RoutingEndpointStatus,
    d: &mut EndpointDecision,
    stable: Option<&DeploymentObs>,
    obs: &CanaryObs,
    now: &Time,
) {
    let Some(mut c) = s.canary.take() else { return };
    // `spec.rollout.steps` may have been edited since the canary started: a step added is run,
    // and the step being judged is judged to its end even when the new list is shorter.
    c.steps = (ro.steps.len() as i32).max(c.step).max(1);
    let stable_ready = stable.map(|o| o.ready_replicas).unwrap_or(0);
    let ready = obs
        .deployment
        .as_ref()
        .filter(|o| o.version.as_deref() == Some(c.version.as_str()))
        .map(|o| o.ready_replicas)
        .unwrap_or(0);
    c.replicas = canary::replicas_for(c.weight, stable_ready);
    c.ready_replicas = ready;
    c.traffic_percent = canary::traffic_percent(ready, stable_ready);
    if let Some(sig) = &obs.signals {
        c.signals = Some(sig.clone());
    }
    let deadline = rep.spec.rollout_deadline_seconds.max(1);
    // Without mirroring there is no agreement to wait for.
    let mut analysis = ro.analysis.clone();
    if ro.mirror_fraction <= 0.0 {
        analysis.min_comparisons = 0;
    }
    let judgement = match &c.signals {
        Some(sig) => canary::judge(sig, &analysis),
        None => Judgement::Waiting("no signals read yet".into()),
    };
    let signals = c.signals.as_ref().map(|x| canary::describe(x, &analysis));
    if let Judgement::Breach(reason, what) = &judgement {
        let detail = signals.unwrap_or_default();
        return roll_back(s, d, c, reason, &format!("{what} ({detail})"), rep.metadata.generation, now);
    }
    if c.step_ready.is_none() && ready < c.replicas && canary::waited(&c, now) >= deadline {
        let what = format!("{ready} of {} canary replica(s) ready after {deadline}s", c.replicas);
        return roll_back(s, d, c, "CanaryNotReady", &what, rep.metadata.generation, now);
    }
    if c.step_ready.is_none() && ready >= c.replicas {
        c.step_ready = Some(now.clone());
    }
    let dwell = ro.dwell_seconds.max(1);
    let dwelt = canary::dwelt(&c, now);
    let at = format!("step {}/{} ({}% of the traffic)", c.step, c.steps, c.traffic_percent);
    if c.step_ready.is_some()
        && dwelt >= dwell
        && judgement == Judgement::Healthy
        && canary::read_since_ready(&c)
    {
        let passed = format!("{} passed {at}: {}", c.version, signals.unwrap_or_default());
        if (c.step as usize) < ro.steps.len() {
            c.step += 1;
            c.weight = ro.steps[c.step as usize - 1];
            c.replicas = canary::replicas_for(c.weight, stable_ready);
            c.step_requested = now.clone();
            c.step_ready = None;
            c.message = format!("{passed}; going to {}%", c.weight);
            d.transitions.push(
                Transition::normal("CanaryStep", c.message.clone())
                    .about(&format!("{} step {}", c.version, c.step)),
            );
            // Look again soon: the new step's pods are being made, and its readiness deadline runs.
            d.requeue_after = Some(Duration::from_secs(ro.analysis.interval_seconds.max(1) as u64));
        } else {
            c.step = c.steps + 1;
            c.message = format!("{passed}; promoting");
            // The ordinary rollout takes over, with its own deadline.
            s.rollout_started = Some(now.clone());
            d.transitions.push(Transition::normal("CanaryPassed", c.message.clone()).about(&c.version));
        }
        c.summary = summary(&c);
        s.canary = Some(c);
        return;
    }
    c.message = match (&judgement, c.step_ready.is_some()) {
        (_, false) => format!("{at}: {ready} of {} canary replica(s) ready", c.replicas),
        (Judgement::Waiting(missing), true) => format!("{at}: waiting for traffic ({missing})"),
        _ => format!("{at}: {}", signals.unwrap_or_default()),
    };
    c.summary = summary(&c);
    // Look again when the signals are due, the dwell time ends or the readiness deadline passes.
    let mut next = canary::next_scrape_in(&c, ro, now);
    if c.step_ready.is_some() && dwelt < dwell {
        next = next.min(dwell - dwelt);
    }
    if c.step_ready.is_none() {
        next = next.min((deadline - canary::waited(&c, now)).max(1));
    }
    d.requeue_after = Some(Duration::from_secs(next.max(1) as u64));
    s.canary = Some(c);
}

/// Ends the canary: its version is not tried again until the spec changes or another version
/// is selected, and the current version keeps all the traffic.
fn roll_back(
    s: &mut RoutingEndpointStatus,
    d: &mut EndpointDecision,
    c: CanaryStatus,
    reason: &str,
    what: &str,
    g: Option<i64>,
    now: &Time,
) {
    let serving = s.active_version.clone().unwrap_or_default();
    let msg =
        format!("canary {} rolled back at step {}/{}: {what}; serving {serving}", c.version, c.step, c.steps);
    s.rolled_back_version = Some(c.version.clone());
    s.rollout_version = None;
    s.rollout_started = None;
    d.rolled_back = true;
    d.transitions.push(Transition::warning("RolledBack", msg.clone()).about(&c.version));
    set_condition(&mut s.conditions, "RolledBack", true, reason, msg, g, now.clone());
}
