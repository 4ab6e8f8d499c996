//! The data-prep stage: transaction logs (or the synthetic generator) to training examples.
