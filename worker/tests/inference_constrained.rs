//! The decoder's guarantees on a random tiny model (they must hold for ANY weights): answers
//! parse and validate against the chosen API's JSON Schema, endpoints come from the candidate
//! list (or exception handling), option probabilities are a distribution over exactly the
//! allowed set, abstention follows the threshold, forced tokens save forward calls.

use std::sync::OnceLock;

use sapllm_engine::decoder::DecodeOptions;
use sapllm_engine::engine::{Engine, EngineConfig};
use sapllm_engine::types::RoutingQuery;
use sapllm_sap::catalog::{Catalog, create_payload_schema};
use sapllm_sap::routing::EXCEPTION_ENDPOINT;
use sapllm_worker::testkit::{sample_exception, tiny_engine};

fn config() -> EngineConfig {
    EngineConfig {
        abstain_threshold: 0.0,
        decode: DecodeOptions { max_new_tokens: 1500, ..DecodeOptions::default() },
        ..EngineConfig::default()
    }
}

fn engine() -> &'static (Engine, Vec<RoutingQuery>) {
    static E: OnceLock<(Engine, Vec<RoutingQuery>)> = OnceLock::new();
    E.get_or_init(|| tiny_engine(config(), 7).expect("tiny engine"))
}

fn check_routing(catalog: &Catalog, q: &RoutingQuery, d: &sapllm_engine::RoutingDecision) {
    assert!(Engine::allowed_endpoints(q).contains(&d.endpoint), "endpoint {} is no candidate", d.endpoint);
    // Offered: the candidates serving the document's type, and exception handling.
    let allowed = Engine::offered_endpoints(q, false);
    assert!(allowed.len() < Engine::allowed_endpoints(q).len() || q.api_schemas.len() == 1);
    let mut alts: Vec<&str> = d.alternatives.iter().map(|(e, _)| e.as_str()).collect();
    alts.sort();
    let mut want: Vec<&str> = allowed.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(alts, want, "probabilities over exactly the allowed endpoints");
    let total: f64 = d.alternatives.iter().map(|(_, p)| p).sum();
    assert!((total - 1.0).abs() < 1e-6, "renormalised probabilities sum to {total}");
    assert_eq!(d.alternatives[0].0, d.endpoint, "the most probable endpoint is chosen");
    assert!((0.0..=1.0).contains(&d.confidence));
    let schema = if d.endpoint == EXCEPTION_ENDPOINT {
        None
    } else {
        catalog.api_for_endpoint(&d.endpoint).and_then(create_payload_schema)
    };
    match schema {
        Some(schema) => {
            let v = jsonschema::validator_for(&schema).expect("schema compiles");
            let errors: Vec<String> = v.iter_errors(&d.payload).map(|e| e.to_string()).collect();
            assert!(
                errors.is_empty(),
                "payload for {} violates its schema: {errors:?}\n{}",
                d.endpoint,
                d.payload
            );
            assert_eq!(d.method.as_deref(), Some("POST"));
            assert!(d.entity_set.is_some());
        }
        None => assert!(d.payload.is_null(), "no payload for {}", d.endpoint),
    }
    assert!(!d.reasoning.is_empty());
    assert!(d.stats.forced_tokens > 0, "JSON keys are forced by the grammar");
}

#[test]
fn routing_answers_are_schema_valid_and_use_only_candidates() {
    let (engine, queries) = engine();
    let batch: Vec<RoutingQuery> = queries.iter().take(4).cloned().collect();
    let decisions = engine.decide_routing_batch(&batch).expect("decode");
    for (q, d) in batch.iter().zip(&decisions) {
        let d = d.as_ref().expect("decision");
        check_routing(engine.catalog(), q, d);
    }
}

#[test]
fn a_single_candidate_still_allows_exception_handling_and_nothing_else() {
    let (engine, queries) = engine();
    let mut q = queries[0].clone();
    q.api_schemas.truncate(1);
    let d =
        engine.decide_routing(&q.adc_json, &q.doc_type, &q.api_schemas, &q.similar_cases).expect("decision");
    check_routing(engine.catalog(), &q, &d);
    assert_eq!(d.alternatives.len(), 2);
}

#[test]
fn batch_and_single_calls_agree() {
    let (engine, queries) = engine();
    let q = &queries[1];
    let single =
        engine.decide_routing(&q.adc_json, &q.doc_type, &q.api_schemas, &q.similar_cases).expect("single");
    let batch = engine.decide_routing_batch(&[queries[2].clone(), q.clone()]).expect("batch");
    let b = batch[1].as_ref().expect("decision");
    assert_eq!(single.endpoint, b.endpoint);
    for ((e1, p1), (e2, p2)) in single.alternatives.iter().zip(&b.alternatives) {
        assert_eq!(e1, e2);
        assert!(
            (p1 - p2).abs() < 1e-3,
            "{e1}: {p1} alone vs {p2} in a batch (left padding must not change scores)"
        );
    }
}

