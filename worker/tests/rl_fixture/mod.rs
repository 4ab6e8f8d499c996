//! A fast RL fixture on the tiny preset: a compact routing dataset, a BPE trained on it, a
//! random tiny base and a deliberately under-trained SFT adapter.
//!
//! The dataset is data-prep's own output cut down so that a CPU debug test can afford it:
//! one document type, the candidates' schemas and the similar cases dropped (SFT's own
//! shortening drops them too), a one-field document, no payload (the answer is an endpoint,
//! an empty reasoning list and a confidence). Everything RL touches is the real thing: the
//! template, the rules validator, the reward, the sampler, the trainer.
//!
//! "Under-trained" is measured, not assumed (and re-measured whenever the prompt or the answer
//! format change). With the candidates listed by endpoint only (no document types in the prompt),
//! 40 warm-up steps leave the policy parsing 17 % of its answers, 60 give 96 % right
//! endpoints and no room to improve, 50 give 58 % right (parse rate 58 %, reward 0.133) that
//! six PPO iterations raise to 60 % (reward 0.167): after [`BASE_STEPS`] warm-up steps and a
//! couple of SFT steps the policy garbles about four answers in ten at temperature 0.7, with
//! enough entropy that one document gets both right and wrong answers. A few more warm-up
//! steps make it near-deterministic per document, and PPO then has nothing to compare and no
//! progress to show.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use candle_core::Device;
use sapllm_engine::format::routing_training_pair;
use sapllm_model::config::{MixtralConfig, Preset};
use sapllm_model::linear::{LoraConfig, Precision};
use sapllm_model::loss::causal_lm_loss;
use sapllm_model::mixtral::{Mixtral, ModelOptions};
use sapllm_model::optim::{AdamW, AdamWConfig, LrSchedule};
use sapllm_model::tokenizer::Tokenizer;
use sapllm_model::{SaveOptions, save_model};
use sapllm_sap::catalog::Catalog;
use sapllm_worker::dataprep::{self, DataPrepConfig, RoutingExample};
use sapllm_worker::progress::ProgressMode;
use sapllm_worker::train::batcher::{collate, epoch_batches};
use sapllm_worker::train::data::read_jsonl;
use sapllm_worker::train::sft::{self, SftConfig};

/// One document type: the tiny model learns the answer's shape and endpoint in a minute of debug
/// CPU, where the doc-type-to-endpoint mapping of several types would take many more steps.
/// Full-parameter warm-up steps of the base.
pub const BASE_STEPS: usize = 50;
/// SFT steps of the adapter.
pub const SFT_STEPS: u64 = 2;

pub const DOC_TYPES: [&str; 1] = ["purchase_order"];

/// Paths of a prepared fixture.
pub struct Fixture {
    pub dir: PathBuf,
    pub data: PathBuf,
    pub base: PathBuf,
    pub sft_adapter: PathBuf,
}

fn compact(mut ex: RoutingExample) -> RoutingExample {
    // The target's candidate and one distractor, in data-prep's order.
    let target = ex.target_endpoint.clone();
    let mut others = 0;
    ex.api_schemas.retain(|c| {
        let keep = c.endpoint == target || others == 0;
        others += usize::from(keep && c.endpoint != target);
        keep
    });
    for c in &mut ex.api_schemas {
        c.schema.clear();
    }
    ex.similar_cases.clear();
    let title = ex.adc_json.get("document_title").cloned().unwrap_or_default();
    ex.adc_json = serde_json::json!({ "document_title": title });
    ex.target_payload = serde_json::Value::Null;
    ex.reasoning_trace.clear();
    ex
}

