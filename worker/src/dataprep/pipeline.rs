//! The stage itself: two streamed passes over the input, in chunks, each chunk in parallel.
//!
//! Pass 1 reads every record once and keeps only what retrieval and splitting need (term ids,
//! grouping keys, a one-line summary): no documents stay in memory. Groups and splits are then
//! fixed and the BM25 index is built over the train split. Pass 2 reads the input again
//! (regenerates, for synthetic data), builds each example with its similar cases and writes it
//! in input order. Memory is bounded by the index, not by the examples.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rayon::prelude::*;
use serde_json::Value;

use super::bm25::{Bm25, Vocab};
use super::card::{DatasetCard, RetrievalCard};
use super::config::{DataPrepConfig, Source};
use super::examples::SimilarCase;
use super::examples::out::{DecisionRef, PreferencePairRef, RoutingExampleRef};
use super::exception::{self, ExceptionInput};
use super::log::{LogError, LogReader, ValidRecord, parse_line};
use super::preference::{self, PairInput};
use super::split::{Groups, Split, assign};
use super::synth::Generator;
use super::tokens::{self, fnv};
use super::trace::{self, TraceInput};
use crate::progress::Progress;
use sapllm_sap::catalog::{CompactSchema, compact_schema};
use sapllm_sap::documents::LooseDate;
use sapllm_sap::documents::signals;
use sapllm_sap::routing::{self, EXCEPTION_ENDPOINT, RoutingDecision};
use sapllm_sap::rules::RuleContext;

const CHUNK: usize = 4096;
const MAX_INVALID_SAMPLES: usize = 20;

enum Input {
    Synthetic(Box<Generator>, u64),
    /// The log's files with their sizes at the start: both passes read the same records while
    /// the files grow (a RoutingEndpoint appending feedback).
    File(std::path::PathBuf, Vec<(std::path::PathBuf, u64)>),
}

impl Input {
    /// Calls `f` with each chunk of records (validated, in input order). Synthetic records come
    /// with the reference decision the generator already computed (a log file's do not).
    fn chunks(&self, mut f: impl FnMut(Vec<Result<Record, LogError>>) -> Result<()>) -> Result<()> {
        match self {
            Input::Synthetic(g, n) => {
                let mut start = 0;
                while start < *n {
                    let end = (start + CHUNK as u64).min(*n);
                    let recs = (start..end)
                        .into_par_iter()
                        .map(|i| {
                            let s = g.record(i);
                            let rec = ValidRecord {
                                line: i + 1,
                                doc_type: s.doc.doc_type(),
                                processed_at: s
                                    .log
                                    .processed_at
                                    .as_deref()
                                    .and_then(LooseDate::parse)
                                    .map(|d| d.0),
                                log: s.log,
                                doc: s.doc,
                            };
                            Ok((rec, Some(s.decision)))
                        })
                        .collect();
                    f(recs)?;
                    start = end;
                }
            }
            Input::File(path, files) => {
                let mut r = LogReader::from_snapshot(files.clone())
                    .with_context(|| format!("cannot open transaction log {}", path.display()))?;
                loop {
                    let lines = r.next_chunk(CHUNK).map_err(anyhow::Error::msg)?;
                    if lines.is_empty() {
                        break;
                    }
                    f(lines.into_par_iter().map(|(n, l)| parse_line(n, &l).map(|r| (r, None))).collect())?;
                }
            }
        }
        Ok(())
    }
}

/// A validated record and, when known, its reference routing decision.
type Record = (ValidRecord, Option<RoutingDecision>);

/// Pass 1's result for one record: summary, term hashes, id key, fingerprint.
type Pass1Row = (Meta, Vec<u64>, u64, Option<u64>);

/// What pass 1 learns about one record (transient, per chunk).
struct Meta {
    id: String,
    doc_type: &'static str,
    endpoint: String,
    success: bool,
    summary: String,
}

/// What pass 1 keeps for all records, packed: the strings live in one growing buffer so 200K
/// records do not leave ~600K small long-lived allocations between the short-lived ones (glibc
/// malloc slows down badly on such a heap).
#[derive(Default)]
struct MetaStore {
    text: String,
    rows: Vec<MetaRow>,
    endpoints: Vec<String>,
    endpoint_ids: HashMap<String, u16>,
}

