//! The EDMX and OpenAPI importers, on the project's own fixtures and on the real SAP specs in
//! ../shared/sap (skipped with a message when that folder is absent).

use std::path::{Path, PathBuf};

use sapllm_sap::catalog::{ApiSpec, Catalog, EdmType, EntitySpec};
use sapllm_sap::import::import_file;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sap").join(name)
}

fn shared() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/sap");
    let p = if p.exists() { p } else { Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/sap") };
    if p.join("create-fields.json").exists() {
        Some(p)
    } else {
        eprintln!("SKIP: ../shared/sap not found; the shared SAP specs are not part of a user's clone");
        None
    }
}

#[test]
fn edmx_fixture_picks_root_set_deep_insert_and_flags() {
    let api = import_file(&fixture("tenant_order.edmx")).unwrap();
    assert_eq!(api.name, "ZAPI_TENANT_ORDER_SRV");
    assert!(!api.read_only);
    assert_eq!(api.actions, vec!["ReleaseOrder"]);
    let e = api.create.as_ref().unwrap();
    assert_eq!(e.entity_set, "Z_Order", "the set nobody deep-inserts into is the root, not Z_OrderItem");
    let id = e.field("OrderID").unwrap();
    assert!(id.key && !id.creatable && id.max_length == Some(10));
    let amount = e.field("NetAmount").unwrap();
    assert_eq!((amount.edm_type, amount.precision, amount.scale), (EdmType::Decimal, Some(15), Some(2)));
    assert_eq!(e.field("OrderDate").unwrap().edm_type, EdmType::DateTime);
    let items = e.navigation("to_Item").unwrap();
    assert!(items.many);
    assert_eq!(items.entity.entity_set, "Z_OrderItem");
    assert!(items.entity.navigation("to_Order").is_none(), "back-references are not deep-insert paths");
    assert!(!e.navigation("to_Customer").unwrap().many);
}

#[test]
fn api_without_creatable_set_is_read_only() {
    let api = import_file(&fixture("readonly_billing.edmx")).unwrap();
    assert!(api.read_only);
    assert!(api.create.is_none());
    assert_eq!(api.endpoint(), "API_BILLING_DOCUMENT_SRV");
}

#[test]
fn openapi_fixture_types_keys_and_actions() {
    let api = import_file(&fixture("tenant_receipt.openapi.json")).unwrap();
    assert_eq!(api.name, "ZAPI_RECEIPT_SRV;v=0002");
    assert_eq!(
        api.actions,
        vec!["PostReceipt"],
        "POST without a body is a function import; $batch is ignored"
    );
    let e = api.create.as_ref().unwrap();
    assert_eq!(e.entity_set, "Z_Receipt");
    assert!(e.field("ReceiptID").unwrap().key);
    assert_eq!(e.field("PostingDate").unwrap().edm_type, EdmType::DateTime);
    assert_eq!(e.field("EntryTime").unwrap().edm_type, EdmType::Time);
    let line = &e.navigation("to_Line").unwrap().entity;
    let q = line.field("Quantity").unwrap();
    assert_eq!((q.edm_type, q.precision, q.scale), (EdmType::Decimal, Some(13), Some(3)));
    assert!(line.field("LineNo").unwrap().key);
}

#[test]
fn bad_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.txt");
    std::fs::write(&p, "hello").unwrap();
    let e = import_file(&p).unwrap_err().to_string();
    assert!(e.contains("neither EDMX") && e.contains("x.txt"), "{e}");
    std::fs::write(&p, r#"{"swagger": "2.0"}"#).unwrap();
    let e = import_file(&p).unwrap_err().to_string();
    assert!(e.contains("openapi") && e.contains("3.x"), "{e}");
    std::fs::write(&p, "<a><b></a>").unwrap();
    assert!(import_file(&p).unwrap_err().to_string().contains("XML error"));
}

/// Every field the shared field table lists must be imported with the same EDM facts.
fn compare_with_table(api: &ApiSpec, table: &Value, entity: &EntitySpec, section: &str) {
    let Some(fields) = table.get(section).and_then(Value::as_object) else { return };
    for (name, f) in fields {
        let got = entity.field(name).unwrap_or_else(|| panic!("{}: {section}.{name} not imported", api.name));
        let ty = f["type"].as_str().unwrap();
        assert_eq!(got.edm_type, EdmType::parse(ty).unwrap(), "{}: {name} type", api.name);
        if let Some(ml) = f.get("maxLength") {
            assert_eq!(got.max_length, Some(ml.as_u64().unwrap() as u32), "{}: {name} maxLength", api.name);
        }
        if let Some(p) = f.get("precision") {
            assert_eq!(got.precision, Some(p.as_u64().unwrap() as u32), "{}: {name} precision", api.name);
            assert_eq!(
                got.scale,
                f.get("scale").map(|s| s.as_u64().unwrap() as u32),
                "{}: {name} scale",
                api.name
            );
        }
    }
}

