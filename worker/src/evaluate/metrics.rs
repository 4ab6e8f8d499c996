//! Aggregate metrics over scored decisions: accuracies, latency percentiles, calibration and
//! coverage, overall and by document type.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use sapllm_crds::EvaluationMetrics;
use sapllm_sap::payload::FieldSource;

/// A payload counts as right when at least this share of its fields is right.
pub const PAYLOAD_FIELD_THRESHOLD: f64 = 0.9;

/// One example after the model decided on it (a line of detailed_results.jsonl).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredDecision {
    pub doc_id: String,
    pub doc_type: String,
    /// "routing" or "exception".
    pub kind: String,
    pub target: String,
    /// The endpoint (routing) or action (exception) the model chose, even when it abstained.
    pub predicted: String,
    pub confidence: f64,
    /// Confidence below the threshold: routed to review instead of executed.
    pub abstained: bool,
    /// Predicted endpoint/action equals the target.
    pub choice_right: bool,
    /// Share of payload (or correction) fields right.
    pub field_accuracy: f64,
    pub latency_ms: f64,
    /// Tokens generated, and how many of them the grammar forced (no model sampling).
    pub tokens: usize,
    pub forced_tokens: usize,
    /// Business rules the predicted payload passes / checks.
    pub rules_passed: usize,
    pub rules_checked: usize,
    /// Decoding or parsing failed; the decision counts as wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Where each posted value came from (routing decisions with a payload).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provenance: Vec<FieldSource>,
    /// Payload values no source accounts for (JSON pointers); there must be none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unsourced: Vec<String>,
    /// How the document's keys were spelled: `canonical`, `seen` (a family training data has)
    /// or `unseen` (held out from training; these decisions are reported apart, not gated).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_spelling: String,
}

impl ScoredDecision {
    /// A decision before scoring: wrong, abstained, nothing generated (what a decoding error
    /// leaves).
    pub fn unscored(doc_id: &str, doc_type: &str, kind: &str, target: &str, latency_ms: f64) -> Self {
        ScoredDecision {
            doc_id: doc_id.into(),
            doc_type: doc_type.into(),
            kind: kind.into(),
            target: target.into(),
            predicted: String::new(),
            confidence: 0.0,
            abstained: true,
            choice_right: false,
            field_accuracy: 0.0,
            latency_ms,
            tokens: 0,
            forced_tokens: 0,
            rules_passed: 0,
            rules_checked: 0,
            error: None,
            provenance: Vec::new(),
            unsourced: Vec::new(),
            key_spelling: String::new(),
        }
    }

    /// Payload right enough to count (>= 90 % of fields).
    pub fn payload_right(&self) -> bool {
        self.field_accuracy + 1e-12 >= PAYLOAD_FIELD_THRESHOLD
    }
    /// Endpoint and payload both right, and executed (not abstained).
    pub fn routed_right(&self) -> bool {
        !self.abstained && self.choice_right && self.payload_right()
    }
}

/// Metrics of one group of decisions.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GroupMetrics {
    pub samples: usize,
    pub routing_accuracy: f64,
    pub api_selection_accuracy: f64,
    pub payload_accuracy: f64,
    pub mean_field_accuracy: f64,
    pub coverage: f64,
    pub accepted_accuracy: f64,
    pub mean_confidence: f64,
    /// Calibration of this group's confidence against a right endpoint.
    #[serde(default)]
    pub expected_calibration_error: f64,
    /// Pearson correlation of confidence with a right endpoint (0 without variance).
    #[serde(default)]
    pub confidence_correlation: f64,
}

/// A point of the coverage curve: at this threshold, this share is accepted with this accuracy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoveragePoint {
    pub threshold: f64,
    pub coverage: f64,
    pub accepted_accuracy: f64,
}

