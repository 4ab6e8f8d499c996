//! The device-generic path on the CPU against the CPU fast path (issue 14, item 7).
//!
//! A GPU runs [`ForwardPath::Generic`]: candle's built-in ops, the tensor-op NF4
//! dequantization, plain `matmul` for frozen weights, no fused shortcut, no plain-slice forward,
//! no AVX kernel. CI has no GPU, so this runs that formulation on the CPU and holds it to what
//! the CPU fast path computes, on the tiny preset with LoRA adapters, for f32, bf16, int8 and NF4
//! base weights: (a) logits, (b) the gradient of every LoRA tensor, (c) the adapter weights after
//! one AdamW step, (d) greedily decoded tokens. The per-thread kernel counter
//! ([`cpu_kernels_taken`]) shows that the generic run took no CPU kernel and the fast run did,
//! so no comparison is of a path with itself. (The GPU against the CPU is `model_cuda.rs`.)
//!
//! Both sides use the same weights and differ only in how sums are ordered (gemm blocking, the
//! fused kernels' row loops, the int8 kernel's `x . q - 128 sum(x)` form), so the tolerances are
//! f32 rounding bounds with a margin, stated next to each constant with the measured maximum.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use sapllm_model::config::{MixtralConfig, Preset};
use sapllm_model::linear::{LoraConfig, Precision};
use sapllm_model::loss::causal_lm_loss;
use sapllm_model::mixtral::{Mixtral, ModelOptions, ModelOutput};
use sapllm_model::path::{ForwardPath, cpu_kernels_taken};
use sapllm_model::plain::DecodeWeights;
use sapllm_model::{AdamW, AdamWConfig, GenerationConfig, KvCache};

const VOCAB: usize = 256;
const PRECISIONS: [Precision; 4] = [Precision::F32, Precision::Bf16, Precision::Int8, Precision::Nf4];

/// Logits, absolute (they are O(0.1) here). Only summation order differs: a few f32 ulps per sum
/// of 128..256 products, carried through 4 layers. Measured at most 3.5e-6 (int8, one row,
/// where the direct kernel's `x . q - 128 sum(x)` form cancels the most), else 5e-7. Kept tight:
/// greedy decisions of this random model win by as little as 2e-4 (see [`DECODE_STEPS`]).
const LOGITS_TOL: f32 = 2e-5;
/// LoRA gradients, relative to the largest entry of each tensor: the backward pass repeats the
/// forward's reorderings through the transposed products. Measured at most 4e-6 (int8).
const GRAD_TOL: f32 = 1e-4;
/// Adapter weights after one AdamW step, per entry, as a fraction of the learning rate, beyond
/// what the gradients' own difference explains. AdamW's first step moves each weight by
/// `lr * g / (|g| + eps)` (g after clipping, which only shrinks it), a function whose slope is at
/// most `1 / eps`: an entry whose gradient is near 0 can move quite differently for a rounding-
/// sized difference in `g` (measured up to 4 % of lr). So each entry may differ by
/// `lr * |g_fast - g_generic| / eps` plus this. Measured: every entry within that.
const STEP_TOL_LR: f64 = 1e-3;
/// Entries of the adapters allowed to differ by more than `STEP_TOL_LR * lr` at all (those with a
/// gradient near 0). Measured: at most 22 of 180 352 (0.012 %).
const STEP_LOOSE_FRACTION: f64 = 1e-3;
/// Tokens decoded greedily per prompt. They must be identical and each step's log-probability
/// within [`LOGITS_TOL`]; every decision must also win by more than `2 * LOGITS_TOL` (measured:
/// the smallest winning margin, printed), so equal tokens follow from the logits' agreement
/// rather than from luck.
const DECODE_STEPS: usize = 16;

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap())
}

/// The tiny preset with LoRA on every target (random B, so adapters change the output and A has
/// a gradient), identical for equal arguments (the optimiser test builds it twice).
fn model(precision: Precision) -> Mixtral {
    let cfg = MixtralConfig::preset(Preset::Tiny, VOCAB);
    let lora = LoraConfig { r: 8, alpha: 16.0, dropout: 0.0, ..LoraConfig::default() };
    let opts = ModelOptions { precision, lora: Some(lora), seed: 5, ..Default::default() };
    let m = Mixtral::new_random(&cfg, &opts, &Device::Cpu).unwrap();
    m.randomize_lora_b(0.05, 9).unwrap();
    m
}

