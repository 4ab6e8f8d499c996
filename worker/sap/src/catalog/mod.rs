//! The API catalog: which S/4HANA APIs exist, what a create request to each looks like, and which
//! document types each serves.
//!
//! The built-in catalog ([`Catalog::builtin`]) is embedded JSON transcribed from the SAP specs
//! (entity sets, EDM types, lengths, precision/scale, keys) plus the business-mandatory overlay that
//! OData metadata does not carry (it marks only keys non-nullable). Users bring their own tenant's
//! APIs with the importers in [`crate::import`] and save/load catalogs as JSON.

pub mod compact;
pub mod json_schema;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use compact::{CompactSchema, compact_schema};
pub use json_schema::create_payload_schema;

/// The EDM (OData V2) type of a property. Names are the EDM names without the `Edm.` prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EdmType {
    String,
    Decimal,
    DateTime,
    DateTimeOffset,
    Time,
    Boolean,
    Guid,
    Byte,
    Int16,
    Int32,
    Int64,
    Double,
    Single,
    Binary,
}

impl EdmType {
    /// Parses `Edm.String` or `String`; `None` for types this catalog does not model.
    pub fn parse(s: &str) -> Option<EdmType> {
        let s = s.strip_prefix("Edm.").unwrap_or(s);
        Some(match s {
            "String" => EdmType::String,
            "Decimal" => EdmType::Decimal,
            "DateTime" => EdmType::DateTime,
            "DateTimeOffset" => EdmType::DateTimeOffset,
            "Time" => EdmType::Time,
            "Boolean" => EdmType::Boolean,
            "Guid" => EdmType::Guid,
            "Byte" | "SByte" => EdmType::Byte,
            "Int16" => EdmType::Int16,
            "Int32" => EdmType::Int32,
            "Int64" => EdmType::Int64,
            "Double" => EdmType::Double,
            "Single" => EdmType::Single,
            "Binary" => EdmType::Binary,
            _ => return None,
        })
    }

    /// The short name used in compact prompt schemas.
    pub fn short(self) -> &'static str {
        match self {
            EdmType::String => "Str",
            EdmType::Decimal => "Dec",
            EdmType::DateTime | EdmType::DateTimeOffset => "Date",
            EdmType::Time => "Time",
            EdmType::Boolean => "Bool",
            EdmType::Guid => "Guid",
            EdmType::Byte | EdmType::Int16 | EdmType::Int32 => "Int",
            EdmType::Int64 => "Int64",
            EdmType::Double | EdmType::Single => "Float",
            EdmType::Binary => "Bin",
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}
fn is_true(b: &bool) -> bool {
    *b
}
fn yes() -> bool {
    true
}

/// One property of an entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub edm_type: EdmType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<u32>,
    /// Part of the entity key.
    #[serde(default, skip_serializing_if = "is_false")]
    pub key: bool,
    /// `sap:creatable="false"` fields (server-assigned numbers) must not be sent on create.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub creatable: bool,
    /// Business-mandatory for a create (the overlay; metadata does not say this).
    #[serde(default, skip_serializing_if = "is_false")]
    pub mandatory: bool,
    /// The value a create uses when the document does not say (e.g. PurchaseOrderType "NB").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

impl FieldSpec {
    /// A field with just a name and type; the importers fill the rest.
    pub fn new(name: impl Into<String>, edm_type: EdmType) -> Self {
        FieldSpec {
            name: name.into(),
            edm_type,
            max_length: None,
            precision: None,
            scale: None,
            key: false,
            creatable: true,
            mandatory: false,
            default: None,
        }
    }
}

/// How a to-many navigation numbers its items: `field` gets `step`, `2*step`, ... zero-padded to
/// the field's max length (PO item "00010").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemNumbering {
    pub field: String,
    pub step: u32,
}

/// A navigation property used for deep insert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NavigationSpec {
    pub name: String,
    /// To-many (`{"results": [...]}`) or to-one (a nested object).
    pub many: bool,
    pub entity: EntitySpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_numbering: Option<ItemNumbering>,
    /// A create needs at least one entry here.
    #[serde(default, skip_serializing_if = "is_false")]
    pub required: bool,
}

/// An entity (set) and what a create of it may contain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntitySpec {
    pub entity_set: String,
    pub entity_type: String,
    pub fields: Vec<FieldSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub navigations: Vec<NavigationSpec>,
    /// At least one of these navigations must have an entry (supplier invoice: PO-reference or
    /// G/L items).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items_required_any_of: Vec<String>,
}