/// Everything `evaluate` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub abstain_threshold: f64,
    /// The metrics the gates check (routing decisions only).
    pub metrics: EvaluationMetrics,
    pub by_doc_type: BTreeMap<String, GroupMetrics>,
    pub coverage_curve: Vec<CoveragePoint>,
    /// Pearson correlation of confidence with a right endpoint.
    pub confidence_correlation: f64,
    pub latency_p50_ms: f64,
    /// Share of generated tokens forced by the grammar.
    pub forced_token_share: f64,
    pub mean_rules_pass_rate: f64,
    pub decode_errors: usize,
    /// Posted values by source (`document`, `catalog_default`, `derived`).
    #[serde(default)]
    pub values_by_source: BTreeMap<String, usize>,
    /// `doc_id` and JSON pointer of every value without a source (must be empty).
    #[serde(default)]
    pub unsourced_values: Vec<String>,
    /// Routing metrics by key spelling (`canonical`, `seen`, `unseen`): the held-out spellings
    /// are scored on the same documents as the gated decisions, respelled.
    #[serde(default)]
    pub by_key_spelling: BTreeMap<String, GroupMetrics>,
}

/// Summarises routing and exception decisions at an abstention threshold.
pub fn summarize(decisions: &[ScoredDecision], abstain_threshold: f64) -> Summary {
    let routing: Vec<&ScoredDecision> = decisions.iter().filter(|d| d.kind == "routing").collect();
    let mut by_spelling: BTreeMap<String, Vec<&ScoredDecision>> = BTreeMap::new();
    for d in decisions.iter().filter(|d| d.kind == "routing" || d.kind == UNSEEN_KEYS_KIND) {
        if !d.key_spelling.is_empty() {
            by_spelling.entry(d.key_spelling.clone()).or_default().push(d);
        }
    }
    let exceptions: Vec<&ScoredDecision> = decisions.iter().filter(|d| d.kind == "exception").collect();
    let overall = group(&routing);
    let mut latencies: Vec<f64> = decisions.iter().map(|d| d.latency_ms).collect();
    latencies.sort_by(f64::total_cmp);
    let exception_action_accuracy =
        (!exceptions.is_empty()).then(|| share(&exceptions, |d| !d.abstained && d.choice_right));
    let metrics = EvaluationMetrics {
        samples: routing.len() as u64,
        routing_accuracy: overall.routing_accuracy,
        api_selection_accuracy: overall.api_selection_accuracy,
        payload_accuracy: overall.payload_accuracy,
        mean_field_accuracy: overall.mean_field_accuracy,
        exception_action_accuracy,
        coverage: overall.coverage,
        accepted_accuracy: overall.accepted_accuracy,
        latency_p50_ms: percentile(&latencies, 50.0),
        latency_p95_ms: percentile(&latencies, 95.0),
        latency_p99_ms: percentile(&latencies, 99.0),
        mean_confidence: overall.mean_confidence,
        expected_calibration_error: expected_calibration_error(&routing, 10),
    };
    let mut by_type: BTreeMap<String, Vec<&ScoredDecision>> = BTreeMap::new();
    for d in &routing {
        by_type.entry(d.doc_type.clone()).or_default().push(d);
    }
    let tokens: usize = decisions.iter().map(|d| d.tokens).sum();
    let forced: usize = decisions.iter().map(|d| d.forced_tokens).sum();
    let rule_rates: Vec<f64> = routing
        .iter()
        .filter(|d| d.rules_checked > 0)
        .map(|d| d.rules_passed as f64 / d.rules_checked as f64)
        .collect();
    Summary {
        abstain_threshold,
        latency_p50_ms: metrics.latency_p50_ms,
        metrics,
        by_doc_type: by_type.iter().map(|(k, v)| (k.clone(), group(v))).collect(),
        coverage_curve: coverage_curve(&routing),
        confidence_correlation: overall.confidence_correlation,
        forced_token_share: if tokens == 0 { 0.0 } else { forced as f64 / tokens as f64 },
        mean_rules_pass_rate: mean(&rule_rates),
        decode_errors: decisions.iter().filter(|d| d.error.is_some()).count(),
        values_by_source: routing.iter().flat_map(|d| &d.provenance).fold(BTreeMap::new(), |mut m, s| {
            *m.entry(s.provenance.kind().to_string()).or_insert(0) += 1;
            m
        }),
        unsourced_values: routing
            .iter()
            .flat_map(|d| d.unsourced.iter().map(move |p| format!("{} {p}", d.doc_id)))
            .collect(),
        by_key_spelling: by_spelling.iter().map(|(k, v)| (k.clone(), group(v))).collect(),
    }
}

