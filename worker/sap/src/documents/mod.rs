//! Extracted business documents ("ADC JSON") and their types.
//!
//! [`DocType`] names are stable strings used in logs, datasets, the catalog and prompts.
//! [`AdcDocument`] is the typed form of one document; parse it from the extraction JSON with
//! [`AdcDocument::from_json`], which names the offending field on error.

pub mod keys;
mod models;
pub mod normalize;
pub mod signals;
pub mod values;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use models::*;
pub use values::{Amount, LooseDate};

/// The kinds of document the engine routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DocType {
    PurchaseOrder,
    SupplierInvoice,
    SupplierCreditMemo,
    SalesOrder,
    GoodsReceipt,
    OutboundDelivery,
    InboundDelivery,
    SupplierMaster,
    SalesQuotation,
    CustomerReturn,
}

impl DocType {
    /// Every document type, in a stable order.
    pub const ALL: [DocType; 10] = [
        DocType::PurchaseOrder,
        DocType::SupplierInvoice,
        DocType::SupplierCreditMemo,
        DocType::SalesOrder,
        DocType::GoodsReceipt,
        DocType::OutboundDelivery,
        DocType::InboundDelivery,
        DocType::SupplierMaster,
        DocType::SalesQuotation,
        DocType::CustomerReturn,
    ];

    /// The stable string name ("supplier_invoice").
    pub fn as_str(self) -> &'static str {
        match self {
            DocType::PurchaseOrder => "purchase_order",
            DocType::SupplierInvoice => "supplier_invoice",
            DocType::SupplierCreditMemo => "supplier_credit_memo",
            DocType::SalesOrder => "sales_order",
            DocType::GoodsReceipt => "goods_receipt",
            DocType::OutboundDelivery => "outbound_delivery",
            DocType::InboundDelivery => "inbound_delivery",
            DocType::SupplierMaster => "supplier_master",
            DocType::SalesQuotation => "sales_quotation",
            DocType::CustomerReturn => "customer_return",
        }
    }

    /// Position in [`DocType::ALL`] (dense index for counters).
    pub fn index(self) -> usize {
        DocType::ALL.iter().position(|d| *d == self).expect("in ALL")
    }
}

impl fmt::Display for DocType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DocType {
    type Err = String;
    /// Accepts the type as users spell it: any case, words joined by `_`, `-`, `.`, spaces or
    /// camel case (`SUPPLIER_INVOICE`, `supplier-invoice`, `Supplier Invoice`, `SupplierInvoice`).
    fn from_str(s: &str) -> Result<Self, String> {
        let key = crate::documents::keys::snake_case(s.trim());
        DocType::ALL.iter().copied().find(|d| d.as_str() == key).ok_or_else(|| {
            let names: Vec<&str> = DocType::ALL.iter().map(|d| d.as_str()).collect();
            format!("unknown document type {s:?}; expected one of {}", names.join(", "))
        })
    }
}

/// One extracted document, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum AdcDocument {
    PurchaseOrder(PurchaseOrder),
    SupplierInvoice(SupplierInvoice),
    SupplierCreditMemo(SupplierCreditMemo),
    SalesOrder(SalesOrder),
    GoodsReceipt(GoodsReceipt),
    OutboundDelivery(OutboundDelivery),
    InboundDelivery(InboundDelivery),
    SupplierMaster(SupplierMaster),
    SalesQuotation(SalesQuotation),
    CustomerReturn(CustomerReturn),
}

/// Why an extracted document could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("extracted_data.{path}: {message}")]
pub struct DocumentError {
    /// JSON path of the offending field (`items[2].quantity`).
    pub path: String,
    pub message: String,
}

impl AdcDocument {
    /// Parses extraction JSON as a document of type `doc_type`. Unknown keys are ignored (an
    /// extraction system may emit more than we model); wrong value types name the field.
    pub fn from_json(doc_type: DocType, v: &Value) -> Result<AdcDocument, DocumentError> {
        fn de<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, DocumentError> {
            serde_path_to_error::deserialize(v).map_err(|e| {
                let path = e.path().to_string();
                DocumentError {
                    path: if path == "." { "(root)".into() } else { path },
                    message: e.into_inner().to_string(),
                }
            })
        }
        if !v.is_object() {
            return Err(DocumentError { path: "(root)".into(), message: "expected a JSON object".into() });
        }
        Ok(match doc_type {
            DocType::PurchaseOrder => AdcDocument::PurchaseOrder(de(v)?),
            DocType::SupplierInvoice => AdcDocument::SupplierInvoice(de(v)?),
            DocType::SupplierCreditMemo => AdcDocument::SupplierCreditMemo(de(v)?),
            DocType::SalesOrder => AdcDocument::SalesOrder(de(v)?),
            DocType::GoodsReceipt => AdcDocument::GoodsReceipt(de(v)?),
            DocType::OutboundDelivery => AdcDocument::OutboundDelivery(de(v)?),
            DocType::InboundDelivery => AdcDocument::InboundDelivery(de(v)?),
            DocType::SupplierMaster => AdcDocument::SupplierMaster(de(v)?),
            DocType::SalesQuotation => AdcDocument::SalesQuotation(de(v)?),
            DocType::CustomerReturn => AdcDocument::CustomerReturn(de(v)?),
        })
    }

