//! The handlings a failure admits, each complete: the action with the correction, retry policy
//! and rule it would carry. The engine's decoder chooses among these and nothing else, so an
//! exception decision never carries a correction no declared rule derived, a retry of an error
//! that cannot go away by waiting, or an edit of a property the error and the request do not name.
//!
//! - A transient failure (CSRF token, 429/502/503/504, 409/423, a lock) admits RETRY, with the
//!   policy of its class, or ESCALATE.
//! - Any other SAP error admits ESCALATE and REJECT, and the correction [`resolve`] derives
//!   from the error and the request when one exists (AUTO_CORRECT: goods-movement references,
//!   a missing tax line at a known rate; APPLY_RULE: the posting date into an open period).
//! - A document blocked by the validator before posting admits ESCALATE and REJECT.

use serde_json::Value;

use super::{ExceptionAction, Resolution, RetryPolicy, SapFailure, resolve};
use crate::rules::RuleOutcome;

fn plain(action: ExceptionAction, reason: String) -> Resolution {
    Resolution { action, reason, correction: Vec::new(), retry: None, rule: None }
}

/// How a document the validator blocked is handled: REJECT for a duplicate invoice, else a
/// person supplies what is missing or inconsistent (ESCALATE).
pub fn blocked(blocking: &[RuleOutcome]) -> Resolution {
    if blocking.iter().any(|o| o.rule_id == "duplicate_invoice") {
        plain(
            ExceptionAction::Reject,
            "the invoice was already posted; posting it again would pay twice".into(),
        )
    } else {
        let fields: Vec<&str> = blocking.iter().map(|o| o.field.as_str()).take(5).collect();
        plain(
            ExceptionAction::Escalate,
            format!(
                "blocking rule(s) failed on {}; the missing or inconsistent data is not in the document, so a person must supply it",
                fields.join(", ")
            ),
        )
    }
}

fn is_transient(f: &SapFailure) -> bool {
    let msg = f.body.error.message.value.to_lowercase();
    (f.http_status == 403 && msg.contains("csrf"))
        || matches!(f.http_status, 409 | 423 | 429 | 502 | 503 | 504)
        || msg.contains("locked")
        || msg.contains("gesperrt")
}

/// Every handling `failure` (or, without one, the `blocking` rule outcomes) admits for the
/// request body `request`, the reference handling ([`resolve`], [`blocked`]) first.
pub fn admissible(
    failure: Option<&SapFailure>,
    blocking: &[RuleOutcome],
    request: &Value,
) -> Vec<Resolution> {
    let Some(f) = failure else {
        let reference = blocked(blocking);
        let other = if reference.action == ExceptionAction::Reject {
            blocked(
                &blocking.iter().filter(|o| o.rule_id != "duplicate_invoice").cloned().collect::<Vec<_>>(),
            )
        } else {
            plain(ExceptionAction::Reject, "the document must not be posted at all".into())
        };
        return vec![reference, other];
    };
    let code = &f.body.error.code;
    let reference = resolve(f, request);
    let escalate = plain(ExceptionAction::Escalate, format!("{code}: a person must decide"));
    let mut out = vec![reference.clone()];
    if is_transient(f) || reference.action == ExceptionAction::Retry {
        if reference.action != ExceptionAction::Retry {
            let policy = RetryPolicy {
                max_attempts: 3,
                initial_backoff_ms: 1000,
                multiplier: 2.0,
                refresh_csrf_token: false,
            };
            out.push(Resolution {
                retry: Some(policy),
                ..plain(ExceptionAction::Retry, format!("{code}: transient, resend after a backoff"))
            });
        }
    } else if reference.action != ExceptionAction::Reject {
        out.push(plain(ExceptionAction::Reject, format!("{code}: the document must not be posted")));
    }
    if reference.action != ExceptionAction::Escalate {
        out.push(escalate);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exceptions::SapError;
    use serde_json::json;

    fn failure(status: u16, code: &str, msg: &str) -> SapFailure {
        SapFailure { http_status: status, body: SapError::new(code, msg, "") }
    }

    fn actions(v: &[Resolution]) -> Vec<ExceptionAction> {
        v.iter().map(|r| r.action).collect()
    }

    #[test]
    fn a_transient_failure_admits_retry_or_escalation_only() {
        use ExceptionAction::*;
        let f = failure(503, "/IWFND/CM_BEC/026", "Service unavailable");
        assert_eq!(actions(&admissible(Some(&f), &[], &json!({}))), vec![Retry, Escalate]);
        let lock = failure(400, "ZZ/001", "Document 4500001 is locked by user JDOE");
        assert_eq!(actions(&admissible(Some(&lock), &[], &json!({}))), vec![Escalate, Retry]);
    }

    #[test]
    fn a_business_error_admits_no_retry_and_only_the_derived_correction() {
        use ExceptionAction::*;
        let dup = failure(400, "M8/108", "Check if invoice already posted");
        let v = admissible(Some(&dup), &[], &json!({}));
        assert_eq!(actions(&v), vec![Reject, Escalate]);
        assert!(v.iter().all(|r| r.correction.is_empty() && r.retry.is_none()));
        let gr = failure(400, "MM_IM_ODATA_API_MDOC/011", "Reference document type missing");
        let req = json!({"to_MaterialDocumentItem": {"results": [{"PurchaseOrder": "4500000001"}]}});
        let v = admissible(Some(&gr), &[], &req);
        assert_eq!(actions(&v), vec![AutoCorrect, Reject, Escalate]);
        assert!(v[0].correction.iter().all(|op| op.path == "/GoodsMovementCode"
            || op.path.starts_with("/to_MaterialDocumentItem/results/0/")));
    }

    #[test]
    fn a_blocked_document_is_escalated_or_rejected() {
        use ExceptionAction::*;
        let missing = RuleOutcome {
            rule_id: "required_field".into(),
            severity: crate::rules::Severity::Error,
            passed: false,
            field: "Supplier".into(),
            message: "Supplier is mandatory".into(),
        };
        let v = admissible(None, std::slice::from_ref(&missing), &json!({}));
        assert_eq!(actions(&v), vec![Escalate, Reject]);
        assert!(v[0].reason.contains("Supplier"));
        let dup = RuleOutcome { rule_id: "duplicate_invoice".into(), ..missing };
        assert_eq!(actions(&admissible(None, &[dup], &json!({}))), vec![Reject, Escalate]);
    }
}
