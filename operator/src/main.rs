//! `sapllm-operator`: serves probes and metrics, elects a leader, and runs the controllers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Toleration;
use kube::{Api, Client};
use sapllm_operator::config::OperatorConfig;
use sapllm_operator::controller::{self, Context};
use sapllm_operator::http::{self, Health};
use sapllm_operator::leader::{self, LeaseConfig};
use sapllm_operator::metrics::Metrics;

/// Reconciles TrainingRun, Evaluation and RoutingEndpoint (sapllm.io/v1alpha1).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "SAPLLM_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "SAPLLM_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Worker image for resources that name none.
    #[arg(long, env = "SAPLLM_WORKER_IMAGE", default_value = sapllm_crds::common::DEFAULT_WORKER_IMAGE)]
    worker_image: String,
    /// Worker image (CUDA build) for pods with GPUs that name none.
    #[arg(long, env = "SAPLLM_WORKER_CUDA_IMAGE", default_value = sapllm_crds::common::DEFAULT_WORKER_CUDA_IMAGE)]
    worker_cuda_image: String,
    /// Extended resource name of GPUs.
    #[arg(long, env = "SAPLLM_GPU_RESOURCE", default_value = sapllm_crds::common::DEFAULT_GPU_RESOURCE)]
    gpu_resource_name: String,
    /// ServiceAccount of worker pods.
    #[arg(long, env = "SAPLLM_WORKER_SERVICE_ACCOUNT", default_value = "sapllm-worker")]
    worker_service_account: String,
    /// Default node selector of worker pods, as JSON (`{"pool":"gpu"}`).
    #[arg(long, env = "SAPLLM_DEFAULT_NODE_SELECTOR", default_value = "{}")]
    default_node_selector: String,
    /// Default tolerations of worker pods, as JSON (a list of Kubernetes tolerations).
    #[arg(long, env = "SAPLLM_DEFAULT_TOLERATIONS", default_value = "[]")]
    default_tolerations: String,
    /// StorageClass of claims the operator creates.
    #[arg(long, env = "SAPLLM_STORAGE_CLASS")]
    storage_class: Option<String>,
    /// Seconds between reconciles of an object when nothing changes (a level-triggered resync).
    #[arg(long, env = "SAPLLM_RESYNC_INTERVAL", default_value_t = 300)]
    resync_interval: u64,
    /// Most reconciles in flight per controller (bounds memory and API bursts at scale).
    #[arg(long, env = "SAPLLM_CONCURRENCY", default_value_t = sapllm_operator::config::DEFAULT_CONCURRENCY)]
    concurrency: u16,
    /// Seconds between progress polls of a running stage.
    #[arg(long, env = "SAPLLM_PROGRESS_INTERVAL", default_value_t = 15)]
    progress_interval: u64,
    /// Elect a leader on a Lease (run two replicas, one reconciles).
    #[arg(long, env = "SAPLLM_LEADER_ELECT", default_value_t = false, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "SAPLLM_LEASE_NAME", default_value = "sapllm-operator")]
    lease_name: String,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity (the pod name).
    #[arg(long, env = "POD_NAME", default_value = "sapllm-operator")]
    identity: String,
    /// Lease duration in seconds.
    #[arg(long, env = "SAPLLM_LEASE_DURATION", default_value_t = 15)]
    lease_duration: u64,
    /// Log as JSON lines (otherwise human-readable).
    #[arg(long, env = "SAPLLM_LOG_JSON", default_value_t = true, action = clap::ArgAction::Set)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // kube-client logs every 5xx answer at ERROR on its own; the reconcilers report the failures
    // that matter (once, with context), so its per-request line only repeats them.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube=warn,kube_client::client::builder=off".into());
    if args.log_json {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let config = OperatorConfig {
        worker_image: args.worker_image.clone(),
        worker_cuda_image: args.worker_cuda_image.clone(),
        gpu_resource_name: args.gpu_resource_name.clone(),
        worker_service_account: args.worker_service_account.clone(),
        default_node_selector: serde_json::from_str::<BTreeMap<String, String>>(&args.default_node_selector)
            .context("--default-node-selector must be a JSON object of strings")?,
        default_tolerations: serde_json::from_str::<Vec<Toleration>>(&args.default_tolerations)
            .context("--default-tolerations must be a JSON list of tolerations")?,
        storage_class: args.storage_class.clone().filter(|s| !s.is_empty()),
        progress_interval: Duration::from_secs(args.progress_interval.max(1)),
        resync_interval: Duration::from_secs(args.resync_interval.max(1)),
        concurrency: args.concurrency.max(1),
    };
    let mut kube_config =
        kube::Config::infer().await.context("no Kubernetes configuration (in-cluster or kubeconfig)")?;
    let client = Client::try_from(kube_config.clone()).context("building the Kubernetes client")?;
    // Serving pods' metrics are read through the API server's pod proxy, which answers 503 while
    // a pod does not listen: the client's retries (for an overloaded API server) would hold the
    // reconcile for minutes, so these reads go through a client without them.
    kube_config.default_retry = false;
    let pod_client = Client::try_from(kube_config).context("building the Kubernetes client")?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health { metrics: metrics.clone(), ready: false.into() });
    let listener = tokio::net::TcpListener::bind(args.http_addr).await.context("binding the HTTP address")?;
    let router = http::router(health.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    let ctx = Arc::new(
        Context::new(client.clone(), config, metrics.clone(), Some(args.identity.clone()))
            .with_pod_client(pod_client),
    );
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
    };
    if !args.leader_elect {
        health.ready.store(true, Ordering::Relaxed);
        metrics.leader.set(1);
        controller::run_all(ctx, args.watch_namespace, shutdown).await;
        return Ok(());
    }
    let lease_cfg = LeaseConfig {
        name: args.lease_name.clone(),
        namespace: args.lease_namespace.clone(),
        identity: args.identity.clone(),
        duration: Duration::from_secs(args.lease_duration.max(2)),
        retry: Duration::from_secs((args.lease_duration / 3).max(1)),
    };
    let leases: Api<Lease> = Api::namespaced(client.clone(), &args.lease_namespace);
    tracing::info!(identity = %lease_cfg.identity, lease = %lease_cfg.name, "waiting for leadership");
    // A standby that can read the Lease is healthy and ready; it only does not reconcile.
    leader::acquire(&leases, &lease_cfg, |_| health.ready.store(true, Ordering::Relaxed)).await;
    metrics.leader.set(1);
    tracing::info!(identity = %lease_cfg.identity, "became leader");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(controller::run_all(ctx.clone(), args.watch_namespace.clone(), async {
        let _ = stop_rx.await;
    }));
    let lost = tokio::select! {
        _ = leader::hold(&leases, &lease_cfg) => true,
        _ = shutdown => false,
    };
    metrics.leader.set(0);
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(20), run).await;
    if lost {
        // Another replica may be reconciling now: stop at once; Kubernetes restarts this one as a
        // standby.
        anyhow::bail!("lost the leader Lease");
    }
    leader::release(&leases, &lease_cfg).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The arguments the Helm chart passes (charts/sapllm-operator/templates/deployment.yaml).
    #[test]
    fn the_charts_arguments_parse() {
        let a = Args::try_parse_from([
            "sapllm-operator",
            "--http-addr=0.0.0.0:8080",
            "--leader-elect=true",
            "--lease-name=sapllm-operator",
            "--lease-duration=15",
            "--worker-image=ghcr.io/sapllm/sapllm-worker:0.1.0",
            "--gpu-resource-name=nvidia.com/gpu",
            "--worker-service-account=sapllm-worker",
            r#"--default-node-selector={"pool":"gpu"}"#,
            r#"--default-tolerations=[{"effect":"NoSchedule","key":"nvidia.com/gpu","operator":"Exists"}]"#,
            "--progress-interval=15",
            "--log-json=false",
            "--storage-class=fast-ssd",
            "--watch-namespace=ml",
        ])
        .unwrap();
        assert!(a.leader_elect);
        assert!(!a.log_json);
        assert_eq!(a.watch_namespace.as_deref(), Some("ml"));
        let t: Vec<Toleration> = serde_json::from_str(&a.default_tolerations).unwrap();
        assert_eq!(t[0].key.as_deref(), Some("nvidia.com/gpu"));
        let off = Args::try_parse_from(["sapllm-operator", "--leader-elect=false"]).unwrap();
        assert!(!off.leader_elect);
    }
}