    /// The document's type.
    pub fn doc_type(&self) -> DocType {
        match self {
            AdcDocument::PurchaseOrder(_) => DocType::PurchaseOrder,
            AdcDocument::SupplierInvoice(_) => DocType::SupplierInvoice,
            AdcDocument::SupplierCreditMemo(_) => DocType::SupplierCreditMemo,
            AdcDocument::SalesOrder(_) => DocType::SalesOrder,
            AdcDocument::GoodsReceipt(_) => DocType::GoodsReceipt,
            AdcDocument::OutboundDelivery(_) => DocType::OutboundDelivery,
            AdcDocument::InboundDelivery(_) => DocType::InboundDelivery,
            AdcDocument::SupplierMaster(_) => DocType::SupplierMaster,
            AdcDocument::SalesQuotation(_) => DocType::SalesQuotation,
            AdcDocument::CustomerReturn(_) => DocType::CustomerReturn,
        }
    }

    /// The extraction JSON: snake_case, absent fields omitted (not `null`).
    pub fn to_value(&self) -> Value {
        let mut v = match self {
            AdcDocument::PurchaseOrder(d) => serde_json::to_value(d),
            AdcDocument::SupplierInvoice(d) => serde_json::to_value(d),
            AdcDocument::SupplierCreditMemo(d) => serde_json::to_value(d),
            AdcDocument::SalesOrder(d) => serde_json::to_value(d),
            AdcDocument::GoodsReceipt(d) => serde_json::to_value(d),
            AdcDocument::OutboundDelivery(d) => serde_json::to_value(d),
            AdcDocument::InboundDelivery(d) => serde_json::to_value(d),
            AdcDocument::SupplierMaster(d) => serde_json::to_value(d),
            AdcDocument::SalesQuotation(d) => serde_json::to_value(d),
            AdcDocument::CustomerReturn(d) => serde_json::to_value(d),
        }
        .expect("documents serialise");
        strip_nulls(&mut v);
        v
    }

    /// The business partner the document is about (supplier or customer number), if any.
    pub fn partner(&self) -> Option<&str> {
        match self {
            AdcDocument::PurchaseOrder(d) => d.supplier_id.as_deref(),
            AdcDocument::SupplierInvoice(d) => d.supplier_id.as_deref(),
            AdcDocument::SupplierCreditMemo(d) => d.supplier_id.as_deref(),
            AdcDocument::SalesOrder(d) => d.sold_to.as_deref(),
            AdcDocument::GoodsReceipt(d) => d.supplier_id.as_deref(),
            AdcDocument::OutboundDelivery(d) => d.ship_to.as_deref(),
            AdcDocument::InboundDelivery(d) => d.supplier_id.as_deref(),
            AdcDocument::SupplierMaster(d) => d.vat_id.as_deref(),
            AdcDocument::SalesQuotation(d) => d.sold_to.as_deref(),
            AdcDocument::CustomerReturn(d) => d.sold_to.as_deref(),
        }
    }

    /// The document's own external reference (invoice number, customer PO, delivery note...):
    /// with [`AdcDocument::partner`] it identifies a business document across resubmissions.
    pub fn reference(&self) -> Option<&str> {
        match self {
            AdcDocument::PurchaseOrder(d) => d.po_number.as_deref(),
            AdcDocument::SupplierInvoice(d) => d.invoice_number.as_deref(),
            AdcDocument::SupplierCreditMemo(d) => d.credit_memo_number.as_deref(),
            AdcDocument::SalesOrder(d) => d.customer_po_number.as_deref(),
            AdcDocument::GoodsReceipt(d) => d.delivery_note.as_deref(),
            AdcDocument::OutboundDelivery(d) => d.sales_order.as_deref(),
            AdcDocument::InboundDelivery(d) => d.asn_number.as_deref(),
            AdcDocument::SupplierMaster(d) => d.supplier_name.as_deref(),
            AdcDocument::SalesQuotation(d) => d.rfq_number.as_deref(),
            AdcDocument::CustomerReturn(d) => d.rma_number.as_deref(),
        }
    }
}

/// Removes `null` members recursively (extraction output omits what it did not find).
pub fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn doc_type_names_are_stable_and_round_trip() {
        for d in DocType::ALL {
            assert_eq!(d.as_str().parse::<DocType>().unwrap(), d);
            assert_eq!(serde_json::to_value(d).unwrap(), json!(d.as_str()));
        }
        assert!("invoice".parse::<DocType>().unwrap_err().contains("supplier_invoice"));
        for s in [
            "SUPPLIER_INVOICE",
            "supplier-invoice",
            "Supplier Invoice",
            "SupplierInvoice",
            " supplier.invoice ",
        ] {
            assert_eq!(s.parse::<DocType>(), Ok(DocType::SupplierInvoice), "{s}");
        }
    }

    #[test]
    fn parse_error_names_the_field_path() {
        let v = json!({"invoice_number": "A1", "items": [{"amount": 1.0}, {"quantity": "lots"}]});
        let e = AdcDocument::from_json(DocType::SupplierInvoice, &v).unwrap_err();
        assert_eq!(e.path, "items[1].quantity");
        assert!(e.to_string().contains("lots"), "{e}");
    }

    #[test]
    fn noisy_values_parse_and_serialise_canonically() {
        let v = json!({"invoice_date": "15.03.2024", "gross_amount": "1.190,00", "items": [], "extra": 1});
        let d = AdcDocument::from_json(DocType::SupplierInvoice, &v).unwrap();
        let out = d.to_value();
        assert_eq!(out["invoice_date"], "2024-03-15");
        assert_eq!(out["gross_amount"], 1190.0);
        assert!(out.get("po_number").is_none(), "absent fields are omitted, not null");
    }
}
