//! CPU-vs-CUDA parity of the device path (what a GPU executes: candle's built-in ops, no CPU
//! fast path), compiled with `--features cuda` (CI checks it) and run by `scripts/gpu-check.sh`
//! on a machine with an NVIDIA GPU. The same weights are loaded on both devices from one saved
//! checkpoint; logits and LoRA gradients must agree within f32 summation-order tolerances. The NF4
//! dequantization kernel (`quant/nf4.cu`) must agree with the CPU exactly.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use sapllm_model::config::MixtralConfig;
use sapllm_model::hf_io::{SaveOptions, load_model, save_model};
use sapllm_model::linear::LoraConfig;
use sapllm_model::loss::causal_lm_loss;
use sapllm_model::mixtral::{Mixtral, ModelOptions};
use sapllm_model::path::ForwardPath;
use sapllm_model::peft::{load_adapter, save_adapter};

fn cuda() -> Device {
    Device::new_cuda(0).expect("these tests need a CUDA device: run them through scripts/gpu-check.sh")
}

fn ids(b: usize, t: usize, vocab: usize, dev: &Device) -> Tensor {
    let v: Vec<u32> = (0..b * t).map(|i| ((i as u32).wrapping_mul(2654435761) >> 7) % vocab as u32).collect();
    Tensor::from_vec(v, (b, t), dev).unwrap()
}

