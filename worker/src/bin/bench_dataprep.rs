//! Benchmark of the data-prep stage: synthetic logs -> all output files with similar cases.
//!
//! `cargo run --release --bin bench_dataprep [SIZES] [--out DIR] [--threads N]`
//! SIZES is a comma-separated list of record counts (default 200000). Prints one table row per
//! size: wall time, throughput, output volume, peak memory (VmHWM, Linux).

use std::path::PathBuf;
use std::time::Instant;

use sapllm_worker::dataprep::{self, DataPrepConfig};
use sapllm_worker::progress::ProgressMode;

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn dir_mib(dir: &std::path::Path) -> f64 {
    std::fs::read_dir(dir)
        .map(|it| it.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum::<u64>())
        .unwrap_or(0) as f64
        / (1024.0 * 1024.0)
}

fn main() -> anyhow::Result<()> {
    sapllm_model::threads::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut sizes = vec![200_000usize];
    let mut out: Option<PathBuf> = None;
    let mut k = 3usize;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--out" => {
                out = args.get(i + 1).map(PathBuf::from);
                i += 1;
            }
            "--k" => {
                k = args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(3);
                i += 1;
            }
            "--threads" => {
                let n: usize = args.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or(0);
                rayon::ThreadPoolBuilder::new().num_threads(n).build_global()?;
                i += 1;
            }
            s => {
                sizes = s
                    .split(',')
                    .map(|x| x.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| anyhow::anyhow!("sizes must be numbers like 10000,200000, got {s:?}"))?
            }
        }
        i += 1;
    }
    let tmp = tempfile_dir()?;
    let base = out.unwrap_or_else(|| tmp.clone());
    println!(
        "data-prep benchmark: {} threads, k={k} similar cases, default mix and rates",
        rayon::current_num_threads()
    );
    println!(
        "| records | wall s | pass 1 s | index s | pass 2 s | records/s | train | val | test | exceptions | pairs | output MiB | peak RSS MiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for n in sizes {
        let dir = base.join(format!("bench_{n}"));
        let cfg = DataPrepConfig {
            examples: n,
            k_similar: k,
            output_dir: dir.clone(),
            progress: ProgressMode::Quiet,
            ..DataPrepConfig::default()
        };
        let t = Instant::now();
        let card = dataprep::run(&cfg)?;
        let wall = t.elapsed().as_secs_f64();
        let g = |s: &str| card.splits.get(s).copied().unwrap_or(0);
        let stage = |s: &str| card.stage_s.get(s).copied().unwrap_or(f64::NAN);
        println!(
            "| {n} | {wall:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {} | {} | {} | {} | {} | {:.0} | {} |",
            stage("pass1"),
            stage("split_and_index"),
            stage("pass2"),
            n as f64 / wall,
            g("train"),
            g("val"),
            g("test"),
            card.exception_examples,
            card.preference_pairs,
            dir_mib(&dir),
            peak_rss_mib().map_or("n/a".into(), |m| format!("{m:.0}"))
        );
        assert_eq!(card.retrieval.leak_violations, 0, "similar cases leaked from val/test");
    }
    if base == tmp {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}

fn tempfile_dir() -> std::io::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("sapllm_bench_dataprep_{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
