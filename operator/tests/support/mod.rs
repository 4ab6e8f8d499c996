//! Shared by the operator's integration tests: YAML fixtures and the fixed clock.
#![allow(dead_code)]

pub mod fake_api;

use std::path::PathBuf;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sapllm_crds::common::Verdict;
use sapllm_crds::evaluation::{Evaluation, EvaluationPhase, EvaluationStatus, GateResult, ModelArtifacts};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Reads `input/<name>.yaml`.
pub fn input<T: DeserializeOwned>(name: &str) -> T {
    let path = dir().join("input").join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Compares `actual` with `expected/<name>.yaml` exactly (as JSON values). With
/// `UPDATE_FIXTURES=1` the file is (re)written instead; review the diff before committing.
pub fn assert_fixture<T: Serialize>(name: &str, actual: &T) {
    let path = dir().join("expected").join(format!("{name}.yaml"));
    let actual = normalize(serde_json::to_value(actual).unwrap());
    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        std::fs::write(&path, serde_yaml::to_string(&actual).unwrap()).unwrap();
        return;
    }
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_FIXTURES=1 to create it)", path.display()));
    let expected: serde_json::Value = normalize(serde_yaml::from_str(&text).unwrap());
    if expected != actual {
        panic!(
            "{} differs.\n--- expected\n{}\n--- actual\n{}",
            path.display(),
            serde_yaml::to_string(&expected).unwrap(),
            serde_yaml::to_string(&actual).unwrap()
        );
    }
}

/// 2027-01-15T08:00:00Z plus `secs`.
pub fn at(secs: i64) -> Time {
    Time(Timestamp::from_second(1_800_000_000 + secs).unwrap())
}

/// The content digest of model version `n`: `sha256:` and `n` as two hex digits, 32 times.
pub fn version(n: u8) -> String {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
}

/// A completed Evaluation of version `n` of the routing-tiny lineage (`ev-artifacts`), passed or
/// failed on routing accuracy, its verdict at `completed_at` (see [`at`]).
pub fn evaluation(name: &str, n: u8, passed: bool, completed_at: i64) -> Evaluation {
    let mut e: Evaluation = input("ev-artifacts");
    e.metadata.name = Some(name.into());
    e.metadata.labels = Some([("sapllm.io/lineage".to_string(), "routing-tiny".to_string())].into());
    e.status = Some(EvaluationStatus {
        phase: Some(EvaluationPhase::Completed),
        model_version: Some(version(n)),
        artifacts: Some(ModelArtifacts {
            base_model: format!("runs/v{n}/pretrain/model"),
            adapter: Some(format!("runs/v{n}/ppo/adapter")),
            version: Some(version(n)),
        }),
        gates: vec![GateResult {
            name: "routingAccuracy".into(),
            comparator: ">=".into(),
            threshold: 0.97,
            value: if passed { 0.98 } else { 0.9 },
            passed,
        }],
        verdict: Some(if passed { Verdict::Passed } else { Verdict::Failed }),
        completion_time: Some(at(completed_at)),
        ..Default::default()
    });
    e
}

/// Stage digests cover the serialized settings, so any new (defaulted) API field changes them and
/// the child names built from them. Fixtures compare the objects with digests masked; how digests
/// react to edits is tested relationally in tests/training.rs.
fn normalize(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::String(s) => serde_json::Value::String(mask_hex(&s)),
        serde_json::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(normalize).collect()),
        serde_json::Value::Object(o) => {
            serde_json::Value::Object(o.into_iter().map(|(k, v)| (k, normalize(v))).collect())
        }
        v => v,
    }
}

/// `sha256:<64 hex>` -> `sha256:<digest>`, and a 10-hex name suffix `-<10 hex>` -> `-<d10>`.
fn mask_hex(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("sha256:") {
        out.push_str(&rest[..i + 7]);
        let after = &rest[i + 7..];
        let n = after.chars().take_while(|c| c.is_ascii_hexdigit()).count();
        if n == 64 {
            out.push_str("<digest>");
            rest = &after[64..];
        } else {
            rest = after;
        }
    }
    out.push_str(rest);
    // A name suffix may be followed by more text (a condition message quoting the name).
    let parts: Vec<String> = out
        .split('-')
        .map(|p| {
            let head: String = p.chars().take(10).collect();
            let boundary = p.chars().nth(10).is_none_or(|c| !c.is_ascii_alphanumeric());
            if head.len() == 10
                && boundary
                && head.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
                && head.chars().any(|c| c.is_ascii_digit())
            {
                format!("<d10>{}", &p[10..])
            } else {
                p.to_string()
            }
        })
        .collect();
    parts.join("-")
}
