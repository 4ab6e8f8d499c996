//! `sapllm-worker run -f run.yaml` (every stage, locally) and `sapllm-worker stage <name> -f
//! run.yaml --run-dir DIR` (one stage: what each operator Job runs).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use sapllm_crds::contract::exit_code;
use sapllm_crds::{StageName, Verdict};

use crate::driver::stages::RunContext;
use crate::driver::{run_all, run_stage};
use crate::progress::ProgressMode;

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The TrainingRun manifest (the same YAML `kubectl apply` takes).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Run directory (default `runs/<metadata.name>`); re-running resumes in it.
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
}

/// Arguments of `stage`.
#[derive(Debug, Args)]
pub struct StageArgs {
    /// The stage: data-prep, pretrain, sft, ppo or evaluation.
    #[arg(value_parser = parse_stage)]
    pub stage: StageName,
    /// The TrainingRun manifest.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Run directory shared by the run's stages.
    #[arg(long)]
    pub run_dir: PathBuf,
}

fn parse_stage(s: &str) -> Result<StageName, String> {
    StageName::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| {
        format!("unknown stage {s:?}; expected one of {}", StageName::ALL.map(StageName::as_str).join(", "))
    })
}

fn verdict_code(v: Option<Verdict>) -> ExitCode {
    match v {
        Some(Verdict::Failed) => ExitCode::from(exit_code::GATES_FAILED),
        Some(Verdict::Error) => ExitCode::from(exit_code::ERROR),
        _ => ExitCode::from(exit_code::OK),
    }
}

/// Runs every planned stage and prints where the report is.
pub fn run(args: RunArgs, progress: ProgressMode) -> anyhow::Result<ExitCode> {
    let ctx = RunContext::from_manifest(&args.file, args.run_dir, progress)?;
    let out = run_all(&ctx)?;
    eprintln!("\nrun directory: {}", out.run_dir.display());
    if let Some(report) = &out.report {
        eprintln!("evaluation report: {}", report.display());
    }
    if let Some(v) = out.verdict {
        eprintln!("verdict: {v:?}");
    }
    Ok(verdict_code(out.verdict))
}

/// Runs one stage.
pub fn stage(args: StageArgs, progress: ProgressMode) -> anyhow::Result<ExitCode> {
    let ctx = RunContext::from_manifest(&args.file, Some(args.run_dir), progress)?;
    let (result, skipped) = run_stage(&ctx, args.stage)?;
    if skipped {
        eprintln!("{}: already done with the same settings", args.stage.as_str());
    }
    println!("{}", serde_json::to_string(&result)?);
    Ok(verdict_code(result.verdict))
}
