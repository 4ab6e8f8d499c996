//! The RL stage on the tiny preset: PPO raises the verifiable reward of a deliberately
//! under-trained SFT policy with the KL to it bounded; a killed run resumes to exactly the
//! adapter of an uninterrupted one; the guard rail stops an exploding run and keeps the last
//! good adapter.

mod rl_fixture;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::Device;
use sapllm_engine::profile::PromptProfile;
use sapllm_model::hf_io::load_model;
use sapllm_model::linear::Precision;
use sapllm_model::mixtral::{Mixtral, ModelOptions};
use sapllm_model::peft::load_adapter;
use sapllm_model::tokenizer::Tokenizer;
use sapllm_sap::catalog::Catalog;
use sapllm_worker::progress::ProgressMode;
use sapllm_worker::rl::eval::EvalStats;
use sapllm_worker::rl::log::IterLog;
use sapllm_worker::rl::reward::RewardWeights;
use sapllm_worker::rl::rollout::{PromptFit, SampleSettings, load_problems, sample};
use sapllm_worker::rl::{RlConfig, run};
use sapllm_worker::train::data::read_jsonl;

struct Shared {
    _dir: tempfile::TempDir,
    fx: rl_fixture::Fixture,
}

fn fixture() -> &'static rl_fixture::Fixture {
    static F: OnceLock<Shared> = OnceLock::new();
    &F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let fx = rl_fixture::build(dir.path(), rl_fixture::BASE_STEPS, rl_fixture::SFT_STEPS, 1e-3, 7);
        Shared { _dir: dir, fx }
    })
    .fx
}

fn config(fx: &rl_fixture::Fixture, out: PathBuf) -> RlConfig {
    let mut c = RlConfig::new(fx.base.clone(), fx.sft_adapter.clone(), fx.data.clone(), out);
    c.precision = Precision::F32;
    c.learning_rate = 1e-4;
    c.batch_size = 8;
    c.mini_batch_size = 4;
    c.ppo_epochs = 2;
    c.max_new_tokens = 64;
    c.max_seq_len = 512;
    c.eval_samples = 0;
    c.progress = ProgressMode::Quiet;
    c
}

fn policy(fx: &rl_fixture::Fixture, adapter: &Path) -> Mixtral {
    let opts = ModelOptions { precision: Precision::F32, ..ModelOptions::default() };
    let mut m = load_model(&fx.base, &opts, &Device::Cpu).unwrap();
    load_adapter(&mut m, adapter).unwrap();
    m
}

/// Mean reward of 4 sampled answers (temperature 0.7, fixed seed) to each of 12 training
/// problems: the quantity PPO maximises, estimated on a fixed set so before and after compare.
fn expected_reward(fx: &rl_fixture::Fixture, adapter: &Path) -> EvalStats {
    let tok = Tokenizer::from_dir(&fx.base).unwrap();
    let catalog = Catalog::builtin();
    let fit = PromptFit {
        max_seq_len: 512,
        max_new_tokens: 64,
        max_positions: 1024,
        profile: PromptProfile::default(),
    };
    let (problems, _) = load_problems(&fx.data, "train", &catalog, &tok, &fit).unwrap();
    let model = policy(fx, adapter);
    let mut all = Vec::new();
    for round in 0..4u64 {
        let which: Vec<usize> = (0..problems.len().min(12)).collect();
        let s = SampleSettings { max_new_tokens: 64, temperature: 0.7, seed: 1000 + round };
        all.extend(sample(&model, &tok, &catalog, &RewardWeights::default(), &problems, &which, &s).unwrap());
    }
    EvalStats::of(&all)
}

fn history(out: &Path) -> Vec<IterLog> {
    read_jsonl(&out.join("history.jsonl")).unwrap()
}

#[test]
fn ppo_raises_the_reward_of_an_under_trained_sft_policy_with_bounded_kl() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ppo");
    let mut cfg = config(fx, out.clone());
    cfg.iterations = 6;
    let summary = run(&cfg).expect("PPO runs");
    assert!(summary.completed);
    assert_eq!(summary.iterations, 6);

    let before = expected_reward(fx, &fx.sft_adapter);
    let after = expected_reward(fx, &summary.adapter_dir);
    eprintln!("before {before:?}\nafter {after:?}");
    assert!(before.api_accuracy < 0.9, "the fixture must leave room to improve: {before:?}");
    assert!(
        after.mean_reward > before.mean_reward + 0.03,
        "PPO should raise the expected reward: {:.3} -> {:.3}",
        before.mean_reward,
        after.mean_reward
    );
    assert!(after.api_accuracy > before.api_accuracy, "and the API accuracy: {before:?} -> {after:?}");

    let h = history(&out);
    assert_eq!(h.len(), 6);
    for it in &h {
        let (r, a, ru, c) = (
            it.reward.unwrap(),
            it.reward_api.unwrap(),
            it.reward_rules.unwrap(),
            it.reward_calibration.unwrap(),
        );
        assert!(
            (r - (0.7 * a + 0.2 * ru + 0.1 * c)).abs() < 1e-9,
            "the total is the weighted sum of its parts: {it:?}"
        );
        assert!(it.kl.is_finite() && it.kl < 5.0, "KL stays bounded: {it:?}");
        assert!(it.value_loss.is_some() && it.clip_fraction.is_some() && it.entropy.is_some());
    }
    assert_eq!(h[0].kl, 0.0, "the first rollouts come from the reference policy itself");
    for f in [
        "history.jsonl",
        "reward_curve.png",
        "kl_curve.png",
        "rl_summary.json",
        "adapter/adapter_config.json",
    ] {
        assert!(out.join(f).exists(), "{f} is written");
    }
    assert!(
        out.join("adapter").join(sapllm_engine::profile::PROFILE_FILE).exists(),
        "the prompt profile travels with the adapter"
    );
}

