//! Model benchmarks on this machine (CPU): prints tables, asserts nothing.
//!
//! - forward+backward tokens/s for `tiny` and `small` at a few sequence lengths, full-parameter
//!   (pretrain) and QLoRA (NF4 base + LoRA r=16 on every target);
//! - generation tokens/s (KV cache, greedy) at batch 1 and 4;
//! - peak RSS of a training step with and without gradient checkpointing (VmHWM, reset
//!   between measurements through /proc/self/clear_refs);
//! - load time of a multi-shard checkpoint (f32 and quantizing to NF4 while loading);
//! - NF4 bits per parameter of the quantized linears;
//! - `--decode-steps` (only these tables): milliseconds of one cached forward of k new tokens
//!   over a cache of n positions (tiny, int8, batch 1), the cost model behind drafting and
//!   forced-token runs (drafting pays only where k tokens cost about what one does), and of a
//!   prompt prefill; each through candle and through the plain-slice forward, side by side.
//!
//! `--threads 1,2` re-runs the whole bench in child processes with CANDLE_NUM_THREADS and
//! RAYON_NUM_THREADS set to each value. `--quick` uses fewer/shorter runs.
//! Run with `cargo run --release -p sapllm-worker --bin bench_model -- --threads 1,2`.

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use sapllm_model::ForwardPath;
use sapllm_model::config::{MixtralConfig, Preset};
use sapllm_model::hf_io::{SaveOptions, load_model, save_model};
use sapllm_model::linear::{LoraConfig, Precision};
use sapllm_model::loss::causal_lm_loss;
use sapllm_model::mixtral::generation::GenerationConfig;
use sapllm_model::mixtral::{Mixtral, ModelOptions};

const VOCAB: usize = 2048;

