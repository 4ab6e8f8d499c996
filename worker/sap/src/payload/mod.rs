//! The payload builder: an extracted document to the exact request body of its target API.
//!
//! The body is the entity itself (not wrapped in `{"d": ...}`), items go in a deep insert
//! (`"to_Item": {"results": [...]}`), dates as `/Date(ms)/`, item numbers zero-padded, decimals
//! rounded to the property's scale, and a credit memo is a supplier invoice with
//! `SupplierInvoiceIsCreditMemo = "X"` and positive amounts. Values the document lacks are left
//! out (or take the overlay default); [`crate::rules::validate`] then says what is missing.

mod builders;
pub mod provenance;
mod writer;

use serde_json::Value;

use crate::catalog::ApiSpec;
use crate::documents::AdcDocument;

pub use provenance::{FieldSource, Provenance};
pub use writer::EntityWriter;

/// Why no payload could be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PayloadError {
    #[error("API {api} is read-only (no creatable entity set); a {doc_type} cannot be posted through it")]
    ReadOnly { api: String, doc_type: String },
    #[error(
        "API {api} does not serve {doc_type} documents; route it to one of the APIs whose doc_types list it"
    )]
    WrongApi { api: String, doc_type: String },
}

/// Builds the create request body for `doc` at `api`.
pub fn build_payload(doc: &AdcDocument, api: &ApiSpec) -> Result<Value, PayloadError> {
    build_payload_traced(doc, api).map(|(v, _)| v)
}

/// As [`build_payload`], with the source of every value written.
pub fn build_payload_traced(
    doc: &AdcDocument,
    api: &ApiSpec,
) -> Result<(Value, Vec<FieldSource>), PayloadError> {
    let doc_type = doc.doc_type().as_str();
    let Some(entity) = &api.create else {
        return Err(PayloadError::ReadOnly { api: api.name.clone(), doc_type: doc_type.into() });
    };
    if !api.doc_types.iter().any(|d| d == doc_type) {
        return Err(PayloadError::WrongApi { api: api.name.clone(), doc_type: doc_type.into() });
    }
    let mut w = EntityWriter::new(entity);
    builders::fill(doc, &mut w);
    Ok(w.finish_traced())
}
