//! What every handler shares: the queue to the model thread, metrics, readiness, settings.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use super::batcher::Queue;
use super::feedback::Feedback;
use super::metrics::Metrics;
use super::mirror::Mirror;
use sapllm_engine::load::ModelInfo;
use sapllm_sap::catalog::Catalog;

/// Where the model thread is.
#[derive(Debug, Clone)]
pub enum Phase {
    Loading,
    /// Loaded and a warm-up decision succeeded.
    Ready(Box<ModelInfo>),
    Failed(String),
}

/// Shared handler state.
pub struct AppState {
    pub queue: Queue,
    pub metrics: Arc<Metrics>,
    pub phase: watch::Receiver<Phase>,
    /// Set once shutdown began: `/readyz` turns 503 so the endpoint is taken out of rotation
    /// while in-flight requests finish.
    pub draining: Arc<AtomicBool>,
    pub catalog: Catalog,
    pub request_timeout: Duration,
    pub auth_token: Option<String>,
    /// Name `/v1/models` and chat completions report.
    pub model_name: String,
    /// Documents per `/v1/route/batch` request at most.
    pub max_batch_request: usize,
    /// Seconds clients are told to wait on 429.
    pub retry_after_s: u64,
    /// Recent decisions and the feedback file (`--feedback-dir`); `None` = feedback disabled.
    pub feedback: Option<Arc<Feedback>>,
    /// The served model's version (`--model-version`): the `x-sapllm-model-version` header of
    /// routing answers and `version` in `/v1/models`.
    pub model_version: Option<String>,
    /// Mirroring a sample of routing requests to another server (`--mirror-to`).
    pub mirror: Option<Arc<Mirror>>,
}

impl AppState {
    pub fn model_info(&self) -> Option<ModelInfo> {
        match &*self.phase.borrow() {
            Phase::Ready(info) => Some((**info).clone()),
            _ => None,
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

pub type SharedState = Arc<AppState>;