struct MetaRow {
    id: (u32, u32),
    summary: (u32, u32),
    endpoint: u16,
    doc_type: &'static str,
    success: bool,
}

impl MetaStore {
    fn put(&mut self, s: &str) -> (u32, u32) {
        let start = self.text.len() as u32;
        self.text.push_str(s);
        (start, self.text.len() as u32)
    }

    fn push(&mut self, m: Meta) {
        let next = self.endpoints.len() as u16;
        let endpoint = *self.endpoint_ids.entry(m.endpoint.clone()).or_insert(next);
        if endpoint == next {
            self.endpoints.push(m.endpoint);
        }
        let id = self.put(&m.id);
        let summary = self.put(&m.summary);
        self.rows.push(MetaRow { id, summary, endpoint, doc_type: m.doc_type, success: m.success });
    }

    fn len(&self) -> usize {
        self.rows.len()
    }

    fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn str(&self, r: (u32, u32)) -> &str {
        &self.text[r.0 as usize..r.1 as usize]
    }

    fn id(&self, i: usize) -> &str {
        self.str(self.rows[i].id)
    }

    fn doc_type(&self, i: usize) -> &'static str {
        self.rows[i].doc_type
    }

    fn case(&self, i: usize, score: f32) -> SimilarCase {
        let r = &self.rows[i];
        SimilarCase {
            doc_id: self.str(r.id).to_string(),
            doc_type: r.doc_type.into(),
            endpoint: self.endpoints[r.endpoint as usize].clone(),
            success: r.success,
            score: (score * 1000.0).round() / 1000.0,
            summary: self.str(r.summary).to_string(),
        }
    }
}

fn resolved_endpoint(rec: &ValidRecord) -> String {
    rec.log
        .feedback
        .get("correct_endpoint")
        .and_then(Value::as_str)
        .or(rec.log.routed_endpoint.as_deref())
        .unwrap_or(EXCEPTION_ENDPOINT)
        .to_string()
}

