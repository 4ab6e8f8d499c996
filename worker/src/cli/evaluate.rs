//! `sapllm-worker evaluate`: score a model version on an examples file against the gates.
//! Exit code 0: every gate passed; 1: a gate failed; 2: the evaluation could not run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use sapllm_crds::contract::{StageResult, exit_code};
use sapllm_crds::{Artifacts, Gates, Verdict};

use crate::driver::{termination, version};
use crate::evaluate::{EvalConfig, run as evaluate};
use crate::progress::ProgressMode;
use sapllm_model::linear::Precision;

/// Arguments of `evaluate`.
#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// Base model folder (Hugging Face layout).
    #[arg(long)]
    pub base_model: PathBuf,
    /// Adapter folder (PEFT layout); absent scores the base alone.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Routing examples (JSONL), e.g. the test split.
    #[arg(long)]
    pub examples: PathBuf,
    /// Examples scored at most.
    #[arg(long, default_value_t = 1000)]
    pub samples: usize,
    /// Gates as JSON (camelCase, each optional), e.g. '{"p95LatencyMs": 250}'.
    #[arg(long, default_value = "{}")]
    pub gates: String,
    /// Confidence below which a decision abstains.
    #[arg(long, default_value_t = 0.5)]
    pub abstain_threshold: f64,
    /// Precision the model is served at: f32, bf16, int8 or nf4.
    #[arg(long, default_value = "int8")]
    pub precision: Precision,
    /// Report folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Offer the model every candidate, not only those serving the document's type: measures
    /// its own choice between APIs.
    #[arg(long)]
    pub any_candidate: bool,
}

/// Runs the evaluation and maps the verdict to the exit code.
pub fn run(args: EvaluateArgs, progress: ProgressMode) -> anyhow::Result<ExitCode> {
    let gates: Gates = serde_json::from_str(&args.gates).with_context(|| {
        format!("--gates {:?} is not a gates object such as '{{\"routingAccuracy\":0.97}}'", args.gates)
    })?;
    let mut folders = vec![args.base_model.as_path()];
    if let Some(a) = &args.adapter {
        folders.push(a.as_path());
    }
    let cfg = EvalConfig {
        base_model: args.base_model.clone(),
        adapter: args.adapter.clone(),
        examples: args.examples,
        samples: args.samples,
        gates,
        abstain_threshold: args.abstain_threshold,
        precision: args.precision,
        out_dir: args.out,
        model_version: version::model_version(&folders)?,
        progress,
        any_candidate: args.any_candidate,
    };
    // The operator records the version it reads here as the Evaluation's `status.modelVersion`:
    // an Evaluation of explicit artifacts has no other source for it.
    let artifacts = Some(Artifacts { model_version: Some(cfg.model_version.clone()), ..Default::default() });
    let out = match evaluate(&cfg) {
        Ok(out) => out,
        Err(e) => {
            termination::write(&StageResult {
                succeeded: false,
                message: Some(format!("{e:#}")),
                verdict: Some(Verdict::Error),
                artifacts,
                ..Default::default()
            });
            return Err(e);
        }
    };
    let result = StageResult {
        succeeded: true,
        message: Some(format!("verdict {:?}", out.verdict)),
        metrics: Some(out.summary.metrics.clone()),
        gates: out.gates.clone(),
        verdict: Some(out.verdict),
        artifacts,
        // Relative to the artifact volume when the report is on it, as the operator expects.
        report: Some(
            out.report
                .strip_prefix(sapllm_crds::contract::ARTIFACTS_MOUNT)
                .unwrap_or(&out.report)
                .display()
                .to_string(),
        ),
        ..Default::default()
    };
    termination::write(&result);
    println!("{}", serde_json::to_string(&result)?);
    eprintln!("report: {}", out.report.display());
    Ok(ExitCode::from(if out.verdict == Verdict::Passed { exit_code::OK } else { exit_code::GATES_FAILED }))
}
