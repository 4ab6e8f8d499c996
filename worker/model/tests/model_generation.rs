// Generation: KV-cache logits equal full-forward logits, batched left-padded generation gives
// the same tokens and log-probs as one sequence at a time, stop conditions work.

use candle_core::{DType, Device, Tensor};
use sapllm_model::ForwardPath;
use sapllm_model::config::MixtralConfig;
use sapllm_model::linear::LoraConfig;
use sapllm_model::loss::token_logprobs;
use sapllm_model::mixtral::generation::{FinishReason, GenerationConfig};
use sapllm_model::mixtral::kv_cache::KvCache;
use sapllm_model::mixtral::{Mixtral, ModelOptions};

const VOCAB: usize = 64;

fn model(window: Option<usize>) -> Mixtral {
    let cfg = MixtralConfig { sliding_window: window, ..MixtralConfig::micro(VOCAB) };
    let opts = ModelOptions {
        lora: Some(LoraConfig { r: 4, alpha: 8.0, dropout: 0.0, ..Default::default() }),
        ..Default::default()
    };
    let m = Mixtral::new_random(&cfg, &opts, &Device::Cpu).unwrap();
    m.randomize_lora_b(0.05, 3).unwrap();
    m
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn kv_cache_logits_equal_full_forward_logits() {
    for window in [None, Some(4)] {
        let m = model(window);
        let seq: Vec<u32> = (0..14u32).map(|i| (i * 13 + 5) % VOCAB as u32).collect();
        let full = m
            .forward(&Tensor::new(seq.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap(), None)
            .unwrap()
            .logits;
        // Prefill 6 tokens, then 3, then one at a time.
        let mut cache = KvCache::new(m.cfg.num_hidden_layers, 1);
        let mut pos = 0;
        for chunk in [6usize, 3, 1, 1, 1, 1, 1] {
            let ids = Tensor::new(&seq[pos..pos + chunk], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let got = m.forward_cached(&ids, &[vec![1u8; chunk]], &mut cache, ForwardPath::Fused).unwrap();
            let want = full.narrow(1, pos, chunk).unwrap();
            let d = max_diff(&got, &want);
            assert!(d < 1e-4, "window {window:?}: positions {pos}..{}: max diff {d}", pos + chunk);
            pos += chunk;
        }
        assert_eq!(cache.len(), seq.len());
    }
}

#[test]
fn padded_full_forward_matches_unpadded() {
    // Right padding with a mask (training) leaves the real positions' logits unchanged.
    let m = model(None);
    let seq: Vec<u32> = (0..8u32).map(|i| (i * 5 + 1) % VOCAB as u32).collect();
    let alone = m
        .forward(&Tensor::new(seq.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap(), None)
        .unwrap()
        .logits;
    let mut padded = seq.clone();
    padded.extend([0, 0, 0]);
    let ids = Tensor::new(padded.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]], &Device::Cpu).unwrap();
    let got = m.forward(&ids, Some(&mask)).unwrap().logits.narrow(1, 0, 8).unwrap();
    assert!(max_diff(&got, &alone) < 1e-5);
}

#[test]
fn batched_generation_matches_single_and_full_forward_logprobs() {
    let m = model(None);
    let prompts: Vec<Vec<u32>> = vec![vec![5, 9, 17, 33, 2, 8, 40], vec![11, 3], vec![7, 7, 21, 60]];
    let cfg = GenerationConfig { max_new_tokens: 6, ..Default::default() };
    let batch = m.generate(&prompts, &cfg, None).unwrap();
    for (p, g) in prompts.iter().zip(&batch) {
        let single = &m.generate(std::slice::from_ref(p), &cfg, None).unwrap()[0];
        assert_eq!(g.tokens, single.tokens, "batched vs single tokens");
        assert_eq!(g.tokens.len(), 6);
        assert_eq!(g.finish, FinishReason::MaxTokens);
        // Log-probs equal those a full forward over prompt + generation assigns (PPO relies on it).
        let mut all = p.clone();
        all.extend(&g.tokens);
        let ids = Tensor::new(all.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits = m.forward(&ids, None).unwrap().logits;
        let n = all.len();
        let lp =
            token_logprobs(&logits.narrow(1, 0, n - 1).unwrap(), &ids.narrow(1, 1, n - 1).unwrap()).unwrap();
        let lp = lp.squeeze(0).unwrap().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
        for (k, (&a, &b)) in g.logprobs.iter().zip(&lp[p.len() - 1..]).enumerate() {
            assert!((a - b).abs() < 1e-4, "token {k}: generation logprob {a}, full forward {b}");
        }
        // Greedy picks the argmax, so every log-prob is the row maximum: at least log(1/V).
        assert!(g.logprobs.iter().all(|&l| l >= -(VOCAB as f32).ln() - 1e-4));
    }
}

#[test]
fn stop_tokens_stop_sequences_and_sampling() {
    let m = model(None);
    let prompt = vec![vec![5u32, 9, 17]];
    let greedy =
        m.generate(&prompt, &GenerationConfig { max_new_tokens: 5, ..Default::default() }, None).unwrap();
    let first = greedy[0].tokens[0];
    // Stop token: the first generated token stops generation and is kept.
    let cfg = GenerationConfig { max_new_tokens: 5, stop_token_ids: vec![first], ..Default::default() };
    let g = &m.generate(&prompt, &cfg, None).unwrap()[0];
    assert_eq!(g.tokens, vec![first]);
    assert_eq!(g.finish, FinishReason::StopToken);
    // Stop sequence, with a decoder that spells token t as "<t>".
    let decode =
        |ids: &[u32]| -> anyhow::Result<String> { Ok(ids.iter().map(|t| format!("<{t}>")).collect()) };
    let stop = format!("<{}>", greedy[0].tokens[1]);
    let cfg = GenerationConfig { max_new_tokens: 5, stop_sequences: vec![stop], ..Default::default() };
    let g = &m.generate(&prompt, &cfg, Some(&decode)).unwrap()[0];
    assert_eq!(g.finish, FinishReason::StopSequence);
    assert_eq!(g.text, format!("<{first}>"));
    // Sampling is reproducible by seed; top_p tiny degenerates to greedy.
    let s = GenerationConfig { max_new_tokens: 8, temperature: 1.0, seed: 4, ..Default::default() };
    let a = m.generate(&prompt, &s, None).unwrap();
    let b = m.generate(&prompt, &s, None).unwrap();
    assert_eq!(a[0].tokens, b[0].tokens);
    let nucleus = GenerationConfig { max_new_tokens: 5, temperature: 0.7, top_p: 1e-6, ..Default::default() };
    assert_eq!(m.generate(&prompt, &nucleus, None).unwrap()[0].tokens, greedy[0].tokens);
    // Bad input is an error, not a panic.
    assert!(m.generate(&[vec![VOCAB as u32]], &GenerationConfig::default(), None).is_err());
    assert!(m.generate(&[vec![]], &GenerationConfig::default(), None).is_err());
}
