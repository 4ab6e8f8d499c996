//! TrainingRun controller: validate, observe Jobs, pods, Evaluations and the fed endpoint,
//! decide, act, write status.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, LogParams};
use kube::runtime::controller::Action;
use kube::runtime::{Controller, watcher};
use kube::{Api, ResourceExt};
use sapllm_crds::endpoint::RoutingEndpoint;
use sapllm_crds::evaluation::Evaluation;
use sapllm_crds::training_run::{StageName, TrainingRun};

use crate::controller::apply::{
    apply, apply_changed, apply_status, delete_job, ensure_exists, fresh, suspend_job,
};
use crate::controller::context::now;
use crate::controller::{Context, Error};
use crate::names::{LABEL_JOB_NAME, LABEL_MANAGED_BY, LABEL_RUN, MANAGER, label_value};
use crate::observe::{JobState, observe_job, running_pod};
use crate::progress::{TAIL_LINES, parse_latest};
use crate::training::{self, Observed, PlannedStage};

const KIND: &str = "TrainingRun";

/// The controller: runs, and the Jobs and Evaluations they own.
pub fn controller(ctx: Arc<Context>, ns: Option<&str>) -> Controller<TrainingRun> {
    let managed = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGER}"));
    Controller::new(api(&ctx, ns), watcher::Config::default())
        .owns(api::<Job>(&ctx, ns), managed.clone())
        .owns(api::<Evaluation>(&ctx, ns), managed)
}

fn api<K>(ctx: &Context, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    }
}

fn owned_by<K: kube::Resource>(child: &K, owner_uid: &str) -> bool {
    child.owner_references().iter().any(|o| o.controller == Some(true) && o.uid == owner_uid)
}

/// Reconciles one run: dereference -> validate -> observe -> decide -> apply -> status.
pub async fn reconcile(run: Arc<TrainingRun>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _t = ctx.metrics.reconcile(KIND);
    let Some(run) = fresh(&ctx.client, run.as_ref()).await?.map(Arc::new) else {
        return Ok(Action::await_change());
    };
    let ns = run.namespace().ok_or(Error::NoNamespace)?;
    if run.metadata.deletion_timestamp.is_some() {
        // Children are garbage-collected through their owner references.
        return Ok(Action::await_change());
    }
    if let Err(invalid) =
        training::validate(&run).and_then(|()| crate::memory::check_training_run(&run, &ctx.config))
    {
        let (status, transitions) = training::invalid_status(&run, &invalid, now());
        apply_status(&ctx.client, run.as_ref(), &status).await?;
        ctx.publish(run.as_ref(), &transitions).await;
        return Ok(Action::requeue(ctx.config.resync_interval));
    }
    if let Some(claim) = training::storage_claim(&run, &ctx.config) {
        ensure_exists(&ctx, &claim).await?;
    }
    apply_changed(&ctx, &training::manifest_config_map(&run)?).await?;

    let plan = training::plan(&run);
    let obs = observe(&ctx, &run, &ns, &plan).await?;
    let d = training::decide(&run, &plan, &obs, now());
    for job in &d.delete_jobs {
        delete_job(&ctx.client, &ns, job).await?;
    }
    for (job, suspend) in &d.suspend_jobs {
        suspend_job(&ctx.client, &ns, job, *suspend).await?;
    }
    // Status first: an Evaluation created before the run says its training stages succeeded
    // would find the run unfinished and wait.
    if run.status.as_ref() != Some(&d.status) {
        apply_status(&ctx.client, run.as_ref(), &d.status).await?;
    }
    if let Some(stage) = &d.start {
        if stage.name == StageName::Evaluation {
            let feeds = obs.endpoint_lineage.as_deref();
            apply(&ctx.client, &training::run_evaluation(&run, stage, feeds)).await?;
        } else {
            apply(&ctx.client, &training::stage_job(&run, stage, &ctx.config)).await?;
        }
    }
    ctx.publish(run.as_ref(), &d.transitions).await;
    Ok(if d.running {
        Action::requeue(ctx.config.progress_interval)
    } else {
        Action::requeue(ctx.config.resync_interval)
    })
}

