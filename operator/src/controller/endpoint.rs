//! RoutingEndpoint controller: select a passing version, roll it out, roll back on a missed
//! deadline. It never writes the endpoint's spec (GitOps-safe), only its status.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use sapllm_crds::conditions::set_condition;
use sapllm_crds::endpoint::RoutingEndpoint;
use sapllm_crds::evaluation::Evaluation;

use crate::controller::apply::{apply_changed, apply_status, fresh, memo_key};
use crate::controller::context::now;
use crate::controller::{Context, Error};
use crate::endpoint::{self, build};
use crate::names::{LABEL_MANAGED_BY, MANAGER};

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
    if let Err(invalid) = crate::memory::check_endpoint(&rep, &ctx.config) {
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
    let mut d = endpoint::decide(&rep, &selection, active.as_ref(), obs.as_ref(), now());
    if let Some(c) = &d.serve {
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
            }
            None => {
                let msg = format!(
                    "spec.storage: required, Evaluation {} names no storage for its artifacts",
                    c.evaluation
                );
                let g = rep.metadata.generation;
                set_condition(&mut d.status.conditions, "Ready", false, "InvalidSpec", msg, g, now());
            }
        }
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

/// Retries a failed reconcile shortly.
pub fn error_policy(rep: Arc<RoutingEndpoint>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.on_error(KIND, &rep.name_any(), err)
}
