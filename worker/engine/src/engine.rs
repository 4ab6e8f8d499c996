//! The inference API: [`Engine::decide_routing`], [`Engine::handle_exception`] and their batch
//! forms. An engine owns a loaded model, its tokenizer, the llguidance grammars and the API
//! catalog the payload schemas come from.

use std::str::FromStr;

use anyhow::{Context, Result, anyhow, bail, ensure};
use llguidance::ParserFactory;
use serde_json::Value;

use super::confidence::{ConfidenceWeights, body_certainty, combine};
use super::decoder::{BatchTiming, DecodeOptions, OptionSpec, RowOutput, RowSpec, decode_batch};
use super::format::{self, ExceptionAnswer, RoutingAnswer};
use super::grammar::{GrammarCache, grounded_answer_schema, grounded_exception_schema};
use super::grounded::GroundedRequest;
use super::tok_env::ModelTokEnv;
use super::types::{
    ConfidenceParts, ExceptionDecision, ExceptionQuery, RoutingDecision, RoutingQuery, SimilarException,
};
use crate::examples::SimilarCase;
use crate::template;
use sapllm_model::mixtral::Mixtral;
use sapllm_model::plain::DecodeWeights;
use sapllm_model::tokenizer::Tokenizer;
use sapllm_sap::catalog::{Catalog, CompactSchema};
use sapllm_sap::documents::DocType;
use sapllm_sap::exceptions::{Resolution, admissible};
use sapllm_sap::explain::exception_trace;
use sapllm_sap::routing::EXCEPTION_ENDPOINT;
use sapllm_sap::rules::RuleOutcome;

/// Engine settings.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Decisions with confidence below this abstain (go to human review).
    pub abstain_threshold: f64,
    pub decode: DecodeOptions,
    pub weights: ConfidenceWeights,
    /// Rows decoded together at most (larger batch calls are split).
    pub max_batch: usize,
    /// How routing prompts are rendered (what the model was trained with; `load_engine` reads it
    /// from the adapter folder).
    pub prompt: super::profile::PromptProfile,
    /// Offer every candidate, even those that do not serve the request's document type (see
    /// [`Engine::allowed_endpoints`]); false (the default) keeps the type-consistent ones.
    pub any_candidate: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            abstain_threshold: 0.5,
            decode: DecodeOptions::default(),
            weights: ConfidenceWeights::default(),
            max_batch: 8,
            prompt: super::profile::PromptProfile::default(),
            any_candidate: false,
        }
    }
}

/// Context that must remain after the prompt.
const MIN_ANSWER_TOKENS: usize = 64;

/// A model ready to decide.
pub struct Engine {
    model: Mixtral,
    /// The plain-slice decode step's copy of the weights (`None` where it does not apply).
    fast: Option<DecodeWeights>,
    tokenizer: Tokenizer,
    grammars: GrammarCache,
    catalog: Catalog,
    pub config: EngineConfig,
}

/// The JSON string literal of `s` (escaped as serde writes it).
fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// Splits per-option token sequences into (shared prefix, non-empty suffixes).
fn split_prefix(seqs: &[Vec<u32>]) -> (Vec<u32>, Vec<Vec<u32>>) {
    let min_len = seqs.iter().map(Vec::len).min().unwrap_or(0);
    let mut n = 0;
    while n + 1 < min_len && seqs.iter().all(|s| s[n] == seqs[0][n]) {
        n += 1;
    }
    (seqs[0][..n].to_vec(), seqs.iter().map(|s| s[n..].to_vec()).collect())
}

impl Engine {
    /// Builds an engine around a loaded model and tokenizer.
    pub fn new(model: Mixtral, tokenizer: Tokenizer, catalog: Catalog, config: EngineConfig) -> Result<Self> {
        ensure!(
            tokenizer.vocab_size() <= model.cfg.vocab_size,
            "tokenizer has {} tokens but the model only {}",
            tokenizer.vocab_size(),
            model.cfg.vocab_size
        );
        ensure!((0.0..=1.0).contains(&config.abstain_threshold), "abstain threshold must be in [0, 1]");
        let env = ModelTokEnv::new(&tokenizer)?.into_env();
        let mut factory =
            ParserFactory::new_simple(&env).context("creating the llguidance parser factory")?;
        factory.quiet();
        // The plain-slice copy of the weights serves CPU decoding only.
        let fast = if model.device().is_cpu() { DecodeWeights::new(&model) } else { None };
        Ok(Engine { model, fast, tokenizer, grammars: GrammarCache::new(factory), catalog, config })
    }

