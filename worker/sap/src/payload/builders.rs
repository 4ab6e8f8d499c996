//! Field mappings, one function per document type: which extraction field feeds which SAP
//! property. Formatting (dates, decimals, padding) is the writer's job.

use chrono::NaiveDate;

use super::EntityWriter;
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
    w.code("CompanyCode", x.company_code.as_deref())
        .code("PurchaseOrderType", x.order_type.as_deref())
        .code("Supplier", x.supplier_id.as_deref())
        .code("PurchasingOrganization", x.purchasing_org.as_deref())
        .code("PurchasingGroup", x.purchasing_group.as_deref())
        .code("DocumentCurrency", x.currency.as_deref())
        .date("PurchaseOrderDate", d(x.po_date))
        .code("PaymentTerms", x.payment_terms.as_deref())
        .code("IncotermsClassification", x.incoterms.as_deref())
        .items("to_PurchaseOrderItem", &x.items, |iw, it| {
            iw.code("Material", it.material.as_deref())
                .text("PurchaseOrderItemText", it.description.as_deref())
                .code("Plant", it.plant.as_deref())
                .code("StorageLocation", it.storage_location.as_deref())
                .dec("OrderQuantity", a(it.quantity))
                .code("PurchaseOrderQuantityUnit", it.unit.as_deref())
                .dec("NetPriceAmount", a(it.unit_price))
                .code("TaxCode", it.tax_code.as_deref());
        });
}

/// Shared by invoices and credit memos: the header facts and the item split. Lines with a PO
/// reference (line-level, or the header PO for all lines) go to the PO-reference items; lines
/// without one are G/L account lines. Credit memos send positive amounts and credit (H) lines.
struct InvoiceView<'x> {
    number: Option<&'x str>,
    date: Option<LooseDate>,
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

fn invoice_common(v: &InvoiceView, w: &mut EntityWriter) {
    let date = d(v.date);
    w.code("CompanyCode", v.company_code)
        .date("DocumentDate", date)
        .date("PostingDate", d(v.posting_date).or(date))
        .text("SupplierInvoiceIDByInvcgParty", v.number)
        .code("InvoicingParty", v.supplier_id)
        .code("DocumentCurrency", v.currency)
        .dec("InvoiceGrossAmount", abs(v.gross_amount))
        .code("PaymentTerms", v.payment_terms)
        .text("DocumentHeaderText", v.header_text)
        .flag("TaxIsCalculatedAutomatically", v.tax_amount.is_none());
    if v.credit_memo {
        w.text("SupplierInvoiceIsCreditMemo", Some("X"));
    }
    let header_po = v.po_number;
    let (po_lines, gl_lines): (Vec<&InvoiceItem>, Vec<&InvoiceItem>) =
        v.items.iter().partition(|i| i.po_number.as_deref().or(header_po).is_some());
    let currency = v.currency;
    let line_tax = v.tax_code;
    w.items("to_SuplrInvcItemPurOrdRef", &po_lines, |iw, it| {
        iw.code("PurchaseOrder", it.po_number.as_deref().or(header_po))
            .item_ref("PurchaseOrderItem", it.po_item)
            .code("Plant", it.plant.as_deref())
            .code("TaxCode", it.tax_code.as_deref().or(line_tax))
            .code("DocumentCurrency", currency)
            .dec("SupplierInvoiceItemAmount", abs(it.amount))
            .code("PurchaseOrderQuantityUnit", it.unit.as_deref())
            .dec("QuantityInPurchaseOrderUnit", abs(it.quantity));
    });
    let company = v.company_code;
    let dc = if v.credit_memo { "H" } else { "S" };
    w.items("to_SupplierInvoiceItemGLAcct", &gl_lines, |iw, it| {
        iw.code("CompanyCode", company)
            .code("GLAccount", it.gl_account.as_deref())
            .code("CostCenter", it.cost_center.as_deref())
            .code("DocumentCurrency", currency)
            .dec("SupplierInvoiceItemAmount", abs(it.amount))
            .code("TaxCode", it.tax_code.as_deref().or(line_tax))
            .text("DebitCreditCode", Some(dc));
    });
    if let (Some(tax), Some(code)) = (v.tax_amount, v.tax_code) {
        w.items("to_SupplierInvoiceTax", &[tax], |iw, t| {
            iw.code("TaxCode", Some(code))
                .code("DocumentCurrency", currency)
                .dec("TaxAmount", Some(t.0.abs()));
        });
    }
}

