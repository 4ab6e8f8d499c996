//! The bridge from our tokenizer to llguidance: a `TokenizerEnv` whose trie holds every token's
//! bytes (read from `tokenizer.json`) and whose tokenization is the REAL tokenizer's.
//!
//! Why not `toktrie::ApproximateTokEnv`: it tokenizes greedily and says it is not canonical, and
//! llguidance then computes no forced tokens at all. Forced tokens must also be the tokens SFT
//! trained on (BPE's canonical split), or the model would be fed sequences it never saw.

use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use sapllm_model::tokenizer::Tokenizer;

/// llguidance's view of a [`Tokenizer`].
pub struct ModelTokEnv {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl ModelTokEnv {
    /// Builds the trie from the tokenizer's JSON (token bytes via llguidance's own reader, which
    /// understands byte-level BPE and byte fallback).
    pub fn new(tokenizer: &Tokenizer) -> Result<Self> {
        let json: serde_json::Value =
            serde_json::from_str(&tokenizer.to_json()?).context("tokenizer JSON")?;
        let words = llguidance::token_bytes_from_tokenizer_json(&json)
            .context("reading token bytes from tokenizer.json")?;
        ensure!(!words.is_empty(), "tokenizer has no tokens");
        let vocab_size = words.len() as u32;
        ensure!(tokenizer.eos_id < vocab_size, "EOS id {} outside the vocabulary", tokenizer.eos_id);
        let info = TokRxInfo {
            vocab_size,
            tok_eos: tokenizer.eos_id,
            tok_bos: tokenizer.bos_id,
            tok_pad: Some(tokenizer.pad_id),
            tok_unk: None,
            tok_end_of_turn: None,
        };
        Ok(ModelTokEnv { trie: TokTrie::from(&info, &words), tokenizer: tokenizer.clone() })
    }

    pub fn into_env(self) -> TokEnv {
        Arc::new(self)
    }
}

impl TokenizerEnv for ModelTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// Canonical tokenization of valid UTF-8; a partial UTF-8 tail (forced bytes may stop
    /// mid-character) is tokenized greedily from the trie.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        let valid = match std::str::from_utf8(s) {
            Ok(_) => s.len(),
            Err(e) => e.valid_up_to(),
        };
        let text = std::str::from_utf8(&s[..valid]).unwrap_or_default();
        let mut ids = match self.tokenizer.encode(text) {
            Ok(ids) => ids,
            Err(_) => return self.trie.greedy_tokenize(s),
        };
        if valid < s.len() {
            ids.extend(self.trie.greedy_tokenize(&s[valid..]));
        }
        ids
    }

    fn tokenize_is_canonical(&self) -> bool {
        true
    }
}