    pub fn model(&self) -> &Mixtral {
        &self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The compiled-grammar cache (also used by free-form completion).
    pub fn grammars(&self) -> &GrammarCache {
        &self.grammars
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Routes one document.
    pub fn decide_routing(
        &self,
        adc_json: &Value,
        doc_type: &str,
        api_schemas: &[CompactSchema],
        similar_cases: &[SimilarCase],
    ) -> Result<RoutingDecision> {
        let q = RoutingQuery {
            adc_json: adc_json.clone(),
            doc_type: doc_type.to_string(),
            api_schemas: api_schemas.to_vec(),
            similar_cases: similar_cases.to_vec(),
        };
        self.decide_routing_batch(std::slice::from_ref(&q))?.pop().ok_or_else(|| anyhow!("no decision"))?
    }

    /// Routes many documents, decoding up to `max_batch` together. A bad query gets its own
    /// `Err`; the outer error is a model failure.
    pub fn decide_routing_batch(&self, queries: &[RoutingQuery]) -> Result<Vec<Result<RoutingDecision>>> {
        Ok(self.decide_routing_batch_timed(queries)?.0)
    }

    /// As [`Engine::decide_routing_batch`], with the decoder's timings.
    pub fn decide_routing_batch_timed(
        &self,
        queries: &[RoutingQuery],
    ) -> Result<(Vec<Result<RoutingDecision>>, BatchTiming)> {
        self.run_batches(
            queries,
            |q| self.routing_row(q),
            |_, row, g, out| self.routing_decision(row, g, out),
        )
    }

    /// LATENCY MEASUREMENT ONLY: decodes each query through the full pipeline (prefill, option
    /// scoring, grammar, forced tokens, one forward per sampled token) but writes the given
    /// reference answer instead of the model's choices, so an untrained model can be timed on
    /// answers of realistic length. Not a decision: confidence and probabilities are the
    /// model's, the answer is the reference's.
    pub fn replay_routing_batch(
        &self,
        queries: &[RoutingQuery],
        references: &[RoutingAnswer],
    ) -> Result<(Vec<Result<RoutingDecision>>, BatchTiming)> {
        ensure!(queries.len() == references.len(), "one reference per query");
        let pairs: Vec<(&RoutingQuery, &RoutingAnswer)> = queries.iter().zip(references).collect();
        self.run_batches(
            &pairs,
            |(q, a)| {
                let (mut row, g) = self.routing_row(q)?;
                let c = row
                    .options
                    .iter()
                    .position(|o| o.label == a.endpoint)
                    .ok_or_else(|| anyhow!("reference endpoint {} is not offered", a.endpoint))?;
                // The grammar admits only the grounded payload and reasoning: the reference
                // keeps its endpoint and confidence and takes those.
                let reference = g.answer(c, a.confidence);
                row.reference = Some((c, template::response_text(&reference)?.into_bytes()));
                Ok((row, g))
            },
            |_, row, g, out| self.routing_decision(row, g, out),
        )
    }

    /// Decides how to handle one failure.
    pub fn handle_exception(
        &self,
        exception: &ExceptionQuery,
        similar_exceptions: &[SimilarException],
    ) -> Result<ExceptionDecision> {
        let item = (exception.clone(), similar_exceptions.to_vec());
        self.handle_exception_batch(std::slice::from_ref(&item))?
            .pop()
            .ok_or_else(|| anyhow!("no decision"))?
    }

    /// Decides many failures, batched as [`Engine::decide_routing_batch`].
    pub fn handle_exception_batch(
        &self,
        items: &[(ExceptionQuery, Vec<SimilarException>)],
    ) -> Result<Vec<Result<ExceptionDecision>>> {
        Ok(self
            .run_batches(
                items,
                |(q, s)| self.exception_row(q, s),
                |_, row, handlings, out| self.exception_decision(row, handlings, out),
            )?
            .0)
    }

    fn run_batches<Q, X, D>(
        &self,
        items: &[Q],
        to_row: impl Fn(&Q) -> Result<(RowSpec, X)>,
        to_decision: impl Fn(&Q, &RowSpec, &X, RowOutput) -> Result<D>,
    ) -> Result<(Vec<Result<D>>, BatchTiming)> {
        let mut out: Vec<Option<Result<D>>> = (0..items.len()).map(|_| None).collect();
        let mut ready: Vec<(usize, (RowSpec, X))> = Vec::new();
        for (i, q) in items.iter().enumerate() {
            match to_row(q) {
                Ok(r) => ready.push((i, r)),
                Err(e) => out[i] = Some(Err(e)),
            }
        }
        let mut total = BatchTiming::default();
        for chunk in ready.chunks(self.config.max_batch.max(1)) {
            let rows: Vec<RowSpec> = chunk.iter().map(|(_, (r, _))| r.clone()).collect();
            let (outputs, t) = decode_batch(
                &self.model,
                self.fast.as_ref(),
                &self.grammars,
                self.tokenizer.eos_id,
                self.tokenizer.pad_id,
                &rows,
                &self.config.decode,
            )?;
            total.prefill_s += t.prefill_s;
            total.scoring_s += t.scoring_s;
            total.generate_s += t.generate_s;
            total.mask_s += t.mask_s;
            total.forward_calls += t.forward_calls;
            total.drafted += t.drafted;
            total.accepted += t.accepted;
            total.unmasked += t.unmasked;
            for ((i, (row, x)), o) in chunk.iter().zip(outputs) {
                out[*i] = Some(o.and_then(|o| to_decision(&items[*i], row, x, o)));
            }
        }
        Ok((out.into_iter().map(|o| o.unwrap_or_else(|| Err(anyhow!("not decoded")))).collect(), total))
    }

    fn encode_options(&self, texts: &[String]) -> Result<(Vec<u32>, Vec<Vec<u32>>)> {
        let seqs: Vec<Vec<u32>> = texts.iter().map(|t| self.tokenizer.encode(t)).collect::<Result<_>>()?;
        Ok(split_prefix(&seqs))
    }

    fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        let ids = template::encode_prompt(&self.tokenizer, prompt)?;
        let max = self.model.cfg.max_position_embeddings;
        ensure!(
            ids.len() + MIN_ANSWER_TOKENS <= max,
            "prompt is {} tokens; the model's context of {max} leaves no room for an answer",
            ids.len()
        );
        Ok(ids)
    }

    /// The allowed endpoints of a query: its candidates (deduplicated) + exception handling.
    pub fn allowed_endpoints(q: &RoutingQuery) -> Vec<String> {
        Self::endpoints_where(q, |_| true)
    }

    /// The endpoints the decoder offers: with `any_candidate` off, only the candidates that
    /// serve the request's document type or declare no type (+ exception handling), unless
    /// none does, then all of them. A candidate whose schema says it creates other document
    /// types cannot be right for this one (a quotation posted as a sales order is a wrong
    /// business document, not a routing preference), so the decoder does not let the model
    /// pick it; what remains for the model is the decision between posting and exception
    /// handling, and the payload. Callers that send no reliable type turn it off.
    pub fn offered_endpoints(q: &RoutingQuery, any_candidate: bool) -> Vec<String> {
        let serves = |c: &CompactSchema| c.doc_types.is_empty() || c.doc_types.contains(&q.doc_type);
        let typed = Self::endpoints_where(q, serves);
        if any_candidate || typed.len() == 1 { Self::allowed_endpoints(q) } else { typed }
    }

    fn endpoints_where(q: &RoutingQuery, keep: impl Fn(&CompactSchema) -> bool) -> Vec<String> {
        let mut eps: Vec<String> = Vec::new();
        for c in &q.api_schemas {
            if !c.endpoint.is_empty()
                && c.endpoint != EXCEPTION_ENDPOINT
                && keep(c)
                && !eps.contains(&c.endpoint)
            {
                eps.push(c.endpoint.clone());
            }
        }
        eps.push(EXCEPTION_ENDPOINT.to_string());
        eps
    }

    /// The decoder's row for `q`: one option per offered endpoint whose payload grounds (and
    /// exception handling), each constrained to its grounded payload and the reasoning the
    /// document supports.
    fn routing_row(&self, q: &RoutingQuery) -> Result<(RowSpec, GroundedRequest)> {
        let canonical = RoutingQuery {
            doc_type: DocType::from_str(&q.doc_type)
                .map_err(|e| anyhow!("doc_type: {e}"))?
                .as_str()
                .to_string(),
            ..q.clone()
        };
        let endpoints = Self::offered_endpoints(&canonical, self.config.any_candidate);
        let g = GroundedRequest::new(&self.catalog, &canonical, &endpoints)?;
        let q = &g.query;
        let (prefix, suffixes) = self.encode_options(&g.choice_texts())?;
        let options = g
            .options
            .iter()
            .zip(suffixes)
            .map(|(o, suffix)| OptionSpec {
                label: o.endpoint.clone(),
                suffix,
                schema: grounded_answer_schema(
                    &o.endpoint,
                    o.grounded.as_ref().map(|x| &x.payload),
                    &g.reasoning,
                ),
            })
            .collect();
        let row = RowSpec {
            prompt: self.prompt_ids(&format::routing_prompt(
                &self.config.prompt.apply(q),
                self.config.prompt.checks(&self.catalog, q),
            )?)?,
            prefix,
            options,
            body_end: ",\"reasoning\":".into(),
            reference: None,
        };
        Ok((row, g))
    }

    fn alternatives(row: &RowSpec, out: &RowOutput) -> Vec<(String, f64)> {
        let mut alts: Vec<(String, f64)> =
            row.options.iter().map(|o| o.label.clone()).zip(out.option_probs.iter().copied()).collect();
        alts.sort_by(|a, b| b.1.total_cmp(&a.1));
        alts
    }

    fn routing_decision(
        &self,
        row: &RowSpec,
        g: &GroundedRequest,
        out: RowOutput,
    ) -> Result<RoutingDecision> {
        let answer: RoutingAnswer = template::parse_response(&out.text)?;
        let chosen = &g.options[out.choice];
        if answer.endpoint != chosen.endpoint {
            bail!("decoder produced endpoint {:?} for chosen option {:?}", answer.endpoint, chosen.endpoint);
        }
        let grounded = chosen.grounded.as_ref();
        // The grammar admits nothing else; a difference is a decoder defect, never posted.
        ensure!(
            answer.payload == grounded.map_or(Value::Null, |x| x.payload.clone()),
            "decoder produced a payload other than the grounded one for {}",
            chosen.endpoint
        );
        let parts = ConfidenceParts {
            choice_probability: out.option_probs[out.choice],
            body_certainty: body_certainty(&out.body_logprobs),
            generated: Some(answer.confidence),
        };
        let confidence = combine(&parts, &self.config.weights);
        let api = self
            .catalog
            .api_for_endpoint(&chosen.endpoint)
            .filter(|a| grounded.is_some() && a.create.is_some());
        Ok(RoutingDecision {
            doc_type: g.doc_type.as_str().to_string(),
            endpoint: answer.endpoint,
            method: api.map(|_| "POST".to_string()),
            entity_set: api.and_then(|a| a.create.as_ref()).map(|e| e.entity_set.clone()),
            payload: answer.payload,
            provenance: grounded.map(|x| x.sources.clone()).unwrap_or_default(),
            unmapped_fields: g.normalized.unmapped.clone(),
            ungrounded: g.ungrounded.clone(),
            confidence,
            confidence_parts: parts,
            reasoning: g.decision_reasoning(out.choice),
            abstained: confidence < self.config.abstain_threshold,
            alternatives: Self::alternatives(row, &out),
            stats: out.stats,
        })
    }

    /// The decoder's row for an exception: one option per handling the failure admits
    /// ([`admissible`]), each constrained to its correction, retry policy, rule and reasoning.
    fn exception_row(
        &self,
        q: &ExceptionQuery,
        similar: &[SimilarException],
    ) -> Result<(RowSpec, Vec<Resolution>)> {
        DocType::from_str(&q.doc_type).map_err(|e| anyhow!("doc_type: {e}"))?;
        let q = &format::normalized_exception_query(&self.catalog, q);
        let blocking: Vec<RuleOutcome> =
            q.rule_failures.iter().filter(|o| o.is_blocking()).cloned().collect();
        let handlings = admissible(q.sap_error.as_ref(), &blocking, &q.request_payload);
        let texts: Vec<String> = handlings
            .iter()
            .map(|r| format!("{{\"action\":{},\"correction", json_str(r.action.as_str())))
            .collect();
        let (prefix, suffixes) = self.encode_options(&texts)?;
        let options = handlings
            .iter()
            .zip(suffixes)
            .map(|(r, suffix)| OptionSpec {
                label: r.action.as_str().to_string(),
                suffix,
                schema: grounded_exception_schema(
                    r,
                    &format::clip_reasoning(&exception_trace(
                        &q.endpoint,
                        q.sap_error.as_ref(),
                        &blocking,
                        r,
                    )),
                ),
            })
            .collect();
        let row = RowSpec {
            prompt: self.prompt_ids(&format::exception_prompt(q, similar)?)?,
            prefix,
            options,
            body_end: ",\"reasoning\":".into(),
            reference: None,
        };
        Ok((row, handlings))
    }

    fn exception_decision(
        &self,
        row: &RowSpec,
        handlings: &[Resolution],
        out: RowOutput,
    ) -> Result<ExceptionDecision> {
        let answer: ExceptionAnswer = template::parse_response(&out.text)?;
        let chosen = &handlings[out.choice];
        // The grammar admits nothing else; a difference is a decoder defect, never executed.
        ensure!(
            answer.action == chosen.action
                && answer.correction == chosen.correction
                && answer.retry == chosen.retry
                && answer.rule == chosen.rule,
            "decoder produced a handling other than the admissible {:?}",
            chosen.action
        );
        let parts = ConfidenceParts {
            choice_probability: out.option_probs[out.choice],
            body_certainty: body_certainty(&out.body_logprobs),
            generated: None,
        };
        let confidence = combine(&parts, &self.config.weights);
        Ok(ExceptionDecision {
            action: answer.action,
            correction: answer.correction,
            retry: answer.retry,
            rule: answer.rule,
            reasoning: answer.reasoning,
            confidence,
            confidence_parts: parts,
            abstained: confidence < self.config.abstain_threshold,
            alternatives: Self::alternatives(row, &out),
            stats: out.stats,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::split_prefix;

    #[test]
    fn split_keeps_every_suffix_non_empty() {
        let (p, s) = split_prefix(&[vec![1, 2, 3], vec![1, 2, 4, 5]]);
        assert_eq!(p, vec![1, 2]);
        assert_eq!(s, vec![vec![3], vec![4, 5]]);
        let (p, s) = split_prefix(&[vec![1, 2], vec![1, 2, 3]]);
        assert_eq!(p, vec![1], "a suffix may not be empty even when one option is a prefix of another");
        assert_eq!(s, vec![vec![2], vec![2, 3]]);
    }

    #[test]
    fn only_candidates_serving_the_document_type_are_offered_unless_none_does() {
        use super::{EXCEPTION_ENDPOINT, Engine};
        use sapllm_sap::catalog::CompactSchema;
        let c = |endpoint: &str, types: &[&str]| CompactSchema {
            api: endpoint.into(),
            endpoint: endpoint.into(),
            doc_types: types.iter().map(|t| t.to_string()).collect(),
            read_only: false,
            schema: String::new(),
        };
        let mut q = crate::types::RoutingQuery {
            adc_json: serde_json::json!({}),
            doc_type: "sales_quotation".into(),
            api_schemas: vec![
                c("SO/A_SalesOrder", &["sales_order"]),
                c("SQ/A_SalesQuotation", &["sales_quotation"]),
                c("Z/A_Unknown", &[]),
                c("SQ/A_SalesQuotation", &["sales_quotation"]),
            ],
            similar_cases: vec![],
        };
        let ex = EXCEPTION_ENDPOINT.to_string();
        assert_eq!(
            Engine::offered_endpoints(&q, false),
            vec!["SQ/A_SalesQuotation".to_string(), "Z/A_Unknown".into(), ex.clone()]
        );
        assert_eq!(Engine::offered_endpoints(&q, true), Engine::allowed_endpoints(&q));
        assert_eq!(Engine::allowed_endpoints(&q).len(), 4, "deduplicated, exception handling last");
        // No candidate serves the type: the model chooses among all of them.
        q.doc_type = "customer_return".into();
        q.api_schemas.remove(2);
        assert_eq!(Engine::offered_endpoints(&q, false), Engine::allowed_endpoints(&q));
    }
}
