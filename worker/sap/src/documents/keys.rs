//! Key spelling: extraction systems write `netPrice`, `NetPrice`, `net-price`, `NET_PRICE` or
//! `net price` for the same field. Every key is compared in one spelling, snake case.

/// `s` in snake case: words split at separators (`_ - . /` and whitespace) and at case changes
/// (`poNumber`, `PONumber`, `VendorID` -> `po_number`, `po_number`, `vendor_id`), lower-cased,
/// with no empty words.
pub fn snake_case(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len() + 4);
    let mut boundary = false;
    for (i, &c) in chars.iter().enumerate() {
        if c == '_' || c == '-' || c == '.' || c == '/' || c.is_whitespace() {
            boundary = true;
            continue;
        }
        if c.is_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            // `poNumber`, `item2Code`: lower or digit before an upper starts a word; `PONumber`:
            // the last upper of a run starts a word when a lower follows it.
            if prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_lower) {
                boundary = true;
            }
        }
        if boundary && !out.is_empty() {
            out.push('_');
        }
        boundary = false;
        out.extend(c.to_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::snake_case;

    #[test]
    fn every_common_spelling_becomes_snake_case() {
        for (input, want) in [
            ("netPrice", "net_price"),
            ("NetPrice", "net_price"),
            ("net-price", "net_price"),
            ("NET_PRICE", "net_price"),
            ("net price", "net_price"),
            ("PONumber", "po_number"),
            ("VendorID", "vendor_id"),
            ("vendor.id", "vendor_id"),
            ("item2Code", "item2_code"),
            ("address1", "address1"),
            ("__total__amount_", "total_amount"),
            ("Supplier Invoice", "supplier_invoice"),
            ("already_snake", "already_snake"),
        ] {
            assert_eq!(snake_case(input), want, "{input}");
        }
    }
}
