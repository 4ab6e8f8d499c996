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
use sapllm_model::tokenizer::Tokenizer;

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

/// The text of a growing token sequence, decoded as it grows at a cost bounded by the tokens
/// since the last complete character, not by the whole sequence (decoding everything again
/// after every token made a long answer quadratic).
///
/// As text-generation-inference's and vLLM's detokenizers do: each step decodes the tokens
/// from `prefix` on and takes the text beyond what `tokens[prefix..read]` decode to. Decoding
/// from a few tokens back (not from `read`) gives tokenizers whose decoding of a token
/// depends on the one before (a leading space stripped at the start) their context. The new
/// text is taken only when it does not end in U+FFFD: a token may end mid-character (byte-
/// level BPE), and the character is whole only once its last byte's token arrived. (A run of
/// tokens that keeps ending in an invalid byte sequence widens the window until it ends.)
#[derive(Debug, Default)]
struct IncrementalText {
    /// Whole text: the concatenated decodings taken so far (never ends mid-character).
    text: String,
    /// The text beyond `text` of the tokens not taken yet (may end in U+FFFD).
    pending: String,
    /// The first token of the window decoded each step.
    prefix: usize,
    /// The tokens up to here are in `text`.
    read: usize,
    /// Bytes that `tokens[prefix..read]` decode to.
    prefix_len: usize,
}

impl IncrementalText {
    /// Takes the tokens appended to `ids` (all tokens so far) since the last call.
    fn push(&mut self, tok: &Tokenizer, ids: &[u32]) -> Result<()> {
        let window = tok.decode(&ids[self.prefix..])?;
        let new = window.get(self.prefix_len..).unwrap_or("");
        if new.is_empty() || new.ends_with(char::REPLACEMENT_CHARACTER) {
            // An incomplete character (or nothing yet): wait for the next token.
            self.pending.clear();
            self.pending.push_str(new);
            return Ok(());
        }
        self.text.push_str(new);
        self.pending.clear();
        self.prefix = self.read;
        self.read = ids.len();
        self.prefix_len = tok.decode(&ids[self.prefix..self.read])?.len();
        Ok(())
    }

    /// Whether `needle` occurs in the decoded text (what decoding all tokens at once gives,
    /// an incomplete last character as U+FFFD) at or after byte `from` of the whole text.
    fn contains_from(&self, needle: &str, from: usize) -> bool {
        let mut start = from.min(self.text.len());
        while !self.text.is_char_boundary(start) {
            start -= 1;
        }
        let tail = &self.text[start..];
        if self.pending.is_empty() {
            return tail.contains(needle);
        }
        let mut s = String::with_capacity(tail.len() + self.pending.len());
        s.push_str(tail);
        s.push_str(&self.pending);
        s.contains(needle)
    }
}

/// What of the decoded text is handed on as it grows: the part that the finished completion's
/// `text` is sure to start with, whatever is decoded next. That is the text cut at the stop
/// sequence (or before a trailing piece of it), without the whitespace the finished text
/// trims. Each delta extends what was sent, so the deltas concatenate to the finished `text`.
/// Its cost per step is bounded by the new text, not the whole.
#[derive(Debug, Default)]
struct Streamed {
    /// Byte offset in the text of its first non-whitespace character, once there is one.
    start: Option<usize>,
    /// The text before this is whitespace (while `start` is `None`).
    blank_to: usize,
    /// Byte offset of the stop sequence, once found.
    stop: Option<usize>,
    /// No stop sequence starts before this offset.
    searched: usize,
    /// End of the settled text (its trailing whitespace trimmed).
    end: usize,
    /// The text up to here was looked at for `end`.
    scanned: usize,
    /// End of what was sent (`start..sent`).
    sent: usize,
}

