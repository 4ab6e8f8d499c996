//! What every reconcile shares.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
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
    /// What this process last applied (see [`crate::controller::applied`]).
    pub applied: crate::controller::applied::Applied,
    /// Reads serving pods' `/metrics` through the pod proxy: a client without retries (see
    /// [`Context::with_pod_client`]).
    pub pod_client: Client,
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
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            pod_client: client.clone(),
            client,
            config,
            metrics,
            applied: Default::default(),
        }
    }

    /// Reads pods' `/metrics` with `client`, which should not retry: the pod proxy answers 503
    /// while a pod does not listen, and retried reads would hold a reconcile for minutes.
    pub fn with_pod_client(mut self, client: Client) -> Self {
        self.pod_client = client;
        self
    }

    /// Why `job` cannot create its pod, from its Events, when it may be failing to (see
    /// [`crate::observe::may_lack_pods`]). Events are read best-effort: an error is logged once
    /// per reconcile and reads as "no failure known".
    pub async fn pod_creation_failure(&self, job: &k8s_openapi::api::batch::v1::Job) -> Option<String> {
        if !crate::observe::may_lack_pods(job) {
            return None;
        }
        let ns = job.metadata.namespace.as_deref()?;
        let name = job.metadata.name.as_deref()?;
        let api: kube::Api<k8s_openapi::api::core::v1::Event> =
            kube::Api::namespaced(self.client.clone(), ns);
        let lp = kube::api::ListParams::default()
            .fields(&format!("involvedObject.kind=Job,involvedObject.name={name}"));
        match api.list(&lp).await {
            Ok(list) => crate::observe::creation_failure(job, &list.items),
            Err(e) => {
                tracing::debug!(error = %e, job = name, "cannot read the Job's Events");
                None
            }
        }
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
                action: t.action.clone(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&ev, &reference).await {
                tracing::warn!(error = %e, reason = %t.reason, "cannot publish Event");
            }
        }
    }
}

impl Context {
    /// What a failed reconcile does next: a retry shortly, with a warning; but when the
    /// namespace is being deleted, nothing (the object goes with it) and no warning (the API
    /// refuses every create there, and a retry every few seconds floods the log).
    pub fn on_error(&self, kind: &'static str, name: &str, err: &Error) -> Action {
        self.metrics.error(kind);
        if namespace_terminating(err) {
            tracing::debug!(kind, name, error = %err, "namespace is being deleted: not retrying");
            return Action::await_change();
        }
        tracing::warn!(kind, name, error = %err, "reconcile failed");
        Action::requeue(std::time::Duration::from_secs(5))
    }
}

/// Whether the API refused a request because its namespace is being deleted (the
/// NamespaceLifecycle admission plugin: 403 with the `NamespaceTerminating` cause).
pub fn namespace_terminating(err: &Error) -> bool {
    let Error::Kube(kube::Error::Api(status)) = err else { return false };
    status.code == 403
        && (status.details.iter().flat_map(|d| &d.causes).any(|c| c.reason == "NamespaceTerminating")
            || status.message.contains("because it is being terminated"))
}

/// The current time as Kubernetes writes it.
pub fn now() -> Time {
    Time(Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    #[test]
    fn a_create_in_a_terminating_namespace_is_recognised() {
        let refused = |message: &str, cause: Option<&str>| {
            let causes: Vec<serde_json::Value> =
                cause.map(|c| serde_json::json!({ "reason": c })).into_iter().collect();
            let s: Status = serde_json::from_value(serde_json::json!({
                "status": "Failure", "code": 403, "reason": "Forbidden", "message": message,
                "details": { "causes": causes },
            }))
            .unwrap();
            Error::Kube(kube::Error::Api(s.boxed()))
        };
        let msg = "persistentvolumeclaims \"a\" is forbidden: unable to create new content in namespace ml because it is being terminated";
        assert!(namespace_terminating(&refused(msg, None)));
        assert!(namespace_terminating(&refused("forbidden", Some("NamespaceTerminating"))));
        assert!(
            !namespace_terminating(&refused("jobs is forbidden: User cannot create", None)),
            "RBAC stays an error"
        );
        assert!(!namespace_terminating(&Error::NoNamespace));
    }
}
