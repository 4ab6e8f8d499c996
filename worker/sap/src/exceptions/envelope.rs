//! The two error envelopes SAP answers with, read into one form ([`SapErrorBody`]).

use serde::Deserialize;
use serde_json::Value;

use super::{ErrorDetail, InnerError, SapErrorBody, SapMessage};

/// `error.message`: V2 writes `{"lang", "value"}`, V4 a plain string.
#[derive(Deserialize)]
#[serde(untagged)]
enum WireMessage {
    V2(SapMessage),
    V4(String),
}

/// One V4 `error.details` entry.
#[derive(Deserialize)]
struct V4Detail {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    target: Option<String>,
    /// 1 success, 2 info, 3 warning, 4 error (SAP's Common vocabulary).
    #[serde(default, rename = "@Common.numericSeverity")]
    numeric_severity: Option<u8>,
}

/// `error` as either version writes it.
#[derive(Deserialize)]
pub(super) struct WireBody {
    code: String,
    message: WireMessage,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    details: Vec<V4Detail>,
    /// V2: `{transactionid, errordetails}`; V4: free-form, kept only when it reads as V2's.
    #[serde(default)]
    innererror: Option<Value>,
}

fn severity(n: Option<u8>) -> String {
    match n {
        Some(1) => "success",
        Some(2) => "info",
        Some(3) => "warning",
        _ => "error",
    }
    .to_string()
}

impl From<WireBody> for SapErrorBody {
    fn from(w: WireBody) -> Self {
        let mut inner: Option<InnerError> = w.innererror.and_then(|v| serde_json::from_value(v).ok());
        let (lang, value) = match w.message {
            WireMessage::V2(m) => (m.lang, m.value),
            WireMessage::V4(s) => ("en".to_string(), s),
        };
        let mut details: Vec<ErrorDetail> = w
            .details
            .into_iter()
            .map(|d| ErrorDetail {
                code: d.code,
                message: d.message,
                propertyref: d.target.unwrap_or_default(),
                severity: severity(d.numeric_severity),
            })
            .collect();
        // A V4 error whose target names the property and that has no detail saying so.
        if let Some(target) = w.target.filter(|t| !t.is_empty())
            && !details.iter().any(|d| d.propertyref == target)
        {
            details.insert(
                0,
                ErrorDetail {
                    code: w.code.clone(),
                    message: value.clone(),
                    propertyref: target,
                    severity: "error".into(),
                },
            );
        }
        if !details.is_empty() {
            let i = inner
                .get_or_insert_with(|| InnerError { transactionid: String::new(), errordetails: vec![] });
            i.errordetails.extend(details);
        }
        SapErrorBody { code: w.code, message: SapMessage { lang, value }, innererror: inner }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{SapError, SapFailure};
    use serde_json::json;

    #[test]
    fn a_v4_envelope_reads_as_the_v2_one_with_the_same_facts() {
        let v4 = json!({"http_status": 400, "error": {
            "code": "M8/186", "message": "Balance not zero: 10.00 debit - 9.00 credit",
            "target": "InvoiceGrossAmount",
            "details": [{"code": "M8/187", "message": "Check the amounts", "target": "to_SupplierInvoiceItemGLAcct/0/SupplierInvoiceItemAmount", "@Common.numericSeverity": 3}],
            "innererror": {"ErrorDetails": {"@Core.ContentID": "1"}}
        }});
        let f: SapFailure = serde_json::from_value(v4).unwrap();
        assert_eq!(f.body.error.code, "M8/186");
        assert_eq!(f.body.error.message.value, "Balance not zero: 10.00 debit - 9.00 credit");
        assert_eq!(f.body.propertyref(), Some("InvoiceGrossAmount"));
        let details = &f.body.error.innererror.as_ref().unwrap().errordetails;
        assert_eq!(details.len(), 2);
        assert_eq!(details[1].severity, "warning");
        // Written back as V2, and read again unchanged.
        let v2 = serde_json::to_value(&f).unwrap();
        assert_eq!(v2["error"]["message"]["value"], "Balance not zero: 10.00 debit - 9.00 credit");
        assert_eq!(serde_json::from_value::<SapFailure>(v2).unwrap(), f);
    }

    #[test]
    fn a_v2_envelope_is_read_as_before() {
        let e = SapError::new("M7/360", "Posting period closed", "PostingDate");
        let back: SapError = serde_json::from_value(serde_json::to_value(&e).unwrap()).unwrap();
        assert_eq!(back, e);
        let bare: SapError = serde_json::from_value(
            json!({"error": {"code": "ME/006", "message": {"lang": "en", "value": "locked"}}}),
        )
        .unwrap();
        assert_eq!(bare.propertyref(), None);
        assert!(bare.error.innererror.is_none());
    }
}
