// Gradient tests of the training model: every adapter and the router get a gradient, LoRA
// gradients match finite differences, and gradient checkpointing matches full backprop.

use candle_core::{DType, Device, Tensor};
use sapllm_model::config::MixtralConfig;
use sapllm_model::linear::LoraConfig;
use sapllm_model::loss::causal_lm_loss;
use sapllm_model::mixtral::{Mixtral, ModelOptions};

const VOCAB: usize = 64;

fn lora_all() -> LoraConfig {
    LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, ..LoraConfig::default() }
}

fn ids(b: usize, t: usize, seed: u32) -> Tensor {
    let v: Vec<u32> = (0..b * t)
        .map(|i| ((i as u32 * 37 + seed * 11 + 5).wrapping_mul(2654435761) >> 7) % VOCAB as u32)
        .collect();
    Tensor::from_vec(v, (b, t), &Device::Cpu).unwrap()
}

fn model(opts: ModelOptions) -> Mixtral {
    let m = Mixtral::new_random(&MixtralConfig::micro(VOCAB), &opts, &Device::Cpu).unwrap();
    // A fresh adapter has B = 0, which zeroes A's gradient: give B values first.
    m.randomize_lora_b(0.05, 7).unwrap();
    m
}

#[test]
fn every_lora_tensor_and_the_router_get_a_gradient() {
    let m = model(ModelOptions { lora: Some(lora_all()), train_router: true, ..Default::default() });
    let input = ids(4, 32, 1);
    let (loss, grads) =
        m.forward_backward(&input, None, &mut |o| causal_lm_loss(&o.logits, &input, None)).unwrap();
    assert!(loss.to_scalar::<f32>().unwrap().is_finite());
    let vars = m.trainable_vars();
    // 2 layers x (4 attention + 1 gate + 4 experts x 3) linears x (A, B) + 2 routers.
    assert_eq!(vars.len(), 2 * (4 + 1 + 12) * 2 + 2);
    assert_eq!(m.router_vars().len(), 2);
    for (name, var) in &vars {
        let g = grads.get(var).unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0 && norm.is_finite(), "gradient of {name} is {norm}");
    }
}

#[test]
fn full_parameter_training_reaches_every_weight() {
    let m = model(ModelOptions { train_base: true, ..Default::default() });
    let input = ids(2, 24, 2);
    let (_, grads) =
        m.forward_backward(&input, None, &mut |o| causal_lm_loss(&o.logits, &input, None)).unwrap();
    let vars = m.trainable_vars();
    // embed + lm_head + final norm + 2 layers x (2 norms + 4 attn + gate + 12 expert mats).
    assert_eq!(vars.len(), 3 + 2 * (2 + 4 + 1 + 12));
    for (name, var) in &vars {
        let g = grads.get(var).unwrap_or_else(|| panic!("no gradient for {name}"));
        assert!(
            g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0,
            "zero gradient for {name}"
        );
    }
}

#[test]
fn lora_gradients_match_finite_differences() {
    // f64 compute makes central differences accurate; eps small enough not to flip a top-k.
    let m = model(ModelOptions { lora: Some(lora_all()), dtype: DType::F64, ..Default::default() });
    let input = ids(1, 12, 3);
    let loss_of = |m: &Mixtral| -> f64 {
        let o = m.forward(&input, None).unwrap();
        causal_lm_loss(&o.logits, &input, None).unwrap().to_scalar::<f64>().unwrap()
    };
    let (_, grads) =
        m.forward_backward(&input, None, &mut |o| causal_lm_loss(&o.logits, &input, None)).unwrap();
    let vars = m.lora_vars();
    let mut checked = 0;
    for pick in [0usize, 3, 9, vars.len() - 1, vars.len() - 4] {
        let (name, var) = &vars[pick];
        let g = grads
            .get(var)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        // The entry with the largest gradient, where the relative check is meaningful.
        let (idx, &g_an) =
            g.iter().enumerate().max_by(|a, b| a.1.abs().partial_cmp(&b.1.abs()).unwrap()).unwrap();
        let orig = var.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let eps = 1e-3f32;
        let eval = |delta: f32| -> (f64, f32) {
            let mut v = orig.clone();
            v[idx] += delta;
            let actual = v[idx];
            var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap()).unwrap();
            (loss_of(&m), actual)
        };
        let (lp, xp) = eval(eps);
        let (lm, xm) = eval(-eps);
        var.set(&Tensor::from_vec(orig.clone(), var.shape(), &Device::Cpu).unwrap()).unwrap();
        let g_fd = (lp - lm) / (xp - xm) as f64;
        let rel = (g_fd - g_an).abs() / g_an.abs().max(1e-8);
        assert!(rel < 1e-3, "{name}[{idx}]: analytic {g_an:e}, finite difference {g_fd:e} (rel {rel:e})");
        checked += 1;
    }
    assert_eq!(checked, 5);
}

#[test]
fn gradient_checkpointing_matches_full_backprop() {
    // Dropout on: checkpointing must replay the same masks in its recompute.
    let lora = LoraConfig { dropout: 0.1, ..lora_all() };
    let mut m = model(ModelOptions { lora: Some(lora), train_router: true, ..Default::default() });
    m.set_training(true);
    let input = ids(2, 20, 4);
    let mask =
        Tensor::from_vec((0..40u32).map(|i| u32::from(i < 34)).collect::<Vec<_>>(), (2, 20), &Device::Cpu)
            .unwrap();
    let run = |m: &Mixtral| {
        m.control.set_dropout_counter(0);
        m.forward_backward(&input, Some(&mask), &mut |o| causal_lm_loss(&o.logits, &input, Some(&mask)))
            .unwrap()
    };
    let (l_full, g_full) = run(&m);
    m.set_grad_checkpoint(true);
    let (l_ck, g_ck) = run(&m);
    let (a, b) = (l_full.to_scalar::<f32>().unwrap(), l_ck.to_scalar::<f32>().unwrap());
    assert!((a - b).abs() < 1e-6, "loss {a} vs {b}");
    for (name, var) in m.trainable_vars() {
        let x = g_full.get(&var).unwrap_or_else(|| panic!("full: no grad for {name}"));
        let y = g_ck.get(&var).unwrap_or_else(|| panic!("checkpointed: no grad for {name}"));
        let diff = (x - y).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = x.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff <= 1e-5 * scale.max(1e-3), "{name}: max diff {diff} (scale {scale})");
    }
}

#[test]
fn disabled_adapter_gives_the_base_model() {
    let base = model(ModelOptions::default());
    let mut with = base.clone();
    with.add_lora(&lora_all(), 3).unwrap();
    with.randomize_lora_b(0.05, 9).unwrap();
    let input = ids(1, 10, 5);
    let lb = base.forward(&input, None).unwrap().logits;
    let la = with.forward(&input, None).unwrap().logits;
    assert!((&lb - &la).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 1e-4);
    with.set_adapter_enabled(false);
    let ld = with.forward(&input, None).unwrap().logits;
    assert_eq!((&lb - &ld).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
}
