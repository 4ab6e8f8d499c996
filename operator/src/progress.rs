//! Live progress: the worker prints JSON lines on stdout; while a stage runs the operator reads
//! the tail of the pod's log and turns the newest `progress` line into `.status.progress`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sapllm_crds::contract::{ProgressEvent, ProgressLine};
use sapllm_crds::training_run::Progress;

/// How many log lines are fetched per poll: progress is printed every step, other lines (warnings,
/// checkpoints) are rare, so the newest progress line is in the last few.
pub const TAIL_LINES: i64 = 40;

/// The newest progress line in `log` (other lines, partial lines and garbage are skipped).
pub fn parse_latest(log: &str, now: Time) -> Option<Progress> {
    let line = log
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<ProgressLine>(l.trim()).ok())
        .find(|l| l.event == ProgressEvent::Progress)?;
    let summary = match (line.stage, line.total) {
        (Some(s), t) if t > 0 => format!("{} {}/{} ({}%)", s.as_str(), line.step, t, line.step * 100 / t),
        (Some(s), _) => format!("{} step {}", s.as_str(), line.step),
        (None, t) if t > 0 => format!("{}/{} ({}%)", line.step, t, line.step * 100 / t),
        (None, _) => format!("step {}", line.step),
    };
    Some(Progress {
        stage: line.stage,
        step: line.step,
        total_steps: line.total,
        // PPO reports a reward instead of a loss; the column shows whichever the stage has.
        loss: line.metric("loss").or(line.metric("reward")),
        tokens_per_second: line.metric("tokens_per_s"),
        eta: line.eta_s.filter(|v| v.is_finite() && *v >= 0.0).map(format_eta),
        summary: Some(summary),
        updated_at: Some(now),
    })
}

/// Seconds as `1h02m03s` / `12m30s` / `41s`.
pub fn format_eta(secs: f64) -> String {
    let s = secs.round() as u64;
    let (h, m, s) = (s / 3600, (s % 3600) / 60, s % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use sapllm_crds::training_run::StageName;

    fn now() -> Time {
        Time(Timestamp::from_second(1_800_000_000).unwrap())
    }

    #[test]
    fn newest_progress_line_wins_and_noise_is_skipped() {
        let log = concat!(
            "{\"event\":\"progress\",\"stage\":\"sft\",\"step\":11,\"total\":300,\"loss\":2.0}\n",
            "loading shards...\n",
            "{\"event\":\"progress\",\"stage\":\"sft\",\"step\":12,\"total\":300,\"loss\":1.9,\"tokens_per_s\":850.0,\"eta_s\":750.4}\n",
            "{\"event\":\"checkpoint\",\"stage\":\"sft\",\"step\":12}\n",
            "{\"event\":\"progr"
        );
        let p = parse_latest(log, now()).unwrap();
        assert_eq!(p.stage, Some(StageName::Sft));
        assert_eq!((p.step, p.total_steps), (12, 300));
        assert_eq!(p.loss, Some(1.9));
        assert_eq!(p.tokens_per_second, Some(850.0));
        assert_eq!(p.eta.as_deref(), Some("12m30s"));
        assert_eq!(p.summary.as_deref(), Some("sft 12/300 (4%)"));
    }

    #[test]
    fn ppo_reports_reward_and_missing_lines_give_none() {
        let p = parse_latest(
            "{\"event\":\"progress\",\"stage\":\"ppo\",\"step\":3,\"total\":10,\"reward\":0.4}",
            now(),
        )
        .unwrap();
        assert_eq!(p.loss, Some(0.4));
        assert_eq!(p.eta, None);
        assert!(parse_latest("no json here\n", now()).is_none());
        assert_eq!(format_eta(3723.0), "1h02m03s");
        assert_eq!(format_eta(41.0), "41s");
    }
}