/// Two rows, the first left-padded: padded positions, several rows per expert, and (in the MoE)
/// experts given at most 16 rows, where the direct int8 kernel applies on the fast path.
fn batch() -> (Tensor, Tensor) {
    let ids: Vec<u32> = (0..24u32).map(|i| (i * 37 + 11) % VOCAB as u32).collect();
    let mask: Vec<u32> = (0..24).map(|i| u32::from(i >= 3)).collect();
    (
        Tensor::from_vec(ids, (2, 12), &Device::Cpu).unwrap(),
        Tensor::from_vec(mask, (2, 12), &Device::Cpu).unwrap(),
    )
}

/// Runs `f` and returns its result with the number of CPU kernels it chose on this thread.
fn counted<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = cpu_kernels_taken();
    let out = f();
    (out, cpu_kernels_taken() - before)
}

/// `f` on the fast path and on the generic one, checking that the generic run took no CPU
/// kernel and the fast one did.
fn both<T>(what: &str, f: impl Fn(ForwardPath) -> T) -> (T, T) {
    let (fast, n_fast) = counted(|| f(ForwardPath::Fused));
    let (generic, n_generic) = counted(|| f(ForwardPath::Generic));
    assert_eq!(n_generic, 0, "{what}: the device-generic run chose {n_generic} CPU kernels");
    assert!(n_fast > 0, "{what}: the fast run chose no CPU kernel, so nothing was compared");
    (fast, generic)
}

#[test]
fn logits_match_with_adapters_and_merged() {
    let (ids, mask) = batch();
    let one_row = ids.narrow(0, 1, 1).unwrap().narrow(1, 0, 8).unwrap();
    for precision in PRECISIONS {
        let mut m = model(precision);
        // With unmerged adapters (training, PPO scoring): the graph tracks the LoRA variables.
        let (fast, generic) =
            both(&format!("{precision:?}"), |p| m.forward_on(&ids, Some(&mask), p).unwrap().logits);
        let d = max_diff(&fast, &generic);
        eprintln!("{precision:?} logits with adapters: max |fast - generic| = {d:e}");
        assert!(d < LOGITS_TOL, "{precision:?}: logits differ by {d}");
        assert!(max_abs(&fast) > 1e-2, "non-trivial logits");
        // Merged (serving): nothing tracks a gradient, so the fast path takes its fused
        // shortcuts; one row of 8 tokens puts the attention projections on the int8 kernel.
        m.merge_adapters(precision).unwrap();
        for (name, x, mk) in [("batch", &ids, Some(&mask)), ("one row", &one_row, None)] {
            let (fast, generic) =
                both(&format!("{precision:?} merged {name}"), |p| m.forward_on(x, mk, p).unwrap().logits);
            let d = max_diff(&fast, &generic);
            eprintln!("{precision:?} merged logits, {name}: max |fast - generic| = {d:e}");
            assert!(d < LOGITS_TOL, "{precision:?} merged, {name}: logits differ by {d}");
        }
    }
}

/// The gradients of the causal LM loss over `batch()`.
fn loss_grads(m: &Mixtral, path: ForwardPath) -> GradStore {
    let (ids, mask) = batch();
    let loss = &mut |o: &ModelOutput| causal_lm_loss(&o.logits, &ids, Some(&mask));
    m.forward_backward_on(&ids, Some(&mask), path, loss).unwrap().1
}

/// Every LoRA tensor's gradient of that loss, by name.
fn lora_grads(m: &Mixtral, path: ForwardPath) -> Vec<(String, Tensor)> {
    let grads = loss_grads(m, path);
    m.lora_vars()
        .into_iter()
        .map(|(name, v)| {
            let g = grads.get(&v).unwrap_or_else(|| panic!("{name} has no gradient ({path:?})")).clone();
            (name, g)
        })
        .collect()
}

