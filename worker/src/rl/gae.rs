//! Generalised advantage estimation and whitening, on plain per-token vectors (one response
//! per `Vec`), so they are exact and unit-testable away from the model.

/// Per-token rewards of one response as PPO shapes them: `-kl_coef * (logp - logp_ref)` on every
/// token (the k1 KL estimator) plus the sequence score on the last token.
pub fn shaped_rewards(logp: &[f64], ref_logp: &[f64], kl_coef: f64, score: f64) -> Vec<f64> {
    let mut r: Vec<f64> = logp.iter().zip(ref_logp).map(|(lp, rl)| -kl_coef * (lp - rl)).collect();
    if let Some(last) = r.last_mut() {
        *last += score;
    }
    r
}

/// GAE over one response: `delta_t = r_t + gamma * V_{t+1} - V_t` (V after the last token is
/// 0: the episode ends), `A_t = delta_t + gamma * lambda * A_{t+1}`. Returns (advantages,
/// returns = advantages + values).
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lambda: f64) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(rewards.len(), values.len(), "one value per reward");
    let n = rewards.len();
    let mut adv = vec![0.0; n];
    let mut next_adv = 0.0;
    for t in (0..n).rev() {
        let next_v = if t + 1 < n { values[t + 1] } else { 0.0 };
        let delta = rewards[t] + gamma * next_v - values[t];
        next_adv = delta + gamma * lambda * next_adv;
        adv[t] = next_adv;
    }
    let ret = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, ret)
}

/// Whitens every token of every response together (zero mean, unit variance), as TRL does for
/// advantages: a batch of all-equal advantages becomes all zeros, not NaN.
pub fn whiten(seqs: &mut [Vec<f64>]) {
    let n: usize = seqs.iter().map(Vec::len).sum();
    if n == 0 {
        return;
    }
    let mean = seqs.iter().flatten().sum::<f64>() / n as f64;
    let var = seqs.iter().flatten().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
    let inv = 1.0 / (var.sqrt() + 1e-8);
    for s in seqs.iter_mut() {
        for x in s.iter_mut() {
            *x = (*x - mean) * inv;
        }
    }
}

/// Mean and (population) standard deviation.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (0.0, 0.0);
    }
    let m = xs.iter().sum::<f64>() / xs.len() as f64;
    let v = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64;
    (m, v.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gae_with_lambda_one_and_gamma_one_is_return_minus_value() {
        let r = [0.0, 0.0, 1.0];
        let v = [0.2, 0.5, 0.1];
        let (a, ret) = gae(&r, &v, 1.0, 1.0);
        for t in 0..3 {
            assert!((ret[t] - 1.0).abs() < 1e-12, "return to go is 1 at every step");
            assert!((a[t] - (1.0 - v[t])).abs() < 1e-12);
        }
    }

    #[test]
    fn gae_with_lambda_zero_is_one_step_td() {
        let r = [0.1, -0.2, 1.0];
        let v = [0.3, 0.4, 0.5];
        let (a, _) = gae(&r, &v, 1.0, 0.0);
        assert!((a[0] - (0.1 + 0.4 - 0.3)).abs() < 1e-12);
        assert!((a[1] - (-0.2 + 0.5 - 0.4)).abs() < 1e-12);
        assert!((a[2] - (1.0 - 0.5)).abs() < 1e-12);
    }

    #[test]
    fn gae_lambda_095_matches_hand_computation() {
        let r = [0.0, 1.0];
        let v = [0.5, 0.25];
        let (a, _) = gae(&r, &v, 1.0, 0.95);
        let a1 = 1.0 - 0.25;
        let a0 = (0.0 + 0.25 - 0.5) + 0.95 * a1;
        assert!((a[1] - a1).abs() < 1e-12 && (a[0] - a0).abs() < 1e-12);
    }

    #[test]
    fn shaped_rewards_put_the_score_on_the_last_token_and_penalise_kl() {
        let r = shaped_rewards(&[-1.0, -2.0], &[-1.5, -2.0], 0.1, 0.7);
        assert!((r[0] - (-0.05)).abs() < 1e-12);
        assert!((r[1] - 0.7).abs() < 1e-12);
    }

    #[test]
    fn whiten_gives_zero_mean_unit_variance_and_survives_constants() {
        let mut s = vec![vec![1.0, 2.0], vec![3.0, 4.0, 5.0]];
        whiten(&mut s);
        let all: Vec<f64> = s.concat();
        let (m, sd) = mean_std(&all);
        assert!(m.abs() < 1e-9 && (sd - 1.0).abs() < 1e-6);
        let mut c = vec![vec![2.0, 2.0]];
        whiten(&mut c);
        assert!(c[0].iter().all(|x| x.abs() < 1e-9));
    }
}
