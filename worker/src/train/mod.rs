//! Supervised fine-tuning (QLoRA): data loading, padding-aware batching, resumable checkpoints
//! and the training loop.

pub mod batcher;
pub mod data;
pub mod resume;
pub mod sft;
