//! Batched, grammar-constrained decoding of "choose an option, then fill in the rest".
//!
//! For every row (one request) the decoder
//! 1. prefills prompt + the answer prefix every option shares (`{"endpoint":"`), left-padded;
//! 2. scores every allowed option by teacher forcing its tokens from a snapshot of the KV
//!    cache: `log p(option | prompt)` is the sum of its token log-probabilities. All options of
//!    all rows go through ONE forward with tree attention (each option sees the prompt and its
//!    own tokens only), never re-running the prompt;
//! 3. picks the most probable option, builds that option's grammar (llguidance) and lets it
//!    consume the prefix;
//! 4. generates the rest under the grammar mask. After each sampled token the grammar's forced
//!    tokens (`compute_ff_tokens`: keys, punctuation, enum tails...) are appended WITHOUT
//!    sampling, and all pending tokens go through the model in one forward call, so a run of k
//!    forced tokens costs one step instead of k.
//!
//! 5. (greedy only) drafts: after the pending tokens, proposes up to `speculate` more by prompt
//!    lookup (`draft.rs`), checked against the grammar, and feeds them in the same forward.
//!    Each draft token is kept only while it is the token the model picks from the logits
//!    before it (the same pick as without drafting); the first other pick is kept as a fresh
//!    token and the rest of the draft is dropped from the cache. The answer is unchanged; the
//!    forward calls fall by the accepted drafts.
//!
//! Rows finish independently; a finished row rides along masked out until the batch is done.

use std::time::Instant;

use anyhow::{Result, anyhow, bail};
use llguidance::Matcher;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use super::draft;
use super::forward::{Step, forward_branches, forward_select, forward_select_with};
use super::grammar::GrammarCache;
use super::logits::{log_prob, pick_allowed, softmax};
use super::types::DecodeStats;
use sapllm_model::ForwardPath;
use sapllm_model::mixtral::Mixtral;
use sapllm_model::mixtral::kv_cache::KvCache;
use sapllm_model::plain::DecodeWeights;

/// Decoding settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeOptions {
    /// Response tokens allowed per row (prefix included); a row that needs more fails.
    pub max_new_tokens: usize,
    /// Feed grammar-forced tokens without sampling (off only to measure what it saves).
    pub use_forced_tokens: bool,
    /// 0 = greedy.
    pub temperature: f64,
    pub seed: u64,
    /// Score all options in one tree-attention forward (else one forward per option index).
    pub tree_scoring: bool,
    /// Draft tokens proposed by prompt lookup per forward (greedy decoding only; 0 = off, the
    /// default: measured net cost on CPU with the tiny preset, see `bench_serve`).
    pub speculate: usize,
    /// Which forward implementation runs: [`ForwardPath::Plain`] by default (single-row prefill
    /// and generation steps through the plain-slice forward when the caller provides one,
    /// everything else through the fused candle graph); the others only to measure what each
    /// part saves, or to compare.
    pub path: ForwardPath,
    /// Greedy decoding after the body: take the unconstrained best token when the grammar
    /// accepts it instead of computing the full mask (same answer; off only to measure).
    pub lazy_mask: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_new_tokens: 1024,
            use_forced_tokens: true,
            temperature: 0.0,
            seed: 0,
            tree_scoring: true,
            speculate: 0,
            path: ForwardPath::Plain,
            lazy_mask: true,
        }
    }
}

/// One allowed option of a row: its label, its tokens after the shared prefix, and the schema
/// the whole answer must match once it is chosen.
#[derive(Debug, Clone)]
pub struct OptionSpec {
    pub label: String,
    pub suffix: Vec<u32>,
    pub schema: Value,
}

/// One row to decode.
#[derive(Debug, Clone)]
pub struct RowSpec {
    /// BOS + prompt tokens.
    pub prompt: Vec<u32>,
    /// Answer tokens every option starts with.
    pub prefix: Vec<u32>,
    pub options: Vec<OptionSpec>,
    /// Bytes that end the "body" of the answer (e.g. `,"reasoning":`): free tokens sampled
    /// before it count towards the body certainty.
    pub body_end: String,
    /// Latency measurement only: a reference answer to follow instead of the model's argmax
    /// (the option it starts with, and at each step the allowed token covering most of its
    /// remaining bytes). Everything else (grammar, forced tokens, forwards) runs as usual.
    pub reference: Option<(usize, Vec<u8>)>,
}

