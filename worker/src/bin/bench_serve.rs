//! Serving benchmarks (CPU): prints tables, asserts nothing.
//!
//! 1. Library latency per decision at batch 1, with and without grammar-forced tokens: what
//!    `compute_ff_tokens` saves in forward calls and milliseconds. Two kinds of answers: the
//!    data-prep reference decisions replayed through the full decoder
//!    (`Engine::replay_routing_batch`: the latency of a model that writes the right answer),
//!    and the checkpoint's own answers (on the same documents, and on documents of another
//!    generator seed). Rows turn the drafts, forced tokens, lazy mask, plain-slice prefill and
//!    decode step and fused inference kernels on or off, so what each saves is measured in the
//!    same run.
//! 2. HTTP load: the real server (`sapllm_serve::start`) on a loopback port, N requests at each
//!    concurrency level from a hyper client: throughput and P50/P95/P99 latency.
//!
//! Without `--base-model` a random tiny-preset checkpoint is written to a temp dir (a random
//! model fills every string to its grammar bound, so its answers are longer than a trained
//! model's: pessimistic figures).
//!
//! `cargo run --release -p sapllm-worker --bin bench_serve -- [--base-model DIR] [--adapter DIR]
//!  [--precision f32] [--requests 40] [--concurrency 1,2,4,8] [--max-batch 1 (as serve)] [--max-wait-ms 5] [--workers 1]
//!  [--max-reasoning-steps 2] [--max-reasoning-chars 160] [--engine-only | --http-only]`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sapllm_engine::decoder::DecodeOptions;
use sapllm_engine::engine::EngineConfig;
use sapllm_engine::format::{
    MAX_REASONING_CHARS, MAX_REASONING_STEPS, RoutingAnswer, routing_answer, routing_query,
};
use sapllm_engine::load::{load_engine, parse_precision};
use sapllm_engine::profile::PromptProfile;
use sapllm_engine::types::RoutingQuery;
use sapllm_model::ForwardPath;
use sapllm_sap::catalog::Catalog;
use sapllm_worker::dataprep::{DataPrepConfig, RoutingExample};
use sapllm_worker::testkit::{sample_queries, write_tiny_model};

struct Args {
    base: Option<PathBuf>,
    adapter: Option<PathBuf>,
    precision: String,
    requests: usize,
    concurrency: Vec<usize>,
    max_batch: usize,
    max_wait_ms: u64,
    workers: usize,
    engine_only: bool,
    http_only: bool,
    /// Reasoning steps a reference answer keeps (`--max-reasoning-steps`; it shapes the replayed
    /// answers only).
    reasoning_steps: usize,
    /// Characters per reasoning step a reference answer keeps (`--max-reasoning-chars`).
    reasoning_chars: usize,
}

