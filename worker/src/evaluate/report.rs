//! Writes what `evaluate` produces: EVALUATION_REPORT.md, metrics.json, detailed_results.jsonl,
//! accuracy_metrics.png, accuracy_by_doc_type.png and coverage_curve.png.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use sapllm_crds::{GateResult, Gates, Verdict, verdict_of};

use super::metrics::{ScoredDecision, Summary};
use crate::plot::{Series, bar_chart, line_chart};

/// The report's file names.
pub const REPORT_MD: &str = "EVALUATION_REPORT.md";
pub const METRICS_JSON: &str = "metrics.json";
pub const DETAILS_JSONL: &str = "detailed_results.jsonl";

/// Gate results and verdict of a summary.
pub fn judge(summary: &Summary, gates: &Gates) -> (Vec<GateResult>, Verdict) {
    let results = gates.check(&summary.metrics);
    let verdict = verdict_of(&results);
    (results, verdict)
}

/// Writes every report file into `out`.
pub fn write_report(
    out: &Path,
    model_version: &str,
    summary: &Summary,
    decisions: &[ScoredDecision],
    gates: &[GateResult],
    verdict: Verdict,
) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let metrics = json!({
        "model_version": model_version,
        "verdict": verdict,
        "gates": gates,
        "summary": summary,
    });
    std::fs::write(out.join(METRICS_JSON), serde_json::to_string_pretty(&metrics)?)?;
    let mut details = std::io::BufWriter::new(std::fs::File::create(out.join(DETAILS_JSONL))?);
    for d in decisions {
        serde_json::to_writer(&mut details, d)?;
        details.write_all(b"\n")?;
    }
    details.flush()?;
    std::fs::write(out.join(REPORT_MD), markdown(model_version, summary, gates, verdict))?;
    charts(out, summary, gates)?;
    Ok(())
}

fn charts(out: &Path, s: &Summary, gates: &[GateResult]) -> Result<()> {
    let m = &s.metrics;
    let mut names = vec!["routing", "api selection", "payload", "mean field", "coverage", "accepted acc."];
    let mut values = vec![
        m.routing_accuracy,
        m.api_selection_accuracy,
        m.payload_accuracy,
        m.mean_field_accuracy,
        m.coverage,
        m.accepted_accuracy,
    ];
    if let Some(x) = m.exception_action_accuracy {
        names.push("exception action");
        values.push(x);
    }
    let gate = gates.iter().find(|g| g.name == "routingAccuracy").map(|g| ("routing gate", g.threshold));
    bar_chart(
        &out.join("accuracy_metrics.png"),
        "Accuracy (all routing examples)",
        &names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        &[("value", values)],
        1.0,
        gate,
    )?;
    if !s.by_doc_type.is_empty() {
        let cats: Vec<String> = s.by_doc_type.keys().cloned().collect();
        let pick =
            |f: fn(&super::metrics::GroupMetrics) -> f64| s.by_doc_type.values().map(f).collect::<Vec<_>>();
        bar_chart(
            &out.join("accuracy_by_doc_type.png"),
            "Accuracy by document type",
            &cats,
            &[
                ("api selection", pick(|g| g.api_selection_accuracy)),
                ("payload", pick(|g| g.payload_accuracy)),
                ("routing", pick(|g| g.routing_accuracy)),
            ],
            1.0,
            gate,
        )?;
    }
    let curve = |f: fn(&super::metrics::CoveragePoint) -> f64| {
        s.coverage_curve.iter().map(|p| (p.threshold, f(p))).collect::<Vec<_>>()
    };
    line_chart(
        &out.join("coverage_curve.png"),
        "Coverage and accepted accuracy vs abstention threshold",
        "confidence threshold",
        "share",
        &[
            Series { name: "coverage", points: curve(|p| p.coverage) },
            Series { name: "accuracy on accepted", points: curve(|p| p.accepted_accuracy) },
        ],
    )?;
    Ok(())
}

fn pct(x: f64) -> String {
    format!("{:.2} %", x * 100.0)
}

