//! `sapllm-worker plan -f run.yaml`: the device memory each stage of a TrainingRun needs (the
//! same plan the operator checks before it creates a Job), and whether it fits the GPU.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::driver::manifest;
use sapllm_crds::plan::gib;
use sapllm_crds::plan::gpu::{from_node_selector, parse_quantity_bytes};
use sapllm_crds::plan::stages::{run_dims, training_run};

/// Arguments of `plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The TrainingRun manifest.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Memory of the GPU to check against ("80Gi"); default: the manifest's
    /// `spec.worker.gpuMemory`, or the GPU its node selector names.
    #[arg(long)]
    pub gpu_memory: Option<String>,
}

/// Prints the plan; exit 1 when a stage does not fit the GPU.
pub fn run(args: PlanArgs) -> Result<ExitCode> {
    let tr = manifest::load(&args.file)?;
    let spec = &tr.spec;
    let Some(dims) = run_dims(spec) else {
        bail!(
            "{}: spec.baseModel names no preset and no spec.baseModel.architecture, so the model's size is unknown; set architecture (tiny, small, mixtral-8x7b)",
            args.file.display()
        );
    };
    let plan = training_run(spec, &dims);
    print!("{plan}");
    let gpu = match (&args.gpu_memory, &spec.worker.gpu_memory) {
        (Some(q), _) => {
            Some((format!("--gpu-memory {q}"), parse_quantity_bytes(q).map_err(anyhow::Error::msg)?))
        }
        (None, Some(q)) => Some((
            format!("spec.worker.gpuMemory {}", q.0),
            parse_quantity_bytes(&q.0).map_err(anyhow::Error::msg).context("spec.worker.gpuMemory")?,
        )),
        (None, None) => from_node_selector(&spec.worker.node_selector),
    };
    let Some((source, bytes)) = gpu else {
        println!(
            "No GPU memory given (--gpu-memory, spec.worker.gpuMemory or a known GPU label): nothing to check."
        );
        return Ok(ExitCode::SUCCESS);
    };
    let misfits = plan.misfits(bytes);
    if misfits.is_empty() {
        println!("Every stage fits {} ({source}).", gib(bytes));
        Ok(ExitCode::SUCCESS)
    } else {
        for s in misfits {
            println!("Does not fit {} ({source}): {}", gib(bytes), s.summary());
        }
        Ok(ExitCode::from(1))
    }
}