/// What one row produced.
#[derive(Debug, Clone)]
pub struct RowOutput {
    pub choice: usize,
    /// Renormalised probability of each option (same order as `RowSpec::options`).
    pub option_probs: Vec<f64>,
    /// The complete answer text (grammar-valid).
    pub text: String,
    /// Constrained log-probabilities of the freely sampled body tokens.
    pub body_logprobs: Vec<f64>,
    pub stats: DecodeStats,
}

/// Timing of a batch (for benchmarks and metrics).
#[derive(Debug, Clone, Copy, Default)]
pub struct BatchTiming {
    pub prefill_s: f64,
    pub scoring_s: f64,
    pub generate_s: f64,
    pub mask_s: f64,
    pub forward_calls: usize,
    /// Draft tokens proposed / kept (prompt lookup).
    pub drafted: usize,
    pub accepted: usize,
    /// Tokens picked without a grammar mask (`DecodeOptions::lazy_mask`).
    pub unmasked: usize,
}

struct Live {
    matcher: Matcher,
    tokens: Vec<u32>,
    pending: Vec<u32>,
    last_logits: Vec<f32>,
    body_logprobs: Vec<f64>,
    in_body: bool,
    sampled: usize,
    forced: usize,
    /// The last `draft` tokens of `pending` are unverified guesses (not consumed by `matcher`).
    draft: usize,
    drafted: usize,
    accepted: usize,
    /// Tokens taken without computing the grammar mask.
    unmasked: usize,
    done: bool,
    error: Option<String>,
    /// Answer tokens allowed: `max_new_tokens`, capped by the context left after the prompt.
    budget: usize,
}

/// Decodes every row of the batch. The outer `Result` fails only when the model itself fails;
/// a row-level problem (grammar error, token budget exhausted) is that row's `Err`. `fast` is
/// the model's plain-slice decode step, when it has one.
///
/// Four steps, each a method of [`Batch`]: prefill the prompts and the shared answer prefix;
/// score the options; continue the cache from the chosen ones; generate the rest of each
/// answer under its option's grammar.
pub fn decode_batch(
    model: &Mixtral,
    fast: Option<&DecodeWeights>,
    grammars: &GrammarCache,
    eos: u32,
    pad: u32,
    rows: &[RowSpec],
    opts: &DecodeOptions,
) -> Result<(Vec<Result<RowOutput>>, BatchTiming)> {
    if rows.is_empty() {
        return Ok((Vec::new(), BatchTiming::default()));
    }
    for r in rows {
        if r.options.is_empty() || r.options.iter().any(|o| o.suffix.is_empty()) {
            bail!("every row needs at least one option with a non-empty token suffix");
        }
    }
    let batch = Batch { model, fast: fast.filter(|_| opts.path.plain_steps()), eos, pad, rows, opts };
    let mut timing = BatchTiming::default();
    let trie = grammars.factory().tok_env().tok_trie().clone();

    let t0 = Instant::now();
    let (snapshot, first_logits) = batch.prefill()?;
    timing.prefill_s = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let Scored { probs, choice, branches } = batch.score_options(&snapshot, &first_logits, &mut timing)?;
    let (mut cache, last) = batch.follow_choice(&snapshot, &choice, branches, &mut timing)?;
    timing.scoring_s = t1.elapsed().as_secs_f64();

    let t2 = Instant::now();
    let mut live = batch.start_answers(grammars, &choice, last)?;
    batch.generate(&mut live, &mut cache, &trie, &mut timing)?;
    timing.generate_s = t2.elapsed().as_secs_f64();
    timing.drafted = live.iter().map(|l| l.drafted).sum();
    timing.accepted = live.iter().map(|l| l.accepted).sum();
    timing.unmasked = live.iter().map(|l| l.unmasked).sum();

    let forward_calls = timing.forward_calls;
    let outputs = live
        .into_iter()
        .zip(rows)
        .zip(choice.iter().zip(probs))
        .map(|((l, r), (&c, p))| {
            if let Some(e) = l.error {
                let text = String::from_utf8_lossy(&trie.decode_raw(&l.tokens)).into_owned();
                let tail: String =
                    text.chars().rev().take(160).collect::<Vec<_>>().into_iter().rev().collect();
                bail!("{e}; answer so far ends with {tail:?}");
            }
            let text = String::from_utf8(trie.decode_raw(&l.tokens))
                .map_err(|e| anyhow!("answer is not UTF-8: {e}"))?;
            Ok(RowOutput {
                choice: c,
                option_probs: p,
                text,
                body_logprobs: l.body_logprobs,
                stats: DecodeStats {
                    prompt_tokens: r.prompt.len(),
                    response_tokens: l.tokens.len(),
                    sampled_tokens: l.sampled,
                    forced_tokens: l.forced,
                    forward_calls,
                    draft_tokens: l.drafted,
                    accepted_draft_tokens: l.accepted,
                },
            })
        })
        .collect();
    Ok((outputs, timing))
}

