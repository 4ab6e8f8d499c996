//! The rollout state machine of a RoutingEndpoint: promote a selected version once its pods are
//! ready, roll back to the previous version when the deadline passes first, and keep serving the
//! current version while the one asked for is gate-blocked.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use sapllm_crds::conditions::set_condition;
use sapllm_crds::endpoint::{CanarySignals, RoutingEndpoint, RoutingEndpointStatus};

use crate::endpoint::canary::judging;
use crate::endpoint::canary_step;
use crate::endpoint::select::{Candidate, Selection};
use crate::names::ANNOTATION_MODEL_VERSION;
use crate::transitions::Transition;

/// What the operator sees of its Deployment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeploymentObs {
    /// The version its pod template runs.
    pub version: Option<String>,
    /// The rollout of the current template finished and its pods are available.
    pub rolled_out: bool,
    /// Pods ready to serve.
    pub ready_replicas: i32,
}

/// Observes a Deployment.
pub fn observe_deployment(d: &Deployment) -> DeploymentObs {
    let version = d
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(ANNOTATION_MODEL_VERSION).cloned());
    let st = d.status.clone().unwrap_or_default();
    let generation = d.metadata.generation.unwrap_or(0);
    let replicas = st.replicas.unwrap_or(0);
    let updated = st.updated_replicas.unwrap_or(0);
    let available = st.available_replicas.unwrap_or(0);
    let ready = st.ready_replicas.unwrap_or(0);
    // The same test `kubectl rollout status` applies: the controller saw the new template, every
    // replica runs it, all of them are available and no old pod is left.
    let rolled_out = st.observed_generation.unwrap_or(0) >= generation
        && replicas > 0
        && updated == replicas
        && available >= updated
        && st.unavailable_replicas.unwrap_or(0) == 0;
    DeploymentObs { version, rolled_out, ready_replicas: ready }
}

/// What the operator sees of a canary.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CanaryObs {
    /// Its Deployment.
    pub deployment: Option<DeploymentObs>,
    /// Signals read in this reconcile (None: not due, or no canary pod was ready to read).
    pub signals: Option<CanarySignals>,
}

/// The decision for one endpoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointDecision {
    /// The status to apply.
    pub status: RoutingEndpointStatus,
    /// The version the Deployment must run (None: nothing may be served yet; no children).
    pub serve: Option<Candidate>,
    /// Events.
    pub transitions: Vec<Transition>,
    /// A version was promoted in this step.
    pub promoted: bool,
    /// A rollout was rolled back in this step.
    pub rolled_back: bool,
    /// Check again after this long (a rollout's deadline).
    pub requeue_after: Option<Duration>,
    /// The canary Deployment to run: its version and replicas. None: no canary (one that exists
    /// is deleted).
    pub canary: Option<(Candidate, i32)>,
}

/// Decides the rollout of `rep` without a canary in sight (see [`decide_with_canary`]).
pub fn decide(
    rep: &RoutingEndpoint,
    selection: &Selection,
    active: Option<&Candidate>,
    dep: Option<&DeploymentObs>,
    now: Time,
) -> EndpointDecision {
    decide_with_canary(rep, selection, active, dep, &CanaryObs::default(), now)
}