/// `kind` of the decisions on documents respelled in the held-out key family: reported by
/// spelling, never gated (the gated sample already holds the same documents).
pub const UNSEEN_KEYS_KIND: &str = "routing_unseen_keys";

fn right_endpoint(d: &ScoredDecision) -> f64 {
    if d.choice_right { 1.0 } else { 0.0 }
}

fn group(ds: &[&ScoredDecision]) -> GroupMetrics {
    let accepted: Vec<&ScoredDecision> = ds.iter().copied().filter(|d| !d.abstained).collect();
    GroupMetrics {
        samples: ds.len(),
        // Abstentions are not wrong decisions, but they are not right ones either: the gates
        // measure what the engine executes on its own.
        routing_accuracy: share(ds, |d| d.routed_right()),
        api_selection_accuracy: share(ds, |d| !d.abstained && d.choice_right),
        payload_accuracy: share(ds, |d| !d.abstained && d.payload_right()),
        mean_field_accuracy: mean(&ds.iter().map(|d| d.field_accuracy).collect::<Vec<_>>()),
        coverage: share(ds, |d| !d.abstained),
        accepted_accuracy: share(&accepted, |d| d.choice_right),
        mean_confidence: mean(&ds.iter().map(|d| d.confidence).collect::<Vec<_>>()),
        expected_calibration_error: expected_calibration_error(ds, 10),
        confidence_correlation: pearson(
            &ds.iter().map(|d| d.confidence).collect::<Vec<_>>(),
            &ds.iter().map(|d| right_endpoint(d)).collect::<Vec<_>>(),
        ),
    }
}

fn share(ds: &[&ScoredDecision], pred: impl Fn(&ScoredDecision) -> bool) -> f64 {
    if ds.is_empty() { 0.0 } else { ds.iter().filter(|d| pred(d)).count() as f64 / ds.len() as f64 }
}

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() { 0.0 } else { xs.iter().sum::<f64>() / xs.len() as f64 }
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Expected calibration error: the sample-weighted mean |accuracy - confidence| over equal-width
/// confidence bins, with a right endpoint as "accurate".
pub fn expected_calibration_error(ds: &[&ScoredDecision], bins: usize) -> f64 {
    if ds.is_empty() {
        return 0.0;
    }
    let mut sum_conf = vec![0.0; bins];
    let mut sum_acc = vec![0.0; bins];
    let mut count = vec![0usize; bins];
    for d in ds {
        let b = ((d.confidence.clamp(0.0, 1.0) * bins as f64) as usize).min(bins - 1);
        sum_conf[b] += d.confidence;
        sum_acc[b] += if d.choice_right { 1.0 } else { 0.0 };
        count[b] += 1;
    }
    (0..bins).filter(|&b| count[b] > 0).map(|b| (sum_acc[b] - sum_conf[b]).abs()).sum::<f64>()
        / ds.len() as f64
}

/// Pearson correlation; 0 when either side has no variance.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let (mx, my) = (mean(x), mean(y));
    let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    if vx <= 0.0 || vy <= 0.0 { 0.0 } else { cov / (vx * vy).sqrt() }
}

