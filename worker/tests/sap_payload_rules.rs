//! The payload builder and the rule validator, checked against the facts in
//! ../shared/sap/README.md (copied into these assertions so they run without the folder):
//! dates "/Date(ms)/", zero-padded item numbers, deep insert, no {"d": ...} wrapper, the
//! business-mandatory overlay, the credit memo flag, invoice balance, three-way match, duplicates.

use std::collections::HashSet;

use chrono::NaiveDate;
use sapllm_sap::catalog::{Catalog, create_payload_schema};
use sapllm_sap::documents::{AdcDocument, DocType};
use sapllm_sap::payload::{PayloadError, build_payload};
use sapllm_sap::routing::{EXCEPTION_ENDPOINT, route};
use sapllm_sap::rules::{ReferenceLine, RuleContext, RuleOutcome, check_payload, duplicate_key, validate};
use serde_json::{Value, json};

fn doc(t: DocType, v: Value) -> AdcDocument {
    AdcDocument::from_json(t, &v).unwrap()
}

fn build(t: DocType, v: Value, api: &str) -> Value {
    let cat = Catalog::builtin();
    build_payload(&doc(t, v), cat.api(api).unwrap()).unwrap()
}

fn failed<'a>(o: &'a [RuleOutcome], rule: &str) -> Vec<&'a RuleOutcome> {
    o.iter().filter(|x| x.rule_id == rule && !x.passed).collect()
}

fn schema_valid(api: &str, payload: &Value) {
    let cat = Catalog::builtin();
    let schema = create_payload_schema(cat.api(api).unwrap()).unwrap();
    let v = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> =
        v.iter_errors(payload).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "{api} payload violates its JSON Schema: {errors:?}\n{payload:#}");
}

fn purchase_order() -> Value {
    json!({
        "document_title": "Purchase Order", "po_number": "4500000001", "po_date": "15.03.2025",
        "company_code": "1010", "supplier_id": "17300001", "purchasing_org": "1010", "purchasing_group": "001",
        "currency": "eur",
        "items": [
            {"material": "TG-10001", "quantity": "10", "unit": "PC", "unit_price": "1.234,5", "plant": "1010"},
            {"material": "TG-10002", "quantity": 2.5, "unit": "KG", "unit_price": 7.12345, "plant": "1010"}
        ]
    })
}

#[test]
fn purchase_order_payload_follows_odata_v2_conventions() {
    let p = build(DocType::PurchaseOrder, purchase_order(), "API_PURCHASEORDER_PROCESS_SRV");
    assert!(p.get("d").is_none(), "the POST body is the entity itself");
    assert_eq!(p["PurchaseOrderDate"], "/Date(1741996800000)/", "2025-03-15 as ms since epoch");
    assert_eq!(p["PurchaseOrderType"], "NB", "overlay default");
    assert_eq!(p["DocumentCurrency"], "EUR");
    let items = p["to_PurchaseOrderItem"]["results"].as_array().unwrap();
    assert_eq!(items[0]["PurchaseOrderItem"], "00010");
    assert_eq!(items[1]["PurchaseOrderItem"], "00020");
    assert_eq!(items[0]["NetPriceAmount"], "1234.5", "decimals as strings, locale parsed");
    assert_eq!(items[1]["NetPriceAmount"], "7.123", "rounded to scale 3");
    assert!(p.get("PurchaseOrder").is_none(), "the server assigns the PO number");
    schema_valid("API_PURCHASEORDER_PROCESS_SRV", &p);
    let cat = Catalog::builtin();
    let outcomes = validate(cat.api("API_PURCHASEORDER_PROCESS_SRV").unwrap(), &p, &RuleContext::default());
    assert!(outcomes.iter().all(|o| o.passed), "{outcomes:#?}");
}

#[test]
fn missing_mandatory_field_is_named_and_routes_to_exception_handling() {
    let mut v = purchase_order();
    v.as_object_mut().unwrap().remove("purchasing_group");
    let cat = Catalog::builtin();
    let d = route(&cat, &doc(DocType::PurchaseOrder, v), &RuleContext::default());
    assert_eq!(d.endpoint, EXCEPTION_ENDPOINT);
    let blocking: Vec<&RuleOutcome> = d.blocking().collect();
    assert_eq!(blocking.len(), 1, "{blocking:#?}");
    assert_eq!(blocking[0].rule_id, "required_field");
    assert_eq!(blocking[0].field, "PurchasingGroup");
    assert!(blocking[0].message.contains("PurchasingGroup"));
}

