//! SFT examples: routing and exception examples rendered with the shared template and tokenized,
//! with the loss on response tokens only.

use std::io::BufRead;
use std::path::Path;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;

use crate::dataprep::examples::{ExceptionExample, RoutingExample};
use sapllm_engine::format::{exception_training_pair, routing_training_pair};
use sapllm_engine::profile::PromptProfile;
use sapllm_engine::template::encode_example;
use sapllm_model::tokenizer::Tokenizer;
use sapllm_sap::catalog::Catalog;
use sapllm_sap::routing::EXCEPTION_ENDPOINT;

/// Loss weight of the decision's choice (the answer's first field: the endpoint of a routing
/// decision, the action of an exception decision) relative to the rest of the response.
/// The choice is a dozen tokens of a several-hundred-token answer, yet it is the decision the
/// gates judge first (API selection must be 100 %); unweighted, its share of the gradient is a
/// few percent and a small model learns to copy payload values long before it learns to pick.
pub const CHOICE_LOSS_WEIGHT: u8 = 4;

/// The smallest share of the training split's routing sequences that decide exception handling
/// (incomplete or blocked documents). Logs have a few percent of them (5 % in the synthetic
/// default); so rare, a small model learns to always post: measured on the tiny preset with the
/// pre-flight findings in the prompt, it gave exception handling 1-43 % of the probability on
/// incomplete test documents and chose it for none. Below this share they are repeated (whole
/// copies, so the batches' loss weights stay comparable).
pub const MIN_EXCEPTION_SHARE: f64 = 0.15;

/// How many times each exception-handling routing sequence is used so that they make up at
/// least [`MIN_EXCEPTION_SHARE`] of `posted + exceptions x repeats` (1 when already enough or
/// when there are none).
pub fn exception_repeats(posted: usize, exceptions: usize) -> usize {
    if exceptions == 0 {
        return 1;
    }
    let s = MIN_EXCEPTION_SHARE;
    ((s * posted as f64) / ((1.0 - s) * exceptions as f64)).ceil().max(1.0) as usize
}

/// The smallest share of the exception-handling examples each action that occurs in them makes
/// up in SFT. The synthetic logs' actions are skewed (retry and escalation about 85 %; a
/// correction a rule derives, or a duplicate to reject, a few percent each); so rare, the tiny
/// preset escalated every failure a rule could correct (measured: 5 of 33 test failures,
/// exception actions 84.8 %). Rarer actions are repeated (whole copies) up to this share.
pub const MIN_ACTION_SHARE: f64 = 0.15;

/// Copies at most of one exception example (a handful of examples must not dominate).
pub const MAX_ACTION_REPEATS: usize = 6;

/// How many times each exception example of an action with `count` examples (of `total`) is
/// used so that the action makes up about [`MIN_ACTION_SHARE`] of the total.
pub fn action_repeats(count: usize, total: usize) -> usize {
    if count == 0 {
        return 1;
    }
    ((MIN_ACTION_SHARE * total as f64) / count as f64).ceil().clamp(1.0, MAX_ACTION_REPEATS as f64) as usize
}

/// One tokenized training sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct SftSequence {
    pub ids: Vec<u32>,
    /// Loss weight per token: 0 on the prompt, 1 on the response (and EOS),
    /// [`CHOICE_LOSS_WEIGHT`] on the choice.
    pub loss_mask: Vec<u8>,
}

impl SftSequence {
    /// Tokenizes (prompt, response) and weights the response's choice tokens.
    pub fn new(tok: &Tokenizer, prompt: &str, response: &str) -> Result<Self> {
        let (ids, mut loss_mask) = encode_example(tok, prompt, response)?;
        if let Some(end) = choice_end(response) {
            let (resp_ids, offsets) = tok.encode_with_offsets(response)?;
            // The response's tokens sit just before the final EOS.
            let start = ids.len() - 1 - resp_ids.len();
            for (i, &(from, _)) in offsets.iter().enumerate() {
                if from < end {
                    loss_mask[start + i] = CHOICE_LOSS_WEIGHT;
                }
            }
        }
        Ok(SftSequence { ids, loss_mask })
    }
}

