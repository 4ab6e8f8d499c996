//! The dataset card: what was produced, from what, and what failed. Written as JSON (for
//! machines: the operator and the training stages read it) and Markdown (for people).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use super::log::LogError;

/// Similar-case retrieval facts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RetrievalCard {
    pub method: String,
    pub k: usize,
    pub train_documents_indexed: u64,
    pub mean_similar_cases: f64,
    /// Similar cases of any example that were not train documents (must be 0).
    pub leak_violations: u64,
}

/// Counts and facts of one data-prep run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DatasetCard {
    pub source: String,
    pub seed: u64,
    pub records_read: u64,
    pub invalid_lines: u64,
    /// The first malformed lines (line, field, message).
    pub invalid_samples: Vec<LogError>,
    /// Routing examples per split.
    pub splits: BTreeMap<String, u64>,
    /// Routing examples per document type and split.
    pub doc_types: BTreeMap<String, BTreeMap<String, u64>>,
    pub target_endpoints: BTreeMap<String, u64>,
    pub exception_examples: u64,
    pub exception_actions: BTreeMap<String, u64>,
    pub preference_pairs: u64,
    pub preference_kinds: BTreeMap<String, u64>,
    /// Failed rule checks of target payloads, by rule id.
    pub rule_failures: BTreeMap<String, u64>,
    /// Documents whose type is a close call from content alone.
    pub ambiguous_documents: u64,
    pub logged_success_rate: f64,
    /// Groups of more than one record (resubmissions, repeated ids), kept within one split.
    pub near_duplicate_groups: u64,
    pub records_in_near_duplicate_groups: u64,
    pub retrieval: RetrievalCard,
    pub files: Vec<String>,
    pub elapsed_s: f64,
    /// Seconds in pass 1 (read, terms, keys), index building, and pass 2 (examples).
    #[serde(default)]
    pub stage_s: BTreeMap<String, f64>,
}

impl DatasetCard {
    /// The card as Markdown.
    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let total: u64 = self.splits.values().sum();
        let _ = writeln!(s, "# Dataset card: SAP routing examples\n");
        let _ = writeln!(s, "- source: {} (seed {})", self.source, self.seed);
        let _ = writeln!(s, "- records read: {}, invalid lines: {}", self.records_read, self.invalid_lines);
        let _ = writeln!(
            s,
            "- routing examples: {total}; exception examples: {}; preference pairs: {}",
            self.exception_examples, self.preference_pairs
        );
        let _ = writeln!(s, "- logged success rate: {:.1}%", self.logged_success_rate * 100.0);
        let _ = writeln!(
            s,
            "- ambiguous documents (type is a close call from content): {}",
            self.ambiguous_documents
        );
        let _ = writeln!(
            s,
            "- near-duplicate groups: {} ({} records), each kept within one split",
            self.near_duplicate_groups, self.records_in_near_duplicate_groups
        );
        let r = &self.retrieval;
        let _ = writeln!(
            s,
            "- similar cases: {} (k={}), {} train documents indexed, {:.2} per example, leak violations: {}",
            r.method, r.k, r.train_documents_indexed, r.mean_similar_cases, r.leak_violations
        );
        let _ = writeln!(s, "- elapsed: {:.1} s\n", self.elapsed_s);
        let _ = writeln!(
            s,
            "## Examples per document type and split\n\n| doc type | train | val | test |\n|---|---:|---:|---:|"
        );
        for (t, m) in &self.doc_types {
            let g = |k: &str| m.get(k).copied().unwrap_or(0);
            let _ = writeln!(s, "| {t} | {} | {} | {} |", g("train"), g("val"), g("test"));
        }
        table(&mut s, "Target endpoints", "endpoint", &self.target_endpoints);
        table(&mut s, "Exception actions", "action", &self.exception_actions);
        table(&mut s, "Preference pair kinds", "rejected kind", &self.preference_kinds);
        table(&mut s, "Rule failures of target payloads", "rule", &self.rule_failures);
        if !self.invalid_samples.is_empty() {
            let _ = writeln!(s, "\n## Invalid lines (first {})\n", self.invalid_samples.len());
            for e in &self.invalid_samples {
                let _ = writeln!(s, "- {e}");
            }
        }
        let _ = writeln!(s, "\n## Files\n");
        for f in &self.files {
            let _ = writeln!(s, "- {f}");
        }
        s
    }
}

fn table(s: &mut String, title: &str, col: &str, m: &BTreeMap<String, u64>) {
    let _ = writeln!(s, "\n## {title}\n\n| {col} | count |\n|---|---:|");
    for (k, v) in m {
        let _ = writeln!(s, "| {k} | {v} |");
    }
}
