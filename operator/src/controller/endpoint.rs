//! RoutingEndpoint controller: select a passing version, roll it out, roll back on a missed
//! deadline. It never writes the endpoint's spec (GitOps-safe), only its status.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use sapllm_crds::conditions::set_condition;
use sapllm_crds::endpoint::{CanarySignals, RoutingEndpoint};
use sapllm_crds::evaluation::Evaluation;

use crate::controller::apply::{apply_changed, apply_status, delete, fresh, memo_key, memo_key_of};
use crate::controller::context::now;
use crate::controller::{Context, Error};
use crate::endpoint::{self, build, signals};
use crate::names::{ANNOTATION_MODEL_VERSION, LABEL_MANAGED_BY, MANAGER, taken_by};
use crate::prometheus;

const KIND: &str = "RoutingEndpoint";

/// The controller: endpoints, their Deployments, and every Evaluation (a new verdict may change
/// what an endpoint in the namespace serves).
pub fn controller(ctx: Arc<Context>, ns: Option<&str>) -> Controller<RoutingEndpoint> {
    let managed = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
    let (reps, deps, evs) = match ns {
        Some(ns) => (
            Api::<RoutingEndpoint>::namespaced(ctx.client.clone(), ns),
            Api::<Deployment>::namespaced(ctx.client.clone(), ns),
            Api::<Evaluation>::namespaced(ctx.client.clone(), ns),
        ),
        None => (
            Api::all(ctx.client.clone()),
            Api::<Deployment>::all(ctx.client.clone()),
            Api::<Evaluation>::all(ctx.client.clone()),
        ),
    };
    let c = Controller::new(reps, watcher::Config::default());
    let store = c.store();
    c.owns(deps, managed).watches(evs, watcher::Config::default(), move |ev: Evaluation| {
        let ns = ev.namespace();
        store
            .state()
            .into_iter()
            .filter(|r| r.namespace() == ns && crate::endpoint::select::concerns(r, &ev))
            .map(|r| ObjectRef::from_obj(r.as_ref()))
            .collect::<Vec<_>>()
    })
}

