//! Helpers shared by the cross-crate tests: what the Kubernetes API server does with a CRD's
//! schema, done offline (no kube-apiserver can run here).
//!
//! - [`structural_violations`]: the structural-schema rules the API server enforces on CRDs.
//! - [`validator_for`]: the OpenAPI v3 schema turned into a JSON Schema (nullable, int-or-string)
//!   and compiled with the `jsonschema` crate.
//! - [`cel_violations`]: every `x-kubernetes-validations` rule evaluated with the `cel` crate on
//!   the part of a manifest it is scoped to.

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ is in the workspace").to_path_buf()
}

/// The openAPIV3Schema of the first (only) version of a CRD, as JSON.
pub fn openapi_schema(crd: &CustomResourceDefinition) -> Value {
    let version = &crd.spec.versions[0];
    let schema =
        version.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).expect("CRD has a schema");
    serde_json::to_value(schema).expect("schema serializes")
}

/// The CRD serving `kind`.
pub fn crd_for_kind(kind: &str) -> Option<CustomResourceDefinition> {
    sapllm_crds::generate::crds().into_iter().find(|c| c.spec.names.kind == kind)
}

/// Violations of the Kubernetes structural-schema rules, each with its JSON path.
///
/// A schema is structural when every node names a non-empty `type` (unless it is
/// `x-kubernetes-int-or-string` or `x-kubernetes-preserve-unknown-fields`), there is no `$ref`,
/// `definitions`, or `additionalProperties` next to `properties`, and the logical junctors
/// (allOf/anyOf/oneOf/not) carry no type, description, default, nullable or additionalProperties.
pub fn structural_violations(schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk_structural(schema, "", false, &mut out);
    out
}

fn walk_structural(node: &Value, path: &str, in_junctor: bool, out: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        out.push(format!("{path}: schema node is not an object"));
        return;
    };
    for forbidden in ["$ref", "definitions", "$defs"] {
        if obj.contains_key(forbidden) {
            out.push(format!("{path}: has `{forbidden}`"));
        }
    }
    let escape = obj.get("x-kubernetes-int-or-string") == Some(&json!(true))
        || obj.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    if in_junctor {
        for forbidden in ["type", "description", "default", "nullable", "additionalProperties"] {
            if obj.contains_key(forbidden) {
                out.push(format!("{path}: `{forbidden}` inside allOf/anyOf/oneOf/not"));
            }
        }
    } else if !escape {
        match obj.get("type") {
            Some(Value::String(t)) if !t.is_empty() => {}
            _ => out.push(format!("{path}: no type")),
        }
    }
    if obj.contains_key("properties") && obj.contains_key("additionalProperties") {
        out.push(format!("{path}: both properties and additionalProperties"));
    }
    if let Some(Value::Object(props)) = obj.get("properties") {
        for (name, child) in props {
            walk_structural(child, &format!("{path}.{name}"), in_junctor, out);
        }
    }
    if let Some(items) = obj.get("items") {
        walk_structural(items, &format!("{path}[]"), in_junctor, out);
    }
    if let Some(ap @ Value::Object(_)) = obj.get("additionalProperties") {
        walk_structural(ap, &format!("{path}{{}}"), in_junctor, out);
    }
    for junctor in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(branches)) = obj.get(junctor) {
            for (i, b) in branches.iter().enumerate() {
                walk_structural(b, &format!("{path}.{junctor}[{i}]"), true, out);
            }
        }
    }
    if let Some(not) = obj.get("not") {
        walk_structural(not, &format!("{path}.not"), true, out);
    }
}

