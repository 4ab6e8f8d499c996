//! The `catalog` and `data-prep` subcommands as a user runs them.

use std::path::Path;
use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sapllm-worker"));
    c.arg("--progress").arg("quiet");
    c
}

#[test]
fn catalog_import_writes_a_catalog_that_show_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("catalog.json");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("sap/tests/fixtures/sap");
    let o = bin()
        .args(["catalog", "import", "--out"])
        .arg(&out)
        .arg(fixtures.join("tenant_order.edmx"))
        .arg(fixtures.join("readonly_billing.edmx"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("read-only (no creatable entity set)"), "{err}");
    let o = bin().args(["catalog", "show", "--catalog"]).arg(&out).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("ZAPI_TENANT_ORDER_SRV/Z_Order") && text.contains("API_BILLING_DOCUMENT_SRV"),
        "{text}"
    );

    let o = bin()
        .args(["catalog", "show", "--api", "API_SUPPLIERINVOICE_PROCESS_SRV", "--json-schema"])
        .output()
        .unwrap();
    let schema: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(schema["properties"]["SupplierInvoiceIsCreditMemo"]["maxLength"], 1);

    let o = bin().args(["catalog", "show", "--api", "NOPE"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("API_SALES_ORDER_SRV"), "lists the known APIs");
}

#[test]
fn data_prep_cli_runs_and_rejects_bad_flags_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let o = bin()
        .args(["data-prep", "--examples", "200", "--mix", "supplier_invoice=3,goods_receipt=1", "--out"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("dataset_card.json")).unwrap())
            .unwrap();
    let types: Vec<&String> = card["doc_types"].as_object().unwrap().keys().collect();
    assert_eq!(types, ["goods_receipt", "supplier_invoice"], "the mix is honoured");

    let o = bin().args(["data-prep", "--mix", "invoice=1", "--out"]).arg(tmp.path()).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("supplier_invoice"));
    let o = bin().args(["data-prep", "--split", "0.9,0.2", "--out"]).arg(tmp.path()).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("--split"));
}
