//! The decision engine: the routing and exception decisions as library calls, shared by the CLI
//! (`sapllm-worker route`), the evaluator and the server. It joins the model (`sapllm-model`) to
//! the SAP domain (`sapllm-sap`) and knows nothing of HTTP, Kubernetes or training.
//!
//! - [`template`]: THE prompt/response template every stage shares; [`examples`]: the dataset
//!   records data-prep writes and SFT, RL and evaluation read;
//! - [`types`]: the API's inputs and outputs; [`format`]: the JSON the model reads and writes
//!   (also what SFT trains on);
//! - [`tok_env`], [`grammar`]: llguidance over our tokenizer, per-option answer schemas;
//! - [`forward`], [`decoder`]: batched constrained decoding with option scoring and forced
//!   tokens; [`confidence`]: how the reported confidence is computed;
//! - [`engine`]: `decide_routing`, `handle_exception` and their batch forms; [`load`]: building
//!   an engine from a base model directory + adapter at a precision.

pub mod chat;
pub mod confidence;
pub mod decoder;
pub mod draft;
pub mod engine;
pub mod examples;
pub mod format;
pub mod forward;
pub mod grammar;
pub mod grounded;
pub mod load;
pub mod logits;
pub mod profile;
pub mod request;
pub mod template;
pub mod tok_env;
pub mod types;

pub use engine::{Engine, EngineConfig};
pub use types::{ExceptionDecision, ExceptionQuery, RoutingDecision, RoutingQuery, SimilarException};
