//! Prometheus metrics of the operator (served on `/metrics`).

use std::collections::HashMap;
use std::time::Instant;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    runs_by_phase: IntGaugeVec,
    gate_verdicts: IntCounterVec,
    promotions: IntCounter,
    rollbacks: IntCounter,
    /// 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
}

/// Times one reconcile; records it when dropped.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    kind: &'static str,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics.duration.with_label_values(&[self.kind]).observe(self.start.elapsed().as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("sapllm_operator".into()), None).expect("valid prefix");
        let reconciles =
            IntCounterVec::new(Opts::new("reconciles_total", "Reconciliations by kind"), &["kind"]).unwrap();
        let errors = IntCounterVec::new(
            Opts::new("reconcile_errors_total", "Failed reconciliations by kind"),
            &["kind"],
        )
        .unwrap();
        let duration = HistogramVec::new(
            HistogramOpts::new("reconcile_duration_seconds", "Duration of one reconciliation")
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["kind"],
        )
        .unwrap();
        let runs_by_phase =
            IntGaugeVec::new(Opts::new("training_runs", "TrainingRuns by phase"), &["phase"]).unwrap();
        let gate_verdicts = IntCounterVec::new(
            Opts::new("gate_verdicts_total", "Evaluation verdicts recorded"),
            &["verdict"],
        )
        .unwrap();
        let promotions = IntCounter::new("promotions_total", "Model versions promoted to serving").unwrap();
        let rollbacks = IntCounter::new(
            "rollbacks_total",
            "Rollouts rolled back: a canary breached a threshold or a rollout missed its deadline",
        )
        .unwrap();
        let leader = IntGauge::new("leader", "1 while this replica is the leader").unwrap();
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(duration.clone()),
            Box::new(runs_by_phase.clone()),
            Box::new(gate_verdicts.clone()),
            Box::new(promotions.clone()),
            Box::new(rollbacks.clone()),
            Box::new(leader.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
            runs_by_phase,
            gate_verdicts,
            promotions,
            rollbacks,
            leader,
        }
    }

    /// Counts a reconcile of `kind` and times it.
    pub fn reconcile(&self, kind: &'static str) -> ReconcileTimer<'_> {
        self.reconciles.with_label_values(&[kind]).inc();
        ReconcileTimer { metrics: self, kind, start: Instant::now() }
    }

    /// Counts a failed reconcile.
    pub fn error(&self, kind: &'static str) {
        self.errors.with_label_values(&[kind]).inc();
    }

    /// Sets the TrainingRuns-by-phase gauge from the phases of every run that exists (runs
    /// without a status count as Pending). Recomputed from the watch cache, so deleted runs drop
    /// out without a finalizer.
    pub fn runs_by_phase<'a>(&self, phases: impl IntoIterator<Item = Option<&'a str>>) {
        let mut counts: HashMap<&str, i64> =
            ["Pending", "Running", "Suspended", "Succeeded", "Failed"].into_iter().map(|p| (p, 0)).collect();
        for p in phases {
            *counts.entry(p.unwrap_or("Pending")).or_default() += 1;
        }
        for (p, n) in counts {
            self.runs_by_phase.with_label_values(&[p]).set(n);
        }
    }

    /// Counts a recorded verdict.
    pub fn verdict(&self, verdict: &str) {
        self.gate_verdicts.with_label_values(&[verdict]).inc();
    }

    /// Counts a promotion.
    pub fn promoted(&self) {
        self.promotions.inc();
    }

    /// Counts a rollback.
    pub fn rolled_back(&self) {
        self.rollbacks.inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
