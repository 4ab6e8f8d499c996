//! NF4 (4-bit NormalFloat) weights exactly as bitsandbytes stores them, with double quantization.
//!
//! Layout (bitsandbytes `quantize_4bit(quant_type="nf4", compress_statistics=True)`):
//! - the weight is flattened row-major and cut into blocks of [`BLOCK`] = 64 values;
//! - per block, `absmax = max|x|`; each `x / absmax` is mapped to the nearest of the 16
//!   [`NF4_CODE`] values (ties at a midpoint go to the lower code, as bitsandbytes' kernel does);
//! - two 4-bit indices per byte, the FIRST element in the HIGH nibble;
//! - double quantization: `offset = mean(absmax)`, and `absmax - offset` is quantized blockwise
//!   ([`NESTED_BLOCK`] = 256) with bitsandbytes' signed 8-bit dynamic map and one f32 scale
//!   (`nested_absmax`) per 256 absmax values.
//!
//! Dequantization is done inside the forward pass (only the packed bytes are kept): on the CPU in
//! one pass over the bytes, on CUDA (feature `cuda`) by the kernel in `nf4.cu`, bit-identical to
//! the CPU, and elsewhere with `index_select` over small lookup tables
//! ([`Nf4Tensor::dequantize_with_tensor_ops`]).
//! Storage cost: 4 + 8/64 + 32/(64*256) = 4.127 bits per parameter.

use anyhow::{Context, Result, bail, ensure};
use candle_core::{DType, Device, Tensor};

/// Values per NF4 block.
pub const BLOCK: usize = 64;
/// Absmax values per block of the nested (double) quantization.
pub const NESTED_BLOCK: usize = 256;

/// The 16 NF4 code values (QLoRA paper, bitsandbytes `get_4bit_type("nf4")`), written with
/// bitsandbytes' published digits.
#[allow(clippy::excessive_precision)]
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_1,
    -0.394_917_5,
    -0.284_441_4,
    -0.184_773_4,
    -0.091_050_0,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_2,
    0.440_709_8,
    0.562_617_0,
    0.722_956_8,
    1.0,
];

/// bitsandbytes' `create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)`, sorted:
/// 127 positive and 127 negative values spread over 7 decades, plus 0 and 1.
pub fn dynamic_map_signed() -> [f32; 256] {
    let max_exponent_bits = 7i32;
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for i in 0..max_exponent_bits {
        let fraction_items = (1usize << i) + 1;
        // torch.linspace(0.1, 1, n) in f32.
        let step = (1.0f32 - 0.1) / (fraction_items - 1) as f32;
        let boundaries: Vec<f32> = (0..fraction_items).map(|j| 0.1f32 + step * j as f32).collect();
        let scale = 10f64.powi(-(max_exponent_bits - 1) + i) as f32;
        for w in boundaries.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push(scale * mean);
            data.push(-(scale * mean));
        }
    }
    data.push(0.0);
    data.push(1.0);
    debug_assert_eq!(data.len(), 256);
    data.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let mut out = [0f32; 256];
    out.copy_from_slice(&data);
    out
}

/// Index of the nearest NF4 code for a value already scaled to [-1, 1].
#[inline]
pub fn nf4_index(x: f32) -> u8 {
    // Thresholds are the midpoints between consecutive codes; `>` sends exact ties down like
    // bitsandbytes' dQuantizeNF4 decision tree. The midpoints are sorted, so the index is the
    // number of them below x: a branch-free count the compiler vectorises.
    NF4_MIDPOINTS.iter().map(|&m| u8::from(x > m)).sum()
}

/// Midpoints between consecutive NF4 codes.
const NF4_MIDPOINTS: [f32; 15] = {
    let mut m = [0f32; 15];
    let mut i = 0;
    while i < 15 {
        m[i] = (NF4_CODE[i] + NF4_CODE[i + 1]) * 0.5;
        i += 1;
    }
    m
};

