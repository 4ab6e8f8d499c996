//! The JSON Schemas the decoder is constrained by, one per (format, option): once the decoder
//! has chosen the endpoint (or action), the rest of the answer must match that option's schema.
//! A routing answer's schema is built per document ([`grounded_answer_schema`]): it admits the
//! grounded payload and nothing else.
//! Every schema is compact (no whitespace, `,` and `:` separators, properties in declared
//! order) so the grammar admits exactly the text SFT trained on, and every repetition is
//! bounded so a decode always terminates.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use anyhow::{Context, Result, anyhow};
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};

use sapllm_sap::exceptions::Resolution;

fn compact_options() -> Value {
    json!({"whitespace_flexible": false, "item_separator": ",", "key_separator": ":", "lenient": true})
}

/// The answer schema of a grounded routing decision: the endpoint, then exactly the grounded
/// `payload` (`None`: `null`), exactly the `reasoning` steps the document supports, and the
/// confidence, the one value the model writes freely.
pub fn grounded_answer_schema(endpoint: &str, payload: Option<&Value>, reasoning: &[String]) -> Value {
    json!({
        "x-guidance": compact_options(),
        "type": "object",
        "properties": {
            "doc_type": {"type": "string", "maxLength": 64},
            "endpoint": {"const": endpoint},
            "payload": {"const": payload.cloned().unwrap_or(Value::Null)},
            "reasoning": {"const": reasoning},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1, "multipleOf": 0.01},
        },
        "required": ["doc_type", "endpoint", "payload", "reasoning", "confidence"],
        "additionalProperties": false,
    })
}

/// The answer schema of a grounded exception decision: exactly the admissible handling `r`
/// (correction, retry policy, rule) with exactly the `reasoning` steps it is explained by.
pub fn grounded_exception_schema(r: &Resolution, reasoning: &[String]) -> Value {
    json!({
        "x-guidance": compact_options(),
        "type": "object",
        "properties": {
            "action": {"const": r.action.as_str()},
            "correction": {"const": r.correction},
            "retry": {"const": r.retry},
            "rule": {"const": r.rule},
            "reasoning": {"const": reasoning},
        },
        "required": ["action", "correction", "retry", "rule", "reasoning"],
        "additionalProperties": false,
    })
}

/// Compiled grammars kept at most: grounded answers have one grammar per document, so the
/// cache must not grow with traffic (the oldest go first).
pub const GRAMMAR_CACHE_CAPACITY: usize = 256;

/// Compiled grammars by schema text: compiling a payload schema costs milliseconds, cloning a
/// compiled matcher microseconds.
pub struct GrammarCache {
    factory: ParserFactory,
    compiled: Mutex<(HashMap<String, Matcher>, VecDeque<String>)>,
}

impl GrammarCache {
    pub fn new(factory: ParserFactory) -> Self {
        GrammarCache { factory, compiled: Mutex::new((HashMap::new(), VecDeque::new())) }
    }

    /// A fresh matcher (at the start of the answer) for `schema`.
    pub fn matcher(&self, schema: &Value) -> Result<Matcher> {
        let key = serde_json::to_string(schema)?;
        let mut guard = self.compiled.lock().map_err(|_| anyhow!("grammar cache poisoned"))?;
        let (compiled, order) = &mut *guard;
        if let Some(m) = compiled.get(&key) {
            return Ok(m.deep_clone());
        }
        let parser = self
            .factory
            .create_parser(TopLevelGrammar::from_json_schema(schema.clone()))
            .with_context(|| format!("compiling the answer grammar {key:.200}"))?;
        let m = Matcher::new(Ok(parser));
        if let Some(err) = m.get_error() {
            anyhow::bail!("grammar error: {err}");
        }
        if compiled.len() >= GRAMMAR_CACHE_CAPACITY
            && let Some(oldest) = order.pop_front()
        {
            compiled.remove(&oldest);
        }
        order.push_back(key.clone());
        compiled.insert(key, m.deep_clone());
        Ok(m)
    }

    pub fn factory(&self) -> &ParserFactory {
        &self.factory
    }
}
