//! `sapllm-worker serve`: the production routing endpoint (what a RoutingEndpoint Deployment
//! runs).
//!
//! - [`routes`], [`openai`]: the HTTP API (axum); [`body`], [`error`]: JSON in, JSON errors out
//!   naming the field; [`middleware`]: request ids, tracing, metrics, bearer auth;
//! - [`batcher`]: the bounded queue (429 + Retry-After when full) and the model thread doing
//!   dynamic batching (max batch, max wait);
//! - [`metrics`]: Prometheus; [`state`]: readiness (loading -> ready after a warm-up decision,
//!   draining on shutdown);
//! - [`mirror`]: a sample of routing requests sent to a canary and its decisions compared
//!   (`--mirror-to`);
//! - [`peers`]: feedback forwarded to the replica that made the decision (`--peer-domain`);
//!   [`upstream`]: the HTTP client both use.
//!
//! [`start`] binds, spawns the model thread (which loads the model, makes one warm-up decision
//! and only then reports ready) and serves until [`Server::shutdown`]: readiness turns 503,
//! new connections stop, in-flight requests complete, then the model thread ends.

pub mod backend;
pub mod batcher;
pub mod body;
pub mod error;
pub mod feedback;
pub mod metrics;
pub mod middleware;
pub mod mirror;
pub mod openai;
pub mod peers;
pub mod routes;
pub mod state;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio::sync::{oneshot, watch};

pub use self::backend::Backend;
use self::backend::warm_up_query;
use self::batcher::BatchConfig;
use self::metrics::Metrics;
use self::mirror::{Mirror, MirrorConfig};
use self::state::{AppState, Phase, SharedState};
use sapllm_engine::engine::Engine;
use sapllm_engine::load::ModelInfo;
use sapllm_sap::catalog::Catalog;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub addr: SocketAddr,
    pub batch: BatchConfig,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    pub auth_token: Option<String>,
    pub model_name: String,
    pub catalog: Catalog,
    /// Documents per `/v1/route/batch` request at most.
    pub max_batch_request: usize,
    /// Feedback into a transaction log (`--feedback-dir`); `None` = `/v1/feedback` answers 404.
    pub feedback: Option<feedback::FeedbackConfig>,
    /// The served model's version (`--model-version`, the operator passes its content digest):
    /// the `x-sapllm-model-version` header of routing answers and `version` in `/v1/models`.
    pub model_version: Option<String>,
    /// Mirror a sample of routing requests to another server and compare (`--mirror-to`).
    pub mirror: Option<MirrorConfig>,
}

impl ServeConfig {
    pub fn new(addr: SocketAddr) -> Self {
        ServeConfig {
            addr,
            batch: BatchConfig { max_batch: 8, ..BatchConfig::default() },
            request_timeout: Duration::from_secs(30),
            max_body_bytes: 1 << 20,
            auth_token: None,
            model_name: "sapllm".into(),
            catalog: Catalog::builtin(),
            max_batch_request: 64,
            feedback: None,
            model_version: None,
            mirror: None,
        }
    }
}

/// Loads the backend (by default the engine) on the model thread.
pub type Loader<B = Engine> = Box<dyn FnOnce() -> Result<(B, ModelInfo)> + Send>;

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    phase: watch::Receiver<Phase>,
    draining: Arc<AtomicBool>,
    stop: Option<oneshot::Sender<()>>,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
    feedback: Option<Arc<feedback::Feedback>>,
    mirror: Option<Arc<Mirror>>,
    model_thread: Option<std::thread::JoinHandle<()>>,
}

/// The router (exposed for tests that drive it without a socket).
pub fn router(state: SharedState, max_body_bytes: usize) -> Router {
    let v1 = Router::new()
        .route("/v1/route", post(routes::route))
        .route("/v1/route/batch", post(routes::route_batch))
        .route("/v1/exceptions", post(routes::exceptions))
        .route("/v1/models", get(routes::models))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/feedback", post(feedback::feedback))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), middleware::auth));
    Router::new()
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .merge(v1)
        .fallback(routes::not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::model_version))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::observe))
        .with_state(state)
}

/// The warm-up decision: one document of the catalog through the full path.
fn warm_up(engine: &dyn Backend, catalog: &Catalog) -> Result<()> {
    let q = warm_up_query(catalog).context("the catalog has no creatable API to warm up with")?;
    let t = Instant::now();
    let d = engine.decide_routing_batch(std::slice::from_ref(&q))?.pop().context("no warm-up decision")??;
    tracing::info!(endpoint = %d.endpoint, confidence = d.confidence, ms = t.elapsed().as_millis() as u64, "warm-up decision");
    Ok(())
}