/// Reconciles one endpoint: observe (Evaluations, its Deployment) -> select -> decide -> apply
/// -> status.
pub async fn reconcile(rep: Arc<RoutingEndpoint>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _t = ctx.metrics.reconcile(KIND);
    let Some(rep) = fresh(&ctx.client, rep.as_ref()).await?.map(Arc::new) else {
        return Ok(Action::await_change());
    };
    let ns = rep.namespace().ok_or(Error::NoNamespace)?;
    if rep.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let valid = endpoint::canary::validate(rep.spec.rollout.as_ref())
        .and_then(|()| crate::memory::check_endpoint(&rep, &ctx.config));
    if let Err(invalid) = valid {
        let (status, transitions) = endpoint::invalid_status(&rep, &invalid, now());
        if rep.status.as_ref() != Some(&status) {
            apply_status(&ctx.client, rep.as_ref(), &status).await?;
        }
        ctx.publish(rep.as_ref(), &transitions).await;
        return Ok(Action::requeue(ctx.config.resync_interval));
    }
    let (evs, dep) = observe(&ctx, &rep, &ns).await?;
    let selection = endpoint::select(&rep, &evs);
    let active = rep
        .status
        .as_ref()
        .and_then(|s| s.active_version.as_deref())
        .and_then(|v| endpoint::find_passing(v, &evs));
    let obs = dep.as_ref().map(endpoint::observe_deployment);
    let canary_dep = observe_canary(&ctx, &rep, &ns).await?;
    let mut canary = endpoint::CanaryObs {
        deployment: canary_dep.as_ref().map(endpoint::observe_deployment),
        signals: None,
    };
    let now = now();
    if let (Some(ro), Some(c)) = (&rep.spec.rollout, rep.status.as_ref().and_then(|s| s.canary.as_ref()))
        && endpoint::canary::judging(c)
        && canary.deployment.as_ref().is_some_and(|o| o.ready_replicas > 0)
        && endpoint::canary::scrape_due(c, ro, &now)
    {
        canary.signals = Some(read_signals(&ctx, &rep, &ns, &c.version, now.clone()).await?);
    }
    let mut d =
        endpoint::decide_with_canary(&rep, &selection, active.as_ref(), obs.as_ref(), &canary, now.clone());
    // A child name held by another owner (an endpoint named `<this>-canary`, a Deployment made
    // by hand) is not taken over: reported, and those children are not applied.
    let taken = |live: &Option<Deployment>| live.as_ref().and_then(|l| taken_by(&l.metadata, rep.as_ref()));
    let conflicts: Vec<String> = [(&dep, build::child(&rep)), (&canary_dep, build::canary_child(&rep))]
        .into_iter()
        .filter_map(|(live, name)| taken(live).map(|who| format!("Deployment {ns}/{name} belongs to {who}")))
        .collect();
    report_conflicts(&rep, &conflicts, &mut d, &now);
    if !conflicts.is_empty() {
        // Nothing watches the other owner's object: look again at the next resync.
        let resync = ctx.config.resync_interval;
        d.requeue_after = Some(d.requeue_after.map_or(resync, |r| r.min(resync)));
    }
    let (stable_free, canary_free) = (taken(&dep).is_none(), taken(&canary_dep).is_none());
    if let Some(c) = d.serve.as_ref().filter(|_| stable_free) {
        match rep.spec.storage.as_ref().map(|s| s.claim_name.clone()).or(c.claim.clone()) {
            Some(claim) => {
                let deployment = build::deployment(&rep, c, &claim, &ctx.config);
                // The live Deployment was just read: one that is not what was applied (edited,
                // or rolled by someone) is applied again now, not when the memo expires.
                if dep.as_ref().is_none_or(|live| !build::matches_applied(live, &deployment)) {
                    ctx.applied.forget(&memo_key(&deployment));
                }
                apply_changed(&ctx, &deployment).await?;
                apply_changed(&ctx, &build::service(&rep)).await?;
                apply_changed(&ctx, &build::autoscaler(&rep)).await?;
                apply_changed(&ctx, &build::disruption_budget(&rep)).await?;
                if rep.spec.rollout.is_some() && canary_free {
                    apply_changed(&ctx, &build::canary_service(&rep)).await?;
                }
                if rep.spec.feedback.is_some() {
                    apply_changed(&ctx, &build::peers_service(&rep)).await?;
                }
                if let Some((c, replicas)) = d.canary.as_ref().filter(|_| canary_free) {
                    let canary = build::canary_deployment(&rep, c, &claim, &ctx.config, *replicas);
                    if canary_dep.as_ref().is_none_or(|live| !build::matches_applied(live, &canary)) {
                        ctx.applied.forget(&memo_key(&canary));
                    }
                    apply_changed(&ctx, &canary).await?;
                }
            }
            None => {
                let msg = format!(
                    "spec.storage: required, Evaluation {} names no storage for its artifacts",
                    c.evaluation
                );
                let g = rep.metadata.generation;
                set_condition(&mut d.status.conditions, "Ready", false, "InvalidSpec", msg, g, now.clone());
            }
        }
    }
    if d.canary.is_none() && canary_dep.is_some() && canary_free {
        // Promoted or rolled back: the canary's pods go (the current Deployment serves alone).
        delete::<Deployment>(&ctx.client, &ns, &build::canary_child(&rep)).await?;
        ctx.applied.forget(&memo_key_of::<Deployment>(&ns, &build::canary_child(&rep)));
    }
    if rep.status.as_ref() != Some(&d.status) {
        apply_status(&ctx.client, rep.as_ref(), &d.status).await?;
    }
    if d.promoted {
        ctx.metrics.promoted();
    }
    if d.rolled_back {
        ctx.metrics.rolled_back();
    }
    ctx.publish(rep.as_ref(), &d.transitions).await;
    Ok(match d.requeue_after {
        Some(after) => Action::requeue(after),
        None => Action::requeue(ctx.config.resync_interval),
    })
}

/// The namespace's Evaluations (the versions the endpoint may serve) and the endpoint's
/// Deployment, when it exists.
async fn observe(
    ctx: &Context,
    rep: &RoutingEndpoint,
    ns: &str,
) -> Result<(Vec<Evaluation>, Option<Deployment>), Error> {
    let evs = Api::<Evaluation>::namespaced(ctx.client.clone(), ns).list(&ListParams::default()).await?.items;
    let deps: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let dep = deps.get_opt(&build::child(rep)).await?;
    Ok((evs, dep))
}

/// Says which child names are held by others: condition `NameConflict` (True while any is, and
/// False once none is, when it was set before) and a Warning Event when the message changes.
fn report_conflicts(
    rep: &RoutingEndpoint,
    conflicts: &[String],
    d: &mut endpoint::EndpointDecision,
    now: &Time,
) {
    let g = rep.metadata.generation;
    let had = d.status.conditions.iter().find(|c| c.type_ == "NameConflict").cloned();
    if conflicts.is_empty() {
        if had.is_some_and(|c| c.status == "True") {
            set_condition(
                &mut d.status.conditions,
                "NameConflict",
                false,
                "Resolved",
                "no child name is held by another owner",
                g,
                now.clone(),
            );
        }
        return;
    }
    let msg = format!(
        "{}: the operator leaves them alone; rename this RoutingEndpoint (its children are named after it)",
        conflicts.join("; ")
    );
    if had.as_ref().is_none_or(|c| c.message != msg) {
        d.transitions.push(crate::transitions::Transition::warning("NameConflict", msg.clone()));
    }
    set_condition(&mut d.status.conditions, "NameConflict", true, "NameConflict", msg, g, now.clone());
}

/// The canary's Deployment, when a canary may exist (`spec.rollout` set, or one in status).
async fn observe_canary(ctx: &Context, rep: &RoutingEndpoint, ns: &str) -> Result<Option<Deployment>, Error> {
    let maybe = rep.spec.rollout.is_some() || rep.status.as_ref().is_some_and(|s| s.canary.is_some());
    if !maybe {
        return Ok(None);
    }
    let deps: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    Ok(deps.get_opt(&build::canary_child(rep)).await?)
}