/// Runs data-prep and returns the card (also written to the output directory).
pub fn run(cfg: &DataPrepConfig) -> Result<DatasetCard> {
    cfg.check().map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    std::fs::create_dir_all(&cfg.output_dir)
        .with_context(|| format!("cannot create output directory {}", cfg.output_dir.display()))?;
    let input = match &cfg.source {
        Source::Synthetic => Input::Synthetic(Box::new(Generator::new(cfg)), cfg.examples as u64),
        Source::LogFile(p) => Input::File(
            p.clone(),
            LogReader::snapshot(p).with_context(|| format!("cannot open transaction log {}", p.display()))?,
        ),
    };
    let total_hint = if cfg.source == Source::Synthetic { cfg.examples as u64 * 2 } else { 0 };
    let mut progress = Progress::new(cfg.progress, sapllm_crds::StageName::DataPrep, total_hint);
    let mut card = DatasetCard {
        source: match &cfg.source {
            Source::Synthetic => format!("synthetic ({} records)", cfg.examples),
            Source::LogFile(p) => p.display().to_string(),
        },
        seed: cfg.seed,
        ..DatasetCard::default()
    };

    // Pass 1: terms, keys, summaries.
    let mut vocab = Vocab::default();
    let mut metas = MetaStore::default();
    let mut offsets: Vec<u32> = vec![0];
    let mut terms: Vec<u32> = Vec::new();
    let mut groups = Groups::default();
    let mut id_keys: Vec<u64> = Vec::new();
    input.chunks(|chunk| {
        let prepared: Vec<Result<Pass1Row, LogError>> = chunk
            .into_par_iter()
            .map(|r| {
                r.map(|(rec, _)| {
                    let doc = cfg.catalog.normalize(rec.doc_type, &rec.log.extracted_data).document;
                    let t = tokens::term_hashes(rec.doc_type.as_str(), &doc);
                    let fp = tokens::fingerprint(&rec.doc);
                    let id_key = fnv(format!("id|{}", rec.log.document_id).as_bytes());
                    let endpoint = resolved_endpoint(&rec);
                    let summary = format!(
                        "{} from {} ref {} -> {} ({})",
                        rec.doc_type,
                        rec.doc.partner().unwrap_or("?"),
                        rec.doc.reference().unwrap_or("?"),
                        endpoint,
                        if rec.log.success { "succeeded" } else { "failed" }
                    );
                    let meta =
                        Meta { id: rec.log.document_id.clone(), doc_type: rec.doc_type.as_str(), endpoint, success: rec.log.success, summary };
                    (meta, t, id_key, fp)
                })
            })
            .collect();
        for p in prepared {
            card.records_read += 1;
            match p {
                Ok((meta, t, id_key, fp)) => {
                    terms.extend(t.iter().map(|h| vocab.id_of_hash(*h)));
                    offsets.push(terms.len() as u32);
                    groups.union(id_key, fp);
                    id_keys.push(id_key);
                    metas.push(meta);
                }
                Err(e) if cfg.skip_invalid => {
                    card.invalid_lines += 1;
                    if card.invalid_samples.len() < MAX_INVALID_SAMPLES {
                        card.invalid_samples.push(e);
                    }
                }
                Err(e) => bail!("invalid transaction log record: {e}; fix the record, or pass --skip-invalid to skip malformed lines (they are counted in the dataset card)"),
            }
        }
        progress.update(card.records_read, &[("pass", 1.0)]);
        Ok(())
    })?;
    if metas.is_empty() {
        bail!("no valid records in the input ({} read, {} invalid)", card.records_read, card.invalid_lines);
    }

    card.stage_s.insert("pass1".into(), started.elapsed().as_secs_f64());
    let index_start = Instant::now();
    // Groups and splits.
    let group: Vec<u64> = id_keys.iter().map(|k| groups.group_of(*k)).collect();
    let split: Vec<Split> = group.iter().map(|g| assign(*g, cfg.seed, cfg.split)).collect();
    let mut group_sizes: HashMap<u64, u64> = HashMap::new();
    for g in &group {
        *group_sizes.entry(*g).or_default() += 1;
    }
    card.near_duplicate_groups = group_sizes.values().filter(|n| **n > 1).count() as u64;
    card.records_in_near_duplicate_groups = group_sizes.values().filter(|n| **n > 1).sum();
    drop(group_sizes);

    // The index over the train split only.
    let train: Vec<u32> = (0..metas.len() as u32).filter(|i| split[*i as usize] == Split::Train).collect();
    let doc_terms = |i: usize| &terms[offsets[i] as usize..offsets[i + 1] as usize];
    let index = Bm25::build(train.iter().map(|i| doc_terms(*i as usize)), vocab.len());
    card.retrieval = RetrievalCard {
        method: "BM25 (k1=1.2, b=0.75) over identifier terms of the train split, same document type".into(),
        k: cfg.k_similar,
        train_documents_indexed: train.len() as u64,
        ..RetrievalCard::default()
    };

    card.stage_s.insert("split_and_index".into(), index_start.elapsed().as_secs_f64());
    // Candidate schemas per document type, rendered once.
    let mut schemas: HashMap<&'static str, (Vec<CompactSchema>, Vec<String>)> = HashMap::new();
    for t in sapllm_sap::documents::DocType::ALL {
        let c = cfg.catalog.candidates_for(t.as_str());
        schemas.insert(
            t.as_str(),
            (c.iter().map(|a| compact_schema(a)).collect(), c.iter().map(|a| a.endpoint()).collect()),
        );
    }

    // Pass 2: examples.
    let mut out = Outputs::create(&cfg.output_dir)?;
    let shared = Shared {
        cfg,
        metas: &metas,
        split: &split,
        group: &group,
        train: &train,
        index: &index,
        schemas: &schemas,
        terms: &doc_terms,
    };
    let mut ordinal = 0usize;
    let mut success = 0u64;
    let mut similar_total = 0u64;
    let pass2_start = Instant::now();
    input.chunks(|chunk| {
        let valid: Vec<Record> = chunk.into_iter().filter_map(Result::ok).collect();
        let base = ordinal;
        ordinal += valid.len();
        let results: Vec<Result<Produced>> = valid
            .into_par_iter()
            .enumerate()
            .map(|(i, (rec, d))| produce(&shared, base + i, rec, d))
            .collect();
        for p in results {
            let p = p?;
            out.write(&p)?;
            card.account(&p);
            success += u64::from(p.success);
            similar_total += p.similar as u64;
            card.retrieval.leak_violations += p.leaks;
        }
        let rate = ordinal as f64 / pass2_start.elapsed().as_secs_f64().max(1e-9);
        progress.update(card.records_read + ordinal as u64, &[("examples_per_s", rate)]);
        Ok(())
    })?;
    card.stage_s.insert("pass2".into(), pass2_start.elapsed().as_secs_f64());
    let n = metas.len() as f64;
    card.logged_success_rate = success as f64 / n;
    card.retrieval.mean_similar_cases = similar_total as f64 / n;
    card.files = out.finish()?;
    card.files.extend(["dataset_card.json".to_string(), "dataset_card.md".to_string()]);
    card.elapsed_s = started.elapsed().as_secs_f64();
    write_card(&cfg.output_dir, &card)?;
    progress.finish(&[("examples", n), ("elapsed_s", card.elapsed_s)]);
    Ok(card)
}

