//! CPU-vs-CUDA parity of the device path (what a GPU executes: candle's built-in ops, no CPU
//! fast path), compiled with `--features cuda` (CI checks it) and run by `scripts/gpu-check.sh`
//! on a machine with an NVIDIA GPU. The same weights are loaded on both devices from one saved
//! checkpoint; logits and LoRA gradients must agree within f32 summation-order tolerances.
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
    let a = cpu.forward_on(&input, None, ForwardPath::Candle).unwrap().logits;
    let b = gpu.forward_on(&input.to_device(&cuda()).unwrap(), None, ForwardPath::Candle).unwrap().logits;
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
        let (_, g) = m.forward_backward(x, None, &mut |o| causal_lm_loss(&o.logits, x, None)).unwrap();
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