/// The options scored: per row, each option's probability and the choice; for sequential
/// scoring, each option index's cache and last logits.
struct Scored {
    probs: Vec<Vec<f64>>,
    choice: Vec<usize>,
    branches: Vec<Branch>,
}

/// What every step of one batch decode reads.
struct Batch<'a> {
    model: &'a Mixtral,
    /// The plain-slice forward, when the path uses it for generation steps.
    fast: Option<&'a DecodeWeights>,
    eos: u32,
    pad: u32,
    rows: &'a [RowSpec],
    opts: &'a DecodeOptions,
}

impl Batch<'_> {
    /// Prompt + shared answer prefix of every row, left-padded: the snapshot every option
    /// continues from, and the logits after each row's last token.
    fn prefill(&self) -> Result<(KvCache, Vec<Vec<f32>>)> {
        let (model, opts) = (self.model, self.opts);
        let seqs: Vec<Vec<u32>> =
            self.rows.iter().map(|r| [r.prompt.as_slice(), r.prefix.as_slice()].concat()).collect();
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let step = Step::left_padded(&refs, self.pad);
        let b = self.rows.len();
        let mut snapshot = KvCache::new(model.cfg.num_hidden_layers, b);
        let last_col = step.len - 1;
        let select: Vec<(usize, usize)> = (0..b).map(|r| (r, last_col)).collect();
        let prefill_fast = self.fast.filter(|_| opts.path.plain_prefill());
        let first_logits =
            forward_select_with(model, prefill_fast, &step, &mut snapshot, &select, opts.path)?;
        Ok((snapshot, first_logits))
    }

    /// Scores the options from the snapshot: all branches in one tree-attention forward, or
    /// (sliding-window models, or on request) one forward per option index. Returns each row's
    /// option probabilities, its choice (the reference's, when following one) and, for
    /// sequential scoring, each option index's cache and last logits.
    fn score_options(
        &self,
        snapshot: &KvCache,
        first_logits: &[Vec<f32>],
        timing: &mut BatchTiming,
    ) -> Result<Scored> {
        let (model, rows, opts) = (self.model, self.rows, self.opts);
        let tree = opts.tree_scoring && model.cfg.sliding_window.is_none();
        let (scores, branches) = if tree {
            let mut scratch = snapshot.fork()?;
            let feeds: Vec<Vec<&[u32]>> =
                rows.iter().map(|r| r.options.iter().map(|o| o.suffix.as_slice()).collect()).collect();
            let logits = forward_branches(model, &mut scratch, &feeds, self.pad, opts.path)?;
            timing.forward_calls += 1;
            let scores = rows
                .iter()
                .zip(&logits)
                .enumerate()
                .map(|(r, (row, per_option))| {
                    row.options
                        .iter()
                        .zip(per_option)
                        .map(|(o, lg)| sequence_logprob(&first_logits[r], lg, &o.suffix))
                        .collect()
                })
                .collect();
            (scores, Vec::new())
        } else {
            score_sequential(model, snapshot, first_logits, rows, self.pad, opts.path, timing)?
        };
        let probs: Vec<Vec<f64>> = scores.iter().map(|s| softmax(s)).collect();
        let choice: Vec<usize> = probs
            .iter()
            .zip(rows)
            .map(|(p, r)| match &r.reference {
                Some((c, _)) if *c < p.len() => *c,
                _ => p.iter().enumerate().fold(0, |best, (i, &v)| if v > p[best] { i } else { best }),
            })
            .collect();
        Ok(Scored { probs, choice, branches })
    }

    /// The cache after each row's chosen option and the logits after it: a sequential scoring
    /// branch when every row chose the same index, else the chosen suffixes fed from the
    /// snapshot once more.
    fn follow_choice(
        &self,
        snapshot: &KvCache,
        choice: &[usize],
        mut branches: Vec<Branch>,
        timing: &mut BatchTiming,
    ) -> Result<(KvCache, Vec<Vec<f32>>)> {
        if !branches.is_empty() && choice.iter().all(|&c| c == choice[0]) {
            return Ok(branches.swap_remove(choice[0]));
        }
        let feeds: Vec<&[u32]> =
            self.rows.iter().zip(choice).map(|(r, &c)| r.options[c].suffix.as_slice()).collect();
        let step = Step::right_padded(&feeds, self.pad);
        let select: Vec<(usize, usize)> = feeds.iter().enumerate().map(|(r, f)| (r, f.len() - 1)).collect();
        let mut cache = snapshot.fork()?;
        let l = forward_select_with(self.model, self.fast, &step, &mut cache, &select, self.opts.path)?;
        timing.forward_calls += 1;
        Ok((cache, l))
    }

    /// Each row's answer so far (prefix + chosen option) under its option's grammar, with the
    /// grammar-forced tokens that follow and a first draft queued.
    fn start_answers(
        &self,
        grammars: &GrammarCache,
        choice: &[usize],
        last: Vec<Vec<f32>>,
    ) -> Result<Vec<Live>> {
        let opts = self.opts;
        let mut live: Vec<Live> = Vec::with_capacity(self.rows.len());
        for ((r, &c), last_logits) in self.rows.iter().zip(choice).zip(last) {
            let answer_prefix: Vec<u32> = [r.prefix.as_slice(), r.options[c].suffix.as_slice()].concat();
            let mut l = Live {
                matcher: grammars.matcher(&r.options[c].schema)?,
                tokens: answer_prefix.clone(),
                pending: Vec::new(),
                last_logits,
                body_logprobs: Vec::new(),
                in_body: true,
                sampled: 0,
                forced: 0,
                draft: 0,
                drafted: 0,
                accepted: 0,
                unmasked: 0,
                done: false,
                error: None,
                budget: opts
                    .max_new_tokens
                    .min(self.model.cfg.max_position_embeddings.saturating_sub(r.prompt.len())),
            };
            if let Err(e) = l.matcher.consume_tokens(&answer_prefix) {
                l.error = Some(format!("the grammar rejected the answer prefix: {e}"));
                l.done = true;
            } else if opts.use_forced_tokens {
                take_forced(&mut l, self.eos);
            }
            add_draft(&mut l, r, self.speculate());
            live.push(l);
        }
        Ok(live)
    }

    /// Drafts are checked against the greedy pick; sampling would need rejection sampling.
    fn speculate(&self) -> usize {
        if self.opts.temperature > 0.0 { 0 } else { self.opts.speculate }
    }

    /// Constrained generation until every row is done: sample (or take forced tokens) per row,
    /// then one forward over every row's pending tokens, verifying drafts.
    fn generate(
        &self,
        live: &mut [Live],
        cache: &mut KvCache,
        trie: &toktrie::TokTrie,
        timing: &mut BatchTiming,
    ) -> Result<()> {
        let (rows, opts, eos) = (self.rows, self.opts, self.eos);
        let speculate = self.speculate();
        let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
        loop {
            let tm = Instant::now();
            for (l, r) in live.iter_mut().zip(rows) {
                if l.done || !l.pending.is_empty() {
                    continue;
                }
                sample_one(l, r, trie, eos, opts, &mut rng);
                if !l.done && opts.use_forced_tokens {
                    take_forced(l, eos);
                }
                check_budget(l);
                add_draft(l, r, speculate);
            }
            timing.mask_s += tm.elapsed().as_secs_f64();
            if live.iter().all(|l| l.done || l.pending.is_empty()) {
                return Ok(());
            }
            let feeds: Vec<&[u32]> =
                live.iter().map(|l| if l.done { &[][..] } else { l.pending.as_slice() }).collect();
            let step = Step::right_padded(&feeds, self.pad);
            // Logits after the last real token, and after each draft token before it.
            let select: Vec<(usize, usize)> = feeds
                .iter()
                .enumerate()
                .filter(|(_, f)| !f.is_empty())
                .flat_map(|(r, f)| (f.len() - 1 - live[r].draft..f.len()).map(move |c| (r, c)))
                .collect();
            let fed: Vec<usize> = feeds.iter().map(|f| f.len()).collect();
            let mut logits =
                forward_select_with(self.model, self.fast, &step, cache, &select, opts.path)?.into_iter();
            timing.forward_calls += 1;
            let base = cache.len() - step.len;
            for (r, l) in live.iter_mut().enumerate() {
                if fed[r] == 0 {
                    continue;
                }
                let lgs: Vec<Vec<f32>> = logits.by_ref().take(l.draft + 1).collect();
                if l.draft == 0 {
                    l.last_logits = lgs.into_iter().next().unwrap_or_default();
                    l.pending.clear();
                    continue;
                }
                let rejected = verify(l, &rows[r], lgs, trie, eos, opts, &mut rng);
                // Rejected draft tokens leave the cache as padding (masked, no position).
                for m in &mut cache.mask[r][base + fed[r] - rejected..base + fed[r]] {
                    *m = 0;
                }
                if !l.done {
                    check_budget(l);
                    add_draft(l, &rows[r], speculate);
                }
            }
            cache.trim_padding_tail()?;
        }
    }
}

