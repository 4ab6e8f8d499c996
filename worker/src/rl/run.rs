//! The RL stage's driver: [`run`] loads the policy and its reference, loads the problems,
//! resumes from the newest checkpoint, runs the iterations with their guard rails and
//! checkpoints, then saves the adapter and keeps it only when validation did not get worse.
//! Each of those steps is a function below, in that order.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Device};

use super::dpo::{self, PairSequences};
use super::eval::{EvalStats, evaluate};
use super::log::{IterLog, write_history};
use super::resume::{self, RlState};
use super::rollout::{Problem, PromptFit, load_problems};
use super::value_head::ValueHead;
use super::{RlAlgorithm, RlConfig, RlSummary, Session, grpo, ppo};
use crate::progress::Progress;
use sapllm_engine::profile::{PROFILE_FILE, PromptProfile};
use sapllm_model::hf_io::load_model;
use sapllm_model::mixtral::{Mixtral, ModelOptions};
use sapllm_model::optim::{AdamW, AdamWConfig, LrSchedule};
use sapllm_model::peft::{self, AdapterLayout};
use sapllm_model::tokenizer::Tokenizer;
use sapllm_sap::catalog::Catalog;

/// Runs (or resumes) the RL stage.
pub fn run(cfg: &RlConfig) -> Result<RlSummary> {
    cfg.check()?;
    let device = sapllm_model::device::selected();
    let tok = Tokenizer::from_dir(&cfg.base_model)
        .with_context(|| format!("loading the tokenizer of {}", cfg.base_model.display()))?;
    let catalog = Catalog::builtin();
    let (mut policy, reference) = load_policy_and_reference(cfg, &device)?;
    let data = load_data(cfg, &policy, &tok, &catalog)?;
    let value_head = match cfg.algorithm {
        RlAlgorithm::Ppo => Some(ValueHead::new(policy.config().hidden_size, &device)?),
        _ => None,
    };
    let ckpt_dir = cfg.out_dir.join("checkpoints");
    let latest = resume::list(&ckpt_dir)?.pop();
    let mut state = resume_state(cfg, latest.as_deref(), &mut policy, value_head.as_ref())?;
    let opt = optimizer(cfg, &policy, value_head.as_ref(), latest.as_deref())?;
    let resumed_from = latest.as_ref().map(|_| state.iteration);
    let eval_batch = cfg.batch_size.max(1);
    if state.before.is_none() && !data.val.is_empty() {
        // The reference IS the starting policy.
        state.before = Some(evaluate(
            &reference,
            &tok,
            &catalog,
            &cfg.reward_weights,
            &data.val,
            eval_batch,
            cfg.max_new_tokens,
        )?);
    }

    let Data { problems, skipped, pairs, val, fit } = data;
    let mut sess = Session { cfg, tok, catalog, problems, policy, reference, value_head, opt, pairs };
    let mut progress = Progress::new(cfg.progress, sapllm_crds::StageName::Ppo, cfg.iterations);
    progress.resume_from(state.iteration);
    progress.println(&format!(
        "{:?}: {} training problems ({} skipped as too long), {} validation, {} iterations{}",
        cfg.algorithm,
        sess.problems.len(),
        skipped,
        val.len(),
        cfg.iterations,
        resumed_from.map(|s| format!(", resuming at iteration {s}")).unwrap_or_default()
    ));
    let completed = iterate(&mut sess, &mut state, &mut progress, &ckpt_dir, &fit.profile)?;
    if !completed {
        return Ok(summary(cfg, &state, sess.problems.len(), None, resumed_from, false));
    }
    finish(&sess, &state, &val, &fit.profile, resumed_from, &mut progress)
}

