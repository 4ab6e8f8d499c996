//! Documents as users send them, in the engine's own field names.
//!
//! Extraction systems do not write `gross_amount`: they write `totalAmount`, `invoice_total`,
//! `amount`, or a nested `{"vendor": {"id": ...}}`. [`normalize`] maps every key of an extracted
//! document onto the typed models' snake-case fields ([`super::models`]):
//!
//! 1. keys are compared in snake case ([`super::keys::snake_case`]);
//! 2. nested objects are flattened (`vendor.id` -> `vendor_id`; `totals.gross` -> `gross` when
//!    the full name means nothing; `amount.value` -> `amount`);
//! 3. a key that is not a field of the document's type at that level (header or line) is looked
//!    up in the alias groups: the tenant's own ([`crate::catalog::Catalog::aliases`]) first, then
//!    the built-in ones (`key_aliases.json`). An alias resolves to the first group whose field
//!    the document type has at that level, so `number` is the invoice number on an invoice and the
//!    order number on a purchase order;
//! 4. a field's value is coerced only between text and integer, where the model needs the other
//!    (`"supplier_id": 100347` is the code `"100347"`; `"po_item": "10"` is the item 10).
//!
//! Nothing vanishes: a key that maps to no field keeps its place in the document (the model still
//! reads it) and is listed in [`Normalized::unmapped`]; a second key for a field already filled
//! is listed there too. [`Normalized::origins`] says, for every mapped value, the path it had in
//! the document as sent: provenance names what the user wrote, not our spelling of it.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::keys::snake_case;
use super::models::*;
use super::{AdcDocument, DocType};

/// The spellings of one field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasGroup {
    /// The field of the typed document models (`gross_amount`, `items`, `unit_price`).
    pub field: String,
    /// Other names for it, in any spelling (compared in snake case).
    pub aliases: Vec<String>,
}

/// The built-in alias groups, in precedence order.
pub fn builtin_aliases() -> &'static [AliasGroup] {
    static GROUPS: OnceLock<Vec<AliasGroup>> = OnceLock::new();
    GROUPS.get_or_init(|| {
        // Compiled in and covered by tests, so a parse failure is a build defect.
        serde_json::from_str(include_str!("key_aliases.json")).expect("key_aliases.json is valid")
    })
}

/// An extracted document in canonical field names.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Normalized {
    /// The document with canonical keys (unmapped keys kept, in snake case).
    pub document: Value,
    /// Canonical path (`items[0].unit_price`) -> the path as sent (`lines[0].netPrice`).
    pub origins: BTreeMap<String, String>,
    /// Paths as sent of the keys no field took, sorted.
    pub unmapped: Vec<String>,
}

impl Normalized {
    /// The path as sent of a canonical path (itself when the key was already canonical or the
    /// path is not a mapped value).
    pub fn origin<'a>(&'a self, canonical: &'a str) -> &'a str {
        self.origins.get(canonical).map_or(canonical, String::as_str)
    }
}

/// Canonical fields of a document type: (header fields, line fields).
fn fields(t: DocType) -> &'static (Vec<String>, Vec<String>) {
    static FIELDS: OnceLock<Vec<(Vec<String>, Vec<String>)>> = OnceLock::new();
    fn keys(v: Value) -> Vec<String> {
        v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default()
    }
    fn of<H: Default + Serialize, I: Default + Serialize>() -> (Vec<String>, Vec<String>) {
        let h = keys(serde_json::to_value(H::default()).expect("models serialise"));
        let i = keys(serde_json::to_value(I::default()).expect("models serialise"));
        (h, i)
    }
    let all = FIELDS.get_or_init(|| {
        DocType::ALL
            .iter()
            .map(|t| match t {
                DocType::PurchaseOrder => of::<PurchaseOrder, OrderItem>(),
                DocType::SupplierInvoice => of::<SupplierInvoice, InvoiceItem>(),
                DocType::SupplierCreditMemo => of::<SupplierCreditMemo, InvoiceItem>(),
                DocType::SalesOrder => of::<SalesOrder, OrderItem>(),
                DocType::GoodsReceipt => of::<GoodsReceipt, DeliveryItem>(),
                DocType::OutboundDelivery => of::<OutboundDelivery, DeliveryItem>(),
                DocType::InboundDelivery => of::<InboundDelivery, DeliveryItem>(),
                DocType::SupplierMaster => (of::<SupplierMaster, OrderItem>().0, Vec::new()),
                DocType::SalesQuotation => of::<SalesQuotation, OrderItem>(),
                DocType::CustomerReturn => of::<CustomerReturn, OrderItem>(),
            })
            .collect()
    });
    &all[t.index()]
}