/// `log p(suffix | prefix)`: the first token from the prefix's last logits, each next token
/// from the logits after its predecessor.
fn sequence_logprob(first: &[f32], after: &[Vec<f32>], suffix: &[u32]) -> f64 {
    let mut s = log_prob(first, suffix[0]);
    for (c, lg) in after.iter().enumerate().take(suffix.len().saturating_sub(1)) {
        s += log_prob(lg, suffix[c + 1]);
    }
    s
}

type Branch = (KvCache, Vec<Vec<f32>>);

/// Scores option j of every row with one forward per option index from the snapshot; returns
/// the scores and each index's cache + last logits (reusable when all rows choose it). `j` is
/// an option POSITION shared by all rows, hence the range loop.
#[allow(clippy::needless_range_loop)]
fn score_sequential(
    model: &Mixtral,
    snapshot: &KvCache,
    first_logits: &[Vec<f32>],
    rows: &[RowSpec],
    pad: u32,
    path: ForwardPath,
    timing: &mut BatchTiming,
) -> Result<(Vec<Vec<f64>>, Vec<Branch>)> {
    let b = rows.len();
    let max_opts = rows.iter().map(|r| r.options.len()).max().unwrap_or(0);
    let mut scores: Vec<Vec<f64>> = rows.iter().map(|r| vec![0.0; r.options.len()]).collect();
    let mut branches: Vec<Branch> = Vec::with_capacity(max_opts);
    for j in 0..max_opts {
        let feeds: Vec<&[u32]> =
            rows.iter().map(|r| r.options.get(j).map_or(&[][..], |o| o.suffix.as_slice())).collect();
        let step = Step::right_padded(&feeds, pad);
        let select: Vec<(usize, usize)> =
            feeds.iter().enumerate().flat_map(|(r, f)| (0..f.len()).map(move |c| (r, c))).collect();
        let mut cache = snapshot.fork()?;
        let logits = forward_select(model, &step, &mut cache, &select, path)?;
        timing.forward_calls += 1;
        let mut it = logits.into_iter();
        let mut last_per_row = vec![Vec::new(); b];
        for (r, f) in feeds.iter().enumerate() {
            if f.is_empty() {
                continue;
            }
            let after: Vec<Vec<f32>> = it.by_ref().take(f.len()).collect();
            scores[r][j] = sequence_logprob(&first_logits[r], &after, f);
            last_per_row[r] = after.last().cloned().unwrap_or_default();
        }
        branches.push((cache, last_per_row));
    }
    Ok((scores, branches))
}