/// Quantizes whole blocks: `values` (a multiple of BLOCK long except possibly the last block)
/// into `packed` (BLOCK/2 bytes per block) and `absmax`.
fn quantize_blocks(values: &[f32], packed: &mut [u8], absmax: &mut [f32], first_block: usize) -> Result<()> {
    for (b, (block, (bytes, am))) in
        values.chunks(BLOCK).zip(packed.chunks_exact_mut(BLOCK / 2).zip(absmax.iter_mut())).enumerate()
    {
        let amax = block.iter().fold(0f32, |m, &x| m.max(x.abs()));
        ensure!(amax.is_finite(), "NF4 quantize: non-finite value in block {}", first_block + b);
        *am = amax;
        let inv = if amax > 0.0 { 1.0 / amax } else { 0.0 };
        for (j, byte) in bytes.iter_mut().enumerate() {
            // Padding past the end quantizes as 0.0 (code 7), so a padded block dequantizes to 0.
            let hi = block.get(2 * j).map_or(7, |&x| nf4_index(x * inv));
            let lo = block.get(2 * j + 1).map_or(7, |&x| nf4_index(x * inv));
            *byte = (hi << 4) | lo;
        }
    }
    Ok(())
}

/// Index of the nearest value in a sorted code book (bitsandbytes' 8-bit blockwise quantizer).
fn nearest_sorted(code: &[f32; 256], x: f32) -> u8 {
    let pos = code.partition_point(|&c| c < x);
    if pos == 0 {
        return 0;
    }
    if pos >= 256 {
        return 255;
    }
    let (lo, hi) = (code[pos - 1], code[pos]);
    if (x - lo).abs() <= (hi - x).abs() { (pos - 1) as u8 } else { pos as u8 }
}

/// A frozen weight in NF4 with double-quantized absmax, plus what is needed to dequantize it.
#[derive(Debug, Clone)]
pub struct Nf4Tensor {
    /// Logical shape of the weight (e.g. `[out, in]`).
    pub shape: Vec<usize>,
    /// Packed nibbles, `n_blocks * 32` bytes (last block zero-padded), as a U8 tensor.
    pub packed: Tensor,
    /// 8-bit quantized absmax, one per 64-block, padded to a multiple of 256 (U8).
    pub qabsmax: Tensor,
    /// One f32 scale per 256 absmax values (`nested_absmax`).
    pub nested_absmax: Tensor,
    /// The 8-bit code book for the absmax (`nested_quant_map`), F32 [256].
    pub nested_code: Tensor,
    /// `nested_offset`: mean of the absmax values, added back after dequantization.
    pub offset: f32,
    /// The 4-bit code book (`quant_map`), F32 [16].
    pub code: Tensor,
    /// Byte -> (high code, low code) lookup table, F32 [256, 2], derived from `code`.
    lut: Tensor,
    n_blocks: usize,
}

impl Nf4Tensor {
    /// Number of logical elements.
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// Quantizes an f32 slice of the given shape (row-major) with double quantization.
    pub fn quantize(values: &[f32], shape: &[usize], device: &Device) -> Result<Self> {
        let n: usize = shape.iter().product();
        ensure!(values.len() == n, "NF4 quantize: {} values for shape {shape:?}", values.len());
        ensure!(n > 0, "NF4 quantize: empty tensor");
        let n_blocks = n.div_ceil(BLOCK);
        let mut packed = vec![0u8; n_blocks * BLOCK / 2];
        let mut absmax = vec![0f32; n_blocks];
        // Split the blocks over the cores: loading a large model quantizes billions of values.
        let threads =
            std::thread::available_parallelism().map_or(1, |n| n.get()).min(n_blocks.div_ceil(1024)).max(1);
        let per = n_blocks.div_ceil(threads);
        std::thread::scope(|scope| -> Result<()> {
            let mut handles = Vec::new();
            for (t, (pk, am)) in packed.chunks_mut(per * BLOCK / 2).zip(absmax.chunks_mut(per)).enumerate() {
                let vals = &values[t * per * BLOCK..((t + 1) * per * BLOCK).min(n)];
                handles.push(scope.spawn(move || quantize_blocks(vals, pk, am, t * per)));
            }
            for h in handles {
                h.join().map_err(|_| anyhow::anyhow!("NF4 quantize thread panicked"))??;
            }
            Ok(())
        })?;
        let (qabsmax, nested_absmax, offset) = double_quantize(&absmax);
        let nested = dynamic_map_signed();
        Self::from_parts(shape.to_vec(), packed, qabsmax, nested_absmax, offset, &NF4_CODE, &nested, device)
    }

