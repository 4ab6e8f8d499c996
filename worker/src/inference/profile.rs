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
use crate::sap::catalog::Catalog;

/// File name of the profile inside an adapter (or base model) folder.
pub const PROFILE_FILE: &str = "sapllm_prompt.json";

/// The prompt profile a model was trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptProfile {
    /// Show each candidate's field schema.
    pub candidate_schemas: bool,
    /// Similar past cases shown at most.
    pub max_similar_cases: usize,
    /// Show the business-rule validator's blocking findings ([`crate::sap::preflight`]).
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
        self.pre_checks.then(|| crate::sap::preflight::blocking_findings(catalog, &q.doc_type, &q.adc_json))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_only_profile_clears_schemas_and_caps_similar_cases_and_round_trips() {
        let mut q = super::super::testkit::sample_queries(1, 3).pop().unwrap();
        q.similar_cases = vec![
            crate::dataprep::SimilarCase {
                doc_id: "a".into(),
                doc_type: q.doc_type.clone(),
                endpoint: "X".into(),
                success: true,
                score: 1.0,
                summary: "s".into(),
            };
            3
        ];
        assert!(q.api_schemas.iter().any(|s| !s.schema.is_empty()));
        let p = PromptProfile { candidate_schemas: false, max_similar_cases: 1, pre_checks: true };
        let shown = p.apply(&q);
        assert!(shown.api_schemas.iter().all(|s| s.schema.is_empty()));
        assert_eq!(shown.api_schemas.len(), q.api_schemas.len(), "candidates stay, by name");
        assert_eq!(shown.similar_cases.len(), 1);
        assert_eq!(PromptProfile::default().apply(&q), q);
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(PromptProfile::load(dir.path()).unwrap(), PromptProfile::default());
        p.save(dir.path()).unwrap();
        assert_eq!(PromptProfile::load(dir.path()).unwrap(), p);
    }

    #[test]
    fn profiles_written_before_pre_checks_existed_show_none() {
        let old: PromptProfile =
            serde_json::from_str(r#"{"candidate_schemas":false,"max_similar_cases":1}"#).unwrap();
        assert!(!old.pre_checks);
        let catalog = Catalog::builtin();
        let mut q = super::super::testkit::sample_queries(1, 5).pop().unwrap();
        assert_eq!(old.checks(&catalog, &q), None);
        let new = PromptProfile { pre_checks: true, ..old };
        assert_eq!(new.checks(&catalog, &q), Some(vec![]), "a complete sample document has no findings");
        // Every key removed: whatever the type, something business-mandatory is now missing.
        q.adc_json = serde_json::json!({});
        let found = new.checks(&catalog, &q).unwrap();
        assert!(!found.is_empty() && found.iter().all(|f| f.starts_with("required_")), "{found:?}");
    }
}
