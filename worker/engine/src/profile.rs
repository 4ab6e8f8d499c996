//! How much context a routing prompt carries, saved beside the adapter so that evaluation and
//! serving render prompts exactly as training did.
//!
//! A model with a long context reads each candidate API's field schema from the prompt (which
//! lets it route to APIs it never saw in training). A small preset trained from scratch on a CPU
//! cannot afford it: the schemas are more than half of every prompt. With `candidate_schemas`
//! off the prompt lists the candidates by name only; the decoder's grammar still enforces the
//! chosen API's JSON Schema, so payloads stay schema-valid either way.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::types::RoutingQuery;
use sapllm_sap::catalog::Catalog;

/// File name of the profile inside an adapter (or base model) folder.
pub const PROFILE_FILE: &str = "sapllm_prompt.json";

/// The prompt profile a model was trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptProfile {
    /// Show each candidate's field schema.
    pub candidate_schemas: bool,
    /// Similar past cases shown at most.
    pub max_similar_cases: usize,
    /// Show the business-rule validator's blocking findings ([`sapllm_sap::preflight`]).
    /// Absent (false) in profiles written before the prompt had them: those models never saw
    /// them, and a prompt they were not trained on would only confuse them.
    #[serde(default)]
    pub pre_checks: bool,
}

impl Default for PromptProfile {
    fn default() -> Self {
        // A model folder without a profile was trained outside this pipeline: show what any
        // model can read (schemas, every similar case), but not findings it never learned.
        PromptProfile { candidate_schemas: true, max_similar_cases: usize::MAX, pre_checks: false }
    }
}

impl PromptProfile {
    /// The query as this profile shows it to the model.
    pub fn apply(&self, q: &RoutingQuery) -> RoutingQuery {
        let mut q = q.clone();
        if !self.candidate_schemas {
            q.api_schemas.iter_mut().for_each(|s| s.schema.clear());
        }
        q.similar_cases.truncate(self.max_similar_cases);
        q
    }

    /// The pre-flight findings the prompt shows for `q` (`None` when the profile shows none).
    pub fn checks(&self, catalog: &Catalog, q: &RoutingQuery) -> Option<Vec<String>> {
        self.pre_checks.then(|| sapllm_sap::preflight::blocking_findings(catalog, &q.doc_type, &q.adc_json))
    }

    /// Reads the profile of a model folder; the default (everything shown) when it has none.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(PROFILE_FILE);
        if !path.exists() {
            return Ok(PromptProfile::default());
        }
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("{} is not a prompt profile", path.display()))
    }

    /// Writes the profile into a model folder.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(PROFILE_FILE), serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", dir.join(PROFILE_FILE).display()))
    }
}
