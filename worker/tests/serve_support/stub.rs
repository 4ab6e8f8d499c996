//! A backend whose decisions are known in advance, for the serve tests that exercise HTTP
//! behaviour around decisions (feedback, mirroring), not the engine.

use anyhow::Result;
use sapllm_engine::chat::Completion;
use sapllm_engine::types::{
    ConfidenceParts, DecodeStats, ExceptionDecision, ExceptionQuery, RoutingDecision, RoutingQuery,
    SimilarException,
};
use sapllm_serve::Backend;
use serde_json::{Value, json};

/// Routes every document to `endpoint` (default: its first candidate) with `payload`.
#[derive(Clone)]
pub struct Stub {
    pub endpoint: Option<&'static str>,
    pub payload: Value,
    pub abstained: bool,
}

/// What the primary answers; a canary answering the same agrees.
pub fn stable() -> Stub {
    Stub { endpoint: None, payload: json!({"CompanyCode": "1010"}), abstained: false }
}

impl Backend for Stub {
    fn decide_routing_batch(&self, queries: &[RoutingQuery]) -> Result<Vec<Result<RoutingDecision>>> {
        Ok(queries
            .iter()
            .map(|q| {
                let first = q.api_schemas.first().map(|c| c.endpoint.clone()).unwrap_or_default();
                let endpoint = self.endpoint.map_or(first, str::to_string);
                Ok(RoutingDecision {
                    doc_type: q.doc_type.clone(),
                    entity_set: endpoint.split('/').nth(1).map(str::to_string),
                    endpoint,
                    method: Some("POST".into()),
                    payload: self.payload.clone(),
                    provenance: Vec::new(),
                    unmapped_fields: Vec::new(),
                    ungrounded: Vec::new(),
                    confidence: if self.abstained { 0.2 } else { 0.9 },
                    confidence_parts: ConfidenceParts {
                        choice_probability: 0.9,
                        body_certainty: 1.0,
                        generated: None,
                    },
                    reasoning: vec!["stub".into()],
                    abstained: self.abstained,
                    alternatives: Vec::new(),
                    stats: DecodeStats::default(),
                })
            })
            .collect())
    }

    fn handle_exception_batch(
        &self,
        _items: &[(ExceptionQuery, Vec<SimilarException>)],
    ) -> Result<Vec<Result<ExceptionDecision>>> {
        anyhow::bail!("not served by the stub")
    }

    fn complete(&self, _: &str, _: usize, _: f64, _: Option<&Value>) -> Result<Completion> {
        anyhow::bail!("not served by the stub")
    }
}
