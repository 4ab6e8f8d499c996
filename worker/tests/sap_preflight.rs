//! Pre-flight checks (`sapllm_sap::preflight`) on documents from the synthetic generator, which
//! lives with data-prep in this crate.

use sapllm_sap::catalog::Catalog;
use sapllm_sap::documents::DocType;
use sapllm_sap::preflight::blocking_findings;
use sapllm_sap::routing::route;
use sapllm_sap::rules::RuleContext;
use sapllm_worker::dataprep::config::DataPrepConfig;
use sapllm_worker::dataprep::synth::Generator;

#[test]
fn findings_appear_exactly_for_documents_the_reference_router_blocks() {
    // The generator's only exception cause is a dropped mandatory fact, which needs no
    // context to see: the findings must flag every such document and no other.
    let cfg = DataPrepConfig { incomplete_rate: 0.2, ..DataPrepConfig::default() };
    let g = Generator::new(&cfg);
    let (mut flagged, mut clean) = (0, 0);
    for i in 0..400 {
        let rec = g.record(i);
        let t = rec.log.document_type.as_str();
        let findings = blocking_findings(&cfg.catalog, t, &rec.log.extracted_data);
        let ctx = RuleContext {
            today: Some(cfg.today),
            references: &rec.log.reference_lines,
            ..Default::default()
        };
        let blocked = route(&cfg.catalog, &rec.doc, &ctx).is_exception();
        assert_eq!(!findings.is_empty(), blocked, "record {i} ({}): {findings:?}", rec.variant);
        if blocked {
            flagged += 1;
            assert!(findings.iter().all(|f| f.starts_with("required_field ")), "{findings:?}");
        } else {
            clean += 1;
        }
    }
    assert!(flagged > 40 && clean > 200, "both kinds exercised: {flagged} flagged, {clean} clean");
}

#[test]
fn a_missing_supplier_is_named_and_unknown_types_or_unreadable_documents_are_handled() {
    let catalog = Catalog::builtin();
    let g = Generator::new(&DataPrepConfig { incomplete_rate: 0.0, ..DataPrepConfig::default() });
    let rec = (0..200).map(|i| g.record(i)).find(|r| r.log.document_type == "supplier_invoice").unwrap();
    // In the models' field names (data-prep respells some documents' keys).
    let mut doc = catalog.normalize(DocType::SupplierInvoice, &rec.log.extracted_data).document;
    assert_eq!(blocking_findings(&catalog, "supplier_invoice", &doc), Vec::<String>::new());
    doc.as_object_mut().unwrap().remove("supplier_id");
    let f = blocking_findings(&catalog, "supplier_invoice", &doc);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].starts_with("required_field ") && f[0].contains("InvoicingParty"), "{f:?}");
    assert!(blocking_findings(&catalog, "no_such_type", &doc).is_empty());
    let broken = serde_json::json!({"vendorId": ["not", "a", "code"]});
    let f = blocking_findings(&catalog, "supplier_invoice", &broken);
    assert_eq!(f, vec!["unreadable vendorId".to_string()], "the key as the user sent it");
}