impl EntitySpec {
    /// The field called `name`.
    pub fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The navigation called `name`.
    pub fn navigation(&self, name: &str) -> Option<&NavigationSpec> {
        self.navigations.iter().find(|n| n.name == name)
    }
}

/// One API (OData service).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiSpec {
    /// Technical name, with version suffix where SAP uses one: `API_OUTBOUND_DELIVERY_SRV;v=0002`.
    pub name: String,
    pub title: String,
    pub service_path: String,
    /// Business area (procurement, sales, logistics, master_data): the routing candidates of a
    /// document are the APIs of its area.
    pub domain: String,
    /// Document types (stable [`crate::documents::DocType`] names) this API creates.
    pub doc_types: Vec<String>,
    /// No creatable entity set: documents of its types cannot be posted through it.
    pub read_only: bool,
    /// The root entity a create posts to, with its deep-insert navigations.
    pub create: Option<EntitySpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<String>,
    /// Where the definition came from (a spec file, the built-in facts).
    #[serde(default)]
    pub source: String,
}

impl ApiSpec {
    /// The routing target string: `API_NAME/EntitySet` (the POST URL relative to the service
    /// root), or the API name alone for a read-only API. Training data, evaluation and the PPO
    /// reward compare endpoints as these strings.
    pub fn endpoint(&self) -> String {
        match &self.create {
            Some(e) => format!("{}/{}", self.name, e.entity_set),
            None => self.name.clone(),
        }
    }
}

/// Errors loading or querying a catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read catalog {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error(
        "catalog {path} is not valid catalog JSON: {source} (expected {{\"version\":1,\"apis\":[...]}}; write one with `sapllm-worker catalog import`)"
    )]
    Parse { path: String, source: serde_json::Error },
    #[error("catalog {path}: {message}")]
    Invalid { path: String, message: String },
}

/// A set of APIs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    pub version: u32,
    pub apis: Vec<ApiSpec>,
    /// The tenant's own spellings of document fields (`{"field": "supplier_id", "aliases":
    /// ["kreditor"]}`), read before the built-in ones
    /// ([`crate::documents::normalize::builtin_aliases`]), which always apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<crate::documents::normalize::AliasGroup>,
}

/// The endpoint of documents that must not be posted: incomplete, failing a blocking rule, or of
/// a type only a read-only API serves. A person (or the exception model) handles them.
pub const EXCEPTION_ENDPOINT: &str = "EXCEPTION_HANDLING";

const BUILTIN_JSON: &str = include_str!("builtin_catalog.json");

impl Catalog {
    /// The built-in catalog of 11 S/4HANA APIs (10 creatable, billing read-only).
    pub fn builtin() -> Catalog {
        // The JSON is compiled in and covered by tests, so a parse failure is a build defect.
        serde_json::from_str(BUILTIN_JSON).expect("built-in catalog JSON is valid")
    }

    /// The strings a routing answer chooses between: every document type, every endpoint and
    /// exception handling, sorted. A tokenizer trained for this catalog keeps them whole (see
    /// `sapllm_worker::pretrain::PretrainConfig::domain_tokens`).
    pub fn domain_tokens(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .apis
            .iter()
            .flat_map(|a| a.doc_types.iter().cloned().chain(std::iter::once(a.endpoint())))
            .chain(std::iter::once(EXCEPTION_ENDPOINT.to_string()))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Reads a catalog written by [`Catalog::save`] or `catalog import`.
    pub fn load(path: &Path) -> Result<Catalog, CatalogError> {
        let p = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|source| CatalogError::Io { path: p.clone(), source })?;
        let cat: Catalog =
            serde_json::from_str(&text).map_err(|source| CatalogError::Parse { path: p.clone(), source })?;
        cat.check().map_err(|message| CatalogError::Invalid { path: p, message })?;
        Ok(cat)
    }

    /// Writes the catalog as pretty JSON.
    pub fn save(&self, path: &Path) -> Result<(), CatalogError> {
        let p = path.display().to_string();
        let text = serde_json::to_string_pretty(self).expect("catalog serialises");
        std::fs::write(path, text).map_err(|source| CatalogError::Io { path: p, source })
    }

