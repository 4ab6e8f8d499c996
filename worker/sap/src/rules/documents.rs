//! Business rules that depend on the document's meaning, not just the schema: invoice balance,
//! PO-reference quantities, credit memo sign, three-way match, duplicate invoices, goods movement
//! codes for a receipt against a PO, and date sanity.

use chrono::Duration;
use serde_json::Value;

use super::schema::nav_results;
use super::{RuleContext, RuleOutcome, Severity};
use crate::catalog::ApiSpec;
use crate::odata;

fn dec(v: &Value, name: &str) -> Option<f64> {
    v.get(name).and_then(odata::parse_decimal)
}
fn text<'v>(v: &'v Value, name: &str) -> Option<&'v str> {
    v.get(name).and_then(Value::as_str)
}
fn items<'v>(v: &'v Value, nav: &str) -> &'v [Value] {
    v.get(nav).and_then(nav_results).map_or(&[], Vec::as_slice)
}

pub(super) fn check(api: &ApiSpec, p: &Value, ctx: &RuleContext, out: &mut Vec<RuleOutcome>) {
    if p.get("InvoiceGrossAmount").is_some() || p.get("SupplierInvoiceIDByInvcgParty").is_some() {
        invoice(p, ctx, out);
    }
    if p.get("GoodsMovementCode").is_some() || p.get("to_MaterialDocumentItem").is_some() {
        goods_movement(p, out);
    }
    dates(api, p, ctx, out);
}

/// The key SAP's duplicate invoice check compares: supplier, currency, company code, gross
/// amount, reference and document date. `None` for a credit memo (not checked) or when a part is
/// missing.
pub fn duplicate_key(p: &Value) -> Option<String> {
    if text(p, "SupplierInvoiceIsCreditMemo") == Some("X") {
        return None;
    }
    let gross = dec(p, "InvoiceGrossAmount")?;
    let date = text(p, "DocumentDate").and_then(odata::parse_date)?;
    Some(format!(
        "{}|{}|{}|{:.2}|{}|{}",
        text(p, "InvoicingParty")?,
        text(p, "DocumentCurrency")?,
        text(p, "CompanyCode")?,
        gross,
        text(p, "SupplierInvoiceIDByInvcgParty")?.to_uppercase(),
        date
    ))
}

