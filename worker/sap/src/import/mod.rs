//! Importers so a user can bring their own tenant's APIs: OData V2 `$metadata` (EDMX) and
//! OpenAPI 3 JSON as SAP publishes them (SAP Business Accelerator Hub).
//!
//! Both produce an [`ApiSpec`] whose create entity is the root entity set a document posts to:
//! among the creatable entity sets, the one no other creatable set deep-inserts into, with the
//! most to-many navigations (A_PurchaseOrder over A_PurchaseOrderItem). An API with no creatable
//! entity set is marked read-only, not guessed. The metadata carries no business-mandatory flags,
//! so [`apply_overlay`] copies them (and item numbering, defaults, doc types) from the built-in
//! catalog when the API is one it knows.

mod edmx;
mod openapi;

use std::path::Path;

use crate::catalog::{ApiSpec, Catalog, EntitySpec};

pub use edmx::import_edmx;
pub use openapi::import_openapi;

/// Why a spec file could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not an EDMX $metadata document: {message}")]
    Edmx { path: String, message: String },
    #[error("{path}: not an OpenAPI 3 JSON document: {message}")]
    OpenApi { path: String, message: String },
    #[error(
        "{path}: neither EDMX (XML starting with '<') nor OpenAPI JSON (starting with '{{'); export $metadata or the OpenAPI JSON from the API hub"
    )]
    UnknownFormat { path: String },
}

/// Imports one spec file (format detected from its content), then applies the built-in overlay.
pub fn import_file(path: &Path) -> Result<ApiSpec, ImportError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ImportError::Io { path: p.clone(), source })?;
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    let source = path.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_else(|| p.clone());
    let mut api = if trimmed.starts_with('<') {
        import_edmx(trimmed, &source).map_err(|message| ImportError::Edmx { path: p.clone(), message })?
    } else if trimmed.starts_with('{') {
        import_openapi(trimmed, &source)
            .map_err(|message| ImportError::OpenApi { path: p.clone(), message })?
    } else {
        return Err(ImportError::UnknownFormat { path: p });
    };
    if let Some(known) = Catalog::builtin().api(&api.name) {
        apply_overlay(&mut api, known);
    }
    Ok(api)
}

/// Copies business knowledge the metadata lacks from `known` onto `imported`: mandatory flags,
/// defaults, item numbering, required navigations, doc types, domain and title. Structure (which
/// fields and navigations exist, their types) stays as imported: the tenant's metadata wins.
pub fn apply_overlay(imported: &mut ApiSpec, known: &ApiSpec) {
    if imported.doc_types.is_empty() {
        imported.doc_types = known.doc_types.clone();
    }
    if imported.domain.is_empty() || imported.domain == "unknown" {
        imported.domain = known.domain.clone();
    }
    imported.title = known.title.clone();
    if let (Some(i), Some(k)) = (imported.create.as_mut(), known.create.as_ref())
        && i.entity_set == k.entity_set
    {
        overlay_entity(i, k);
    }
}

fn overlay_entity(i: &mut EntitySpec, k: &EntitySpec) {
    for f in &mut i.fields {
        if let Some(kf) = k.field(&f.name) {
            f.mandatory |= kf.mandatory;
            if f.default.is_none() {
                f.default = kf.default.clone();
            }
        }
    }
    if i.items_required_any_of.is_empty() {
        i.items_required_any_of =
            k.items_required_any_of.iter().filter(|n| i.navigation(n).is_some()).cloned().collect();
    }
    for n in &mut i.navigations {
        if let Some(kn) = k.navigation(&n.name) {
            n.required |= kn.required;
            if n.item_numbering.is_none() {
                n.item_numbering = kn.item_numbering.clone();
            }
            overlay_entity(&mut n.entity, &kn.entity);
        }
    }
}

/// Chooses the root create entity among `(entity_set, to_many_children)` of the creatable sets.
pub(crate) fn choose_root(sets: &[(String, Vec<String>)]) -> Option<usize> {
    let is_child =
        |name: &str| sets.iter().any(|(other, kids)| other != name && kids.iter().any(|k| k == name));
    (0..sets.len()).max_by(|&a, &b| {
        let key = |i: usize| {
            let (name, kids) = &sets[i];
            (!is_child(name), kids.len(), std::cmp::Reverse(name.len()))
        };
        key(a).cmp(&key(b)).then(b.cmp(&a))
    })
}

/// Domain from the service name, for imported APIs the built-in catalog does not know.
pub(crate) fn guess_domain(name: &str) -> String {
    let n = name.to_uppercase();
    let d = if n.contains("PURCHAS") || n.contains("SUPPLIERINVOICE") || n.contains("SERVICE_ENTRY") {
        "procurement"
    } else if n.contains("SALES") || n.contains("CUSTOMER_RETURN") || n.contains("BILLING") {
        "sales"
    } else if n.contains("DELIVERY") || n.contains("MATERIAL_DOCUMENT") || n.contains("WAREHOUSE") {
        "logistics"
    } else if n.contains("BUSINESS_PARTNER") || n.contains("PRODUCT") {
        "master_data"
    } else {
        "unknown"
    };
    d.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_the_set_nobody_deep_inserts_into() {
        let sets = vec![
            ("A_PurchaseOrderItem".to_string(), vec!["A_PurOrdScheduleLine".to_string()]),
            ("A_PurchaseOrder".to_string(), vec!["A_PurchaseOrderItem".to_string()]),
            ("A_PurOrdScheduleLine".to_string(), vec![]),
        ];
        assert_eq!(choose_root(&sets), Some(1));
        assert_eq!(choose_root(&[]), None);
    }
}
