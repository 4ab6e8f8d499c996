//! Small numeric helpers over one row of logits.

use toktrie::SimpleVob;

/// `log(sum(exp(row)))` in f64.
pub fn logsumexp(row: &[f32]) -> f64 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    if !max.is_finite() {
        return max;
    }
    max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln()
}

/// `log p(tok)` under the full (unconstrained) softmax of `row`.
pub fn log_prob(row: &[f32], tok: u32) -> f64 {
    row[tok as usize] as f64 - logsumexp(row)
}

/// Picks the best allowed token of `row` (greedy, or sampled at `temperature` with `u` a
/// uniform draw in [0, 1)) and returns it with its log-probability under the softmax
/// renormalised over the allowed tokens. `None` when nothing in the row is allowed.
pub fn pick_allowed(row: &[f32], mask: &SimpleVob, temperature: f64, u: f64) -> Option<(u32, f64)> {
    let t = if temperature > 0.0 { temperature } else { 1.0 };
    let n = row.len().min(mask.len());
    let mut best: Option<(usize, f32)> = None;
    let mut allowed = Vec::new();
    for (i, &v) in row.iter().enumerate().take(n) {
        if mask.is_allowed(i as u32) && v.is_finite() {
            allowed.push(i);
            if best.is_none_or(|(_, b)| v > b) {
                best = Some((i, v));
            }
        }
    }
    let (best_i, best_v) = best?;
    let lse =
        best_v as f64 / t + allowed.iter().map(|&i| ((row[i] - best_v) as f64 / t).exp()).sum::<f64>().ln();
    let chosen = if temperature > 0.0 {
        let mut acc = 0.0;
        let mut pick = best_i;
        for &i in &allowed {
            acc += (row[i] as f64 / t - lse).exp();
            if u < acc {
                pick = i;
                break;
            }
        }
        pick
    } else {
        best_i
    };
    Some((chosen as u32, row[chosen] as f64 / t - lse))
}

/// Softmax of sequence log-probabilities (the options' renormalised probabilities).
pub fn softmax(scores: &[f64]) -> Vec<f64> {
    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let z: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / z).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_respects_the_mask_and_renormalises() {
        let row = [5.0f32, 1.0, 1.0, -2.0];
        let mut mask = SimpleVob::alloc(4);
        mask.allow_token(1);
        mask.allow_token(2);
        let (tok, lp) = pick_allowed(&row, &mask, 0.0, 0.0).unwrap();
        assert!(tok == 1 || tok == 2, "token 0 is disallowed");
        assert!((lp - 0.5f64.ln()).abs() < 1e-9, "two equal allowed tokens: p = 0.5, got {}", lp.exp());
        assert!(pick_allowed(&row, &SimpleVob::alloc(4), 0.0, 0.0).is_none());
    }

    #[test]
    fn softmax_of_log_probs_renormalises() {
        let p = softmax(&[0.5f64.ln(), 0.25f64.ln()]);
        assert!((p[0] - 2.0 / 3.0).abs() < 1e-12 && (p[1] - 1.0 / 3.0).abs() < 1e-12);
    }
}
