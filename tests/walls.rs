//! The walls between the crates, read from `cargo metadata`: what each crate may depend on,
//! directly or through another crate (normal and build dependencies; dev-dependencies are the
//! tests' business). The README's layout section states the same rules.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// (crate, what it must not reach, why).
const WALLS: &[(&str, &[&str], &str)] = &[
    (
        "sapllm-crds",
        &["sapllm-operator", "sapllm-worker", "sapllm-model", "sapllm-sap", "sapllm-engine", "sapllm-serve"],
        "the API depends on nothing of ours",
    ),
    (
        "sapllm-operator",
        &["sapllm-worker", "sapllm-model", "sapllm-sap", "sapllm-engine", "sapllm-serve", "candle-core"],
        "the operator knows the worker only through the crds contract",
    ),
    (
        "sapllm-model",
        &[
            "sapllm-sap",
            "sapllm-engine",
            "sapllm-serve",
            "sapllm-worker",
            "sapllm-crds",
            "kube",
            "axum",
            "hyper",
            "prometheus",
            "plotters",
            "clap",
        ],
        "the model knows nothing of SAP, HTTP, Kubernetes, plotting or the CLI",
    ),
    (
        "sapllm-sap",
        &["candle-core", "sapllm-model", "sapllm-engine", "sapllm-serve", "sapllm-worker", "axum", "hyper"],
        "the SAP domain has no model and no HTTP",
    ),
    (
        "sapllm-engine",
        &[
            "sapllm-serve",
            "sapllm-worker",
            "sapllm-crds",
            "kube",
            "axum",
            "hyper",
            "prometheus",
            "plotters",
            "clap",
        ],
        "the engine is the model plus the SAP domain, nothing of serving or training",
    ),
    (
        "sapllm-serve",
        &["sapllm-worker", "sapllm-crds", "kube", "plotters", "clap", "indicatif"],
        "the server does not link the data generator (in sapllm-worker) or the training side",
    ),
];

/// Per workspace package name, the names of every package it reaches through normal and
/// build dependencies.
fn reachable(metadata: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let names: BTreeMap<&str, &str> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().expect("id"), p["name"].as_str().expect("name")))
        .collect();
    let mut edges: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for node in metadata["resolve"]["nodes"].as_array().expect("resolve.nodes") {
        let id = node["id"].as_str().expect("node id");
        let deps = node["deps"].as_array().expect("deps").iter().filter(|d| {
            d["dep_kinds"].as_array().expect("dep_kinds").iter().any(|k| k["kind"].as_str() != Some("dev"))
        });
        edges.entry(id).or_default().extend(deps.map(|d| d["pkg"].as_str().expect("pkg")));
    }
    let members = metadata["workspace_members"].as_array().expect("workspace_members");
    let mut out = BTreeMap::new();
    for m in members {
        let start = m.as_str().expect("member id");
        let mut seen = BTreeSet::new();
        let mut stack = vec![start];
        while let Some(id) = stack.pop() {
            for &d in edges.get(id).map(Vec::as_slice).unwrap_or_default() {
                if seen.insert(d) {
                    stack.push(d);
                }
            }
        }
        out.insert(names[start].to_string(), seen.into_iter().map(|id| names[id].to_string()).collect());
    }
    out
}

/// Every wall crossed, as a sentence naming the crates.
fn violations(metadata: &Value) -> Vec<String> {
    let reach = reachable(metadata);
    let mut out = Vec::new();
    for (krate, banned, why) in WALLS {
        let Some(deps) = reach.get(*krate) else {
            out.push(format!("{krate} is not a workspace member"));
            continue;
        };
        for b in *banned {
            if deps.contains(*b) {
                out.push(format!("{krate} depends on {b}: {why}"));
            }
        }
    }
    out
}

/// The host's target triple: metadata is filtered to it, so the check needs no package that
/// only another platform uses (and so no download).
fn host() -> String {
    let out = Command::new("rustc").arg("-vV").output().expect("rustc runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().find_map(|l| l.strip_prefix("host: ")).expect("rustc -vV names the host").to_string()
}

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline", "--filter-platform", &host()])
        .current_dir(sapllm_tests::workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

#[test]
fn no_crate_crosses_a_wall() {
    let m = metadata();
    let v = violations(&m);
    assert!(v.is_empty(), "walls crossed:\n{}", v.join("\n"));
    // The walls name real crates: each walled crate is a member with dependencies.
    let reach = reachable(&m);
    assert!(reach["sapllm-model"].contains("candle-core"));
    assert!(reach["sapllm-engine"].contains("sapllm-model") && reach["sapllm-engine"].contains("sapllm-sap"));
    assert!(reach["sapllm-serve"].contains("sapllm-engine") && reach["sapllm-serve"].contains("axum"));
    assert!(reach["sapllm-operator"].contains("sapllm-crds"));
}

#[test]
fn a_dependency_through_another_crate_is_caught() {
    // Give sap a dependency on the model: sap (and everything reaching sap) now reaches candle.
    let mut m = metadata();
    let id_of = |m: &Value, name: &str| {
        m["packages"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()["id"].clone()
    };
    let (sap, model) = (id_of(&m, "sapllm-sap"), id_of(&m, "sapllm-model"));
    let node = m["resolve"]["nodes"].as_array_mut().unwrap().iter_mut().find(|n| n["id"] == sap).unwrap();
    node["deps"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"pkg": model, "dep_kinds": [{"kind": null, "target": null}]}));
    let v = violations(&m);
    assert!(v.iter().any(|s| s.starts_with("sapllm-sap depends on candle-core")), "{v:?}");
    assert!(v.iter().any(|s| s.starts_with("sapllm-sap depends on sapllm-model")), "{v:?}");
}