fn invoice(po: bool) -> Value {
    let mut items = vec![
        json!({"po_item": 10, "material": "TG-1", "quantity": 10, "unit": "PC", "amount": 100.0}),
        json!({"po_item": 20, "material": "TG-2", "quantity": 5, "unit": "PC", "amount": 50.0}),
    ];
    if !po {
        items = vec![json!({"gl_account": "61000000", "cost_center": "10101101", "amount": 150.0})];
    }
    let mut v = json!({
        "document_title": "Invoice", "invoice_number": "INV-1", "invoice_date": "2025-06-02",
        "company_code": "1010", "supplier_id": "17300001", "currency": "EUR",
        "tax_amount": 28.5, "tax_code": "V1", "gross_amount": "178,50", "items": items
    });
    if po {
        v["po_number"] = json!("4500000001");
    }
    v
}

const SI: &str = "API_SUPPLIERINVOICE_PROCESS_SRV";

#[test]
fn invoice_with_po_reference_uses_po_items_with_quantities() {
    let p = build(DocType::SupplierInvoice, invoice(true), SI);
    let items = p["to_SuplrInvcItemPurOrdRef"]["results"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["SupplierInvoiceItem"], "000001");
    assert_eq!(items[0]["PurchaseOrder"], "4500000001");
    assert_eq!(items[1]["PurchaseOrderItem"], "00020");
    assert_eq!(items[0]["QuantityInPurchaseOrderUnit"], "10", "PO-reference items need a quantity");
    assert!(p.get("to_SupplierInvoiceItemGLAcct").is_none());
    assert_eq!(p["to_SupplierInvoiceTax"]["results"][0]["TaxAmount"], "28.5");
    assert_eq!(p["TaxIsCalculatedAutomatically"], false);
    assert!(p.get("SupplierInvoiceIsCreditMemo").is_none());
    schema_valid(SI, &p);
}

#[test]
fn invoice_without_po_reference_uses_gl_items() {
    let p = build(DocType::SupplierInvoice, invoice(false), SI);
    assert!(p.get("to_SuplrInvcItemPurOrdRef").is_none());
    let gl = &p["to_SupplierInvoiceItemGLAcct"]["results"][0];
    assert_eq!(gl["GLAccount"], "61000000");
    assert_eq!(gl["DebitCreditCode"], "S");
    assert_eq!(gl["SupplierInvoiceItem"], "0001");
    schema_valid(SI, &p);
}

#[test]
fn credit_memo_is_the_invoice_api_with_flag_and_positive_amounts() {
    let v = json!({
        "document_title": "INVOICE", "credit_memo_number": "CN-1", "credit_memo_date": "2025-06-02",
        "company_code": "1010", "supplier_id": "17300001", "currency": "EUR", "original_invoice_number": "INV-0",
        "tax_amount": "-19.00", "tax_code": "V1", "gross_amount": "119,00-",
        "items": [{"gl_account": "61000000", "amount": -100.0}]
    });
    let p = build(DocType::SupplierCreditMemo, v, SI);
    assert_eq!(p["SupplierInvoiceIsCreditMemo"], "X");
    assert_eq!(p["InvoiceGrossAmount"], "119");
    assert_eq!(p["to_SupplierInvoiceItemGLAcct"]["results"][0]["SupplierInvoiceItemAmount"], "100");
    assert_eq!(p["to_SupplierInvoiceItemGLAcct"]["results"][0]["DebitCreditCode"], "H");
    schema_valid(SI, &p);
    let cat = Catalog::builtin();
    let o = validate(cat.api(SI).unwrap(), &p, &RuleContext::default());
    assert!(failed(&o, "invoice_balance").is_empty() && failed(&o, "positive_amounts").is_empty(), "{o:#?}");
}

