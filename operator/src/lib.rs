//! The sapllm operator: reconciles TrainingRun, Evaluation and RoutingEndpoint.
//!
//! Every kind follows the same shape: resolve what it references -> validate -> build the desired
//! children and the status (plain functions in `training`, `evaluation` and `endpoint`, no client,
//! unit-tested from YAML fixtures) -> apply (server-side apply, one field manager) -> write status.
//! The client layer lives in `controller`.

pub mod config;
pub mod controller;
pub mod endpoint;
pub mod evaluation;
pub mod http;
pub mod invalid;
pub mod leader;
pub mod memory;
pub mod metrics;
pub mod names;
pub mod observe;
pub mod pod;
pub mod progress;
pub mod prometheus;
pub mod training;
pub mod transitions;
