//! One typed model per document type, as an extraction system emits it: snake_case keys, every
//! field optional (extraction misses things), header plus line items. Items are shared by document
//! families (orders, invoices, deliveries) because their lines carry the same facts.

use serde::{Deserialize, Serialize};

use super::values::{Amount, LooseDate};

/// A line of an order-like document (purchase order, sales order, quotation, customer return).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OrderItem {
    pub line_number: Option<u32>,
    pub material: Option<String>,
    /// The customer's own material number (sales documents).
    pub customer_material: Option<String>,
    pub description: Option<String>,
    pub quantity: Option<Amount>,
    pub unit: Option<String>,
    pub unit_price: Option<Amount>,
    pub plant: Option<String>,
    pub storage_location: Option<String>,
    pub tax_code: Option<String>,
    pub delivery_date: Option<LooseDate>,
    /// Customer returns: why this line comes back.
    pub return_reason: Option<String>,
    /// Customer returns: the billed item this line refers to.
    pub reference_item: Option<u32>,
}

/// A line of a supplier invoice or credit memo.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InvoiceItem {
    pub line_number: Option<u32>,
    /// The purchase order this line settles (invoice with PO reference).
    pub po_number: Option<String>,
    pub po_item: Option<u32>,
    pub material: Option<String>,
    pub description: Option<String>,
    pub quantity: Option<Amount>,
    pub unit: Option<String>,
    pub unit_price: Option<Amount>,
    /// Net line amount.
    pub amount: Option<Amount>,
    /// Invoices without a PO post to a G/L account and cost center.
    pub gl_account: Option<String>,
    pub cost_center: Option<String>,
    pub tax_code: Option<String>,
    pub plant: Option<String>,
}

/// A line of a goods receipt or delivery.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeliveryItem {
    pub line_number: Option<u32>,
    /// The purchase order (receipts, inbound) or sales order (outbound) this line fulfils.
    pub reference_document: Option<String>,
    pub reference_item: Option<u32>,
    pub material: Option<String>,
    pub description: Option<String>,
    pub quantity: Option<Amount>,
    pub unit: Option<String>,
    pub plant: Option<String>,
    pub storage_location: Option<String>,
    pub batch: Option<String>,
}

/// A purchase order sent to (or received from) a supplier.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PurchaseOrder {
    pub document_title: Option<String>,
    pub po_number: Option<String>,
    pub po_date: Option<LooseDate>,
    pub company_code: Option<String>,
    pub supplier_id: Option<String>,
    pub supplier_name: Option<String>,
    pub purchasing_org: Option<String>,
    pub purchasing_group: Option<String>,
    pub order_type: Option<String>,
    pub currency: Option<String>,
    pub payment_terms: Option<String>,
    pub incoterms: Option<String>,
    pub items: Vec<OrderItem>,
}

/// A supplier's invoice, with or without a purchase order reference.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SupplierInvoice {
    pub document_title: Option<String>,
    pub invoice_number: Option<String>,
    pub invoice_date: Option<LooseDate>,
    pub posting_date: Option<LooseDate>,
    pub company_code: Option<String>,
    pub supplier_id: Option<String>,
    pub supplier_name: Option<String>,
    pub supplier_vat_id: Option<String>,
    /// Header-level PO reference ("Your order 4500001234").
    pub po_number: Option<String>,
    pub currency: Option<String>,
    pub net_amount: Option<Amount>,
    pub tax_amount: Option<Amount>,
    pub tax_code: Option<String>,
    pub gross_amount: Option<Amount>,
    pub payment_terms: Option<String>,
    pub items: Vec<InvoiceItem>,
}

