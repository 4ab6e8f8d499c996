//! The candle side of sapllm: the SAP routing domain, data preparation, the Mixtral + LoRA + NF4
//! model, training stages, evaluation and serving.

pub mod cli;
pub mod dataprep;
pub mod evaluate;
pub mod inference;
pub mod model;
pub mod pipeline;
pub mod plot;
pub mod progress;
pub mod rl;
pub mod sap;
pub mod serve;
pub mod threads;
pub mod train;
