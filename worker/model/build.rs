//! With the `cuda` feature: compiles the crate's CUDA kernels (`src/quant/nf4.cu`) to PTX in
//! OUT_DIR with nvcc; the PTX is embedded with `include_str!` and loaded by candle's CUDA device
//! at run time. Without the feature it does nothing, so the crate builds where no CUDA toolkit is
//! installed. Written with `std::process::Command` rather than a helper crate to add no
//! build-dependency.
//!
//! Environment: `NVCC` (the compiler), else `CUDA_HOME` / `CUDA_PATH` / `CUDA_ROOT` + `bin/nvcc`,
//! else `nvcc` on PATH; `CUDA_COMPUTE_CAP` (`80`, `8.0`, `90`; default 80) picks the PTX target;
//! `NVCC_CCBIN` the host compiler, as for candle-kernels.

use std::path::PathBuf;
use std::process::Command;

const KERNELS: &[&str] = &["src/quant/nf4.cu"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    // PATH is not watched: it differs between shells and would recompile the crate for nothing.
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "CUDA_ROOT", "CUDA_COMPUTE_CAP", "NVCC_CCBIN"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = find_nvcc();
    let arch = compute_arch();
    for src in KERNELS {
        println!("cargo:rerun-if-changed={src}");
        let stem = std::path::Path::new(src).file_stem().and_then(|s| s.to_str()).expect("kernel file name");
        let ptx = out_dir.join(format!("{stem}.ptx"));
        let mut cmd = Command::new(&nvcc);
        cmd.arg("--ptx")
            .arg(format!("-arch={arch}"))
            .arg("-O3")
            // The NF4 kernel must match the CPU bit for bit: no multiply-add contraction, and no
            // fast-math (it would flush subnormals). The kernel also uses __fmul_rn/__fadd_rn.
            .arg("-fmad=false")
            .arg("-o")
            .arg(&ptx)
            .arg(src);
        if let Some(ccbin) = std::env::var_os("NVCC_CCBIN") {
            cmd.arg("-allow-unsupported-compiler").arg("-ccbin").arg(ccbin);
        }
        let output = match cmd.output() {
            Ok(o) => o,
            Err(e) => fail(format!(
                "the `cuda` feature compiles {src} with nvcc, but running `{}` failed: {e}. Install the \
                 CUDA toolkit (or PyPI's CUDA wheels, as .ci/run does) and set CUDA_HOME or NVCC, or \
                 build without `--features cuda`.",
                nvcc.display()
            )),
        };
        if !output.status.success() {
            fail(format!(
                "nvcc failed on {src} ({}):\n{}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
    }
}

/// The nvcc to run: `NVCC`, else under `CUDA_HOME`/`CUDA_PATH`/`CUDA_ROOT`, else from PATH.
fn find_nvcc() -> PathBuf {
    if let Some(p) = std::env::var_os("NVCC") {
        return PathBuf::from(p);
    }
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Some(home) = std::env::var_os(var) {
            let p = PathBuf::from(home).join("bin").join(if cfg!(windows) { "nvcc.exe" } else { "nvcc" });
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from("nvcc")
}

/// `compute_XX` from `CUDA_COMPUTE_CAP` (default 80, the oldest GPU the project targets: A100;
/// PTX for 80 is JIT-compiled for newer GPUs). An arch-specific suffix (`90a`) is kept.
fn compute_arch() -> String {
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_default();
    let cap: String = cap.trim().chars().filter(|c| *c != '.').collect();
    if cap.is_empty() {
        return "compute_80".to_string();
    }
    let digits = cap.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        fail(format!("CUDA_COMPUTE_CAP={cap:?} is not a compute capability like 80, 8.0 or 90a"));
    }
    format!("compute_{}", cap.to_ascii_lowercase())
}

/// Stops the build with `message` alone on stderr (cargo prints it), without a panic backtrace.
fn fail(message: String) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1)
}