/// The policy (base + the SFT adapter as its trainable LoRA) and the reference (a shallow clone
/// with the SFT adapter loaded again as separate, never-updated tensors).
fn load_policy_and_reference(cfg: &RlConfig, device: &Device) -> Result<(Mixtral, Mixtral)> {
    ensure!(
        cfg.sft_adapter.join("adapter_config.json").exists(),
        "the SFT adapter {} does not exist: run the sft stage first",
        cfg.sft_adapter.display()
    );
    let (sft_lora, _) = peft::read_adapter_config(&cfg.sft_adapter)?;
    let opts = ModelOptions {
        precision: cfg.precision,
        dtype: DType::F32,
        lora: Some(sft_lora),
        seed: cfg.seed,
        ..ModelOptions::default()
    };
    let mut policy = load_model(&cfg.base_model, &opts, device)
        .with_context(|| format!("loading the base model {}", cfg.base_model.display()))?;
    peft::load_adapter(&mut policy, &cfg.sft_adapter)?;
    let mut reference = policy.clone();
    // Fresh tensors for the reference: the optimizer only ever sees the policy's.
    peft::load_adapter(&mut reference, &cfg.sft_adapter)?;
    policy.set_training(false);
    Ok((policy, reference))
}

/// What the iterations train and validate on.
struct Data {
    problems: Vec<Problem>,
    /// Training problems left out as too long.
    skipped: usize,
    /// DPO's preference pairs (empty for PPO and GRPO).
    pairs: Vec<PairSequences>,
    val: Vec<Problem>,
    fit: PromptFit,
}

/// Problems rendered exactly as SFT rendered its prompts (its profile is saved beside its
/// adapter), DPO's pairs, and the validation problems.
fn load_data(cfg: &RlConfig, policy: &Mixtral, tok: &Tokenizer, catalog: &Catalog) -> Result<Data> {
    let profile = if cfg.sft_adapter.join(PROFILE_FILE).exists() {
        PromptProfile::load(&cfg.sft_adapter)?
    } else {
        PromptProfile::load(&cfg.base_model)?
    };
    let max_pos = policy.config().max_position_embeddings;
    let fit = PromptFit {
        max_seq_len: cfg.max_seq_len,
        max_new_tokens: cfg.max_new_tokens,
        max_positions: max_pos,
        profile,
    };
    let (problems, skipped) = load_problems(&cfg.data_dir, "train", catalog, tok, &fit)?;
    let pairs = if cfg.algorithm == RlAlgorithm::Dpo {
        dpo::load_pairs(&cfg.data_dir, catalog, tok, cfg.max_seq_len, &fit.profile)?
    } else {
        ensure!(
            !problems.is_empty(),
            "no training problem fits (prompt + {} new tokens within {} and max sequence length {}): shorten the prompts or raise the limits",
            cfg.max_new_tokens,
            max_pos,
            cfg.max_seq_len
        );
        Vec::new()
    };
    let (val, _) = load_problems(&cfg.data_dir, "val", catalog, tok, &fit).unwrap_or_default();
    let val: Vec<Problem> = val.into_iter().take(cfg.eval_samples).collect();
    Ok(Data { problems, skipped, pairs, val, fit })
}

/// The run's state: fresh, or the newest checkpoint's (whose adapter and value head are loaded
/// into the policy), which must have been written with the same settings.
fn resume_state(
    cfg: &RlConfig,
    latest: Option<&Path>,
    policy: &mut Mixtral,
    value_head: Option<&ValueHead>,
) -> Result<RlState> {
    let digest = cfg.digest();
    let Some(ck) = latest else {
        return Ok(RlState { iteration: 0, history: Vec::new(), before: None, settings_digest: digest });
    };
    let state = resume::read_state(ck)?;
    if state.settings_digest != digest {
        bail!(
            "{} was written by an RL run with different settings; use another output directory or delete it",
            ck.display()
        );
    }
    resume::restore_adapter(ck, policy)?;
    if let Some(vh) = value_head {
        resume::restore_value_head(ck, vh)?;
    }
    Ok(state)
}

