//! A real JSON Schema (draft 2020-12) of an API's create payload, for validation and for
//! constrained decoding (llguidance) on the serving side: types, `maxLength`, decimal and date
//! patterns, the mandatory overlay as `required`, deep-insert navigations as nested
//! `{"results": [...]}` arrays, and `additionalProperties: false` so a decoder cannot invent fields.

use serde_json::{Map, Value, json};

use super::{ApiSpec, EdmType, EntitySpec, FieldSpec};

/// The JSON Schema of a create request body for `api`; `None` for a read-only API.
pub fn create_payload_schema(api: &ApiSpec) -> Option<Value> {
    let entity = api.create.as_ref()?;
    let mut schema = entity_schema(entity, None, None);
    let obj = schema.as_object_mut().expect("entity schema is an object");
    obj.insert("$schema".into(), json!("https://json-schema.org/draft/2020-12/schema"));
    obj.insert("title".into(), json!(format!("{} create payload ({})", api.name, entity.entity_set)));
    Some(schema)
}

/// `ancestor_keys`: `None` at the root (its keys are server-assigned document numbers), else the
/// key names of the enclosing entities (a child repeats them; SAP fills them from the parent).
fn entity_schema(e: &EntitySpec, numbering: Option<&str>, ancestor_keys: Option<&[String]>) -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    for f in e.fields.iter().filter(|f| f.creatable) {
        let is_item_number = numbering == Some(f.name.as_str());
        if f.key && !is_item_number && ancestor_keys.is_none_or(|k| k.contains(&f.name)) {
            continue;
        }
        props.insert(f.name.clone(), field_schema(f, is_item_number));
        if f.mandatory {
            required.push(json!(f.name));
        }
    }
    let mut keys: Vec<String> = ancestor_keys.unwrap_or_default().to_vec();
    keys.extend(e.fields.iter().filter(|f| f.key).map(|f| f.name.clone()));
    for n in &e.navigations {
        let inner =
            entity_schema(&n.entity, n.item_numbering.as_ref().map(|i| i.field.as_str()), Some(&keys));
        let nav = if n.many {
            let mut arr = json!({"type": "array", "items": inner});
            if n.required {
                arr["minItems"] = json!(1);
            }
            json!({"type": "object", "properties": {"results": arr}, "required": ["results"], "additionalProperties": false})
        } else {
            inner
        };
        props.insert(n.name.clone(), nav);
        if n.required {
            required.push(json!(n.name));
        }
    }
    let mut schema = json!({
        "type": "object",
        "title": e.entity_set,
        "properties": props,
        "required": required,
        "additionalProperties": false,
    });
    if !e.items_required_any_of.is_empty() {
        let any: Vec<Value> = e
            .items_required_any_of
            .iter()
            .map(
                |n| json!({"required": [n], "properties": {n: {"properties": {"results": {"minItems": 1}}}}}),
            )
            .collect();
        schema["anyOf"] = Value::Array(any);
    }
    schema
}

fn field_schema(f: &FieldSpec, item_number: bool) -> Value {
    let mut s = match f.edm_type {
        EdmType::String if item_number => {
            let n = f.max_length.unwrap_or(5);
            json!({"type": "string", "pattern": format!("^[0-9]{{{n}}}$")})
        }
        EdmType::String => match f.max_length {
            Some(n) => json!({"type": "string", "maxLength": n}),
            None => json!({"type": "string"}),
        },
        EdmType::Decimal => {
            // OData V2 JSON sends decimals as strings; integer digits = precision - scale.
            let p = f.precision.unwrap_or(16);
            let sc = f.scale.unwrap_or(0);
            let int = p.saturating_sub(sc).max(1);
            let pattern = if sc == 0 {
                format!("^-?[0-9]{{1,{int}}}$")
            } else {
                format!("^-?[0-9]{{1,{int}}}(\\.[0-9]{{1,{sc}}})?$")
            };
            json!({"type": "string", "pattern": pattern})
        }
        EdmType::DateTime | EdmType::DateTimeOffset => {
            json!({"type": "string", "pattern": "^/Date\\(-?[0-9]+([+-][0-9]{4})?\\)/$"})
        }
        EdmType::Time => json!({"type": "string", "pattern": "^PT[0-9]{2}H[0-9]{2}M[0-9]{2}S$"}),
        EdmType::Boolean => json!({"type": "boolean"}),
        EdmType::Guid => {
            json!({"type": "string", "pattern": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"})
        }
        EdmType::Byte | EdmType::Int16 | EdmType::Int32 => json!({"type": "integer"}),
        EdmType::Int64 => json!({"type": "string", "pattern": "^-?[0-9]{1,19}$"}),
        EdmType::Double | EdmType::Single => json!({"type": "number"}),
        EdmType::Binary => json!({"type": "string"}),
    };
    if let Some(d) = &f.default {
        s["default"] = json!(d);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    #[test]
    fn supplier_invoice_schema_has_overlay_deep_insert_and_any_of_items() {
        let cat = Catalog::builtin();
        let s = create_payload_schema(cat.api("API_SUPPLIERINVOICE_PROCESS_SRV").unwrap()).unwrap();
        let req: Vec<&str> = s["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        for f in ["CompanyCode", "InvoicingParty", "SupplierInvoiceIDByInvcgParty", "InvoiceGrossAmount"] {
            assert!(req.contains(&f), "{f} not required: {req:?}");
        }
        assert_eq!(s["properties"]["SupplierInvoiceIDByInvcgParty"]["maxLength"], 16);
        assert!(s["properties"].get("SupplierInvoice").is_none(), "non-creatable key must not be offered");
        let items = &s["properties"]["to_SuplrInvcItemPurOrdRef"]["properties"]["results"];
        assert_eq!(items["type"], "array");
        assert_eq!(items["items"]["properties"]["SupplierInvoiceItem"]["pattern"], "^[0-9]{6}$");
        assert_eq!(s["anyOf"].as_array().unwrap().len(), 2);
        assert_eq!(s["additionalProperties"], false);
        assert!(create_payload_schema(cat.api("API_BILLING_DOCUMENT_SRV").unwrap()).is_none());
    }

    #[test]
    fn decimal_pattern_encodes_precision_and_scale() {
        let cat = Catalog::builtin();
        let s = create_payload_schema(cat.api("API_PURCHASEORDER_PROCESS_SRV").unwrap()).unwrap();
        let item = &s["properties"]["to_PurchaseOrderItem"]["properties"]["results"]["items"];
        assert_eq!(item["properties"]["OrderQuantity"]["pattern"], "^-?[0-9]{1,10}(\\.[0-9]{1,3})?$");
        assert_eq!(item["properties"]["NetPriceQuantity"]["pattern"], "^-?[0-9]{1,5}$");
    }
}
