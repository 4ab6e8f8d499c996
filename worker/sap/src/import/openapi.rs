//! OpenAPI 3 JSON importer for SAP's OData V2 APIs as the API hub publishes them: an entity set is
//! creatable when its collection path has a POST whose request body is a `Create<Set>` schema;
//! POST paths without a body are function imports (actions). EDM types come from SAP's
//! conventions: `format: decimal` with `x-sap-precision`/`x-sap-scale`, date examples
//! `/Date(...)/`, time examples `PT..H..M..S`, `format: uuid`.

use serde_json::Value;

use crate::catalog::{ApiSpec, EdmType, EntitySpec, FieldSpec, NavigationSpec};

const MAX_DEPTH: usize = 2;

/// Imports an OpenAPI 3 document. `source` names the file for the catalog's provenance.
pub fn import_openapi(text: &str, source: &str) -> Result<ApiSpec, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("JSON error: {e}"))?;
    let version = doc.get("openapi").and_then(Value::as_str).unwrap_or("");
    if !version.starts_with('3') {
        return Err(format!("field \"openapi\" is {version:?}, expected 3.x (Swagger 2 is not supported)"));
    }
    let paths = doc.get("paths").and_then(Value::as_object).ok_or("no \"paths\" object")?;
    let schemas = doc
        .pointer("/components/schemas")
        .and_then(Value::as_object)
        .ok_or("no \"components.schemas\" object")?;
    let name =
        service_name(&doc).ok_or("cannot tell the service name: no servers[].url and no info.title")?;

    let mut creatable: Vec<(String, String)> = Vec::new(); // (entity set, create schema name)
    let mut actions = Vec::new();
    for (path, item) in paths {
        let Some(post) = item.get("post") else { continue };
        let seg = path.trim_start_matches('/');
        if seg.contains('(') || seg.contains('/') || seg.starts_with('$') {
            continue;
        }
        let body_ref =
            post.pointer("/requestBody/content/application~1json/schema/$ref").and_then(Value::as_str);
        match body_ref.and_then(|r| r.strip_prefix("#/components/schemas/")) {
            Some(schema) if schemas.contains_key(schema) && schemas.contains_key(seg) => {
                creatable.push((seg.to_string(), schema.to_string()))
            }
            _ => actions.push(seg.to_string()),
        }
    }
    let keys = |set: &str| key_names(paths, set);
    let candidates: Vec<(String, Vec<String>)> = creatable
        .iter()
        .map(|(set, schema)| {
            let kids = nav_targets(&schemas[schema.as_str()])
                .into_iter()
                .filter(|(_, many, _)| *many)
                .filter_map(|(_, _, target)| {
                    creatable.iter().find(|(_, s)| *s == target).map(|(set, _)| set.clone())
                })
                .collect();
            (set.clone(), kids)
        })
        .collect();
    let create = super::choose_root(&candidates).map(|i| {
        let (set, schema) = &creatable[i];
        build_entity(schemas, set, schema, 0, &mut vec![schema.clone()], &keys)
    });
    Ok(ApiSpec {
        title: doc.pointer("/info/title").and_then(Value::as_str).unwrap_or(&name).to_string(),
        service_path: format!("/sap/opu/odata/sap/{name}"),
        domain: super::guess_domain(&name),
        doc_types: Vec::new(),
        read_only: create.is_none(),
        create,
        actions,
        source: source.to_string(),
        name,
    })
}

fn service_name(doc: &Value) -> Option<String> {
    let from_url = doc.pointer("/servers/0/url").and_then(Value::as_str).and_then(|u| {
        let last = u.trim_end_matches('/').rsplit('/').next()?;
        (!last.is_empty() && !last.contains('{')).then(|| last.to_string())
    });
    from_url.or_else(|| doc.pointer("/info/title").and_then(Value::as_str).map(str::to_string))
}