/// Binds and starts serving; the model loads in the background (`/readyz` says when).
pub async fn start<B: Backend + 'static>(cfg: ServeConfig, loader: Loader<B>) -> Result<Server> {
    let metrics = Arc::new(Metrics::new()?);
    let (queue, rx) = batcher::queue(&cfg.batch, metrics.clone());
    let (phase_tx, phase_rx) = watch::channel(Phase::Loading);
    let draining = Arc::new(AtomicBool::new(false));
    // Bound first: forwarded feedback goes to the replicas' port, this one's.
    let listener =
        tokio::net::TcpListener::bind(cfg.addr).await.with_context(|| format!("binding {}", cfg.addr))?;
    let addr = listener.local_addr()?;
    let feedback = match &cfg.feedback {
        Some(f) => {
            let peers = f
                .peers
                .as_ref()
                .map(|p| peers::Peers::new(p, addr.port(), cfg.request_timeout, metrics.clone()));
            Some(Arc::new(feedback::Feedback::open(f, peers)?))
        }
        None => None,
    };
    if let Some(f) = &feedback {
        tracing::info!(file = %f.log.path().display(), capacity = f.store.capacity(), "feedback enabled");
        if let Some(p) = &f.peers {
            tracing::info!(replica = p.name(), "feedback for other replicas' decisions is forwarded to them");
        }
    }
    if let Some(v) = &cfg.model_version
        && axum::http::HeaderValue::from_str(v).is_err()
    {
        anyhow::bail!("--model-version {v:?} must be printable ASCII (it is sent as a header)");
    }
    let mirror = cfg
        .mirror
        .as_ref()
        .map(|m| Mirror::new(m, cfg.auth_token.as_deref(), metrics.clone()))
        .transpose()?
        .map(Arc::new);
    if let Some(m) = &cfg.mirror {
        let (url, fraction, concurrency) = (&m.base_url, m.fraction, m.concurrency);
        tracing::info!(%url, fraction, concurrency, "mirroring routing requests");
    }
    let state = Arc::new(AppState {
        queue,
        metrics: metrics.clone(),
        phase: phase_rx.clone(),
        draining: draining.clone(),
        catalog: cfg.catalog.clone(),
        request_timeout: cfg.request_timeout,
        auth_token: cfg.auth_token.clone(),
        model_name: cfg.model_name.clone(),
        max_batch_request: cfg.max_batch_request,
        retry_after_s: 1,
        feedback: feedback.clone(),
        model_version: cfg.model_version.clone(),
        mirror: mirror.clone(),
    });
    let batch = cfg.batch;
    let catalog = cfg.catalog.clone();
    let model_thread = std::thread::Builder::new().name("sapllm-model".into()).spawn(move || {
        let t = Instant::now();
        let loaded = loader().and_then(|(engine, info)| warm_up(&engine, &catalog).map(|()| (engine, info)));
        match loaded {
            Ok((engine, info)) => {
                tracing::info!(base = %info.base, adapter = ?info.adapter, precision = %info.precision, secs = t.elapsed().as_secs_f64(), "model ready");
                metrics.ready.set(1);
                let _ = phase_tx.send(Phase::Ready(Box::new(info)));
                let rx = std::sync::Mutex::new(rx);
                std::thread::scope(|scope| {
                    for i in 1..batch.workers.max(1) {
                        let (engine, rx, batch, metrics) = (&engine, &rx, &batch, &metrics);
                        let spawned = std::thread::Builder::new()
                            .name(format!("sapllm-model-{i}"))
                            .spawn_scoped(scope, move || batcher::run_worker(engine, rx, batch, metrics));
                        if let Err(e) = spawned {
                            tracing::error!(error = %e, "could not start model thread {i}; serving with fewer");
                        }
                    }
                    batcher::run_worker(&engine, &rx, &batch, &metrics);
                });
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "model load failed");
                let _ = phase_tx.send(Phase::Failed(format!("{e:#}")));
                // Answer (and thereby release) whatever arrives until shutdown.
                while let Ok(job) = rx.recv() {
                    metrics.queue_depth.dec();
                    drop(job);
                }
            }
        }
    })?;
    let app = router(state, cfg.max_body_bytes);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let drain_flag = draining.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop_rx.await;
                drain_flag.store(true, Ordering::SeqCst);
            })
            .await
    });
    tracing::info!(%addr, "listening");
    Ok(Server {
        addr,
        phase: phase_rx,
        draining,
        stop: Some(stop_tx),
        http,
        feedback,
        mirror,
        model_thread: Some(model_thread),
    })
}

impl Server {
    /// Waits until the model is ready (Ok) or failed to load (Err).
    pub async fn ready(&mut self) -> Result<()> {
        loop {
            match &*self.phase.borrow_and_update() {
                Phase::Ready(_) => return Ok(()),
                Phase::Failed(e) => anyhow::bail!("model failed to load: {e}"),
                Phase::Loading => {}
            }
            self.phase.changed().await.context("model thread ended")?;
        }
    }

    /// A receiver of the model phase (to react to a failed load).
    pub fn phase(&self) -> watch::Receiver<Phase> {
        self.phase.clone()
    }

    /// Graceful shutdown: not ready, stop accepting, finish in-flight requests, write every
    /// queued feedback line, stop the model thread. Mirrors in flight are abandoned (they are a
    /// sample; their tasks hold no handler state, so nothing here waits for them).
    pub async fn shutdown(mut self) -> Result<()> {
        self.draining.store(true, Ordering::SeqCst);
        if let Some(m) = self.mirror.take() {
            m.close();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let http = (&mut self.http).await;
        // In-flight feedback requests have finished (each waited for its line); whatever is still
        // queued is written before the writer ends.
        if let Some(f) = self.feedback.take() {
            tokio::task::spawn_blocking(move || f.log.close()).await.context("feedback writer")?;
        }
        http.context("HTTP task")?.context("HTTP server")?;
        if let Some(t) = self.model_thread.take() {
            tokio::task::spawn_blocking(move || t.join())
                .await?
                .map_err(|_| anyhow::anyhow!("model thread panicked"))?;
        }
        Ok(())
    }
}
