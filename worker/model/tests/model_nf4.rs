// NF4 / int8 storage: code book, packing order, round-trip error, double quantization, size.
// (Code values are written with bitsandbytes' published digits.)

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use sapllm_model::quant::int8::Int8Tensor;
use sapllm_model::quant::nf4::{BLOCK, NF4_CODE, Nf4Tensor, double_quantize, dynamic_map_signed, nf4_index};

fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let (u1, u2): (f64, f64) = (rng.random::<f64>().max(1e-12), rng.random());
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * 0.02) as f32
        })
        .collect()
}

#[test]
#[allow(clippy::excessive_precision)]
fn code_book_is_pinned_to_bitsandbytes() {
    let expected = [
        -1.0, -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1847734, -0.0910500, 0.0, 0.0795803,
        0.1609302, 0.2461123, 0.3379152, 0.4407098, 0.5626170, 0.7229568, 1.0,
    ];
    for (i, (&c, &e)) in NF4_CODE.iter().zip(expected.iter()).enumerate() {
        assert!((c - e).abs() < 1e-7, "code {i}: {c} vs {e}");
        assert_eq!(nf4_index(c), i as u8, "code value {c} must map to itself");
    }
    // Midpoint ties go to the lower code, just above goes up.
    let mid = (NF4_CODE[7] + NF4_CODE[8]) / 2.0;
    assert_eq!(nf4_index(mid), 7);
    assert_eq!(nf4_index(mid + 1e-6), 8);
    assert_eq!(nf4_index(-5.0), 0);
    assert_eq!(nf4_index(5.0), 15);
}

