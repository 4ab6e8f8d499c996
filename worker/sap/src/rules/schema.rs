//! Catalog-driven checks of one entity and its deep-insert children: mandatory fields, unknown
//! fields, lengths, decimal precision, date format, item numbering, currency codes.

use serde_json::Value;

use super::{RuleOutcome, Severity};
use crate::catalog::{EdmType, EntitySpec, ItemNumbering};
use crate::odata;

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") }
}

/// The entries of a to-many navigation, accepting both `{"results": [...]}` and a bare array.
pub(super) fn nav_results(v: &Value) -> Option<&Vec<Value>> {
    match v {
        Value::Array(a) => Some(a),
        Value::Object(o) => o.get("results").and_then(Value::as_array),
        _ => None,
    }
}

pub(super) fn check_entity(
    e: &EntitySpec,
    v: &Value,
    prefix: &str,
    numbering: Option<&ItemNumbering>,
    out: &mut Vec<RuleOutcome>,
) {
    let Some(obj) = v.as_object() else {
        out.push(RuleOutcome::new(
            "required_field",
            Severity::Error,
            false,
            prefix,
            format!("{prefix} must be a JSON object of {}", e.entity_set),
        ));
        return;
    };
    for f in e.fields.iter().filter(|f| f.mandatory) {
        let present = obj.get(&f.name).is_some_and(|x| !x.is_null() && x.as_str() != Some(""));
        let msg = if present {
            format!("{} is set", f.name)
        } else {
            format!(
                "{} is mandatory for a create of {} but missing; take it from the document or master data",
                f.name, e.entity_set
            )
        };
        out.push(RuleOutcome::new("required_field", Severity::Error, present, join(prefix, &f.name), msg));
    }
    let before = out.len();
    let mut checked_any = false;
    for (name, val) in obj {
        // Paths are built only where an outcome needs one (most fields pass).
        let path = || join(prefix, name);
        if let Some(nav) = e.navigation(name) {
            let path = path();
            if nav.many {
                match nav_results(val) {
                    Some(items) => {
                        for (i, it) in items.iter().enumerate() {
                            check_entity(
                                &nav.entity,
                                it,
                                &format!("{path}[{i}]"),
                                nav.item_numbering.as_ref(),
                                out,
                            );
                        }
                    }
                    None => out.push(RuleOutcome::new(
                        "required_items",
                        Severity::Error,
                        false,
                        path.clone(),
                        format!("{name} is a deep insert: send {{\"results\": [ ... ]}}"),
                    )),
                }
            } else {
                check_entity(&nav.entity, val, &path, None, out);
            }
            continue;
        }
        let Some(f) = e.field(name) else {
            out.push(RuleOutcome::new(
                "unknown_field",
                Severity::Error,
                false,
                path(),
                format!("{name} is not a property of {}; SAP rejects unknown properties", e.entity_type),
            ));
            continue;
        };
        if !f.creatable {
            out.push(RuleOutcome::new(
                "unknown_field",
                Severity::Error,
                false,
                path(),
                format!("{name} is assigned by SAP (not creatable); leave it out of the create"),
            ));
            continue;
        }
        checked_any = true;
        check_value(f, val, &path, numbering.is_some_and(|n| n.field == *name), out);
    }
    if checked_any && out.len() == before {
        out.push(RuleOutcome::new(
            "field_format",
            Severity::Error,
            true,
            prefix,
            format!("all properties of {} have valid types, lengths and formats", e.entity_set),
        ));
    }
    for nav in &e.navigations {
        if nav.required {
            let n = obj.get(&nav.name).and_then(nav_results).map_or(0, Vec::len);
            let msg = if n > 0 {
                format!("{} has {n} item(s)", nav.name)
            } else {
                format!("{} needs at least one item for a create of {}", nav.name, e.entity_set)
            };
            out.push(RuleOutcome::new(
                "required_items",
                Severity::Error,
                n > 0,
                join(prefix, &nav.name),
                msg,
            ));
        }
    }
    if !e.items_required_any_of.is_empty() {
        let any = e
            .items_required_any_of
            .iter()
            .any(|n| obj.get(n).and_then(nav_results).is_some_and(|r| !r.is_empty()));
        let names = e.items_required_any_of.join(" or ");
        let msg =
            if any { format!("has items in {names}") } else { format!("needs at least one item in {names}") };
        out.push(RuleOutcome::new("required_items", Severity::Error, any, join(prefix, &names), msg));
    }
}

fn check_value(
    f: &crate::catalog::FieldSpec,
    v: &Value,
    path: &dyn Fn() -> String,
    item_number: bool,
    out: &mut Vec<RuleOutcome>,
) {
    let fail = |out: &mut Vec<RuleOutcome>, rule: &str, msg: String| {
        out.push(RuleOutcome::new(rule, Severity::Error, false, path(), msg));
    };
    match f.edm_type {
        EdmType::String => {
            let Some(s) = v.as_str() else {
                return fail(out, "field_format", format!("{} must be a string, got {v}", f.name));
            };
            if let Some(max) = f.max_length {
                let n = s.chars().count();
                if n > max as usize {
                    fail(
                        out,
                        "max_length",
                        format!("{} is {n} characters, longer than its maximum {max}: {s:?}", f.name),
                    );
                }
            }
            if item_number {
                let width = f.max_length.unwrap_or(5) as usize;
                if s.len() != width || !s.chars().all(|c| c.is_ascii_digit()) {
                    fail(
                        out,
                        "item_number_format",
                        format!(
                            "{} must be a zero-padded {width}-digit string (\"{:0width$}\"), got {s:?}",
                            f.name, 10
                        ),
                    );
                }
            }
            if f.name.ends_with("Currency") && !super::is_iso_currency(s) {
                fail(out, "currency_code", format!("{} {s:?} is not an ISO 4217 currency code", f.name));
            }
        }
        EdmType::Decimal => {
            let Some(s) = v.as_str() else {
                return fail(
                    out,
                    "decimal_precision",
                    format!("{} is Edm.Decimal: send it as a string such as \"12.50\", got {v}", f.name),
                );
            };
            if s.trim().parse::<f64>().is_err() {
                return fail(out, "decimal_precision", format!("{} {s:?} is not a decimal number", f.name));
            }
            let (int, frac) = odata::decimal_digits(s);
            let scale = f.scale.unwrap_or(0) as usize;
            let int_max = (f.precision.unwrap_or(16) as usize).saturating_sub(scale);
            if frac > scale || int > int_max {
                fail(
                    out,
                    "decimal_precision",
                    format!(
                        "{} {s:?} exceeds Edm.Decimal({},{scale}): at most {int_max} integer and {scale} decimal digits",
                        f.name,
                        f.precision.unwrap_or(16)
                    ),
                );
            }
        }
        EdmType::DateTime | EdmType::DateTimeOffset if v.as_str().and_then(odata::parse_date).is_none() => {
            fail(
                out,
                "date_format",
                format!("{} must be an OData V2 date \"/Date(<ms since epoch>)/\", got {v}", f.name),
            );
        }
        EdmType::Boolean if !v.is_boolean() => {
            fail(out, "field_format", format!("{} must be true or false, got {v}", f.name))
        }
        EdmType::Int16 | EdmType::Int32 | EdmType::Byte if !v.is_i64() => {
            fail(out, "field_format", format!("{} must be an integer, got {v}", f.name))
        }
        _ => {}
    }
}