/// Key property names from the entity path template `/Set(K1='{K1}',K2='{K2}')` or `/Set('{K}')`.
fn key_names(paths: &serde_json::Map<String, Value>, set: &str) -> Vec<String> {
    let prefix = format!("/{set}(");
    for p in paths.keys() {
        if let Some(rest) = p.strip_prefix(&prefix)
            && rest.ends_with(')')
            && !rest.contains('/')
        {
            return rest
                .trim_end_matches(')')
                .split(',')
                .filter_map(|kv| {
                    let inner = kv.split_once('{')?.1.split_once('}')?.0;
                    Some(inner.to_string())
                })
                .collect();
        }
    }
    Vec::new()
}

/// (navigation name, to-many, target schema name) of a create schema's navigation properties.
fn nav_targets(schema: &Value) -> Vec<(String, bool, String)> {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else { return Vec::new() };
    props
        .iter()
        .filter_map(|(name, p)| {
            let many = p.pointer("/properties/results/items/$ref").and_then(Value::as_str);
            let one = p.get("$ref").and_then(Value::as_str);
            let (is_many, r) = match (many, one) {
                (Some(r), _) => (true, r),
                (None, Some(r)) => (false, r),
                _ => return None,
            };
            Some((name.clone(), is_many, r.strip_prefix("#/components/schemas/")?.to_string()))
        })
        .collect()
}

fn field(name: &str, p: &Value) -> Option<FieldSpec> {
    let ty = p.get("type").and_then(Value::as_str);
    let format = p.get("format").and_then(Value::as_str);
    let example = p.get("example").and_then(Value::as_str).unwrap_or("");
    let edm = match (ty, format) {
        (Some("string"), Some("decimal")) => EdmType::Decimal,
        (Some("string"), Some("uuid")) => EdmType::Guid,
        (Some("string"), Some("int64")) => EdmType::Int64,
        (Some("string"), Some("date-time")) => EdmType::DateTimeOffset,
        (Some("string"), _) if example.starts_with("/Date(") => EdmType::DateTime,
        (Some("string"), _) if example.starts_with("PT") => EdmType::Time,
        (Some("string"), _) => EdmType::String,
        (Some("boolean"), _) => EdmType::Boolean,
        (Some("integer"), Some("int64")) => EdmType::Int64,
        (Some("integer"), Some("uint8")) => EdmType::Byte,
        (Some("integer"), Some("int16")) => EdmType::Int16,
        (Some("integer"), _) => EdmType::Int32,
        (Some("number"), _) | (None, Some("double")) => EdmType::Double,
        _ => return None,
    };
    let mut f = FieldSpec::new(name, edm);
    f.max_length = p.get("maxLength").and_then(Value::as_u64).map(|v| v as u32);
    f.precision = p.get("x-sap-precision").and_then(Value::as_u64).map(|v| v as u32);
    f.scale = p.get("x-sap-scale").and_then(Value::as_u64).map(|v| v as u32);
    Some(f)
}

fn build_entity(
    schemas: &serde_json::Map<String, Value>,
    set: &str,
    schema_name: &str,
    depth: usize,
    path: &mut Vec<String>,
    keys: &dyn Fn(&str) -> Vec<String>,
) -> EntitySpec {
    let schema = &schemas[schema_name];
    let key_names = keys(set);
    let mut fields = Vec::new();
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, p) in props {
            if let Some(mut f) = field(name, p) {
                f.key = key_names.iter().any(|k| k == name);
                fields.push(f);
            }
        }
    }
    let mut navigations = Vec::new();
    if depth < MAX_DEPTH {
        for (name, many, target) in nav_targets(schema) {
            if path.contains(&target) || !schemas.contains_key(&target) {
                continue;
            }
            let tset = target.strip_prefix("Create").unwrap_or(&target).to_string();
            path.push(target.clone());
            let entity = build_entity(schemas, &tset, &target, depth + 1, path, keys);
            path.pop();
            navigations.push(NavigationSpec { name, many, entity, item_numbering: None, required: false });
        }
    }
    EntitySpec {
        entity_type: format!("{set}Type"),
        entity_set: set.to_string(),
        fields,
        navigations,
        items_required_any_of: Vec::new(),
    }
}
