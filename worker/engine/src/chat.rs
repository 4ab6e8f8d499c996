//! Free-form (or JSON-Schema-constrained) completion of one prompt: what the OpenAI-compatible
//! chat endpoint runs when the message is not a routing request. Batch 1, greedy or sampled,
//! stops at EOS, the template's stop sequence or the token budget. [`Engine::complete_streaming`]
//! hands the text on as it is decoded (the chat endpoint's `stream: true`).

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

/// A streamed completion stopped because its sink asked (the client went away, or its deadline
/// passed): the error [`Engine::complete_streaming`] returns then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the completion was cancelled")]
pub struct Cancelled;

/// The part of the decoded text so far that the finished completion's `text` is sure to start
/// with, whatever is decoded next: cut at the stop sequence (or before a trailing piece of it),
/// without an incomplete UTF-8 character at the end (decoded as U+FFFD) and without the
/// whitespace the finished text trims.
fn settled(decoded: &str) -> &str {
    let s = decoded.trim_end_matches(char::REPLACEMENT_CHARACTER);
    let s = match s.find(STOP_SEQUENCE) {
        Some(cut) => &s[..cut],
        None => {
            let partial =
                (1..STOP_SEQUENCE.len()).rev().find(|&k| s.ends_with(&STOP_SEQUENCE[..k])).unwrap_or(0);
            &s[..s.len() - partial]
        }
    };
    s.trim()
}

/// The text handed on so far: each delta extends it, so the deltas concatenate to the finished
/// completion's `text`.
#[derive(Debug, Default)]
struct Streamed {
    sent: String,
}

impl Streamed {
    /// What `decoded` (all answer tokens so far) settles beyond what was sent.
    fn advance(&mut self, decoded: &str) -> String {
        let s = settled(decoded);
        match s.strip_prefix(self.sent.as_str()) {
            Some(new) if !new.is_empty() => {
                let new = new.to_string();
                self.sent.push_str(&new);
                new
            }
            _ => String::new(),
        }
    }

    /// The rest of the finished `text`.
    fn finish(&mut self, text: &str) -> String {
        match text.strip_prefix(self.sent.as_str()) {
            Some(rest) => {
                self.sent.push_str(rest);
                rest.to_string()
            }
            None => {
                // Only a tokenizer whose decoding of a longer sequence rewrites earlier text
                // gets here; the deltas then differ from `text`.
                tracing::warn!("the streamed text is not a prefix of the finished completion");
                String::new()
            }
        }
    }
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
        self.generate(prompt, max_tokens, temperature, schema, None)
    }

    /// [`Engine::complete`], handing the text on as it is decoded: `on_text` is called after
    /// every answer token with the text settled since its last call (often empty: an
    /// incomplete UTF-8 character, whitespace or a possible start of the stop sequence is held
    /// back until the next token decides it), and once at the end with the rest. The deltas
    /// concatenate to the returned `text`; the same decoding as `complete` (same tokens).
    /// `on_text` returning false stops decoding with [`Cancelled`].
    pub fn complete_streaming(
        &self,
        prompt: &str,
        max_tokens: usize,
        temperature: f64,
        schema: Option<&Value>,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Completion> {
        self.generate(prompt, max_tokens, temperature, schema, Some(on_text))
    }

    fn generate(
        &self,
        prompt: &str,
        max_tokens: usize,
        temperature: f64,
        schema: Option<&Value>,
        mut on_text: Option<&mut dyn FnMut(&str) -> bool>,
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
        let mut streamed = Streamed::default();
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
            let decoded =
                if matcher.is_none() || on_text.is_some() { tok.decode(&out)? } else { String::new() };
            if let Some(sink) = on_text.as_mut()
                && !sink(&streamed.advance(&decoded))
            {
                return Err(Cancelled.into());
            }
            if matcher.is_none() && decoded.contains(STOP_SEQUENCE) {
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
        let text = text.trim().to_string();
        if let Some(sink) = on_text {
            // The end of the completion: the client is told whatever `sink` answers.
            let _ = sink(&streamed.finish(&text));
        }
        Ok(Completion { text, prompt_tokens: ids.len(), completion_tokens: out.len(), finish_reason: finish })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Streams the decodings of successive token counts and returns the deltas.
    fn stream(decodings: &[&str]) -> (Vec<String>, String) {
        let mut s = Streamed::default();
        let mut deltas: Vec<String> = decodings.iter().map(|d| s.advance(d)).collect();
        let last = decodings.last().copied().unwrap_or("");
        let mut text = last.to_string();
        if let Some(cut) = text.find(STOP_SEQUENCE) {
            text.truncate(cut);
        }
        let text = text.trim().to_string();
        deltas.push(s.finish(&text));
        (deltas, text)
    }

    #[test]
    fn deltas_concatenate_to_the_finished_text() {
        let cases: [&[&str]; 5] = [
            &[
                " ",
                " He",
                " Hello",
                " Hello ",
                " Hello wor",
                " Hello world\n",
                " Hello world\n#",
                " Hello world\n##",
                " Hello world\n###",
                " Hello world\n### x",
            ],
            &["{", "{\"a\"", "{\"a\": 1", "{\"a\": 1}"],
            // An incomplete UTF-8 character decodes as U+FFFD until its last byte arrives.
            &["caf", "caf\u{FFFD}", "caf\u{e9}", "caf\u{e9}\n\n"],
            // A `#` that turns out not to start the stop sequence is sent once it is decided.
            &["a", "a\n", "a\n#", "a\n#b"],
            &["  ", "  \n"],
        ];
        for decodings in cases {
            let (deltas, text) = stream(decodings);
            assert_eq!(deltas.concat(), text, "{decodings:?} -> {deltas:?}");
            assert!(deltas.iter().all(|d| !d.contains('\u{FFFD}')), "{deltas:?}");
        }
        let (deltas, _) = stream(&["Hi", "Hi\n", "Hi\n#", "Hi\n##", "Hi\n###"]);
        assert_eq!(deltas, ["Hi", "", "", "", "", ""], "nothing of the stop sequence is sent");
        let (deltas, _) = stream(&["a", "a b"]);
        assert_eq!(deltas, ["a", " b", ""], "text is sent as soon as it is settled");
    }
}
