//! Prompt profiles and training answers (`sapllm_engine::profile`, `sapllm_engine::format`) on
//! queries from the test kit, whose documents come from data-prep's synthetic generator.

use sapllm_engine::examples::RoutingExample;
use sapllm_engine::format::{MAX_REASONING_CHARS, routing_answer};
use sapllm_engine::profile::PromptProfile;
use sapllm_engine::template;
use sapllm_sap::catalog::Catalog;
use serde_json::Value;

#[test]
fn names_only_profile_clears_schemas_and_caps_similar_cases_and_round_trips() {
    let mut q = sapllm_worker::testkit::sample_queries(1, 3).pop().unwrap();
    q.similar_cases = vec![
        sapllm_engine::examples::SimilarCase {
            doc_id: "a".into(),
            doc_type: q.doc_type.clone(),
            endpoint: "X".into(),
            success: true,
            score: 1.0,
            summary: "s".into(),
        };
        3
    ];
    assert!(q.api_schemas.iter().any(|s| !s.schema.is_empty()));
    let p = PromptProfile { candidate_schemas: false, max_similar_cases: 1, pre_checks: true };
    let shown = p.apply(&q);
    assert!(shown.api_schemas.iter().all(|s| s.schema.is_empty()));
    assert_eq!(shown.api_schemas.len(), q.api_schemas.len(), "candidates stay, by name");
    assert_eq!(shown.similar_cases.len(), 1);
    assert_eq!(PromptProfile::default().apply(&q), q);
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(PromptProfile::load(dir.path()).unwrap(), PromptProfile::default());
    p.save(dir.path()).unwrap();
    assert_eq!(PromptProfile::load(dir.path()).unwrap(), p);
}

#[test]
fn profiles_written_before_pre_checks_existed_show_none() {
    let old: PromptProfile =
        serde_json::from_str(r#"{"candidate_schemas":false,"max_similar_cases":1}"#).unwrap();
    assert!(!old.pre_checks);
    let catalog = Catalog::builtin();
    let mut q = sapllm_worker::testkit::sample_queries(1, 5).pop().unwrap();
    assert_eq!(old.checks(&catalog, &q), None);
    let new = PromptProfile { pre_checks: true, ..old };
    assert_eq!(new.checks(&catalog, &q), Some(vec![]), "a complete sample document has no findings");
    // Every key removed: whatever the type, something business-mandatory is now missing.
    q.adc_json = serde_json::json!({});
    let found = new.checks(&catalog, &q).unwrap();
    assert!(!found.is_empty() && found.iter().all(|f| f.starts_with("required_")), "{found:?}");
}

#[test]
fn a_training_answer_echoes_the_request_type_and_keeps_the_first_reasoning_steps_clipped() {
    let catalog = Catalog::builtin();
    for q in sapllm_worker::testkit::sample_queries(10, 5) {
        let ex = RoutingExample {
            doc_id: "d".into(),
            doc_type: q.doc_type.clone(),
            adc_json: q.adc_json.clone(),
            api_schemas: q.api_schemas.clone(),
            similar_cases: vec![],
            target_endpoint: q.api_schemas[0].endpoint.clone(),
            target_payload: Value::Null,
            reasoning_trace: vec!["a".repeat(400), "b".into(), "c".into()],
            confidence: 0.9,
            success: true,
            feedback: Value::Null,
            rule_failures: vec![],
        };
        let a = routing_answer(&catalog, &ex);
        assert_eq!(a.doc_type, q.doc_type);
        assert_eq!(a.reasoning, vec!["a".repeat(MAX_REASONING_CHARS), "b".to_string()]);
        let text = template::response_text(&a).unwrap();
        assert!(text.starts_with(&format!("{{\"doc_type\":\"{}\",\"endpoint\":", q.doc_type)), "{text}");
    }
}