#[test]
fn abstention_follows_the_threshold() {
    let (engine, queries) = engine();
    let q = &queries[3];
    let d =
        engine.decide_routing(&q.adc_json, &q.doc_type, &q.api_schemas, &q.similar_cases).expect("decision");
    assert!(!d.abstained, "threshold 0 never abstains");
    assert_eq!(d.abstained, d.confidence < engine.config.abstain_threshold);
    let strict = sapllm_engine::confidence::combine(&d.confidence_parts, &engine.config.weights);
    assert!((strict - d.confidence).abs() < 1e-12, "confidence is the documented formula of its parts");
}

#[test]
fn unknown_doc_type_is_a_per_item_error() {
    let (engine, queries) = engine();
    let mut bad = queries[0].clone();
    bad.doc_type = "love_letter".into();
    let out = engine.decide_routing_batch(&[bad]).expect("model ran");
    let err = out[0].as_ref().expect_err("unknown type").to_string();
    assert!(err.contains("doc_type"), "{err}");
}

#[test]
fn exception_decisions_pick_one_of_the_admissible_handlings_exactly() {
    let (engine, queries) = engine();
    let q = sample_exception(&queries[0]);
    let d = engine.handle_exception(&q, &[]).expect("decision");
    let blocking: Vec<_> = q.rule_failures.iter().filter(|o| o.is_blocking()).cloned().collect();
    let handlings = sapllm_sap::exceptions::admissible(q.sap_error.as_ref(), &blocking, &q.request_payload);
    let chosen = handlings.iter().find(|h| h.action == d.action).expect("an admissible action");
    assert_eq!((&d.correction, &d.retry, &d.rule), (&chosen.correction, &chosen.retry, &chosen.rule));
    assert_eq!(d.alternatives.len(), handlings.len());
    assert_eq!(d.alternatives[0].0, d.action.as_str());
    assert!(d.correction.len() <= 8);
    assert!((0.0..=1.0).contains(&d.confidence));
}

#[test]
fn tree_attention_scoring_equals_one_forward_per_option() {
    // Every candidate offered, so there are several options to score.
    let mut cfg = config();
    cfg.any_candidate = true;
    let (engine, queries) = tiny_engine(cfg.clone(), 7).expect("engine");
    cfg.decode.tree_scoring = false;
    let (sequential, _) = tiny_engine(cfg, 7).expect("engine");
    let batch: Vec<RoutingQuery> = queries.iter().skip(4).take(2).cloned().collect();
    let tree = engine.decide_routing_batch(&batch).expect("tree");
    let seq = sequential.decide_routing_batch(&batch).expect("sequential");
    for (t, s) in tree.iter().zip(&seq) {
        let (t, s) = (t.as_ref().expect("tree decision"), s.as_ref().expect("sequential decision"));
        assert_eq!(t.endpoint, s.endpoint);
        for ((e1, p1), (e2, p2)) in t.alternatives.iter().zip(&s.alternatives) {
            assert_eq!(e1, e2);
            assert!((p1 - p2).abs() < 1e-4, "{e1}: tree {p1} vs sequential {p2}");
        }
        assert_eq!(t.payload, s.payload);
        // Grounded payloads leave two options here (the serving API and exception handling),
        // where a sequential pass costs no more than one tree forward plus the follow-up.
        assert!(t.stats.forward_calls <= s.stats.forward_calls, "one scoring forward, not one per option");
    }
}

/// The grammar admits the answers SFT trains on: replaying reference answers (built from the
/// synthetic logs exactly as `format::routing_answer` builds training targets) through the
/// constrained decoder reproduces them byte for byte.
#[test]
fn the_grammar_admits_training_answers() {
    use sapllm_engine::format::{RoutingAnswer, answer_payload};
    use sapllm_worker::dataprep::DataPrepConfig;
    use sapllm_worker::dataprep::synth::Generator;

    let (engine, _) =
        tiny_engine(EngineConfig { abstain_threshold: 0.0, ..EngineConfig::default() }, 7).expect("engine");
    let cfg = DataPrepConfig { seed: 7, ..DataPrepConfig::default() };
    let generator = Generator::new(&cfg);
    let mut queries = Vec::new();
    let mut answers = Vec::new();
    for i in 0..40u64 {
        let log = generator.log(i);
        let (Some(endpoint), Some(payload)) = (log.routed_endpoint.clone(), log.sap_payload.clone()) else {
            continue;
        };
        let q = sapllm_worker::testkit::sample_queries(i as usize + 1, 7).pop().unwrap();
        if !Engine::allowed_endpoints(&q).contains(&endpoint) {
            continue;
        }
        answers.push(RoutingAnswer {
            doc_type: q.doc_type.clone(),
            payload: answer_payload(engine.catalog(), &endpoint, &payload),
            endpoint,
            reasoning: vec!["Document type and partner match the target API.".into()],
            confidence: 0.93,
        });
        queries.push(q);
        if queries.len() == 4 {
            break;
        }
    }
    assert!(queries.len() >= 2, "found reference answers");
    let (out, _) = engine.replay_routing_batch(&queries, &answers).expect("replay");
    for (d, a) in out.iter().zip(&answers) {
        let d = d.as_ref().expect("decision");
        assert_eq!(d.endpoint, a.endpoint);
        assert_eq!(d.payload, a.payload, "the grammar admits the training payload (the grounded one)");
        // The reasoning is the document's own (forced), then the provenance step.
        assert_eq!(d.reasoning.len(), 3, "{:?}", d.reasoning);
        assert!(d.reasoning[2].starts_with("Payload for "), "{:?}", d.reasoning);
        assert_eq!(d.confidence_parts.generated, Some(a.confidence));
    }
}

