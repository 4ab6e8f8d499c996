//! The model (placeholder docs, rewritten below once the API settles).

pub mod checkpoint;
pub mod config;
pub mod generation;
pub mod grad_checkpoint;
pub mod int8;
pub mod kv_cache;
pub mod linear;
pub mod loss;
pub mod mixtral;
pub mod nf4;
pub mod optim;
pub mod peft;
pub mod template;
pub mod tokenizer;