/// Coverage and accepted accuracy as the abstention threshold moves from 0 to 1.
pub fn coverage_curve(ds: &[&ScoredDecision]) -> Vec<CoveragePoint> {
    (0..=20)
        .map(|i| {
            let threshold = i as f64 / 20.0;
            let accepted: Vec<&ScoredDecision> =
                ds.iter().copied().filter(|d| d.error.is_none() && d.confidence >= threshold).collect();
            CoveragePoint {
                threshold,
                coverage: if ds.is_empty() { 0.0 } else { accepted.len() as f64 / ds.len() as f64 },
                accepted_accuracy: share(&accepted, |d| d.choice_right),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(
        doc_type: &str,
        right: bool,
        field_acc: f64,
        conf: f64,
        abstained: bool,
        latency: f64,
    ) -> ScoredDecision {
        ScoredDecision {
            doc_id: "x".into(),
            doc_type: doc_type.into(),
            kind: "routing".into(),
            target: "A".into(),
            predicted: if right { "A" } else { "B" }.into(),
            confidence: conf,
            abstained,
            choice_right: right,
            field_accuracy: field_acc,
            latency_ms: latency,
            tokens: 10,
            forced_tokens: 4,
            rules_passed: 3,
            rules_checked: 4,
            error: None,
            provenance: vec![],
            unsourced: vec![],
            key_spelling: String::new(),
        }
    }

    #[test]
    fn routing_needs_endpoint_and_payload_and_abstentions_do_not_count_as_right() {
        let ds = vec![
            d("po", true, 1.0, 0.9, false, 10.0),
            d("po", true, 0.8, 0.9, false, 20.0), // payload below 90 %
            d("inv", false, 1.0, 0.9, false, 30.0),
            d("inv", true, 1.0, 0.2, true, 40.0), // abstained
        ];
        let s = summarize(&ds, 0.5);
        assert_eq!(s.metrics.routing_accuracy, 0.25);
        assert_eq!(s.metrics.api_selection_accuracy, 0.5);
        assert_eq!(s.metrics.payload_accuracy, 0.5);
        assert_eq!(s.metrics.coverage, 0.75);
        assert!((s.metrics.accepted_accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.by_doc_type["po"].samples, 2);
        assert_eq!(s.by_doc_type["inv"].api_selection_accuracy, 0.0);
        assert!((s.forced_token_share - 0.4).abs() < 1e-12);
        assert_eq!(s.metrics.latency_p50_ms, 20.0);
        assert_eq!(s.metrics.latency_p99_ms, 40.0);
        assert!(s.values_by_source.is_empty() && s.unsourced_values.is_empty());
    }

    #[test]
    fn values_are_counted_by_source_and_unsourced_ones_listed_with_their_document() {
        use sapllm_sap::payload::Provenance;
        let mut a = d("po", true, 1.0, 0.9, false, 1.0);
        a.provenance = vec![
            FieldSource {
                pointer: "/Supplier".into(),
                provenance: Provenance::Document { from: vec!["vendor.id".into()], transform: "code".into() },
            },
            FieldSource { pointer: "/PurchaseOrderType".into(), provenance: Provenance::CatalogDefault },
            FieldSource {
                pointer: "/CompanyCode".into(),
                provenance: Provenance::Document { from: vec!["company".into()], transform: "code".into() },
            },
        ];
        let mut b = d("po", true, 1.0, 0.9, false, 1.0);
        b.doc_id = "doc-b".into();
        b.unsourced = vec!["/Plant".into()];
        let s = summarize(&[a, b], 0.5);
        assert_eq!(s.values_by_source.get("document"), Some(&2));
        assert_eq!(s.values_by_source.get("catalog_default"), Some(&1));
        assert_eq!(s.unsourced_values, vec!["doc-b /Plant".to_string()]);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 95.0), 95.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 95.0), 7.0);
    }

    #[test]
    fn calibration_error_is_zero_when_confidence_matches_accuracy() {
        // 10 decisions at confidence 0.7, 7 right: perfectly calibrated.
        let ds: Vec<ScoredDecision> = (0..10).map(|i| d("po", i < 7, 1.0, 0.7, false, 1.0)).collect();
        let refs: Vec<&ScoredDecision> = ds.iter().collect();
        assert!(expected_calibration_error(&refs, 10) < 1e-12);
        // Over-confident: 1.0 confidence, half right.
        let ds: Vec<ScoredDecision> = (0..10).map(|i| d("po", i < 5, 1.0, 1.0, false, 1.0)).collect();
        let refs: Vec<&ScoredDecision> = ds.iter().collect();
        assert!((expected_calibration_error(&refs, 10) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn coverage_falls_and_accuracy_rises_as_the_threshold_moves() {
        let ds = [d("po", true, 1.0, 0.95, false, 1.0), d("po", false, 1.0, 0.3, false, 1.0)];
        let refs: Vec<&ScoredDecision> = ds.iter().collect();
        let curve = coverage_curve(&refs);
        let at = |t: f64| curve.iter().find(|p| (p.threshold - t).abs() < 1e-9).unwrap().clone();
        assert_eq!((at(0.0).coverage, at(0.0).accepted_accuracy), (1.0, 0.5));
        assert_eq!((at(0.5).coverage, at(0.5).accepted_accuracy), (0.5, 1.0));
        assert_eq!(at(1.0).coverage, 0.0);
        assert!(pearson(&[0.95, 0.3], &[1.0, 0.0]) > 0.99);
    }
}