/// Turns OpenAPI v3 (as CRDs write it) into JSON Schema: `nullable: true` admits null,
/// int-or-string admits both. Unknown `x-kubernetes-*` keys are ignored by the validator.
pub fn to_json_schema(node: &Value) -> Value {
    match node {
        Value::Object(obj) => {
            let mut out = serde_json::Map::new();
            for (k, v) in obj {
                let v = match k.as_str() {
                    // `default` and `enum` hold instance values, not schemas.
                    "default" | "enum" | "example" | "x-kubernetes-validations" => v.clone(),
                    "properties" => Value::Object(
                        v.as_object()
                            .into_iter()
                            .flatten()
                            .map(|(n, s)| (n.clone(), to_json_schema(s)))
                            .collect(),
                    ),
                    _ => to_json_schema(v),
                };
                out.insert(k.clone(), v);
            }
            if obj.get("x-kubernetes-int-or-string") == Some(&json!(true)) {
                out.remove("type");
                out.insert("type".into(), json!(["integer", "string"]));
            }
            if obj.get("nullable") == Some(&json!(true)) {
                if let Some(Value::String(t)) = out.get("type").cloned() {
                    out.insert("type".into(), json!([t, "null"]));
                }
                if let Some(Value::Array(e)) = out.get_mut("enum") {
                    e.push(Value::Null);
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(to_json_schema).collect()),
        other => other.clone(),
    }
}

/// A JSON-schema validator for manifests of the CRD's kind.
pub fn validator_for(crd: &CustomResourceDefinition) -> jsonschema::Validator {
    let schema = to_json_schema(&openapi_schema(crd));
    jsonschema::validator_for(&schema).expect("CRD schema compiles as JSON Schema")
}

/// Schema (JSON Schema) errors of a manifest, as "path: message" lines.
pub fn schema_errors(crd: &CustomResourceDefinition, manifest: &Value) -> Vec<String> {
    let validator = validator_for(crd);
    validator.iter_errors(manifest).map(|e| format!("{}: {}", e.instance_path(), e)).collect()
}

/// Evaluates every CEL rule of the schema on the manifest, as the API server does at apply time.
/// Returns "path: message" for each rule that is false or fails to evaluate.
pub fn cel_violations(schema: &Value, manifest: &Value) -> Vec<String> {
    // The API server defaults before it validates, so rules see defaulted objects.
    let mut defaulted = manifest.clone();
    apply_defaults(schema, &mut defaulted);
    let mut out = Vec::new();
    walk_cel(schema, &defaulted, "", &mut out);
    out
}

/// Fills absent properties that have a schema `default`, recursively, as the API server does.
pub fn apply_defaults(schema: &Value, value: &mut Value) {
    if let (Some(Value::Object(props)), Some(obj)) = (schema.get("properties"), value.as_object_mut()) {
        for (name, child_schema) in props {
            if !obj.contains_key(name)
                && let Some(default) = child_schema.get("default")
            {
                obj.insert(name.clone(), default.clone());
            }
            if let Some(child) = obj.get_mut(name) {
                apply_defaults(child_schema, child);
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array_mut()) {
        for child in arr {
            apply_defaults(items, child);
        }
    }
}

fn walk_cel(schema: &Value, value: &Value, path: &str, out: &mut Vec<String>) {
    if value.is_null() {
        return;
    }
    if let Some(Value::Array(rules)) = schema.get("x-kubernetes-validations") {
        for rule in rules {
            let expr = rule["rule"].as_str().unwrap_or_default();
            let message = rule.get("message").and_then(Value::as_str).unwrap_or(expr);
            match eval_rule(expr, value) {
                Ok(true) => {}
                Ok(false) => out.push(format!("{path}: {message}")),
                Err(e) => out.push(format!("{path}: rule `{expr}` failed to evaluate: {e}")),
            }
        }
    }
    if let (Some(Value::Object(props)), Some(obj)) = (schema.get("properties"), value.as_object()) {
        for (name, child_schema) in props {
            if let Some(child) = obj.get(name) {
                walk_cel(child_schema, child, &format!("{path}.{name}"), out);
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), value.as_array()) {
        for (i, child) in arr.iter().enumerate() {
            walk_cel(items, child, &format!("{path}[{i}]"), out);
        }
    }
}

fn eval_rule(expr: &str, value: &Value) -> Result<bool, String> {
    let program = cel::Program::compile(expr).map_err(|e| e.to_string())?;
    let mut ctx = cel::Context::default();
    ctx.add_variable("self", value.clone()).map_err(|e| e.to_string())?;
    match program.execute(&ctx).map_err(|e| e.to_string())? {
        cel::Value::Bool(b) => Ok(b),
        other => Err(format!("rule returned {other:?}, not a bool")),
    }
}

/// Schema and CEL errors of a manifest (YAML text) for the CRD of its kind.
pub fn manifest_errors(yaml: &str) -> Result<Vec<String>, String> {
    let manifest: Value = serde_yaml::from_str(yaml).map_err(|e| format!("not YAML: {e}"))?;
    let kind = manifest["kind"].as_str().ok_or("manifest has no kind")?;
    let crd = crd_for_kind(kind).ok_or_else(|| format!("no sapllm CRD serves kind {kind}"))?;
    if manifest["apiVersion"] != json!(format!("{}/{}", sapllm_crds::GROUP, sapllm_crds::VERSION)) {
        return Ok(vec![format!("apiVersion must be {}/{}", sapllm_crds::GROUP, sapllm_crds::VERSION)]);
    }
    let mut errors = schema_errors(&crd, &manifest);
    errors.extend(cel_violations(&openapi_schema(&crd), &manifest));
    Ok(errors)
}