impl Streamed {
    /// The new settled text of `text` (all whole text so far: it only ever grows).
    fn advance<'t>(&mut self, text: &'t str) -> &'t str {
        if self.stop.is_none() {
            // A stop sequence found now starts in the new text or in its last bytes before.
            let mut from = self.searched.min(text.len()).saturating_sub(STOP_SEQUENCE.len() - 1);
            while !text.is_char_boundary(from) {
                from -= 1;
            }
            self.stop = text[from..].find(STOP_SEQUENCE).map(|i| from + i);
            self.searched = text.len();
        }
        let cut = match self.stop {
            Some(cut) => cut,
            None => {
                let partial = (1..STOP_SEQUENCE.len())
                    .rev()
                    .find(|&k| text.ends_with(&STOP_SEQUENCE[..k]))
                    .unwrap_or(0);
                text.len() - partial
            }
        };
        let start = match self.start {
            Some(s) => s,
            None => {
                let from = self.blank_to.min(cut);
                match text[from..cut].find(|c: char| !c.is_whitespace()) {
                    Some(i) => {
                        self.start = Some(from + i);
                        self.end = from + i;
                        self.scanned = from + i;
                        self.sent = from + i;
                        from + i
                    }
                    None => {
                        self.blank_to = cut;
                        return "";
                    }
                }
            }
        };
        if cut > self.scanned {
            if let Some((i, c)) = text[self.scanned..cut].char_indices().rfind(|(_, c)| !c.is_whitespace()) {
                self.end = self.scanned + i + c.len_utf8();
            }
            self.scanned = cut;
        }
        debug_assert!(start <= self.sent && self.sent <= self.end);
        let new = &text[self.sent..self.end];
        self.sent = self.end;
        new
    }

    /// The rest of the finished `text`, given the whole text `streamed` the deltas came from.
    fn finish(&mut self, streamed: &str, text: &str) -> String {
        let sent = self.start.map_or("", |s| &streamed[s..self.sent]);
        match text.strip_prefix(sent) {
            Some(rest) => rest.to_string(),
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
        let mut decoded = IncrementalText::default();
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
            if matcher.is_none() || on_text.is_some() {
                let before = decoded.text.len();
                decoded.push(tok, &out)?;
                if let Some(sink) = on_text.as_mut()
                    && !sink(streamed.advance(&decoded.text))
                {
                    return Err(Cancelled.into());
                }
                // A stop sequence the new token completed starts in the text not taken before it,
                // or at most its length - 1 bytes back.
                if matcher.is_none()
                    && decoded.contains_from(STOP_SEQUENCE, before.saturating_sub(STOP_SEQUENCE.len() - 1))
                {
                    finish = "stop";
                    break;
                }
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
            let _ = sink(&streamed.finish(&decoded.text, &text));
        }
        Ok(Completion { text, prompt_tokens: ids.len(), completion_tokens: out.len(), finish_reason: finish })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Streams successive texts (each extending the one before) and returns the deltas.
    fn stream(texts: &[&str]) -> (Vec<String>, String) {
        let mut s = Streamed::default();
        let mut deltas: Vec<String> = texts.iter().map(|d| s.advance(d).to_string()).collect();
        let last = texts.last().copied().unwrap_or("");
        let mut text = last.to_string();
        if let Some(cut) = text.find(STOP_SEQUENCE) {
            text.truncate(cut);
        }
        let text = text.trim().to_string();
        deltas.push(s.finish(last, &text));
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
            &["caf", "caf\u{e9}", "caf\u{e9}\n\n"],
            // A `#` that turns out not to start the stop sequence is sent once it is decided.
            &["a", "a\n", "a\n#", "a\n#b"],
            &["  ", "  \n"],
        ];
        for texts in cases {
            let (deltas, text) = stream(texts);
            assert_eq!(deltas.concat(), text, "{texts:?} -> {deltas:?}");
        }
        let (deltas, _) = stream(&["Hi", "Hi\n", "Hi\n#", "Hi\n##", "Hi\n###"]);
        assert_eq!(deltas, ["Hi", "", "", "", "", ""], "nothing of the stop sequence is sent");
        let (deltas, _) = stream(&["a", "a b"]);
        assert_eq!(deltas, ["a", " b", ""], "text is sent as soon as it is settled");
    }

    /// What was sent after each text before streaming became incremental: the whole text
    /// settled again at every step.
    fn settled_reference(text: &str) -> &str {
        let s = match text.find(STOP_SEQUENCE) {
            Some(cut) => &text[..cut],
            None => {
                let partial = (1..STOP_SEQUENCE.len())
                    .rev()
                    .find(|&k| text.ends_with(&STOP_SEQUENCE[..k]))
                    .unwrap_or(0);
                &text[..text.len() - partial]
            }
        };
        s.trim()
    }

    #[test]
    fn incremental_settling_sends_what_settling_the_whole_text_sends() {
        let pieces = ["a", " ", "\n", "#", "##", "\u{e9}", "b c", "\u{3000}", "\n###", "x\n#"];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..2000 {
            let mut text = String::new();
            let mut s = Streamed::default();
            let mut sent = String::new();
            for _ in 0..rng.random_range(1..16) {
                text.push_str(pieces[rng.random_range(0..pieces.len())]);
                sent.push_str(s.advance(&text));
                assert_eq!(sent, settled_reference(&text), "{text:?}");
            }
            let finished = settled_reference(&text).to_string();
            sent.push_str(&s.finish(&text, &finished));
            assert_eq!(sent, finished, "{text:?}");
        }
    }

    /// A byte-level tokenizer trained on ASCII text: other characters stay split into bytes.
    fn ascii_tokenizer() -> Tokenizer {
        let corpus = ["the answer is a JSON object", "hello world", "### Response"];
        Tokenizer::train_bpe(corpus.iter().cycle().take(60), 300).expect("tokenizer")
    }

    #[test]
    fn incremental_decoding_keeps_split_characters_whole() {
        let tok = ascii_tokenizer();
        let text = "caf\u{e9} \u{1F600}! na\u{ef}ve \u{65E5}\u{672C} hello world\n### end";
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.encode("\u{1F600}").unwrap().len(), 4, "a 4-byte character is 4 byte tokens");
        let mut d = IncrementalText::default();
        let mut taken = Vec::new();
        let mut stop_at = None;
        for n in 1..=ids.len() {
            let before = d.text.len();
            d.push(&tok, &ids[..n]).unwrap();
            let new = &d.text[before..];
            assert!(!new.contains(char::REPLACEMENT_CHARACTER), "{new:?} after {n} tokens");
            taken.push(new.to_string());
            let whole = tok.decode(&ids[..n]).unwrap();
            assert_eq!(format!("{}{}", d.text, d.pending), whole, "after {n} tokens");
            if stop_at.is_none() && d.contains_from(STOP_SEQUENCE, before.saturating_sub(3)) {
                stop_at = Some(n);
            }
            let first = (1..=n).find(|&k| tok.decode(&ids[..k]).unwrap().contains(STOP_SEQUENCE));
            assert_eq!(stop_at, first, "the stop sequence is seen at the token that completes it");
        }
        assert_eq!(d.text, text);
        assert!(d.pending.is_empty());
        assert!(taken.iter().any(String::is_empty), "a split character is held back: {taken:?}");
    }

    #[test]
    fn an_invalid_byte_sequence_decodes_as_the_whole_decoding_does() {
        let tok = ascii_tokenizer();
        // A lone continuation byte, a truncated 3-byte character, then ASCII: U+FFFD each.
        let mut ids = tok.encode("ok \u{e9}").unwrap();
        let e9 = ids.pop().unwrap(); // the continuation byte of "\u{e9}"
        ids.push(e9);
        ids.extend(tok.encode("\u{65E5}").unwrap().into_iter().take(2));
        ids.extend(tok.encode(" hello").unwrap());
        let mut d = IncrementalText::default();
        for n in 1..=ids.len() {
            d.push(&tok, &ids[..n]).unwrap();
        }
        assert_eq!(d.text, tok.decode(&ids).unwrap());
        assert!(d.text.contains(char::REPLACEMENT_CHARACTER), "{:?}", d.text);
    }

    /// Not a check: the per-token cost of following a streamed answer's text, as decoding the
    /// whole answer at every token did and incrementally. `cargo test -p sapllm-engine --lib
    /// -- --ignored --nocapture streamed_text_cost`.
    #[test]
    #[ignore = "a measurement"]
    fn streamed_text_cost() {
        let tok = ascii_tokenizer();
        let answer: String =
            (0..400).map(|i| format!("{{\"k{i}\": \"caf\u{e9} w\u{f6}rld {i}\"}}, ")).collect();
        for n in [250, 1000, 2000] {
            let ids = &tok.encode(&answer).unwrap()[..n];
            let t = std::time::Instant::now();
            let (mut s, mut sent) = (String::new(), 0);
            for k in 1..=n {
                let whole = tok.decode(&ids[..k]).unwrap();
                let settled = settled_reference(whole.trim_end_matches(char::REPLACEMENT_CHARACTER));
                if let Some(new) = settled.strip_prefix(&s[..sent]) {
                    s.push_str(new);
                    sent = s.len();
                }
            }
            let whole = t.elapsed();
            let t = std::time::Instant::now();
            let (mut d, mut st, mut streamed) =
                (IncrementalText::default(), Streamed::default(), String::new());
            for k in 1..=n {
                d.push(&tok, &ids[..k]).unwrap();
                streamed.push_str(st.advance(&d.text));
            }
            let incremental = t.elapsed();
            assert_eq!(streamed, s);
            println!(
                "{n} tokens: whole decode {:.1} us/token ({:.1} ms), incremental {:.2} us/token ({:.2} ms)",
                whole.as_secs_f64() * 1e6 / n as f64,
                whole.as_secs_f64() * 1e3,
                incremental.as_secs_f64() * 1e6 / n as f64,
                incremental.as_secs_f64() * 1e3,
            );
        }
    }
}
