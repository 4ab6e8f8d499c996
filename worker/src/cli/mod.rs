//! Command-line entry point: parses arguments (clap) and dispatches to one stage per subcommand.

use clap::{Parser, Subcommand};
use sapllm_model::device::DeviceSpec;
use std::process::ExitCode;

use crate::progress::ProgressMode;

pub mod catalog;
pub mod data_prep;
pub mod evaluate;
pub mod plan;
pub mod ppo;
pub mod pretrain;
pub mod route;
pub mod run;
pub mod serve;
pub mod sft;

#[derive(Debug, Parser)]
#[command(
    name = "sapllm-worker",
    version,
    about = "sapllm worker: data-prep, training, evaluation and serving"
)]
pub struct Cli {
    /// How long-running stages report progress: a bar for people, JSON lines for machines, or
    /// `auto` (a bar on a terminal, JSON lines otherwise).
    #[arg(long, global = true, value_enum, default_value_t = ProgressMode::Auto, env = "SAPLLM_PROGRESS")]
    pub progress: ProgressMode,

    /// Where every stage, `route`, `evaluate` and `serve` compute: auto, cpu, cuda or cuda:N
    /// (`auto`: the first CUDA device in a CUDA build, else the CPU).
    #[arg(long, global = true, default_value = "auto", env = "SAPLLM_DEVICE", value_parser = parse_device)]
    pub device: DeviceSpec,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Turn transaction logs (or synthetic data) into routing, exception and preference examples.
    DataPrep(data_prep::DataPrepArgs),
    /// Import tenant API specs (EDMX / OpenAPI) into a catalog file, or show a catalog.
    Catalog(catalog::CatalogArgs),
    /// Pretrain a from-scratch model preset (full parameters) on a text corpus.
    Pretrain(pretrain::PretrainArgs),
    /// QLoRA supervised fine-tuning of a base model on prepared examples.
    Sft(sft::SftArgs),
    /// Reinforcement learning of the SFT policy on the verifiable reward (PPO, GRPO or DPO).
    Ppo(ppo::PpoArgs),
    /// Score a model version against the gates and write the report.
    Evaluate(evaluate::EvaluateArgs),
    /// Run every stage of a TrainingRun manifest on this machine (the embedded default).
    Run(run::RunArgs),
    /// Run one stage of a TrainingRun (what each operator Job runs).
    Stage(run::StageArgs),
    /// The device memory each stage of a TrainingRun needs, and whether it fits the GPU.
    Plan(plan::PlanArgs),
    /// Decide routing (or exception handling) for the documents in a file.
    Route(route::RouteArgs),
    /// Serve routing decisions over HTTP (what a RoutingEndpoint Deployment runs).
    Serve(serve::ServeArgs),
}

/// Parses the command line, runs the subcommand and maps failures to an exit code.
pub fn main() -> ExitCode {
    sapllm_model::threads::init();
    init_tracing();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn parse_device(s: &str) -> Result<DeviceSpec, String> {
    s.parse()
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let progress = cli.progress;
    let device = sapllm_model::device::select(cli.device)?;
    tracing::info!(device = %sapllm_model::device::describe(&device), "computing on");
    match cli.command {
        Command::DataPrep(args) => data_prep::run(args, progress),
        Command::Catalog(args) => catalog::run(args),
        Command::Pretrain(args) => pretrain::execute(args, progress),
        Command::Sft(args) => sft::execute(args, progress),
        Command::Ppo(args) => ppo::execute(args, progress),
        Command::Evaluate(args) => evaluate::run(args, progress),
        Command::Run(args) => run::run(args, progress),
        Command::Stage(args) => run::stage(args, progress),
        Command::Plan(args) => plan::run(args),
        Command::Route(args) => route::run(args),
        Command::Serve(args) => serve::run(args),
    }
}

/// Structured logs on stderr: JSON lines when `SAPLLM_LOG_FORMAT=json` (what log collectors in a
/// cluster want), human-readable text otherwise; the level comes from `SAPLLM_LOG`.
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SAPLLM_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if std::env::var("SAPLLM_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
