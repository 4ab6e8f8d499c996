//! A compact, token-cheap rendering of an API's create schema for prompts (`api_schemas` in the
//! training examples). One line per API: the model sees which fields exist, which are mandatory
//! (`*`), their type and length, and the deep-insert structure, in a few hundred characters.

use serde::{Deserialize, Serialize};

use super::{ApiSpec, EntitySpec, FieldSpec};

/// What a prompt shows about one candidate API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompactSchema {
    pub api: String,
    pub endpoint: String,
    pub doc_types: Vec<String>,
    pub read_only: bool,
    /// `Entity{Field*:Str4, Qty:Dec13.3, to_Item[]{...}}`; `*` = mandatory, `#` = item number.
    pub schema: String,
}

/// Renders `api` compactly.
pub fn compact_schema(api: &ApiSpec) -> CompactSchema {
    let schema = match &api.create {
        Some(e) => {
            let mut s = String::with_capacity(512);
            render_entity(e, None, None, &mut s);
            s
        }
        None => "read-only: no creatable entity set".to_string(),
    };
    CompactSchema {
        api: api.name.clone(),
        endpoint: api.endpoint(),
        doc_types: api.doc_types.clone(),
        read_only: api.read_only,
        schema,
    }
}

fn render_entity(
    e: &EntitySpec,
    numbering: Option<&str>,
    ancestor_keys: Option<&[String]>,
    out: &mut String,
) {
    out.push_str(&e.entity_set);
    out.push('{');
    let mut first = true;
    for f in e.fields.iter().filter(|f| f.creatable) {
        // Root keys are server-assigned numbers and a child's copies of its parent's keys are
        // filled by SAP; other keys (item numbers, a tax line's TaxCode) are sent.
        if f.key && numbering != Some(f.name.as_str()) && ancestor_keys.is_none_or(|k| k.contains(&f.name)) {
            continue;
        }
        if !first {
            out.push_str(", ");
        }
        first = false;
        render_field(f, numbering == Some(f.name.as_str()), out);
    }
    let mut keys: Vec<String> = ancestor_keys.unwrap_or_default().to_vec();
    keys.extend(e.fields.iter().filter(|f| f.key).map(|f| f.name.clone()));
    for n in &e.navigations {
        if !first {
            out.push_str(", ");
        }
        first = false;
        out.push_str(&n.name);
        out.push_str(if n.many { "[]" } else { "" });
        if n.required {
            out.push('*');
        }
        out.push(':');
        render_entity(&n.entity, n.item_numbering.as_ref().map(|i| i.field.as_str()), Some(&keys), out);
    }
    out.push('}');
}

fn render_field(f: &FieldSpec, item_number: bool, out: &mut String) {
    use std::fmt::Write;
    out.push_str(&f.name);
    if f.mandatory {
        out.push('*');
    }
    if item_number {
        out.push('#');
    }
    out.push(':');
    out.push_str(f.edm_type.short());
    if let Some(l) = f.max_length {
        let _ = write!(out, "{l}");
    }
    if let (Some(p), Some(s)) = (f.precision, f.scale) {
        let _ = write!(out, "{p}.{s}");
    }
    if let Some(d) = &f.default {
        let _ = write!(out, "={d}");
    }
}

#[cfg(test)]
mod tests {
    use crate::catalog::Catalog;

    #[test]
    fn compact_schema_marks_mandatory_item_numbers_and_deep_insert() {
        let cat = Catalog::builtin();
        let s = super::compact_schema(cat.api("API_PURCHASEORDER_PROCESS_SRV").unwrap()).schema;
        assert!(s.starts_with("A_PurchaseOrder{"), "{s}");
        assert!(s.contains("CompanyCode*:Str4"), "{s}");
        assert!(s.contains("PurchaseOrderType*:Str4=NB"), "{s}");
        assert!(s.contains("to_PurchaseOrderItem[]*:A_PurchaseOrderItem{PurchaseOrderItem#:Str5"), "{s}");
        assert!(s.contains("OrderQuantity*:Dec13.3"), "{s}");
        // The server-assigned header key is not something a create sends.
        assert!(!s.contains("{PurchaseOrder:"), "{s}");
    }
}