/// One flattened key-value pair of an object.
struct Entry<'v> {
    /// Snake-case name (nested names joined with `_`).
    key: String,
    /// Shorter names to try when `key` means nothing (a nested key's tails).
    fallbacks: Vec<String>,
    /// Path as sent.
    origin: String,
    value: &'v Value,
}

fn join_origin(prefix: &str, key: &str) -> String {
    if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") }
}

/// Flattens nested objects; arrays and scalars are leaves.
fn flatten<'v>(obj: &'v Map<String, Value>, origin: &str, words: &[String], out: &mut Vec<Entry<'v>>) {
    for (k, v) in obj {
        let origin = join_origin(origin, k);
        let mut words = words.to_vec();
        words.extend(snake_case(k).split('_').filter(|w| !w.is_empty()).map(String::from));
        match v {
            Value::Object(inner) if !inner.is_empty() => flatten(inner, &origin, &words, out),
            _ => {
                let key = words.join("_");
                let mut fallbacks = Vec::new();
                // `amount.value` is the amount; `totals.gross` is the gross.
                if words.len() > 1 && words.last().is_some_and(|w| w == "value") {
                    fallbacks.push(words[..words.len() - 1].join("_"));
                }
                for start in 1..words.len() {
                    fallbacks.push(words[start..].join("_"));
                }
                out.push(Entry { key, fallbacks, origin, value: v });
            }
        }
    }
}

fn is_line_array(v: &Value) -> bool {
    v.as_array().is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_object))
}

/// The field `name` stands for among `fields`: itself, or the first alias group (tenant groups
/// first) whose field is in `fields`. `lines` says whether the value is an array of lines
/// (only the `items` field takes those, and only those).
fn resolve(name: &str, fields: &[String], tenant: &[AliasGroup], lines: bool) -> Option<String> {
    let fits = |f: &str| fields.iter().any(|x| x == f) && ((f == "items") == lines);
    if fits(name) {
        return Some(name.to_string());
    }
    tenant
        .iter()
        .chain(builtin_aliases())
        .filter(|g| fits(&g.field))
        .find(|g| g.aliases.iter().any(|a| snake_case(a) == name))
        .map(|g| g.field.clone())
}

/// Coerces `v` between text and integer where the document model needs the other spelling.
fn coerce(t: DocType, line: bool, field: &str, v: &Value) -> Value {
    let accepts = |probe: &Value| {
        let obj = if line { json!({"items": [{field: probe}]}) } else { json!({field: probe}) };
        AdcDocument::from_json(t, &obj).is_ok()
    };
    match v {
        Value::Number(n) if !accepts(v) => Value::String(n.to_string()),
        Value::String(s) if !accepts(v) => match s.trim().parse::<u64>() {
            Ok(n) if accepts(&json!(n)) => json!(n),
            _ => v.clone(),
        },
        _ => v.clone(),
    }
}

struct Level<'a> {
    doc_type: DocType,
    fields: &'a [String],
    line_fields: &'a [String],
    /// Canonical path prefix (`items[2].`) and whether this is a line.
    prefix: String,
    line: bool,
    tenant: &'a [AliasGroup],
}

