//! The SAP routing domain: API catalog, extracted documents, payloads, business rules, exceptions.
//!
//! Everything here is pure data and pure functions (no I/O except the explicit catalog load/save and
//! importers), so data-prep, SFT, evaluation, the PPO reward and serving all share one definition of
//! "the right API", "the right payload" and "a rule that failed".

pub mod catalog;
pub mod documents;
pub mod exceptions;
pub mod explain;
pub mod grounding;
pub mod import;
pub mod odata;
pub mod payload;
pub mod preflight;
pub mod routing;
pub mod rules;
