//! Lenient scalar types for extracted documents. Extraction systems emit OCR-ish values: amounts as
//! numbers or as strings in either locale ("1.234,50", "1,234.50", "100.00-"), dates in several
//! formats. These parse them once, at the boundary, and serialise canonically (number, ISO date).

use std::fmt;

use chrono::NaiveDate;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A monetary amount or quantity.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Amount(pub f64);

impl Amount {
    /// Parses an amount as written on a document. `None` when it is not a number at all.
    pub fn parse(raw: &str) -> Option<Amount> {
        let mut s: String = raw.chars().filter(|c| !c.is_whitespace() && *c != '\'').collect();
        let mut negative = false;
        if s.starts_with('(') && s.ends_with(')') {
            negative = true;
            s = s[1..s.len() - 1].to_string();
        }
        // SAP-style trailing minus: "100.00-".
        if let Some(stripped) = s.strip_suffix('-') {
            negative = true;
            s = stripped.to_string();
        }
        let s = s.trim_start_matches(|c: char| c.is_alphabetic() || "€$£¥".contains(c));
        let s = s.trim_end_matches(|c: char| c.is_alphabetic() || "€$£¥".contains(c));
        let (s, neg2) = match s.strip_prefix('-') {
            Some(r) => (r, true),
            None => (s, false),
        };
        let normalised = match (s.rfind('.'), s.rfind(',')) {
            // Both present: the later one is the decimal separator.
            (Some(d), Some(c)) if c > d => s.replace('.', "").replace(',', "."),
            (Some(_), Some(_)) => s.replace(',', ""),
            // Only commas: a decimal comma when exactly 1-2 digits follow the last one.
            (None, Some(c)) if s.matches(',').count() == 1 && (1..=2).contains(&(s.len() - c - 1)) => {
                s.replace(',', ".")
            }
            (None, Some(_)) => s.replace(',', ""),
            _ => s.to_string(),
        };
        if normalised.is_empty() || !normalised.chars().all(|c| c.is_ascii_digit() || c == '.') {
            return None;
        }
        let v: f64 = normalised.parse().ok()?;
        Some(Amount(if negative ^ neg2 { -v } else { v }))
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Amount;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an amount: a number or a string such as \"1,234.50\" or \"1.234,50\"")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Amount, E> {
                Ok(Amount(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Amount, E> {
                Ok(Amount(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Amount, E> {
                Ok(Amount(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Amount, E> {
                Amount::parse(v)
                    .ok_or_else(|| E::custom(format!("{v:?} is not an amount (write e.g. 1234.50)")))
            }
        }
        d.deserialize_any(V)
    }
}

/// A calendar date written in any common document format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LooseDate(pub NaiveDate);

const MONTHS: [&str; 12] =
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];

impl LooseDate {
    /// Parses ISO `2024-03-15`, German `15.03.2024`, US `03/15/2024` (day first when the first
    /// number exceeds 12), `15 Mar 2024`, `Mar 15, 2024`, `20240315` and OData `/Date(ms)/`.
    pub fn parse(raw: &str) -> Option<LooseDate> {
        let s = raw.trim();
        if let Some(d) = crate::odata::parse_date(s) {
            return Some(LooseDate(d));
        }
        let ymd = |y: i32, m: u32, d: u32| NaiveDate::from_ymd_opt(y, m, d).map(LooseDate);
        let nums: Vec<&str> =
            s.split(|c: char| !c.is_ascii_alphanumeric()).filter(|p| !p.is_empty()).collect();
        if nums.len() == 1 && s.len() == 8 && s.chars().all(|c| c.is_ascii_digit()) {
            return ymd(s[..4].parse().ok()?, s[4..6].parse().ok()?, s[6..].parse().ok()?);
        }
        if nums.len() != 3 {
            return None;
        }
        let month_of = |p: &str| {
            let p = p.to_ascii_lowercase();
            MONTHS.iter().position(|m| p.starts_with(m)).map(|i| i as u32 + 1)
        };
        let n = |p: &str| p.parse::<u32>().ok();
        if let Some(m) = month_of(nums[1]) {
            return ymd(nums[2].parse().ok()?, m, n(nums[0])?);
        }
        if let Some(m) = month_of(nums[0]) {
            return ymd(nums[2].parse().ok()?, m, n(nums[1])?);
        }
        let (a, b, c) = (n(nums[0])?, n(nums[1])?, n(nums[2])?);
        if nums[0].len() == 4 {
            return ymd(a as i32, b, c);
        }
        if s.contains('/') && a <= 12 {
            return ymd(c as i32, a, b);
        }
        ymd(c as i32, b, a)
    }
}

impl Serialize for LooseDate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0.format("%Y-%m-%d"))
    }
}

impl<'de> Deserialize<'de> for LooseDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        LooseDate::parse(&s)
            .ok_or_else(|| de::Error::custom(format!("{s:?} is not a date (write e.g. 2024-03-15)")))
    }
}

/// Deserialises an optional code/ID leniently: strings are trimmed, numbers become strings
/// ("4711" and 4711 are the same supplier), empty strings are absent.
pub fn opt_code<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match v {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => {
            let t = s.trim();
            (!t.is_empty()).then(|| t.to_string())
        }
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(serde_json::Value::Bool(b)) => Some(b.to_string()),
        Some(other) => return Err(de::Error::custom(format!("expected a text value, found {other}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_in_both_locales_and_sap_sign_style() {
        assert_eq!(Amount::parse("1.234,50"), Some(Amount(1234.5)));
        assert_eq!(Amount::parse("1,234.50"), Some(Amount(1234.5)));
        assert_eq!(Amount::parse("EUR 99,9"), Some(Amount(99.9)));
        assert_eq!(Amount::parse("1,234"), Some(Amount(1234.0)));
        assert_eq!(Amount::parse("100.00-"), Some(Amount(-100.0)));
        assert_eq!(Amount::parse("(5.00)"), Some(Amount(-5.0)));
        assert_eq!(Amount::parse("n/a"), None);
    }

    #[test]
    fn dates_parse_in_document_formats() {
        let d = LooseDate(NaiveDate::from_ymd_opt(2024, 3, 15).unwrap());
        for s in [
            "2024-03-15",
            "15.03.2024",
            "03/15/2024",
            "15/03/2024",
            "15 Mar 2024",
            "March 15, 2024",
            "20240315",
        ] {
            assert_eq!(LooseDate::parse(s), Some(d), "{s}");
        }
        assert_eq!(LooseDate::parse("31.02.2024"), None);
        assert_eq!(LooseDate::parse("soon"), None);
    }
}
