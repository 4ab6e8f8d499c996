//! Where each payload value comes from. A value the engine posts into SAP must be traceable: to a
//! value of the document (under the field's transform), to the catalog (a default of the
//! property), or to a declared derivation (item numbering, the credit-memo flag). The payload
//! builder records one [`FieldSource`] per property it writes; nothing is written without one.

use serde::{Deserialize, Serialize};

/// What a builder says about a value it writes (document field names are the models' canonical
/// ones; [`crate::documents::normalize::Normalized::origin`] maps them to the names as sent).
#[derive(Debug, Clone, Copy)]
pub enum Src<'s> {
    /// A header field of the document (`supplier_id`).
    Header(&'s str),
    /// A field of the document line the entity is written from (`unit_price`).
    Line(&'s str),
    /// A declared derivation and the header fields it reads.
    Rule(&'static str, &'s [&'s str]),
}

/// The source of one value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum Provenance {
    /// A value of the document: its path(s) and the transform applied (`code`: trimmed and
    /// upper-cased; `decimal`: rounded to the property's scale; `odata_date`; `item_number`:
    /// zero-padded; `text`: trimmed).
    Document { from: Vec<String>, transform: String },
    /// The catalog's default for the property (the overlay, e.g. PurchaseOrderType `NB`).
    CatalogDefault,
    /// A declared derivation ([`RULES`]) and the document fields it read.
    Derived { rule: String, from: Vec<String> },
}

impl Provenance {
    /// `document`, `catalog_default` or `derived` (the counters of the evaluation report).
    pub fn kind(&self) -> &'static str {
        match self {
            Provenance::Document { .. } => "document",
            Provenance::CatalogDefault => "catalog_default",
            Provenance::Derived { .. } => "derived",
        }
    }
}

/// One payload property and its source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldSource {
    /// JSON pointer of the property in the payload (`/to_PurchaseOrderItem/results/0/Plant`).
    pub pointer: String,
    #[serde(flatten)]
    pub provenance: Provenance,
}

/// Every derivation a builder may declare, with what it does: the list a reviewer reads to know
/// what the engine writes that no document says.
pub const RULES: &[(&str, &str)] = &[
    ("item_numbering", "deep-insert items are numbered step, 2*step, ... as the catalog says"),
    ("posting_date_is_document_date", "without a posting date, the document date is posted"),
    ("tax_calculated_without_tax_amount", "SAP calculates tax when the document states no tax amount"),
    ("credit_memo_from_document_type", "a supplier credit memo is posted with SupplierInvoiceIsCreditMemo X"),
    ("debit_credit_from_document_type", "invoice G/L lines are debits (S), credit memo lines credits (H)"),
    ("credit_memo_header_text", "a credit memo's header text names the invoice it credits"),
    ("business_partner_category", "category person -> 1, anything else -> 2"),
    ("supplier_roles", "a new supplier gets the roles FLVN00 and FLVN01"),
    ("search_term_from_name", "without a search term, the first 20 characters of the name"),
    (
        "vat_tax_type_from_country",
        "VAT numbers are tax type <country>0, the country from the address or the VAT prefix",
    ),
];