fn parse_args() -> Result<Args> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| argv.iter().position(|a| a == name).and_then(|i| argv.get(i + 1)).cloned();
    Ok(Args {
        base: get("--base-model").map(PathBuf::from),
        adapter: get("--adapter").map(PathBuf::from),
        precision: get("--precision").unwrap_or_else(|| "f32".into()),
        requests: get("--requests").map(|s| s.parse()).transpose()?.unwrap_or(40),
        concurrency: get("--concurrency")
            .unwrap_or_else(|| "1,2,4,8".into())
            .split(',')
            .map(|s| s.trim().parse().context("--concurrency"))
            .collect::<Result<_>>()?,
        max_batch: get("--max-batch").map(|s| s.parse()).transpose()?.unwrap_or(1),
        max_wait_ms: get("--max-wait-ms").map(|s| s.parse()).transpose()?.unwrap_or(5),
        workers: get("--workers").map(|s| s.parse()).transpose()?.unwrap_or(1),
        engine_only: argv.iter().any(|a| a == "--engine-only"),
        http_only: argv.iter().any(|a| a == "--http-only"),
        reasoning_steps: get("--max-reasoning-steps")
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(MAX_REASONING_STEPS),
        reasoning_chars: get("--max-reasoning-chars")
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(MAX_REASONING_CHARS),
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Reference decisions from data-prep (synthetic logs -> examples with target endpoint,
/// payload, reasoning): what a perfectly trained model would write.
fn reference_examples(n: usize) -> Result<(Vec<RoutingQuery>, Vec<RoutingAnswer>)> {
    let dir = std::env::temp_dir().join(format!("sapllm-bench-serve-data-{}", std::process::id()));
    let cfg =
        DataPrepConfig { examples: (n * 4).max(100), output_dir: dir.clone(), ..DataPrepConfig::default() };
    sapllm_worker::dataprep::run(&cfg)?;
    let catalog = Catalog::builtin();
    let mut queries = Vec::new();
    let mut answers = Vec::new();
    for file in ["test_routing_examples.jsonl", "val_routing_examples.jsonl", "train_routing_examples.jsonl"]
    {
        let text = std::fs::read_to_string(dir.join(file)).with_context(|| format!("reading {file}"))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if queries.len() == n {
                break;
            }
            let ex: RoutingExample = serde_json::from_str(line)?;
            queries.push(routing_query(&ex));
            answers.push(routing_answer(&catalog, &ex));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok((queries, answers))
}

/// The answers a library row decodes, and on which documents.
#[derive(Clone, Copy, PartialEq)]
enum Answers {
    /// Data-prep's reference decisions, replayed (seen documents).
    Reference,
    /// The checkpoint's own answers on the seen documents.
    OwnSeen,
    /// The checkpoint's own answers on documents of another generator seed.
    OwnUnseen,
}

impl Answers {
    fn label(self) -> &'static str {
        match self {
            Answers::Reference => "reference (data-prep targets), seen",
            Answers::OwnSeen => "model's own, seen",
            Answers::OwnUnseen => "model's own, unseen",
        }
    }
}

/// One configuration of the decoder (a table row).
#[derive(Clone, Copy)]
struct Row {
    forced: bool,
    speculate: usize,
    path: ForwardPath,
    lazy: bool,
}

fn engine_table(base: &std::path::Path, args: &Args, unseen: &[RoutingQuery]) -> Result<()> {
    let (queries, mut answers) = reference_examples(args.requests)?;
    // References keep at most --max-reasoning-steps x --max-reasoning-chars of reasoning (by
    // default the training format's bounds).
    for a in &mut answers {
        a.reasoning.truncate(args.reasoning_steps);
        for r in &mut a.reasoning {
            *r = r.chars().take(args.reasoning_chars).collect();
        }
    }
    println!(
        "(reasoning bounded to {} steps x {} chars; precision {})",
        args.reasoning_steps, args.reasoning_chars, args.precision
    );
    println!("\n## Library latency per decision (batch 1), {} documents\n", queries.len());
    println!(
        "| answers | forced tokens | drafts | fused ops | plain decode step | plain prefill | lazy mask | mean ms | P50 ms | P95 ms | prefill ms | option scoring ms | generation ms | of which grammar ms | forward calls | sampled tok | forced tok | drafts kept / proposed | answer tok |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let serving = Row { forced: true, speculate: 0, path: ForwardPath::Plain, lazy: true };
    // The serving configuration, then one change at a time: drafts on, forced tokens off; then,
    // one after the other, the lazy grammar mask off and the forward paths from the fastest to
    // the reference: plain-slice steps without the plain prefill, the fused candle graph, the
    // candle graph alone (`sapllm_model::ForwardPath`): what each saves.
    let lazy_off = Row { lazy: false, ..serving };
    let prefill_off = Row { path: ForwardPath::PlainSteps, ..lazy_off };
    let step_off = Row { path: ForwardPath::Fused, ..prefill_off };
    let rows = [
        serving,
        Row { speculate: 4, ..serving },
        Row { forced: false, ..serving },
        lazy_off,
        prefill_off,
        step_off,
        Row { path: ForwardPath::Candle, ..step_off },
    ];
    for answers_kind in [Answers::Reference, Answers::OwnSeen, Answers::OwnUnseen] {
        // The unseen sample has no reference answers: only the serving configuration there.
        let docs = if answers_kind == Answers::OwnUnseen { unseen } else { &queries[..] };
        for row in rows {
            let config = EngineConfig {
                abstain_threshold: 0.0,
                max_batch: 1,
                decode: DecodeOptions {
                    use_forced_tokens: row.forced,
                    speculate: row.speculate,
                    path: row.path,
                    lazy_mask: row.lazy,
                    ..DecodeOptions::default()
                },
                ..EngineConfig::default()
            };
            let precision = parse_precision(&args.precision)?;
            let (engine, _) =
                load_engine(base, args.adapter.as_deref(), precision, Catalog::builtin(), config)?;
            for q in docs.iter().take(2) {
                let _ = engine.decide_routing_batch(std::slice::from_ref(q))?;
            }
            let mut lat = Vec::new();
            let (mut calls, mut sampled, mut forced, mut total, mut n) =
                (0usize, 0usize, 0usize, 0usize, 0usize);
            let (mut drafted, mut kept) = (0usize, 0usize);
            let mut phases = [0f64; 4];
            for (i, q) in docs.iter().enumerate() {
                let t = Instant::now();
                let (mut ds, timing) = if answers_kind == Answers::Reference {
                    engine.replay_routing_batch(std::slice::from_ref(q), std::slice::from_ref(&answers[i]))?
                } else {
                    engine.decide_routing_batch_timed(std::slice::from_ref(q))?
                };
                let d = ds.pop().context("no decision")?;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                phases[0] += timing.prefill_s * 1e3;
                phases[1] += timing.scoring_s * 1e3;
                phases[2] += timing.generate_s * 1e3;
                phases[3] += timing.mask_s * 1e3;
                match d {
                    Ok(d) => {
                        calls += d.stats.forward_calls;
                        sampled += d.stats.sampled_tokens;
                        forced += d.stats.forced_tokens;
                        total += d.stats.response_tokens;
                        drafted += d.stats.draft_tokens;
                        kept += d.stats.accepted_draft_tokens;
                        n += 1;
                    }
                    Err(e) => eprintln!("decision failed: {e:#}"),
                }
            }
            let mean = lat.iter().sum::<f64>() / lat.len() as f64;
            lat.sort_by(f64::total_cmp);
            let per = |x: usize| x as f64 / n.max(1) as f64;
            let ph = |i: usize| phases[i] / lat.len() as f64;
            let on = |b: bool| if b { "on" } else { "off" };
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {mean:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} / {:.1} | {:.1} |",
                answers_kind.label(),
                on(row.forced),
                if row.speculate > 0 { format!("prompt lookup, {}", row.speculate) } else { "off".into() },
                on(row.path.fused()),
                on(row.path.plain_steps()),
                on(row.path.plain_prefill()),
                on(row.lazy),
                percentile(&lat, 50.0),
                percentile(&lat, 95.0),
                ph(0),
                ph(1),
                ph(2),
                ph(3),
                per(calls),
                per(sampled),
                per(forced),
                per(kept),
                per(drafted),
                per(total)
            );
            if answers_kind == Answers::OwnUnseen {
                break;
            }
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    sapllm_model::threads::init();
    let args = parse_args()?;
    let base = match &args.base {
        Some(b) => b.clone(),
        None => {
            let dir = std::env::temp_dir().join(format!("sapllm-bench-serve-{}", std::process::id()));
            write_tiny_model(&dir, 11)?;
            // As the tiny preset is trained (examples/trainingrun-tiny.yaml): candidates by name.
            PromptProfile { candidate_schemas: false, max_similar_cases: 1, pre_checks: true }.save(&dir)?;
            println!("(random tiny-preset checkpoint written to {})", dir.display());
            dir
        }
    };
    // Two samples of documents: data-prep's default seed, as the tiny example trains on
    // (documents the trained model has seen), and another generator seed (suppliers, materials
    // and numbers the model never saw).
    let unseen = sample_queries(args.requests, 1234);
    if !args.http_only {
        engine_table(&base, &args, &unseen)?;
    }
    // Requests carry only the type and the document, as a client sends them (the server fills
    // in the catalog's candidates).
    let samples = [
        ("data-prep default seed (seen)", reference_examples(args.requests)?.0),
        ("generator seed 1234 (unseen)", unseen),
    ];
    if args.engine_only {
        return Ok(());
    }
    http::load_table(&base, &args, &samples)
}

mod http {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{BodyExt, Full};
    use hyper::Request;
    use hyper::body::Bytes;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use sapllm_serve::batcher::BatchConfig;
    use sapllm_serve::{ServeConfig, start};

    use super::*;

    /// One concurrency level: `n` requests from `c` keep-alive clients.
    async fn level(addr: SocketAddr, bodies: Arc<Vec<String>>, n: usize, c: usize) -> (f64, Vec<f64>, usize) {
        let next = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..c)
            .map(|_| {
                let (next, bodies) = (next.clone(), bodies.clone());
                tokio::spawn(async move {
                    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
                    let mut lat = Vec::new();
                    let mut errors = 0;
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= n {
                            break;
                        }
                        let req = Request::post(format!("http://{addr}/v1/route"))
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(bodies[i % bodies.len()].clone())))
                            .expect("request");
                        let t = Instant::now();
                        match client.request(req).await {
                            Ok(resp) => {
                                let ok = resp.status().is_success();
                                let _ = resp.into_body().collect().await;
                                if ok {
                                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                                } else {
                                    errors += 1;
                                }
                            }
                            Err(_) => errors += 1,
                        }
                    }
                    (lat, errors)
                })
            })
            .collect();
        let mut all = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (l, e) = t.await.expect("client task");
            all.extend(l);
            errors += e;
        }
        (t0.elapsed().as_secs_f64(), all, errors)
    }

    /// `samples`: (label, documents) sets timed one after the other on the same server.
    pub fn load_table(
        base: &std::path::Path,
        args: &Args,
        samples: &[(&str, Vec<RoutingQuery>)],
    ) -> Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        rt.block_on(async {
            let mut cfg = ServeConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
            cfg.batch = BatchConfig {
                max_batch: args.max_batch,
                max_wait: Duration::from_millis(args.max_wait_ms),
                max_queue: 1024,
                workers: args.workers,
            };
            cfg.request_timeout = Duration::from_secs(600);
            let precision = parse_precision(&args.precision)?;
            let (base, adapter) = (base.to_path_buf(), args.adapter.clone());
            let engine_cfg =
                EngineConfig { abstain_threshold: 0.0, max_batch: args.max_batch, ..EngineConfig::default() };
            let loader: sapllm_serve::Loader = Box::new(move || {
                load_engine(&base, adapter.as_deref(), precision, Catalog::builtin(), engine_cfg)
            });
            let mut server = start(cfg, loader).await?;
            server.ready().await?;
            println!(
                "\n## HTTP load: POST /v1/route, {} requests per level, max batch {}, max wait {} ms, {} model thread(s)\n",
                args.requests, args.max_batch, args.max_wait_ms, args.workers
            );
            println!("| documents | concurrency | requests ok | errors | throughput req/s | P50 ms | P95 ms | P99 ms |");
            println!("|---|---|---|---|---|---|---|---|");
            for (label, queries) in samples {
                let bodies: Arc<Vec<String>> = Arc::new(
                    queries
                        .iter()
                        .map(|q| serde_json::json!({"doc_type": q.doc_type, "adc_json": q.adc_json}).to_string())
                        .collect(),
                );
                for &c in &args.concurrency {
                    let (wall, mut lat, errors) = level(server.addr, bodies.clone(), args.requests, c).await;
                    lat.sort_by(f64::total_cmp);
                    println!(
                        "| {label} | {c} | {} | {errors} | {:.2} | {:.1} | {:.1} | {:.1} |",
                        lat.len(),
                        lat.len() as f64 / wall,
                        percentile(&lat, 50.0),
                        percentile(&lat, 95.0),
                        percentile(&lat, 99.0)
                    );
                }
            }
            server.shutdown().await
        })
    }
}