#[test]
fn goods_receipt_for_po_is_movement_101_reference_b_code_01() {
    let v = json!({"delivery_note": "LS-1", "po_number": "4500000001", "receipt_date": "2025-06-10", "plant": "1010",
                   "items": [{"reference_item": 10, "material": "TG-1", "quantity": 3, "unit": "PC"}]});
    let p = build(DocType::GoodsReceipt, v, "API_MATERIAL_DOCUMENT_SRV");
    assert_eq!(p["GoodsMovementCode"], "01");
    let it = &p["to_MaterialDocumentItem"]["results"][0];
    assert_eq!(
        (it["GoodsMovementType"].as_str(), it["GoodsMovementRefDocType"].as_str()),
        (Some("101"), Some("B"))
    );
    assert_eq!(it["PurchaseOrderItem"], "00010");
    assert_eq!(it["Plant"], "1010", "header plant fills the item");
    schema_valid("API_MATERIAL_DOCUMENT_SRV", &p);
    let mut broken = p.clone();
    broken["to_MaterialDocumentItem"]["results"][0]
        .as_object_mut()
        .unwrap()
        .remove("GoodsMovementRefDocType");
    let cat = Catalog::builtin();
    let o = validate(cat.api("API_MATERIAL_DOCUMENT_SRV").unwrap(), &broken, &RuleContext::default());
    let f = failed(&o, "goods_movement");
    assert_eq!(f.len(), 1);
    assert!(f[0].message.contains("MM_IM_ODATA_API_MDOC/011"));
}

#[test]
fn every_doc_type_builds_a_schema_valid_payload_for_its_api() {
    let cat = Catalog::builtin();
    let cfg = sapllm_worker::dataprep::DataPrepConfig {
        incomplete_rate: 0.0,
        error_rate: 0.0,
        ..Default::default()
    };
    let g = sapllm_worker::dataprep::synth::Generator::new(&cfg);
    let mut seen = HashSet::new();
    for i in 0..400 {
        let log = g.log(i);
        let t: DocType = log.document_type.parse().unwrap();
        // In the models' field names: data-prep respells some documents' keys.
        let d = doc(t, cat.normalize(t, &log.extracted_data).document);
        let api = sapllm_sap::routing::target_api(&cat, &d).unwrap();
        let p = build_payload(&d, api).unwrap();
        schema_valid(&api.name, &p);
        seen.insert(t);
    }
    assert_eq!(seen.len(), DocType::ALL.len(), "all types generated: {seen:?}");
    // A type cannot be built for an API that does not serve it, nor for a read-only API.
    let d = doc(DocType::PurchaseOrder, purchase_order());
    assert!(matches!(build_payload(&d, cat.api(SI).unwrap()), Err(PayloadError::WrongApi { .. })));
    assert!(matches!(
        build_payload(&d, cat.api("API_BILLING_DOCUMENT_SRV").unwrap()),
        Err(PayloadError::ReadOnly { .. })
    ));
}

#[test]
fn invoice_balance_gross_equals_items_plus_tax() {
    let cat = Catalog::builtin();
    let api = cat.api(SI).unwrap();
    let mut p = build(DocType::SupplierInvoice, invoice(true), SI);
    assert!(failed(&validate(api, &p, &RuleContext::default()), "invoice_balance").is_empty());
    p["InvoiceGrossAmount"] = json!("180.5");
    let o = validate(api, &p, &RuleContext::default());
    let f = failed(&o, "invoice_balance");
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].field, "InvoiceGrossAmount");
    assert!(f[0].message.contains("M8/186") && f[0].message.contains("2.00"), "{}", f[0].message);
}

#[test]
fn three_way_match_applies_price_and_quantity_tolerances() {
    let cat = Catalog::builtin();
    let api = cat.api(SI).unwrap();
    let p = build(DocType::SupplierInvoice, invoice(true), SI);
    let line = |price: f64, received: f64| ReferenceLine {
        purchase_order: "4500000001".into(),
        item: 10,
        unit_price: price,
        ordered_quantity: 10.0,
        received_quantity: received,
    };
    // Invoiced 10 x 10.00. PO price 9.80: 2% over, within PP 5%.
    let refs = [line(9.8, 10.0)];
    let ctx = RuleContext { references: &refs, ..Default::default() };
    let o = validate(api, &p, &ctx);
    assert!(o.iter().any(|x| x.rule_id == "three_way_match_price" && x.passed));
    // PO price 5.00: 100% and 50.00 over: blocked, as a warning naming the field.
    let refs = [line(5.0, 10.0)];
    let o = validate(api, &p, &RuleContext { references: &refs, ..Default::default() });
    let f = failed(&o, "three_way_match_price");
    assert_eq!(f.len(), 1);
    assert!(f[0].field.ends_with("SupplierInvoiceItemAmount") && f[0].message.contains("blocked"));
    // Only 4 received, 10 invoiced: DQ exceeded.
    let refs = [line(10.0, 4.0)];
    let o = validate(api, &p, &RuleContext { references: &refs, ..Default::default() });
    assert_eq!(failed(&o, "three_way_match_quantity").len(), 1);
}

