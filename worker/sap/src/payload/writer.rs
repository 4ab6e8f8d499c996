//! Writes one entity of a create body, formatting each value by the catalog's field spec: decimals
//! rounded to the property's scale and sent as strings, dates as `/Date(ms)/`, item numbers
//! zero-padded, defaults from the overlay filled in. Fields the catalog does not know are not
//! written, so a tenant catalog without a field never receives it.

use chrono::NaiveDate;
use serde_json::{Map, Value, json};

use super::provenance::{FieldSource, Provenance, Src};
use crate::catalog::{EntitySpec, FieldSpec};
use crate::odata;

/// Builds the JSON object of one entity, and records where each value came from.
pub struct EntityWriter<'a> {
    spec: &'a EntitySpec,
    out: Map<String, Value>,
    /// JSON pointer of this entity in the payload (`""` at the root).
    pointer: String,
    /// The document line this entity is written from (deep-insert items).
    line: Option<usize>,
    sources: Vec<FieldSource>,
}

impl<'a> EntityWriter<'a> {
    pub fn new(spec: &'a EntitySpec) -> Self {
        EntityWriter { spec, out: Map::new(), pointer: String::new(), line: None, sources: Vec::new() }
    }

    fn child(&self, spec: &'a EntitySpec, pointer: String, line: Option<usize>) -> Self {
        EntityWriter { spec, out: Map::new(), pointer, line: line.or(self.line), sources: Vec::new() }
    }

    /// Records the source of property `name`.
    fn traced(&mut self, name: &str, value: Value, src: Src, transform: &'static str) {
        let provenance = match src {
            Src::Header(f) => Provenance::Document { from: vec![f.to_string()], transform: transform.into() },
            Src::Line(f) => {
                let line = self.line.expect("a line source is written inside a deep-insert item");
                Provenance::Document { from: vec![format!("items[{line}].{f}")], transform: transform.into() }
            }
            Src::Rule(rule, from) => {
                Provenance::Derived { rule: rule.into(), from: from.iter().map(|f| f.to_string()).collect() }
            }
        };
        self.sources.push(FieldSource { pointer: format!("{}/{name}", self.pointer), provenance });
        self.out.insert(name.into(), value);
    }

    fn field(&self, name: &str) -> Option<&'a FieldSpec> {
        self.spec.field(name).filter(|f| f.creatable)
    }

    /// A text value, trimmed; absent or blank values are skipped.
    pub fn text(&mut self, name: &str, v: Option<&str>, src: Src) -> &mut Self {
        if let (Some(_), Some(v)) = (self.field(name), v.map(str::trim).filter(|s| !s.is_empty())) {
            self.traced(name, json!(v), src, "text");
        }
        self
    }

    /// A code (company code, unit, currency): trimmed and upper-cased as SAP stores codes.
    pub fn code(&mut self, name: &str, v: Option<&str>, src: Src) -> &mut Self {
        if let (Some(_), Some(v)) = (self.field(name), v.map(str::trim).filter(|s| !s.is_empty())) {
            // Most codes arrive upper-case already; only allocate a copy when one does not.
            let code =
                if v.bytes().any(|b| b.is_ascii_lowercase()) { v.to_uppercase() } else { v.to_string() };
            self.traced(name, Value::String(code), src, "code");
        }
        self
    }

    /// A decimal rounded to the field's scale, as a string.
    pub fn dec(&mut self, name: &str, v: Option<f64>, src: Src) -> &mut Self {
        if let (Some(f), Some(v)) = (self.field(name), v) {
            self.traced(name, json!(odata::decimal(v, f.scale.unwrap_or(3))), src, "decimal");
        }
        self
    }

    /// A date in OData V2 format.
    pub fn date(&mut self, name: &str, v: Option<NaiveDate>, src: Src) -> &mut Self {
        if let (Some(_), Some(d)) = (self.field(name), v) {
            self.traced(name, json!(odata::date(d)), src, "odata_date");
        }
        self
    }

    /// A boolean property (always derived: documents do not carry SAP's flags).
    pub fn flag(&mut self, name: &str, v: bool, src: Src) -> &mut Self {
        if self.field(name).is_some() {
            self.traced(name, json!(v), src, "flag");
        }
        self
    }

    /// A reference to another document's item number (PO item 10 -> "00010"), padded to this
    /// field's length.
    pub fn item_ref(&mut self, name: &str, item: Option<u32>, src: Src) -> &mut Self {
        if let (Some(f), Some(i)) = (self.field(name), item) {
            let width = f.max_length.unwrap_or(5) as usize;
            self.traced(name, json!(format!("{i:0width$}")), src, "item_number");
        }
        self
    }

    /// Deep insert of a to-many navigation: one entity per document line, numbered as the
    /// catalog says.
    pub fn items<T>(
        &mut self,
        nav: &str,
        elems: &[T],
        fill: impl FnMut(&mut EntityWriter<'a>, &T),
    ) -> &mut Self {
        let lines: Vec<(Option<usize>, &T)> = elems.iter().enumerate().map(|(i, e)| (Some(i), e)).collect();
        let mut fill = fill;
        self.items_from(nav, &lines, |w, e: &&T| fill(w, e))
    }

    /// As [`EntityWriter::items`], for elements that are not the document's lines in order:
    /// each with the line it comes from (`None`: not from a line, e.g. a tax summary).
    pub fn items_from<T>(
        &mut self,
        nav: &str,
        elems: &[(Option<usize>, T)],
        mut fill: impl FnMut(&mut EntityWriter<'a>, &T),
    ) -> &mut Self {
        let Some(n) = self.spec.navigation(nav) else { return self };
        if elems.is_empty() {
            return self;
        }
        let mut results = Vec::with_capacity(elems.len());
        for (i, (line, e)) in elems.iter().enumerate() {
            let mut w = self.child(&n.entity, format!("{}/{nav}/results/{i}", self.pointer), *line);
            if let Some(num) = &n.item_numbering
                && let Some(f) = n.entity.field(&num.field)
            {
                let width = f.max_length.unwrap_or(5) as usize;
                let v = json!(odata::item_number(i, num.step, width));
                w.traced(&num.field.clone(), v, Src::Rule("item_numbering", &[]), "item_number");
            }
            fill(&mut w, e);
            let (v, sources) = w.finish_traced();
            self.sources.extend(sources);
            results.push(v);
        }
        self.out.insert(nav.into(), json!({ "results": results }));
        self
    }

    /// Deep insert of a to-one navigation.
    pub fn one(&mut self, nav: &str, fill: impl FnOnce(&mut EntityWriter<'a>)) -> &mut Self {
        let Some(n) = self.spec.navigation(nav) else { return self };
        let mut w = self.child(&n.entity, format!("{}/{nav}", self.pointer), None);
        fill(&mut w);
        let (v, sources) = w.finish_traced();
        self.sources.extend(sources);
        self.out.insert(nav.into(), v);
        self
    }

    /// The entity, with overlay defaults for fields the document did not fill.
    pub fn finish(self) -> Value {
        self.finish_traced().0
    }

    /// The entity and the source of every value in it (this entity's and its children's).
    pub fn finish_traced(mut self) -> (Value, Vec<FieldSource>) {
        for f in &self.spec.fields {
            if let Some(d) = &f.default
                && f.creatable
                && !self.out.contains_key(&f.name)
            {
                self.out.insert(f.name.clone(), json!(d));
                let pointer = format!("{}/{}", self.pointer, f.name);
                self.sources.push(FieldSource { pointer, provenance: Provenance::CatalogDefault });
            }
        }
        (Value::Object(self.out), self.sources)
    }
}