    /// Builds from raw parts (as read from a bitsandbytes checkpoint or produced by `quantize`).
    /// `packed` may be shorter than `n_blocks * 32` (bitsandbytes stores `ceil(n/2)` bytes).
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        shape: Vec<usize>,
        mut packed: Vec<u8>,
        mut qabsmax: Vec<u8>,
        nested_absmax: Vec<f32>,
        offset: f32,
        code: &[f32],
        nested_code: &[f32],
        device: &Device,
    ) -> Result<Self> {
        let n: usize = shape.iter().product();
        let n_blocks = n.div_ceil(BLOCK);
        ensure!(code.len() == 16, "NF4 quant_map must have 16 values, got {}", code.len());
        ensure!(
            nested_code.len() == 256,
            "NF4 nested_quant_map must have 256 values, got {}",
            nested_code.len()
        );
        ensure!(
            packed.len() >= n.div_ceil(2) && packed.len() <= n_blocks * BLOCK / 2,
            "NF4 packed weight has {} bytes, expected {} for shape {shape:?}",
            packed.len(),
            n.div_ceil(2)
        );
        ensure!(
            qabsmax.len() >= n_blocks,
            "NF4 absmax has {} values, expected {n_blocks} for shape {shape:?}",
            qabsmax.len()
        );
        qabsmax.truncate(n_blocks);
        let n_nested = n_blocks.div_ceil(NESTED_BLOCK);
        ensure!(
            nested_absmax.len() == n_nested,
            "NF4 nested_absmax has {} values, expected {n_nested}",
            nested_absmax.len()
        );
        packed.resize(n_blocks * BLOCK / 2, 0);
        // Pad the absmax codes to whole nested blocks; the padding is cut off after dequantizing.
        // Index of 0.0 in the dynamic map (dequantizes to `offset`, never used).
        qabsmax.resize(n_nested * NESTED_BLOCK, 0);
        let code_t = Tensor::from_slice(code, 16, device)?;
        let mut lut = Vec::with_capacity(512);
        for byte in 0..256usize {
            lut.push(code[byte >> 4]);
            lut.push(code[byte & 0xF]);
        }
        Ok(Nf4Tensor {
            shape,
            packed: Tensor::from_vec(packed, n_blocks * BLOCK / 2, device)?,
            qabsmax: Tensor::from_vec(qabsmax, n_nested * NESTED_BLOCK, device)?,
            nested_absmax: Tensor::from_vec(nested_absmax, (n_nested, 1), device)?,
            nested_code: Tensor::from_slice(nested_code, 256, device)?,
            offset,
            code: code_t,
            lut: Tensor::from_vec(lut, (256, 2), device)?,
            n_blocks,
        })
    }

    /// Dequantizes the per-block absmax values (F32 [n_blocks]). Indices go through u32 for the
    /// reason given in [`Nf4Tensor::dequantize`].
    pub fn absmax(&self) -> Result<Tensor> {
        let n_nested = self.nested_absmax.dim(0)?;
        let a = self
            .nested_code
            .index_select(&self.qabsmax.to_dtype(DType::U32)?, 0)?
            .reshape((n_nested, NESTED_BLOCK))?
            .broadcast_mul(&self.nested_absmax)?
            .flatten_all()?
            .narrow(0, 0, self.n_blocks)?;
        Ok((a + self.offset as f64)?)
    }

    /// Dequantizes to a plain tensor of `dtype` with the logical shape. The result carries no
    /// gradient (the base weight is frozen) but is an ordinary tensor, so a matmul with it passes
    /// the gradient on to its other operand.
    pub fn dequantize(&self, dtype: DType) -> Result<Tensor> {
        if let Some(w) = self.dequantize_cpu()? {
            return Ok(w.to_dtype(dtype)?);
        }
        #[cfg(feature = "cuda")]
        if self.packed.device().is_cuda() {
            return cuda::dequantize(self, dtype);
        }
        self.dequantize_with_tensor_ops(dtype)
    }

    /// The device-generic dequantization (lookup tables + `index_select`), used off-CPU.
    pub fn dequantize_with_tensor_ops(&self, dtype: DType) -> Result<Tensor> {
        let absmax = self.absmax()?.reshape((self.n_blocks, 1))?;
        // candle's index_select treats the dtype's max value (255 for u8) as a "no index"
        // sentinel and writes zeros, so byte 0xFF would be lost: index with u32.
        let vals =
            self.lut.index_select(&self.packed.to_dtype(DType::U32)?, 0)?.reshape((self.n_blocks, BLOCK))?;
        let w = vals.broadcast_mul(&absmax)?.flatten_all()?.narrow(0, 0, self.elem_count())?;
        Ok(w.reshape(self.shape.as_slice())?.to_dtype(dtype)?)
    }

    /// CPU fast path: one pass over the packed bytes (the generic path above takes several
    /// tensor passes and a u32 copy of the indices; this matters since it runs every forward).
    fn dequantize_cpu(&self) -> Result<Option<Tensor>> {
        if !self.packed.device().is_cpu() {
            return Ok(None);
        }
        let slice_u8 = |t: &Tensor| -> Result<Vec<u8>> { Ok(t.to_vec1::<u8>()?) };
        let (pst, pl) = self.packed.storage_and_layout();
        let candle_core::Storage::Cpu(pcpu) = &*pst else { return Ok(None) };
        let packed = &pcpu.as_slice::<u8>()?[pl.start_offset()..];
        let qabs = slice_u8(&self.qabsmax)?;
        let nested = self.nested_absmax.flatten_all()?.to_vec1::<f32>()?;
        let ncode = self.nested_code.to_vec1::<f32>()?;
        let code = self.code.to_vec1::<f32>()?;
        let n = self.elem_count();
        let mut out = vec![0f32; self.n_blocks * BLOCK];
        for (b, chunk) in out.chunks_exact_mut(BLOCK).enumerate() {
            let a = ncode[qabs[b] as usize] * nested[b / NESTED_BLOCK] + self.offset;
            let bytes = &packed[b * BLOCK / 2..(b + 1) * BLOCK / 2];
            for (pair, &byte) in chunk.chunks_exact_mut(2).zip(bytes) {
                pair[0] = code[(byte >> 4) as usize] * a;
                pair[1] = code[(byte & 0xF) as usize] * a;
            }
        }
        out.truncate(n);
        drop(pst);
        Ok(Some(Tensor::from_vec(out, self.shape.as_slice(), self.packed.device())?))
    }

    /// Bytes of storage: packed nibbles, 8-bit absmax, f32 nested scales and the offset
    /// (padding excluded, code books excluded as they are shared constants).
    pub fn storage_bytes(&self) -> usize {
        let n = self.elem_count();
        n.div_ceil(2) + self.n_blocks + self.n_blocks.div_ceil(NESTED_BLOCK) * 4 + 4
    }

    /// Storage bits per parameter (4.127 for large tensors).
    pub fn bits_per_param(&self) -> f64 {
        self.storage_bytes() as f64 * 8.0 / self.elem_count() as f64
    }

    /// The packed bytes trimmed to bitsandbytes' `ceil(n/2)` length.
    pub fn packed_bytes(&self) -> Result<Vec<u8>> {
        let mut v = self.packed.to_vec1::<u8>()?;
        v.truncate(self.elem_count().div_ceil(2));
        Ok(v)
    }

    /// The 8-bit absmax codes trimmed to one per block.
    pub fn qabsmax_bytes(&self) -> Result<Vec<u8>> {
        let mut v = self.qabsmax.to_vec1::<u8>()?;
        v.truncate(self.n_blocks);
        Ok(v)
    }

    /// bitsandbytes' `quant_state.bitsandbytes__nf4` JSON for this tensor.
    pub fn quant_state_json(&self, dtype: &str) -> serde_json::Value {
        serde_json::json!({
            "quant_type": "nf4",
            "blocksize": BLOCK,
            "dtype": dtype,
            "shape": self.shape,
            "nested_blocksize": NESTED_BLOCK,
            "nested_dtype": "float32",
            "nested_offset": self.offset,
        })
    }

    /// Builds from the tensors a bitsandbytes-quantized checkpoint holds for one weight
    /// (`{name}`, `{name}.absmax`, `{name}.quant_map`, `{name}.nested_absmax`,
    /// `{name}.nested_quant_map`, `{name}.quant_state.bitsandbytes__nf4`). `get` returns the
    /// tensor for a key suffix ("" for the packed weight), or None when absent.
    pub fn from_bnb(
        name: &str,
        get: &dyn Fn(&str) -> Result<Option<Tensor>>,
        device: &Device,
    ) -> Result<Self> {
        let need = |suffix: &str| -> Result<Tensor> {
            get(suffix)?.with_context(|| {
                format!("bitsandbytes NF4 weight `{name}`: tensor `{name}{suffix}` is missing")
            })
        };
        let state_t = need(".quant_state.bitsandbytes__nf4")?;
        let state_bytes = state_t.flatten_all()?.to_dtype(DType::U8)?.to_vec1::<u8>()?;
        let state: serde_json::Value = serde_json::from_slice(&state_bytes)
            .with_context(|| format!("`{name}.quant_state.bitsandbytes__nf4` is not JSON"))?;
        let qt = state.get("quant_type").and_then(|v| v.as_str()).unwrap_or("nf4");
        if qt != "nf4" {
            bail!("`{name}`: quant_type {qt:?} is not supported (only nf4)");
        }
        let blocksize = state.get("blocksize").and_then(|v| v.as_u64()).unwrap_or(64) as usize;
        ensure!(blocksize == BLOCK, "`{name}`: NF4 blocksize {blocksize} is not supported (only {BLOCK})");
        let shape: Vec<usize> = state
            .get("shape")
            .and_then(|v| v.as_array())
            .with_context(|| format!("`{name}`: quant_state has no shape"))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize).context("shape entry is not an integer"))
            .collect::<Result<_>>()?;
        let packed =
            need("")?.flatten_all()?.to_vec1::<u8>().with_context(|| format!("`{name}` must be U8"))?;
        let code = need(".quant_map")?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let absmax_t = need(".absmax")?;
        let n_blocks = shape.iter().product::<usize>().div_ceil(BLOCK);
        match get(".nested_absmax")? {
            Some(nested) => {
                let nested_nb =
                    state.get("nested_blocksize").and_then(|v| v.as_u64()).unwrap_or(256) as usize;
                ensure!(nested_nb == NESTED_BLOCK, "`{name}`: nested blocksize {nested_nb} is not supported");
                let offset = state
                    .get("nested_offset")
                    .and_then(|v| v.as_f64())
                    .with_context(|| format!("`{name}`: quant_state has no nested_offset"))?
                    as f32;
                let qabsmax = absmax_t.flatten_all()?.to_vec1::<u8>()?;
                let nested_absmax = nested.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                let nested_code = need(".nested_quant_map")?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                Self::from_parts(shape, packed, qabsmax, nested_absmax, offset, &code, &nested_code, device)
            }
            None => {
                // No double quantization: re-quantize the f32 absmax so one code path serves both.
                let absmax = absmax_t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                ensure!(
                    absmax.len() == n_blocks,
                    "`{name}.absmax` has {} values, expected {n_blocks}",
                    absmax.len()
                );
                let (q, nested_absmax, offset) = double_quantize(&absmax);
                let nested = dynamic_map_signed();
                Self::from_parts(shape, packed, q, nested_absmax, offset, &code, &nested, device)
            }
        }
    }
}

