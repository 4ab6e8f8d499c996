//! Prometheus metrics (`/metrics`): requests by route and status, latency, in-flight requests,
//! queue depth, batch sizes, tokens generated (sampled vs grammar-forced), abstentions and the
//! confidence distribution; with `--mirror-to`, how the decisions of the server mirrored to
//! compare with this one's ([`super::mirror`]).

use anyhow::Result;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// All metrics of one server, in their own registry (tests run several servers per process).
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub inflight: IntGauge,
    pub queue_depth: IntGauge,
    pub batch_size: Histogram,
    pub tokens: IntCounterVec,
    pub decisions: IntCounterVec,
    pub abstentions: IntCounterVec,
    pub confidence: HistogramVec,
    pub ready: IntGauge,
    pub feedback: IntCounterVec,
    /// `sapllm_jobs_cancelled_total{stage,reason}`: model jobs given up because their client
    /// did (`reason`: `client_gone`, the request's connection closed; `timeout`, the request
    /// timeout passed), by `stage`: `queued` (skipped before decoding) or `decoding` (a
    /// completion stopped mid-answer).
    pub cancelled: IntCounterVec,
    /// `sapllm_feedback_forwarded_total{result}`: feedback forwarded to the replica that made
    /// the decision (`--peer-domain`), by result: `ok` (it answered, whatever its status),
    /// `unreachable`, `timeout`, `error`. The series exist (at 0) when peers are enabled.
    pub feedback_forwarded: IntCounterVec,
    /// `sapllm_mirror_comparisons_total{version,outcome}`: mirrored decisions compared, by the
    /// other side's `x-sapllm-model-version` (`""` when it sends none) and outcome (`agreed`,
    /// `endpoint_differs`, `values_differ`).
    pub mirror_comparisons: IntCounterVec,
    /// `sapllm_mirror_abstentions_total{version,side}`: compared pairs where `side` (`primary`:
    /// this server, `mirror`: the other) abstained.
    pub mirror_abstentions: IntCounterVec,
    /// `sapllm_mirror_failures_total{reason}`: mirrors without a comparison (`unreachable`,
    /// `timeout`, `status`, `invalid`, `skipped`).
    pub mirror_failures: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("sapllm_requests_total", "HTTP requests by route and status code"),
            &["route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("sapllm_request_duration_seconds", "HTTP request latency by route")
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["route"],
        )?;
        let inflight = IntGauge::new("sapllm_inflight_requests", "HTTP requests being served")?;
        let queue_depth = IntGauge::new("sapllm_queue_depth", "Decision jobs waiting for the model")?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("sapllm_batch_size", "Decisions decoded together")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
        )?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "sapllm_tokens_generated_total",
                "Answer tokens by origin (sampled by the model, forced by the grammar)",
            ),
            &["origin"],
        )?;
        let decisions = IntCounterVec::new(
            Opts::new("sapllm_decisions_total", "Decisions by kind and outcome"),
            &["kind", "outcome"],
        )?;
        let abstentions = IntCounterVec::new(
            Opts::new(
                "sapllm_abstentions_total",
                "Decisions below the confidence threshold (sent to review)",
            ),
            &["kind"],
        )?;
        let confidence = HistogramVec::new(
            HistogramOpts::new("sapllm_decision_confidence", "Confidence of decisions")
                .buckets((1..=20).map(|i| i as f64 * 0.05).collect()),
            &["kind"],
        )?;
        let ready = IntGauge::new("sapllm_ready", "1 once the model is loaded and warmed up")?;
        let feedback = IntCounterVec::new(
            Opts::new("sapllm_feedback_total", "Feedback written to the transaction log, by outcome"),
            &["outcome"],
        )?;
        let cancelled = IntCounterVec::new(
            Opts::new(
                "sapllm_jobs_cancelled_total",
                "Model jobs given up because their client went away or timed out, by stage (queued, decoding)",
            ),
            &["stage", "reason"],
        )?;
        let feedback_forwarded = IntCounterVec::new(
            Opts::new(
                "sapllm_feedback_forwarded_total",
                "Feedback forwarded to the replica that made the decision, by result",
            ),
            &["result"],
        )?;
        let mirror_comparisons = IntCounterVec::new(
            Opts::new(
                "sapllm_mirror_comparisons_total",
                "Mirrored decisions compared with this server's, by the mirror's model version and outcome",
            ),
            &["version", "outcome"],
        )?;
        let mirror_abstentions = IntCounterVec::new(
            Opts::new(
                "sapllm_mirror_abstentions_total",
                "Compared decision pairs in which a side abstained (primary: this server, mirror: the other)",
            ),
            &["version", "side"],
        )?;
        let mirror_failures = IntCounterVec::new(
            Opts::new("sapllm_mirror_failures_total", "Mirrored requests that gave no comparison, by reason"),
            &["reason"],
        )?;
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(inflight.clone()),
            Box::new(queue_depth.clone()),
            Box::new(batch_size.clone()),
            Box::new(tokens.clone()),
            Box::new(decisions.clone()),
            Box::new(abstentions.clone()),
            Box::new(confidence.clone()),
            Box::new(ready.clone()),
            Box::new(feedback.clone()),
            Box::new(cancelled.clone()),
            Box::new(feedback_forwarded.clone()),
            Box::new(mirror_comparisons.clone()),
            Box::new(mirror_abstentions.clone()),
            Box::new(mirror_failures.clone()),
        ] {
            registry.register(c)?;
        }
        // Series exist from the start (at 0), so dashboards and alerts see them before traffic.
        for kind in ["routing", "exception"] {
            abstentions.with_label_values(&[kind]);
            for outcome in ["accepted", "abstained"] {
                decisions.with_label_values(&[kind, outcome]);
            }
        }
        for outcome in ["posted", "rejected", "corrected"] {
            feedback.with_label_values(&[outcome]);
        }
        for origin in ["sampled", "forced"] {
            tokens.with_label_values(&[origin]);
        }
        for stage in ["queued", "decoding"] {
            for reason in ["client_gone", "timeout"] {
                cancelled.with_label_values(&[stage, reason]);
            }
        }
        Ok(Metrics {
            registry,
            requests,
            latency,
            inflight,
            queue_depth,
            batch_size,
            tokens,
            decisions,
            abstentions,
            confidence,
            ready,
            feedback,
            cancelled,
            feedback_forwarded,
            mirror_comparisons,
            mirror_abstentions,
            mirror_failures,
        })
    }

    /// Records one decision.
    pub fn decision(&self, kind: &str, confidence: f64, abstained: bool, sampled: usize, forced: usize) {
        self.decisions.with_label_values(&[kind, if abstained { "abstained" } else { "accepted" }]).inc();
        if abstained {
            self.abstentions.with_label_values(&[kind]).inc();
        }
        self.confidence.with_label_values(&[kind]).observe(confidence);
        self.tokens.with_label_values(&["sampled"]).inc_by(sampled as u64);
        self.tokens.with_label_values(&["forced"]).inc_by(forced as u64);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
