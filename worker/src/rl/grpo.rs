//! One GRPO iteration (DeepSeekMath's group-relative policy optimisation, as TRL runs it):
//! `group_size` answers per problem, each answer's advantage is its reward standardised within
//! its group (`(r - mean) / (std + 1e-4)`, the same for every token), no value head. The loss is
//! PPO's clipped surrogate plus `kl_coef *` the k3 KL estimator to the reference
//! (`exp(ref - logp) - (ref - logp) - 1`, unbiased and non-negative), averaged over tokens.
//! A group whose answers all score the same teaches nothing (advantages 0) and is kept only
//! for the KL term.

use anyhow::Result;
use rand::SeedableRng;
use rand::seq::SliceRandom;

use super::gae::mean_std;
use super::log::IterLog;
use super::ppo::{mean, rollout_log};
use super::rollout::{Rollout, masked_mean, pack, token_logprobs};
use super::score::{mean_kl, score};
use super::{Session, mix};

/// Group-standardised advantages: `rewards` holds consecutive groups of `group` answers.
pub fn group_advantages(rewards: &[f64], group: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(rewards.len());
    for g in rewards.chunks(group.max(1)) {
        let (m, s) = mean_std(g);
        out.extend(g.iter().map(|r| (r - m) / (s + 1e-4)));
    }
    out
}

/// Runs iteration `it` and reports it.
pub fn iteration(sess: &mut Session, it: u64) -> Result<IterLog> {
    let cfg = sess.cfg;
    let g = cfg.group_size;
    let problems = sess.pick(sess.problems.len(), cfg.batch_size, it);
    let which: Vec<usize> = problems.iter().flat_map(|&p| std::iter::repeat_n(p, g)).collect();
    let rollouts = sess.rollouts(&which, it)?;
    let chunk = cfg.mini_batch_size * g;
    let scored = score(sess, &rollouts, chunk)?;
    let rewards: Vec<f64> = rollouts.iter().map(|r| r.reward.total).collect();
    let adv: Vec<Vec<f64>> = group_advantages(&rewards, g)
        .into_iter()
        .zip(&rollouts)
        .map(|(a, r)| vec![a; r.response.len()])
        .collect();

    let mut losses = Vec::new();
    let mut clip_fracs = Vec::new();
    let mut order: Vec<usize> = (0..rollouts.len()).collect();
    for epoch in 0..cfg.ppo_epochs {
        let mut rng = rand::rngs::StdRng::seed_from_u64(mix(mix(cfg.seed, it), epoch as u64 + 1));
        order.shuffle(&mut rng);
        for mb in order.chunks(chunk) {
            let part: Vec<&Rollout> = mb.iter().map(|&i| &rollouts[i]).collect();
            let pick = |v: &Vec<Vec<f64>>| -> Vec<Vec<f64>> { mb.iter().map(|&i| v[i].clone()).collect() };
            let pairs: Vec<(&[u32], &[u32])> =
                part.iter().map(|r| (r.prompt.as_slice(), r.response.as_slice())).collect();
            let packed = pack(&pairs, sess.tok.pad_id, sess.policy.device())?;
            let old_lp = packed.grid(&pick(&scored.old_logp))?;
            let ref_lp = packed.grid(&pick(&scored.ref_logp))?;
            let a = packed.grid(&pick(&adv))?;
            let mask = packed.response_mask.clone();
            let (clip, beta, temp) = (cfg.clip_range, cfg.kl_coef, cfg.temperature);
            let mut stats = (0.0, 0.0);
            let (_, grads) =
                sess.policy.forward_backward(&packed.ids, Some(&packed.attention), &mut |out| {
                    let lp = token_logprobs(out, &packed, temp)?;
                    let ratio = (&lp - &old_lp)?.exp()?;
                    let s1 = (&a * &ratio)?;
                    let s2 = (&a * ratio.clamp(1.0 - clip, 1.0 + clip)?)?;
                    let surrogate = s1.minimum(&s2)?.neg()?;
                    let d = (&ref_lp - &lp)?;
                    let k3 = ((d.exp()? - &d)? - 1.0)?;
                    let loss = masked_mean(&(surrogate + (k3 * beta)?)?, &mask)?;
                    let clipped = (&ratio - 1.0)?.abs()?.gt(clip)?.to_dtype(candle_core::DType::F32)?;
                    stats = (
                        loss.to_scalar::<f32>()? as f64,
                        masked_mean(&clipped, &mask)?.to_scalar::<f32>()? as f64,
                    );
                    Ok(loss)
                })?;
            sess.opt.step(&grads)?;
            losses.push(stats.0);
            clip_fracs.push(stats.1);
        }
    }
    Ok(rollout_log(
        it,
        &rollouts,
        mean_kl(&scored.old_logp, &scored.ref_logp),
        scored.entropy,
        sess.opt.current_lr(),
    )
    .with_losses(mean(&losses), None, Some(mean(&clip_fracs))))
}

#[cfg(test)]
mod tests {
    use super::group_advantages;

    #[test]
    fn advantages_are_standardised_within_each_group() {
        let a = group_advantages(&[1.0, -1.0, 0.5, 0.5], 2);
        assert!(a[0] > 0.99 && a[1] < -0.99, "{a:?}");
        assert!(a[2].abs() < 1e-12 && a[3].abs() < 1e-12, "an all-equal group teaches nothing: {a:?}");
    }
}