/// Samples one token for `l` under its grammar mask and consumes it.
fn sample_one(
    l: &mut Live,
    r: &RowSpec,
    trie: &toktrie::TokTrie,
    eos: u32,
    opts: &DecodeOptions,
    rng: &mut rand::rngs::StdRng,
) {
    if l.matcher.is_stopped() {
        l.done = true;
        return;
    }
    // Greedy after the body: when the grammar accepts the model's unconstrained best token,
    // it is also the best allowed one (same pick, first index on ties), and no probability
    // under the mask is needed there, so the full mask (a walk over the whole vocabulary) is
    // skipped. Measured in `bench_serve`: see the README.
    if opts.lazy_mask && !l.in_body && opts.temperature == 0.0 && r.reference.is_none() {
        let n = l.last_logits.len().min(trie.vocab_size());
        let best = argmax(&l.last_logits[..n]);
        if let Some(tok) = best.filter(|&t| t != eos)
            && l.matcher.validate_tokens(&[tok]).unwrap_or(0) == 1
        {
            l.unmasked += 1;
            accept(l, r, trie, tok, 0.0);
            return;
        }
    }
    let mask = match l.matcher.compute_mask() {
        Ok(m) => m,
        Err(e) => {
            l.error = Some(format!("grammar: {e}"));
            l.done = true;
            return;
        }
    };
    let u = rng.random::<f64>();
    let followed =
        r.reference.as_ref().and_then(|(_, bytes)| follow_reference(trie, &l.tokens, bytes, &mask));
    let Some((tok, lp)) =
        followed.map(|t| (t, 0.0)).or_else(|| pick_allowed(&l.last_logits, &mask, opts.temperature, u))
    else {
        l.error = Some("the grammar allows no token of the model's vocabulary".into());
        l.done = true;
        return;
    };
    if tok == eos {
        l.done = true;
        return;
    }
    accept(l, r, trie, tok, lp);
}

