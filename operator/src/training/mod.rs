//! TrainingRun: validate -> plan (stage digests, child names) -> build children -> decide status.

pub mod build;
pub mod decide;
pub mod plan;
pub mod validate;

pub use build::{manifest_config_map, run_evaluation, stage_job, storage_claim};
pub use decide::{Decision, Observed, decide, invalid_status};
pub use plan::{PlannedStage, plan, run_dir};
pub use validate::validate;
