//! SFT examples: routing and exception examples rendered with the shared template and tokenized,
//! with the loss on response tokens only.

use std::io::BufRead;
use std::path::Path;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;

use crate::dataprep::examples::{ExceptionExample, RoutingExample};
use crate::inference::format::{exception_training_pair, routing_training_pair};
use crate::inference::profile::PromptProfile;
use crate::model::template::encode_example;
use crate::model::tokenizer::Tokenizer;
use crate::sap::catalog::Catalog;

/// One tokenized training sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct SftSequence {
    pub ids: Vec<u32>,
    /// 1 on response tokens (and EOS), 0 on the prompt.
    pub loss_mask: Vec<u8>,
}

/// What loading produced.
#[derive(Debug, Default)]
pub struct SftData {
    pub sequences: Vec<SftSequence>,
    pub routing: usize,
    pub exceptions: usize,
    /// Examples whose shortest rendering still exceeded the maximum length.
    pub too_long: usize,
    /// Examples that needed their similar cases dropped to fit.
    pub shortened: usize,
}

/// Reads a JSONL file of `T`, naming the line of a malformed record.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .with_context(|| format!("{}: line {} is not a valid record", path.display(), i + 1))?,
        );
    }
    Ok(out)
}

/// Tokenizes a routing example, dropping similar cases (then schema detail) when the full
/// prompt does not fit in `max_len` tokens. Returns the sequence and whether it was shortened.
pub fn routing_sequence(
    catalog: &Catalog,
    tok: &Tokenizer,
    ex: &RoutingExample,
    max_len: usize,
) -> Result<Option<(SftSequence, bool)>> {
    let mut ex = ex.clone();
    for attempt in 0..3 {
        let (prompt, response) = routing_training_pair(catalog, &ex)?;
        let (ids, loss_mask) = encode_example(tok, &prompt, &response)?;
        if ids.len() <= max_len {
            return Ok(Some((SftSequence { ids, loss_mask }, attempt > 0)));
        }
        match attempt {
            0 => ex.similar_cases.clear(),
            // Keep only the candidates' names: the answer's schema is enforced by the decoder.
            _ => ex.api_schemas.iter_mut().for_each(|s| s.schema.clear()),
        }
    }
    Ok(None)
}

/// A routing example as the prompt profile shows it (the targets are unchanged).
pub fn profile_example(ex: &RoutingExample, profile: &PromptProfile) -> RoutingExample {
    let mut ex = ex.clone();
    if !profile.candidate_schemas {
        ex.api_schemas.iter_mut().for_each(|s| s.schema.clear());
    }
    ex.similar_cases.truncate(profile.max_similar_cases);
    ex
}

/// Loads the training split (routing + exception examples of `split`) from a data-prep folder.
pub fn load(
    data_dir: &Path,
    split: &str,
    catalog: &Catalog,
    tok: &Tokenizer,
    max_len: usize,
    profile: &PromptProfile,
) -> Result<SftData> {
    let mut data = SftData::default();
    let routing: Vec<RoutingExample> = read_jsonl(&data_dir.join(format!("{split}_routing_examples.jsonl")))?;
    for ex in &routing {
        let ex = profile_example(ex, profile);
        match routing_sequence(catalog, tok, &ex, max_len)? {
            Some((seq, shortened)) => {
                data.shortened += usize::from(shortened);
                data.routing += 1;
                data.sequences.push(seq);
            }
            None => data.too_long += 1,
        }
    }
    let exceptions_path = data_dir.join("exception_examples.jsonl");
    if exceptions_path.exists() {
        let exceptions: Vec<ExceptionExample> = read_jsonl(&exceptions_path)?;
        for ex in exceptions.iter().filter(|e| e.split == split) {
            let (prompt, response) = exception_training_pair(ex)?;
            let (ids, loss_mask) = encode_example(tok, &prompt, &response)?;
            if ids.len() <= max_len {
                data.exceptions += 1;
                data.sequences.push(SftSequence { ids, loss_mask });
            } else {
                data.too_long += 1;
            }
        }
    }
    anyhow::ensure!(
        !data.sequences.is_empty(),
        "no {split} example fits in {max_len} tokens ({} too long): raise maxSequenceLength",
        data.too_long
    );
    Ok(data)
}
