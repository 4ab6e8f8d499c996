//! Kubernetes Events for state transitions, derived from the old and the new status (so they are
//! computed by the same pure code the tests check; the controller only publishes them).

/// One Event to publish on the reconciled object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Warning (failures, rollbacks, gate blocks) or Normal.
    pub warning: bool,
    /// PascalCase reason, e.g. `StageSucceeded`.
    pub reason: String,
    /// Human-readable note.
    pub note: String,
    /// The Event's `action`: what the transition is about (a stage's Job, a model version).
    /// kube-runtime's recorder merges Events by type, reason, action and object, not by note,
    /// so without it every `StageStarted` of a run would become a counter on the first one.
    pub action: String,
}

/// Kubernetes' limit on an Event's `action`.
const MAX_ACTION: usize = 128;

impl Transition {
    /// A Normal event.
    pub fn normal(reason: &str, note: impl Into<String>) -> Self {
        Transition { warning: false, reason: reason.into(), note: note.into(), action: "Reconcile".into() }
    }
    /// A Warning event.
    pub fn warning(reason: &str, note: impl Into<String>) -> Self {
        Transition { warning: true, reason: reason.into(), note: note.into(), action: "Reconcile".into() }
    }

    /// Names what the transition is about: Events about different subjects stay apart.
    pub fn about(mut self, subject: &str) -> Self {
        if !subject.is_empty() {
            self.action = subject.chars().take(MAX_ACTION).collect();
        }
        self
    }

    /// What kube-runtime's recorder merges Events on (besides the object and the reporter).
    pub fn merge_key(&self) -> (bool, &str, &str) {
        (self.warning, &self.reason, &self.action)
    }
}
