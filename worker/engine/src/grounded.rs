//! A routing request made ready for grounded decoding: its document in the models' field names,
//! the grounded payload of every endpoint the decoder may choose, the endpoints it may not (and
//! why), and the reasoning the document supports.
//!
//! The grammar of each option admits exactly its grounded payload ([`crate::grammar`]): the
//! model chooses between posting (to a type-consistent candidate whose payload is complete) and
//! exception handling, and says how sure it is; it never spells a value. Measured on the tiny
//! preset before this: free payload generation got 26 % of fields right and invented header
//! values (company code, supplier, currency) from the training distribution.

use std::str::FromStr;

use anyhow::{Result, anyhow};
use serde::{Deserialize, Serialize};

use super::format::{RoutingAnswer, answer_payload, clip_reasoning};
use super::types::RoutingQuery;
use sapllm_sap::catalog::Catalog;
use sapllm_sap::documents::DocType;
use sapllm_sap::documents::normalize::Normalized;
use sapllm_sap::documents::signals::detect;
use sapllm_sap::explain;
use sapllm_sap::grounding::{Grounded, GroundingError, ground};
use sapllm_sap::routing::EXCEPTION_ENDPOINT;

/// A candidate endpoint the decoder does not offer, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ungrounded {
    pub endpoint: String,
    /// Properties the API requires that the document does not give (empty when the reason is
    /// another one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    pub reason: String,
}

/// One endpoint the decoder offers.
#[derive(Debug, Clone)]
pub struct GroundedOption {
    pub endpoint: String,
    /// The payload, in the API schema's property order, and its sources (`None`: exception
    /// handling, nothing is posted).
    pub grounded: Option<Grounded>,
}

/// A routing request ready to decode.
#[derive(Debug, Clone)]
pub struct GroundedRequest {
    pub doc_type: DocType,
    pub normalized: Normalized,
    /// What the model reads: the normalized document and the canonical type.
    pub query: RoutingQuery,
    /// Offered endpoints, exception handling last.
    pub options: Vec<GroundedOption>,
    pub ungrounded: Vec<Ungrounded>,
    /// The reasoning the answer carries (document type evidence, candidates), as the grammar
    /// forces it.
    pub reasoning: Vec<String>,
}

impl GroundedRequest {
    /// Prepares `q`, offering `endpoints` (exception handling included) where they ground.
    pub fn new(catalog: &Catalog, q: &RoutingQuery, endpoints: &[String]) -> Result<Self> {
        let doc_type = DocType::from_str(&q.doc_type).map_err(|e| anyhow!("doc_type: {e}"))?;
        anyhow::ensure!(q.adc_json.is_object(), "adc_json: must be a JSON object");
        let normalized = catalog.normalize(doc_type, &q.adc_json);
        let query = RoutingQuery {
            adc_json: normalized.document.clone(),
            doc_type: doc_type.as_str().to_string(),
            ..q.clone()
        };
        let mut options = Vec::new();
        let mut ungrounded = Vec::new();
        for e in endpoints {
            if e == EXCEPTION_ENDPOINT {
                continue;
            }
            let Some(api) = catalog.api_for_endpoint(e) else {
                ungrounded.push(Ungrounded {
                    endpoint: e.clone(),
                    missing: vec![],
                    reason: "the catalog does not know this API, so no payload can be grounded; add it with `sapllm-worker catalog import`".into(),
                });
                continue;
            };
            match ground(doc_type, &normalized, api) {
                Ok(g) if g.missing.is_empty() => {
                    let payload = answer_payload(catalog, e, &g.payload);
                    options.push(GroundedOption {
                        endpoint: e.clone(),
                        grounded: Some(Grounded { payload, ..g }),
                    });
                }
                Ok(g) => ungrounded.push(Ungrounded {
                    endpoint: e.clone(),
                    reason: explain::missing_step(e, &g.missing),
                    missing: g.missing,
                }),
                Err(err @ (GroundingError::Unreadable(_) | GroundingError::Payload(_))) => ungrounded
                    .push(Ungrounded { endpoint: e.clone(), missing: vec![], reason: err.to_string() }),
            }
        }
        options.push(GroundedOption { endpoint: EXCEPTION_ENDPOINT.into(), grounded: None });
        let reasoning = clip_reasoning(&reasoning_for(doc_type, &query));
        Ok(GroundedRequest { doc_type, normalized, query, options, ungrounded, reasoning })
    }

    /// The answer text of each option up to its choice (`{"doc_type":..,"endpoint":..,"payload`):
    /// what the decoder scores the options by; the rest is forced.
    pub fn choice_texts(&self) -> Vec<String> {
        let s = |v: &str| serde_json::to_string(v).expect("a string serializes");
        self.options
            .iter()
            .map(|o| {
                format!(
                    "{{\"doc_type\":{},\"endpoint\":{},\"payload",
                    s(&self.query.doc_type),
                    s(&o.endpoint)
                )
            })
            .collect()
    }

    /// The whole answer for option `choice` with `confidence`, as the grammar admits it.
    pub fn answer(&self, choice: usize, confidence: f64) -> RoutingAnswer {
        let o = &self.options[choice];
        RoutingAnswer {
            doc_type: self.query.doc_type.clone(),
            endpoint: o.endpoint.clone(),
            payload: o.grounded.as_ref().map_or(serde_json::Value::Null, |g| g.payload.clone()),
            reasoning: self.reasoning.clone(),
            confidence: super::format::round_confidence(confidence),
        }
    }

    /// The reasoning of a decision for option `choice`: the forced steps, then what the
    /// provenance says (the payload's sources, or why nothing is posted).
    pub fn decision_reasoning(&self, choice: usize) -> Vec<String> {
        let mut steps = self.reasoning.clone();
        let o = &self.options[choice];
        match &o.grounded {
            Some(g) => steps.push(explain::payload_step(&o.endpoint, g, &self.normalized.unmapped)),
            None => steps.extend(self.ungrounded.iter().map(|u| u.reason.clone())),
        }
        steps
    }
}

/// The steps the document supports: its type evidence (found in the normalized document) and
/// the request's candidates, as data-prep writes them for training.
pub fn reasoning_for(doc_type: DocType, q: &RoutingQuery) -> Vec<String> {
    let serves = |c: &&sapllm_sap::catalog::CompactSchema| c.doc_types.iter().any(|t| t == doc_type.as_str());
    let candidates = q.api_schemas.iter().filter(|c| c.endpoint != EXCEPTION_ENDPOINT);
    let serving: Vec<&str> = candidates.clone().filter(serves).map(|c| c.api.as_str()).collect();
    let others: Vec<&str> =
        candidates.filter(|c| !serves(c)).map(|c| c.api.as_str()).filter(|a| !serving.contains(a)).collect();
    vec![
        explain::type_step(doc_type, &detect(&q.adc_json)),
        explain::candidates_step(doc_type, &serving, &others),
    ]
}