fn invoice(p: &Value, ctx: &RuleContext, out: &mut Vec<RuleOutcome>) {
    let credit_memo = text(p, "SupplierInvoiceIsCreditMemo") == Some("X");
    let po_items = items(p, "to_SuplrInvcItemPurOrdRef");
    let gl_items = items(p, "to_SupplierInvoiceItemGLAcct");
    let taxes = items(p, "to_SupplierInvoiceTax");
    let item_sum: f64 =
        po_items.iter().chain(gl_items).filter_map(|i| dec(i, "SupplierInvoiceItemAmount")).sum();
    let tax_sum: f64 = taxes.iter().filter_map(|t| dec(t, "TaxAmount")).sum();
    if let Some(gross) = dec(p, "InvoiceGrossAmount") {
        let auto_tax = p.get("TaxIsCalculatedAutomatically") == Some(&Value::Bool(true)) && taxes.is_empty();
        if auto_tax {
            let ok = gross + ctx.tolerances.small_difference_abs >= item_sum;
            out.push(RuleOutcome::new(
                "invoice_balance",
                Severity::Error,
                ok,
                "InvoiceGrossAmount",
                if ok {
                    format!("InvoiceGrossAmount {gross:.2} covers items {item_sum:.2} (tax calculated by SAP)")
                } else {
                    format!("InvoiceGrossAmount {gross:.2} is below the item total {item_sum:.2}; SAP answers M8/186 (balance is not zero)")
                },
            ));
        } else {
            let diff = gross - item_sum - tax_sum;
            let ok = diff.abs() <= ctx.tolerances.small_difference_abs;
            out.push(RuleOutcome::new(
                "invoice_balance",
                Severity::Error,
                ok,
                "InvoiceGrossAmount",
                if ok {
                    format!("InvoiceGrossAmount {gross:.2} = items {item_sum:.2} + tax {tax_sum:.2}")
                } else {
                    format!(
                        "InvoiceGrossAmount {gross:.2} != items {item_sum:.2} + tax {tax_sum:.2} (difference {diff:.2}); SAP answers M8/186 (balance is not zero)"
                    )
                },
            ));
        }
        let negative = gross < 0.0
            || po_items
                .iter()
                .chain(gl_items)
                .any(|i| dec(i, "SupplierInvoiceItemAmount").is_some_and(|a| a < 0.0));
        out.push(RuleOutcome::new(
            "positive_amounts",
            Severity::Error,
            !negative,
            "InvoiceGrossAmount",
            if negative {
                "amounts must be positive; a credit is expressed by SupplierInvoiceIsCreditMemo = \"X\", not by a minus sign".into()
            } else {
                "amounts are positive".into()
            },
        ));
    }
    for (i, it) in po_items.iter().enumerate() {
        let field = format!("to_SuplrInvcItemPurOrdRef[{i}].QuantityInPurchaseOrderUnit");
        let has_qty = dec(it, "QuantityInPurchaseOrderUnit").is_some();
        out.push(RuleOutcome::new(
            "po_reference_quantity",
            Severity::Error,
            has_qty,
            field,
            if has_qty {
                "PO-reference item has a quantity".into()
            } else {
                "a PO-reference item needs QuantityInPurchaseOrderUnit (and PurchaseOrderQuantityUnit)".into()
            },
        ));
        three_way_match(i, it, ctx, out);
    }
    if let Some(posted) = ctx.posted_invoices
        && !credit_memo
        && let Some(key) = duplicate_key(p)
    {
        let dup = posted.contains(&key);
        out.push(RuleOutcome::new(
                    "duplicate_invoice",
                    Severity::Error,
                    !dup,
                    "SupplierInvoiceIDByInvcgParty",
                    if dup {
                        format!(
                            "invoice {} from {} was already posted with the same amount, currency, company code and date (SAP M8/108)",
                            text(p, "SupplierInvoiceIDByInvcgParty").unwrap_or("?"),
                            text(p, "InvoicingParty").unwrap_or("?")
                        )
                    } else {
                        "no earlier invoice with the same supplier, reference, amount and date".into()
                    },
                ));
    }
}

/// Compares an invoice line with the PO price (tolerance PP) and the quantity received (DQ).
/// Beyond either the absolute or the percentage limit SAP posts the invoice blocked for payment.
fn three_way_match(i: usize, it: &Value, ctx: &RuleContext, out: &mut Vec<RuleOutcome>) {
    let (Some(po), Some(item)) = (text(it, "PurchaseOrder"), text(it, "PurchaseOrderItem")) else { return };
    let Ok(item) = item.parse::<u32>() else { return };
    let Some(r) = ctx.references.iter().find(|r| r.purchase_order == po && r.item == item) else { return };
    let (Some(amount), Some(qty)) =
        (dec(it, "SupplierInvoiceItemAmount"), dec(it, "QuantityInPurchaseOrderUnit"))
    else {
        return;
    };
    let t = ctx.tolerances;
    if qty > 0.0 {
        let price = amount / qty;
        let var = (price - r.unit_price) * qty;
        let pct = if r.unit_price > 0.0 { (price - r.unit_price) / r.unit_price * 100.0 } else { 0.0 };
        let ok = var <= t.price_abs && pct <= t.price_pct;
        out.push(RuleOutcome::new(
            "three_way_match_price",
            Severity::Warning,
            ok,
            format!("to_SuplrInvcItemPurOrdRef[{i}].SupplierInvoiceItemAmount"),
            format!(
                "invoiced price {price:.2} vs PO {po}/{item:05} price {:.2}: variance {var:.2} ({pct:.1}%), tolerance PP {:.2} / {:.1}%{}",
                r.unit_price,
                t.price_abs,
                t.price_pct,
                if ok { "" } else { " exceeded: invoice is blocked for payment" }
            ),
        ));
    }
    let over = qty - r.received_quantity;
    let pct = if r.received_quantity > 0.0 { over / r.received_quantity * 100.0 } else { f64::INFINITY };
    let ok = over <= t.quantity_abs && pct <= t.quantity_pct;
    out.push(RuleOutcome::new(
        "three_way_match_quantity",
        Severity::Warning,
        ok,
        format!("to_SuplrInvcItemPurOrdRef[{i}].QuantityInPurchaseOrderUnit"),
        format!(
            "invoiced quantity {qty} vs received {} for PO {po}/{item:05}, tolerance DQ {} / {}%{}",
            r.received_quantity,
            t.quantity_abs,
            t.quantity_pct,
            if ok { "" } else { " exceeded: invoice is blocked for payment" }
        ),
    ));
}

