//! Deterministic child names, labels and owner references: a restarted operator finds (adopts) what
//! exists instead of creating duplicates.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;

/// The one server-side-apply field manager of the operator.
pub const MANAGER: &str = "sapllm-operator";
/// Standard label naming the managing tool.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Standard label naming the application.
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
/// Standard label naming the component.
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// The TrainingRun a child belongs to.
pub const LABEL_RUN: &str = "sapllm.io/training-run";
/// The stage a Job runs.
pub const LABEL_STAGE: &str = "sapllm.io/stage";
/// The Evaluation a Job belongs to.
pub const LABEL_EVALUATION: &str = "sapllm.io/evaluation";
/// The RoutingEndpoint a child belongs to.
pub const LABEL_ENDPOINT: &str = "sapllm.io/routing-endpoint";
/// The lineage of a TrainingRun (and of the Evaluations it produces).
pub const LABEL_LINEAGE: &str = "sapllm.io/lineage";
/// The label Kueue admits Jobs by.
pub const LABEL_KUEUE_QUEUE: &str = "kueue.x-k8s.io/queue-name";
/// The label the Job controller puts on its pods.
pub const LABEL_JOB_NAME: &str = "batch.kubernetes.io/job-name";
/// The model version a serving pod template runs.
pub const ANNOTATION_MODEL_VERSION: &str = "sapllm.io/model-version";
/// The settings digest a stage Job was built from.
pub const ANNOTATION_SETTINGS_DIGEST: &str = "sapllm.io/settings-digest";
/// The generation of the TrainingRun spec an Evaluation was made for (orders versions of one run
/// whose verdicts land within the same second).
pub const ANNOTATION_RUN_GENERATION: &str = "sapllm.io/run-generation";
/// Kubernetes' limit on names that become label values (Job names, Service names).
pub const MAX_NAME: usize = 63;

pub use sapllm_crds::digest::sha256_hex;

/// `<parent>-<suffix>`, at most 63 characters: a long parent is cut and made unique again by a
/// hash of its full name, so the result is deterministic and distinct per parent.
pub fn child_name(parent: &str, suffix: &str) -> String {
    let full = if suffix.is_empty() { parent.to_string() } else { format!("{parent}-{suffix}") };
    if full.len() <= MAX_NAME {
        return full;
    }
    let hash = &sha256_hex(parent.as_bytes())[..6];
    let keep = MAX_NAME - suffix.len() - hash.len() - if suffix.is_empty() { 1 } else { 2 };
    let cut = parent[..keep.min(parent.len())].trim_end_matches(['-', '.']);
    if suffix.is_empty() { format!("{cut}-{hash}") } else { format!("{cut}-{hash}-{suffix}") }
}

/// A label value for an object name (names may be 253 long, label values only 63).
pub fn label_value(name: &str) -> String {
    child_name(name, "")
}

/// Labels every child of `component` carries.
pub fn base_labels(component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), "sapllm".to_string()),
        (LABEL_COMPONENT.to_string(), component.to_string()),
        (LABEL_MANAGED_BY.to_string(), MANAGER.to_string()),
    ])
}

/// The controller owner reference of `owner` (garbage collection and adoption).
pub fn owner_ref<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    // Every reconciled object comes from the API server and so has a uid; without one the owner
    // reference would be rejected, which is the right failure.
    owner.controller_owner_ref(&()).unwrap_or_else(|| OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: String::new(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// Who else a live object with one of `owner`'s child names belongs to, when not to `owner`:
/// its controller, or "nobody" for an object without one (made by hand or by another tool).
/// Server-side apply with `force` would take such an object over, so it is left alone.
pub fn taken_by<K: Resource<DynamicType = ()>>(
    live: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    owner: &K,
) -> Option<String> {
    let uid = owner.meta().uid.as_deref()?;
    let controller = live.owner_references.iter().flatten().find(|r| r.controller == Some(true));
    match controller {
        Some(r) if r.uid == uid => None,
        Some(r) => Some(format!("{} {}", r.kind, r.name)),
        None => Some("no controller (made outside the operator)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_name_held_by_another_owner_is_recognised() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        let owner = |uid: &str, name: &str| -> sapllm_crds::endpoint::RoutingEndpoint {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "sapllm.io/v1alpha1", "kind": "RoutingEndpoint",
                "metadata": { "name": name, "uid": uid },
                "spec": { "model": { "latestPassing": { "lineage": "l" } } },
            }))
            .unwrap()
        };
        let (x, x_canary) = (owner("u-1", "x"), owner("u-2", "x-canary"));
        let ours = ObjectMeta { owner_references: Some(vec![owner_ref(&x)]), ..Default::default() };
        assert_eq!(taken_by(&ours, &x), None);
        assert_eq!(taken_by(&ours, &x_canary).as_deref(), Some("RoutingEndpoint x"));
        assert_eq!(
            taken_by(&ObjectMeta::default(), &x).as_deref(),
            Some("no controller (made outside the operator)")
        );
    }

    #[test]
    fn short_names_are_kept() {
        assert_eq!(child_name("routing-tiny", "sft-0123456789"), "routing-tiny-sft-0123456789");
    }

    #[test]
    fn long_names_are_cut_deterministically_and_stay_distinct() {
        let a = "a".repeat(80);
        let b = format!("{}b", "a".repeat(79));
        let na = child_name(&a, "data-prep-0123456789");
        assert!(na.len() <= MAX_NAME, "{na}");
        assert!(na.ends_with("-data-prep-0123456789"));
        assert_eq!(na, child_name(&a, "data-prep-0123456789"));
        assert_ne!(na, child_name(&b, "data-prep-0123456789"));
        assert!(label_value(&a).len() <= MAX_NAME);
    }
}