/// Threads per CUDA block of the NF4 kernel (`nf4.cu`): a multiple of 32, so that each warp
/// covers exactly one 64-value NF4 block (32 packed bytes) and shares its absmax.
#[cfg(any(test, feature = "cuda"))]
const CUDA_THREADS: u32 = 256;

/// Launch geometry of the NF4 kernel for `n` logical elements, `(grid blocks, threads per
/// block)`: one thread per packed byte, i.e. per output pair.
#[cfg(any(test, feature = "cuda"))]
fn cuda_launch_geometry(n: usize) -> Result<(u32, u32)> {
    let grid = n.div_ceil(2).div_ceil(CUDA_THREADS as usize);
    let grid =
        u32::try_from(grid).with_context(|| format!("NF4 CUDA dequantize: {n} elements is too many"))?;
    Ok((grid, CUDA_THREADS))
}

/// The CUDA kernel's launch (`nf4.cu`, compiled to PTX by build.rs).
#[cfg(feature = "cuda")]
mod cuda {
    use super::{Nf4Tensor, cuda_launch_geometry};
    use anyhow::{Context, Result, bail};
    use candle_core::backend::BackendDevice;
    use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDType, CudaStorageSlice, WrapErr};
    use candle_core::op::BackpropOp;
    use candle_core::{DType, Device, Layout, Shape, Storage, Tensor};

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/nf4.ptx"));
    /// Name under which candle's CUDA device caches the loaded module.
    const MODULE: &str = "sapllm_nf4";

    /// The contiguous device memory behind `storage`/`layout`.
    fn view<'a, T: CudaDType>(storage: &'a Storage, layout: &Layout, what: &str) -> Result<CudaView<'a, T>> {
        let Storage::Cuda(cs) = storage else {
            bail!("NF4 CUDA dequantize: `{what}` is not on a CUDA device")
        };
        let (start, end) = layout
            .contiguous_offsets()
            .with_context(|| format!("NF4 CUDA dequantize: `{what}` is not contiguous"))?;
        Ok(cs.as_cuda_slice::<T>()?.slice(start..end))
    }

    /// Dequantizes on the tensor's CUDA device in one kernel launch, bit-identical to the CPU
    /// path: F32 directly, BF16 rounded in the kernel as candle's CPU `to_dtype` rounds, any other
    /// dtype through F32.
    pub(super) fn dequantize(t: &Nf4Tensor, dtype: DType) -> Result<Tensor> {
        let Device::Cuda(dev) = t.packed.device() else {
            bail!("NF4 CUDA dequantize: packed weight is not on CUDA")
        };
        let n = t.elem_count();
        if n == 0 {
            // A grid of zero blocks is an invalid launch.
            return Ok(Tensor::zeros(t.shape.as_slice(), dtype, t.packed.device())?);
        }
        let out_dtype = if dtype == DType::BF16 { DType::BF16 } else { DType::F32 };
        let (packed_s, packed_l) = t.packed.storage_and_layout();
        let (qabs_s, qabs_l) = t.qabsmax.storage_and_layout();
        let (nested_s, nested_l) = t.nested_absmax.storage_and_layout();
        let (ncode_s, ncode_l) = t.nested_code.storage_and_layout();
        let (code_s, code_l) = t.code.storage_and_layout();
        let packed = view::<u8>(&packed_s, packed_l, "packed")?;
        let qabs = view::<u8>(&qabs_s, qabs_l, "qabsmax")?;
        let nested = view::<f32>(&nested_s, nested_l, "nested_absmax")?;
        let ncode = view::<f32>(&ncode_s, ncode_l, "nested_code")?;
        let code = view::<f32>(&code_s, code_l, "code")?;
        // The kernel reads up to byte ceil(n/2)-1, absmax n_blocks-1 and its nested scale.
        anyhow::ensure!(
            packed.len() >= n.div_ceil(2)
                && qabs.len() >= t.n_blocks
                && nested.len() >= t.n_blocks.div_ceil(super::NESTED_BLOCK)
                && ncode.len() == 256
                && code.len() == 16,
            "NF4 CUDA dequantize: inconsistent parts for shape {:?}",
            t.shape
        );
        let (grid, threads) = cuda_launch_geometry(n)?;
        let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        let shape = Shape::from(n);
        // SAFETY: every one of the n elements is written by the kernel before it is read.
        let mut out = unsafe { dev.alloc_uninit(&shape, out_dtype)? };
        let n_arg = n as u64;
        let func_name = if out_dtype == DType::BF16 { "nf4_dequantize_bf16" } else { "nf4_dequantize_f32" };
        let func = dev.get_or_load_custom_func(func_name, MODULE, PTX)?;
        let mut builder = func.builder();
        builder.arg(&packed);
        builder.arg(&qabs);
        builder.arg(&nested);
        builder.arg(&ncode);
        builder.arg(&code);
        builder.arg(&t.offset);
        match &mut out.slice {
            CudaStorageSlice::F32(s) => builder.arg(s),
            CudaStorageSlice::BF16(s) => builder.arg(s),
            _ => bail!("NF4 CUDA dequantize: unexpected output dtype"),
        };
        builder.arg(&n_arg);
        // SAFETY: the argument list matches the kernel's signature in nf4.cu, and the lengths were
        // checked above against the indices the kernel reads and writes.
        unsafe { builder.launch(cfg) }.w()?;
        drop(builder);
        let w = Tensor::from_storage(Storage::Cuda(out), shape, BackpropOp::none(), false);
        Ok(w.reshape(t.shape.as_slice())?.to_dtype(dtype)?)
    }
}

