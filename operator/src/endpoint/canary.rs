//! Judging a canary: how many replicas a traffic step needs, whether the live signals breach a
//! threshold, and when they are due to be read again.
//!
//! Traffic is split by replica ratio behind the endpoint's one Service, so the share a step asks
//! for is rounded to whole pods (one canary pod beside one current pod is 50 %, whatever the step
//! says); the status reports the share the pods give.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sapllm_crds::endpoint::{CanaryAnalysis, CanarySignals, CanaryStatus, Rollout};

/// Checks `spec.rollout`: steps from 1 to 99 percent, increasing.
pub fn validate(rollout: Option<&Rollout>) -> Result<(), crate::invalid::Invalid> {
    let Some(ro) = rollout else { return Ok(()) };
    if ro.steps.is_empty() {
        return Err(crate::invalid::Invalid::new(
            "spec.rollout.steps",
            "name at least one traffic step, e.g. [10, 50]",
        ));
    }
    if let Some(bad) = ro.steps.iter().find(|w| !(1..=99).contains(*w)) {
        return Err(crate::invalid::Invalid::new(
            "spec.rollout.steps",
            format!(
                "{bad} is not a traffic percentage from 1 to 99 (the version is promoted after the last step)"
            ),
        ));
    }
    if ro.steps.windows(2).any(|w| w[0] >= w[1]) {
        return Err(crate::invalid::Invalid::new(
            "spec.rollout.steps",
            format!("{:?} must increase step by step", ro.steps),
        ));
    }
    Ok(())
}

/// Whether `c` is still being judged step by step (not yet handed over to the promotion, whose
/// step is `steps + 1`).
pub fn judging(c: &CanaryStatus) -> bool {
    c.step <= c.steps
}

/// Canary replicas for `weight` percent of the traffic beside `stable` ready replicas: the
/// nearest whole number, at least one.
pub fn replicas_for(weight: i32, stable: i32) -> i32 {
    let w = f64::from(weight.clamp(1, 99));
    let n = (f64::from(stable.max(1)) * w / (100.0 - w)).round() as i32;
    n.max(1)
}

/// The share of serving pods that run the canary, percent.
pub fn traffic_percent(canary_ready: i32, stable_ready: i32) -> i32 {
    let total = canary_ready + stable_ready;
    if total <= 0 { 0 } else { ((100 * canary_ready) as f64 / total as f64).round() as i32 }
}