#[test]
fn a_killed_run_resumes_to_the_adapter_of_an_uninterrupted_one() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut straight = config(fx, dir.path().join("straight"));
    straight.iterations = 3;
    straight.checkpoint_interval = 1;
    run(&straight).unwrap();

    let mut killed = config(fx, dir.path().join("killed"));
    killed.iterations = 3;
    killed.checkpoint_interval = 1;
    killed.stop_after = Some(2);
    let first = run(&killed).unwrap();
    assert!(!first.completed);
    killed.stop_after = None;
    let resumed = run(&killed).unwrap();
    assert_eq!(resumed.resumed_from_iteration, Some(2));
    assert!(resumed.completed);

    let a = std::fs::read(dir.path().join("straight/adapter/adapter_model.safetensors")).unwrap();
    let b = std::fs::read(dir.path().join("killed/adapter/adapter_model.safetensors")).unwrap();
    assert!(a == b, "resume reproduces the uninterrupted adapter bit for bit");
    assert_eq!(history(&dir.path().join("straight")), history(&dir.path().join("killed")));

    let mut other = killed.clone();
    other.learning_rate = 2e-4;
    other.iterations = 4;
    let err = run(&other).unwrap_err().to_string();
    assert!(err.contains("different settings"), "{err}");
}

#[test]
fn exploding_kl_stops_the_run_and_keeps_the_last_good_adapter() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ppo");
    let mut cfg = config(fx, out.clone());
    cfg.iterations = 4;
    cfg.checkpoint_interval = 1;
    // A learning rate that wrecks the policy in one iteration, and a KL ceiling it must hit.
    cfg.learning_rate = 0.05;
    cfg.max_kl = 0.5;
    let err = format!("{:#}", run(&cfg).unwrap_err());
    assert!(err.contains("KL to the reference exploded") || err.contains("non-finite"), "{err}");
    assert!(err.contains("last_good_adapter"), "the message names the kept adapter: {err}");
    assert!(out.join("last_good_adapter/adapter_model.safetensors").exists());
    assert!(!out.join("adapter").exists(), "no final adapter from a stopped run");
}

#[test]
fn bad_settings_are_rejected_naming_the_setting() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(fx, dir.path().join("x"));
    cfg.mini_batch_size = 3;
    let err = run(&cfg).unwrap_err().to_string();
    assert!(err.contains("ppo.miniBatchSize"), "{err}");
    let mut cfg = config(fx, dir.path().join("x"));
    cfg.reward_weights.api = -1.0;
    let err = run(&cfg).unwrap_err().to_string();
    assert!(err.contains("ppo.rewardWeights.api"), "{err}");
    let mut cfg = config(fx, dir.path().join("x"));
    cfg.sft_adapter = dir.path().join("missing");
    let err = run(&cfg).unwrap_err().to_string();
    assert!(err.contains("run the sft stage first"), "{err}");
}

#[test]
fn grpo_and_dpo_train_the_same_adapter_and_report_their_own_metrics() {
    let fx = fixture();
    let dir = tempfile::tempdir().unwrap();

    let mut grpo = config(fx, dir.path().join("grpo"));
    grpo.algorithm = sapllm_worker::rl::RlAlgorithm::Grpo;
    grpo.iterations = 2;
    grpo.batch_size = 2;
    grpo.mini_batch_size = 1;
    grpo.group_size = 4;
    let s = run(&grpo).expect("GRPO runs");
    assert!(s.completed && s.first_reward.is_some());
    for it in history(&dir.path().join("grpo")) {
        assert!(it.reward.is_some() && it.clip_fraction.is_some());
        assert!(it.value_loss.is_none(), "GRPO has no value head");
        assert!(it.kl.is_finite());
    }

    let mut dpo = config(fx, dir.path().join("dpo"));
    dpo.algorithm = sapllm_worker::rl::RlAlgorithm::Dpo;
    dpo.iterations = 2;
    // One mini-batch per iteration: the first is scored before any update.
    dpo.batch_size = 2;
    dpo.mini_batch_size = 2;
    dpo.kl_coef = 0.1;
    let s = run(&dpo).expect("DPO runs");
    assert!(s.completed && s.first_reward.is_none(), "DPO samples nothing");
    let h = history(&dir.path().join("dpo"));
    assert_eq!(h[0].kl, 0.0, "before the first step the policy is the reference");
    assert!(
        (h[0].policy_loss - std::f64::consts::LN_2).abs() < 1e-4,
        "the first DPO loss is -log sigmoid(0) = ln 2, got {}",
        h[0].policy_loss
    );
    for it in &h {
        assert!(it.preference_accuracy.is_some() && it.reward.is_none());
    }
    assert!(dir.path().join("dpo/adapter/adapter_model.safetensors").exists());
    assert!(dir.path().join("dpo/reward_curve.png").exists());
}
