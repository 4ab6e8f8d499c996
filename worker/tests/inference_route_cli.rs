//! `sapllm-worker route FILE` end to end: a checkpoint directory on disk (loaded at int8, the
//! serving default), a JSONL file mixing routing and exception requests, decisions on stdout.

use std::process::Command;

use sapllm_worker::testkit::{sample_exception, sample_queries, write_tiny_model};

#[test]
fn route_cli_decides_every_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_tiny_model(&model, 3).unwrap();
    let queries = sample_queries(2, 3);
    let mut lines: Vec<String> = queries
        .iter()
        .map(|q| serde_json::json!({"doc_type": q.doc_type, "adc_json": q.adc_json}).to_string())
        .collect();
    lines.push(serde_json::to_string(&sample_exception(&queries[0])).unwrap());
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sapllm-worker"))
        .args([
            "route",
            input.to_str().unwrap(),
            "--base-model",
            model.to_str().unwrap(),
            "--precision",
            "int8",
        ])
        .args(["--abstain-threshold", "0.0", "--max-new-tokens", "1500"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "route failed: {stderr}\n{stdout}");
    let decisions: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(decisions.len(), 3, "{decisions:?}");
    assert!(decisions[0]["endpoint"].is_string() && decisions[1]["endpoint"].is_string());
    assert!(decisions[2]["action"].is_string(), "the third line is an exception: {}", decisions[2]);
    assert!(stderr.contains("forced"), "the token summary is printed: {stderr}");
}
