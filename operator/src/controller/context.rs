//! What every reconcile shares.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};

use crate::config::OperatorConfig;
use crate::metrics::Metrics;
use crate::names::MANAGER;
use crate::transitions::Transition;

/// Errors of the client layer (bad input is not an error: it goes to status).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The manifest could not be rendered.
    #[error("rendering the manifest: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// A namespaced object without a namespace.
    #[error("object has no namespace")]
    NoNamespace,
}

/// Shared by the reconcilers.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Operator settings.
    pub config: OperatorConfig,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes Events.
    pub recorder: Recorder,
}

impl Context {
    /// A context for `client`.
    pub fn new(
        client: Client,
        config: OperatorConfig,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter { controller: MANAGER.into(), instance };
        Context { recorder: Recorder::new(client.clone(), reporter), client, config, metrics }
    }

    /// Publishes `transitions` on `obj`. Events are best-effort (state is in status), so a failed
    /// publish is logged, not retried.
    pub async fn publish<K: Resource<DynamicType = ()>>(&self, obj: &K, transitions: &[Transition]) {
        let reference = obj.object_ref(&());
        for t in transitions {
            let ev = Event {
                type_: if t.warning { EventType::Warning } else { EventType::Normal },
                reason: t.reason.clone(),
                note: Some(t.note.chars().take(1000).collect()),
                action: "Reconcile".into(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&ev, &reference).await {
                tracing::warn!(error = %e, reason = %t.reason, "cannot publish Event");
            }
        }
    }
}

/// The current time as Kubernetes writes it.
pub fn now() -> Time {
    Time(Timestamp::now())
}