struct Shared<'a> {
    cfg: &'a DataPrepConfig,
    metas: &'a MetaStore,
    split: &'a [Split],
    group: &'a [u64],
    train: &'a [u32],
    index: &'a Bm25,
    schemas: &'a HashMap<&'static str, (Vec<CompactSchema>, Vec<String>)>,
    terms: &'a (dyn Fn(usize) -> &'a [u32] + Sync),
}

/// One record's serialised outputs and the facts the card counts.
struct Produced {
    split: Split,
    routing: String,
    exception: Option<(String, String)>,
    pair: Option<(String, String)>,
    doc_type: &'static str,
    endpoint: String,
    rule_failures: Vec<String>,
    ambiguous: bool,
    success: bool,
    similar: usize,
    leaks: u64,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn produce(s: &Shared, ord: usize, rec: ValidRecord, decision: Option<RoutingDecision>) -> Result<Produced> {
    let cfg = s.cfg;
    let split = s.split[ord];
    if s.metas.id(ord) != rec.log.document_id {
        bail!(
            "input changed between passes at record {} (line {}): read the log from a file nobody is writing",
            ord + 1,
            rec.line
        );
    }
    let ctx =
        RuleContext { today: rec.processed_at, references: &rec.log.reference_lines, ..Default::default() };
    let decision = decision.unwrap_or_else(|| routing::route(&cfg.catalog, &rec.doc, &ctx));
    // What the engine will read: the document in canonical keys.
    let detection = signals::detect(&cfg.catalog.normalize(rec.doc_type, &rec.log.extracted_data).document);
    let log = &rec.log;
    let corrected = log.feedback.get("correct_endpoint").and_then(Value::as_str);
    let routed = log.routed_endpoint.as_deref();
    // Ground truth: a person's correction, else what the log says went (or should have gone)
    // through, else the reference router.
    let target_endpoint = corrected.or(routed).unwrap_or(&decision.endpoint).to_string();
    let target_payload = if target_endpoint == EXCEPTION_ENDPOINT {
        Value::Null
    } else if log.success && log.sap_payload.is_some() {
        log.sap_payload.clone().unwrap_or(Value::Null)
    } else {
        decision.payload.clone().unwrap_or(Value::Null)
    };

    // Similar cases from the train split, of the same document type, never from this record's
    // own group. Without the type filter, shared identifiers make the nearest "case" of a goods
    // receipt its purchase order and of a quotation an order for the same customer (measured on
    // the tiny run's train split: the top case routed like the record for 3 % of purchase
    // orders, 20 % of goods receipts, 30 % of quotations), which teaches a model that process
    // memory is noise.
    let own_group = s.group[ord];
    let own_type = rec.doc_type.as_str();
    let hits = SCRATCH.with(|cell| {
        let mut scratch = cell.borrow_mut();
        if scratch.len() != s.index.len() {
            *scratch = vec![0.0; s.index.len()];
        }
        s.index.search((s.terms)(ord), cfg.k_similar, &mut scratch, |d| {
            let j = s.train[d as usize] as usize;
            s.group[j] != own_group && s.metas.doc_type(j) == own_type
        })
    });
    let mut leaks = 0;
    let similar: Vec<SimilarCase> = hits
        .iter()
        .map(|h| {
            let j = s.train[h.doc as usize] as usize;
            leaks += u64::from(s.split[j] != Split::Train);
            s.metas.case(j, h.score)
        })
        .collect();
    let similar_endpoints: Vec<String> = similar.iter().map(|c| c.endpoint.clone()).collect();

    let doc_type = rec.doc_type.as_str();
    let misroute = corrected.and(routed).filter(|r| Some(*r) != corrected);
    let steps = trace::routing_trace(&TraceInput {
        doc: &rec.doc,
        detection: &detection,
        catalog: &cfg.catalog,
        decision: &decision,
        target_endpoint: &target_endpoint,
        corrected_from: misroute,
        similar_endpoints: &similar_endpoints,
    });
    let confidence = trace::confidence(rec.doc_type, &detection, &decision.outcomes);
    let (schemas, candidates) = &s.schemas[doc_type];
    // The catalog lists the serving API first; left in that order the model would learn "take
    // the first candidate" instead of matching the document type, and fail on callers that
    // order their candidates otherwise. A per-document (seeded) shuffle removes the cue.
    let schemas = &shuffled(schemas, cfg.seed ^ fnv(log.document_id.as_bytes()));
    let rule_failures: Vec<_> = decision.outcomes.iter().filter(|o| !o.passed).cloned().collect();
    let rule_ids = rule_failures.iter().map(|o| o.rule_id.clone()).collect();
    let example = RoutingExampleRef {
        doc_id: &log.document_id,
        doc_type,
        adc_json: &log.extracted_data,
        api_schemas: schemas,
        similar_cases: &similar,
        target_endpoint: &target_endpoint,
        target_payload: &target_payload,
        reasoning_trace: &steps,
        confidence,
        success: log.success,
        feedback: &log.feedback,
        rule_failures: &rule_failures,
    };

    let ei = ExceptionInput {
        doc_id: &log.document_id,
        doc_type,
        split: split.as_str(),
        adc_json: &log.extracted_data,
    };
    let exception = if !log.success && corrected.is_none() && log.feedback.get("error").is_some() {
        let request = log.sap_payload.clone().unwrap_or(Value::Null);
        exception::from_failure(&ei, routed.unwrap_or(&target_endpoint), &request, &log.feedback)
    } else if target_endpoint == EXCEPTION_ENDPOINT {
        let serving = decision.api.as_deref().and_then(|a| cfg.catalog.api(a)).map(|a| a.endpoint());
        Some(exception::from_blocked(
            &ei,
            serving.as_deref().unwrap_or(EXCEPTION_ENDPOINT),
            decision.payload.as_ref().unwrap_or(&Value::Null),
            decision.blocking().cloned().collect(),
        ))
    } else {
        None
    };
    let serving_endpoint = decision.api.as_deref().and_then(|a| cfg.catalog.api(a)).map(|a| a.endpoint());
    // The target's rule pass rate is known when it is the reference decision itself.
    let target_pass_rate = (target_endpoint == decision.endpoint
        && decision.payload.as_ref() == Some(&target_payload))
    .then(|| sapllm_sap::rules::pass_rate(&decision.outcomes));
    let rejection = preference::score_rejection(
        &cfg.catalog,
        &ctx,
        &PairInput {
            doc_id: &log.document_id,
            doc_type,
            split: split.as_str(),
            adc_json: &log.extracted_data,
            target_endpoint: &target_endpoint,
            target_payload: &target_payload,
            built_payload: decision.payload.as_ref(),
            serving_endpoint: serving_endpoint.as_deref(),
            confidence,
            logged_misroute: misroute,
            candidates,
            variant_seed: fnv(log.document_id.as_bytes()),
            target_pass_rate,
        },
    );
    let pair = rejection
        .map(|r| {
            let line = serde_json::to_string(&PreferencePairRef {
                doc_id: &log.document_id,
                doc_type,
                split: split.as_str(),
                adc_json: &log.extracted_data,
                chosen: DecisionRef {
                    endpoint: &target_endpoint,
                    payload: &target_payload,
                    confidence,
                    reward: r.chosen_reward,
                },
                rejected: DecisionRef {
                    endpoint: &r.endpoint,
                    payload: &r.payload,
                    confidence,
                    reward: r.rejected_reward,
                },
                margin: r.margin(),
                rejection_kind: r.kind,
            })?;
            Ok::<_, serde_json::Error>((line, r.kind.to_string()))
        })
        .transpose()?;
    Ok(Produced {
        split,
        routing: serde_json::to_string(&example)?,
        exception: exception
            .map(|e| Ok::<_, serde_json::Error>((serde_json::to_string(&e)?, e.action.as_str().to_string())))
            .transpose()?,
        pair,
        doc_type,
        endpoint: target_endpoint,
        rule_failures: rule_ids,
        ambiguous: detection.is_ambiguous() || detection.best != rec.doc_type,
        success: log.success,
        similar: hits.len(),
        leaks,
    })
}

impl DatasetCard {
    fn account(&mut self, p: &Produced) {
        let split = p.split.as_str().to_string();
        *self.splits.entry(split.clone()).or_default() += 1;
        *self.doc_types.entry(p.doc_type.into()).or_default().entry(split).or_default() += 1;
        *self.target_endpoints.entry(p.endpoint.clone()).or_default() += 1;
        for r in &p.rule_failures {
            *self.rule_failures.entry(r.clone()).or_default() += 1;
        }
        if let Some((_, action)) = &p.exception {
            self.exception_examples += 1;
            *self.exception_actions.entry(action.clone()).or_default() += 1;
        }
        if let Some((_, kind)) = &p.pair {
            self.preference_pairs += 1;
            *self.preference_kinds.entry(kind.clone()).or_default() += 1;
        }
        self.ambiguous_documents += u64::from(p.ambiguous);
    }
}

struct Outputs {
    routing: [BufWriter<File>; 3],
    exceptions: BufWriter<File>,
    pairs: BufWriter<File>,
}

const ROUTING_FILES: [&str; 3] =
    ["train_routing_examples.jsonl", "val_routing_examples.jsonl", "test_routing_examples.jsonl"];

impl Outputs {
    fn create(dir: &Path) -> Result<Outputs> {
        let open = |name: &str| -> Result<BufWriter<File>> {
            let p = dir.join(name);
            Ok(BufWriter::with_capacity(
                1 << 20,
                File::create(&p).with_context(|| format!("cannot write {}", p.display()))?,
            ))
        };
        Ok(Outputs {
            routing: [open(ROUTING_FILES[0])?, open(ROUTING_FILES[1])?, open(ROUTING_FILES[2])?],
            exceptions: open("exception_examples.jsonl")?,
            pairs: open("preference_pairs.jsonl")?,
        })
    }

