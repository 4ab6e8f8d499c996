//! Shared by the operator's integration tests: YAML fixtures and the fixed clock.
#![allow(dead_code)]

pub mod fake_api;

use std::path::PathBuf;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
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
    let actual = serde_json::to_value(actual).unwrap();
    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        std::fs::write(&path, serde_yaml::to_string(&actual).unwrap()).unwrap();
        return;
    }
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_FIXTURES=1 to create it)", path.display()));
    let expected: serde_json::Value = serde_yaml::from_str(&text).unwrap();
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