/// Double quantization of absmax values: returns (8-bit codes, per-256 scales, mean offset).
pub fn double_quantize(absmax: &[f32]) -> (Vec<u8>, Vec<f32>, f32) {
    let code = dynamic_map_signed();
    let offset = (absmax.iter().map(|&a| a as f64).sum::<f64>() / absmax.len().max(1) as f64) as f32;
    let mut q = Vec::with_capacity(absmax.len());
    let mut scales = Vec::with_capacity(absmax.len().div_ceil(NESTED_BLOCK));
    for chunk in absmax.chunks(NESTED_BLOCK) {
        let scale = chunk.iter().fold(0f32, |m, &a| m.max((a - offset).abs()));
        scales.push(scale);
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        for &a in chunk {
            q.push(nearest_sorted(&code, (a - offset) * inv));
        }
    }
    (q, scales, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_map_is_sorted_with_zero_and_one() {
        let m = dynamic_map_signed();
        assert!(m.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(m[255], 1.0);
        assert!(m.contains(&0.0));
        assert!((m[0] + 0.9928).abs() < 1e-3, "smallest {}", m[0]);
    }

    /// What one thread of `nf4.cu` computes, transcribed: thread `i` of the launch grid reads byte
    /// `i`, absmax `i / 32` and nested scale `absmax / 256`, and writes elements `2i`, `2i + 1`
    /// (the second only inside the tensor). Returns the output and how often each element was
    /// written.
    fn emulate_kernel(t: &Nf4Tensor) -> (Vec<f32>, Vec<u32>) {
        let packed = t.packed.to_vec1::<u8>().unwrap();
        let qabs = t.qabsmax.to_vec1::<u8>().unwrap();
        let nested = t.nested_absmax.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let ncode = t.nested_code.to_vec1::<f32>().unwrap();
        let code = t.code.to_vec1::<f32>().unwrap();
        let n = t.elem_count();
        let (grid, threads) = cuda_launch_geometry(n).unwrap();
        let (mut out, mut writes) = (vec![f32::NAN; n], vec![0u32; n]);
        for block_idx in 0..grid as usize {
            for thread_idx in 0..threads as usize {
                let i = block_idx * threads as usize + thread_idx;
                let e = 2 * i;
                if e >= n {
                    continue;
                }
                let b = i / (BLOCK / 2);
                let a = ncode[qabs[b] as usize] * nested[b / NESTED_BLOCK] + t.offset;
                let byte = packed[i];
                out[e] = code[(byte >> 4) as usize] * a;
                writes[e] += 1;
                if e + 1 < n {
                    out[e + 1] = code[(byte & 0xF) as usize] * a;
                    writes[e + 1] += 1;
                }
            }
        }
        (out, writes)
    }

    /// `nf4.cu`'s `nf4_f32_to_bf16_bits`, transcribed.
    fn kernel_bf16_bits(v: f32) -> u16 {
        let x = v.to_bits();
        if x & 0x7FFF_FFFF > 0x7F80_0000 {
            return ((x >> 16) | 0x0040) as u16;
        }
        let round_bit = 0x0000_8000u32;
        let hi = (x >> 16) as u16;
        if x & round_bit != 0 && x & (3 * round_bit - 1) != 0 { hi + 1 } else { hi }
    }

    fn lcg_bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 56) as u8
            })
            .collect()
    }

    #[test]
    fn cuda_kernel_indexing_matches_cpu_dequantize() {
        // Odd element counts (a half-used last byte), partial last 64-block, partial last
        // 256-absmax nested block, more than one CUDA block, and a tensor smaller than a warp.
        for shape in [vec![37usize, 451], vec![3, 5], vec![256 * 64 + 2], vec![64, 64]] {
            let n: usize = shape.iter().product();
            let n_blocks = n.div_ceil(BLOCK);
            let mut packed = lcg_bytes(n.div_ceil(2), n as u64);
            packed[0] = 0xFF;
            let mut qabs = lcg_bytes(n_blocks, 7 + n as u64);
            qabs[n_blocks - 1] = 0xFF;
            let nested: Vec<f32> = lcg_bytes(n_blocks.div_ceil(NESTED_BLOCK), 3)
                .iter()
                .map(|&b| (b as f32 - 100.0) * 0.013)
                .collect();
            let t = Nf4Tensor::from_parts(
                shape.clone(),
                packed,
                qabs,
                nested,
                0.021,
                &NF4_CODE,
                &dynamic_map_signed(),
                &Device::Cpu,
            )
            .unwrap();
            let (out, writes) = emulate_kernel(&t);
            assert!(writes.iter().all(|&w| w == 1), "{shape:?}: every element written exactly once");
            let cpu = t.dequantize(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&out), bits(&cpu), "{shape:?}");
        }
        // A warp (32 threads) must cover exactly one NF4 block (32 bytes).
        assert_eq!(CUDA_THREADS as usize % (BLOCK / 2), 0);
    }

    #[test]
    fn cuda_kernel_bf16_rounding_matches_candle_cpu() {
        // Ties (round bit set, nothing below: to even), just above/below ties, NaN payloads,
        // infinities, subnormals, the largest finite value (rounds to infinity), and random bits.
        let mut bits: Vec<u32> = vec![
            0x3F80_8000,
            0x3F81_8000,
            0x3F80_8001,
            0x3F80_7FFF,
            0x7F80_0000,
            0xFF80_0000,
            0x7F80_0001,
            0xFFC1_2345,
            0x7FFF_FFFF,
            0x0000_8000,
            0x0001_8000,
            0x8000_0001,
            0x7F7F_FFFF,
            0,
            0x8000_0000,
        ];
        bits.extend(
            lcg_bytes(4 * 4096, 11).chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
        let vals: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        let want: Vec<u16> = Tensor::from_slice(&vals, vals.len(), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|v| (v.to_bits() >> 16) as u16)
            .collect();
        let got: Vec<u16> = vals.iter().map(|&v| kernel_bf16_bits(v)).collect();
        assert_eq!(got, want);
    }
}
