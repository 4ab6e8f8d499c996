//! One PPO iteration (TRL's recipe): sample, score against the reference, shape per-token
//! rewards (k1 KL penalty on every token, the verifiable reward on the last), GAE with the value
//! head, whitened advantages, then `ppo_epochs` passes over shuffled mini-batches minimising the
//! clipped policy loss plus `vf_coef * 0.5 *` the clipped value loss.

use anyhow::{Context, Result};
use rand::SeedableRng;
use rand::seq::SliceRandom;

use super::gae::{gae, shaped_rewards, whiten};
use super::log::IterLog;
use super::rollout::{Rollout, masked_mean, pack, token_logprobs};
use super::score::{mean_kl, score};
use super::{Session, mix};

/// Runs iteration `it` and reports it.
pub fn iteration(sess: &mut Session, it: u64) -> Result<IterLog> {
    let cfg = sess.cfg;
    let which = sess.pick(sess.problems.len(), cfg.batch_size, it);
    let rollouts = sess.rollouts(&which, it)?;
    let scored = score(sess, &rollouts, cfg.mini_batch_size)?;
    let values = scored.values.as_ref().context("PPO runs with a value head")?;

    let mut advantages = Vec::with_capacity(rollouts.len());
    let mut returns = Vec::with_capacity(rollouts.len());
    for (i, r) in rollouts.iter().enumerate() {
        let rewards = shaped_rewards(&scored.old_logp[i], &scored.ref_logp[i], cfg.kl_coef, r.reward.total);
        let (a, ret) = gae(&rewards, &values[i], cfg.gamma, cfg.lambda);
        advantages.push(a);
        returns.push(ret);
    }
    whiten(&mut advantages);

    let mut pg_losses = Vec::new();
    let mut vf_losses = Vec::new();
    let mut clip_fracs = Vec::new();
    let mut order: Vec<usize> = (0..rollouts.len()).collect();
    for epoch in 0..cfg.ppo_epochs {
        let mut rng = rand::rngs::StdRng::seed_from_u64(mix(mix(cfg.seed, it), epoch as u64 + 1));
        order.shuffle(&mut rng);
        for mb in order.chunks(cfg.mini_batch_size) {
            let part: Vec<&Rollout> = mb.iter().map(|&i| &rollouts[i]).collect();
            let pick = |v: &Vec<Vec<f64>>| -> Vec<Vec<f64>> { mb.iter().map(|&i| v[i].clone()).collect() };
            let pairs: Vec<(&[u32], &[u32])> =
                part.iter().map(|r| (r.prompt.as_slice(), r.response.as_slice())).collect();
            let packed = pack(&pairs, sess.tok.pad_id, sess.policy.device())?;
            let old_lp = packed.grid(&pick(&scored.old_logp))?;
            let old_v = packed.grid(&pick(values))?;
            let adv = packed.grid(&pick(&advantages))?;
            let ret = packed.grid(&pick(&returns))?;
            let mask = packed.response_mask.clone();
            let vh = sess.value_head.as_ref().context("PPO runs with a value head")?;
            let (clip, vclip, vf_coef, temp) =
                (cfg.clip_range, cfg.value_clip_range, cfg.vf_coef, cfg.temperature);
            let mut stats = (0.0, 0.0, 0.0);
            let (_, grads) =
                sess.policy.forward_backward(&packed.ids, Some(&packed.attention), &mut |out| {
                    let lp = token_logprobs(out, &packed, temp)?;
                    let ratio = (&lp - &old_lp)?.exp()?;
                    let pg1 = (adv.neg()? * &ratio)?;
                    let pg2 = (adv.neg()? * ratio.clamp(1.0 - clip, 1.0 + clip)?)?;
                    let pg = masked_mean(&pg1.maximum(&pg2)?, &mask)?;
                    let v = vh.forward(&out.hidden)?.narrow(1, 0, packed.t - 1)?;
                    let v_clipped = (&old_v + (&v - &old_v)?.clamp(-vclip, vclip)?)?;
                    let vf1 = (&v - &ret)?.sqr()?;
                    let vf2 = (&v_clipped - &ret)?.sqr()?;
                    let vf = (masked_mean(&vf1.maximum(&vf2)?, &mask)? * 0.5)?;
                    let clipped =
                        ((&ratio - 1.0)?.abs()?.gt(clip)?.to_dtype(candle_core::DType::F32)?).detach();
                    stats = (
                        pg.to_scalar::<f32>()? as f64,
                        vf.to_scalar::<f32>()? as f64,
                        masked_mean(&clipped, &mask)?.to_scalar::<f32>()? as f64,
                    );
                    Ok((pg + (vf * vf_coef)?)?)
                })?;
            sess.opt.step(&grads)?;
            pg_losses.push(stats.0);
            vf_losses.push(stats.1);
            clip_fracs.push(stats.2);
        }
    }
    Ok(rollout_log(
        it,
        &rollouts,
        mean_kl(&scored.old_logp, &scored.ref_logp),
        scored.entropy,
        sess.opt.current_lr(),
    )
    .with_losses(mean(&pg_losses), Some(mean(&vf_losses)), Some(mean(&clip_fracs))))
}

pub(crate) fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

/// The rollout half of an iteration's log (reward parts, accuracy, KL, entropy).
pub(crate) fn rollout_log(it: u64, rollouts: &[Rollout], kl: f64, entropy: f64, lr: f64) -> IterLog {
    let m = |f: &dyn Fn(&Rollout) -> f64| {
        Some(rollouts.iter().map(f).sum::<f64>() / rollouts.len().max(1) as f64)
    };
    IterLog {
        iteration: it + 1,
        reward: m(&|r| r.reward.total),
        reward_api: m(&|r| r.reward.api),
        reward_rules: m(&|r| r.reward.rules),
        reward_calibration: m(&|r| r.reward.calibration),
        api_accuracy: m(&|r| f64::from(u8::from(r.reward.endpoint_correct))),
        parse_rate: m(&|r| f64::from(u8::from(r.reward.parsed))),
        kl,
        entropy: Some(entropy),
        lr,
        ..IterLog::default()
    }
}

impl IterLog {
    pub(crate) fn with_losses(mut self, policy: f64, value: Option<f64>, clip: Option<f64>) -> Self {
        self.policy_loss = policy;
        self.value_loss = value;
        self.clip_fraction = clip;
        self
    }
}
