//! What this process last wrote, so a resync that changes nothing writes nothing.
//!
//! A level-triggered reconcile re-derives every child from the spec; applying an unchanged
//! child is a no-op for the API server but still a write request (admission, etcd read,
//! managed-fields bookkeeping). The memo remembers the digest of the last applied object per
//! child and skips the request while the digest is the same. Entries expire after
//! [`MEMO_RESYNCS`] resync intervals, so a child someone deleted or edited behind the operator's
//! back is restored within that time even when no watch event brings it to the operator's
//! attention (owned children that are watched are restored at once: their change triggers a
//! reconcile, and `forget` is called for what the reconcile observes to differ).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// How many resync intervals a remembered write stays trusted.
pub const MEMO_RESYNCS: u32 = 6;

/// The digests of the children this process applied, by `kind/namespace/name`.
#[derive(Default)]
pub struct Applied {
    entries: Mutex<HashMap<String, (String, Instant)>>,
    /// Entries left after the last pruning: the next one comes when there are twice as many.
    pruned_at: Mutex<usize>,
}

impl Applied {
    /// The memo key and digest of `obj` (the canonical JSON of what would be applied).
    pub fn digest<K: Serialize>(key: &str, obj: &K) -> (String, String) {
        let v = serde_json::to_value(obj).unwrap_or_default();
        (key.to_string(), sapllm_crds::digest::digest_of(&v))
    }

    /// Whether `digest` was applied for `key` within `ttl`.
    pub fn is_current(&self, key: &str, digest: &str, ttl: Duration) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).is_some_and(|(d, at)| d == digest && at.elapsed() < ttl)
    }

    /// Records a successful apply. Entries older than `ttl` are dropped now and then (those of
    /// deleted children would otherwise stay for the life of the process).
    pub fn remember(&self, key: String, digest: String, ttl: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.insert(key, (digest, Instant::now()));
        let mut pruned = self.pruned_at.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= 2 * (*pruned).max(512) {
            entries.retain(|_, (_, at)| at.elapsed() < ttl);
            *pruned = entries.len();
        }
    }

    /// Forgets `key` (the live object is known to differ, or is gone).
    pub fn forget(&self, key: &str) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    /// Remembered children.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_unchanged_child_is_current_until_it_changes_expires_or_is_forgotten() {
        let a = Applied::default();
        let (k, d) = Applied::digest("ConfigMap/ml/run", &json!({ "data": { "x": "1" } }));
        let ttl = Duration::from_secs(60);
        assert!(!a.is_current(&k, &d, ttl), "never applied");
        a.remember(k.clone(), d.clone(), ttl);
        assert!(a.is_current(&k, &d, ttl));
        let (_, changed) = Applied::digest("ConfigMap/ml/run", &json!({ "data": { "x": "2" } }));
        assert!(!a.is_current(&k, &changed, ttl), "a changed child is applied");
        assert!(!a.is_current(&k, &d, Duration::ZERO), "an expired entry is applied again");
        a.forget(&k);
        assert!(!a.is_current(&k, &d, ttl));
    }

    #[test]
    fn entries_of_children_no_longer_applied_are_pruned() {
        let a = Applied::default();
        for i in 0..1023 {
            a.remember(format!("ConfigMap/ml/run-{i}"), "d".into(), Duration::ZERO);
        }
        assert_eq!(a.len(), 1023, "no pruning below twice the last size (at least 512)");
        a.remember("ConfigMap/ml/last".into(), "d".into(), Duration::ZERO);
        assert!(a.is_empty(), "every entry had expired");
        let fresh = Duration::from_secs(60);
        for i in 0..1100 {
            a.remember(format!("ConfigMap/ml/live-{i}"), "d".into(), fresh);
        }
        assert_eq!(a.len(), 1100, "live entries are kept");
    }
}
