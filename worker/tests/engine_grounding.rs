//! Grounded decoding's contract with training data: for every example data-prep writes, the
//! engine offers the target's endpoint with exactly the target's payload (or, for exception
//! handling, names what is missing), forces the target's reasoning steps, and every value it
//! would post has a source. If these drift apart, SFT teaches answers the decoder cannot write.

use std::path::Path;

use sapllm_engine::Engine;
use sapllm_engine::examples::{ExceptionExample, RoutingExample};
use sapllm_engine::format::{answer_payload, clip_reasoning, routing_query};
use sapllm_engine::grounded::GroundedRequest;
use sapllm_sap::catalog::Catalog;
use sapllm_sap::documents::DocType;
use sapllm_sap::exceptions::{ExceptionAction, admissible};
use sapllm_sap::explain::exception_trace;
use sapllm_sap::grounding::unsourced;
use sapllm_sap::routing::EXCEPTION_ENDPOINT;
use sapllm_worker::dataprep::{self, DataPrepConfig};
use sapllm_worker::train::data::read_jsonl;

fn examples(dir: &Path) -> Vec<RoutingExample> {
    let cfg = DataPrepConfig {
        examples: 600,
        seed: 21,
        output_dir: dir.to_path_buf(),
        ..DataPrepConfig::default()
    };
    dataprep::run(&cfg).unwrap();
    check_exceptions(&read_jsonl::<ExceptionExample>(&dir.join("exception_examples.jsonl")).unwrap());
    ["train", "val", "test"]
        .iter()
        .flat_map(|s| read_jsonl::<RoutingExample>(&dir.join(format!("{s}_routing_examples.jsonl"))).unwrap())
        .collect()
}

#[test]
fn the_decoder_can_write_every_training_target_and_every_value_has_a_source() {
    let tmp = tempfile::tempdir().unwrap();
    let catalog = Catalog::builtin();
    let exs = examples(tmp.path());
    assert!(exs.len() > 500);
    let (mut posted, mut reproduced) = (0, 0);
    for ex in &exs {
        let q = routing_query(ex);
        let offered = Engine::offered_endpoints(&q, false);
        let g = GroundedRequest::new(&catalog, &q, &offered).unwrap();
        assert_eq!(
            g.reasoning,
            clip_reasoning(&ex.reasoning_trace),
            "{}: forced reasoning differs from the target's",
            ex.doc_id
        );
        assert!(
            g.normalized.unmapped.is_empty(),
            "{}: generator keys unmapped: {:?}",
            ex.doc_id,
            g.normalized.unmapped
        );
        for o in &g.options {
            if let Some(x) = &o.grounded {
                assert!(unsourced(&x.payload, &x.sources).is_empty(), "{} at {}", ex.doc_id, o.endpoint);
            }
        }
        if ex.target_endpoint == EXCEPTION_ENDPOINT {
            continue;
        }
        posted += 1;
        let option = g.options.iter().find(|o| o.endpoint == ex.target_endpoint);
        let Some(option) = option else {
            panic!(
                "{}: target {} not offered; ungrounded: {:?}",
                ex.doc_id, ex.target_endpoint, g.ungrounded
            );
        };
        let target = answer_payload(&catalog, &ex.target_endpoint, &ex.target_payload);
        if option.grounded.as_ref().map(|x| &x.payload) == Some(&target) {
            reproduced += 1;
        }
    }
    // Targets a clerk corrected in the log can differ from what the document says; every other
    // posted target is the grounded payload itself.
    assert!(reproduced * 100 >= posted * 97, "{reproduced} of {posted} posted targets reproduced");
}

/// Every exception target is one of the handlings its failure admits, with the same correction,
/// retry policy and rule, and the reasoning the decoder forces for it is the target's.
fn check_exceptions(exs: &[ExceptionExample]) {
    assert!(exs.len() > 20, "{} exception examples", exs.len());
    let mut retries = 0;
    for ex in exs {
        let blocking: Vec<_> = ex.rule_failures.iter().filter(|o| o.is_blocking()).cloned().collect();
        let handlings = admissible(ex.sap_error.as_ref(), &blocking, &ex.request_payload);
        let target = handlings
            .iter()
            .find(|r| r.action == ex.action)
            .unwrap_or_else(|| panic!("{}: target {:?} not admissible", ex.doc_id, ex.action));
        assert_eq!(
            (&target.correction, &target.retry, &target.rule),
            (&ex.correction, &ex.retry, &ex.rule),
            "{}",
            ex.doc_id
        );
        let forced = clip_reasoning(&exception_trace(&ex.endpoint, ex.sap_error.as_ref(), &blocking, target));
        assert_eq!(forced, clip_reasoning(&ex.reasoning_trace), "{}", ex.doc_id);
        retries += usize::from(handlings.iter().any(|r| r.action == ExceptionAction::Retry));
        assert!(handlings.len() >= 2, "{}: a single handling leaves the model nothing to decide", ex.doc_id);
    }
    assert!(retries < exs.len(), "retry is not admissible for every failure");
}

#[test]
fn an_incomplete_document_offers_only_exception_handling_and_names_what_is_missing() {
    let catalog = Catalog::builtin();
    let mut q = sapllm_worker::testkit::sample_queries(20, 3)
        .into_iter()
        .find(|q| q.doc_type == "purchase_order")
        .expect("a purchase order among 20 samples");
    q.adc_json = catalog.normalize(DocType::PurchaseOrder, &q.adc_json).document;
    q.adc_json.as_object_mut().unwrap().remove("supplier_id");
    let g = GroundedRequest::new(&catalog, &q, &Engine::offered_endpoints(&q, false)).unwrap();
    assert_eq!(g.options.len(), 1);
    assert_eq!(g.options[0].endpoint, EXCEPTION_ENDPOINT);
    let u = &g.ungrounded[0];
    assert_eq!(u.endpoint, "API_PURCHASEORDER_PROCESS_SRV/A_PurchaseOrder");
    assert!(u.missing.contains(&"Supplier".to_string()), "{u:?}");
    assert!(g.decision_reasoning(0).iter().any(|s| s.contains("Supplier")));
}