#[test]
fn duplicate_invoice_check_uses_the_documented_key_and_skips_credit_memos() {
    let cat = Catalog::builtin();
    let api = cat.api(SI).unwrap();
    let p = build(DocType::SupplierInvoice, invoice(true), SI);
    let key = duplicate_key(&p).unwrap();
    for part in ["17300001", "EUR", "1010", "178.50", "INV-1", "2025-06-02"] {
        assert!(key.contains(part), "{key} lacks {part}");
    }
    let posted: HashSet<String> = [key].into();
    let o = validate(api, &p, &RuleContext { posted_invoices: Some(&posted), ..Default::default() });
    assert_eq!(failed(&o, "duplicate_invoice").len(), 1);
    let mut cm = p.clone();
    cm["SupplierInvoiceIsCreditMemo"] = json!("X");
    assert!(duplicate_key(&cm).is_none());
    let o = validate(api, &cm, &RuleContext { posted_invoices: Some(&posted), ..Default::default() });
    assert!(o.iter().all(|x| x.rule_id != "duplicate_invoice"));
}

#[test]
fn format_rules_catch_lengths_precision_dates_items_and_currency() {
    let cat = Catalog::builtin();
    let api = cat.api("API_PURCHASEORDER_PROCESS_SRV").unwrap();
    let mut p = build(DocType::PurchaseOrder, purchase_order(), "API_PURCHASEORDER_PROCESS_SRV");
    p["CompanyCode"] = json!("10100");
    p["DocumentCurrency"] = json!("EUE");
    p["PurchaseOrderDate"] = json!("2025-03-15");
    p["to_PurchaseOrderItem"]["results"][0]["PurchaseOrderItem"] = json!("10");
    p["to_PurchaseOrderItem"]["results"][0]["OrderQuantity"] = json!("1.2345");
    p["Bogus"] = json!(1);
    let o = validate(api, &p, &RuleContext::default());
    let field = |rule: &str| failed(&o, rule).first().map(|x| x.field.clone()).unwrap_or_default();
    assert_eq!(field("max_length"), "CompanyCode");
    assert_eq!(field("currency_code"), "DocumentCurrency");
    assert_eq!(field("date_format"), "PurchaseOrderDate");
    assert_eq!(field("item_number_format"), "to_PurchaseOrderItem[0].PurchaseOrderItem");
    assert_eq!(field("decimal_precision"), "to_PurchaseOrderItem[0].OrderQuantity");
    assert_eq!(field("unknown_field"), "Bogus");
}

#[test]
fn date_sanity_uses_the_processing_date() {
    let cat = Catalog::builtin();
    let api = cat.api(SI).unwrap();
    let p = build(DocType::SupplierInvoice, invoice(true), SI);
    let today = NaiveDate::from_ymd_opt(2025, 5, 1);
    let o = validate(api, &p, &RuleContext { today, ..Default::default() });
    let f = failed(&o, "date_sanity");
    assert_eq!(f.len(), 1, "invoice dated after the processing date: {o:#?}");
    assert_eq!(f[0].field, "DocumentDate");
}

#[test]
fn check_payload_scores_field_accuracy() {
    let cat = Catalog::builtin();
    let api = cat.api("API_PURCHASEORDER_PROCESS_SRV").unwrap();
    let expected = build(DocType::PurchaseOrder, purchase_order(), "API_PURCHASEORDER_PROCESS_SRV");
    let same = check_payload(api, &expected, &expected, &RuleContext::default());
    assert_eq!((same.field_accuracy, same.f1, same.rule_pass_rate), (1.0, 1.0, 1.0));
    let mut pred = expected.clone();
    // A bare array instead of {"results": [...]}, and "1234.50" for "1234.5": both still correct.
    pred["to_PurchaseOrderItem"] = expected["to_PurchaseOrderItem"]["results"].clone();
    pred["to_PurchaseOrderItem"][0]["NetPriceAmount"] = json!("1234.50");
    pred["Supplier"] = json!("99999999");
    pred.as_object_mut().unwrap().remove("CompanyCode");
    let c = check_payload(api, &pred, &expected, &RuleContext::default());
    assert_eq!(c.wrong, vec!["Supplier"]);
    assert_eq!(c.missing, vec!["CompanyCode"]);
    assert_eq!(c.correct, c.expected - 2);
    assert!(c.rule_pass_rate < 1.0, "missing CompanyCode fails a rule");
}