#[test]
fn lora_gradients_match() {
    for precision in PRECISIONS {
        let mut m = model(precision);
        // QLoRA trains with gradient checkpointing; check both ways through the layers for NF4.
        let checkpointing: &[bool] = if precision == Precision::Nf4 { &[false, true] } else { &[false] };
        for &ckpt in checkpointing {
            m.set_grad_checkpoint(ckpt);
            let what = format!("{precision:?}, checkpointing {ckpt}");
            let (fast, generic) = both(&what, |p| lora_grads(&m, p));
            assert_eq!(fast.len(), m.lora_vars().len());
            assert_eq!(fast.len(), 4 * (4 + 1 + 3 * 4) * 2, "A and B of every target module");
            let mut worst = 0f32;
            for ((name, ga), (_, gb)) in fast.iter().zip(&generic) {
                let scale = max_abs(ga);
                assert!(scale > 0.0, "{what}: {name} has a zero gradient");
                let d = max_diff(ga, gb) / scale;
                worst = worst.max(d);
                assert!(d < GRAD_TOL, "{what}: {name}: relative gradient difference {d}");
            }
            eprintln!("{what}: LoRA gradients, max relative |fast - generic| = {worst:e}");
        }
    }
}

#[test]
fn one_optimiser_step_gives_the_same_adapters() {
    let cfg = AdamWConfig::default();
    let (lr, eps) = (cfg.schedule.lr, cfg.eps);
    for precision in PRECISIONS {
        // Two identical models: the step updates the variables in place.
        let (m_fast, m_generic) = (model(precision), model(precision));
        let before: Vec<Tensor> =
            m_fast.lora_vars().iter().map(|(_, v)| v.as_tensor().copy().unwrap()).collect();
        let step = |m: &Mixtral, path: ForwardPath| {
            let grads = loss_grads(m, path);
            let stats = AdamW::new(m.lora_vars(), cfg.clone()).unwrap().step(&grads).unwrap();
            (stats, grads)
        };
        let ((s_fast, g_fast), n_fast) = counted(|| step(&m_fast, ForwardPath::Fused));
        let ((s_generic, g_generic), n_generic) = counted(|| step(&m_generic, ForwardPath::Generic));
        assert!(n_fast > 0 && n_generic == 0, "{precision:?}: kernels chosen {n_fast} / {n_generic}");
        let rel_norm = (s_fast.grad_norm - s_generic.grad_norm).abs() / s_fast.grad_norm;
        assert!(rel_norm < GRAD_TOL as f64, "{precision:?}: gradient norms {s_fast:?} / {s_generic:?}");
        let (mut worst, mut worst_unexplained, mut loose, mut total) = (0f64, 0f64, 0usize, 0usize);
        let vars = m_fast.lora_vars().into_iter().zip(m_generic.lora_vars()).zip(&before);
        for (((name, a), (_, b)), w0) in vars {
            let moved = max_diff(a.as_tensor(), w0) as f64;
            assert!(moved > 0.5 * lr, "{precision:?}: {name} moved by {moved} only (lr {lr})");
            let dw = (a.as_tensor() - b.as_tensor()).unwrap().abs().unwrap();
            let dg = (g_fast.get(&a).unwrap() - g_generic.get(&b).unwrap()).unwrap().abs().unwrap();
            let explained = ((dg / eps).unwrap() + STEP_TOL_LR).unwrap() * lr;
            let unexplained = max_abs(&(&dw - explained.unwrap()).unwrap().relu().unwrap()) as f64 / lr;
            assert!(
                unexplained == 0.0,
                "{precision:?}: {name} differs by {unexplained} lr beyond its gradient"
            );
            worst = worst.max(max_abs(&dw) as f64 / lr);
            worst_unexplained = worst_unexplained.max(unexplained);
            let over = dw.ge(STEP_TOL_LR * lr).unwrap().to_dtype(DType::F32).unwrap().sum_all().unwrap();
            loose += over.to_scalar::<f32>().unwrap() as usize;
            total += dw.elem_count();
        }
        let fraction = loose as f64 / total as f64;
        eprintln!(
            "{precision:?}: adapters after one AdamW step: max |fast - generic| = {worst:e} lr, \
             {loose} of {total} entries beyond {STEP_TOL_LR} lr"
        );
        assert!(fraction < STEP_LOOSE_FRACTION, "{precision:?}: {loose} of {total} entries differ");
    }
}

