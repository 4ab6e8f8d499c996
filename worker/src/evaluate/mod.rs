//! `sapllm-worker evaluate`: scores a model on routing and exception examples, checks the gates
//! and writes the report.

pub mod metrics;
pub mod report;
pub mod run;

pub use run::{EvalConfig, EvalOutcome, run};
