//! Tokenizers: load a Hugging Face `tokenizer.json`, or train a byte-level BPE on a corpus for
//! the from-scratch presets and save it next to the weights.
//!
//! Trained tokenizers are byte-level (every byte is a token, so constrained decoding can map
//! tokens to bytes) with `add_prefix_space` OFF: llguidance's token-bytes extraction breaks with
//! it on. Special tokens follow Mixtral's ids: `<unk>`=0, `<s>`=1 (BOS), `</s>`=2 (EOS), plus
//! `<pad>`=3. BOS/EOS are never added implicitly: callers add them (see `template.rs`).

use std::path::Path;

use anyhow::{Context, Result, anyhow, ensure};
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, decoders::byte_level::ByteLevel as ByteLevelDecoder};

/// The file name tokenizers are saved under.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Special tokens of trained tokenizers, in id order.
pub const SPECIAL_TOKENS: [&str; 4] = ["<unk>", "<s>", "</s>", "<pad>"];

/// A tokenizer with its special token ids.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos_id: Option<u32>,
    pub eos_id: u32,
    pub pad_id: u32,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

fn token_name(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

/// `[start, end)` byte offsets into a text.
pub type ByteSpan = (usize, usize);

impl Tokenizer {
    /// Wraps a `tokenizers` tokenizer, finding BOS/EOS/PAD among common names (or as given in
    /// a neighbouring `tokenizer_config.json`, see [`Tokenizer::from_dir`]).
    pub fn from_inner(
        inner: tokenizers::Tokenizer,
        names: Option<(Option<String>, Option<String>, Option<String>)>,
    ) -> Result<Self> {
        let (bos_name, eos_name, pad_name) = names.unwrap_or((None, None, None));
        let find = |explicit: &Option<String>, candidates: &[&str]| -> Option<u32> {
            explicit
                .as_deref()
                .and_then(|n| inner.token_to_id(n))
                .or_else(|| candidates.iter().find_map(|c| inner.token_to_id(c)))
        };
        let bos_id = find(&bos_name, &["<s>", "<|begin_of_text|>", "<|bos|>"]);
        let eos_id = find(&eos_name, &["</s>", "<|endoftext|>", "<|end_of_text|>", "<|eos|>", "<|im_end|>"])
            .ok_or_else(|| {
                anyhow!("tokenizer has no end-of-sequence token (looked for </s>, <|endoftext|>, ...)")
            })?;
        let pad_id = find(&pad_name, &["<pad>", "<|pad|>", "<unk>"]).unwrap_or(eos_id);
        Ok(Tokenizer { inner, bos_id, eos_id, pad_id })
    }

    /// Loads `tokenizer.json` from a file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow!("loading tokenizer {}: {e}", path.display()))?;
        Self::from_inner(inner, None)
    }

    /// Loads `dir/tokenizer.json`, taking special token names from `dir/tokenizer_config.json`
    /// when present.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join(TOKENIZER_FILE);
        ensure!(path.exists(), "{} has no {TOKENIZER_FILE}", dir.display());
        let inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| anyhow!("loading tokenizer {}: {e}", path.display()))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let names = if cfg_path.exists() {
            let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path)?)
                .with_context(|| format!("parsing {}", cfg_path.display()))?;
            Some((
                v.get("bos_token").and_then(token_name),
                v.get("eos_token").and_then(token_name),
                v.get("pad_token").and_then(token_name),
            ))
        } else {
            None
        };
        Self::from_inner(inner, names)
    }

    /// Trains a byte-level BPE of `vocab_size` tokens (specials included) on `texts`.
    pub fn train_bpe<I, S>(texts: I, vocab_size: usize) -> Result<Self>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        Self::train_bpe_with_words(texts, vocab_size, &[])
    }

    /// [`Tokenizer::train_bpe`], plus `words` kept whole: each is one (non-special) added
    /// token, matched wherever it occurs in a text before the BPE splits the rest, inside
    /// the same `vocab_size`.
    pub fn train_bpe_with_words<I, S>(texts: I, vocab_size: usize, words: &[String]) -> Result<Self>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        let mut words: Vec<&str> = words.iter().map(String::as_str).filter(|w| !w.is_empty()).collect();
        words.sort_unstable();
        words.dedup();
        ensure!(
            vocab_size > 256 + SPECIAL_TOKENS.len() + words.len(),
            "BPE vocab_size must exceed {} (the byte alphabet + specials + {} whole words)",
            256 + SPECIAL_TOKENS.len() + words.len(),
            words.len()
        );
        let mut tok = Self::train_plain_bpe(texts, vocab_size - words.len())?;
        let added: Vec<AddedToken> = words.iter().map(|w| AddedToken::from(w.to_string(), false)).collect();
        tok.inner.add_tokens(added).map_err(|e| anyhow!("adding whole-word tokens: {e}"))?;
        ensure!(
            tok.inner.get_vocab_size(true) <= vocab_size,
            "{} tokens with the whole words, more than vocab_size {vocab_size}",
            tok.inner.get_vocab_size(true)
        );
        Ok(tok)
    }

    fn train_plain_bpe<I, S>(texts: I, vocab_size: usize) -> Result<Self>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        ensure!(
            vocab_size > 256 + SPECIAL_TOKENS.len(),
            "BPE vocab_size must exceed 260 (the byte alphabet + specials)"
        );
        let specials: Vec<AddedToken> = SPECIAL_TOKENS.iter().map(|t| AddedToken::from(*t, true)).collect();
        let trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(specials.clone())
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut trainer: TrainerWrapper = trainer.into();
        let mut inner = tokenizers::Tokenizer::new(BPE::default());
        // add_prefix_space=false (llguidance), trim_offsets=true, use_regex=true (GPT-2 split).
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));
        inner.train(&mut trainer, texts).map_err(|e| anyhow!("training BPE: {e}"))?;
        inner.add_special_tokens(specials).map_err(|e| anyhow!("adding special tokens: {e}"))?;
        for (i, t) in SPECIAL_TOKENS.iter().enumerate() {
            ensure!(inner.token_to_id(t) == Some(i as u32), "special token {t} did not get id {i}");
        }
        Self::from_inner(inner, None)
    }

    /// Writes `tokenizer.json` and a `tokenizer_config.json` naming the special tokens.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(TOKENIZER_FILE);
        self.inner.save(&path, false).map_err(|e| anyhow!("writing {}: {e}", path.display()))?;
        let name = |id: Option<u32>| id.and_then(|i| self.inner.id_to_token(i));
        let cfg = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": name(self.bos_id),
            "eos_token": name(Some(self.eos_id)),
            "pad_token": name(Some(self.pad_id)),
            "unk_token": name(Some(0)),
            "add_bos_token": false,
            "add_eos_token": false,
            "model_max_length": 1_000_000,
        });
        let cfg_path = dir.join("tokenizer_config.json");
        std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg)?)
            .with_context(|| format!("writing {}", cfg_path.display()))?;
        Ok(())
    }

    /// Token ids of `text` without any special token added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow!("tokenizing: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text` (no special tokens) with the byte span of `text` each one covers.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<ByteSpan>)> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow!("tokenizing: {e}"))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| anyhow!("decoding: {e}"))
    }

    /// Vocabulary size including added tokens (the model's `vocab_size` must be >= this).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The wrapped `tokenizers` tokenizer (e.g. for llguidance via its JSON).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// The tokenizer as `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(false).map_err(|e| anyhow!("serializing tokenizer: {e}"))
    }
}
