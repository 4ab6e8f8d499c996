//! SAP failures and their actions, per ../shared/sap/README.md: MM_IM_ODATA_API_MDOC/011 ->
//! AUTO_CORRECT (GoodsMovementRefDocType B), M7/360 -> ESCALATE, M7/053 -> ESCALATE or the
//! posting-date rule, ME/006 -> RETRY with backoff, 403 CSRF -> refresh token and RETRY; plus
//! M8/186 (missing tax line -> AUTO_CORRECT) and M8/108 (duplicate -> REJECT). Corrections are
//! checked by applying them and re-validating.

use chrono::NaiveDate;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use sapllm_sap::catalog::Catalog;
use sapllm_sap::documents::{AdcDocument, DocType};
use sapllm_sap::exceptions::scenarios::{Scenario, applicable, generate};
use sapllm_sap::exceptions::{ExceptionAction, SapFailure, apply_correction, resolve};
use sapllm_sap::odata;
use sapllm_sap::payload::build_payload;
use sapllm_sap::rules::{RuleContext, validate};
use serde_json::{Value, json};

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2025, 6, 16).unwrap()
}

fn payload(t: DocType, v: Value, api: &str) -> Value {
    let cat = Catalog::builtin();
    build_payload(&AdcDocument::from_json(t, &v).unwrap(), cat.api(api).unwrap()).unwrap()
}

fn goods_receipt() -> Value {
    payload(
        DocType::GoodsReceipt,
        json!({"delivery_note": "LS-1", "po_number": "4500000001", "receipt_date": "2025-06-10", "plant": "1010",
               "items": [{"reference_item": 10, "material": "TG-1", "quantity": 3, "unit": "PC"},
                         {"reference_item": 20, "material": "TG-2", "quantity": 1, "unit": "PC"}]}),
        "API_MATERIAL_DOCUMENT_SRV",
    )
}

fn invoice() -> Value {
    payload(
        DocType::SupplierInvoice,
        json!({"invoice_number": "INV-1", "invoice_date": "2025-06-02", "company_code": "1010", "supplier_id": "17300001",
               "currency": "EUR", "po_number": "4500000001", "tax_amount": 19.0, "tax_code": "V1", "gross_amount": 119.0,
               "items": [{"po_item": 10, "quantity": 10, "unit": "PC", "amount": 100.0, "tax_code": "V1"}]}),
        "API_SUPPLIERINVOICE_PROCESS_SRV",
    )
}

fn rules_failed(api: &str, p: &Value, rule: &str) -> usize {
    let cat = Catalog::builtin();
    validate(cat.api(api).unwrap(), p, &RuleContext::default())
        .iter()
        .filter(|o| o.rule_id == rule && !o.passed)
        .count()
}

#[test]
fn envelope_has_the_odata_v2_shape() {
    let mut r = SmallRng::seed_from_u64(1);
    let g = generate(Scenario::PeriodClosed, &invoice(), today(), &mut r);
    let v = serde_json::to_value(&g.failure).unwrap();
    assert_eq!(v["http_status"], 400);
    assert_eq!(v["error"]["code"], "M7/053");
    assert!(
        v["error"]["message"]["value"]
            .as_str()
            .unwrap()
            .contains("Posting only possible in periods 2025/06 and 2025/05")
    );
    let d = &v["error"]["innererror"]["errordetails"][0];
    assert_eq!(d["propertyref"], "PostingDate");
    assert_eq!(d["severity"], "error");
    let back: SapFailure = serde_json::from_value(v).unwrap();
    assert_eq!(back, g.failure);
}

#[test]
fn missing_reference_doc_type_is_auto_corrected_and_the_fix_validates() {
    let api = "API_MATERIAL_DOCUMENT_SRV";
    let mut r = SmallRng::seed_from_u64(2);
    let g = generate(Scenario::MissingRefDocType, &goods_receipt(), today(), &mut r);
    assert_eq!(g.failure.body.error.code, "MM_IM_ODATA_API_MDOC/011");
    assert_eq!(rules_failed(api, &g.request, "goods_movement"), 2, "both PO items lack reference type B");
    let res = resolve(&g.failure, &g.request);
    assert_eq!(res.action, ExceptionAction::AutoCorrect);
    assert_eq!(res.correction.len(), 2);
    assert_eq!(res.correction[0].path, "/to_MaterialDocumentItem/results/0/GoodsMovementRefDocType");
    let fixed = apply_correction(&g.request, &res.correction).unwrap();
    assert_eq!(rules_failed(api, &fixed, "goods_movement"), 0);
    assert_eq!(fixed, goods_receipt(), "the correction restores exactly the correct request");
}