#[test]
#[allow(clippy::excessive_precision)]
fn first_element_goes_in_the_high_nibble() {
    let mut v = vec![0f32; BLOCK];
    v[0] = 1.0; // code 15
    v[1] = -1.0; // code 0
    v[2] = 0.0; // code 7
    v[3] = 0.5626170; // code 13
    let q = Nf4Tensor::quantize(&v, &[1, BLOCK], &Device::Cpu).unwrap();
    let packed = q.packed_bytes().unwrap();
    assert_eq!(packed.len(), BLOCK / 2);
    assert_eq!(packed[0], 0xF0);
    assert_eq!(packed[1], 0x7D);
    let back = q.dequantize(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!((back[0] - 1.0).abs() < 1e-2 && (back[1] + 1.0).abs() < 1e-2 && back[2].abs() < 1e-6);
}

#[test]
fn round_trip_error_is_bounded() {
    let (rows, cols) = (96, 160); // 15360 values: 240 blocks, a partial nested block
    let v = gaussian(rows * cols, 1);
    let q = Nf4Tensor::quantize(&v, &[rows, cols], &Device::Cpu).unwrap();
    let back = q.dequantize(DType::F32).unwrap();
    assert_eq!(back.dims(), &[rows, cols]);
    let back = back.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let absmax = q.absmax().unwrap().to_vec1::<f32>().unwrap();
    // Per element: at most half the widest code gap ((1 - 0.6962) / 2 = 0.1520) of the block's (dequantized)
    // absmax, plus the absmax's own 8-bit error (checked below to be < 1%).
    let mut se = 0f64;
    let mut sv = 0f64;
    for (i, (&x, &y)) in v.iter().zip(back.iter()).enumerate() {
        let a = absmax[i / BLOCK];
        assert!((x - y).abs() <= 0.1520 * a + 0.01 * a.abs() + 1e-7, "element {i}: {x} -> {y} (absmax {a})");
        se += ((x - y) as f64).powi(2);
        sv += (x as f64).powi(2);
    }
    let rel_rms = (se / sv).sqrt();
    // The CPU fast path and the device-generic path agree exactly.
    let generic =
        q.dequantize_with_tensor_ops(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(generic, back);
    // NF4 on Gaussian weights: ~10% relative RMS error.
    assert!(rel_rms < 0.12, "relative RMS error {rel_rms}");
}

#[test]
fn double_quantized_absmax_round_trips() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let absmax: Vec<f32> = (0..700).map(|_| rng.random_range(0.01f32..0.08)).collect();
    let (q, scales, offset) = double_quantize(&absmax);
    assert_eq!(q.len(), 700);
    assert_eq!(scales.len(), 3); // ceil(700 / 256)
    let mean = absmax.iter().sum::<f32>() / 700.0;
    assert!((offset - mean).abs() < 1e-6);
    let code = dynamic_map_signed();
    for (i, (&a, &qi)) in absmax.iter().zip(q.iter()).enumerate() {
        let back = code[qi as usize] * scales[i / 256] + offset;
        assert!((back - a).abs() <= 0.01 * scales[i / 256] + 1e-7, "absmax {i}: {a} -> {back}");
    }
}

#[test]
fn storage_is_4_127_bits_per_parameter() {
    let v = gaussian(1024 * 1024, 2);
    let q = Nf4Tensor::quantize(&v, &[1024, 1024], &Device::Cpu).unwrap();
    let bits = q.bits_per_param();
    assert!((bits - 4.127).abs() < 0.001, "bits/param {bits}");
}

#[test]
fn bitsandbytes_parts_round_trip() {
    let v = gaussian(64 * 48, 4);
    let q = Nf4Tensor::quantize(&v, &[64, 48], &Device::Cpu).unwrap();
    let parts = [
        ("", Tensor::from_vec(q.packed_bytes().unwrap(), (64 * 48 / 2, 1), &Device::Cpu).unwrap()),
        (".absmax", Tensor::new(q.qabsmax_bytes().unwrap(), &Device::Cpu).unwrap()),
        (".quant_map", q.code.clone()),
        (".nested_absmax", q.nested_absmax.flatten_all().unwrap()),
        (".nested_quant_map", q.nested_code.clone()),
        (
            ".quant_state.bitsandbytes__nf4",
            Tensor::new(serde_json::to_vec(&q.quant_state_json("bfloat16")).unwrap(), &Device::Cpu).unwrap(),
        ),
    ];
    let get = |s: &str| -> anyhow::Result<Option<Tensor>> {
        Ok(parts.iter().find(|(k, _)| *k == s).map(|(_, t)| t.clone()))
    };
    let r = Nf4Tensor::from_bnb("w", &get, &Device::Cpu).unwrap();
    let a = q.dequantize(DType::F32).unwrap();
    let b = r.dequantize(DType::F32).unwrap();
    assert_eq!((a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    // A missing part is named.
    let get_missing =
        |s: &str| -> anyhow::Result<Option<Tensor>> { if s == ".quant_map" { Ok(None) } else { get(s) } };
    let err = Nf4Tensor::from_bnb("w", &get_missing, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("w.quant_map"), "{err}");
}

#[test]
fn int8_round_trip() {
    let v = gaussian(32 * 64, 5);
    let q = Int8Tensor::quantize(&v, 32, 64, &Device::Cpu).unwrap();
    let back = q.dequantize(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for r in 0..32 {
        let row = &v[r * 64..(r + 1) * 64];
        let amax = row.iter().fold(0f32, |m, x| m.max(x.abs()));
        for c in 0..64 {
            assert!((row[c] - back[r * 64 + c]).abs() <= amax / 254.0 + 1e-7);
        }
    }
    assert!((q.bits_per_param() - 8.5).abs() < 1e-9);
}

/// What a GPU executes for a frozen NF4 (and int8) linear, on the CPU: the device-generic
/// formulation (tensor-op dequantization, then candle's matmul, whose backward is candle's) must
/// give the CPU fast path's output (one-pass dequantization, the `FrozenMatmul` custom op or the
/// direct int8 kernel) and the same gradient with respect to the input, the one LoRA's
/// gradients flow through.
#[test]
fn the_device_generic_formulation_matches_the_cpu_fast_path_forward_and_backward() {
    use sapllm_model::linear::{BaseWeight, Linear, Precision, matmul_t};
    use std::sync::Arc;
    let (out_dim, in_dim) = (96, 256);
    let w = Tensor::from_vec(gaussian(out_dim * in_dim, 11), (out_dim, in_dim), &Device::Cpu).unwrap();
    let x = candle_core::Var::from_tensor(
        &Tensor::from_vec(gaussian(3 * 5 * in_dim, 12), (3, 5, in_dim), &Device::Cpu).unwrap(),
    )
    .unwrap();
    for precision in [Precision::Nf4, Precision::Int8] {
        let base = BaseWeight::from_dense(&w, precision, false).unwrap();
        let generic_w = match &base {
            BaseWeight::Nf4(q) => q.dequantize_with_tensor_ops(DType::F32).unwrap(),
            BaseWeight::Int8(q) => q.dequantize(DType::F32).unwrap(),
            BaseWeight::Dense(_) => unreachable!("quantized"),
        };
        let fast = Linear::new(base, Arc::new(Default::default()));
        let y_fast = fast.forward(x.as_tensor()).unwrap();
        let y_generic = matmul_t(x.as_tensor(), &generic_w).unwrap();
        let diff = |a: &Tensor, b: &Tensor| {
            (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
        };
        // Same weights; only the summation order of the matmul differs.
        assert!(
            diff(&y_fast, &y_generic) < 1e-5,
            "{precision:?} forward differs by {}",
            diff(&y_fast, &y_generic)
        );
        let g_fast = y_fast.sqr().unwrap().sum_all().unwrap().backward().unwrap().get(&x).unwrap().clone();
        let g_generic =
            y_generic.sqr().unwrap().sum_all().unwrap().backward().unwrap().get(&x).unwrap().clone();
        assert!(
            diff(&g_fast, &g_generic) < 1e-5,
            "{precision:?} input gradient differs by {}",
            diff(&g_fast, &g_generic)
        );
    }
}
