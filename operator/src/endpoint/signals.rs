//! A canary's live signals, from the Prometheus text exposition of the serving pods' `/metrics`:
//! the canary's own pods give its decisions, server errors and `/v1/route` latency; the current
//! version's pods, which mirror a sample of their live requests to the canary and compare the
//! answers, give decision agreement and the abstention rates of both on the same documents.
//!
//! Everything is cumulative since the canary's pods started (its counters start at zero, and
//! the mirror counters are labelled with the canary's version), so no baseline has to be kept.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sapllm_crds::endpoint::CanarySignals;

/// The metric names the serving pods export (`worker/serve/src/metrics.rs`).
pub mod names {
    /// Decisions by kind and outcome.
    pub const DECISIONS: &str = "sapllm_decisions_total";
    /// HTTP requests by route and status code.
    pub const REQUESTS: &str = "sapllm_requests_total";
    /// Request latency histogram by route.
    pub const LATENCY_BUCKET: &str = "sapllm_request_duration_seconds_bucket";
    /// Mirrored comparisons by the mirror's version and outcome.
    pub const MIRROR_COMPARISONS: &str = "sapllm_mirror_comparisons_total";
    /// Abstentions on mirrored documents by the mirror's version and side (`primary`, `mirror`).
    pub const MIRROR_ABSTENTIONS: &str = "sapllm_mirror_abstentions_total";
}

/// The route whose latency is judged: single-document decisions, what the latency gate measures.
pub const LATENCY_ROUTE: &str = "/v1/route";

/// One sample of the exposition.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name (with `_bucket`, `_sum`, `_count` suffixes as written).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// Parses the text exposition format (version 0.0.4): comments and unreadable lines are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(|l| parse_line(l.trim())).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if rest.starts_with('{') {
        let (parsed, after) = parse_labels(&rest[1..])?;
        labels = parsed;
        rest = after;
    }
    let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
    Some(Sample { name: name.to_string(), labels, value })
}

/// Labels up to the closing brace; returns them and the text after it.
fn parse_labels(mut s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([' ', ',']);
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.insert(key, value);
        s = &s[end + 1..];
    }
}

fn sum<'a>(samples: impl IntoIterator<Item = &'a Sample>, name: &str, keep: impl Fn(&Sample) -> bool) -> f64 {
    samples.into_iter().filter(|s| s.name == name && keep(s)).map(|s| s.value).sum()
}

fn label<'a>(s: &'a Sample, key: &str) -> &'a str {
    s.labels.get(key).map(String::as_str).unwrap_or_default()
}

/// The `q` quantile of a cumulative histogram given as `(upper bound, count)` buckets, the way
/// Prometheus' `histogram_quantile` computes it: linear within the bucket that holds the rank;
/// in the `+Inf` bucket, the highest finite bound. None without observations.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let mut b: Vec<(f64, f64)> = buckets.to_vec();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = b.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(bound, count) in &b {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower);
            }
            let inside = count - below;
            let frac = if inside > 0.0 { (rank - below) / inside } else { 1.0 };
            return Some(lower + (bound - lower) * frac);
        }
        (lower, below) = (bound, count);
    }
    Some(lower)
}

/// What the canary's pods and the current version's pods say, added up.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    /// Samples of every canary pod read.
    pub canary: Vec<Sample>,
    /// Samples of every current-version pod read.
    pub stable: Vec<Sample>,
    /// Container restarts of the canary's pods.
    pub restarts: i32,
    /// Canary pods whose metrics could not be read.
    pub unreadable: i32,
}

/// The signals of canary `version` from `scrape`.
pub fn signals(version: &str, scrape: &Scrape, observed: Time) -> CanarySignals {
    let c = &scrape.canary;
    let api = |s: &Sample| label(s, "route").starts_with("/v1/");
    let requests = sum(c, names::REQUESTS, api);
    let errors = sum(c, names::REQUESTS, |s| api(s) && label(s, "status").starts_with('5'));
    let mut buckets: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for s in c.iter().filter(|s| s.name == names::LATENCY_BUCKET && label(s, "route") == LATENCY_ROUTE) {
        let le = label(s, "le");
        if let Ok(bound) = le.parse::<f64>() {
            buckets.entry(le.to_string()).or_insert((bound, 0.0)).1 += s.value;
        }
    }
    let buckets: Vec<(f64, f64)> = buckets.into_values().collect();
    let ours = |s: &Sample| label(s, "version") == version;
    let comparisons = sum(&scrape.stable, names::MIRROR_COMPARISONS, ours);
    let agreed =
        sum(&scrape.stable, names::MIRROR_COMPARISONS, |s| ours(s) && label(s, "outcome") == "agreed");
    let abstained =
        |side: &str| sum(&scrape.stable, names::MIRROR_ABSTENTIONS, |s| ours(s) && label(s, "side") == side);
    let share = |part: f64, whole: f64| (whole > 0.0).then(|| part / whole);
    CanarySignals {
        observed: Some(observed),
        decisions: sum(c, names::DECISIONS, |_| true) as i64,
        requests: requests as i64,
        errors: errors as i64,
        error_rate: share(errors, requests),
        p95_latency_ms: quantile(0.95, &buckets).map(|s| s * 1000.0),
        comparisons: comparisons as i64,
        agreement: share(agreed, comparisons),
        abstention_rate: share(abstained("mirror"), comparisons),
        baseline_abstention_rate: share(abstained("primary"), comparisons),
        restarts: scrape.restarts,
        unreadable_pods: scrape.unreadable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_is_parsed_with_escaped_label_values() {
        let text = "# HELP x y\n# TYPE a counter\na_total{route=\"/v1/route\",status=\"200\"} 12\nb 3.5 1700000000\nc{l=\"q\\\"uote,}\"} +Inf\nbroken{\n";
        let s = parse(text);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].name, "a_total");
        assert_eq!(s[0].labels["status"], "200");
        assert_eq!(s[0].value, 12.0);
        assert_eq!(s[1].value, 3.5);
        assert_eq!(s[2].labels["l"], "q\"uote,}");
        assert!(s[2].value.is_infinite());
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_like_prometheus() {
        // 100 observations: 50 <= 0.1, 90 <= 0.25, 100 <= 0.5.
        let b = [(0.1, 50.0), (0.25, 90.0), (0.5, 100.0), (f64::INFINITY, 100.0)];
        let p95 = quantile(0.95, &b).unwrap();
        assert!((p95 - 0.375).abs() < 1e-9, "{p95}");
        assert!((quantile(0.5, &b).unwrap() - 0.1).abs() < 1e-9);
        // Beyond the last finite bound: that bound.
        assert_eq!(quantile(0.95, &[(0.5, 1.0), (f64::INFINITY, 10.0)]), Some(0.5));
        assert_eq!(quantile(0.95, &[(0.5, 0.0), (f64::INFINITY, 0.0)]), None);
    }
}
