//! Progress of long-running work: an indicatif bar for people, JSON lines for machines.
//!
//! Every stage reports through [`Progress`], so the operator (which reads the JSON lines) and a
//! person at a terminal see the same numbers. JSON lines go to stdout, one
//! [`ProgressLine`] (the contract in `sapllm_crds::contract`) per update:
//! `{"event":"progress","stage":"sft","step":12,"total":300,"eta_s":41.2,"loss":1.93,...}`,
//! and a final `{"event":"done",...}` line.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use sapllm_crds::StageName;
use sapllm_crds::contract::{ProgressEvent, ProgressLine};
use serde_json::Value;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum ProgressMode {
    /// A bar on a terminal, JSON lines when stderr is not a terminal (a pod's log).
    #[default]
    Auto,
    /// A progress bar on stderr.
    Bar,
    /// One JSON object per update on stdout.
    Json,
    /// Nothing (tests, benchmarks).
    Quiet,
}

impl ProgressMode {
    fn resolve(self) -> ProgressMode {
        match self {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Json,
            other => other,
        }
    }
}

/// A progress reporter for one stage.
pub struct Progress {
    mode: ProgressMode,
    stage: StageName,
    total: u64,
    start: Instant,
    start_step: u64,
    bar: Option<ProgressBar>,
    last_json: Option<Instant>,
    min_json_interval: Duration,
}

impl Progress {
    /// Starts reporting `stage` with `total` steps (0 when unknown).
    pub fn new(mode: ProgressMode, stage: StageName, total: u64) -> Self {
        let mode = mode.resolve();
        let bar = (mode == ProgressMode::Bar).then(|| {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "{prefix:>10} [{elapsed_precise}] {wide_bar} {pos}/{len} ETA {eta} {msg}",
            )
            .expect("static template is valid");
            bar.set_style(style);
            bar.set_prefix(stage.as_str());
            bar
        });
        Progress {
            mode,
            stage,
            total,
            start: Instant::now(),
            start_step: 0,
            bar,
            last_json: None,
            min_json_interval: Duration::from_millis(500),
        }
    }

    /// Marks where a resumed run starts, so the ETA counts only the work done in this process.
    pub fn resume_from(&mut self, step: u64) {
        self.start_step = step;
        self.start = Instant::now();
        if let Some(bar) = &self.bar {
            bar.set_position(step);
            bar.reset_eta();
        }
    }

    /// Seconds left, extrapolated from the steps done since start (or resume).
    pub fn eta_seconds(&self, step: u64) -> Option<f64> {
        let done = step.saturating_sub(self.start_step);
        if done == 0 || self.total == 0 {
            return None;
        }
        let per_step = self.start.elapsed().as_secs_f64() / done as f64;
        Some(per_step * self.total.saturating_sub(step) as f64)
    }

    /// Reports `step` with named metrics (loss, lr, tokens_per_s, ...).
    pub fn update(&mut self, step: u64, metrics: &[(&str, f64)]) {
        match self.mode {
            ProgressMode::Bar => {
                if let Some(bar) = &self.bar {
                    bar.set_position(step);
                    let msg: Vec<String> =
                        metrics.iter().map(|(k, v)| format!("{k}={}", fmt_metric(*v))).collect();
                    bar.set_message(msg.join(" "));
                }
            }
            ProgressMode::Json => {
                let now = Instant::now();
                let due = self.last_json.is_none_or(|t| now.duration_since(t) >= self.min_json_interval);
                if due || step >= self.total {
                    self.last_json = Some(now);
                    self.emit(ProgressEvent::Progress, step, metrics);
                }
            }
            ProgressMode::Quiet | ProgressMode::Auto => {}
        }
    }

    /// Ends the stage, printing a final line with the given metrics.
    pub fn finish(&mut self, metrics: &[(&str, f64)]) {
        match self.mode {
            ProgressMode::Bar => {
                if let Some(bar) = self.bar.take() {
                    bar.finish();
                }
            }
            ProgressMode::Json => self.emit(ProgressEvent::Done, self.total, metrics),
            _ => {}
        }
    }

    /// Prints a line for people without breaking the bar.
    pub fn println(&self, line: &str) {
        match (&self.bar, self.mode) {
            (Some(bar), _) => bar.println(line),
            (None, ProgressMode::Quiet) => {}
            (None, _) => eprintln!("{line}"),
        }
    }

    fn emit(&self, event: ProgressEvent, step: u64, metrics: &[(&str, f64)]) {
        let line = self.line(event, step, metrics);
        let mut out = std::io::stdout().lock();
        if let Ok(text) = serde_json::to_string(&line) {
            let _ = writeln!(out, "{text}");
        }
        let _ = out.flush();
    }

    /// The line for `step`. A metric named like a typed field (`elapsed_s`, `eta_s`) replaces
    /// the computed value; one named `event`, `stage`, `step` or `total` is dropped (it would
    /// give the object a key twice).
    fn line(&self, event: ProgressEvent, step: u64, metrics: &[(&str, f64)]) -> ProgressLine {
        let mut line = ProgressLine {
            event,
            stage: Some(self.stage),
            step,
            total: self.total,
            elapsed_s: Some(round3(self.start.elapsed().as_secs_f64())),
            eta_s: self.eta_seconds(step).map(round3),
            metrics: Default::default(),
        };
        for &(k, v) in metrics {
            // NaN/inf are not JSON: report them as null rather than breaking the line.
            let finite = v.is_finite().then_some(v);
            match k {
                "elapsed_s" => line.elapsed_s = finite,
                "eta_s" => line.eta_s = finite,
                "event" | "stage" | "step" | "total" => {}
                _ => {
                    line.metrics.insert(k.to_string(), finite.map_or(Value::Null, Value::from));
                }
            }
        }
        line
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn fmt_metric(v: f64) -> String {
    if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e5) { format!("{v:.3e}") } else { format!("{v:.4}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_extrapolates_from_steps_done_since_resume() {
        let mut p = Progress::new(ProgressMode::Quiet, StageName::Sft, 100);
        p.resume_from(50);
        assert_eq!(p.eta_seconds(50), None, "no step done since resume yet");
        std::thread::sleep(Duration::from_millis(20));
        let eta = p.eta_seconds(60).expect("ten steps done");
        // 10 steps took >= 20 ms, 40 remain: at least 80 ms left.
        assert!(eta >= 0.08, "eta {eta}");
    }

    #[test]
    fn small_and_large_metrics_use_scientific_notation() {
        assert_eq!(fmt_metric(2e-5), "2.000e-5");
        assert_eq!(fmt_metric(1.5), "1.5000");
    }

    #[test]
    fn a_line_has_each_key_once_and_reads_back_as_the_contract() {
        let p = Progress::new(ProgressMode::Quiet, StageName::DataPrep, 10);
        let line = p.line(
            ProgressEvent::Done,
            10,
            &[("elapsed_s", 0.5), ("examples", 3000.0), ("step", 3.0), ("kl", f64::NAN)],
        );
        let text = serde_json::to_string(&line).unwrap();
        assert_eq!(text.matches("\"elapsed_s\"").count(), 1, "{text}");
        assert_eq!(text.matches("\"step\"").count(), 1, "{text}");
        let back: ProgressLine = serde_json::from_str(&text).unwrap();
        assert_eq!(back.elapsed_s, Some(0.5));
        assert_eq!((back.step, back.total), (10, 10));
        assert_eq!(back.metric("examples"), Some(3000.0));
        assert_eq!(back.metrics.get("kl"), Some(&Value::Null));
        assert_eq!(back.stage, Some(StageName::DataPrep));
    }
}
