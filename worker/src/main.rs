//! `sapllm-worker`: one binary, one subcommand per stage. The operator's Jobs and Deployments run
//! exactly this binary.
fn main() -> std::process::ExitCode {
    sapllm_worker::cli::main()
}
