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
}

impl Transition {
    /// A Normal event.
    pub fn normal(reason: &str, note: impl Into<String>) -> Self {
        Transition { warning: false, reason: reason.into(), note: note.into() }
    }
    /// A Warning event.
    pub fn warning(reason: &str, note: impl Into<String>) -> Self {
        Transition { warning: true, reason: reason.into(), note: note.into() }
    }
}
