//! Fixtures for tests and benchmarks: realistic queries from the synthetic log generator, a
//! byte-level BPE trained on their prompts, and a randomly initialised tiny-preset engine.
//!
//! A random model knows nothing, but the decoder's guarantees (schema-valid output, endpoints
//! from the candidate list, abstention by confidence) must hold for ANY weights, which is what
//! the tests check; timings on the tiny preset are what the load benchmark measures.

use anyhow::Result;
use candle_core::Device;

use crate::dataprep::DataPrepConfig;
use crate::dataprep::synth::Generator;
use sapllm_engine::engine::{Engine, EngineConfig};
use sapllm_engine::format;
use sapllm_engine::types::{ExceptionQuery, RoutingQuery};
use sapllm_model::config::{MixtralConfig, Preset};
use sapllm_model::mixtral::{Mixtral, ModelOptions};
use sapllm_model::tokenizer::Tokenizer;
use sapllm_sap::catalog::{Catalog, compact_schema};
use sapllm_sap::exceptions::SapError;
use sapllm_sap::exceptions::SapFailure;
use sapllm_sap::routing::EXCEPTION_ENDPOINT;

/// `n` routing queries from the synthetic generator (seeded), candidates as data-prep builds
/// them.
pub fn sample_queries(n: usize, seed: u64) -> Vec<RoutingQuery> {
    let cfg = DataPrepConfig { seed, ..DataPrepConfig::default() };
    let catalog = &cfg.catalog;
    let generator = Generator::new(&cfg);
    (0..n as u64)
        .map(|i| {
            let log = generator.log(i);
            RoutingQuery {
                api_schemas: catalog
                    .candidates_for(&log.document_type)
                    .into_iter()
                    .map(compact_schema)
                    .collect(),
                doc_type: log.document_type,
                adc_json: log.extracted_data,
                similar_cases: Vec::new(),
            }
        })
        .collect()
}

/// An exception query for a routing query (a SAP "balance not zero" style failure).
pub fn sample_exception(q: &RoutingQuery) -> ExceptionQuery {
    ExceptionQuery {
        doc_type: q.doc_type.clone(),
        adc_json: q.adc_json.clone(),
        endpoint: q.api_schemas.first().map_or(EXCEPTION_ENDPOINT.to_string(), |c| c.endpoint.clone()),
        request_payload: serde_json::json!({"CompanyCode": "1010"}),
        sap_error: Some(SapFailure {
            http_status: 400,
            body: SapError::new("M8/186", "Balance not zero", ""),
        }),
        rule_failures: Vec::new(),
    }
}

/// Text to train a test tokenizer on: prompts and plausible answers.
pub fn tokenizer_corpus(queries: &[RoutingQuery]) -> Vec<String> {
    let mut texts = Vec::new();
    for q in queries {
        if let Ok(p) = format::routing_prompt(q, None) {
            texts.push(p);
        }
        for c in &q.api_schemas {
            texts.push(format!(
                "{{\"doc_type\":\"{}\",\"endpoint\":\"{}\",\"payload\":null,\"reasoning\":[\"ok\"],\"confidence\":0.9}}",
                q.doc_type, c.endpoint
            ));
        }
        if let Ok(p) = format::exception_prompt(&sample_exception(q), &[]) {
            texts.push(p);
        }
    }
    texts
}

/// A byte-level BPE of `vocab` tokens trained on `queries`' prompts.
pub fn tiny_tokenizer(queries: &[RoutingQuery], vocab: usize) -> Result<Tokenizer> {
    let corpus = tokenizer_corpus(queries);
    Tokenizer::train_bpe(corpus.iter(), vocab)
}

/// A random tiny-preset engine plus the queries its tokenizer was trained on. The context is
/// widened to 4096 positions: a random model fills every string to its bound, so its answers
/// are far longer than a trained model's.
pub fn tiny_engine(config: EngineConfig, seed: u64) -> Result<(Engine, Vec<RoutingQuery>)> {
    let queries = sample_queries(40, seed);
    let tokenizer = tiny_tokenizer(&queries, 2048)?;
    let mut cfg = MixtralConfig::preset(Preset::Tiny, tokenizer.vocab_size());
    cfg.max_position_embeddings = 4096;
    let model = Mixtral::new_random(&cfg, &ModelOptions { seed, ..ModelOptions::default() }, &Device::Cpu)?;
    Ok((Engine::new(model, tokenizer, Catalog::builtin(), config)?, queries))
}

/// Writes a random tiny-preset checkpoint (config, weights, tokenizer) to `dir`, loadable with
/// [`super::load::load_engine`] like any base model directory.
pub fn write_tiny_model(dir: &std::path::Path, seed: u64) -> Result<()> {
    let queries = sample_queries(40, seed);
    let tokenizer = tiny_tokenizer(&queries, 2048)?;
    let mut cfg = MixtralConfig::preset(Preset::Tiny, tokenizer.vocab_size());
    cfg.max_position_embeddings = 4096;
    let model = Mixtral::new_random(&cfg, &ModelOptions { seed, ..ModelOptions::default() }, &Device::Cpu)?;
    sapllm_model::hf_io::save_model(&model, dir, &sapllm_model::hf_io::SaveOptions::default())?;
    tokenizer.save(dir)?;
    Ok(())
}
