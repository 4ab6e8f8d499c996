//! Runs the model over an examples file and scores every decision.
//!
//! Each decision is made alone (batch of one) and timed end to end, so the latency percentiles
//! are what one request to the endpoint costs, not a batch average.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use sapllm_crds::{GateResult, Gates, Verdict};

use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::metrics::{ScoredDecision, Summary, UNSEEN_KEYS_KIND, summarize};
use super::report::{judge, write_report};
use crate::dataprep::examples::{ExceptionExample, RoutingExample};
use crate::dataprep::synth::key_style::{KeyStyle, respell};
use crate::dataprep::tokens::fnv;
use crate::progress::{Progress, ProgressMode};
use crate::train::data::read_jsonl;
use sapllm_engine::format::{answer_payload, exception_query};
use sapllm_engine::load::load_engine;
use sapllm_engine::{Engine, EngineConfig};
use sapllm_model::linear::Precision;
use sapllm_sap::catalog::Catalog;
use sapllm_sap::documents::DocType;
use sapllm_sap::rules::{RuleContext, check_payload};

/// Settings of one evaluation.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    pub base_model: PathBuf,
    pub adapter: Option<PathBuf>,
    /// Routing examples (JSONL); exception examples of the same split are read from
    /// `exception_examples.jsonl` beside it when present.
    pub examples: PathBuf,
    /// Routing examples scored at most (the first N, a deterministic sample).
    pub samples: usize,
    pub gates: Gates,
    pub abstain_threshold: f64,
    /// Precision the model is served at (the latency gate is about serving).
    pub precision: Precision,
    pub out_dir: PathBuf,
    /// Version label written in the report (the content digest).
    pub model_version: String,
    pub progress: ProgressMode,
    /// Offer every candidate, not only the document type's (measures the model's own choice).
    pub any_candidate: bool,
}

/// What an evaluation concluded.
#[derive(Debug, Clone)]
pub struct EvalOutcome {
    pub summary: Summary,
    pub gates: Vec<GateResult>,
    pub verdict: Verdict,
    pub report: PathBuf,
}

/// Loads the model, scores the examples, writes the report and returns the verdict.
pub fn run(cfg: &EvalConfig) -> Result<EvalOutcome> {
    ensure!(cfg.samples >= 1, "samples must be >= 1");
    ensure!((0.0..=1.0).contains(&cfg.abstain_threshold), "abstain threshold must be in [0, 1]");
    let routing: Vec<RoutingExample> = read_jsonl(&cfg.examples)?;
    ensure!(!routing.is_empty(), "{} holds no routing example", cfg.examples.display());
    let exceptions = sibling_exceptions(&cfg.examples)?;
    let engine_cfg = EngineConfig {
        abstain_threshold: cfg.abstain_threshold,
        max_batch: 1,
        any_candidate: cfg.any_candidate,
        ..EngineConfig::default()
    };
    let (engine, _info) =
        load_engine(&cfg.base_model, cfg.adapter.as_deref(), cfg.precision, Catalog::builtin(), engine_cfg)?;
    let routing: Vec<&RoutingExample> = routing.iter().take(cfg.samples).collect();
    // Exceptions in proportion: at most a quarter of the routing sample.
    let exceptions: Vec<&ExceptionExample> = exceptions.iter().take(cfg.samples.div_ceil(4)).collect();
    let total = (routing.len() + exceptions.len()) as u64;
    let mut progress = Progress::new(cfg.progress, sapllm_crds::StageName::Evaluation, total);
    let mut decisions = Vec::with_capacity(total as usize);
    for (i, ex) in routing.iter().enumerate() {
        decisions.push(score_routing(&engine, ex));
        progress.update(i as u64 + 1, &[("api_accuracy", running_accuracy(&decisions))]);
    }
    for (i, ex) in exceptions.iter().enumerate() {
        decisions.push(score_exception(&engine, ex));
        progress.update((routing.len() + i) as u64 + 1, &[]);
    }
    // The same documents with their keys in the family training never saw.
    for ex in &routing {
        let mut r = SmallRng::seed_from_u64(fnv(ex.doc_id.as_bytes()));
        let Ok(t) = ex.doc_type.parse::<DocType>() else { continue };
        let (adc_json, changed) = respell(engine.catalog(), t, &ex.adc_json, KeyStyle::Unseen, &mut r);
        if changed {
            let respelled = RoutingExample { adc_json, ..(*ex).clone() };
            let mut d = score_routing(&engine, &respelled);
            d.kind = UNSEEN_KEYS_KIND.into();
            d.key_spelling = KeyStyle::Unseen.as_str().into();
            decisions.push(d);
        }
    }
    let summary = summarize(&decisions, cfg.abstain_threshold);
    let (gates, verdict) = judge(&summary, &cfg.gates);
    write_report(&cfg.out_dir, &cfg.model_version, &summary, &decisions, &gates, verdict)?;
    progress.finish(&[
        ("routing_accuracy", summary.metrics.routing_accuracy),
        ("api_selection_accuracy", summary.metrics.api_selection_accuracy),
        ("p95_ms", summary.metrics.latency_p95_ms),
    ]);
    Ok(EvalOutcome { summary, gates, verdict, report: cfg.out_dir.join(super::report::REPORT_MD) })
}