fn normalize_object(obj: &Map<String, Value>, origin: &str, lv: &Level, out: &mut Normalized) -> Value {
    let mut entries = Vec::new();
    flatten(obj, origin, &[], &mut entries);
    // Exact names first, so that an alias never takes a field the document names itself.
    let mut taken: Vec<Option<String>> = vec![None; entries.len()];
    let mut used: Vec<String> = Vec::new();
    for pass in 0..3 {
        for (i, e) in entries.iter().enumerate() {
            if taken[i].is_some() {
                continue;
            }
            let lines = is_line_array(e.value);
            let field = match pass {
                0 => {
                    lv.fields.iter().any(|f| *f == e.key && ((f == "items") == lines)).then(|| e.key.clone())
                }
                1 => resolve(&e.key, lv.fields, lv.tenant, lines),
                _ => e.fallbacks.iter().find_map(|k| resolve(k, lv.fields, lv.tenant, lines)),
            };
            if let Some(f) = field.filter(|f| !used.contains(f)) {
                used.push(f.clone());
                taken[i] = Some(f);
            }
        }
    }
    let mut doc = Map::new();
    for (e, field) in entries.iter().zip(taken) {
        match field {
            Some(f) if f == "items" => {
                let items: Vec<Value> = e
                    .value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .map(|(i, item)| {
                        let line = Level {
                            fields: lv.line_fields,
                            prefix: format!("items[{i}]."),
                            line: true,
                            ..*lv
                        };
                        let origin = format!("{}[{i}]", e.origin);
                        normalize_object(item.as_object().expect("a line is an object"), &origin, &line, out)
                    })
                    .collect();
                doc.insert(f, Value::Array(items));
            }
            Some(f) => {
                let canonical = format!("{}{f}", lv.prefix);
                if canonical != e.origin {
                    out.origins.insert(canonical, e.origin.clone());
                }
                doc.insert(f.clone(), coerce(lv.doc_type, lv.line, &f, e.value));
            }
            None => {
                out.unmapped.push(e.origin.clone());
                // Kept for the model to read, under a name that cannot shadow a field.
                let mut key = e.key.clone();
                while doc.contains_key(&key) || lv.fields.contains(&key) {
                    key.insert(0, '_');
                }
                doc.insert(key, e.value.clone());
            }
        }
    }
    Value::Object(doc)
}

impl Level<'_> {
    fn header<'a>(doc_type: DocType, tenant: &'a [AliasGroup]) -> Level<'a> {
        let (fields, line_fields) = fields(doc_type);
        Level { doc_type, fields, line_fields, prefix: String::new(), line: false, tenant }
    }
}