/// A goods receipt for a PO is movement 101 against reference document type B with movement
/// code 01; SAP rejects PO fields on other movements (MM_IM_ODATA_API_MDOC/011).
fn goods_movement(p: &Value, out: &mut Vec<RuleOutcome>) {
    let code_ok = text(p, "GoodsMovementCode") == Some("01");
    out.push(RuleOutcome::new(
        "goods_movement",
        Severity::Error,
        code_ok,
        "GoodsMovementCode",
        if code_ok {
            "GoodsMovementCode 01 (goods receipt for PO)".into()
        } else {
            "a goods receipt for a PO needs GoodsMovementCode \"01\"".into()
        },
    ));
    for (i, it) in items(p, "to_MaterialDocumentItem").iter().enumerate() {
        if it.get("PurchaseOrder").is_none() {
            continue;
        }
        let ok =
            text(it, "GoodsMovementType") == Some("101") && text(it, "GoodsMovementRefDocType") == Some("B");
        out.push(RuleOutcome::new(
            "goods_movement",
            Severity::Error,
            ok,
            format!("to_MaterialDocumentItem[{i}].GoodsMovementRefDocType"),
            if ok {
                "PO item posted as movement 101 with reference type B".into()
            } else {
                "an item with PurchaseOrder needs GoodsMovementType \"101\" and GoodsMovementRefDocType \"B\" (else MM_IM_ODATA_API_MDOC/011)".into()
            },
        ));
    }
}

/// Document dates must not lie in the future nor years back; posting must not precede the
/// document date; a quotation's validity must end after it starts.
fn dates(api: &ApiSpec, p: &Value, ctx: &RuleContext, out: &mut Vec<RuleOutcome>) {
    let Some(today) = ctx.today else { return };
    let get = |n: &str| text(p, n).and_then(odata::parse_date);
    let doc_date_field =
        ["DocumentDate", "PurchaseOrderDate", "SalesQuotationDate", "CustomerPurchaseOrderDate"]
            .into_iter()
            .find(|f| p.get(*f).is_some());
    if let Some(field) = doc_date_field
        && let Some(d) = get(field)
    {
        let future = d > today;
        let stale = d < today - Duration::days(2 * 366);
        let ok = !future && !stale;
        out.push(RuleOutcome::new(
                "date_sanity",
                Severity::Error,
                ok,
                field,
                if future {
                    format!("{field} {d} is after the processing date {today}; check the extraction (day/month swapped?)")
                } else if stale {
                    format!("{field} {d} is more than two years before {today}")
                } else {
                    format!("{field} {d} is plausible")
                },
            ));
    }
    if let (Some(doc), Some(post)) = (get("DocumentDate"), get("PostingDate")) {
        let ok = post >= doc;
        out.push(RuleOutcome::new(
            "date_sanity",
            Severity::Warning,
            ok,
            "PostingDate",
            if ok {
                "PostingDate is on or after DocumentDate".into()
            } else {
                format!("PostingDate {post} precedes DocumentDate {doc}")
            },
        ));
    }
    if let (Some(from), Some(to)) =
        (get("BindingPeriodValidityStartDate"), get("BindingPeriodValidityEndDate"))
    {
        let ok = to >= from;
        out.push(RuleOutcome::new(
            "date_sanity",
            Severity::Error,
            ok,
            "BindingPeriodValidityEndDate",
            if ok {
                format!("{} valid {from} to {to}", api.name)
            } else {
                format!("BindingPeriodValidityEndDate {to} is before the start {from}")
            },
        ));
    }
}