fn write_jsonl(path: &Path, rows: &[RoutingExample]) {
    let mut s = String::new();
    for r in rows {
        s.push_str(&serde_json::to_string(r).unwrap());
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

/// Builds data, tokenizer, base and an SFT adapter trained for `sft_steps` steps.
pub fn build(dir: &Path, base_steps: usize, sft_steps: u64, sft_lr: f64, seed: u64) -> Fixture {
    let full = dir.join("full");
    let cfg = DataPrepConfig {
        examples: 600,
        seed,
        k_similar: 0,
        output_dir: full.clone(),
        progress: ProgressMode::Quiet,
        ..DataPrepConfig::default()
    };
    dataprep::run(&cfg).expect("data-prep");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let catalog = Catalog::builtin();
    let mut corpus = Vec::new();
    for split in ["train", "val"] {
        let rows: Vec<RoutingExample> =
            read_jsonl(&full.join(format!("{split}_routing_examples.jsonl"))).expect("examples");
        // As many examples of each document type (the smallest count): a base that has not
        // yet learnt the mapping then spreads its choice over the endpoints instead of
        // collapsing onto the majority one, so sampling explores every answer.
        let of = |t: &str| rows.iter().filter(|r| r.doc_type == t).count();
        let per_type = DOC_TYPES.iter().map(|t| of(t)).min().unwrap_or(0);
        let mut taken = [0usize; DOC_TYPES.len()];
        let rows: Vec<RoutingExample> = rows
            .into_iter()
            .filter(|r| match DOC_TYPES.iter().position(|t| *t == r.doc_type) {
                Some(i) if taken[i] < per_type => {
                    taken[i] += 1;
                    true
                }
                _ => false,
            })
            .map(compact)
            .collect();
        for r in &rows {
            let (p, a) = routing_training_pair(&catalog, r, &Default::default()).unwrap();
            corpus.push(p);
            corpus.push(a);
        }
        write_jsonl(&data.join(format!("{split}_routing_examples.jsonl")), &rows);
    }
    std::fs::copy(full.join("preference_pairs.jsonl"), data.join("preference_pairs.jsonl")).unwrap();

    let tok = Tokenizer::train_bpe(corpus.iter(), 512).expect("bpe");
    let mcfg = MixtralConfig::preset(Preset::Tiny, tok.vocab_size());
    let opts = ModelOptions { seed, train_base: true, precision: Precision::F32, ..ModelOptions::default() };
    let model = Mixtral::new_random(&mcfg, &opts, &Device::Cpu).unwrap();
    warm_up(&model, &tok, &data, base_steps, seed);
    let base = dir.join("base");
    save_model(&model, &base, &SaveOptions::default()).unwrap();
    tok.save(&base).unwrap();

    let sft_out = dir.join("sft");
    let sft_cfg = SftConfig {
        prompt: Default::default(),
        base_model: base.clone(),
        data_dir: data.clone(),
        out_dir: sft_out.clone(),
        lora: LoraConfig {
            r: 16,
            alpha: 32.0,
            dropout: 0.0,
            target_modules: ["q_proj", "k_proj", "v_proj", "o_proj", "w1", "w2", "w3"]
                .map(String::from)
                .to_vec(),
        },
        precision: Precision::F32,
        epochs: 1000,
        learning_rate: sft_lr,
        batch_size: 8,
        gradient_accumulation: 1,
        max_steps: Some(sft_steps),
        warmup_ratio: 0.0,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
        max_seq_len: 512,
        gradient_checkpointing: false,
        checkpoint_interval: 100_000,
        seed,
        stop_after: None,
        adapter_layout: Default::default(),
        progress: ProgressMode::Quiet,
    };
    sft::run(&sft_cfg).expect("sft");
    Fixture { dir: dir.to_path_buf(), data, base, sft_adapter: sft_out.join("adapter") }
}

/// Full-parameter training of the random base on the answers (what the pretrain stage does
/// for a from-scratch preset, on the response tokens only): a few steps teach the answer's
/// shape long before they teach which endpoint fits which document.
fn warm_up(model: &Mixtral, tok: &Tokenizer, data: &Path, steps: usize, seed: u64) {
    let catalog = Catalog::builtin();
    let d = sapllm_worker::train::data::load(data, "train", &catalog, tok, 512, &Default::default()).unwrap();
    let vars = model.trainable_vars();
    let cfg = AdamWConfig { schedule: LrSchedule::constant(3e-3), ..AdamWConfig::default() };
    let mut opt = AdamW::new(vars, cfg).unwrap();
    let lengths: Vec<usize> = d.sequences.iter().map(|s| s.ids.len()).collect();
    let mut batches = Vec::new();
    let mut epoch = 0;
    while batches.len() < steps {
        batches.extend(epoch_batches(&lengths, 8, seed, epoch));
        epoch += 1;
    }
    for idx in batches.iter().take(steps) {
        let seqs: Vec<(&[u32], &[u8])> = idx
            .iter()
            .map(|&i| (d.sequences[i].ids.as_slice(), d.sequences[i].loss_mask.as_slice()))
            .collect();
        let b = collate(&seqs, tok.pad_id, &Device::Cpu).unwrap();
        let (_, grads) = model
            .forward_backward(&b.input_ids, Some(&b.attention_mask), &mut |out| {
                causal_lm_loss(&out.logits, &b.input_ids, Some(&b.loss_mask))
            })
            .unwrap();
        opt.step(&grads).unwrap();
    }
}
