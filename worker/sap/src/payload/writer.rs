//! Writes one entity of a create body, formatting each value by the catalog's field spec: decimals
//! rounded to the property's scale and sent as strings, dates as `/Date(ms)/`, item numbers
//! zero-padded, defaults from the overlay filled in. Fields the catalog does not know are not
//! written, so a tenant catalog without a field never receives it.

use chrono::NaiveDate;
use serde_json::{Map, Value, json};

use crate::catalog::{EntitySpec, FieldSpec};
use crate::odata;

/// Builds the JSON object of one entity.
pub struct EntityWriter<'a> {
    spec: &'a EntitySpec,
    out: Map<String, Value>,
}

impl<'a> EntityWriter<'a> {
    pub fn new(spec: &'a EntitySpec) -> Self {
        EntityWriter { spec, out: Map::new() }
    }

    fn field(&self, name: &str) -> Option<&'a FieldSpec> {
        self.spec.field(name).filter(|f| f.creatable)
    }

    /// A text value, trimmed; absent or blank values are skipped.
    pub fn text(&mut self, name: &str, v: Option<&str>) -> &mut Self {
        if let (Some(_), Some(v)) = (self.field(name), v.map(str::trim).filter(|s| !s.is_empty())) {
            self.out.insert(name.into(), json!(v));
        }
        self
    }

    /// A code (company code, unit, currency): trimmed and upper-cased as SAP stores codes.
    pub fn code(&mut self, name: &str, v: Option<&str>) -> &mut Self {
        if let (Some(_), Some(v)) = (self.field(name), v.map(str::trim).filter(|s| !s.is_empty())) {
            // Most codes arrive upper-case already; only allocate a copy when one does not.
            let code =
                if v.bytes().any(|b| b.is_ascii_lowercase()) { v.to_uppercase() } else { v.to_string() };
            self.out.insert(name.into(), Value::String(code));
        }
        self
    }

    /// A decimal rounded to the field's scale, as a string.
    pub fn dec(&mut self, name: &str, v: Option<f64>) -> &mut Self {
        if let (Some(f), Some(v)) = (self.field(name), v) {
            self.out.insert(name.into(), json!(odata::decimal(v, f.scale.unwrap_or(3))));
        }
        self
    }

    /// A date in OData V2 format.
    pub fn date(&mut self, name: &str, v: Option<NaiveDate>) -> &mut Self {
        if let (Some(_), Some(d)) = (self.field(name), v) {
            self.out.insert(name.into(), json!(odata::date(d)));
        }
        self
    }

    /// A boolean property.
    pub fn flag(&mut self, name: &str, v: bool) -> &mut Self {
        if self.field(name).is_some() {
            self.out.insert(name.into(), json!(v));
        }
        self
    }

    /// A reference to another document's item number (PO item 10 -> "00010"), padded to this
    /// field's length.
    pub fn item_ref(&mut self, name: &str, item: Option<u32>) -> &mut Self {
        if let (Some(f), Some(i)) = (self.field(name), item) {
            let width = f.max_length.unwrap_or(5) as usize;
            self.out.insert(name.into(), json!(format!("{i:0width$}")));
        }
        self
    }

    /// Deep insert of a to-many navigation: one entity per element, numbered as the catalog says.
    pub fn items<T>(
        &mut self,
        nav: &str,
        elems: &[T],
        mut fill: impl FnMut(&mut EntityWriter<'a>, &T),
    ) -> &mut Self {
        let Some(n) = self.spec.navigation(nav) else { return self };
        if elems.is_empty() {
            return self;
        }
        let mut results = Vec::with_capacity(elems.len());
        for (i, e) in elems.iter().enumerate() {
            let mut w = EntityWriter::new(&n.entity);
            if let Some(num) = &n.item_numbering
                && let Some(f) = n.entity.field(&num.field)
            {
                let width = f.max_length.unwrap_or(5) as usize;
                w.out.insert(num.field.clone(), json!(odata::item_number(i, num.step, width)));
            }
            fill(&mut w, e);
            results.push(w.finish());
        }
        self.out.insert(nav.into(), json!({ "results": results }));
        self
    }

    /// Deep insert of a to-one navigation.
    pub fn one(&mut self, nav: &str, fill: impl FnOnce(&mut EntityWriter<'a>)) -> &mut Self {
        let Some(n) = self.spec.navigation(nav) else { return self };
        let mut w = EntityWriter::new(&n.entity);
        fill(&mut w);
        self.out.insert(nav.into(), w.finish());
        self
    }

    /// The entity, with overlay defaults for fields the document did not fill.
    pub fn finish(mut self) -> Value {
        for f in &self.spec.fields {
            if let Some(d) = &f.default
                && f.creatable
                && !self.out.contains_key(&f.name)
            {
                self.out.insert(f.name.clone(), json!(d));
            }
        }
        Value::Object(self.out)
    }
}
