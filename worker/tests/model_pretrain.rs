// Pretraining: a short run writes a loadable HF-layout base + tokenizer, and an interrupted run
// resumes to exactly the weights of an uninterrupted one.

use std::path::Path;

use candle_core::{Device, Tensor};
use sapllm_model::config::Preset;
use sapllm_model::hf_io::load_model;
use sapllm_model::linear::Precision;
use sapllm_model::mixtral::ModelOptions;
use sapllm_model::tokenizer::Tokenizer;
use sapllm_worker::pretrain::{PretrainConfig, run};
use sapllm_worker::progress::ProgressMode;

fn corpus(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("corpus.jsonl");
    let lines: Vec<String> = (0..120)
        .map(|i| {
            serde_json::json!({"text": format!("Invoice {i} from vendor ACME-{} goes to accounts payable, company code 10{}.", i % 5, i % 3)})
                .to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

fn config(dir: &Path, out: &str) -> PretrainConfig {
    PretrainConfig {
        steps: 4,
        batch_size: 2,
        seq_len: 32,
        warmup_steps: 1,
        vocab_size: 320,
        checkpoint_every: 100,
        ..PretrainConfig::new(corpus(dir), dir.join(out), Preset::Tiny)
    }
}

#[test]
fn pretrain_writes_a_base_that_loads_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let full = run(&config(dir.path(), "full"), ProgressMode::Quiet).unwrap();
    assert!(full.complete);
    assert_eq!(full.steps, 4);
    assert!(full.first_loss.is_finite() && full.final_loss.is_finite());
    let out = dir.path().join("full");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "pretrain_report.json",
        "pretrain_loss.png",
    ] {
        assert!(out.join(f).exists(), "missing {f}");
    }
    assert!(!out.join("checkpoint").exists());
    // The QLoRA stages load it like a downloaded model.
    let tok = Tokenizer::from_dir(&out).unwrap();
    let m = load_model(&out, &ModelOptions { precision: Precision::Nf4, ..Default::default() }, &Device::Cpu)
        .unwrap();
    assert_eq!(m.cfg.vocab_size, tok.vocab_size());
    assert_eq!(m.cfg.eos_token_id, Some(tok.eos_id));

    // Interrupted after 2 steps, then resumed: same weights as the uninterrupted run.
    let cfg = PretrainConfig { max_steps_this_run: Some(2), ..config(dir.path(), "split") };
    let half = run(&cfg, ProgressMode::Quiet).unwrap();
    assert!(!half.complete);
    assert!(dir.path().join("split/checkpoint/state.json").exists());
    let done = run(&config(dir.path(), "split"), ProgressMode::Quiet).unwrap();
    assert!(done.complete);
    assert_eq!(done.steps, 4);
    let a = load_model(&out, &ModelOptions::default(), &Device::Cpu).unwrap();
    let b = load_model(&dir.path().join("split"), &ModelOptions::default(), &Device::Cpu).unwrap();
    let ids = Tensor::new(&[[5u32, 9, 30, 7, 100]], &Device::Cpu).unwrap();
    let la = a.forward(&ids, None).unwrap().logits;
    let lb = b.forward(&ids, None).unwrap().logits;
    let d = (la - lb).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-6, "resumed run differs by {d}");
}

#[test]
fn empty_corpus_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.jsonl"), "\n\n").unwrap();
    let cfg = PretrainConfig::new(dir.path().join("c.jsonl"), dir.path().join("o"), Preset::Tiny);
    let err = run(&cfg, ProgressMode::Quiet).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
}