fn supplier_invoice(x: &SupplierInvoice, w: &mut EntityWriter) {
    invoice_common(
        &InvoiceView {
            number: x.invoice_number.as_deref(),
            date: x.invoice_date,
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
            number: x.credit_memo_number.as_deref(),
            date: x.credit_memo_date,
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
        iw.code("Material", it.material.as_deref())
            .text("MaterialByCustomer", it.customer_material.as_deref())
            .text("SalesQuotationItemText", it.description.as_deref())
            .dec("RequestedQuantity", a(it.quantity))
            .code("RequestedQuantityUnit", it.unit.as_deref())
            .code("ReturnReason", it.return_reason.as_deref());
    });
}

fn sales_order(x: &SalesOrder, w: &mut EntityWriter) {
    w.code("SalesOrderType", x.order_type.as_deref())
        .code("SalesOrganization", x.sales_org.as_deref())
        .code("DistributionChannel", x.distribution_channel.as_deref())
        .code("OrganizationDivision", x.division.as_deref())
        .code("SoldToParty", x.sold_to.as_deref())
        .text("PurchaseOrderByCustomer", x.customer_po_number.as_deref())
        .date("CustomerPurchaseOrderDate", d(x.customer_po_date))
        .code("TransactionCurrency", x.currency.as_deref())
        .date("RequestedDeliveryDate", d(x.requested_delivery_date))
        .code("CustomerPaymentTerms", x.payment_terms.as_deref());
    sales_items(w, "to_Item", &x.items);
}

fn sales_quotation(x: &SalesQuotation, w: &mut EntityWriter) {
    w.code("SalesOrganization", x.sales_org.as_deref())
        .code("DistributionChannel", x.distribution_channel.as_deref())
        .code("OrganizationDivision", x.division.as_deref())
        .code("SoldToParty", x.sold_to.as_deref())
        .text("PurchaseOrderByCustomer", x.rfq_number.as_deref())
        .code("TransactionCurrency", x.currency.as_deref())
        .date("SalesQuotationDate", d(x.quotation_date))
        .date("BindingPeriodValidityStartDate", d(x.valid_from.or(x.quotation_date)))
        .date("BindingPeriodValidityEndDate", d(x.valid_to));
    sales_items(w, "to_Item", &x.items);
}

fn customer_return(x: &CustomerReturn, w: &mut EntityWriter) {
    w.code("SalesOrganization", x.sales_org.as_deref())
        .code("DistributionChannel", x.distribution_channel.as_deref())
        .code("OrganizationDivision", x.division.as_deref())
        .code("SoldToParty", x.sold_to.as_deref())
        .text("PurchaseOrderByCustomer", x.rma_number.as_deref())
        .code("TransactionCurrency", x.currency.as_deref())
        .code("SDDocumentReason", x.return_reason.as_deref())
        .code("ReferenceSDDocument", x.reference_invoice.as_deref())
        .date("CustomerReturnDate", d(x.return_date));
    let reference = x.reference_invoice.as_deref();
    let header_reason = x.return_reason.as_deref();
    w.items("to_Item", &x.items, |iw, it| {
        iw.code("Material", it.material.as_deref())
            .dec("RequestedQuantity", a(it.quantity))
            .code("RequestedQuantityUnit", it.unit.as_deref())
            .code("ReturnReason", it.return_reason.as_deref().or(header_reason))
            .code("ReferenceSDDocument", reference)
            .item_ref("ReferenceSDDocumentItem", it.reference_item);
    });
}

fn goods_receipt(x: &GoodsReceipt, w: &mut EntityWriter) {
    w.date("DocumentDate", d(x.receipt_date))
        .date("PostingDate", d(x.posting_date.or(x.receipt_date)))
        .text("ReferenceDocument", x.delivery_note.as_deref());
    let (po, plant, supplier) = (x.po_number.as_deref(), x.plant.as_deref(), x.supplier_id.as_deref());
    w.items("to_MaterialDocumentItem", &x.items, |iw, it| {
        iw.code("Material", it.material.as_deref())
            .code("Plant", it.plant.as_deref().or(plant))
            .code("StorageLocation", it.storage_location.as_deref())
            .code("Batch", it.batch.as_deref())
            .code("Supplier", supplier)
            .code("PurchaseOrder", it.reference_document.as_deref().or(po))
            .item_ref("PurchaseOrderItem", it.reference_item)
            .dec("QuantityInEntryUnit", a(it.quantity))
            .code("EntryUnit", it.unit.as_deref());
    });
}

