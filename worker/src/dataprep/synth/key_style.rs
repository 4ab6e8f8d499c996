//! Key spellings of extraction systems. The generator writes the models' snake-case keys; real
//! extraction writes `invoiceNumber`, `InvoiceNumber`, `vendor_id`, `{"Supplier": {"Id": ..}}`.
//! [`respell`] rewrites a document's keys in one family of spellings without changing a value,
//! and only where the engine's normalization reads the result back to the same document (a
//! spelling that would not is left canonical), so a respelled document has the same target.
//!
//! Data-prep respells a share of documents in the [`KeyStyle::SEEN`] families. [`KeyStyle::Unseen`]
//! is held out: training never sees it, evaluation scores the test split in it separately.

use rand::Rng;
use rand::rngs::SmallRng;
use serde_json::{Map, Value, json};

use sapllm_sap::catalog::Catalog;
use sapllm_sap::documents::DocType;
use sapllm_sap::documents::normalize::builtin_aliases;

/// A family of key spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStyle {
    /// `invoiceNumber`, `lineItems`... (camel case of the models' names).
    Camel,
    /// `InvoiceNumber`.
    Pascal,
    /// Another name for the field, from the built-in alias groups (`vendor_id`, `qty`, `uom`).
    Aliased,
    /// Held out from training: `Title Case` header keys, `kebab-case` line keys, lines under
    /// `Positions`, supplier and customer facts nested (`{"Supplier": {"Id": .., "Name": ..}}`).
    Unseen,
}

impl KeyStyle {
    /// The families training data is written in.
    pub const SEEN: [KeyStyle; 3] = [KeyStyle::Camel, KeyStyle::Pascal, KeyStyle::Aliased];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyStyle::Camel => "camel",
            KeyStyle::Pascal => "pascal",
            KeyStyle::Aliased => "aliased",
            KeyStyle::Unseen => "unseen",
        }
    }
}

fn words(key: &str) -> impl Iterator<Item = &str> {
    key.split('_').filter(|w| !w.is_empty())
}

fn capitalized(w: &str) -> String {
    let mut c = w.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

fn camel(key: &str) -> String {
    words(key).enumerate().map(|(i, w)| if i == 0 { w.to_string() } else { capitalized(w) }).collect()
}

fn pascal(key: &str) -> String {
    words(key).map(capitalized).collect()
}

fn title(key: &str) -> String {
    words(key).map(capitalized).collect::<Vec<_>>().join(" ")
}

fn kebab(key: &str) -> String {
    words(key).collect::<Vec<_>>().join("-")
}

/// The built-in aliases of `field`, in a seeded order.
fn aliases_of(field: &str, r: &mut SmallRng) -> Vec<String> {
    let mut out: Vec<String> =
        builtin_aliases().iter().filter(|g| g.field == field).flat_map(|g| g.aliases.clone()).collect();
    // Fisher-Yates with the document's own stream: reproducible per document.
    for i in (1..out.len()).rev() {
        out.swap(i, r.random_range(0..=i));
    }
    out
}

/// Whether the engine reads alias `alias` as field `field` (on a line when `line`).
type Reads<'a> = &'a dyn Fn(&str, &str, bool) -> bool;

fn respell_object(
    obj: &Map<String, Value>,
    style: KeyStyle,
    line: bool,
    reads: Reads,
    r: &mut SmallRng,
) -> Map<String, Value> {
    let mut out = Map::new();
    let mut nested: Map<String, Value> = Map::new();
    for (k, v) in obj {
        let v = match v {
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|x| match x.as_object() {
                        Some(o) => Value::Object(respell_object(o, style, true, reads, r)),
                        None => x.clone(),
                    })
                    .collect(),
            ),
            other => other.clone(),
        };
        let key = match style {
            KeyStyle::Camel => camel(k),
            KeyStyle::Pascal => pascal(k),
            KeyStyle::Aliased => aliases_of(k, r)
                .into_iter()
                .find(|a| !out.contains_key(a) && reads(a, k, line))
                .unwrap_or(k.clone()),
            KeyStyle::Unseen if k == "items" => "Positions".to_string(),
            KeyStyle::Unseen if line => kebab(k),
            KeyStyle::Unseen => {
                if let Some(rest) = k.strip_prefix("supplier_").or_else(|| k.strip_prefix("customer_")) {
                    let owner = if k.starts_with("supplier_") { "Supplier" } else { "Customer" };
                    let inner = nested.entry(owner).or_insert_with(|| Value::Object(Map::new()));
                    inner.as_object_mut().expect("an object").insert(title(rest), v);
                    continue;
                }
                title(k)
            }
        };
        out.insert(key, v);
    }
    out.extend(nested);
    out
}

/// `adc_json` (canonical keys, of type `doc_type`) with its keys in `style`, or unchanged where
/// the catalog's normalization would not read the respelled keys back to the same document.
/// The second value says whether it was respelled.
pub fn respell(
    catalog: &Catalog,
    doc_type: DocType,
    adc_json: &Value,
    style: KeyStyle,
    r: &mut SmallRng,
) -> (Value, bool) {
    let Some(obj) = adc_json.as_object() else { return (adc_json.clone(), false) };
    let reads = |alias: &str, field: &str, line: bool| {
        let one = |k: &str| {
            let mut m = Map::new();
            m.insert(k.to_string(), if k == "items" { json!([{}]) } else { json!("x") });
            Value::Object(m)
        };
        let probe = if line { json!({"items": [one(alias)]}) } else { one(alias) };
        let n = catalog.normalize(doc_type, &probe).document;
        let at = if line { &n["items"][0] } else { &n };
        at.get(field).is_some()
    };
    let respelled = Value::Object(respell_object(obj, style, false, &reads, r));
    let back = catalog.normalize(doc_type, &respelled);
    if back.document == *adc_json && back.unmapped.is_empty() {
        (respelled, true)
    } else {
        (adc_json.clone(), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn spellings_of_each_family() {
        assert_eq!(camel("supplier_vat_id"), "supplierVatId");
        assert_eq!(pascal("po_number"), "PoNumber");
        assert_eq!(title("invoice_date"), "Invoice Date");
        assert_eq!(kebab("unit_price"), "unit-price");
    }

    #[test]
    fn the_unseen_family_nests_partner_facts_and_reads_back() {
        let doc = json!({"invoice_number": "R-1", "supplier_id": "100347", "supplier_name": "ACME",
            "gross_amount": 10.0, "items": [{"unit_price": 2.5, "quantity": 4.0}]});
        let mut r = SmallRng::seed_from_u64(1);
        let (v, changed) =
            respell(&Catalog::builtin(), DocType::SupplierInvoice, &doc, KeyStyle::Unseen, &mut r);
        assert!(changed);
        assert_eq!(v["Supplier"]["Id"], "100347");
        assert_eq!(v["Positions"][0]["unit-price"], 2.5);
        assert_eq!(v["Invoice Number"], "R-1");
    }
}