/// AdamW over the adapter (and the value head), restored from the checkpoint when resuming.
fn optimizer(
    cfg: &RlConfig,
    policy: &Mixtral,
    value_head: Option<&ValueHead>,
    latest: Option<&Path>,
) -> Result<AdamW> {
    let mut vars = policy.trainable_vars();
    ensure!(!vars.is_empty(), "the SFT adapter gave the policy nothing to train");
    if let Some(vh) = value_head {
        vars.extend(vh.vars());
    }
    let opt_cfg = AdamWConfig {
        schedule: LrSchedule::constant(cfg.learning_rate),
        weight_decay: 0.0,
        max_grad_norm: Some(cfg.max_grad_norm),
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(vars, opt_cfg)?;
    if let Some(ck) = latest {
        resume::restore_optimizer(ck, &mut opt)?;
    }
    Ok(opt)
}

/// Runs the iterations left, checkpointing every `checkpoint_interval` and at the end. Returns
/// whether every iteration ran (false when `stop_after` ended this process early). A guard trip
/// stops with an error after keeping the last good adapter.
fn iterate(
    sess: &mut Session<'_>,
    state: &mut RlState,
    progress: &mut Progress,
    ckpt_dir: &Path,
    profile: &PromptProfile,
) -> Result<bool> {
    let cfg = sess.cfg;
    let base_name = cfg.base_model.display().to_string();
    let mut here = 0u64;
    while state.iteration < cfg.iterations {
        let it = state.iteration;
        let outcome = match cfg.algorithm {
            RlAlgorithm::Ppo => ppo::iteration(sess, it),
            RlAlgorithm::Grpo => grpo::iteration(sess, it),
            RlAlgorithm::Dpo => dpo::iteration(sess, it),
        };
        let log = match outcome.and_then(|l| guard(cfg, l)) {
            Ok(l) => l,
            Err(e) => {
                let kept = keep_last_good(cfg, ckpt_dir, profile)?;
                write_history(&cfg.out_dir, &state.history).ok();
                return Err(e.context(format!(
                    "RL stopped at iteration {}; the last good adapter is {}",
                    it + 1,
                    kept.display()
                )));
            }
        };
        state.iteration += 1;
        here += 1;
        progress.update(state.iteration, &log.metrics());
        state.history.push(log);
        let at_end = state.iteration == cfg.iterations;
        if state.iteration.is_multiple_of(cfg.checkpoint_interval) || at_end {
            resume::save(
                ckpt_dir,
                &sess.policy,
                sess.value_head.as_ref(),
                &sess.opt,
                state,
                &base_name,
                profile,
            )?;
        }
        if cfg.stop_after.is_some_and(|n| here >= n) && !at_end {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Saves the adapter (with its prompt profile), scores it on validation, keeps the starting
/// adapter instead when the validation reward fell, and writes the history and summary.
fn finish(
    sess: &Session<'_>,
    state: &RlState,
    val: &[Problem],
    profile: &PromptProfile,
    resumed_from: Option<u64>,
    progress: &mut Progress,
) -> Result<RlSummary> {
    let cfg = sess.cfg;
    let adapter_dir = cfg.out_dir.join("adapter");
    let base_name = cfg.base_model.display().to_string();
    peft::save_adapter_as(&sess.policy, &adapter_dir, &base_name, cfg.adapter_layout)?;
    // Evaluation and serving read the profile beside the adapter they load.
    profile.save(&adapter_dir)?;
    let after = if val.is_empty() {
        None
    } else {
        Some(evaluate(
            &sess.policy,
            &sess.tok,
            &sess.catalog,
            &cfg.reward_weights,
            val,
            cfg.batch_size.max(1),
            cfg.max_new_tokens,
        )?)
    };
    // RL that made held-out answers worse is not kept: the stage's adapter stays the one it
    // started from (the validation reward is the same verifiable reward, greedy decoding).
    let kept_start = validation_got_worse(state.before.as_ref(), after.as_ref());
    if kept_start {
        if cfg.adapter_layout == AdapterLayout::PerExpert {
            copy_adapter(&cfg.sft_adapter, &adapter_dir, profile)?;
        } else {
            // The reference holds the starting adapter exactly: written in the asked layout.
            std::fs::remove_dir_all(&adapter_dir)?;
            peft::save_adapter_as(&sess.reference, &adapter_dir, &base_name, cfg.adapter_layout)?;
            profile.save(&adapter_dir)?;
        }
        progress.println(&format!(
            "validation reward fell ({:.3} -> {:.3}): keeping the starting adapter",
            state.before.as_ref().map_or(f64::NAN, |b| b.mean_reward),
            after.as_ref().map_or(f64::NAN, |a| a.mean_reward)
        ));
    }
    let mut out = summary(cfg, state, sess.problems.len(), after, resumed_from, true);
    out.kept_starting_adapter = kept_start;
    write_history(&cfg.out_dir, &state.history)?;
    std::fs::write(cfg.out_dir.join("rl_summary.json"), serde_json::to_vec_pretty(&out)?)?;
    let mut fin = vec![("kl", out.final_kl)];
    if let Some(a) = &out.after {
        fin.push(("val_reward", a.mean_reward));
        fin.push(("val_api_accuracy", a.api_accuracy));
    }
    progress.finish(&fin);
    Ok(out)
}

/// Guard rails: a non-finite reward or loss, or a KL beyond `max_kl`, stops the run.
fn guard(cfg: &RlConfig, log: IterLog) -> Result<IterLog> {
    if let Some(r) = log.reward
        && !r.is_finite()
    {
        bail!("the mean reward became {r}: check the reward weights and the data");
    }
    if !log.policy_loss.is_finite() || log.value_loss.is_some_and(|v| !v.is_finite()) {
        bail!(
            "the loss became non-finite (policy {}, value {:?}): lower ppo.learningRate",
            log.policy_loss,
            log.value_loss
        );
    }
    if !log.kl.is_finite() || log.kl > cfg.max_kl {
        bail!(
            "KL to the reference exploded ({:.3} nats per response > {}): lower ppo.learningRate or raise ppo.klPenalty",
            log.kl,
            cfg.max_kl
        );
    }
    Ok(log)
}

/// Copies the newest checkpoint's adapter (or the SFT adapter) to `last_good_adapter/`.
fn keep_last_good(cfg: &RlConfig, ckpt_dir: &Path, profile: &PromptProfile) -> Result<PathBuf> {
    let src = match resume::list(ckpt_dir)?.pop() {
        Some(ck) => resume::adapter_dir(&ck),
        None => cfg.sft_adapter.clone(),
    };
    let dst = cfg.out_dir.join("last_good_adapter");
    copy_adapter(&src, &dst, profile)?;
    Ok(dst)
}

/// Whether the held-out validation reward fell over the run (unknown counts as not).
fn validation_got_worse(before: Option<&EvalStats>, after: Option<&EvalStats>) -> bool {
    matches!((before, after), (Some(b), Some(a)) if a.mean_reward < b.mean_reward)
}

/// Replaces `dst` with the adapter files of `src` (and the prompt profile).
fn copy_adapter(src: &Path, dst: &Path, profile: &PromptProfile) -> Result<()> {
    if dst.exists() {
        std::fs::remove_dir_all(dst)?;
    }
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let p = entry?.path();
        if p.is_file() {
            std::fs::copy(&p, dst.join(p.file_name().expect("a file has a name")))?;
        }
    }
    profile.save(dst)
}

fn summary(
    cfg: &RlConfig,
    state: &RlState,
    train_problems: usize,
    after: Option<EvalStats>,
    resumed_from: Option<u64>,
    completed: bool,
) -> RlSummary {
    RlSummary {
        algorithm: cfg.algorithm,
        adapter_dir: cfg.out_dir.join("adapter"),
        iterations: state.iteration,
        train_problems,
        first_reward: state.history.first().and_then(|h| h.reward),
        final_reward: state.history.last().and_then(|h| h.reward),
        final_kl: state.history.last().map_or(0.0, |h| h.kl),
        before: state.before.clone(),
        after,
        resumed_from_iteration: resumed_from,
        completed,
        kept_starting_adapter: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(mean_reward: f64) -> EvalStats {
        EvalStats {
            problems: 32,
            mean_reward,
            api_accuracy: 0.5,
            parse_rate: 1.0,
            mean_rules: 0.5,
            mean_calibration: 0.0,
        }
    }

    #[test]
    fn a_run_that_lowers_the_validation_reward_keeps_its_start() {
        assert!(validation_got_worse(Some(&stats(0.20)), Some(&stats(-0.31))));
        assert!(!validation_got_worse(Some(&stats(0.20)), Some(&stats(0.20))), "a tie keeps the trained one");
        assert!(!validation_got_worse(Some(&stats(-0.4)), Some(&stats(0.1))));
        assert!(!validation_got_worse(None, Some(&stats(0.1))), "no validation split: nothing to compare");
    }
}