/// Greedy tokens from `DecodeWeights` (the plain-slice forward with its AVX kernels), one row.
fn plain_greedy(w: &DecodeWeights, m: &Mixtral, prompt: &[u32], n: usize) -> Vec<u32> {
    let argmax = |l: &[f32]| (0..l.len()).fold(0, |b, i| if l[i] > l[b] { i } else { b }) as u32;
    let mut cache = KvCache::new(m.cfg.num_hidden_layers, 1);
    let mut tok = argmax(&w.step(prompt, &mut cache, &[prompt.len() - 1]).unwrap()[0]);
    let mut out = vec![tok];
    while out.len() < n {
        tok = argmax(&w.step(&[tok], &mut cache, &[0]).unwrap()[0]);
        out.push(tok);
    }
    out
}

/// The smallest gap between the chosen token's logit and the best other one over the greedy
/// decisions after `prompt` that produced `tokens` (logits of the generic path).
fn min_margin(m: &Mixtral, prompt: &[u32], tokens: &[u32]) -> f32 {
    let seq: Vec<u32> = prompt.iter().chain(tokens).copied().collect();
    let ids = Tensor::from_vec(seq.clone(), (1, seq.len()), &Device::Cpu).unwrap();
    let logits = m.forward_on(&ids, None, ForwardPath::Generic).unwrap().logits.squeeze(0).unwrap();
    let rows = logits.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
    let mut margin = f32::INFINITY;
    for (i, &tok) in tokens.iter().enumerate() {
        let row = &rows[prompt.len() - 1 + i];
        let other = (0..row.len()).filter(|&j| j != tok as usize).map(|j| row[j]).fold(f32::MIN, f32::max);
        margin = margin.min(row[tok as usize] - other);
    }
    margin
}

#[test]
fn greedy_decoding_gives_the_same_tokens() {
    let prompts: Vec<Vec<u32>> = vec![(1..10).collect(), vec![200, 17, 45, 3, 99]];
    let gen_cfg = GenerationConfig { max_new_tokens: DECODE_STEPS, ..Default::default() };
    for precision in PRECISIONS {
        let mut m = model(precision);
        for merged in [false, true] {
            if merged {
                m.merge_adapters(precision).unwrap();
            }
            let what = format!("{precision:?}, merged {merged}");
            // The batch (left padding), then each prompt alone.
            let mut runs = vec![prompts.clone()];
            runs.extend(prompts.iter().map(|p| vec![p.clone()]));
            let (mut margin, mut worst_logprob) = (f32::INFINITY, 0f32);
            for run in &runs {
                let (fast, generic) = both(&what, |p| m.generate_on(run, &gen_cfg, None, p).unwrap());
                for ((a, b), prompt) in fast.iter().zip(&generic).zip(run) {
                    assert_eq!(a.tokens.len(), DECODE_STEPS);
                    assert_eq!(a.tokens, b.tokens, "{what}: greedy tokens differ");
                    let d =
                        a.logprobs.iter().zip(&b.logprobs).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                    assert!(d < LOGITS_TOL, "{what}: log-probabilities differ by {d}");
                    worst_logprob = worst_logprob.max(d);
                    // Not a constant sequence: the comparison covers several distinct decisions.
                    assert!(a.tokens.iter().any(|&t| t != a.tokens[0]), "{what}: {:?}", a.tokens);
                    margin = margin.min(min_margin(&m, prompt, &b.tokens));
                }
            }
            eprintln!(
                "{what}: greedy tokens agree, log-probabilities within {worst_logprob:e}, smallest \
                 winning margin {margin:e}"
            );
            assert!(margin > 2.0 * LOGITS_TOL, "{what}: a decision wins by {margin} only");
            // The serving fast path for one row: the plain-slice forward (f32 and int8 weights).
            let plain = merged.then(|| DecodeWeights::new(&m)).flatten();
            if merged && matches!(precision, Precision::F32 | Precision::Int8) {
                assert!(plain.is_some(), "{what}: the plain-slice forward applies");
            }
            if let Some(w) = plain {
                for p in &prompts {
                    let generic =
                        m.generate_on(std::slice::from_ref(p), &gen_cfg, None, ForwardPath::Generic).unwrap();
                    let tokens = plain_greedy(&w, &m, p, DECODE_STEPS);
                    assert_eq!(tokens, generic[0].tokens, "{what}: plain-slice forward");
                }
            }
        }
    }
}