    /// Structural checks a hand-edited catalog could break: unique API names, read-only APIs
    /// without a create entity, decimals with a precision.
    pub fn check(&self) -> Result<(), String> {
        for (i, g) in self.aliases.iter().enumerate() {
            if g.field.trim().is_empty() || g.aliases.iter().any(|a| a.trim().is_empty()) {
                return Err(format!(
                    "aliases[{i}]: field and every alias must be non-empty (e.g. {{\"field\": \"supplier_id\", \"aliases\": [\"kreditor\"]}})"
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for api in &self.apis {
            if !seen.insert(api.name.as_str()) {
                return Err(format!("API {} appears twice; keep one entry per API name", api.name));
            }
            if api.read_only != api.create.is_none() {
                return Err(format!(
                    "API {}: read_only must be true exactly when create is null (read_only={}, create {})",
                    api.name,
                    api.read_only,
                    if api.create.is_some() { "set" } else { "null" }
                ));
            }
        }
        Ok(())
    }

    /// `adc_json` in the document models' field names, with this catalog's alias groups.
    pub fn normalize(
        &self,
        doc_type: crate::documents::DocType,
        adc_json: &serde_json::Value,
    ) -> crate::documents::normalize::Normalized {
        crate::documents::normalize::normalize(doc_type, adc_json, &self.aliases)
    }

    /// The API called `name` (exact technical name, e.g. `API_SALES_ORDER_SRV`). A name without a
    /// `;v=` suffix also finds a versioned API.
    pub fn api(&self, name: &str) -> Option<&ApiSpec> {
        self.apis
            .iter()
            .find(|a| a.name == name)
            .or_else(|| self.apis.iter().find(|a| a.name.split(';').next() == Some(name)))
    }

    /// The API whose [`ApiSpec::endpoint`] is `endpoint` (or whose name is the part before `/`).
    pub fn api_for_endpoint(&self, endpoint: &str) -> Option<&ApiSpec> {
        self.apis
            .iter()
            .find(|a| a.endpoint() == endpoint)
            .or_else(|| self.api(endpoint.split('/').next().unwrap_or(endpoint)))
    }

    /// The APIs that serve `doc_type` (a [`crate::documents::DocType`] name).
    pub fn serving(&self, doc_type: &str) -> Vec<&ApiSpec> {
        self.apis.iter().filter(|a| a.doc_types.iter().any(|d| d == doc_type)).collect()
    }

    /// Routing candidates for a document type: the APIs serving it first, then the other APIs of
    /// the same business area (the plausible confusions the model must rule out, e.g. an invoice
    /// versus the purchase order it references). Read-only APIs are included so a model can learn
    /// that they cannot be posted to.
    pub fn candidates_for(&self, doc_type: &str) -> Vec<&ApiSpec> {
        let serving = self.serving(doc_type);
        let domains: Vec<&str> = serving.iter().map(|a| a.domain.as_str()).collect();
        let mut out = serving.clone();
        for api in &self.apis {
            if domains.contains(&api.domain.as_str()) && !out.iter().any(|a| a.name == api.name) {
                out.push(api);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_parses_and_is_consistent() {
        let cat = Catalog::builtin();
        cat.check().unwrap();
        assert!(cat.apis.len() >= 10);
        assert!(cat.api("API_BILLING_DOCUMENT_SRV").unwrap().read_only);
    }

    #[test]
    fn versioned_names_resolve_with_and_without_suffix() {
        let cat = Catalog::builtin();
        assert_eq!(cat.api("API_OUTBOUND_DELIVERY_SRV").unwrap().name, "API_OUTBOUND_DELIVERY_SRV;v=0002");
        let ep = cat.api("API_OUTBOUND_DELIVERY_SRV;v=0002").unwrap().endpoint();
        assert_eq!(ep, "API_OUTBOUND_DELIVERY_SRV;v=0002/A_OutbDeliveryHeader");
        assert_eq!(cat.api_for_endpoint(&ep).unwrap().name, "API_OUTBOUND_DELIVERY_SRV;v=0002");
    }

    #[test]
    fn candidates_put_serving_api_first_and_include_area_confusers() {
        let cat = Catalog::builtin();
        let c: Vec<&str> = cat.candidates_for("supplier_invoice").iter().map(|a| a.name.as_str()).collect();
        assert_eq!(c[0], "API_SUPPLIERINVOICE_PROCESS_SRV");
        assert!(c.contains(&"API_PURCHASEORDER_PROCESS_SRV"));
        assert!(!c.contains(&"API_SALES_ORDER_SRV"));
    }
}