/// Prompt-lookup drafts only save forward calls: the same answers come out (model's own and
/// replayed reference answers).
#[test]
fn prompt_lookup_drafts_change_the_forward_calls_not_the_answers() {
    use sapllm_engine::format::{routing_answer, routing_query};
    use sapllm_worker::dataprep::{self, DataPrepConfig, RoutingExample};

    let tmp = tempfile::tempdir().unwrap();
    let cfg =
        DataPrepConfig { examples: 80, seed: 5, output_dir: tmp.path().to_path_buf(), ..Default::default() };
    dataprep::run(&cfg).expect("data-prep");
    let text = std::fs::read_to_string(tmp.path().join("train_routing_examples.jsonl")).unwrap();
    let examples: Vec<RoutingExample> =
        text.lines().take(3).map(|l| serde_json::from_str(l).expect("example")).collect();
    let queries: Vec<RoutingQuery> = examples.iter().map(routing_query).collect();
    let engine_with = |speculate: usize| {
        let decode = DecodeOptions { max_new_tokens: 1500, speculate, ..DecodeOptions::default() };
        tiny_engine(EngineConfig { abstain_threshold: 0.0, decode, ..EngineConfig::default() }, 7)
            .expect("engine")
            .0
    };
    let (on, off) = (engine_with(4), engine_with(0));
    let answers: Vec<_> = examples.iter().map(|e| routing_answer(on.catalog(), e)).collect();

    let (with, t_with) = on.replay_routing_batch(&queries, &answers).expect("replay");
    let (without, t_without) = off.replay_routing_batch(&queries, &answers).expect("replay");
    for ((a, b), want) in with.iter().zip(&without).zip(&answers) {
        let (a, b) = (a.as_ref().expect("decision"), b.as_ref().expect("decision"));
        assert_eq!((&a.payload, &a.reasoning[..2]), (&want.payload, &want.reasoning[..]));
        assert_eq!((&a.payload, &a.reasoning), (&b.payload, &b.reasoning));
        assert_eq!(b.stats.accepted_draft_tokens, 0);
    }
    // Grounded answers are forced but for the confidence: little is left to draft.
    assert!(
        t_with.forward_calls <= t_without.forward_calls,
        "{} forward calls with drafts, {} without",
        t_with.forward_calls,
        t_without.forward_calls
    );

    let own_with = on.decide_routing_batch(&queries[..2]).expect("decisions");
    let own_without = off.decide_routing_batch(&queries[..2]).expect("decisions");
    for (a, b) in own_with.iter().zip(&own_without) {
        let (a, b) = (a.as_ref().expect("decision"), b.as_ref().expect("decision"));
        assert_eq!((&a.endpoint, &a.payload, &a.reasoning), (&b.endpoint, &b.payload, &b.reasoning));
    }
}

/// Skipping the grammar mask after the body (greedy: the model's unconstrained best token is
/// taken when the grammar accepts it) changes nothing in the decision: same answer, same
/// confidence, same token counts, and the shortcut is taken. (The mask time it saves is measured
/// by `bench_serve`.)
#[test]
fn the_lazy_mask_changes_no_decision() {
    let engine_with = |lazy_mask: bool| {
        let decode = DecodeOptions { max_new_tokens: 1500, lazy_mask, ..DecodeOptions::default() };
        tiny_engine(EngineConfig { abstain_threshold: 0.0, decode, ..EngineConfig::default() }, 11)
            .expect("engine")
    };
    let ((lazy, queries), (full, _)) = (engine_with(true), engine_with(false));
    let (a, _) = lazy.decide_routing_batch_timed(&queries[..4]).expect("decisions");
    let (b, t_full) = full.decide_routing_batch_timed(&queries[..4]).expect("decisions");
    // Grounded answers sample only the confidence after the body: the shortcut may or may not
    // be taken; when it is off it never is.
    assert_eq!(t_full.unmasked, 0);
    for (a, b) in a.iter().zip(&b) {
        let (a, b) = (a.as_ref().expect("decision"), b.as_ref().expect("decision"));
        assert_eq!((&a.endpoint, &a.payload, &a.reasoning), (&b.endpoint, &b.payload, &b.reasoning));
        assert_eq!(a.confidence, b.confidence);
        assert_eq!(a.stats, b.stats);
    }
}
