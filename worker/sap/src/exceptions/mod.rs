//! SAP-shaped failures and the action each calls for.
//!
//! [`SapError`] is the OData V2 error envelope SAP returns (`error.code` = message class/number,
//! `error.message.value`, `error.innererror.errordetails[{code, message, propertyref,
//! severity}]`). [`resolve`] maps a failure to its [`Resolution`]: the [`ExceptionAction`] and,
//! for AUTO_CORRECT/APPLY_RULE, the correction as JSON-patch-like operations on the request body,
//! for RETRY the backoff. [`scenarios`] generates realistic failures for training.
//!
//! Codes and actions from observed SAP behaviour (shared/sap/README.md): MM_IM_ODATA_API_MDOC/011
//! -> AUTO_CORRECT (add GoodsMovementRefDocType B), M7/360 -> ESCALATE, M7/053 -> ESCALATE or
//! correct the date where policy allows (APPLY_RULE), ME/006 -> RETRY with backoff, HTTP 403 CSRF
//! -> refresh token and RETRY. Modelled on SAP's documented messages: M8/186 (balance not zero),
//! M8/108 (duplicate invoice), HTTP 503 (service unavailable).

mod admissible;
mod envelope;
mod resolve;
pub mod scenarios;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use admissible::{admissible, blocked};
pub use resolve::{apply_correction, resolve};

/// What to do with a failed (or unpostable) document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExceptionAction {
    /// Fix the request mechanically (the correction says how) and resend.
    AutoCorrect,
    /// Transient: resend unchanged after a backoff.
    Retry,
    /// A person must decide (data conflict, closed period).
    Escalate,
    /// Do not post: it would be wrong (duplicate invoice).
    Reject,
    /// A configured business rule decides the fix (e.g. move the posting date into the open
    /// period); the correction carries the rule's effect.
    ApplyRule,
}

impl ExceptionAction {
    pub const ALL: [ExceptionAction; 5] = [
        ExceptionAction::AutoCorrect,
        ExceptionAction::Retry,
        ExceptionAction::Escalate,
        ExceptionAction::Reject,
        ExceptionAction::ApplyRule,
    ];

    /// The stable name ("AUTO_CORRECT").
    pub fn as_str(self) -> &'static str {
        match self {
            ExceptionAction::AutoCorrect => "AUTO_CORRECT",
            ExceptionAction::Retry => "RETRY",
            ExceptionAction::Escalate => "ESCALATE",
            ExceptionAction::Reject => "REJECT",
            ExceptionAction::ApplyRule => "APPLY_RULE",
        }
    }
}

/// `error.message`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SapMessage {
    pub lang: String,
    pub value: String,
}

/// One `error.innererror.errordetails` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub propertyref: String,
    #[serde(default)]
    pub severity: String,
}

/// `error.innererror`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InnerError {
    #[serde(default)]
    pub transactionid: String,
    #[serde(default)]
    pub errordetails: Vec<ErrorDetail>,
}

/// `error`. Read from either envelope SAP answers with, and always written as V2:
/// - OData V2 (`API_*_SRV`): `message` is `{"lang", "value"}`, details are in
///   `innererror.errordetails[{code, message, propertyref, severity}]`;
/// - OData V4 (S/4HANA Cloud's V4 APIs): `message` is a string, details are `details[{code,
///   message, target, @Common.numericSeverity}]`, and `target` names the property.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "envelope::WireBody")]
pub struct SapErrorBody {
    pub code: String,
    pub message: SapMessage,
    #[serde(default)]
    pub innererror: Option<InnerError>,
}

/// The OData V2 error envelope: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SapError {
    pub error: SapErrorBody,
}

impl SapError {
    /// An envelope with one detail entry for `propertyref` (may be empty).
    pub fn new(code: &str, message: impl Into<String>, propertyref: &str) -> SapError {
        let message = message.into();
        SapError {
            error: SapErrorBody {
                code: code.into(),
                message: SapMessage { lang: "en".into(), value: message.clone() },
                innererror: Some(InnerError {
                    transactionid: String::new(),
                    errordetails: vec![ErrorDetail {
                        code: code.into(),
                        message,
                        propertyref: propertyref.into(),
                        severity: "error".into(),
                    }],
                }),
            },
        }
    }

    /// The first detail's property reference, if any.
    pub fn propertyref(&self) -> Option<&str> {
        self.error
            .innererror
            .as_ref()?
            .errordetails
            .iter()
            .map(|d| d.propertyref.as_str())
            .find(|p| !p.is_empty())
    }
}

/// A failed call: HTTP status plus the SAP envelope. This is what a transaction log's `feedback`
/// holds for a failed post.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SapFailure {
    pub http_status: u16,
    #[serde(flatten)]
    pub body: SapError,
}

/// Exponential backoff for RETRY.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub multiplier: f64,
    /// Fetch a fresh CSRF token (`X-CSRF-Token: Fetch`) before resending.
    pub refresh_csrf_token: bool,
}

/// One edit of the request body. `path` is a JSON pointer (`/to_MaterialDocumentItem/results/0/
/// GoodsMovementRefDocType`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchOp {
    /// "add" (also replaces) or "remove".
    pub op: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
}

/// The decided handling of one failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resolution {
    pub action: ExceptionAction,
    /// Why, in one sentence naming the code and field.
    pub reason: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub correction: Vec<PatchOp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// The business rule applied (APPLY_RULE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}
