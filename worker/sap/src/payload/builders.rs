//! Field mappings, one function per document type: which extraction field feeds which SAP
//! property. Formatting (dates, decimals, padding) is the writer's job.

use chrono::NaiveDate;

use super::EntityWriter;
use super::provenance::Src::{self, Header as H, Line as L, Rule};
use crate::documents::*;

fn d(v: Option<LooseDate>) -> Option<NaiveDate> {
    v.map(|x| x.0)
}
fn a(v: Option<Amount>) -> Option<f64> {
    v.map(|x| x.0)
}
fn abs(v: Option<Amount>) -> Option<f64> {
    v.map(|x| x.0.abs())
}

pub(super) fn fill(doc: &AdcDocument, w: &mut EntityWriter) {
    match doc {
        AdcDocument::PurchaseOrder(x) => purchase_order(x, w),
        AdcDocument::SupplierInvoice(x) => supplier_invoice(x, w),
        AdcDocument::SupplierCreditMemo(x) => credit_memo(x, w),
        AdcDocument::SalesOrder(x) => sales_order(x, w),
        AdcDocument::GoodsReceipt(x) => goods_receipt(x, w),
        AdcDocument::OutboundDelivery(x) => outbound_delivery(x, w),
        AdcDocument::InboundDelivery(x) => inbound_delivery(x, w),
        AdcDocument::SupplierMaster(x) => supplier_master(x, w),
        AdcDocument::SalesQuotation(x) => sales_quotation(x, w),
        AdcDocument::CustomerReturn(x) => customer_return(x, w),
    }
}

fn purchase_order(x: &PurchaseOrder, w: &mut EntityWriter) {
    w.code("CompanyCode", x.company_code.as_deref(), H("company_code"))
        .code("PurchaseOrderType", x.order_type.as_deref(), H("order_type"))
        .code("Supplier", x.supplier_id.as_deref(), H("supplier_id"))
        .code("PurchasingOrganization", x.purchasing_org.as_deref(), H("purchasing_org"))
        .code("PurchasingGroup", x.purchasing_group.as_deref(), H("purchasing_group"))
        .code("DocumentCurrency", x.currency.as_deref(), H("currency"))
        .date("PurchaseOrderDate", d(x.po_date), H("po_date"))
        .code("PaymentTerms", x.payment_terms.as_deref(), H("payment_terms"))
        .code("IncotermsClassification", x.incoterms.as_deref(), H("incoterms"))
        .items("to_PurchaseOrderItem", &x.items, |iw, it| {
            iw.code("Material", it.material.as_deref(), L("material"))
                .text("PurchaseOrderItemText", it.description.as_deref(), L("description"))
                .code("Plant", it.plant.as_deref(), L("plant"))
                .code("StorageLocation", it.storage_location.as_deref(), L("storage_location"))
                .dec("OrderQuantity", a(it.quantity), L("quantity"))
                .code("PurchaseOrderQuantityUnit", it.unit.as_deref(), L("unit"))
                .dec("NetPriceAmount", a(it.unit_price), L("unit_price"))
                .code("TaxCode", it.tax_code.as_deref(), L("tax_code"));
        });
}

/// The first present value of `options`, with its source.
fn first<'v, T: Copy>(options: [(Option<T>, Src<'v>); 2]) -> (Option<T>, Src<'v>) {
    options.into_iter().find(|(v, _)| v.is_some()).unwrap_or((None, options[0].1))
}

/// Shared by invoices and credit memos: the header facts and the item split. Lines with a PO
/// reference (line-level, or the header PO for all lines) go to the PO-reference items; lines
/// without one are G/L account lines. Credit memos send positive amounts and credit (H) lines.
struct InvoiceView<'x> {
    number: (Option<&'x str>, &'static str),
    date: (Option<LooseDate>, &'static str),
    posting_date: Option<LooseDate>,
    company_code: Option<&'x str>,
    supplier_id: Option<&'x str>,
    po_number: Option<&'x str>,
    currency: Option<&'x str>,
    tax_amount: Option<Amount>,
    tax_code: Option<&'x str>,
    gross_amount: Option<Amount>,
    payment_terms: Option<&'x str>,
    header_text: Option<&'x str>,
    items: &'x [InvoiceItem],
    credit_memo: bool,
}

