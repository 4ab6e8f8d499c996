//! Scoring rollouts without gradients: the sampling policy's and the reference's per-token
//! log-probabilities, the value head's estimates and the policy's entropy, computed once per
//! iteration before any update (the "old" quantities of PPO's ratio and clipping).

use anyhow::Result;

use super::Session;
use super::rollout::{Rollout, masked_mean, pack, token_entropy, token_logprobs};

/// Per-response (one entry per response token) scores.
pub struct Scored {
    pub old_logp: Vec<Vec<f64>>,
    pub ref_logp: Vec<Vec<f64>>,
    pub values: Option<Vec<Vec<f64>>>,
    /// Mean per-token entropy of the policy's sampling distribution.
    pub entropy: f64,
}

/// Scores `rollouts` in chunks of `chunk` sequences.
pub fn score(sess: &Session, rollouts: &[Rollout], chunk: usize) -> Result<Scored> {
    let t = sess.cfg.temperature;
    let mut s = Scored { old_logp: Vec::new(), ref_logp: Vec::new(), values: None, entropy: 0.0 };
    let mut values = Vec::new();
    let mut ent_sum = 0.0;
    let mut ent_n = 0.0;
    for part in rollouts.chunks(chunk.max(1)) {
        let pairs: Vec<(&[u32], &[u32])> =
            part.iter().map(|r| (r.prompt.as_slice(), r.response.as_slice())).collect();
        let packed = pack(&pairs, sess.tok.pad_id, sess.policy.device())?;
        let out = sess.policy.forward(&packed.ids, Some(&packed.attention))?;
        s.old_logp.extend(packed.rows(&token_logprobs(&out, &packed, t)?.detach())?);
        let n = packed.response_mask.sum_all()?.to_scalar::<f32>()? as f64;
        ent_sum +=
            masked_mean(&token_entropy(&out, t)?, &packed.response_mask)?.to_scalar::<f32>()? as f64 * n;
        ent_n += n;
        if let Some(vh) = &sess.value_head {
            let v = vh.forward(&out.hidden.detach())?.narrow(1, 0, packed.t - 1)?;
            values.extend(packed.rows(&v)?);
        }
        let ref_out = sess.reference.forward(&packed.ids, Some(&packed.attention))?;
        s.ref_logp.extend(packed.rows(&token_logprobs(&ref_out, &packed, t)?.detach())?);
    }
    if sess.value_head.is_some() {
        s.values = Some(values);
    }
    s.entropy = if ent_n > 0.0 { ent_sum / ent_n } else { 0.0 };
    Ok(s)
}

/// Mean over responses of the summed per-token log-ratio to the reference (k1 KL estimate).
pub fn mean_kl(old: &[Vec<f64>], reference: &[Vec<f64>]) -> f64 {
    let n = old.len().max(1) as f64;
    old.iter().zip(reference).map(|(o, r)| o.iter().zip(r).map(|(a, b)| a - b).sum::<f64>()).sum::<f64>() / n
}
