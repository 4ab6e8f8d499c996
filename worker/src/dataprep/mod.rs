//! The data-prep stage: transaction logs (or the synthetic generator) to training examples.
//!
//! `run(&config)` writes `train/val/test_routing_examples.jsonl`, `exception_examples.jsonl`,
//! `preference_pairs.jsonl` and `dataset_card.{json,md}` to the output directory and returns the
//! card. See `README.md` in this folder for the transaction-log format.

pub mod bm25;
pub mod card;
pub mod config;
pub use sapllm_engine::examples;
pub mod exception;
pub mod log;
mod pipeline;
pub mod preference;
pub mod split;
pub mod synth;
pub mod tokens;
pub mod trace;

pub use card::DatasetCard;
pub use config::{DataPrepConfig, Source, SplitFractions};
pub use examples::{Decision, ExceptionExample, PreferencePair, RoutingExample, SimilarCase};
pub use pipeline::run;