/// An invoice line with its index in the document.
type Line<'x> = (Option<usize>, &'x InvoiceItem);

fn invoice_common(v: &InvoiceView, w: &mut EntityWriter) {
    let (date, date_field) = (d(v.date.0), v.date.1);
    let posting_from = [date_field];
    let (posting, posting_src) = first([
        (d(v.posting_date), H("posting_date")),
        (date, Rule("posting_date_is_document_date", &posting_from)),
    ]);
    w.code("CompanyCode", v.company_code, H("company_code"))
        .date("DocumentDate", date, H(date_field))
        .date("PostingDate", posting, posting_src)
        .text("SupplierInvoiceIDByInvcgParty", v.number.0, H(v.number.1))
        .code("InvoicingParty", v.supplier_id, H("supplier_id"))
        .code("DocumentCurrency", v.currency, H("currency"))
        .dec("InvoiceGrossAmount", abs(v.gross_amount), H("gross_amount"))
        .code("PaymentTerms", v.payment_terms, H("payment_terms"))
        .text(
            "DocumentHeaderText",
            v.header_text,
            Rule("credit_memo_header_text", &["original_invoice_number"]),
        )
        .flag(
            "TaxIsCalculatedAutomatically",
            v.tax_amount.is_none(),
            Rule("tax_calculated_without_tax_amount", &["tax_amount"]),
        );
    if v.credit_memo {
        w.text("SupplierInvoiceIsCreditMemo", Some("X"), Rule("credit_memo_from_document_type", &[]));
    }
    let header_po = v.po_number;
    let (po_lines, gl_lines): (Vec<Line>, Vec<Line>) = v
        .items
        .iter()
        .enumerate()
        .map(|(i, it)| (Some(i), it))
        .partition(|(_, i)| i.po_number.as_deref().or(header_po).is_some());
    let currency = v.currency;
    let line_tax = v.tax_code;
    w.items_from("to_SuplrInvcItemPurOrdRef", &po_lines, |iw, it| {
        let (po, po_src) = first([(it.po_number.as_deref(), L("po_number")), (header_po, H("po_number"))]);
        let (tax, tax_src) = first([(it.tax_code.as_deref(), L("tax_code")), (line_tax, H("tax_code"))]);
        iw.code("PurchaseOrder", po, po_src)
            .item_ref("PurchaseOrderItem", it.po_item, L("po_item"))
            .code("Plant", it.plant.as_deref(), L("plant"))
            .code("TaxCode", tax, tax_src)
            .code("DocumentCurrency", currency, H("currency"))
            .dec("SupplierInvoiceItemAmount", abs(it.amount), L("amount"))
            .code("PurchaseOrderQuantityUnit", it.unit.as_deref(), L("unit"))
            .dec("QuantityInPurchaseOrderUnit", abs(it.quantity), L("quantity"));
    });
    let company = v.company_code;
    let dc = if v.credit_memo { "H" } else { "S" };
    w.items_from("to_SupplierInvoiceItemGLAcct", &gl_lines, |iw, it| {
        let (tax, tax_src) = first([(it.tax_code.as_deref(), L("tax_code")), (line_tax, H("tax_code"))]);
        iw.code("CompanyCode", company, H("company_code"))
            .code("GLAccount", it.gl_account.as_deref(), L("gl_account"))
            .code("CostCenter", it.cost_center.as_deref(), L("cost_center"))
            .code("DocumentCurrency", currency, H("currency"))
            .dec("SupplierInvoiceItemAmount", abs(it.amount), L("amount"))
            .code("TaxCode", tax, tax_src)
            .text("DebitCreditCode", Some(dc), Rule("debit_credit_from_document_type", &[]));
    });
    if let (Some(tax), Some(code)) = (v.tax_amount, v.tax_code) {
        w.items_from("to_SupplierInvoiceTax", &[(None, tax)], |iw, t| {
            iw.code("TaxCode", Some(code), H("tax_code"))
                .code("DocumentCurrency", currency, H("currency"))
                .dec("TaxAmount", Some(t.0.abs()), H("tax_amount"));
        });
    }
}