#[test]
fn missing_tax_line_is_auto_corrected_other_imbalances_escalate() {
    let api = "API_SUPPLIERINVOICE_PROCESS_SRV";
    let mut req = invoice();
    req.as_object_mut().unwrap().remove("to_SupplierInvoiceTax");
    assert_eq!(rules_failed(api, &req, "invoice_balance"), 1);
    let mut r = SmallRng::seed_from_u64(3);
    let mut failure = generate(Scenario::BalanceNotZero, &invoice(), today(), &mut r).failure;
    failure.body.error.code = "M8/186".into();
    let res = resolve(&failure, &req);
    assert_eq!(res.action, ExceptionAction::AutoCorrect, "{}", res.reason);
    let fixed = apply_correction(&req, &res.correction).unwrap();
    assert_eq!(rules_failed(api, &fixed, "invoice_balance"), 0, "{fixed:#}");
    assert_eq!(fixed["to_SupplierInvoiceTax"]["results"][0]["TaxCode"], "V1");

    let mut odd = invoice();
    odd["InvoiceGrossAmount"] = json!("131.37");
    assert_eq!(resolve(&failure, &odd).action, ExceptionAction::Escalate);
}

#[test]
fn closed_period_applies_the_posting_date_rule_only_when_the_document_is_in_an_open_period() {
    let mut seen = [false, false];
    for seed in 0..20 {
        let mut r = SmallRng::seed_from_u64(seed);
        let g = generate(Scenario::PeriodClosed, &invoice(), today(), &mut r);
        let res = resolve(&g.failure, &g.request);
        let doc_date = odata::parse_date(g.request["DocumentDate"].as_str().unwrap()).unwrap();
        if doc_date >= NaiveDate::from_ymd_opt(2025, 5, 1).unwrap() {
            assert_eq!(res.action, ExceptionAction::ApplyRule);
            assert_eq!(res.rule.as_deref(), Some("posting_date_into_open_period"));
            let fixed = apply_correction(&g.request, &res.correction).unwrap();
            assert_eq!(fixed["PostingDate"], g.request["DocumentDate"]);
            seen[0] = true;
        } else {
            assert_eq!(res.action, ExceptionAction::Escalate);
            assert!(res.correction.is_empty());
            seen[1] = true;
        }
    }
    assert_eq!(seen, [true, true], "both variants occur");
}

#[test]
fn observed_codes_map_to_their_actions() {
    let mut r = SmallRng::seed_from_u64(4);
    let gr = goods_receipt();
    let inv = invoice();
    let cases = [
        (Scenario::MaterialDiffers, &gr, ExceptionAction::Escalate, "M7/360"),
        (Scenario::PoLocked, &gr, ExceptionAction::Retry, "ME/006"),
        (Scenario::DuplicateInvoice, &inv, ExceptionAction::Reject, "M8/108"),
        (Scenario::CsrfToken, &inv, ExceptionAction::Retry, "/IWFND/CM_BEC/026"),
        (Scenario::ServiceUnavailable, &inv, ExceptionAction::Retry, "/IWFND/CM_BEC/026"),
    ];
    for (s, p, action, code) in cases {
        let g = generate(s, p, today(), &mut r);
        assert_eq!(g.failure.body.error.code, code, "{s:?}");
        let res = resolve(&g.failure, &g.request);
        assert_eq!(res.action, action, "{s:?}: {}", res.reason);
        match s {
            Scenario::PoLocked => {
                let p = res.retry.unwrap();
                assert!(p.initial_backoff_ms >= 1000 && p.multiplier > 1.0 && !p.refresh_csrf_token);
                assert!(g.failure.body.error.message.value.contains("4500000001"));
            }
            Scenario::CsrfToken => {
                assert_eq!(g.failure.http_status, 403);
                assert!(res.retry.unwrap().refresh_csrf_token);
            }
            _ => {}
        }
    }
}

#[test]
fn scenarios_fit_the_api() {
    let gr = goods_receipt();
    let a = applicable("API_MATERIAL_DOCUMENT_SRV", &gr);
    assert!(a.contains(&Scenario::MissingRefDocType) && !a.contains(&Scenario::DuplicateInvoice));
    let mut cm = invoice();
    cm["SupplierInvoiceIsCreditMemo"] = json!("X");
    let a = applicable("API_SUPPLIERINVOICE_PROCESS_SRV", &cm);
    assert!(!a.contains(&Scenario::DuplicateInvoice), "no duplicate check for credit memos");
    assert!(a.contains(&Scenario::PoLocked), "PO-reference invoice can hit a locked PO");
}

#[test]
fn corrections_with_bad_paths_are_errors_not_panics() {
    use sapllm_sap::exceptions::PatchOp;
    let op = PatchOp { op: "add".into(), path: "/items/7/x".into(), value: Some(json!(1)) };
    let e = apply_correction(&json!({"items": []}), &[op]).unwrap_err();
    assert!(e.contains("out of range"), "{e}");
    let op = PatchOp { op: "move".into(), path: "/a".into(), value: None };
    assert!(apply_correction(&json!({}), &[op]).unwrap_err().contains("not supported"));
}
