//! Evaluation: resolve the model version -> validate -> build the evaluate Job -> decide status.

pub mod build;
pub mod decide;
pub mod resolve;

pub use build::evaluation_job;
pub use decide::{EvalDecision, decide};
pub use resolve::{Resolution, Resolved, resolve};
