//! Quantized base weights: 8-bit absmax per row ([`int8`], with its matmul [`int8_matmul`]) and
//! 4-bit NormalFloat with double-quantized absmax, as bitsandbytes stores it ([`nf4`]).

pub mod int8;
pub mod int8_matmul;
pub mod nf4;