fn outbound_delivery(x: &OutboundDelivery, w: &mut EntityWriter) {
    w.code("ShippingPoint", x.shipping_point.as_deref())
        .date("DeliveryDate", d(x.delivery_date))
        .date("PlannedGoodsIssueDate", d(x.planned_goods_issue_date));
    let so = x.sales_order.as_deref();
    w.items("to_DeliveryDocumentItem", &x.items, |iw, it| {
        iw.code("ReferenceSDDocument", it.reference_document.as_deref().or(so))
            .item_ref("ReferenceSDDocumentItem", it.reference_item)
            .dec("ActualDeliveryQuantity", a(it.quantity))
            .code("DeliveryQuantityUnit", it.unit.as_deref())
            .code("StorageLocation", it.storage_location.as_deref());
    });
}

fn inbound_delivery(x: &InboundDelivery, w: &mut EntityWriter) {
    w.code("Supplier", x.supplier_id.as_deref())
        .date("DeliveryDate", d(x.delivery_date))
        .text("DeliveryDocumentBySupplier", x.asn_number.as_deref())
        .text("BillOfLading", x.bill_of_lading.as_deref());
    let po = x.po_number.as_deref();
    w.items("to_DeliveryDocumentItem", &x.items, |iw, it| {
        iw.code("ReferenceSDDocument", it.reference_document.as_deref().or(po))
            .item_ref("ReferenceSDDocumentItem", it.reference_item)
            .code("Material", it.material.as_deref())
            .code("Plant", it.plant.as_deref())
            .dec("ActualDeliveryQuantity", a(it.quantity))
            .code("DeliveryQuantityUnit", it.unit.as_deref())
            .code("Batch", it.batch.as_deref());
    });
}

fn supplier_master(x: &SupplierMaster, w: &mut EntityWriter) {
    let person = x.category.as_deref().is_some_and(|c| c.eq_ignore_ascii_case("person"));
    w.text("BusinessPartnerCategory", x.category.as_ref().map(|_| if person { "1" } else { "2" }))
        .code("BusinessPartnerGrouping", x.grouping.as_deref())
        .code("Language", x.language.as_deref());
    if person {
        w.text("FirstName", x.first_name.as_deref()).text("LastName", x.last_name.as_deref());
    } else {
        w.text("OrganizationBPName1", x.supplier_name.as_deref());
    }
    let search =
        x.search_term.clone().or_else(|| x.supplier_name.as_ref().map(|n| n.chars().take(20).collect()));
    w.code("SearchTerm1", search.as_deref());
    w.items("to_BusinessPartnerRole", &["FLVN00", "FLVN01"], |iw, r| {
        iw.text("BusinessPartnerRole", Some(r));
    });
    if x.country.is_some() || x.city.is_some() {
        w.items("to_BusinessPartnerAddress", &[x], |iw, x| {
            iw.code("Country", x.country.as_deref())
                .text("CityName", x.city.as_deref())
                .text("PostalCode", x.postal_code.as_deref())
                .text("StreetName", x.street.as_deref())
                .text("HouseNumber", x.house_number.as_deref())
                .code("Language", x.language.as_deref());
        });
    }
    if let Some(vat) = &x.vat_id {
        // VAT registration numbers are tax type <country>0 in S/4HANA (DE0, FR0, ...).
        let country: String =
            x.country.clone().unwrap_or_else(|| vat.chars().take(2).collect()).to_uppercase();
        let tax_type = format!("{country}0");
        w.items("to_BusinessPartnerTax", &[vat.as_str()], |iw, v| {
            iw.text("BPTaxType", Some(&tax_type)).code("BPTaxNumber", Some(v));
        });
    }
    if x.company_code.is_some() {
        w.one("to_Supplier", |sw| {
            sw.items("to_SupplierCompany", &[x], |iw, x| {
                iw.code("CompanyCode", x.company_code.as_deref())
                    .code("PaymentTerms", x.payment_terms.as_deref())
                    .code("ReconciliationAccount", x.reconciliation_account.as_deref());
            });
        });
    }
}