fn supplier_invoice(x: &SupplierInvoice, w: &mut EntityWriter) {
    invoice_common(
        &InvoiceView {
            number: (x.invoice_number.as_deref(), "invoice_number"),
            date: (x.invoice_date, "invoice_date"),
            posting_date: x.posting_date,
            company_code: x.company_code.as_deref(),
            supplier_id: x.supplier_id.as_deref(),
            po_number: x.po_number.as_deref(),
            currency: x.currency.as_deref(),
            tax_amount: x.tax_amount,
            tax_code: x.tax_code.as_deref(),
            gross_amount: x.gross_amount,
            payment_terms: x.payment_terms.as_deref(),
            header_text: None,
            items: &x.items,
            credit_memo: false,
        },
        w,
    );
}

fn credit_memo(x: &SupplierCreditMemo, w: &mut EntityWriter) {
    let text = x.original_invoice_number.as_ref().map(|n| format!("Credit for {n}"));
    invoice_common(
        &InvoiceView {
            number: (x.credit_memo_number.as_deref(), "credit_memo_number"),
            date: (x.credit_memo_date, "credit_memo_date"),
            posting_date: x.posting_date,
            company_code: x.company_code.as_deref(),
            supplier_id: x.supplier_id.as_deref(),
            po_number: x.po_number.as_deref(),
            currency: x.currency.as_deref(),
            tax_amount: x.tax_amount,
            tax_code: x.tax_code.as_deref(),
            gross_amount: x.gross_amount,
            payment_terms: None,
            header_text: text.as_deref(),
            items: &x.items,
            credit_memo: true,
        },
        w,
    );
}

fn sales_items(w: &mut EntityWriter, nav: &str, items: &[OrderItem]) {
    w.items(nav, items, |iw, it| {
        iw.code("Material", it.material.as_deref(), L("material"))
            .text("MaterialByCustomer", it.customer_material.as_deref(), L("customer_material"))
            .text("SalesQuotationItemText", it.description.as_deref(), L("description"))
            .dec("RequestedQuantity", a(it.quantity), L("quantity"))
            .code("RequestedQuantityUnit", it.unit.as_deref(), L("unit"))
            .code("ReturnReason", it.return_reason.as_deref(), L("return_reason"));
    });
}

fn sales_order(x: &SalesOrder, w: &mut EntityWriter) {
    w.code("SalesOrderType", x.order_type.as_deref(), H("order_type"))
        .code("SalesOrganization", x.sales_org.as_deref(), H("sales_org"))
        .code("DistributionChannel", x.distribution_channel.as_deref(), H("distribution_channel"))
        .code("OrganizationDivision", x.division.as_deref(), H("division"))
        .code("SoldToParty", x.sold_to.as_deref(), H("sold_to"))
        .text("PurchaseOrderByCustomer", x.customer_po_number.as_deref(), H("customer_po_number"))
        .date("CustomerPurchaseOrderDate", d(x.customer_po_date), H("customer_po_date"))
        .code("TransactionCurrency", x.currency.as_deref(), H("currency"))
        .date("RequestedDeliveryDate", d(x.requested_delivery_date), H("requested_delivery_date"))
        .code("CustomerPaymentTerms", x.payment_terms.as_deref(), H("payment_terms"));
    sales_items(w, "to_Item", &x.items);
}

fn sales_quotation(x: &SalesQuotation, w: &mut EntityWriter) {
    let (start, start_src) =
        first([(d(x.valid_from), H("valid_from")), (d(x.quotation_date), H("quotation_date"))]);
    w.code("SalesOrganization", x.sales_org.as_deref(), H("sales_org"))
        .code("DistributionChannel", x.distribution_channel.as_deref(), H("distribution_channel"))
        .code("OrganizationDivision", x.division.as_deref(), H("division"))
        .code("SoldToParty", x.sold_to.as_deref(), H("sold_to"))
        .text("PurchaseOrderByCustomer", x.rfq_number.as_deref(), H("rfq_number"))
        .code("TransactionCurrency", x.currency.as_deref(), H("currency"))
        .date("SalesQuotationDate", d(x.quotation_date), H("quotation_date"))
        .date("BindingPeriodValidityStartDate", start, start_src)
        .date("BindingPeriodValidityEndDate", d(x.valid_to), H("valid_to"));
    sales_items(w, "to_Item", &x.items);
}