fn proc_status(key: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Resets the peak-RSS counter (Linux >= 4.0); returns false when not possible.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn ids(b: usize, t: usize) -> Result<Tensor> {
    let v: Vec<u32> = (0..b * t).map(|i| ((i as u64 * 2654435761) % VOCAB as u64) as u32).collect();
    Ok(Tensor::from_vec(v, (b, t), &Device::Cpu)?)
}

fn build(preset: Preset, qlora: bool, ckpt: bool) -> Result<Mixtral> {
    let cfg = MixtralConfig::preset(preset, VOCAB);
    let opts = if qlora {
        ModelOptions {
            precision: Precision::Nf4,
            lora: Some(LoraConfig { dropout: 0.0, ..LoraConfig::default() }),
            grad_checkpoint: ckpt,
            ..Default::default()
        }
    } else {
        ModelOptions { train_base: true, grad_checkpoint: ckpt, ..Default::default() }
    };
    Mixtral::new_random(&cfg, &opts, &Device::Cpu)
}

/// Median seconds of `reps` training steps (forward + backward) after one warm-up.
fn time_step(m: &Mixtral, b: usize, t: usize, reps: usize) -> Result<f64> {
    let input = ids(b, t)?;
    let step = || -> Result<f64> {
        let start = Instant::now();
        let (_, grads) =
            m.forward_backward(&input, None, &mut |o| causal_lm_loss(&o.logits, &input, None))?;
        drop(grads);
        Ok(start.elapsed().as_secs_f64())
    };
    step()?;
    let mut times: Vec<f64> = (0..reps).map(|_| step()).collect::<Result<_>>()?;
    times.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    Ok(times[times.len() / 2])
}

fn main() -> Result<()> {
    sapllm_model::threads::init();
    if let Ok(case) = std::env::var("BENCH_MODEL_RSS_CASE") {
        return rss_case(&case);
    }
    if let Ok(case) = std::env::var("BENCH_MODEL_LOAD_CASE") {
        return load_case(&case);
    }
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    if let Some(pos) = args.iter().position(|a| a == "--threads")
        && std::env::var("BENCH_MODEL_CHILD").is_err()
    {
        let list = args.get(pos + 1).context("--threads needs a list, e.g. 1,2")?;
        let exe = std::env::current_exe()?;
        for n in list.split(',') {
            println!("\n######## {n} thread(s) ########");
            let rest: Vec<&String> = args[1..].iter().filter(|a| *a != "--threads" && *a != list).collect();
            let status = std::process::Command::new(&exe)
                .args(rest)
                .env("BENCH_MODEL_CHILD", "1")
                .env("CANDLE_NUM_THREADS", n)
                .env("RAYON_NUM_THREADS", n)
                .status()?;
            anyhow::ensure!(status.success(), "bench child with {n} threads failed");
        }
        return Ok(());
    }
    if args.iter().any(|a| a == "--decode-steps") {
        return decode_steps();
    }
    let reps = if quick { 1 } else { 3 };
    // `--json PATH`: also write the measurements (bench/compare_torch.py reads them).
    let json_path = args.iter().position(|a| a == "--json").and_then(|p| args.get(p + 1)).cloned();
    let mut records: Vec<serde_json::Value> = Vec::new();
    println!(
        "threads: CANDLE_NUM_THREADS={:?} RAYON_NUM_THREADS={:?}; candle sees {}",
        std::env::var("CANDLE_NUM_THREADS").ok(),
        std::env::var("RAYON_NUM_THREADS").ok(),
        candle_core::utils::get_num_threads()
    );

    println!("\n## forward+backward (f32 compute, CPU), median of {reps}");
    println!("| preset | mode | params | batch x seq | s/step | tokens/s |");
    println!("|---|---|---|---|---|---|");
    let cases: Vec<(Preset, usize, usize)> = if quick {
        vec![(Preset::Tiny, 4, 128), (Preset::Small, 1, 128)]
    } else {
        vec![
            (Preset::Tiny, 4, 64),
            (Preset::Tiny, 4, 256),
            (Preset::Tiny, 2, 1024),
            (Preset::Small, 1, 128),
            (Preset::Small, 1, 512),
        ]
    };
    for qlora in [false, true] {
        let mut last: Option<(Preset, Mixtral)> = None;
        for &(preset, b, t) in &cases {
            let m = match last.take() {
                Some((p, m)) if p == preset => m,
                _ => build(preset, qlora, false)?,
            };
            let s = time_step(&m, b, t, reps)?;
            let mode = if qlora { "QLoRA nf4 r16" } else { "full f32" };
            let params = MixtralConfig::preset(preset, VOCAB).num_parameters() as f64 / 1e6;
            println!(
                "| {preset:?} | {mode} | {params:.1}M | {b} x {t} | {s:.3} | {:.0} |",
                (b * t) as f64 / s
            );
            records.push(serde_json::json!({
                "kind": "train", "preset": format!("{preset:?}").to_lowercase(), "qlora": qlora,
                "batch": b, "seq": t, "seconds": s, "tokens_per_s": (b * t) as f64 / s,
                "threads": candle_core::utils::get_num_threads(),
            }));
            last = Some((preset, m));
        }
    }

    println!("\n## generation (KV cache, greedy, 64 new tokens after a 32-token prompt)");
    println!("| preset | precision | batch | new tokens/s |");
    println!("|---|---|---|---|");
    for preset in [Preset::Tiny, Preset::Small] {
        for prec in [Precision::F32, Precision::Nf4] {
            let m = Mixtral::new_random(
                &MixtralConfig::preset(preset, VOCAB),
                &ModelOptions { precision: prec, ..Default::default() },
                &Device::Cpu,
            )?;
            for b in [1usize, 4] {
                let prompts: Vec<Vec<u32>> = (0..b)
                    .map(|i| (0..32u32).map(|j| (j * 31 + i as u32 * 7) % VOCAB as u32).collect())
                    .collect();
                let cfg = GenerationConfig { max_new_tokens: 64, ..Default::default() };
                let start = Instant::now();
                let out = m.generate(&prompts, &cfg, None)?;
                let s = start.elapsed().as_secs_f64();
                let n: usize = out.iter().map(|g| g.tokens.len()).sum();
                println!("| {preset:?} | {prec:?} | {b} | {:.1} |", n as f64 / s);
                records.push(serde_json::json!({
                    "kind": "generate", "preset": format!("{preset:?}").to_lowercase(),
                    "precision": format!("{prec:?}").to_lowercase(), "batch": b, "tokens_per_s": n as f64 / s,
                    "threads": candle_core::utils::get_num_threads(),
                }));
            }
        }
    }

    println!("\n## peak RSS of one training step (small, batch 2 x 512), MiB, each in a fresh process");
    println!("| mode | grad checkpointing | peak RSS | RSS after build | step s |");
    println!("|---|---|---|---|---|");
    let exe = std::env::current_exe()?;
    for case in ["full:false", "full:true", "qlora:false", "qlora:true"] {
        let out = std::process::Command::new(&exe).env("BENCH_MODEL_RSS_CASE", case).output()?;
        anyhow::ensure!(
            out.status.success(),
            "RSS case {case} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }

    println!("\n## multi-shard checkpoint load (small, f32 on disk, 100 MB shards)");
    let dir = tempfile_dir()?;
    let m = Mixtral::new_random(
        &MixtralConfig::preset(Preset::Small, VOCAB),
        &ModelOptions::default(),
        &Device::Cpu,
    )?;
    save_model(&m, &dir, &SaveOptions { max_shard_bytes: 100 << 20, ..Default::default() })?;
    drop(m);
    let shards = std::fs::read_dir(&dir)?
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().starts_with("model-")))
        .count();
    let on_disk: u64 =
        std::fs::read_dir(&dir)?.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum();
    println!("checkpoint on disk: {:.0} MiB", on_disk as f64 / (1 << 20) as f64);
    println!("| load as | shards | seconds | linear bits/param | peak RSS MiB (fresh process) |");
    println!("|---|---|---|---|---|");
    for prec in ["f32", "bf16", "int8", "nf4"] {
        let out = std::process::Command::new(&exe)
            .env("BENCH_MODEL_LOAD_CASE", format!("{prec}:{}", dir.display()))
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "load case {prec} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!("| {prec} | {shards} | {}", String::from_utf8_lossy(&out.stdout).trim());
    }
    std::fs::remove_dir_all(&dir)?;
    if let Some(p) = json_path {
        std::fs::write(&p, serde_json::to_string_pretty(&records)?)
            .with_context(|| format!("writing {p}"))?;
    }
    Ok(())
}

/// One row of the RSS table, measured in this (fresh) process.
fn rss_case(case: &str) -> Result<()> {
    let (mode, ckpt) = case.split_once(':').context("case is mode:ckpt")?;
    let qlora = mode == "qlora";
    let ckpt = ckpt == "true";
    let m = build(Preset::Small, qlora, ckpt)?;
    let before = proc_status("VmRSS:").unwrap_or(f64::NAN);
    let ok = reset_peak_rss();
    let s = time_step(&m, 2, 512, 1)?;
    let peak = if ok { proc_status("VmHWM:").unwrap_or(f64::NAN) } else { f64::NAN };
    let label = if qlora { "QLoRA nf4" } else { "full f32" };
    println!("| {label} | {ckpt} | {peak:.0} | {before:.0} | {s:.2} |");
    Ok(())
}

/// Loads the checkpoint of `prec:dir` in this (fresh) process: time, bits/param, peak RSS.
fn load_case(case: &str) -> Result<()> {
    let (prec, dir) = case.split_once(':').context("case is precision:dir")?;
    let precision: Precision = prec.parse()?;
    let dtype = if precision == Precision::Bf16 { DType::BF16 } else { DType::F32 };
    let start = Instant::now();
    let m = load_model(
        std::path::Path::new(dir),
        &ModelOptions { precision, dtype, ..Default::default() },
        &Device::Cpu,
    )?;
    let s = start.elapsed().as_secs_f64();
    let (bytes, params) = m.linear_storage();
    let peak = proc_status("VmHWM:").unwrap_or(f64::NAN);
    println!("{s:.2} | {:.3} | {peak:.0} |", bytes as f64 * 8.0 / params as f64);
    Ok(())
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("bench_model_{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// One cached forward of `k` new tokens after `n` cached positions, in milliseconds (median of
/// 50, the cache cut back to `n` after each).
fn decode_steps() -> Result<()> {
    use sapllm_engine::forward::{Step, forward_select};
    use sapllm_model::mixtral::kv_cache::KvCache;
    use sapllm_model::plain::DecodeWeights;
    let m = Mixtral::new_random(
        &MixtralConfig::preset(Preset::Tiny, VOCAB),
        &ModelOptions { precision: Precision::Int8, ..Default::default() },
        &Device::Cpu,
    )?;
    let plain = DecodeWeights::new(&m).context("the plain-slice forward applies to tiny int8")?;
    // Median milliseconds of `f` over `runs`, each on a fresh copy of `base` (or a new cache).
    let median =
        |runs: usize, base: Option<&KvCache>, f: &dyn Fn(&mut KvCache) -> Result<()>| -> Result<f64> {
            let mut times = Vec::with_capacity(runs);
            for _ in 0..runs {
                let mut cache = match base {
                    Some(b) => b.fork()?,
                    None => KvCache::new(m.cfg.num_hidden_layers, 1),
                };
                let start = Instant::now();
                f(&mut cache)?;
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
            times.sort_by(f64::total_cmp);
            Ok(times[times.len() / 2])
        };
    let ids_vec =
        |k: usize| -> Vec<u32> { (0..k).map(|i| ((i as u64 * 2654435761) % VOCAB as u64) as u32).collect() };

    println!("\n## one cached forward of k new tokens (tiny, int8, batch 1): ms, median of 51");
    println!("candle = `Mixtral::forward_cached`; plain = the plain-slice forward (`sapllm_model::plain`)");
    println!("| cached positions | path | 1 token | 2 tokens | 4 tokens | 8 tokens | 8 tokens / 1 token |");
    println!("|---|---|---|---|---|---|---|");
    for n in [128usize, 512, 768] {
        let mut base = KvCache::new(m.cfg.num_hidden_layers, 1);
        m.forward_cached(&ids(1, n)?, &[vec![1u8; n]], &mut base, ForwardPath::Fused)?;
        for path in ["candle", "plain"] {
            let mut row = Vec::new();
            for k in [1usize, 2, 4, 8] {
                let toks = ids_vec(k);
                let input = ids(1, k)?;
                row.push(median(51, Some(&base), &|cache| {
                    if path == "candle" {
                        m.forward_cached(&input, &[vec![1u8; k]], cache, ForwardPath::Fused)?;
                    } else {
                        plain.step(&toks, cache, &[k - 1])?;
                    }
                    Ok(())
                })?);
            }
            println!(
                "| {n} | {path} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} |",
                row[0],
                row[1],
                row[2],
                row[3],
                row[3] / row[0]
            );
        }
    }

    println!(
        "\n## prompt prefill into an empty cache (tiny, int8, batch 1, logits of the last token): ms, median of 11"
    );
    println!("| prompt tokens | candle | plain | candle / plain |");
    println!("|---|---|---|---|");
    for t in [128usize, 256, 420, 768] {
        let toks = ids_vec(t);
        // As the decoder runs it through candle: the LM head on the last position only.
        let step = Step::left_padded(&[&toks], 0);
        let candle = median(11, None, &|cache| {
            forward_select(&m, &step, cache, &[(0, t - 1)], ForwardPath::Fused)?;
            Ok(())
        })?;
        let fast = median(11, None, &|cache| {
            plain.step(&toks, cache, &[t - 1])?;
            Ok(())
        })?;
        println!("| {t} | {candle:.1} | {fast:.1} | {:.2} |", candle / fast);
    }
    Ok(())
}
