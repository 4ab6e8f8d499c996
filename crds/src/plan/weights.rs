//! Bytes of the frozen base weights at each storage format.
//!
//! Quantization (int8, NF4) applies to the linear weights of the decoder layers: the attention
//! projections and every expert's w1/w2/w3. The token embeddings, the lm_head, the RMSNorm
//! weights and the routers stay in bf16 (as bitsandbytes' QLoRA recipe keeps them: they are
//! 0.6 % of Mixtral-8x7B's parameters and the most sensitive to rounding).

use crate::common::Precision;
use crate::plan::dims::ModelDims;
use crate::training_run::{QuantizationSettings, WeightFormat};

/// Absmax values per block of NF4's double quantization (bitsandbytes: 256).
pub const NESTED_BLOCK: u64 = 256;

/// How the frozen base weights are stored on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightStorage {
    /// float32 everywhere.
    F32,
    /// bfloat16 everywhere.
    Bf16,
    /// Linear weights in int8 with one f32 scale per output row (the worker's `Int8Tensor`).
    Int8,
    /// Linear weights in NF4 (bitsandbytes layout): two values per byte, one absmax per
    /// `block` values, stored as f32 or, with `double_quant`, as one byte each (padded to whole
    /// nested blocks of 256) plus one f32 scale per nested block and one f32 offset per tensor.
    Nf4 {
        /// Values per quantization block.
        block: u64,
        /// Whether the absmax values are quantized again.
        double_quant: bool,
    },
}

impl WeightStorage {
    /// The serving precision's storage (`int4` is NF4 with bitsandbytes' defaults).
    pub fn serving(p: Precision) -> WeightStorage {
        match p {
            Precision::Int8 => WeightStorage::Int8,
            Precision::Int4 => WeightStorage::Nf4 { block: 64, double_quant: true },
            Precision::Bf16 => WeightStorage::Bf16,
            Precision::F32 => WeightStorage::F32,
        }
    }

    /// The storage of the frozen base while fine-tuning.
    pub fn training(q: &QuantizationSettings) -> WeightStorage {
        match q.type_ {
            WeightFormat::Nf4 => {
                WeightStorage::Nf4 { block: u64::from(q.block_size.max(1)), double_quant: q.double_quant }
            }
            WeightFormat::Int8 => WeightStorage::Int8,
            WeightFormat::Bf16 => WeightStorage::Bf16,
            WeightFormat::F32 => WeightStorage::F32,
        }
    }

    /// Short name for the plan's table.
    pub fn name(self) -> &'static str {
        match self {
            WeightStorage::F32 => "f32",
            WeightStorage::Bf16 => "bf16",
            WeightStorage::Int8 => "int8",
            WeightStorage::Nf4 { .. } => "nf4",
        }
    }

    /// Whether the linear weights are dequantized to bf16 before each layer computes (int8 and
    /// NF4: the device keeps them packed and expands one layer at a time).
    pub fn is_quantized(self) -> bool {
        matches!(self, WeightStorage::Int8 | WeightStorage::Nf4 { .. })
    }

    /// Bytes of one linear weight `[rows, cols]`.
    pub fn matrix_bytes(self, rows: u64, cols: u64) -> u64 {
        let n = rows * cols;
        match self {
            WeightStorage::F32 => 4 * n,
            WeightStorage::Bf16 => 2 * n,
            WeightStorage::Int8 => n + 4 * rows,
            WeightStorage::Nf4 { block, double_quant } => {
                let blocks = n.div_ceil(block);
                let absmax = if double_quant {
                    let nested = blocks.div_ceil(NESTED_BLOCK);
                    nested * NESTED_BLOCK + 4 * nested + 4
                } else {
                    4 * blocks
                };
                n.div_ceil(2) + absmax
            }
        }
    }

    /// Bytes per parameter of the weights that are never quantized.
    fn unquantized_bytes_per_param(self) -> u64 {
        if self == WeightStorage::F32 { 4 } else { 2 }
    }
}

/// Bytes of every weight of the model stored as `storage`.
pub fn base_weight_bytes(d: &ModelDims, storage: WeightStorage) -> u64 {
    let (h, kv, i) = (d.hidden, d.kv_dim(), d.intermediate);
    // Linear weights are `[out, in]`: q and o `[h, h]`, k and v `[kv, h]`, w1 and w3 `[i, h]`,
    // w2 `[h, i]`.
    let attention = 2 * storage.matrix_bytes(h, h) + 2 * storage.matrix_bytes(kv, h);
    let expert = 2 * storage.matrix_bytes(i, h) + storage.matrix_bytes(h, i);
    d.layers * (attention + d.experts * expert)
        + d.unquantized_params() * storage.unquantized_bytes_per_param()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training_run::ModelPreset;

    #[test]
    fn nf4_with_double_quant_costs_4_127_bits_per_parameter() {
        let nf4 = WeightStorage::Nf4 { block: 64, double_quant: true };
        // 4096 x 4096 = 16,777,216 values: 8,388,608 packed bytes; 262,144 absmax bytes (1024
        // nested blocks, no padding); 1024 f32 nested scales = 4,096; one f32 offset.
        assert_eq!(nf4.matrix_bytes(4096, 4096), 8_388_608 + 262_144 + 4_096 + 4);
        // Without double quantization the absmax is one f32 per block: 262,144 x 4.
        let plain = WeightStorage::Nf4 { block: 64, double_quant: false };
        assert_eq!(plain.matrix_bytes(4096, 4096), 8_388_608 + 1_048_576);
        // A tensor of 100 values: 50 bytes, 2 blocks padded to one nested block of 256 bytes,
        // one nested scale, one offset.
        assert_eq!(nf4.matrix_bytes(10, 10), 50 + 256 + 4 + 4);
        assert_eq!(WeightStorage::Int8.matrix_bytes(14336, 4096), 58_720_256 + 4 * 14336);
    }

    #[test]
    fn mixtral_8x7b_weights_at_each_precision() {
        let d = ModelDims::preset(ModelPreset::Mixtral8x7b);
        // bf16: 46,702,792,704 params x 2.
        assert_eq!(base_weight_bytes(&d, WeightStorage::Bf16), 93_405_585_408);
        // int8, per layer: q, o 16,777,216 + 4*4096 = 16,793,600 each; k, v 4,194,304 + 4*1024 =
        // 4,198,400 each; w1, w3 58,720,256 + 4*14336 = 58,777,600 each; w2 58,720,256 + 4*4096 =
        // 58,736,640; 8 experts: 1,410,334,720; layer 1,452,318,720; x 32 = 46,474,199,040;
        // plus 263,458,816 bf16 params x 2 = 526,917,632.
        assert_eq!(base_weight_bytes(&d, WeightStorage::Int8), 46_474_199_040 + 526_917_632);
        // NF4 (block 64, double quant), per tensor n/2 + n/64 + 4*n/16384 + 4: q, o 8,654,852;
        // k, v 2,163,716; each expert matrix 30,291,972; layer 2*8,654,852 + 2*2,163,716 +
        // 24*30,291,972 = 748,644,464; x 32 = 23,956,622,848; plus 526,917,632 in bf16.
        assert_eq!(
            base_weight_bytes(&d, WeightStorage::Nf4 { block: 64, double_quant: true }),
            23_956_622_848 + 526_917_632
        );
        assert_eq!(base_weight_bytes(&d, WeightStorage::F32), 4 * 46_702_792_704);
    }
}