    fn write(&mut self, p: &Produced) -> Result<()> {
        let w = &mut self.routing[p.split as usize];
        w.write_all(p.routing.as_bytes())?;
        w.write_all(b"\n")?;
        if let Some((line, _)) = &p.exception {
            self.exceptions.write_all(line.as_bytes())?;
            self.exceptions.write_all(b"\n")?;
        }
        if let Some((line, _)) = &p.pair {
            self.pairs.write_all(line.as_bytes())?;
            self.pairs.write_all(b"\n")?;
        }
        Ok(())
    }

    fn finish(self) -> Result<Vec<String>> {
        for mut w in self.routing.into_iter().chain([self.exceptions, self.pairs]) {
            w.flush().context("cannot flush output file")?;
        }
        let mut files: Vec<String> = ROUTING_FILES.iter().map(|s| s.to_string()).collect();
        files.extend(["exception_examples.jsonl".to_string(), "preference_pairs.jsonl".to_string()]);
        Ok(files)
    }
}

fn write_card(dir: &Path, card: &DatasetCard) -> Result<()> {
    let json = dir.join("dataset_card.json");
    std::fs::write(&json, serde_json::to_string_pretty(card)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    let md = dir.join("dataset_card.md");
    std::fs::write(&md, card.to_markdown()).with_context(|| format!("cannot write {}", md.display()))?;
    Ok(())
}

/// `items` in a pseudo-random order fixed by `seed` (Fisher-Yates over splitmix64).
fn shuffled<T: Clone>(items: &[T], seed: u64) -> Vec<T> {
    let mut out = items.to_vec();
    let mut state = seed;
    for i in (1..out.len()).rev() {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.swap(i, (z % (i as u64 + 1)) as usize);
    }
    out
}
