//! OData V2 wire formats SAP expects in a create body, which the specs leave implicit:
//! dates as `"/Date(<ms since epoch>)/"`, item numbers as zero-padded strings (`"00010"`),
//! decimals as strings rounded to the property's scale.

use chrono::NaiveDate;

/// `2024-03-15` -> `"/Date(1710460800000)/"` (midnight UTC, as SAP sends Edm.DateTime dates).
pub fn date(d: NaiveDate) -> String {
    let ms = d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc().timestamp_millis();
    format!("/Date({ms})/")
}

/// Parses `"/Date(1710460800000)/"` (an optional `+0000` offset is ignored) back to a date.
pub fn parse_date(s: &str) -> Option<NaiveDate> {
    let inner = s.strip_prefix("/Date(")?.strip_suffix(")/")?;
    let digits_end =
        inner.char_indices().skip(1).find(|(_, c)| *c == '+' || *c == '-').map_or(inner.len(), |(i, _)| i);
    let ms: i64 = inner[..digits_end].parse().ok()?;
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.date_naive())
}

/// Item number `index` (0-based) with `step`, zero-padded to `width`: (0, 10, 5) -> "00010".
pub fn item_number(index: usize, step: u32, width: usize) -> String {
    format!("{:0width$}", (index as u64 + 1) * step as u64, width = width)
}

/// A decimal as OData V2 JSON sends it: a string rounded to `scale` places, trailing zeros
/// trimmed ("12.5", "10", "-3.125").
pub fn decimal(v: f64, scale: u32) -> String {
    let s = format!("{:.*}", scale as usize, v);
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    if s == "-0" { "0".to_string() } else { s }
}

/// Parses a decimal sent as a string (or a JSON number a model wrote instead).
pub fn parse_decimal(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::String(s) => s.trim().parse().ok(),
        serde_json::Value::Number(n) => n.as_f64(),
        _ => None,
    }
}

/// Digits before and after the decimal point of a decimal string: ("1234.5" -> (4, 1)).
pub fn decimal_digits(s: &str) -> (usize, usize) {
    let s = s.trim().trim_start_matches(['-', '+']);
    match s.split_once('.') {
        Some((i, f)) => (i.trim_start_matches('0').len().max(usize::from(!i.is_empty())), f.len()),
        None => (s.trim_start_matches('0').len().max(1), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_in_odata_v2_format() {
        let d = NaiveDate::from_ymd_opt(2024, 3, 15).unwrap();
        assert_eq!(date(d), "/Date(1710460800000)/");
        assert_eq!(parse_date("/Date(1710460800000)/"), Some(d));
        assert_eq!(parse_date("/Date(1710460800000+0000)/"), Some(d));
        assert_eq!(parse_date("2024-03-15"), None);
    }

    #[test]
    fn item_numbers_are_zero_padded() {
        assert_eq!(item_number(0, 10, 5), "00010");
        assert_eq!(item_number(2, 10, 6), "000030");
        assert_eq!(item_number(0, 1, 4), "0001");
    }

    #[test]
    fn decimals_round_to_scale_and_count_digits() {
        assert_eq!(decimal(12.5, 3), "12.5");
        assert_eq!(decimal(10.0, 3), "10");
        assert_eq!(decimal(1.23456, 3), "1.235");
        assert_eq!(decimal(-0.0001, 3), "0");
        assert_eq!(decimal_digits("1234.50"), (4, 2));
        assert_eq!(decimal_digits("0.5"), (1, 1));
    }
}