/// Consumes the picked token `tok` (log-probability `lp` under the mask, counted in the body).
fn accept(l: &mut Live, r: &RowSpec, trie: &toktrie::TokTrie, tok: u32, lp: f64) {
    if let Err(e) = l.matcher.consume_token(tok) {
        l.error = Some(format!("grammar rejected token {tok}: {e}"));
        l.done = true;
        return;
    }
    l.sampled += 1;
    l.tokens.push(tok);
    l.pending.push(tok);
    if l.in_body {
        l.body_logprobs.push(lp);
        let text = trie.decode_raw(&l.tokens);
        l.in_body = !contains(&text, r.body_end.as_bytes());
    }
    if l.matcher.is_stopped() {
        // Complete: the last token needs no forward pass.
        l.done = true;
        l.pending.clear();
    }
}

/// The first index of the largest finite value.
fn argmax(row: &[f32]) -> Option<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in row.iter().enumerate() {
        if v.is_finite() && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i as u32)
}

/// The allowed token covering the most of the reference's bytes after those already written.
fn follow_reference(
    trie: &toktrie::TokTrie,
    tokens: &[u32],
    reference: &[u8],
    mask: &toktrie::SimpleVob,
) -> Option<u32> {
    let done = trie.decode_raw(tokens).len();
    let rest = reference.get(done..).filter(|r| !r.is_empty())?;
    let mut best: Option<(u32, usize)> = None;
    for t in mask.iter() {
        let b = trie.token(t);
        if !b.is_empty() && rest.starts_with(b) && best.is_none_or(|(_, n)| b.len() > n) {
            best = Some((t, b.len()));
        }
    }
    best.map(|(t, _)| t)
}

