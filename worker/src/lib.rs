//! `sapllm-worker`: the run driver and the training side of sapllm. Data-prep, pretraining,
//! QLoRA SFT, RL (PPO, GRPO, DPO) and evaluation, built on the model (`sapllm-model`), the SAP
//! domain (`sapllm-sap`), the decision engine (`sapllm-engine`) and the server
//! (`sapllm-serve`), which this crate's CLI wires together.

pub mod cli;
pub mod dataprep;
pub mod driver;
pub mod evaluate;
pub mod plot;
pub mod pretrain;
pub mod progress;
pub mod rl;
pub mod testkit;
pub mod train;
