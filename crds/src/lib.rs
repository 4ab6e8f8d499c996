//! The sapllm.io/v1alpha1 API: the three custom resources platform teams apply.
//!
//! - [`TrainingRun`] (`sltr`): data-prep -> (pretrain) -> SFT -> PPO -> evaluation as worker Jobs.
//! - [`Evaluation`] (`slev`): scores one model version against the gates and records the verdict.
//! - [`RoutingEndpoint`] (`slrep`): serves a model version that passed its gates, autoscaled.
//!
//! Doc comments on every field become the schema descriptions `kubectl explain` shows; CEL rules
//! (`x-kubernetes-validations`) reject nonsense at apply time with a field path.

pub mod common;
pub mod conditions;
pub mod contract;
pub mod digest;
pub mod endpoint;
pub mod evaluation;
pub mod generate;
pub mod plan;
pub mod training_run;

pub use common::*;
pub use endpoint::*;
pub use evaluation::*;
pub use training_run::*;

/// The API group of every sapllm resource.
pub const GROUP: &str = "sapllm.io";
/// The API version served and stored.
pub const VERSION: &str = "v1alpha1";