/// Fails the row once its answer is past its token budget.
fn check_budget(l: &mut Live) {
    if !l.done && l.tokens.len() > l.budget {
        l.error = Some(format!(
            "answer exceeded its budget of {} tokens (max_new_tokens or the context)",
            l.budget
        ));
        l.done = true;
    }
}

/// Appends up to `max` prompt-lookup draft tokens that the grammar accepts to `l.pending`
/// (not consumed: `verify` does that for the ones the model agrees with).
fn add_draft(l: &mut Live, r: &RowSpec, max: usize) {
    l.draft = 0;
    if l.done || l.pending.is_empty() {
        return;
    }
    let room = max.min(l.budget.saturating_sub(l.tokens.len()));
    if room == 0 {
        return;
    }
    let context = [r.prompt.as_slice(), l.tokens.as_slice()].concat();
    let mut guess = draft::propose(&context, room);
    let valid = l.matcher.validate_tokens(&guess).unwrap_or(0);
    guess.truncate(valid);
    l.drafted += guess.len();
    l.draft = guess.len();
    l.pending.extend_from_slice(&guess);
}

/// Keeps the longest prefix of the row's draft that the model picks itself, given the
/// logits after the last committed token (`lgs[0]`) and after each draft token. The first
/// token the model picks differently (or the one after a fully kept draft) is kept as a fresh
/// pending token, with the grammar's forced tokens after it. Returns how many draft tokens
/// were rejected (they are still in the cache; the caller masks them out).
fn verify(
    l: &mut Live,
    r: &RowSpec,
    mut lgs: Vec<Vec<f32>>,
    trie: &toktrie::TokTrie,
    eos: u32,
    opts: &DecodeOptions,
    rng: &mut rand::rngs::StdRng,
) -> usize {
    let guess: Vec<u32> = l.pending.split_off(l.pending.len() - l.draft);
    l.draft = 0;
    l.pending.clear();
    let mut i = 0;
    loop {
        l.last_logits = std::mem::take(&mut lgs[i]);
        sample_one(l, r, trie, eos, opts, rng);
        if l.done {
            break;
        }
        let picked = *l.tokens.last().expect("sample_one appended a token");
        if i < guess.len() && picked == guess[i] {
            // Already in the cache: nothing to feed.
            l.pending.pop();
            l.accepted += 1;
            i += 1;
            if opts.use_forced_tokens {
                take_forced(l, eos);
                if l.done {
                    break;
                }
                if !l.pending.is_empty() {
                    if !guess[i..].starts_with(&l.pending) {
                        break; // the forced tokens part from the draft: feed them instead
                    }
                    i += l.pending.len();
                    l.pending.clear();
                }
            }
        } else {
            if opts.use_forced_tokens {
                take_forced(l, eos);
            }
            break;
        }
    }
    guess.len() - i
}

/// Appends the grammar's forced tokens to `l.pending` (and consumes them).
fn take_forced(l: &mut Live, eos: u32) {
    if l.matcher.is_stopped() {
        l.done = true;
        return;
    }
    let mut forced = l.matcher.compute_ff_tokens();
    if let Some(p) = forced.iter().position(|&t| t == eos) {
        forced.truncate(p);
    }
    if forced.is_empty() {
        return;
    }
    if let Err(e) = l.matcher.consume_tokens(&forced) {
        l.error = Some(format!("grammar rejected its own forced tokens: {e}"));
        l.done = true;
        return;
    }
    l.forced += forced.len();
    l.tokens.extend_from_slice(&forced);
    l.pending.extend_from_slice(&forced);
    if l.matcher.is_stopped() {
        l.done = true;
        l.pending.clear();
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