fn running_accuracy(ds: &[ScoredDecision]) -> f64 {
    ds.iter().filter(|d| d.choice_right).count() as f64 / ds.len().max(1) as f64
}

/// Exception examples of the same split as a `<split>_routing_examples.jsonl` file.
fn sibling_exceptions(examples: &Path) -> Result<Vec<ExceptionExample>> {
    let name = examples.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let Some(split) = name.strip_suffix("_routing_examples.jsonl") else {
        return Ok(Vec::new());
    };
    let path = examples.with_file_name("exception_examples.jsonl");
    if !path.exists() {
        return Ok(Vec::new());
    }
    let all: Vec<ExceptionExample> = read_jsonl(&path).context("reading exception examples")?;
    Ok(all.into_iter().filter(|e| e.split == split).collect())
}

fn score_routing(engine: &Engine, ex: &RoutingExample) -> ScoredDecision {
    let started = Instant::now();
    let result = engine.decide_routing(&ex.adc_json, &ex.doc_type, &ex.api_schemas, &ex.similar_cases);
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let catalog = engine.catalog();
    let mut scored =
        ScoredDecision::unscored(&ex.doc_id, &ex.doc_type, "routing", &ex.target_endpoint, latency_ms);
    let d = match result {
        Ok(d) => d,
        Err(e) => {
            scored.error = Some(format!("{e:#}"));
            return scored;
        }
    };
    let target_payload = answer_payload(catalog, &ex.target_endpoint, &ex.target_payload);
    scored.key_spelling = match ex.doc_type.parse::<DocType>() {
        Ok(t) if catalog.normalize(t, &ex.adc_json).origins.is_empty() => "canonical",
        Ok(_) => "seen",
        Err(_) => "",
    }
    .into();
    scored.predicted = d.endpoint.clone();
    scored.confidence = d.confidence;
    scored.abstained = d.abstained;
    scored.choice_right = d.endpoint == ex.target_endpoint;
    scored.tokens = d.stats.response_tokens;
    scored.forced_tokens = d.stats.forced_tokens;
    scored.unsourced = sapllm_sap::grounding::unsourced(&d.payload, &d.provenance);
    scored.provenance = d.provenance.clone();
    match catalog.api_for_endpoint(&d.endpoint) {
        Some(api) if !target_payload.is_null() || !d.payload.is_null() => {
            let check = check_payload(api, &d.payload, &target_payload, &RuleContext::default());
            // A payload for the wrong API cannot be right, whatever fields it shares.
            scored.field_accuracy = if scored.choice_right { check.field_accuracy } else { 0.0 };
            scored.rules_passed = check.rules.iter().filter(|r| r.passed).count();
            scored.rules_checked = check.rules.len();
        }
        // Nothing to post on either side (exception handling): the payload is right when the
        // endpoint is.
        _ => scored.field_accuracy = if scored.choice_right && d.payload.is_null() { 1.0 } else { 0.0 },
    }
    scored
}

fn score_exception(engine: &Engine, ex: &ExceptionExample) -> ScoredDecision {
    let started = Instant::now();
    let result = engine.handle_exception(&exception_query(ex), &[]);
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let target = serde_json::to_value(ex.action).unwrap_or(Value::Null);
    let target = target.as_str().unwrap_or_default();
    let mut scored = ScoredDecision::unscored(&ex.doc_id, &ex.doc_type, "exception", target, latency_ms);
    match result {
        Ok(d) => {
            scored.predicted = serde_json::to_value(d.action)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            scored.confidence = d.confidence;
            scored.abstained = d.abstained;
            scored.choice_right = d.action == ex.action;
            scored.field_accuracy = correction_accuracy(&json!(ex.correction), &json!(d.correction));
            scored.tokens = d.stats.response_tokens;
            scored.forced_tokens = d.stats.forced_tokens;
        }
        Err(e) => scored.error = Some(format!("{e:#}")),
    }
    scored
}

/// Share of correction operations reproduced exactly (1 when neither side corrects anything).
fn correction_accuracy(target: &Value, predicted: &Value) -> f64 {
    let (t, p) =
        (target.as_array().cloned().unwrap_or_default(), predicted.as_array().cloned().unwrap_or_default());
    let denom = t.len().max(p.len());
    if denom == 0 {
        return 1.0;
    }
    t.iter().filter(|op| p.contains(op)).count() as f64 / denom as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrections_score_by_exact_operations() {
        let a = json!([{"op": "add", "path": "/X", "value": "B"}]);
        let b = json!([{"op": "add", "path": "/X", "value": "C"}]);
        assert_eq!(correction_accuracy(&a, &a), 1.0);
        assert_eq!(correction_accuracy(&a, &b), 0.0);
        assert_eq!(correction_accuracy(&json!([]), &json!([])), 1.0);
        assert_eq!(correction_accuracy(&a, &json!([])), 0.0);
    }
}