/// The answer fields that hold a decision's choice.
const CHOICE_KEYS: [&str; 2] = ["\"endpoint\":", "\"action\":"];

/// Byte offset just past the value of the response's choice (`"endpoint":"..."` of a routing
/// answer, `"action":"..."` of an exception answer); everything before it is weighted too (the
/// echoed document type, forced at inference, costs nothing to weigh).
fn choice_end(response: &str) -> Option<usize> {
    let colon = CHOICE_KEYS.iter().filter_map(|k| response.find(k).map(|i| i + k.len())).min()?;
    let mut values = serde_json::Deserializer::from_str(&response[colon..]).into_iter::<serde_json::Value>();
    values.next()?.ok()?;
    Some(colon + values.byte_offset())
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
    /// Indices into `sequences` of the routing sequences that decide exception handling.
    pub exception_decisions: Vec<usize>,
    /// Times each of those is used ([`SftData::repeat_exception_decisions`]; 1 as loaded).
    pub exception_repeats: usize,
}

impl SftData {
    /// Repeats the exception-handling routing decisions up to [`MIN_EXCEPTION_SHARE`] (training
    /// only: a held-out split is scored as it is).
    pub fn repeat_exception_decisions(&mut self) {
        let exceptions = self.exception_decisions.len();
        let posted = self.routing - exceptions;
        let repeats = exception_repeats(posted, exceptions);
        let copies: Vec<SftSequence> =
            self.exception_decisions.iter().map(|&i| self.sequences[i].clone()).collect();
        for _ in 1..repeats {
            self.sequences.extend(copies.iter().cloned());
        }
        self.exception_repeats *= repeats;
    }
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

/// Tokenizes a routing example as `profile` shows it, dropping similar cases (then schema
/// detail) when the full prompt does not fit in `max_len` tokens. Returns the sequence and
/// whether it was shortened.
pub fn routing_sequence(
    catalog: &Catalog,
    tok: &Tokenizer,
    ex: &RoutingExample,
    max_len: usize,
    profile: &PromptProfile,
) -> Result<Option<(SftSequence, bool)>> {
    let mut ex = ex.clone();
    for attempt in 0..3 {
        let (prompt, response) = routing_training_pair(catalog, &ex, profile)?;
        let seq = SftSequence::new(tok, &prompt, &response)?;
        if seq.ids.len() <= max_len {
            return Ok(Some((seq, attempt > 0)));
        }
        match attempt {
            0 => ex.similar_cases.clear(),
            // Keep only the candidates' names: the answer's schema is enforced by the decoder.
            _ => ex.api_schemas.iter_mut().for_each(|s| s.schema.clear()),
        }
    }
    Ok(None)
}

/// Loads a split (routing + exception examples of `split`) from a data-prep folder.
pub fn load(
    data_dir: &Path,
    split: &str,
    catalog: &Catalog,
    tok: &Tokenizer,
    max_len: usize,
    profile: &PromptProfile,
) -> Result<SftData> {
    let mut data = SftData { exception_repeats: 1, ..SftData::default() };
    let routing: Vec<RoutingExample> = read_jsonl(&data_dir.join(format!("{split}_routing_examples.jsonl")))?;
    for ex in &routing {
        match routing_sequence(catalog, tok, ex, max_len, profile)? {
            Some((seq, shortened)) => {
                data.shortened += usize::from(shortened);
                data.routing += 1;
                if ex.target_endpoint == EXCEPTION_ENDPOINT {
                    data.exception_decisions.push(data.sequences.len());
                }
                data.sequences.push(seq);
            }
            None => data.too_long += 1,
        }
    }
    let exceptions_path = data_dir.join("exception_examples.jsonl");
    if exceptions_path.exists() {
        let exceptions: Vec<ExceptionExample> = read_jsonl(&exceptions_path)?;
        let ours: Vec<&ExceptionExample> = exceptions.iter().filter(|e| e.split == split).collect();
        let count = |a| ours.iter().filter(|e| e.action == a).count();
        for ex in &ours {
            let (prompt, response) = exception_training_pair(catalog, ex)?;
            let seq = SftSequence::new(tok, &prompt, &response)?;
            if seq.ids.len() <= max_len {
                for _ in 0..action_repeats(count(ex.action), ours.len()) {
                    data.exceptions += 1;
                    data.sequences.push(seq.clone());
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rare_exception_actions_are_repeated_towards_their_minimum_share_within_a_cap() {
        assert_eq!(action_repeats(120, 300), 1, "40 % needs no copies");
        assert_eq!(action_repeats(15, 300), 3, "5 % -> 3 copies (15 %)");
        assert_eq!(action_repeats(2, 300), MAX_ACTION_REPEATS, "capped");
        assert_eq!(action_repeats(0, 300), 1);
    }

    #[test]
    fn rare_exception_decisions_are_repeated_up_to_the_minimum_share() {
        assert_eq!(exception_repeats(950, 50), 4, "5 % -> 4 copies (17.4 %)");
        assert_eq!(exception_repeats(100, 0), 1);
        assert_eq!(exception_repeats(80, 20), 1, "20 % is enough already");
        for (posted, exc) in [(950, 50), (2280, 118), (999, 1)] {
            let r = exception_repeats(posted, exc);
            let share = |r: usize| (exc * r) as f64 / (posted + exc * r) as f64;
            assert!(
                share(r) >= MIN_EXCEPTION_SHARE && share(r - 1) < MIN_EXCEPTION_SHARE,
                "{posted} {exc} {r}"
            );
        }
    }

    #[test]
    fn only_the_exception_decisions_are_repeated() {
        let seq = |i: u32| SftSequence { ids: vec![i], loss_mask: vec![1] };
        let mut data = SftData {
            sequences: (0..100).map(seq).collect(),
            routing: 100,
            exception_decisions: vec![3, 50, 60, 70, 99],
            exception_repeats: 1,
            ..SftData::default()
        };
        data.repeat_exception_decisions();
        assert_eq!(data.exception_repeats, 4);
        assert_eq!(data.sequences.len(), 100 + 3 * 5, "three more copies of each of the five");
        let copies = |i: u32| data.sequences.iter().filter(|s| s.ids == [i]).count();
        assert_eq!((copies(3), copies(99), copies(4)), (4, 4, 1));
    }

    #[test]
    fn the_choice_weighs_more_the_body_one_and_the_prompt_nothing() {
        let resp = r#"{"doc_type":"sales_order","endpoint":"API_SALES_ORDER_SRV/A_SalesOrder","payload":{"SalesOrderType":"OR"}}"#;
        let texts = vec![resp.to_string(); 20];
        let tok = Tokenizer::train_bpe(texts.iter(), 300).unwrap();
        let prompt = "### Request\n{\"doc_type\":\"sales_order\"}\n### Response\n";
        let seq = SftSequence::new(&tok, prompt, resp).unwrap();
        let n_prompt = sapllm_engine::template::encode_prompt(&tok, prompt).unwrap().len();
        assert!(seq.loss_mask[..n_prompt].iter().all(|&w| w == 0), "no loss on the prompt");
        let weighted: Vec<u32> = seq
            .ids
            .iter()
            .zip(&seq.loss_mask)
            .filter(|&(_, &w)| w == CHOICE_LOSS_WEIGHT)
            .map(|(&id, _)| id)
            .collect();
        let choice = tok.decode(&weighted).unwrap();
        assert!(choice.contains("API_SALES_ORDER_SRV/A_SalesOrder"), "{choice:?}");
        assert!(!choice.contains("SalesOrderType"), "the body keeps weight 1: {choice:?}");
        assert_eq!(seq.loss_mask.last(), Some(&1), "EOS counts once");
        assert!(seq.loss_mask[n_prompt..].iter().all(|&w| w >= 1));
    }

    #[test]
    fn choice_end_is_past_the_first_value() {
        let r = r#"{"action":"retry","correction":[]}"#;
        assert_eq!(&r[..choice_end(r).unwrap()], r#"{"action":"retry""#);
        assert_eq!(choice_end("not json"), None);
        let r = r#"{"doc_type":"x","endpoint":"E/S","payload":null}"#;
        assert_eq!(&r[..choice_end(r).unwrap()], r#"{"doc_type":"x","endpoint":"E/S""#);
    }
}