/// What the signals say.
#[derive(Clone, Debug, PartialEq)]
pub enum Judgement {
    /// A threshold is breached: roll back. (reason, what breached)
    Breach(&'static str, String),
    /// Nothing breached, but too few samples to let a step pass. (what is missing)
    Waiting(String),
    /// Enough samples and every signal within its threshold.
    Healthy,
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// Judges `s` against `a`. A breach is judged as soon as its signal has its minimum sample (so a
/// bad canary is rolled back before its dwell time ends); restarts are a breach at once.
pub fn judge(s: &CanarySignals, a: &CanaryAnalysis) -> Judgement {
    if s.restarts > 0 {
        return Judgement::Breach(
            "CanaryRestarted",
            format!("{} container restart(s) of canary pods", s.restarts),
        );
    }
    let enough_decisions = s.decisions >= a.min_decisions;
    let enough_comparisons = s.comparisons >= a.min_comparisons;
    if enough_decisions {
        if let Some(r) = s.error_rate.filter(|r| *r > a.max_error_rate) {
            return Judgement::Breach(
                "CanaryErrorRate",
                format!(
                    "error rate {} > {} ({} of {} requests)",
                    pct(r),
                    pct(a.max_error_rate),
                    s.errors,
                    s.requests
                ),
            );
        }
        if let Some(p) = s.p95_latency_ms.filter(|p| *p > a.max_p95_latency_ms) {
            return Judgement::Breach(
                "CanaryLatency",
                format!("P95 latency {p:.0} ms > {:.0} ms", a.max_p95_latency_ms),
            );
        }
    }
    if enough_comparisons {
        if let Some(g) = s.agreement.filter(|g| *g < a.min_agreement) {
            return Judgement::Breach(
                "CanaryDisagreement",
                format!(
                    "decision agreement {} < {} on {} mirrored requests",
                    pct(g),
                    pct(a.min_agreement),
                    s.comparisons
                ),
            );
        }
        if let (Some(c), Some(b)) = (s.abstention_rate, s.baseline_abstention_rate)
            && c - b > a.max_abstention_increase
        {
            return Judgement::Breach(
                "CanaryAbstention",
                format!(
                    "abstention rate {} vs {} for the current version on the same documents (at most +{:.1} points)",
                    pct(c),
                    pct(b),
                    a.max_abstention_increase * 100.0
                ),
            );
        }
    }
    let mut missing = Vec::new();
    if !enough_decisions {
        missing.push(format!("{} of {} decisions", s.decisions, a.min_decisions));
    }
    if !enough_comparisons {
        missing.push(format!("{} of {} mirrored comparisons", s.comparisons, a.min_comparisons));
    }
    if missing.is_empty() { Judgement::Healthy } else { Judgement::Waiting(missing.join(", ")) }
}

/// The signals against their thresholds, in one line.
pub fn describe(s: &CanarySignals, a: &CanaryAnalysis) -> String {
    let or_none = |v: Option<String>| v.unwrap_or_else(|| "n/a".into());
    let mut m = format!(
        "{} decisions; error rate {} (max {}); P95 {} (max {:.0} ms); agreement {} on {} mirrored (min {}); abstention {} vs {} (max +{:.1} points)",
        s.decisions,
        or_none(s.error_rate.map(pct)),
        pct(a.max_error_rate),
        or_none(s.p95_latency_ms.map(|p| format!("{p:.0} ms"))),
        a.max_p95_latency_ms,
        or_none(s.agreement.map(pct)),
        s.comparisons,
        pct(a.min_agreement),
        or_none(s.abstention_rate.map(pct)),
        or_none(s.baseline_abstention_rate.map(pct)),
        a.max_abstention_increase * 100.0,
    );
    if s.unreadable_pods > 0 {
        m.push_str(&format!("; metrics of {} canary pod(s) unreadable", s.unreadable_pods));
    }
    m
}

fn secs_since(t: &Time, now: &Time) -> i64 {
    now.0.duration_since(t.0).as_secs()
}

/// Whether the signals should be read now: none read yet, or the last read is an interval old.
/// Reading only on this clock keeps a reconcile caused by the operator's own status write from
/// reading (and writing) again.
pub fn scrape_due(c: &CanaryStatus, rollout: &Rollout, now: &Time) -> bool {
    let observed = c.signals.as_ref().and_then(|s| s.observed.as_ref());
    observed.is_none_or(|t| secs_since(t, now) >= rollout.analysis.interval_seconds) || !read_since_ready(c)
}

/// Whether the signals were read after this step's pods were all ready: a step passes only on
/// those (earlier ones lack the step's new pods).
pub fn read_since_ready(c: &CanaryStatus) -> bool {
    let observed = c.signals.as_ref().and_then(|s| s.observed.as_ref());
    match (observed, &c.step_ready) {
        (Some(o), Some(r)) => o.0 >= r.0,
        _ => false,
    }
}

/// Seconds until the next read of the signals.
pub fn next_scrape_in(c: &CanaryStatus, rollout: &Rollout, now: &Time) -> i64 {
    let interval = rollout.analysis.interval_seconds.max(1);
    if c.step_ready.is_some() && !read_since_ready(c) {
        return 1;
    }
    let observed = c.signals.as_ref().and_then(|s| s.observed.as_ref());
    observed.map_or(interval, |t| (interval - secs_since(t, now)).max(1))
}

/// Seconds the current step has dwelt (0 while its replicas are not all ready).
pub fn dwelt(c: &CanaryStatus, now: &Time) -> i64 {
    c.step_ready.as_ref().map_or(0, |t| secs_since(t, now))
}

/// Seconds since this step's replicas were asked for.
pub fn waited(c: &CanaryStatus, now: &Time) -> i64 {
    secs_since(&c.step_requested, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> CanarySignals {
        CanarySignals {
            decisions: 40,
            requests: 40,
            errors: 0,
            error_rate: Some(0.0),
            p95_latency_ms: Some(120.0),
            comparisons: 30,
            agreement: Some(1.0),
            abstention_rate: Some(0.1),
            baseline_abstention_rate: Some(0.1),
            ..Default::default()
        }
    }

    #[test]
    fn steps_must_be_increasing_percentages() {
        let ro = |steps: Vec<i32>| Rollout { steps, ..Default::default() };
        assert!(validate(None).is_ok());
        assert!(validate(Some(&ro(vec![10, 50]))).is_ok());
        for bad in [vec![], vec![0, 50], vec![10, 100], vec![50, 10], vec![10, 10]] {
            assert_eq!(validate(Some(&ro(bad.clone()))).unwrap_err().field, "spec.rollout.steps", "{bad:?}");
        }
    }

    #[test]
    fn replicas_follow_the_ratio_rounded_to_whole_pods() {
        assert_eq!(replicas_for(10, 9), 1);
        assert_eq!(replicas_for(50, 3), 3);
        assert_eq!(replicas_for(25, 6), 2);
        assert_eq!(replicas_for(10, 1), 1, "never zero");
        assert_eq!(replicas_for(10, 0), 1);
        assert_eq!(traffic_percent(1, 1), 50);
        assert_eq!(traffic_percent(1, 9), 10);
        assert_eq!(traffic_percent(0, 0), 0);
    }

    #[test]
    fn each_signal_breaches_its_own_threshold() {
        let a = CanaryAnalysis::default();
        assert_eq!(judge(&healthy(), &a), Judgement::Healthy);
        type Breach = fn(&mut CanarySignals);
        let cases: [(&str, Breach); 5] = [
            ("CanaryRestarted", |s| s.restarts = 1),
            ("CanaryErrorRate", |s| s.error_rate = Some(0.05)),
            ("CanaryLatency", |s| s.p95_latency_ms = Some(900.0)),
            ("CanaryDisagreement", |s| s.agreement = Some(0.8)),
            ("CanaryAbstention", |s| s.abstention_rate = Some(0.2)),
        ];
        for (reason, breach) in cases {
            let mut s = healthy();
            breach(&mut s);
            assert!(matches!(judge(&s, &a), Judgement::Breach(r, _) if r == reason), "{reason}");
        }
    }

    #[test]
    fn too_few_samples_wait_instead_of_judging() {
        let a = CanaryAnalysis::default();
        let mut s = healthy();
        s.decisions = 5;
        s.error_rate = Some(0.5);
        s.comparisons = 3;
        s.agreement = Some(0.0);
        assert_eq!(
            judge(&s, &a),
            Judgement::Waiting("5 of 20 decisions, 3 of 20 mirrored comparisons".into())
        );
    }
}
