//! The local pipeline on a very small version of the embedded default: every stage runs from the
//! TrainingRun manifest, the losses fall, every report file is written, a re-run skips finished
//! stages, and a killed SFT resumes to exactly the adapter of an uninterrupted run.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::Device;
use sapllm_crds::StageName;
use sapllm_worker::driver::stages::{RunContext, sft_config};
use sapllm_worker::driver::{run_all, run_stage};
use sapllm_worker::progress::ProgressMode;
use sapllm_worker::train::sft;

const MANIFEST: &str = r#"
apiVersion: sapllm.io/v1alpha1
kind: TrainingRun
metadata: {name: ci-tiny}
spec:
  baseModel: {preset: tiny}
  storage: {claimName: artifacts}
  stages:
    dataPrep: {examples: 160, similarCases: 1, seed: 7}
    pretrain: {steps: 12, batchSize: 4, sequenceLength: 128, learningRate: 0.003, checkpointInterval: 6}
    sft:
      epochs: 1
      maxSteps: 12
      batchSize: 2
      gradientAccumulation: 2
      learningRate: 0.01
      warmupRatio: 0.0
      maxSequenceLength: 1024
      checkpointInterval: 2
      gradientCheckpointing: false
      lora: {r: 4, alpha: 8, dropout: 0.1, targetModules: [q_proj, v_proj, w1, gate]}
    ppo: {enabled: false}
    evaluation: {samples: 4}
"#;

struct Fixture {
    _dir: tempfile::TempDir,
    manifest: PathBuf,
    run_dir: PathBuf,
}

/// One full run, shared by the tests of this file (it is the expensive part).
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("run.yaml");
        std::fs::write(&manifest, MANIFEST).unwrap();
        let run_dir = dir.path().join("runs/ci-tiny");
        let ctx = RunContext::from_manifest(&manifest, Some(run_dir.clone()), ProgressMode::Quiet).unwrap();
        let out = run_all(&ctx).expect("the whole pipeline runs");
        assert!(out.verdict.is_some(), "the evaluation stage gives a verdict");
        Fixture { _dir: dir, manifest, run_dir }
    })
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