/// Everything `decide` reads of the cluster: the run's Jobs and their pods, its Evaluations,
/// the running stage's progress (from its pod's log), and the lineage of the endpoint the run
/// feeds.
async fn observe(
    ctx: &Context,
    run: &TrainingRun,
    ns: &str,
    plan: &[PlannedStage],
) -> Result<Observed, Error> {
    let uid = run.uid().unwrap_or_default();
    let selector = format!("{LABEL_RUN}={}", label_value(&run.name_any()));
    let lp = ListParams::default().labels(&selector);
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let jobs: Vec<Job> = jobs_api.list(&lp).await?.items.into_iter().filter(|j| owned_by(j, &uid)).collect();
    let pods: Vec<Pod> = if jobs.is_empty() { Vec::new() } else { pods_api.list(&lp).await?.items };
    let mut obs = Observed::default();
    let mut active_pod = None;
    for job in &jobs {
        let name = job.name_any();
        let job_pods: Vec<Pod> =
            pods.iter().filter(|p| p.labels().get(LABEL_JOB_NAME) == Some(&name)).cloned().collect();
        let mut o = observe_job(job, &job_pods);
        o.pod_creation_failure = ctx.pod_creation_failure(job).await;
        // The current stage's Job: planned now, or adopted from status (see training::decide).
        let current = plan.iter().any(|p| p.child == name)
            || run
                .status
                .iter()
                .flat_map(|s| &s.stages)
                .any(|s| s.job_name.as_deref() == Some(name.as_str()));
        if o.state == JobState::Active && current {
            active_pod = running_pod(&job_pods).map(|p| p.name_any());
        }
        obs.jobs.insert(name, o);
    }
    let evs: Api<Evaluation> = Api::namespaced(ctx.client.clone(), ns);
    obs.evaluations = evs
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|e| owned_by(e, &uid))
        .map(|e| (e.name_any(), e))
        .collect::<BTreeMap<_, _>>();
    // Poll the log at most once per progress interval: a status write re-triggers this
    // reconcile, and a fresh progress value read every time would loop as fast as the API allows.
    let fresh = run
        .status
        .as_ref()
        .and_then(|s| s.progress.as_ref())
        .and_then(|p| p.updated_at.as_ref())
        .is_some_and(|t| {
            let age = now().0.duration_since(t.0);
            age.is_positive() && age.as_secs_f64() < ctx.config.progress_interval.as_secs_f64()
        });
    if let Some(pod) = active_pod.filter(|_| !fresh) {
        // Progress is best-effort: a log that cannot be read leaves the last value in status.
        let lp = LogParams {
            container: Some(crate::pod::WORKER_CONTAINER.into()),
            tail_lines: Some(TAIL_LINES),
            ..Default::default()
        };
        match pods_api.logs(&pod, &lp).await {
            Ok(log) => obs.progress = parse_latest(&log, now()),
            Err(e) => {
                // Said once (then in the ProgressAvailable condition), not at every poll.
                let said = run
                    .status
                    .iter()
                    .flat_map(|s| &s.conditions)
                    .any(|c| c.type_ == training::decide::PROGRESS_AVAILABLE && c.status == "False");
                if !said {
                    tracing::warn!(error = %e, pod, "cannot read the worker's log: no live progress (see the ProgressAvailable condition)");
                }
                obs.progress_unavailable = Some(crate::observe::truncate(&e.to_string()));
            }
        }
    }
    // The endpoint's passing lineage, which the run's Evaluation compares against.
    if let Some(ep) = &run.spec.endpoint {
        obs.endpoint_lineage = Api::<RoutingEndpoint>::namespaced(ctx.client.clone(), ns)
            .get_opt(ep)
            .await?
            .and_then(|e| e.spec.model.latest_passing.map(|l| l.lineage));
    }
    Ok(obs)
}

/// Retries a failed reconcile with a short delay (the API server or the network hiccupped).
pub fn error_policy(run: Arc<TrainingRun>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.on_error(KIND, &run.name_any(), err)
}