/// (CPU model, CUDA model) with identical weights (and adapters, when `lora`).
fn pair(cfg: &MixtralConfig, lora: Option<LoraConfig>) -> (Mixtral, Mixtral) {
    let opts = ModelOptions { lora: lora.clone(), ..Default::default() };
    let m = Mixtral::new_random(cfg, &opts, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_model(&m, dir.path(), &SaveOptions::default()).unwrap();
    let load = |dev: &Device| {
        let mut x = load_model(dir.path(), &opts, dev).unwrap();
        if lora.is_some() {
            let a = dir.path().join("adapter");
            if !a.exists() {
                m.randomize_lora_b(0.05, 7).unwrap();
                save_adapter(&m, &a, "parity").unwrap();
            }
            load_adapter(&mut x, &a).unwrap();
        }
        x
    };
    (load(&Device::Cpu), load(&cuda()))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    let b = b.to_device(&Device::Cpu).unwrap();
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn logits_agree(cfg: &MixtralConfig, tol: f32) {
    let (cpu, gpu) = pair(cfg, None);
    let input = ids(2, 16, cfg.vocab_size, &Device::Cpu);
    // The same formulation on both devices: the CPU runs what CUDA runs.
    let a = cpu.forward_on(&input, None, ForwardPath::Generic).unwrap().logits;
    let b = gpu.forward_on(&input.to_device(&cuda()).unwrap(), None, ForwardPath::Generic).unwrap().logits;
    let d = max_abs_diff(&a, &b);
    println!("logits max |cpu - cuda| = {d:e}");
    assert!(d < tol, "logits differ by {d}");
}

#[test]
fn tiny_preset_logits_agree_on_cpu_and_cuda() {
    logits_agree(&MixtralConfig::preset(sapllm_model::config::Preset::Tiny, 512), 1e-3);
}

#[test]
fn mixtral_8x7b_shaped_layers_agree_on_cpu_and_cuda() {
    // Mixtral-8x7B's real dimensions, 2 layers, a small vocabulary: the shapes the kernels see.
    let mut cfg = MixtralConfig::preset(sapllm_model::config::Preset::Mixtral8x7b, 1024);
    cfg.num_hidden_layers = 2;
    logits_agree(&cfg, 5e-3);
}

#[test]
fn lora_gradients_agree_on_cpu_and_cuda() {
    let cfg = MixtralConfig::preset(sapllm_model::config::Preset::Tiny, 512);
    let lora = LoraConfig { r: 16, alpha: 32.0, dropout: 0.0, ..LoraConfig::default() };
    let (cpu, gpu) = pair(&cfg, Some(lora));
    let input = ids(2, 16, cfg.vocab_size, &Device::Cpu);
    let grads = |m: &Mixtral, x: &Tensor| {
        let (_, g) = m
            .forward_backward_on(x, None, ForwardPath::Generic, &mut |o| causal_lm_loss(&o.logits, x, None))
            .unwrap();
        m.lora_vars()
            .into_iter()
            .map(|(n, v)| (n, g.get(&v).unwrap().to_dtype(DType::F32).unwrap()))
            .collect::<Vec<_>>()
    };
    let a = grads(&cpu, &input);
    let b = grads(&gpu, &input.to_device(&cuda()).unwrap());
    assert_eq!(a.len(), b.len());
    for ((name, ga), (_, gb)) in a.iter().zip(&b) {
        let scale =
            ga.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1e-6);
        let d = max_abs_diff(ga, gb) / scale;
        assert!(d < 1e-2, "{name}: relative gradient difference {d}");
    }
}

/// (CPU, CUDA) copies of one NF4 weight built from raw parts.
fn nf4_pair(
    shape: &[usize],
    packed: Vec<u8>,
    qabs: Vec<u8>,
    nested: Vec<f32>,
    offset: f32,
) -> (sapllm_model::quant::nf4::Nf4Tensor, sapllm_model::quant::nf4::Nf4Tensor) {
    use sapllm_model::quant::nf4::{NF4_CODE, Nf4Tensor, dynamic_map_signed};
    let make = |dev: &Device| {
        Nf4Tensor::from_parts(
            shape.to_vec(),
            packed.clone(),
            qabs.clone(),
            nested.clone(),
            offset,
            &NF4_CODE,
            &dynamic_map_signed(),
            dev,
        )
        .unwrap()
    };
    (make(&Device::Cpu), make(&cuda()))
}

/// The NF4 kernel (nf4.cu) must reproduce the CPU dequantization bit for bit, in f32 and bf16.
fn nf4_bits_agree(cpu: &sapllm_model::quant::nf4::Nf4Tensor, gpu: &sapllm_model::quant::nf4::Nf4Tensor) {
    let bits = |t: Tensor| -> Vec<u32> {
        assert_eq!(t.dims(), cpu.shape.as_slice());
        // bf16 -> f32 is exact, so comparing f32 bits compares the bf16 bits too.
        let v = t.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap();
        v.to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
    };
    for dtype in [DType::F32, DType::BF16] {
        let a = bits(cpu.dequantize(dtype).unwrap());
        let b = bits(gpu.dequantize(dtype).unwrap());
        let first = a.iter().zip(&b).position(|(x, y)| x != y);
        assert!(first.is_none(), "{dtype:?}: first difference at element {first:?} of {}", a.len());
        assert_eq!(a.len(), b.len());
    }
}

#[test]
fn nf4_cuda_kernel_is_bit_identical_to_cpu_on_quantized_weights() {
    // 37 x 451 = 16687 values: odd (the last byte is half used), a partial last 64-block (47
    // values) and 261 blocks, i.e. a partial second nested block of 5 absmax values.
    let shape = [37usize, 451];
    let n: usize = shape.iter().product();
    let values: Vec<f32> =
        (0..n).map(|i| ((i as f32 * 0.7311).sin() * 0.05) * (1.0 + (i / 640) as f32 * 0.3)).collect();
    let cpu = sapllm_model::quant::nf4::Nf4Tensor::quantize(&values, &shape, &Device::Cpu).unwrap();
    let (c, g) = nf4_pair(
        &shape,
        cpu.packed_bytes().unwrap(),
        cpu.qabsmax_bytes().unwrap(),
        cpu.nested_absmax.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        cpu.offset,
    );
    nf4_bits_agree(&c, &g);
    // Quantizing directly on the device gives the same parts.
    let on_gpu = sapllm_model::quant::nf4::Nf4Tensor::quantize(&values, &shape, &cuda()).unwrap();
    nf4_bits_agree(&cpu, &on_gpu);
}

#[test]
fn nf4_cuda_kernel_is_bit_identical_to_cpu_on_random_bytes() {
    // Every byte value (0xFF included: candle's u8 index_select would zero it) in the packed
    // weight and the absmax codes, and nested scales of both signs; several shapes around the
    // block and nested-block boundaries, one spanning many CUDA blocks.
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 56) as u8
    };
    for shape in [vec![37usize, 451], vec![1], vec![63], vec![256 * 64 + 1], vec![4096, 1000]] {
        let n: usize = shape.iter().product();
        let n_blocks = n.div_ceil(64);
        let mut packed: Vec<u8> = (0..n.div_ceil(2)).map(|_| next()).collect();
        packed[0] = 0xFF;
        let mut qabs: Vec<u8> = (0..n_blocks).map(|_| next()).collect();
        qabs[n_blocks - 1] = 0xFF;
        qabs[0] = 0xFF;
        let nested: Vec<f32> =
            (0..n_blocks.div_ceil(256)).map(|_| (next() as f32 - 127.5) * 0.0037).collect();
        let (c, g) = nf4_pair(&shape, packed, qabs, nested, 0.0123);
        nf4_bits_agree(&c, &g);
    }
}
