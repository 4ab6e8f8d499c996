// AdamW: matches a hand-computed step, clips by global norm, follows the schedule, resumes
// exactly from saved state; a few steps of LoRA training lower the loss.

use candle_core::{Device, Tensor, Var};
use sapllm_model::config::MixtralConfig;
use sapllm_model::linear::LoraConfig;
use sapllm_model::loss::causal_lm_loss;
use sapllm_model::mixtral::{Mixtral, ModelOptions};
use sapllm_model::optim::{AdamW, AdamWConfig, LrSchedule};

fn quad_grads(v: &Var, target: f32) -> candle_core::backprop::GradStore {
    // loss = sum((v - target)^2) -> grad = 2 (v - target)
    (v.as_tensor() - target as f64).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap()
}

#[test]
fn first_step_matches_the_adamw_formula() {
    let v = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
    let cfg = AdamWConfig {
        schedule: LrSchedule::constant(0.1),
        weight_decay: 0.0,
        max_grad_norm: None,
        ..Default::default()
    };
    let mut opt = AdamW::new(vec![("v".into(), v.clone())], cfg).unwrap();
    let stats = opt.step(&quad_grads(&v, 0.0)).unwrap();
    // Bias-corrected first step moves each coordinate by lr * sign(g).
    let got = v.as_tensor().to_vec1::<f32>().unwrap();
    assert!((got[0] - 0.9).abs() < 1e-6 && (got[1] + 1.9).abs() < 1e-6, "{got:?}");
    assert!((stats.grad_norm - (4.0f64 + 16.0).sqrt()).abs() < 1e-5);
}

#[test]
fn weight_decay_applies_to_matrices_only() {
    let m = Var::new(&[[1.0f32, 1.0]], &Device::Cpu).unwrap();
    let b = Var::new(&[1.0f32, 1.0], &Device::Cpu).unwrap();
    let cfg = AdamWConfig {
        schedule: LrSchedule::constant(0.1),
        weight_decay: 0.5,
        max_grad_norm: None,
        ..Default::default()
    };
    let mut opt = AdamW::new(vec![("m".into(), m.clone()), ("b".into(), b.clone())], cfg).unwrap();
    // Zero gradients: only decay moves anything.
    // (candle prunes `x * 0.0` from backprop, so multiply by a zero tensor instead.)
    let zero = Tensor::zeros((), candle_core::DType::F32, &Device::Cpu).unwrap();
    let loss =
        (m.as_tensor().sum_all().unwrap() + b.as_tensor().sum_all().unwrap()).unwrap().mul(&zero).unwrap();
    opt.step(&loss.backward().unwrap()).unwrap();
    let mv = m.as_tensor().to_vec2::<f32>().unwrap()[0][0];
    assert!((mv - 0.95).abs() < 1e-6, "{mv}");
    assert_eq!(b.as_tensor().to_vec1::<f32>().unwrap(), vec![1.0, 1.0]);
}

#[test]
fn gradients_are_clipped_to_the_global_norm() {
    let v = Var::new(&[3.0f32, 4.0], &Device::Cpu).unwrap();
    let cfg =
        AdamWConfig { schedule: LrSchedule::constant(0.0), max_grad_norm: Some(1.0), ..Default::default() };
    let mut opt = AdamW::new(vec![("v".into(), v.clone())], cfg).unwrap();
    let stats = opt.step(&quad_grads(&v, 0.0)).unwrap();
    assert!((stats.grad_norm - 10.0).abs() < 1e-5, "norm before clipping");
}

#[test]
fn warmup_then_cosine() {
    let s = LrSchedule { lr: 1.0, warmup_steps: 10, total_steps: 110, min_lr_ratio: 0.1 };
    assert!((s.lr_at(0) - 0.1).abs() < 1e-12);
    assert!((s.lr_at(9) - 1.0).abs() < 1e-12);
    assert!((s.lr_at(10) - 1.0).abs() < 1e-12);
    assert!((s.lr_at(60) - 0.55).abs() < 1e-12);
    assert!((s.lr_at(110) - 0.1).abs() < 1e-12);
    assert!((s.lr_at(500) - 0.1).abs() < 1e-12);
}

#[test]
fn resume_from_saved_state_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = AdamWConfig {
        schedule: LrSchedule { lr: 0.05, warmup_steps: 2, total_steps: 10, min_lr_ratio: 0.0 },
        ..Default::default()
    };
    let a = Var::new(&[1.0f32, 2.0, 3.0], &Device::Cpu).unwrap();
    let mut opt = AdamW::new(vec![("p".into(), a.clone())], cfg.clone()).unwrap();
    for _ in 0..3 {
        opt.step(&quad_grads(&a, 0.5)).unwrap();
    }
    opt.save(&dir.path().join("optimizer.safetensors")).unwrap();
    let b = Var::from_tensor(a.as_tensor()).unwrap();
    let mut resumed = AdamW::new(vec![("p".into(), b.clone())], cfg).unwrap();
    resumed.load(&dir.path().join("optimizer.safetensors")).unwrap();
    assert_eq!(resumed.step_count(), 3);
    for _ in 0..3 {
        opt.step(&quad_grads(&a, 0.5)).unwrap();
        resumed.step(&quad_grads(&b, 0.5)).unwrap();
    }
    assert_eq!(a.as_tensor().to_vec1::<f32>().unwrap(), b.as_tensor().to_vec1::<f32>().unwrap());
    // A state for other parameters is refused with the name.
    let c = Var::new(&[1.0f32], &Device::Cpu).unwrap();
    let mut other = AdamW::new(vec![("q".into(), c)], AdamWConfig::default()).unwrap();
    let err = other.load(&dir.path().join("optimizer.safetensors")).unwrap_err();
    assert!(err.to_string().contains("q.exp_avg"), "{err}");
}

#[test]
fn lora_training_lowers_the_loss() {
    let opts = ModelOptions {
        lora: Some(LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, ..Default::default() }),
        ..Default::default()
    };
    let m = Mixtral::new_random(&MixtralConfig::micro(64), &opts, &Device::Cpu).unwrap();
    let ids: Vec<u32> = (0..32u32).map(|i| (i * 3) % 64).collect();
    let input = Tensor::from_vec(ids, (2, 16), &Device::Cpu).unwrap();
    let cfg = AdamWConfig { schedule: LrSchedule::constant(1e-2), ..Default::default() };
    let mut opt = AdamW::new(m.trainable_vars(), cfg).unwrap();
    let mut losses = Vec::new();
    for _ in 0..15 {
        let (loss, grads) =
            m.forward_backward(&input, None, &mut |o| causal_lm_loss(&o.logits, &input, None)).unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        opt.step(&grads).unwrap();
    }
    assert!(losses[14] < losses[0] * 0.8, "losses {losses:?}");
}