#[test]
fn every_stage_writes_its_outputs_and_losses_fall() {
    let f = fixture();
    let r = &f.run_dir;
    for file in [
        "data/train_routing_examples.jsonl",
        "data/test_routing_examples.jsonl",
        "data/exception_examples.jsonl",
        "data/preference_pairs.jsonl",
        "pretrain/model/config.json",
        "pretrain/model/tokenizer.json",
        "sft/adapter/adapter_config.json",
        "sft/adapter/adapter_model.safetensors",
        "sft/loss_curve.png",
        "sft/loss_history.jsonl",
        "evaluation/EVALUATION_REPORT.md",
        "evaluation/metrics.json",
        "evaluation/detailed_results.jsonl",
        "evaluation/accuracy_metrics.png",
        "evaluation/accuracy_by_doc_type.png",
        "evaluation/coverage_curve.png",
    ] {
        assert!(r.join(file).is_file(), "{file} is missing");
    }
    // Per-step losses are of different batches and swing with their mix (exception decisions
    // are short): SFT must lower the loss of the same held-out sequences.
    let history = std::fs::read_to_string(r.join("sft/loss_history.jsonl")).unwrap();
    assert_eq!(history.lines().count(), 12, "one loss per step");
    let sft = read_json(&r.join("sft/sft_summary.json"));
    let held = &sft["held_out"];
    assert!(held["sequences"].as_u64().unwrap() > 0, "{sft}");
    let (base, adapted) = (held["base_loss"].as_f64().unwrap(), held["adapter_loss"].as_f64().unwrap());
    assert!(adapted < base, "SFT must lower the held-out loss: {base} -> {adapted}");
    let pre = read_json(&r.join("pretrain/model/pretrain_report.json"));
    assert!(
        pre["final_loss"].as_f64().unwrap() < pre["first_loss"].as_f64().unwrap(),
        "pretrain loss must fall"
    );
    let metrics = read_json(&r.join("evaluation/metrics.json"));
    assert_eq!(metrics["summary"]["metrics"]["samples"], 4);
    assert!(metrics["model_version"].as_str().unwrap().starts_with("sha256:"));
    let details = std::fs::read_to_string(r.join("evaluation/detailed_results.jsonl")).unwrap();
    assert!(details.lines().count() >= 4, "one line per scored decision");
    let eval = read_json(&r.join("evaluation/stage_result.json"));
    assert!(eval["result"]["artifacts"]["modelVersion"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(
        eval["result"]["artifacts"]["sftAdapter"], "ci-tiny/sft/adapter",
        "paths relative to the volume root"
    );
}

#[test]
fn a_rerun_skips_finished_stages_and_a_settings_change_reruns_from_there() {
    let f = fixture();
    let ctx = RunContext::from_manifest(&f.manifest, Some(f.run_dir.clone()), ProgressMode::Quiet).unwrap();
    let (_, skipped) = run_stage(&ctx, StageName::DataPrep).unwrap();
    assert!(skipped, "same settings: data-prep is not redone");
    let mut changed = ctx.run.clone();
    changed.spec.stages.sft.learning_rate = 0.001;
    let digests_before = ctx.digests();
    let ctx2 = RunContext {
        run: changed,
        run_dir: f.run_dir.clone(),
        manifest_dir: ctx.manifest_dir.clone(),
        progress: ProgressMode::Quiet,
    };
    let digests_after = ctx2.digests();
    for ((stage, before), (_, after)) in digests_before.iter().zip(&digests_after) {
        let should_change = *stage >= StageName::Sft;
        assert_eq!(before != after, should_change, "{stage:?}: digests before/after an SFT change");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Editing a finished run re-runs from the edited stage, and that stage succeeds: the outputs of
/// the old settings (checkpoints included) are moved aside, not resumed from or refused.
#[test]
fn an_edited_finished_run_reruns_the_changed_stage_to_success() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("ci-tiny");
    copy_dir(&f.run_dir, &run_dir);
    let mut ctx = RunContext::from_manifest(&f.manifest, Some(run_dir.clone()), ProgressMode::Quiet).unwrap();
    ctx.run.spec.stages.sft.max_steps = Some(4);
    assert!(run_dir.join("sft/checkpoints").read_dir().unwrap().count() > 0, "the old run left checkpoints");
    let (result, skipped) = run_stage(&ctx, StageName::Sft).expect("the edited SFT runs");
    assert!(!skipped && result.succeeded);
    let history = std::fs::read_to_string(run_dir.join("sft/loss_history.jsonl")).unwrap();
    assert_eq!(history.lines().count(), 4, "the new settings' steps, not a resume of the old run");
    let superseded: Vec<String> = std::fs::read_dir(run_dir.join("superseded"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(superseded.iter().any(|n| n.starts_with("sft-")), "{superseded:?}");
    assert!(superseded.iter().any(|n| n.starts_with("evaluation-")), "later stages go too: {superseded:?}");
    assert!(!run_dir.join("evaluation").exists(), "no stale evaluation beside the new adapter");
    assert!(run_dir.join("data/train_routing_examples.jsonl").is_file(), "unchanged stages stay");
    // The same settings again: nothing is moved, the stage is current.
    let (_, skipped) = run_stage(&ctx, StageName::Sft).unwrap();
    assert!(skipped);
}

fn adapter_tensors(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let map = candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    let mut v: Vec<(String, Vec<f32>)> =
        map.into_iter().map(|(k, t)| (k, t.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn a_killed_sft_resumes_to_the_same_adapter() {
    let f = fixture();
    let ctx = RunContext::from_manifest(&f.manifest, Some(f.run_dir.clone()), ProgressMode::Quiet).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut whole = sft_config(&ctx);
    whole.out_dir = scratch.path().join("whole");
    let mut killed = whole.clone();
    killed.out_dir = scratch.path().join("killed");
    killed.stop_after = Some(3);

    let full = sft::run(&whole).unwrap();
    assert!(full.completed && full.resumed_from_step.is_none());
    let partial = sft::run(&killed).unwrap();
    assert!(!partial.completed, "stop_after simulates a kill");
    assert!(!killed.out_dir.join("adapter").exists(), "no final adapter after a kill");
    killed.stop_after = None;
    let resumed = sft::run(&killed).unwrap();
    assert_eq!(
        resumed.resumed_from_step,
        Some(2),
        "killed after step 3: resumes from the checkpoint of step 2"
    );
    assert_eq!(resumed.steps, full.steps);
    let a = adapter_tensors(&whole.out_dir.join("adapter"));
    let b = adapter_tensors(&killed.out_dir.join("adapter"));
    assert_eq!(a.len(), b.len());
    for ((ka, va), (kb, vb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        assert_eq!(va, vb, "{ka} differs after resume");
    }
}

/// `evaluate` of explicit artifacts (what an Evaluation that names its folders runs) reports the
/// model version in its termination message's artifacts: the operator has no other source for
/// the Evaluation's `status.modelVersion`. Without the contract's variable, nothing is written.
#[test]
fn evaluate_of_explicit_artifacts_reports_the_model_version() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("termination-log");
    let run = |with_log: bool| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_sapllm-worker"));
        c.args([
            "--progress",
            "quiet",
            "--device",
            "cpu",
            "evaluate",
            "--samples",
            "2",
            "--precision",
            "f32",
        ])
        .arg("--base-model")
        .arg(f.run_dir.join("pretrain/model"))
        .arg("--adapter")
        .arg(f.run_dir.join("sft/adapter"))
        .arg("--examples")
        .arg(f.run_dir.join("data/test_routing_examples.jsonl"))
        .arg("--out")
        .arg(dir.path().join("eval"))
        .env_remove("SAPLLM_TERMINATION_LOG");
        if with_log {
            c.env("SAPLLM_TERMINATION_LOG", &log);
        }
        let out = c.output().unwrap();
        assert!(out.status.code().is_some_and(|c| c <= 1), "{}", String::from_utf8_lossy(&out.stderr));
    };
    run(false);
    assert!(!log.exists(), "no termination message outside a pod");
    run(true);
    let result = read_json(&log);
    let version = result["artifacts"]["modelVersion"].as_str().unwrap_or_default();
    assert!(version.starts_with("sha256:") && version.len() == 71, "{result}");
    let metrics = read_json(&dir.path().join("eval/metrics.json"));
    assert_eq!(metrics["model_version"], version, "the report and the termination message agree");
}

/// `spec.stages.sft.adapterLayout: fused` (the manifest's `--adapter-layout fused`): SFT's final
/// adapter in transformers 5 / PEFT's fused-expert layout (`target_parameters`) is, as a model,
/// the per-expert checkpoint of the same step.
#[test]
fn sft_writes_the_fused_adapter_layout_when_asked() {
    use candle_core::{DType, Tensor};
    use sapllm_model::hf_io::load_model;
    use sapllm_model::mixtral::ModelOptions;
    use sapllm_model::peft::{AdapterLayout, load_adapter};

    let f = fixture();
    let mut ctx =
        RunContext::from_manifest(&f.manifest, Some(f.run_dir.clone()), ProgressMode::Quiet).unwrap();
    assert_eq!(sft_config(&ctx).adapter_layout, AdapterLayout::PerExpert, "the default");
    ctx.run.spec.stages.sft.adapter_layout = sapllm_crds::AdapterLayout::Fused;
    let scratch = tempfile::tempdir().unwrap();
    let mut cfg = sft_config(&ctx);
    assert_eq!(cfg.adapter_layout, AdapterLayout::Fused, "from the manifest");
    cfg.out_dir = scratch.path().join("fused");
    cfg.max_steps = Some(2);
    assert!(sft::run(&cfg).unwrap().completed);
    let adapter = cfg.out_dir.join("adapter");
    let c = read_json(&adapter.join("adapter_config.json"));
    // targetModules [q_proj, v_proj, w1, gate]: w1 is half of gate_up_proj, the router a parameter.
    assert_eq!(c["target_modules"], serde_json::json!(["q_proj", "v_proj"]));
    assert_eq!(c["target_parameters"], serde_json::json!(["gate.weight", "gate_up_proj"]));
    assert_eq!(c["lora_dropout"].as_f64(), Some(0.0), "PEFT refuses dropout on parameter targets");
    let w = candle_core::safetensors::load(adapter.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    assert!(w.contains_key("base_model.model.model.layers.0.mlp.experts.lora_A.weight"));
    assert!(w.contains_key("base_model.model.model.layers.0.mlp.gate.lora_B.weight"));
    assert!(!w.keys().any(|k| k.contains("block_sparse_moe")));

    let logits = |dir: &Path| {
        let mut m = load_model(&cfg.base_model, &ModelOptions::default(), &Device::Cpu).unwrap();
        load_adapter(&mut m, dir).unwrap();
        let v = m.cfg.vocab_size as u32;
        let ids =
            Tensor::from_vec((0..16u32).map(|i| (i * 37 + 5) % v).collect(), (1, 16), &Device::Cpu).unwrap();
        m.forward(&ids, None).unwrap().logits.to_dtype(DType::F32).unwrap()
    };
    let ckpt = cfg.out_dir.join("checkpoints/checkpoint-00000002/adapter");
    let d = (logits(&adapter) - logits(&ckpt))
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(d, 0.0, "fused final adapter vs per-expert checkpoint");

    // The flag: a wrong value is refused by name.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sapllm-worker"))
        .args(["sft", "--adapter-layout", "stacked", "-f"])
        .arg(&f.manifest)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("per-expert or fused"), "{err}");
}