/// `adc_json` as a document of `doc_type` in canonical field names, with `tenant` alias groups
/// taking precedence over the built-in ones. A non-object is returned unchanged (the document
/// parser names that error).
pub fn normalize(doc_type: DocType, adc_json: &Value, tenant: &[AliasGroup]) -> Normalized {
    let mut out = Normalized::default();
    out.document = match adc_json.as_object() {
        Some(obj) => normalize_object(obj, "", &Level::header(doc_type, tenant), &mut out),
        None => adc_json.clone(),
    };
    out.unmapped.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_groups_name_real_fields_and_no_alias_is_also_a_field_of_its_own_group() {
        let all: Vec<&String> =
            DocType::ALL.iter().flat_map(|t| [&fields(*t).0, &fields(*t).1]).flatten().collect();
        for g in builtin_aliases() {
            assert!(all.contains(&&g.field), "alias group for unknown field {}", g.field);
            assert!(!g.aliases.contains(&g.field), "{} lists itself", g.field);
        }
    }

    #[test]
    fn extraction_spellings_map_to_the_invoice_model_with_their_origins() {
        let sent = json!({
            "InvoiceNumber": "RE-2026-00412",
            "date": "2026-03-02",
            "vendor": {"id": 100347, "name": "Bürobedarf GmbH"},
            "totalAmount": "1.190,00",
            "Currency": "eur",
            "companyCode": 1010,
            "lineItems": [{"netPrice": 2.5, "qty": 4, "PONumber": 4500000012u64, "poItem": "10", "colour": "red"}],
            "delivery_terms_note": "FOB"
        });
        let n = normalize(DocType::SupplierInvoice, &sent, &[]);
        let d = &n.document;
        assert_eq!(d["invoice_number"], "RE-2026-00412");
        assert_eq!(d["invoice_date"], "2026-03-02");
        assert_eq!(d["supplier_id"], "100347", "a numeric supplier id is the code \"100347\"");
        assert_eq!(d["supplier_name"], "Bürobedarf GmbH");
        assert_eq!(d["gross_amount"], "1.190,00");
        assert_eq!(d["company_code"], "1010");
        let line = &d["items"][0];
        assert_eq!(line["unit_price"], 2.5);
        assert_eq!(line["quantity"], 4);
        assert_eq!(line["po_number"], "4500000012");
        assert_eq!(line["po_item"], 10, "an integer field written as text is the integer");
        assert_eq!(n.origin("supplier_id"), "vendor.id");
        assert_eq!(n.origin("items[0].unit_price"), "lineItems[0].netPrice");
        assert_eq!(n.origin("gross_amount"), "totalAmount");
        assert_eq!(n.unmapped, vec!["delivery_terms_note".to_string(), "lineItems[0].colour".to_string()]);
        assert_eq!(line["colour"], "red", "unmapped keys stay in the document the model reads");
        let doc = AdcDocument::from_json(DocType::SupplierInvoice, d).unwrap();
        let AdcDocument::SupplierInvoice(inv) = doc else { unreachable!() };
        assert_eq!(inv.gross_amount.unwrap().0, 1190.0);
        assert_eq!(inv.items[0].po_item, Some(10));
    }

    #[test]
    fn a_generic_name_means_the_fields_of_the_documents_own_type() {
        let sent = json!({"number": "N-1", "date": "2026-01-05"});
        let po = normalize(DocType::PurchaseOrder, &sent, &[]).document;
        assert_eq!((po["po_number"].as_str(), po["po_date"].as_str()), (Some("N-1"), Some("2026-01-05")));
        let inv = normalize(DocType::SupplierInvoice, &sent, &[]).document;
        assert_eq!(inv["invoice_number"], "N-1");
        let gr = normalize(DocType::GoodsReceipt, &sent, &[]).document;
        assert_eq!(
            (gr["delivery_note"].as_str(), gr["receipt_date"].as_str()),
            (Some("N-1"), Some("2026-01-05"))
        );
    }

    #[test]
    fn the_documents_own_name_wins_and_the_second_key_for_a_field_is_listed_not_lost() {
        let sent = json!({"total": 5, "gross_amount": 7});
        let n = normalize(DocType::SupplierInvoice, &sent, &[]);
        assert_eq!(n.document["gross_amount"], 7);
        assert_eq!(n.unmapped, vec!["total".to_string()]);
        assert_eq!(n.document["total"], 5);
    }

    #[test]
    fn nested_wrappers_and_tenant_aliases_resolve() {
        let sent = json!({"totals": {"gross": 9.5}, "payment": {"currency": "USD"}, "Kreditor": "77"});
        let tenant = vec![AliasGroup { field: "supplier_id".into(), aliases: vec!["kreditor".into()] }];
        let n = normalize(DocType::SupplierInvoice, &sent, &tenant);
        assert_eq!(n.document["gross_amount"], 9.5);
        assert_eq!(n.document["currency"], "USD");
        assert_eq!(n.document["supplier_id"], "77");
        assert_eq!(n.origin("currency"), "payment.currency");
        assert!(n.unmapped.is_empty(), "{:?}", n.unmapped);
        let wrapped =
            normalize(DocType::SupplierInvoice, &json!({"amount": {"value": 3, "currency": "USD"}}), &[]);
        assert_eq!(
            (wrapped.document["gross_amount"].as_i64(), wrapped.document["currency"].as_str()),
            (Some(3), Some("USD"))
        );
        let without = normalize(DocType::SupplierInvoice, &sent, &[]);
        assert!(without.unmapped.contains(&"Kreditor".to_string()));
    }

    #[test]
    fn canonical_documents_are_unchanged() {
        let sent =
            json!({"po_number": "45", "supplier_id": "100", "items": [{"material": "M", "quantity": 1.0}]});
        let n = normalize(DocType::PurchaseOrder, &sent, &[]);
        assert_eq!(n.document, sent);
        assert!(n.origins.is_empty() && n.unmapped.is_empty());
    }
}