/// A supplier's credit memo (credit note): money back, referring to an earlier invoice.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SupplierCreditMemo {
    pub document_title: Option<String>,
    pub credit_memo_number: Option<String>,
    pub credit_memo_date: Option<LooseDate>,
    pub posting_date: Option<LooseDate>,
    pub company_code: Option<String>,
    pub supplier_id: Option<String>,
    pub supplier_name: Option<String>,
    pub supplier_vat_id: Option<String>,
    pub po_number: Option<String>,
    /// The invoice being credited.
    pub original_invoice_number: Option<String>,
    pub credit_reason: Option<String>,
    pub currency: Option<String>,
    pub net_amount: Option<Amount>,
    pub tax_amount: Option<Amount>,
    pub tax_code: Option<String>,
    pub gross_amount: Option<Amount>,
    pub items: Vec<InvoiceItem>,
}

/// A customer's order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SalesOrder {
    pub document_title: Option<String>,
    pub customer_po_number: Option<String>,
    pub customer_po_date: Option<LooseDate>,
    pub sold_to: Option<String>,
    pub ship_to: Option<String>,
    pub customer_name: Option<String>,
    pub sales_org: Option<String>,
    pub distribution_channel: Option<String>,
    pub division: Option<String>,
    pub order_type: Option<String>,
    pub currency: Option<String>,
    pub requested_delivery_date: Option<LooseDate>,
    pub payment_terms: Option<String>,
    pub items: Vec<OrderItem>,
}

/// A quotation requested by a customer (RFQ answered with validity dates).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SalesQuotation {
    pub document_title: Option<String>,
    pub rfq_number: Option<String>,
    pub quotation_date: Option<LooseDate>,
    pub valid_from: Option<LooseDate>,
    pub valid_to: Option<LooseDate>,
    pub sold_to: Option<String>,
    pub customer_name: Option<String>,
    pub sales_org: Option<String>,
    pub distribution_channel: Option<String>,
    pub division: Option<String>,
    pub currency: Option<String>,
    pub items: Vec<OrderItem>,
}

/// A customer sending goods back (RMA).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CustomerReturn {
    pub document_title: Option<String>,
    pub rma_number: Option<String>,
    pub return_date: Option<LooseDate>,
    pub sold_to: Option<String>,
    pub customer_name: Option<String>,
    pub sales_org: Option<String>,
    pub distribution_channel: Option<String>,
    pub division: Option<String>,
    pub reference_invoice: Option<String>,
    pub return_reason: Option<String>,
    pub currency: Option<String>,
    pub items: Vec<OrderItem>,
}

/// A goods receipt against a purchase order (delivery note scanned at the dock).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GoodsReceipt {
    pub document_title: Option<String>,
    pub delivery_note: Option<String>,
    pub po_number: Option<String>,
    pub receipt_date: Option<LooseDate>,
    pub posting_date: Option<LooseDate>,
    pub supplier_id: Option<String>,
    pub plant: Option<String>,
    pub items: Vec<DeliveryItem>,
}

/// A delivery to a customer, created from a sales order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OutboundDelivery {
    pub document_title: Option<String>,
    pub sales_order: Option<String>,
    pub shipping_point: Option<String>,
    pub delivery_date: Option<LooseDate>,
    pub planned_goods_issue_date: Option<LooseDate>,
    pub ship_to: Option<String>,
    pub items: Vec<DeliveryItem>,
}

/// A supplier's advance shipping notification (ASN) for a purchase order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InboundDelivery {
    pub document_title: Option<String>,
    pub asn_number: Option<String>,
    pub supplier_id: Option<String>,
    pub po_number: Option<String>,
    pub delivery_date: Option<LooseDate>,
    pub bill_of_lading: Option<String>,
    pub items: Vec<DeliveryItem>,
}

/// A new supplier's master data (onboarding form).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SupplierMaster {
    pub document_title: Option<String>,
    pub supplier_name: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// "organization" or "person".
    pub category: Option<String>,
    pub grouping: Option<String>,
    pub search_term: Option<String>,
    pub language: Option<String>,
    pub street: Option<String>,
    pub house_number: Option<String>,
    pub city: Option<String>,
    pub postal_code: Option<String>,
    pub country: Option<String>,
    pub vat_id: Option<String>,
    pub iban: Option<String>,
    pub company_code: Option<String>,
    pub payment_terms: Option<String>,
    pub reconciliation_account: Option<String>,
}
