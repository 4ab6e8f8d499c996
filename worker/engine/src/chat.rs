//! Free-form (or JSON-Schema-constrained) completion of one prompt: what the OpenAI-compatible
//! chat endpoint runs when the message is not a routing request. Batch 1, greedy or sampled,
//! stops at EOS, the template's stop sequence or the token budget.

use anyhow::{Result, anyhow};
use rand::{Rng, SeedableRng};
use serde_json::Value;

use super::engine::Engine;
use super::forward::{Step, forward_select};
use super::logits::pick_allowed;
use crate::template::{self, STOP_SEQUENCE};
use sapllm_model::ForwardPath;
use sapllm_model::mixtral::kv_cache::KvCache;

/// A finished completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// "stop" or "length" (OpenAI's finish reasons).
    pub finish_reason: &'static str,
}

impl Engine {
    /// Completes `prompt` (already in the shared template) with at most `max_tokens` tokens;
    /// `schema` constrains the answer to a JSON Schema with llguidance.
    pub fn complete(
        &self,
        prompt: &str,
        max_tokens: usize,
        temperature: f64,
        schema: Option<&Value>,
    ) -> Result<Completion> {
        let tok = self.tokenizer();
        let ids = template::encode_prompt(tok, prompt)?;
        let max_pos = self.model().cfg.max_position_embeddings;
        let budget = max_tokens.min(max_pos.saturating_sub(ids.len()));
        if budget == 0 {
            return Err(anyhow!("the prompt ({} tokens) fills the model's context of {max_pos}", ids.len()));
        }
        let mut matcher = schema.map(|s| self.grammars().matcher(s)).transpose()?;
        let model = self.model();
        let mut cache = KvCache::new(model.cfg.num_hidden_layers, 1);
        let step = Step::left_padded(&[ids.as_slice()], tok.pad_id);
        let mut logits =
            forward_select(model, &step, &mut cache, &[(0, step.len - 1)], ForwardPath::Fused)?.remove(0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let mut out: Vec<u32> = Vec::new();
        let mut finish = "length";
        while out.len() < budget {
            let tok_id = match matcher.as_mut() {
                Some(m) => {
                    if m.is_stopped() {
                        finish = "stop";
                        break;
                    }
                    let mask = m.compute_mask().map_err(|e| anyhow!("grammar: {e}"))?;
                    let (t, _) = pick_allowed(&logits, &mask, temperature, rng.random::<f64>())
                        .ok_or_else(|| anyhow!("the grammar allows no token"))?;
                    if t != tok.eos_id {
                        m.consume_token(t).map_err(|e| anyhow!("grammar: {e}"))?;
                    }
                    t
                }
                None => {
                    let all = toktrie::SimpleVob::alloc_ones(logits.len());
                    pick_allowed(&logits, &all, temperature, rng.random::<f64>())
                        .map(|(t, _)| t)
                        .unwrap_or(tok.eos_id)
                }
            };
            if tok_id == tok.eos_id {
                finish = "stop";
                break;
            }
            out.push(tok_id);
            if matcher.is_none() && tok.decode(&out)?.contains(STOP_SEQUENCE) {
                finish = "stop";
                break;
            }
            let step = Step::right_padded(&[&[tok_id][..]], tok.pad_id);
            logits = forward_select(model, &step, &mut cache, &[(0, 0)], ForwardPath::Fused)?.remove(0);
        }
        let mut text = tok.decode(&out)?;
        if let Some(cut) = text.find(STOP_SEQUENCE) {
            text.truncate(cut);
        }
        Ok(Completion {
            text: text.trim().to_string(),
            prompt_tokens: ids.len(),
            completion_tokens: out.len(),
            finish_reason: finish,
        })
    }
}