fn customer_return(x: &CustomerReturn, w: &mut EntityWriter) {
    w.code("SalesOrganization", x.sales_org.as_deref(), H("sales_org"))
        .code("DistributionChannel", x.distribution_channel.as_deref(), H("distribution_channel"))
        .code("OrganizationDivision", x.division.as_deref(), H("division"))
        .code("SoldToParty", x.sold_to.as_deref(), H("sold_to"))
        .text("PurchaseOrderByCustomer", x.rma_number.as_deref(), H("rma_number"))
        .code("TransactionCurrency", x.currency.as_deref(), H("currency"))
        .code("SDDocumentReason", x.return_reason.as_deref(), H("return_reason"))
        .code("ReferenceSDDocument", x.reference_invoice.as_deref(), H("reference_invoice"))
        .date("CustomerReturnDate", d(x.return_date), H("return_date"));
    let reference = x.reference_invoice.as_deref();
    let header_reason = x.return_reason.as_deref();
    w.items("to_Item", &x.items, |iw, it| {
        let (reason, reason_src) =
            first([(it.return_reason.as_deref(), L("return_reason")), (header_reason, H("return_reason"))]);
        iw.code("Material", it.material.as_deref(), L("material"))
            .dec("RequestedQuantity", a(it.quantity), L("quantity"))
            .code("RequestedQuantityUnit", it.unit.as_deref(), L("unit"))
            .code("ReturnReason", reason, reason_src)
            .code("ReferenceSDDocument", reference, H("reference_invoice"))
            .item_ref("ReferenceSDDocumentItem", it.reference_item, L("reference_item"));
    });
}

fn goods_receipt(x: &GoodsReceipt, w: &mut EntityWriter) {
    let (posting, posting_src) = first([
        (d(x.posting_date), H("posting_date")),
        (d(x.receipt_date), Rule("posting_date_is_document_date", &["receipt_date"])),
    ]);
    w.date("DocumentDate", d(x.receipt_date), H("receipt_date"))
        .date("PostingDate", posting, posting_src)
        .text("ReferenceDocument", x.delivery_note.as_deref(), H("delivery_note"));
    let (po, plant, supplier) = (x.po_number.as_deref(), x.plant.as_deref(), x.supplier_id.as_deref());
    w.items("to_MaterialDocumentItem", &x.items, |iw, it| {
        let (plant, plant_src) = first([(it.plant.as_deref(), L("plant")), (plant, H("plant"))]);
        let (po, po_src) =
            first([(it.reference_document.as_deref(), L("reference_document")), (po, H("po_number"))]);
        iw.code("Material", it.material.as_deref(), L("material"))
            .code("Plant", plant, plant_src)
            .code("StorageLocation", it.storage_location.as_deref(), L("storage_location"))
            .code("Batch", it.batch.as_deref(), L("batch"))
            .code("Supplier", supplier, H("supplier_id"))
            .code("PurchaseOrder", po, po_src)
            .item_ref("PurchaseOrderItem", it.reference_item, L("reference_item"))
            .dec("QuantityInEntryUnit", a(it.quantity), L("quantity"))
            .code("EntryUnit", it.unit.as_deref(), L("unit"));
    });
}

fn outbound_delivery(x: &OutboundDelivery, w: &mut EntityWriter) {
    w.code("ShippingPoint", x.shipping_point.as_deref(), H("shipping_point"))
        .date("DeliveryDate", d(x.delivery_date), H("delivery_date"))
        .date("PlannedGoodsIssueDate", d(x.planned_goods_issue_date), H("planned_goods_issue_date"));
    let so = x.sales_order.as_deref();
    w.items("to_DeliveryDocumentItem", &x.items, |iw, it| {
        let (so, so_src) =
            first([(it.reference_document.as_deref(), L("reference_document")), (so, H("sales_order"))]);
        iw.code("ReferenceSDDocument", so, so_src)
            .item_ref("ReferenceSDDocumentItem", it.reference_item, L("reference_item"))
            .dec("ActualDeliveryQuantity", a(it.quantity), L("quantity"))
            .code("DeliveryQuantityUnit", it.unit.as_deref(), L("unit"))
            .code("StorageLocation", it.storage_location.as_deref(), L("storage_location"));
    });
}

