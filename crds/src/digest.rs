//! Content digests of settings, computed the same way by the operator and the worker, whatever
//! features serde_json was built with.
//!
//! A digest names a Job and decides whether a finished stage is re-run, so it must not depend on
//! how a binary was built: serde_json's `preserve_order` (switched on by any crate in a build)
//! keeps object keys in insertion order, and `to_string` then writes them differently. Digests
//! therefore hash the canonical form: object keys sorted at every level, no whitespace.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::training_run::{StageName, TrainingRunSpec};

/// The canonical JSON text of `v`: keys sorted at every level, compact.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:<hex>` of the canonical JSON of `v`.
pub fn digest_of(v: &Value) -> String {
    format!("sha256:{}", sha256_hex(canonical_json(v).as_bytes()))
}

/// The settings digest of every planned stage of a run, in order.
///
/// A stage's digest covers its own settings and everything it reads (base model, data, storage
/// location) and is chained through the previous stage's digest: editing the spec of a finished
/// run re-runs the first stage whose settings changed and every stage after it, and nothing
/// else. Retry limits and deadlines are left out (they do not change what a stage produces), and
/// so are pod settings (image, resources, scheduling) and the base model's declared
/// `architecture` (read by the memory plan only).
pub fn stage_digests(spec: &TrainingRunSpec) -> Vec<(StageName, String)> {
    let mut prev = String::new();
    spec.planned_stages()
        .into_iter()
        .map(|stage| {
            let inputs = serde_json::json!({
                "previous": prev,
                "stage": stage.as_str(),
                "inputs": stage_inputs(spec, stage),
            });
            prev = digest_of(&inputs);
            (stage, prev.clone())
        })
        .collect()
}

/// What one stage reads, as JSON.
fn stage_inputs(spec: &TrainingRunSpec, stage: StageName) -> Value {
    fn value<T: serde::Serialize>(v: &T, drop: &[&str]) -> Value {
        let mut v = serde_json::to_value(v).unwrap_or_default();
        if let Value::Object(m) = &mut v {
            for key in drop {
                m.remove(*key);
            }
        }
        v
    }
    const CONTROL: &[&str] = &["retryLimit", "deadlineSeconds"];
    match stage {
        StageName::DataPrep => serde_json::json!({
            "storage": { "claimName": spec.storage.claim_name, "subPath": spec.storage.sub_path },
            // `architecture` only feeds the memory plan: declaring it must not re-run anything.
            "baseModel": value(&spec.base_model, &["architecture"]),
            "data": value(&spec.data, CONTROL),
            "settings": value(&spec.stages.data_prep, CONTROL),
        }),
        StageName::Pretrain => value(&spec.stages.pretrain, CONTROL),
        // `adapterLayout` is not serialized at its default: existing runs keep their digests.
        StageName::Sft => value(&spec.stages.sft, CONTROL),
        StageName::Ppo => value(&spec.stages.ppo, CONTROL),
        StageName::Evaluation => value(&spec.stages.evaluation, CONTROL),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_does_not_change_the_text() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"d":[{"z":1,"y":2}],"c":"x"}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"c":"x","d":[{"y":2,"z":1}]},"b":1}"#).unwrap();
        assert_eq!(canonical_json(&a), r#"{"a":{"c":"x","d":[{"y":2,"z":1}]},"b":1}"#);
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(canonical_json(&json!({"k": "quote\" and \\"})), r#"{"k":"quote\" and \\"}"#);
        assert_ne!(canonical_json(&json!([1, 2])), canonical_json(&json!([2, 1])), "arrays keep their order");
    }

    /// Pinned: this test runs in a workspace build (serde_json `preserve_order` on, through
    /// llguidance) and in `cargo test -p sapllm-crds` (off). Both must give these digests; a
    /// change here re-plans every stage of every existing run, so it must be deliberate.
    #[test]
    fn stage_digests_are_pinned_whatever_serde_json_features_are_on() {
        let spec: TrainingRunSpec = serde_yaml::from_str(
            r#"
baseModel: {preset: tiny}
storage: {claimName: artifacts}
stages:
  sft: {maxSteps: 15, lora: {r: 8, alpha: 16}}
  ppo: {enabled: true}
"#,
        )
        .unwrap();
        let digests = stage_digests(&spec);
        let got: Vec<(&str, &str)> = digests.iter().map(|(s, d)| (s.as_str(), &d[..19])).collect();
        assert_eq!(got, PINNED);
    }

    /// The saved adapter's layout: unset or `per-expert` keeps the pinned digests; `fused`
    /// re-runs SFT and everything after it (PPO saves its adapter in that layout too, and
    /// evaluation scores the new adapter), and nothing before.
    #[test]
    fn adapter_layout_changes_the_digests_from_sft_on_only_when_fused() {
        let digests = |layout: &str| {
            let spec: TrainingRunSpec = serde_yaml::from_str(&format!(
                r#"
baseModel: {{preset: tiny}}
storage: {{claimName: artifacts}}
stages:
  sft: {{maxSteps: 15, lora: {{r: 8, alpha: 16}}{layout}}}
  ppo: {{enabled: true}}
"#
            ))
            .unwrap();
            stage_digests(&spec)
        };
        let unset = digests("");
        let short: Vec<(&str, &str)> = unset.iter().map(|(s, d)| (s.as_str(), &d[..19])).collect();
        assert_eq!(short, PINNED);
        assert_eq!(digests(", adapterLayout: per-expert"), unset, "the default written down");
        let fused = digests(", adapterLayout: fused");
        let changed: Vec<&str> =
            unset.iter().zip(&fused).filter(|(a, b)| a.1 != b.1).map(|(a, _)| a.0.as_str()).collect();
        assert_eq!(changed, ["sft", "ppo", "evaluation"]);
    }

    const PINNED: &[(&str, &str)] = &[
        ("data-prep", "sha256:2edc92c8cf79"),
        ("pretrain", "sha256:d570413e71f6"),
        ("sft", "sha256:8ddf7f6ba4d9"),
        ("ppo", "sha256:45f957d6f4b3"),
        ("evaluation", "sha256:3675edd607f5"),
    ];
}
