//! The model (placeholder docs, rewritten below once the API settles).

pub mod config;
pub mod generation;
pub mod grad_checkpoint;
pub mod int8;
pub mod kv_cache;
pub mod linear;
pub mod mixtral;
pub mod nf4;
pub mod loss;
pub mod optim;
pub mod checkpoint;
