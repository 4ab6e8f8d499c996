//! ISO 4217 currency codes a document may carry. SAP's TCURC is tenant configuration; this list
//! covers the active ISO codes that business documents use, so a typo ("EUE", "US$") is caught.

const ISO_4217: &[&str] = &[
    "AED", "ARS", "AUD", "BGN", "BHD", "BRL", "CAD", "CHF", "CLP", "CNY", "COP", "CZK", "DKK", "EGP", "EUR",
    "GBP", "HKD", "HUF", "IDR", "ILS", "INR", "ISK", "JPY", "KES", "KRW", "KWD", "MAD", "MXN", "MYR", "NGN",
    "NOK", "NZD", "OMR", "PEN", "PHP", "PKR", "PLN", "QAR", "RON", "RSD", "RUB", "SAR", "SEK", "SGD", "THB",
    "TRY", "TWD", "UAH", "USD", "VND", "ZAR",
];

/// True for an ISO 4217 code in the list.
pub fn is_iso_currency(code: &str) -> bool {
    ISO_4217.binary_search(&code).is_ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn list_is_sorted_for_binary_search_and_rejects_typos() {
        assert!(super::ISO_4217.windows(2).all(|w| w[0] < w[1]));
        assert!(super::is_iso_currency("EUR"));
        assert!(!super::is_iso_currency("EUE"));
        assert!(!super::is_iso_currency("eur"));
    }
}
