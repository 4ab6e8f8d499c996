//! `sapllm-worker route FILE`: decisions for the documents in FILE through the same library
//! calls the server and the evaluator use. FILE holds one JSON request or JSON lines of them:
//! routing requests (`doc_type`, `adc_json`, optional `api_schemas`, `similar_cases`; a routing
//! example works as is) or exception requests (with `endpoint` and `sap_error` /
//! `rule_failures`). Decisions go to stdout as JSON lines; a token/timing summary to stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use serde_json::Value;

use sapllm_engine::decoder::DecodeOptions;
use sapllm_engine::engine::EngineConfig;
use sapllm_engine::load::{load_engine, parse_precision};
use sapllm_engine::request::{ExceptionRequest, RouteRequest, parse_json};
use sapllm_sap::catalog::Catalog;

/// Arguments of `route`.
#[derive(Debug, Args)]
pub struct RouteArgs {
    /// A JSON request or a JSONL file of them.
    pub file: PathBuf,
    /// Base model folder (HF layout or a preset checkpoint, with tokenizer.json).
    #[arg(long)]
    pub base_model: PathBuf,
    /// PEFT adapter folder, merged into the base.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// int8, int4 (NF4), bf16 or f32.
    #[arg(long, default_value = "int8")]
    pub precision: String,
    /// Decisions with confidence below this abstain (route to review).
    #[arg(long, default_value_t = 0.5)]
    pub abstain_threshold: f64,
    /// Documents decoded together.
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// API catalog JSON (default: the built-in catalog).
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// Sample every token, forced ones included (to measure what forced tokens save).
    #[arg(long)]
    pub no_forced_tokens: bool,
    #[command(flatten)]
    pub limits: DecodeLimitArgs,
}

/// Decode settings: the answer's token budget (it bounds decode latency), prompt-lookup drafting
/// and the candidates offered.
#[derive(Debug, Clone, Args)]
pub struct DecodeLimitArgs {
    /// Answer tokens at most.
    #[arg(long, default_value_t = 1024)]
    pub max_new_tokens: usize,
    /// Prompt-lookup draft tokens checked per forward (0 = off). They pay off where a forward
    /// costs about the same for 1 or 5 tokens (GPUs, large models); on a CPU with the tiny
    /// preset they cost 4-8 % (bench_serve), hence off by default.
    #[arg(long, default_value_t = 0)]
    pub draft_tokens: usize,
    /// Let the model pick any candidate, also one that does not serve the request's document
    /// type (default: only the type's candidates and exception handling are offered). For
    /// callers whose document types are unreliable.
    #[arg(long)]
    pub any_candidate: bool,
}

fn is_exception(v: &Value) -> bool {
    v.get("sap_error").is_some() || (v.get("rule_failures").is_some() && v.get("target_endpoint").is_none())
}

/// Runs the command.
pub fn run(args: RouteArgs) -> Result<ExitCode> {
    let catalog = match &args.catalog {
        Some(p) => Catalog::load(p).with_context(|| format!("loading catalog {}", p.display()))?,
        None => Catalog::builtin(),
    };
    let text =
        std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let trimmed = text.trim_start();
    let lines: Vec<&str> = if trimmed.starts_with('{') && serde_json::from_str::<Value>(trimmed).is_ok() {
        vec![trimmed]
    } else {
        text.lines().filter(|l| !l.trim().is_empty()).collect()
    };
    let config = EngineConfig {
        abstain_threshold: args.abstain_threshold,
        max_batch: args.max_batch,
        decode: DecodeOptions {
            use_forced_tokens: !args.no_forced_tokens,
            max_new_tokens: args.limits.max_new_tokens,
            speculate: args.limits.draft_tokens,
            ..DecodeOptions::default()
        },
        any_candidate: args.limits.any_candidate,
        ..EngineConfig::default()
    };
    let precision = parse_precision(&args.precision)?;
    let t_load = Instant::now();
    let (engine, info) =
        load_engine(&args.base_model, args.adapter.as_deref(), precision, catalog.clone(), config)?;
    eprintln!(
        "loaded {} ({} parameters, {}) in {:.2}s",
        info.base,
        info.parameters,
        info.precision,
        t_load.elapsed().as_secs_f64()
    );

    let mut routing = Vec::new();
    let mut exceptions = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let v: Value = serde_json::from_str(line).with_context(|| format!("line {}: not JSON", i + 1))?;
        if is_exception(&v) {
            let r: ExceptionRequest =
                parse_json(line.as_bytes()).map_err(|e| anyhow!("line {}: {e}", i + 1))?;
            exceptions.push((i, r.into_query().map_err(|e| anyhow!("line {}: {e}", i + 1))?));
        } else {
            let r: RouteRequest = parse_json(line.as_bytes()).map_err(|e| anyhow!("line {}: {e}", i + 1))?;
            routing.push((i, r.into_query(&catalog, "").map_err(|e| anyhow!("line {}: {e}", i + 1))?));
        }
    }
    let t0 = Instant::now();
    let mut out: Vec<(usize, Value)> = Vec::new();
    let (mut sampled, mut forced, mut failed) = (0usize, 0usize, 0usize);
    let queries: Vec<_> = routing.iter().map(|(_, q)| q.clone()).collect();
    let (decisions, timing) = engine.decide_routing_batch_timed(&queries)?;
    for ((i, _), d) in routing.iter().zip(decisions) {
        match d {
            Ok(d) => {
                sampled += d.stats.sampled_tokens;
                forced += d.stats.forced_tokens;
                out.push((*i, serde_json::to_value(&d)?));
            }
            Err(e) => {
                failed += 1;
                out.push((*i, serde_json::json!({"error": format!("{e:#}")})));
            }
        }
    }
    let items: Vec<_> = exceptions.iter().map(|(_, q)| q.clone()).collect();
    for ((i, _), d) in exceptions.iter().zip(engine.handle_exception_batch(&items)?) {
        match d {
            Ok(d) => {
                sampled += d.stats.sampled_tokens;
                forced += d.stats.forced_tokens;
                out.push((*i, serde_json::to_value(&d)?));
            }
            Err(e) => {
                failed += 1;
                out.push((*i, serde_json::json!({"error": format!("{e:#}")})));
            }
        }
    }
    out.sort_by_key(|(i, _)| *i);
    for (_, v) in &out {
        println!("{}", serde_json::to_string(v)?);
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "{} decisions in {secs:.2}s ({:.1} ms each); tokens: {sampled} sampled, {forced} forced ({:.0}% forced); routing: prefill {:.0} ms, option scoring {:.0} ms, generation {:.0} ms ({:.0} ms in grammar masks), {} forward calls",
        out.len(),
        1000.0 * secs / out.len().max(1) as f64,
        100.0 * forced as f64 / (sampled + forced).max(1) as f64,
        timing.prefill_s * 1e3,
        timing.scoring_s * 1e3,
        timing.generate_s * 1e3,
        timing.mask_s * 1e3,
        timing.forward_calls,
    );
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
