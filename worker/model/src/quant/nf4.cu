// NF4 dequantization on the GPU, for the layout `nf4.rs` reads and writes (bitsandbytes'
// blockwise NF4 with double-quantized absmax):
//   packed[i]        two 4-bit code indices, element 2i in the HIGH nibble, 2i+1 in the low one;
//   qabsmax[b]       8-bit index into nested_code for the absmax of 64-value block b;
//   nested_absmax[k] f32 scale of the 256 absmax values of nested block k;
//   offset           mean absmax, added back after the nested dequantization.
//
// The result must be bit-identical to the CPU path (`Nf4Tensor::dequantize_cpu`), which computes
//   a = nested_code[qabsmax[b]] * nested_absmax[b / 256] + offset
//   out[2i] = code[byte >> 4] * a,  out[2i + 1] = code[byte & 0xF] * a
// with each multiply and add rounded separately (Rust never fuses). nvcc would contract the
// multiply-add into an FMA (one rounding), so the arithmetic goes through __fmul_rn / __fadd_rn,
// which are never contracted, and build.rs also passes -fmad=false. No --use_fast_math: it would
// flush subnormals to zero, which the CPU does not.
//
// One thread per packed byte (two outputs). 32 bytes make one 64-value block, so with blocks of
// a multiple of 32 threads every warp covers exactly one NF4 block and its absmax loads are a
// broadcast. `Nf4Tensor`'s launch geometry and its CPU emulation of this indexing live in nf4.rs
// (`cuda_launch_geometry`, and `emulate_kernel` in its tests): keep them in step with this file.

#define NF4_BYTES_PER_BLOCK 32   // 64 values, two per byte
#define NF4_NESTED_BLOCK 256     // absmax values per nested scale

__device__ __forceinline__ float nf4_block_absmax(const unsigned char* __restrict__ qabsmax,
                                                  const float* __restrict__ nested_absmax,
                                                  const float* __restrict__ nested_code, float offset,
                                                  unsigned long long block) {
  return __fadd_rn(__fmul_rn(nested_code[qabsmax[block]], nested_absmax[block / NF4_NESTED_BLOCK]),
                   offset);
}

// f32 -> bf16 bits exactly as the `half` crate's `bf16::from_f32` (what candle's CPU `to_dtype`
// uses): round to nearest, ties to even, NaN kept with its high mantissa bits and made quiet.
// __float2bfloat16 also rounds to nearest even but returns a canonical NaN; this keeps the GPU
// bf16 output bit-identical to the CPU's f32 result converted with `to_dtype(BF16)`.
__device__ __forceinline__ unsigned short nf4_f32_to_bf16_bits(float v) {
  unsigned int x = __float_as_uint(v);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) {
    return (unsigned short)((x >> 16) | 0x0040u);
  }
  const unsigned int round_bit = 0x00008000u;
  unsigned short hi = (unsigned short)(x >> 16);
  if ((x & round_bit) != 0 && (x & (3u * round_bit - 1u)) != 0) {
    hi += 1;
  }
  return hi;
}

// out: F32 [n], n the logical element count (the padding of the last block is not written).
extern "C" __global__ void nf4_dequantize_f32(const unsigned char* __restrict__ packed,
                                              const unsigned char* __restrict__ qabsmax,
                                              const float* __restrict__ nested_absmax,
                                              const float* __restrict__ nested_code,
                                              const float* __restrict__ code, float offset,
                                              float* __restrict__ out, unsigned long long n) {
  const unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  const unsigned long long e = 2ull * i;
  if (e >= n) {
    return;
  }
  const float a = nf4_block_absmax(qabsmax, nested_absmax, nested_code, offset, i / NF4_BYTES_PER_BLOCK);
  const unsigned char byte = packed[i];
  out[e] = __fmul_rn(code[byte >> 4], a);
  if (e + 1 < n) {
    out[e + 1] = __fmul_rn(code[byte & 0xF], a);
  }
}

// The same values rounded to bf16 (training computes in bf16 on the GPU): out is BF16 [n] as raw
// bits, equal to the f32 kernel's output converted as the CPU converts it.
extern "C" __global__ void nf4_dequantize_bf16(const unsigned char* __restrict__ packed,
                                               const unsigned char* __restrict__ qabsmax,
                                               const float* __restrict__ nested_absmax,
                                               const float* __restrict__ nested_code,
                                               const float* __restrict__ code, float offset,
                                               unsigned short* __restrict__ out, unsigned long long n) {
  const unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  const unsigned long long e = 2ull * i;
  if (e >= n) {
    return;
  }
  const float a = nf4_block_absmax(qabsmax, nested_absmax, nested_code, offset, i / NF4_BYTES_PER_BLOCK);
  const unsigned char byte = packed[i];
  out[e] = nf4_f32_to_bf16_bits(__fmul_rn(code[byte >> 4], a));
  if (e + 1 < n) {
    out[e + 1] = nf4_f32_to_bf16_bits(__fmul_rn(code[byte & 0xF], a));
  }
}