/// Decides the rollout of `rep`. `active` is the passing candidate of the active version (the
/// rollback target), looked up by the caller; `canary` is what the caller saw of the canary.
///
/// With `spec.rollout`, a new version that has a version to compare with first runs as a canary
/// beside it ([`canary_step`]); once its last step passes it is rolled out like any version
/// (the current Deployment takes it over while the canary keeps serving), and promoted when
/// that rollout is ready.
pub fn decide_with_canary(
    rep: &RoutingEndpoint,
    selection: &Selection,
    active: Option<&Candidate>,
    dep: Option<&DeploymentObs>,
    canary: &CanaryObs,
    now: Time,
) -> EndpointDecision {
    let prev = rep.status.clone().unwrap_or_default();
    let g = rep.metadata.generation;
    let mut s = prev.clone();
    s.observed_generation = g;
    let mut d = EndpointDecision::default();
    let deadline = rep.spec.rollout_deadline_seconds.max(1);
    // A spec change is a new request: a version rolled back before may be tried again.
    if prev.observed_generation != g {
        s.rolled_back_version = None;
    }
    canary_step::stop_unwanted(rep, selection, &mut s, &mut d, &now);
    if let Some(c) = &selection.serve
        && Some(&c.version) != s.active_version.as_ref()
        && Some(&c.version) != s.rollout_version.as_ref()
        && Some(&c.version) != s.rolled_back_version.as_ref()
    {
        s.rollout_version = Some(c.version.clone());
        s.rollout_started = Some(now.clone());
        let stable_ready = dep.map(|o| o.ready_replicas).unwrap_or(0);
        let how = match &rep.spec.rollout {
            // A canary needs a version to compare with, serving.
            Some(ro) if s.active_version.is_some() && active.is_some() && stable_ready > 0 => {
                let c = canary_step::start(&c.version, ro, stable_ready, &now);
                let how = format!(" as a canary, {}% of the traffic first", c.weight);
                s.canary = Some(c);
                how
            }
            _ => String::new(),
        };
        d.transitions.push(
            Transition::normal(
                "RolloutStarted",
                format!("rolling out {} (Evaluation {}){how}", c.version, c.evaluation),
            )
            .about(&c.version),
        );
    }
    let analysing = s.canary.as_ref().is_some_and(judging);
    if analysing && let Some(ro) = &rep.spec.rollout {
        // The signals were read from the pods of the canary the status named when this reconcile
        // began: a canary that replaced it in this step (a newer version) has none of its own yet.
        let same = prev.canary.as_ref().map(|c| &c.version) == s.canary.as_ref().map(|c| &c.version);
        let canary = CanaryObs { signals: canary.signals.clone().filter(|_| same), ..canary.clone() };
        canary_step::advance(rep, ro, &mut s, &mut d, dep, &canary, &now);
    }
    let analysing = s.canary.as_ref().is_some_and(judging);
    if let Some(r) = s.rollout_version.clone().filter(|_| !analysing) {
        let dep_on_r = dep.filter(|o| o.version.as_deref() == Some(r.as_str()));
        let elapsed = s.rollout_started.as_ref().map(|t| now.0.duration_since(t.0).as_secs()).unwrap_or(0);
        if dep_on_r.is_some_and(|o| o.rolled_out && o.ready_replicas > 0) {
            if s.active_version.is_some() {
                s.previous_version = s.active_version.take();
            }
            s.active_version = Some(r.clone());
            s.rollout_version = None;
            s.rollout_started = None;
            s.rolled_back_version = None;
            s.canary = None;
            d.promoted = true;
            d.transitions.push(Transition::normal("Promoted", format!("{r} is serving")).about(&r));
            set_condition(
                &mut s.conditions,
                "RolledBack",
                false,
                "Promoted",
                format!("{r} rolled out"),
                g,
                now.clone(),
            );
        } else if elapsed >= deadline && s.active_version.is_some() {
            let a = s.active_version.clone().unwrap_or_default();
            let msg = format!("{r} was not ready within {deadline}s; rolled back to {a}");
            s.rolled_back_version = Some(r);
            s.rollout_version = None;
            s.rollout_started = None;
            s.canary = None;
            d.rolled_back = true;
            d.transitions.push(
                Transition::warning("RolledBack", msg.clone())
                    .about(s.rolled_back_version.as_deref().unwrap_or_default()),
            );
            set_condition(
                &mut s.conditions,
                "RolledBack",
                true,
                "RolloutDeadlineExceeded",
                msg,
                g,
                now.clone(),
            );
        } else if elapsed < deadline {
            d.requeue_after = Some(Duration::from_secs((deadline - elapsed).max(1) as u64));
        }
    }

    // What the Deployment runs: the rollout, else the active version; the active version while a
    // canary is judged beside it.
    let analysing = s.canary.as_ref().is_some_and(judging);
    let target = s.rollout_version.clone().filter(|_| !analysing).or(s.active_version.clone());
    d.serve = match (&target, &selection.serve, active) {
        (Some(t), Some(c), _) if &c.version == t => Some(c.clone()),
        (Some(t), _, Some(a)) if &a.version == t => Some(a.clone()),
        _ => None,
    };
    d.canary = s.canary.as_ref().and_then(|c| {
        let candidate = selection.serve.as_ref().filter(|x| x.version == c.version)?;
        Some((candidate.clone(), c.replicas))
    });
    // The active version lost its passing Evaluation (deleted): keep the Deployment as it is.
    s.ready_replicas = dep.map(|o| o.ready_replicas).unwrap_or(0);
    s.url = d.serve.as_ref().map(|_| {
        format!(
            "http://{}.{}.svc:{}",
            crate::endpoint::build::child(rep),
            rep.namespace().unwrap_or_default(),
            rep.spec.port
        )
    });

    let c = &mut s.conditions;
    match &selection.blocked {
        Some((reason, msg)) => {
            let serving = s.active_version.clone().map(|a| format!("; serving {a}")).unwrap_or_default();
            let m = format!("{msg}{serving}");
            if !prev
                .conditions
                .iter()
                .any(|x| x.type_ == "GateBlocked" && x.status == "True" && x.message == m)
            {
                d.transitions.push(Transition::warning("GateBlocked", m.clone()));
            }
            set_condition(c, "GateBlocked", true, reason, m, g, now.clone());
        }
        None => set_condition(
            c,
            "GateBlocked",
            false,
            "GatesPassed",
            "the selected version passed its gates",
            g,
            now.clone(),
        ),
    }
    match (&s.rollout_version, &s.rolled_back_version) {
        (Some(r), _) if analysing => {
            let m = s.canary.as_ref().map(|x| x.message.as_str()).unwrap_or_default();
            set_condition(c, "Progressing", true, "Canary", format!("canary {r}: {m}"), g, now.clone());
        }
        (Some(r), _) => {
            // No countdown in the message: a status that changes every second would be rewritten
            // (and re-trigger this controller) every second.
            let m = format!("rolling out {r}; rolled back unless ready within {deadline}s of rolloutStarted");
            set_condition(c, "Progressing", true, "RollingOut", m, g, now.clone());
        }
        (None, Some(rb)) if s.active_version.is_some() => {
            set_condition(
                c,
                "Progressing",
                false,
                "RolledBack",
                format!("{rb} was rolled back"),
                g,
                now.clone(),
            );
        }
        _ => set_condition(c, "Progressing", false, "Stable", "no rollout in progress", g, now.clone()),
    }
    if s.rollout_version.is_some() && s.active_version.is_none() && d.requeue_after.is_none() {
        set_condition(
            c,
            "Progressing",
            false,
            "RolloutDeadlineExceeded",
            format!(
                "the first rollout was not ready within {deadline}s and there is no previous version to roll back to"
            ),
            g,
            now.clone(),
        );
    }
    let ready = s.active_version.is_some() && s.ready_replicas > 0;
    let ready_msg = match &s.active_version {
        Some(a) => format!("{} ready replica(s) serve {a}", s.ready_replicas),
        None => "no version is serving yet".to_string(),
    };
    set_condition(c, "Ready", ready, if ready { "Serving" } else { "NotServing" }, ready_msg, g, now.clone());
    if prev.conditions.iter().find(|x| x.type_ == "Ready").map(|x| x.status.as_str())
        != Some(if ready { "True" } else { "False" })
    {
        d.transitions.push(if ready {
            Transition::normal("Ready", format!("serving {}", s.active_version.clone().unwrap_or_default()))
                .about(s.active_version.as_deref().unwrap_or_default())
        } else {
            Transition::warning("NotReady", "no ready replica serves a version")
        });
    }
    d.status = s;
    d
}

/// The status of an endpoint whose spec the operator refuses (e.g. its plan does not fit the
/// requested GPU): `Progressing` False with reason `InvalidSpec` naming the field; nothing is
/// rolled out, and a version already serving keeps serving (its Deployment is left as it is),
/// so `Ready` changes only when none serves.
pub fn invalid_status(
    rep: &RoutingEndpoint,
    err: &crate::invalid::Invalid,
    now: Time,
) -> (RoutingEndpointStatus, Vec<Transition>) {
    let prev = rep.status.clone().unwrap_or_default();
    let g = rep.metadata.generation;
    let mut s = prev.clone();
    s.observed_generation = g;
    let msg = err.to_string();
    set_condition(&mut s.conditions, "Progressing", false, "InvalidSpec", msg.clone(), g, now.clone());
    if s.active_version.is_none() {
        set_condition(&mut s.conditions, "Ready", false, "InvalidSpec", "the spec is invalid", g, now);
    }
    let already = prev
        .conditions
        .iter()
        .any(|c| c.type_ == "Progressing" && c.reason == "InvalidSpec" && c.message == msg);
    let transitions = if already { Vec::new() } else { vec![Transition::warning("InvalidSpec", msg)] };
    (s, transitions)
}
