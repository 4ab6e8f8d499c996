//! Evaluation controller: resolve the model, run the evaluate Job, record metrics and verdict.

use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use sapllm_crds::evaluation::{Evaluation, EvaluationPhase};
use sapllm_crds::training_run::TrainingRun;

use crate::controller::apply::{apply, apply_status, delete_job, fresh};
use crate::controller::context::now;
use crate::controller::{Context, Error};
use crate::evaluation::{self, Resolution};
use crate::names::{LABEL_EVALUATION, LABEL_JOB_NAME, LABEL_MANAGED_BY, MANAGER, label_value};
use crate::observe::{JobObservation, observe_job};

const KIND: &str = "Evaluation";

/// The controller: Evaluations and their Jobs.
pub fn controller(ctx: Arc<Context>, ns: Option<&str>) -> Controller<Evaluation> {
    let managed = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
    let (evs, jobs) = match ns {
        Some(ns) => (
            Api::<Evaluation>::namespaced(ctx.client.clone(), ns),
            Api::<Job>::namespaced(ctx.client.clone(), ns),
        ),
        None => (Api::all(ctx.client.clone()), Api::<Job>::all(ctx.client.clone())),
    };
    let runs = match ns {
        Some(ns) => Api::<TrainingRun>::namespaced(ctx.client.clone(), ns),
        None => Api::<TrainingRun>::all(ctx.client.clone()),
    };
    let c = Controller::new(evs, watcher::Config::default());
    let store = c.store();
    // An Evaluation waiting for its TrainingRun is woken when the run changes.
    c.owns(jobs, managed).watches(runs, watcher::Config::default(), move |run: TrainingRun| {
        let (ns, name) = (run.namespace(), run.name_any());
        store
            .state()
            .into_iter()
            .filter(|e| e.namespace() == ns && e.spec.model.training_run.as_deref() == Some(name.as_str()))
            .map(|e| ObjectRef::from_obj(e.as_ref()))
            .collect::<Vec<_>>()
    })
}

/// Reconciles one Evaluation: dereference (its TrainingRun) -> resolve -> observe -> decide ->
/// apply -> status.
pub async fn reconcile(ev: Arc<Evaluation>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _t = ctx.metrics.reconcile(KIND);
    let Some(ev) = fresh(&ctx.client, ev.as_ref()).await?.map(Arc::new) else {
        return Ok(Action::await_change());
    };
    let ns = ev.namespace().ok_or(Error::NoNamespace)?;
    if ev.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let run = dereference(&ctx, &ev, &ns).await?;
    let resolution = evaluation::resolve(&ev, run.as_ref());
    let job_name = match &resolution {
        Ok(Resolution::Ready(r)) => Some(evaluation::build::job_name(&ev, r).0),
        _ => None,
    };
    let (jobs, observed) = observe(&ctx, &ev, &ns, job_name.as_deref()).await?;
    let d = evaluation::decide(&ev, &resolution, job_name.as_deref(), observed.as_ref(), now());
    // Jobs for inputs that changed (a new generation): superseded, never adopted. The Job of a
    // recorded verdict stays.
    for j in jobs.iter().filter(|j| Some(j.name_any()) != d.status.job_name) {
        delete_job(&ctx.client, &ns, &j.name_any()).await?;
    }
    if d.create_job
        && let Ok(Resolution::Ready(r)) = &resolution
    {
        apply(&ctx.client, &evaluation::evaluation_job(&ev, r, &ctx.config)).await?;
    }
    let prev = ev.status.clone().unwrap_or_default();
    if ev.status.as_ref() != Some(&d.status) {
        apply_status(&ctx.client, ev.as_ref(), &d.status).await?;
    }
    if d.status.phase == Some(EvaluationPhase::Completed) && prev.phase != Some(EvaluationPhase::Completed)
        || d.status.phase == Some(EvaluationPhase::Failed) && prev.phase != Some(EvaluationPhase::Failed)
    {
        ctx.metrics
            .verdict(&format!("{:?}", d.status.verdict.unwrap_or(sapllm_crds::common::Verdict::Error)));
    }
    ctx.publish(ev.as_ref(), &d.transitions).await;
    Ok(match d.status.phase {
        Some(EvaluationPhase::Running) => Action::requeue(ctx.config.progress_interval),
        // Waiting for a run: its changes wake this Evaluation; the requeue is a safety net.
        Some(EvaluationPhase::Pending) => Action::requeue(std::time::Duration::from_secs(60)),
        _ => Action::requeue(ctx.config.resync_interval),
    })
}

/// The TrainingRun the Evaluation names, when it names one that exists.
async fn dereference(ctx: &Context, ev: &Evaluation, ns: &str) -> Result<Option<TrainingRun>, Error> {
    Ok(match &ev.spec.model.training_run {
        Some(name) => Api::<TrainingRun>::namespaced(ctx.client.clone(), ns).get_opt(name).await?,
        None => None,
    })
}

/// The Evaluation's Jobs (owned by it) and the observation of the current one (`job_name`),
/// with its pods.
async fn observe(
    ctx: &Context,
    ev: &Evaluation,
    ns: &str,
    job_name: Option<&str>,
) -> Result<(Vec<Job>, Option<JobObservation>), Error> {
    let uid = ev.uid().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let lp = ListParams::default().labels(&format!("{LABEL_EVALUATION}={}", label_value(&ev.name_any())));
    let jobs: Vec<Job> = jobs_api
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|j| j.owner_references().iter().any(|o| o.uid == uid))
        .collect();
    let current = jobs.iter().find(|j| Some(j.name_any().as_str()) == job_name);
    let observed = match current {
        Some(job) => {
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
            let lp = ListParams::default().labels(&format!("{LABEL_JOB_NAME}={}", job.name_any()));
            let mut o = observe_job(job, &pods.list(&lp).await?.items);
            o.pod_creation_failure = ctx.pod_creation_failure(job).await;
            Some(o)
        }
        None => None,
    };
    Ok((jobs, observed))
}

/// Retries a failed reconcile shortly.
pub fn error_policy(ev: Arc<Evaluation>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.on_error(KIND, &ev.name_any(), err)
}
