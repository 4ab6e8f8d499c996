//! The reported confidence, and why it is computed this way.
//!
//! ```text
//! p_choice = softmax_j( log p(option_j | prompt) )[chosen]      over the ALLOWED options only
//! p_body   = exp( mean_t log q(t) )                              over freely sampled body tokens
//! model    = p_choice * p_body
//! conf     = model^(1 - w) * generated^w                         (w = generated_weight; w = 0
//!                                                                 or no generated field: model)
//! ```
//!
//! - `log p(option | prompt)` is the exact sequence log-probability of the option's tokens
//!   (teacher-forced, full-vocabulary softmax), so `p_choice` is the model's belief in the
//!   endpoint (or action) renormalised over exactly the candidates it may emit. Wrong-API
//!   errors are the costly ones, and this is the quantity that ranks them.
//! - `q(t)` is the softmax renormalised over the tokens the grammar allowed at that step; forced
//!   tokens (probability 1 under the grammar) are left out, so `p_body` measures the model's
//!   certainty about the values it actually chose (quantities, dates, codes). The geometric mean
//!   keeps long payloads from being punished for their length.
//! - The confidence field the model writes was learnt from data-prep's heuristic target (how
//!   clearly the content shows the type). It is reported, and blended in only when a weight is
//!   configured: by default it is not. Once payloads are grounded, whether a decision is right
//!   depends on the choice between posting and exception handling, which `p_choice` measures;
//!   the heuristic does not (it is low for an ambiguous-looking document routed right).

use serde::{Deserialize, Serialize};

use super::types::ConfidenceParts;

/// Weights of the confidence formula.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ConfidenceWeights {
    /// Weight `w` of the generated confidence field, in [0, 1].
    pub generated_weight: f64,
}

impl Default for ConfidenceWeights {
    fn default() -> Self {
        ConfidenceWeights { generated_weight: 0.0 }
    }
}

/// `p_body` from the constrained log-probabilities of the freely sampled body tokens.
pub fn body_certainty(body_logprobs: &[f64]) -> f64 {
    if body_logprobs.is_empty() {
        return 1.0;
    }
    (body_logprobs.iter().sum::<f64>() / body_logprobs.len() as f64).exp()
}

/// The final confidence in [0, 1].
pub fn combine(parts: &ConfidenceParts, w: &ConfidenceWeights) -> f64 {
    let model = (parts.choice_probability * parts.body_certainty).clamp(0.0, 1.0);
    let c = match parts.generated {
        Some(g) if w.generated_weight > 0.0 => {
            let g = g.clamp(1e-6, 1.0);
            let wg = w.generated_weight.clamp(0.0, 1.0);
            model.max(1e-12).powf(1.0 - wg) * g.powf(wg)
        }
        _ => model,
    };
    if c.is_finite() { c.clamp(0.0, 1.0) } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_probability_dominates_the_generated_field() {
        assert_eq!(ConfidenceWeights::default().generated_weight, 0.0);
        let w = ConfidenceWeights { generated_weight: 0.2 };
        let low = ConfidenceParts { choice_probability: 0.3, body_certainty: 1.0, generated: Some(0.99) };
        assert!(combine(&low, &w) < 0.4, "a confident-sounding answer must not hide p=0.3");
        let high = ConfidenceParts { choice_probability: 0.99, body_certainty: 0.98, generated: Some(0.9) };
        assert!(combine(&high, &w) > 0.9);
        let none = ConfidenceParts { choice_probability: 0.5, body_certainty: 0.5, generated: None };
        assert!((combine(&none, &w) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn body_certainty_is_the_geometric_mean() {
        assert_eq!(body_certainty(&[]), 1.0);
        let c = body_certainty(&[0.5f64.ln(), 0.5f64.ln()]);
        assert!((c - 0.5).abs() < 1e-12);
    }
}