#[test]
fn shared_specs_import_with_the_field_table_facts() {
    let Some(dir) = shared() else { return };
    let table: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("create-fields.json")).unwrap()).unwrap();
    let cases = [
        ("openapi/API_SALES_ORDER_SRV.json", "API_SALES_ORDER_SRV", "A_SalesOrder", "to_Item"),
        (
            "openapi/API_MATERIAL_DOCUMENT_SRV.json",
            "API_MATERIAL_DOCUMENT_SRV",
            "A_MaterialDocumentHeader",
            "to_MaterialDocumentItem",
        ),
        (
            "openapi/API_OUTBOUND_DELIVERY_SRV_0002.json",
            "API_OUTBOUND_DELIVERY_SRV;v=0002",
            "A_OutbDeliveryHeader",
            "to_DeliveryDocumentItem",
        ),
        (
            "openapi/API_INBOUND_DELIVERY_SRV_0002.json",
            "API_INBOUND_DELIVERY_SRV;v=0002",
            "A_InbDeliveryHeader",
            "to_DeliveryDocumentItem",
        ),
        (
            "edmx/API_BUSINESS_PARTNER.edmx",
            "API_BUSINESS_PARTNER",
            "A_BusinessPartner",
            "to_BusinessPartnerAddress",
        ),
    ];
    let builtin = Catalog::builtin();
    for (file, name, set, item_nav) in cases {
        let api = import_file(&dir.join(file)).unwrap();
        assert_eq!(api.name, name, "{file}");
        assert!(!api.read_only, "{file}");
        let e = api.create.as_ref().unwrap();
        assert_eq!(e.entity_set, set, "{file}: root create entity");
        let nav = e.navigation(item_nav).unwrap_or_else(|| panic!("{file}: no {item_nav}"));
        assert!(nav.many, "{file}: {item_nav} is to-many");
        if let Some(t) = table.get(name) {
            compare_with_table(&api, t, e, "header");
            compare_with_table(&api, t, &nav.entity, "item");
        }
        // The overlay from the built-in catalog makes business-mandatory fields mandatory.
        let known = builtin.api(name).unwrap();
        for f in known.create.as_ref().unwrap().fields.iter().filter(|f| f.mandatory) {
            if let Some(imported) = e.field(&f.name) {
                assert!(imported.mandatory, "{name}: overlay did not mark {} mandatory", f.name);
            }
        }
        assert_eq!(api.doc_types, known.doc_types);
    }
}

#[test]
fn shared_business_partner_marks_non_creatable_properties() {
    let Some(dir) = shared() else { return };
    let api = import_file(&dir.join("edmx/API_BUSINESS_PARTNER.edmx")).unwrap();
    let e = api.create.unwrap();
    let bp = e.field("BusinessPartner").unwrap();
    assert!(bp.key && bp.max_length == Some(10));
    assert!(!e.field("BusinessPartnerFullName").unwrap().creatable);
    assert!(e.navigation("to_BusinessPartnerRole").is_some_and(|n| n.many));
}

#[test]
fn builtin_catalog_agrees_with_the_shared_field_table() {
    let Some(dir) = shared() else { return };
    let table: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("create-fields.json")).unwrap()).unwrap();
    let cat = Catalog::builtin();
    for (name, t) in table.as_object().unwrap() {
        let api = cat.api(name).unwrap_or_else(|| panic!("built-in catalog lacks {name}"));
        let e = api.create.as_ref().unwrap();
        assert_eq!(e.entity_set, t["entity_set"].as_str().unwrap(), "{name}");
        compare_with_table(api, t, e, "header");
        if let Some(nav) = t["item_nav"].as_str() {
            compare_with_table(api, t, &e.navigation(nav).unwrap().entity, "item");
        }
    }
    // The catalog round-trips through its JSON file format.
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("c.json");
    cat.save(&p).unwrap();
    assert_eq!(Catalog::load(&p).unwrap(), cat);
}