fn inbound_delivery(x: &InboundDelivery, w: &mut EntityWriter) {
    w.code("Supplier", x.supplier_id.as_deref(), H("supplier_id"))
        .date("DeliveryDate", d(x.delivery_date), H("delivery_date"))
        .text("DeliveryDocumentBySupplier", x.asn_number.as_deref(), H("asn_number"))
        .text("BillOfLading", x.bill_of_lading.as_deref(), H("bill_of_lading"));
    let po = x.po_number.as_deref();
    w.items("to_DeliveryDocumentItem", &x.items, |iw, it| {
        let (po, po_src) =
            first([(it.reference_document.as_deref(), L("reference_document")), (po, H("po_number"))]);
        iw.code("ReferenceSDDocument", po, po_src)
            .item_ref("ReferenceSDDocumentItem", it.reference_item, L("reference_item"))
            .code("Material", it.material.as_deref(), L("material"))
            .code("Plant", it.plant.as_deref(), L("plant"))
            .dec("ActualDeliveryQuantity", a(it.quantity), L("quantity"))
            .code("DeliveryQuantityUnit", it.unit.as_deref(), L("unit"))
            .code("Batch", it.batch.as_deref(), L("batch"));
    });
}

fn supplier_master(x: &SupplierMaster, w: &mut EntityWriter) {
    let person = x.category.as_deref().is_some_and(|c| c.eq_ignore_ascii_case("person"));
    w.text(
        "BusinessPartnerCategory",
        x.category.as_ref().map(|_| if person { "1" } else { "2" }),
        Rule("business_partner_category", &["category"]),
    )
    .code("BusinessPartnerGrouping", x.grouping.as_deref(), H("grouping"))
    .code("Language", x.language.as_deref(), H("language"));
    if person {
        w.text("FirstName", x.first_name.as_deref(), H("first_name")).text(
            "LastName",
            x.last_name.as_deref(),
            H("last_name"),
        );
    } else {
        w.text("OrganizationBPName1", x.supplier_name.as_deref(), H("supplier_name"));
    }
    let (search, search_src) = match &x.search_term {
        Some(t) => (Some(t.clone()), H("search_term")),
        None => (
            x.supplier_name.as_ref().map(|n| n.chars().take(20).collect()),
            Rule("search_term_from_name", &["supplier_name"]),
        ),
    };
    w.code("SearchTerm1", search.as_deref(), search_src);
    w.items_from("to_BusinessPartnerRole", &[(None, "FLVN00"), (None, "FLVN01")], |iw, r| {
        iw.text("BusinessPartnerRole", Some(r), Rule("supplier_roles", &[]));
    });
    if x.country.is_some() || x.city.is_some() {
        w.items_from("to_BusinessPartnerAddress", &[(None, x)], |iw, x| {
            iw.code("Country", x.country.as_deref(), H("country"))
                .text("CityName", x.city.as_deref(), H("city"))
                .text("PostalCode", x.postal_code.as_deref(), H("postal_code"))
                .text("StreetName", x.street.as_deref(), H("street"))
                .text("HouseNumber", x.house_number.as_deref(), H("house_number"))
                .code("Language", x.language.as_deref(), H("language"));
        });
    }
    if let Some(vat) = &x.vat_id {
        // VAT registration numbers are tax type <country>0 in S/4HANA (DE0, FR0, ...).
        let country: String =
            x.country.clone().unwrap_or_else(|| vat.chars().take(2).collect()).to_uppercase();
        let tax_type = format!("{country}0");
        w.items_from("to_BusinessPartnerTax", &[(None, vat.as_str())], |iw, v| {
            iw.text("BPTaxType", Some(&tax_type), Rule("vat_tax_type_from_country", &["country", "vat_id"]))
                .code("BPTaxNumber", Some(v), H("vat_id"));
        });
    }
    if x.company_code.is_some() {
        w.one("to_Supplier", |sw| {
            sw.items_from("to_SupplierCompany", &[(None, x)], |iw, x| {
                iw.code("CompanyCode", x.company_code.as_deref(), H("company_code"))
                    .code("PaymentTerms", x.payment_terms.as_deref(), H("payment_terms"))
                    .code(
                        "ReconciliationAccount",
                        x.reconciliation_account.as_deref(),
                        H("reconciliation_account"),
                    );
            });
        });
    }
}
