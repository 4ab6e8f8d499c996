//! The client layer: watches, server-side apply, status patches and Events. Decisions are made by
//! the pure functions in `training`, `evaluation` and `endpoint`.

pub mod applied;
pub mod apply;
pub mod context;
pub mod endpoint;
pub mod evaluation;
pub mod training;

pub use context::{Context, Error};

use std::sync::Arc;

use futures::StreamExt;

/// Runs the three controllers until `shutdown` resolves. `namespace` limits them to one
/// namespace (None: all namespaces).
pub async fn run_all(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let training = training::controller(ctx.clone(), namespace.as_deref());
    let store = training.store();
    let metrics = ctx.metrics.clone();
    // The runs-by-phase gauge is recomputed from the watch cache (deleted runs drop out).
    let gauge = tokio::spawn(async move {
        loop {
            let runs = store.state();
            metrics.runs_by_phase(runs.iter().map(|r| match r.status.as_ref().and_then(|s| s.phase) {
                Some(sapllm_crds::training_run::RunPhase::Pending) | None => None,
                Some(sapllm_crds::training_run::RunPhase::Running) => Some("Running"),
                Some(sapllm_crds::training_run::RunPhase::Suspended) => Some("Suspended"),
                Some(sapllm_crds::training_run::RunPhase::Succeeded) => Some("Succeeded"),
                Some(sapllm_crds::training_run::RunPhase::Failed) => Some("Failed"),
            }));
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        }
    });
    let limits = || kube::runtime::controller::Config::default().concurrency(ctx.config.concurrency);
    let runs = training
        .with_config(limits())
        .graceful_shutdown_on(shutdown.clone())
        .run(training::reconcile, training::error_policy, ctx.clone())
        .for_each(|r| async move { log("TrainingRun", r) });
    let evals = evaluation::controller(ctx.clone(), namespace.as_deref())
        .with_config(limits())
        .graceful_shutdown_on(shutdown.clone())
        .run(evaluation::reconcile, evaluation::error_policy, ctx.clone())
        .for_each(|r| async move { log("Evaluation", r) });
    let eps = endpoint::controller(ctx.clone(), namespace.as_deref())
        .with_config(limits())
        .graceful_shutdown_on(shutdown)
        .run(endpoint::reconcile, endpoint::error_policy, ctx.clone())
        .for_each(|r| async move { log("RoutingEndpoint", r) });
    futures::join!(runs, evals, eps);
    gauge.abort();
}

fn log<T: std::fmt::Debug, E: std::fmt::Display>(kind: &str, r: Result<T, E>) {
    match r {
        Ok(o) => tracing::debug!(kind, object = ?o, "reconciled"),
        Err(e) => tracing::warn!(kind, error = %e, "reconcile failed"),
    }
}
