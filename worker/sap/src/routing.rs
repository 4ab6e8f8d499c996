//! The reference routing decision for a typed document: which API, which payload, or exception
//! handling. Data-prep uses it as ground truth for synthetic logs and to fill targets a log lacks;
//! evaluation can use it as a rules-only baseline.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::catalog::{ApiSpec, Catalog};
use crate::documents::AdcDocument;
use crate::payload::build_payload;
use crate::rules::{RuleContext, RuleOutcome, validate};

pub use crate::catalog::EXCEPTION_ENDPOINT;

/// What the reference router decided, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingDecision {
    /// [`ApiSpec::endpoint`] of the target, or [`EXCEPTION_ENDPOINT`].
    pub endpoint: String,
    /// The API that serves the document type (even when the decision is exception handling).
    pub api: Option<String>,
    /// The create body; `None` when there is no creatable API for the type.
    pub payload: Option<Value>,
    /// Every rule checked on the payload.
    pub outcomes: Vec<RuleOutcome>,
}

impl RoutingDecision {
    /// The failed rules that sent the document to exception handling.
    pub fn blocking(&self) -> impl Iterator<Item = &RuleOutcome> {
        self.outcomes.iter().filter(|o| o.is_blocking())
    }

    /// True when the document goes to exception handling.
    pub fn is_exception(&self) -> bool {
        self.endpoint == EXCEPTION_ENDPOINT
    }
}

/// The creatable API serving the document's type, if any.
pub fn target_api<'c>(catalog: &'c Catalog, doc: &AdcDocument) -> Option<&'c ApiSpec> {
    catalog.serving(doc.doc_type().as_str()).into_iter().find(|a| !a.read_only)
}

/// Routes `doc`: the serving API with its payload when no blocking rule fails, otherwise
/// exception handling (with the payload that would have been sent, for the exception trace).
pub fn route(catalog: &Catalog, doc: &AdcDocument, ctx: &RuleContext) -> RoutingDecision {
    let Some(api) = target_api(catalog, doc) else {
        return RoutingDecision {
            endpoint: EXCEPTION_ENDPOINT.into(),
            api: None,
            payload: None,
            outcomes: Vec::new(),
        };
    };
    let payload = build_payload(doc, api).expect("target_api serves the type and is creatable");
    let outcomes = validate(api, &payload, ctx);
    let blocked = outcomes.iter().any(RuleOutcome::is_blocking);
    RoutingDecision {
        endpoint: if blocked { EXCEPTION_ENDPOINT.into() } else { api.endpoint() },
        api: Some(api.name.clone()),
        payload: Some(payload),
        outcomes,
    }
}
