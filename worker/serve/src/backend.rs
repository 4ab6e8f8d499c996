//! What the server needs of a model: the [`Backend`] trait (as text-generation-inference's router
//! knows its backend). The server's queue, batching, HTTP and metrics are written against it;
//! [`Engine`] is the production implementation, and tests can serve through any other.

use anyhow::Result;
use sapllm_engine::chat::Completion;
use sapllm_engine::engine::Engine;
use sapllm_engine::types::{
    ExceptionDecision, ExceptionQuery, RoutingDecision, RoutingQuery, SimilarException,
};
use sapllm_sap::catalog::{Catalog, compact_schema};
use serde_json::json;

/// A loaded model that makes decisions. Shared by the model threads, hence `Sync`.
pub trait Backend: Send + Sync {
    /// Routing decisions for a batch: the outer error fails the whole batch, an inner one a
    /// single document.
    fn decide_routing_batch(&self, queries: &[RoutingQuery]) -> Result<Vec<Result<RoutingDecision>>>;

    /// Exception decisions for a batch, each with its similar past exceptions.
    fn handle_exception_batch(
        &self,
        items: &[(ExceptionQuery, Vec<SimilarException>)],
    ) -> Result<Vec<Result<ExceptionDecision>>>;

    /// A free completion for the OpenAI-compatible API (optionally constrained by a JSON schema).
    fn complete(
        &self,
        prompt: &str,
        max_tokens: usize,
        temperature: f64,
        schema: Option<&serde_json::Value>,
    ) -> Result<Completion>;

    /// [`Backend::complete`], handing the text on as it is decoded (`stream: true`): `on_text`
    /// gets deltas that concatenate to the completion's text, and returning false from it
    /// stops decoding (with [`sapllm_engine::chat::Cancelled`]). The model thread decodes every
    /// completion through it, streamed or not: returning false is how a completion whose client
    /// went away is stopped. By default the whole text arrives as one delta at the end (and the
    /// completion cannot be stopped).
    fn complete_streaming(
        &self,
        prompt: &str,
        max_tokens: usize,
        temperature: f64,
        schema: Option<&serde_json::Value>,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Completion> {
        let c = self.complete(prompt, max_tokens, temperature, schema)?;
        on_text(&c.text);
        Ok(c)
    }
}

impl Backend for Engine {
    fn decide_routing_batch(&self, queries: &[RoutingQuery]) -> Result<Vec<Result<RoutingDecision>>> {
        Engine::decide_routing_batch(self, queries)
    }

    fn handle_exception_batch(
        &self,
        items: &[(ExceptionQuery, Vec<SimilarException>)],
    ) -> Result<Vec<Result<ExceptionDecision>>> {
        Engine::handle_exception_batch(self, items)
    }

    fn complete(
        &self,
        prompt: &str,
        max_tokens: usize,
        temperature: f64,
        schema: Option<&serde_json::Value>,
    ) -> Result<Completion> {
        Engine::complete(self, prompt, max_tokens, temperature, schema)
    }

    fn complete_streaming(
        &self,
        prompt: &str,
        max_tokens: usize,
        temperature: f64,
        schema: Option<&serde_json::Value>,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Completion> {
        Engine::complete_streaming(self, prompt, max_tokens, temperature, schema, on_text)
    }
}

/// The warm-up request: a document of the catalog's first creatable type, with the candidates
/// the catalog offers for it. Its fields are empty on purpose: warm-up exercises the whole
/// decision path (prefill, grammar, decoding), and a made-up document would only look real.
pub fn warm_up_query(catalog: &Catalog) -> Option<RoutingQuery> {
    let doc_type = catalog.apis.iter().filter(|a| !a.read_only).flat_map(|a| a.doc_types.first()).next()?;
    Some(RoutingQuery {
        doc_type: doc_type.clone(),
        adc_json: json!({}),
        api_schemas: catalog.candidates_for(doc_type).into_iter().map(compact_schema).collect(),
        similar_cases: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_query_comes_from_the_catalog() {
        let catalog = Catalog::builtin();
        let q = warm_up_query(&catalog).expect("the built-in catalog has creatable APIs");
        let serving = catalog.serving(&q.doc_type);
        assert!(serving.iter().any(|a| !a.read_only), "{} has no creatable API", q.doc_type);
        let offered: Vec<&str> = q.api_schemas.iter().map(|s| s.endpoint.as_str()).collect();
        let expected: Vec<String> =
            catalog.candidates_for(&q.doc_type).iter().map(|a| a.endpoint()).collect();
        assert_eq!(offered, expected);
        assert_eq!(warm_up_query(&Catalog { version: 1, apis: Vec::new(), aliases: Vec::new() }), None);
    }
}