/// Reads a canary's signals: the restarts of its pods from their status, the counters from
/// each ready serving pod's `/metrics` through the API server's pod proxy (no network path from
/// the operator to the pods is needed, only `get pods/proxy`), or from `spec.rollout.prometheusUrl`
/// when set. Canary pods count only when they run `version`; the current version's pods give the
/// mirrored comparisons.
async fn read_signals(
    ctx: &Context,
    rep: &RoutingEndpoint,
    ns: &str,
    version: &str,
    observed: Time,
) -> Result<CanarySignals, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let lp = ListParams::default().labels(&build::pod_selector(rep));
    let mut scrape = signals::Scrape::default();
    let mut ready = Vec::new();
    for pod in pods.list(&lp).await?.items {
        let canary = pod.labels().get(build::LABEL_TRACK).map(String::as_str) == Some(build::TRACK_CANARY);
        if canary && pod.annotations().get(ANNOTATION_MODEL_VERSION).map(String::as_str) != Some(version) {
            continue;
        }
        let status = pod.status.clone().unwrap_or_default();
        if canary {
            scrape.restarts +=
                status.container_statuses.iter().flatten().map(|c| c.restart_count).sum::<i32>();
        }
        if status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True") {
            ready.push((canary, pod.name_any()));
        }
    }
    match rep.spec.rollout.as_ref().and_then(|r| r.prometheus_url.as_deref()) {
        Some(url) => {
            let canary_pods = ready.iter().filter(|(c, _)| *c).count() as i32;
            query_prometheus(url, rep, ns, version, canary_pods, &mut scrape).await;
        }
        None => read_pods(ctx, rep, ns, ready, &mut scrape).await,
    }
    Ok(signals::signals(version, &scrape, observed))
}

/// Each ready pod's `/metrics`, read in parallel; a canary pod that cannot be read is counted.
async fn read_pods(
    ctx: &Context,
    rep: &RoutingEndpoint,
    ns: &str,
    ready: Vec<(bool, String)>,
    scrape: &mut signals::Scrape,
) {
    let reads = ready.into_iter().map(|(canary, name)| async move {
        let path = format!("/api/v1/namespaces/{ns}/pods/{name}:{}/proxy/metrics", rep.spec.port);
        (canary, get_text(ctx, path).await, name)
    });
    for (canary, text, name) in futures::future::join_all(reads).await {
        match (text, canary) {
            (Ok(t), true) => scrape.canary.extend(signals::parse(&t)),
            (Ok(t), false) => scrape.stable.extend(signals::parse(&t)),
            (Err(e), c) => {
                tracing::warn!(pod = %name, error = %e, "cannot read the serving pod's metrics");
                if c {
                    scrape.unreadable += 1;
                }
            }
        }
    }
}

/// The same series from Prometheus: the canary Deployment's pods, and the current Deployment's
/// mirror counters for `version`. When Prometheus cannot answer, every ready canary pod counts
/// as unreadable (the canary waits; nothing is judged on missing data).
async fn query_prometheus(
    url: &str,
    rep: &RoutingEndpoint,
    ns: &str,
    version: &str,
    canary_pods: i32,
    scrape: &mut signals::Scrape,
) {
    use signals::names;
    let canary = format!(
        "{{__name__=~\"{}|{}|{}\",namespace=\"{ns}\",pod=~\"{}\"}}",
        names::DECISIONS,
        names::REQUESTS,
        names::LATENCY_BUCKET,
        prometheus::pods_of(&build::canary_child(rep))
    );
    let stable = format!(
        "{{__name__=~\"{}|{}\",namespace=\"{ns}\",pod=~\"{}\",version=\"{version}\"}}",
        names::MIRROR_COMPARISONS,
        names::MIRROR_ABSTENTIONS,
        prometheus::pods_of(&build::child(rep))
    );
    let (c, s) = futures::join!(
        prometheus::query(url, &canary, METRICS_READ_TIMEOUT),
        prometheus::query(url, &stable, METRICS_READ_TIMEOUT)
    );
    match (c, s) {
        (Ok(c), Ok(s)) => {
            scrape.canary = c;
            scrape.stable = s;
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cannot read the canary's signals from Prometheus");
            scrape.unreadable = canary_pods.max(1);
        }
    }
}

/// Longest a pod's `/metrics` read may take (a hung pod must not hold the reconcile).
const METRICS_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

async fn get_text(ctx: &Context, path: String) -> Result<String, String> {
    let req = http::Request::get(path).body(Vec::new()).map_err(|e| e.to_string())?;
    match tokio::time::timeout(METRICS_READ_TIMEOUT, ctx.pod_client.request_text(req)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {}s", METRICS_READ_TIMEOUT.as_secs())),
    }
}

/// Retries a failed reconcile shortly.
pub fn error_policy(rep: Arc<RoutingEndpoint>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.on_error(KIND, &rep.name_any(), err)
}