/// The human-readable report.
pub fn markdown(model_version: &str, s: &Summary, gates: &[GateResult], verdict: Verdict) -> String {
    let m = &s.metrics;
    let mut md = String::new();
    let _ = writeln!(md, "# Evaluation report\n");
    let _ = writeln!(md, "- Model version: `{model_version}`");
    let _ = writeln!(md, "- Verdict: **{verdict:?}**");
    let _ = writeln!(md, "- Routing examples scored: {}", m.samples);
    let _ = writeln!(
        md,
        "- Abstention threshold: {:.2} (decisions below it go to review)\n",
        s.abstain_threshold
    );
    let _ = writeln!(md, "## Gates\n\n| gate | threshold | value | passed |\n|---|---|---|---|");
    for g in gates {
        let _ = writeln!(
            md,
            "| {} | {} {} | {:.4} | {} |",
            g.name,
            g.comparator,
            g.threshold,
            g.value,
            if g.passed { "yes" } else { "**no**" }
        );
    }
    let _ = writeln!(md, "\n## Metrics\n\n| metric | value |\n|---|---|");
    let rows = [
        ("routing accuracy (endpoint and payload right, executed)", pct(m.routing_accuracy)),
        ("API selection accuracy", pct(m.api_selection_accuracy)),
        ("payload accuracy (>= 90 % of fields right)", pct(m.payload_accuracy)),
        ("mean field accuracy", pct(m.mean_field_accuracy)),
        ("coverage (not abstained)", pct(m.coverage)),
        ("API selection accuracy on accepted decisions", pct(m.accepted_accuracy)),
        ("exception action accuracy", m.exception_action_accuracy.map(pct).unwrap_or_else(|| "n/a".into())),
        (
            "latency P50 / P95 / P99",
            format!("{:.1} / {:.1} / {:.1} ms", m.latency_p50_ms, m.latency_p95_ms, m.latency_p99_ms),
        ),
        ("mean confidence", format!("{:.3}", m.mean_confidence)),
        ("expected calibration error (10 bins)", format!("{:.3}", m.expected_calibration_error)),
        ("correlation of confidence with a right endpoint", format!("{:.3}", s.confidence_correlation)),
        ("business rules passed by predicted payloads", pct(s.mean_rules_pass_rate)),
        ("tokens forced by the grammar (no sampling)", pct(s.forced_token_share)),
        ("decoding errors", s.decode_errors.to_string()),
    ];
    for (k, v) in rows {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    let _ = writeln!(
        md,
        "\n## By document type\n\n| type | n | routing | API selection | payload | mean field | coverage | mean conf. | ECE | conf./right corr. |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    for (t, g) in &s.by_doc_type {
        let _ = writeln!(
            md,
            "| {t} | {} | {} | {} | {} | {} | {} | {:.3} | {:.3} | {:.3} |",
            g.samples,
            pct(g.routing_accuracy),
            pct(g.api_selection_accuracy),
            pct(g.payload_accuracy),
            pct(g.mean_field_accuracy),
            pct(g.coverage),
            g.mean_confidence,
            g.expected_calibration_error,
            g.confidence_correlation
        );
    }
    let _ = writeln!(
        md,
        "\n## By key spelling\n\n`unseen`: the same documents respelled in a family of keys training never saw (Title Case, kebab-case lines, nested partner objects); reported, not gated.\n\n| spelling | n | routing | API selection | payload | mean field |\n|---|---|---|---|---|---|"
    );
    for (k, g) in &s.by_key_spelling {
        let _ = writeln!(
            md,
            "| {k} | {} | {} | {} | {} | {} |",
            g.samples,
            pct(g.routing_accuracy),
            pct(g.api_selection_accuracy),
            pct(g.payload_accuracy),
            pct(g.mean_field_accuracy)
        );
    }
    let by_source: Vec<String> = s.values_by_source.iter().map(|(k, n)| format!("{n} {k}")).collect();
    let _ = writeln!(
        md,
        "\n## Provenance\n\nPosted values by source: {}. Values without a source: {}.",
        if by_source.is_empty() { "none posted".to_string() } else { by_source.join(", ") },
        s.unsourced_values.len()
    );
    for u in s.unsourced_values.iter().take(20) {
        let _ = writeln!(md, "- unsourced: `{u}`");
    }
    let _ = writeln!(
        md,
        "\n## Coverage vs threshold\n\n| threshold | coverage | accuracy on accepted |\n|---|---|---|"
    );
    for p in s.coverage_curve.iter().step_by(2) {
        let _ = writeln!(md, "| {:.2} | {} | {} |", p.threshold, pct(p.coverage), pct(p.accepted_accuracy));
    }
    let _ = writeln!(
        md,
        "\n![accuracy](accuracy_metrics.png)\n![by type](accuracy_by_doc_type.png)\n![coverage](coverage_curve.png)\n\nPer-example results: `{DETAILS_JSONL}`."
    );
    md
}
