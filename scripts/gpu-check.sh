#!/usr/bin/env bash
# The one script to run on a machine with an NVIDIA GPU (H100/A100, CUDA 12/13 driver): builds the
# worker with `--features cuda` for this GPU, runs the CPU-vs-CUDA parity tests
# (worker/model/tests/model_cuda.rs: tiny-preset and Mixtral-8x7B-shaped logits, LoRA gradients,
# the NF4 dequantization kernel bit for bit),
# the tiny pipeline with `--device cuda`, and, where PyTorch is installed, bench/compare_torch.py.
# Exits non-zero on any parity failure. Needs cargo, the crates (a registry cache or network) and
# nvcc (CUDA toolkit, or PyPI's CUDA 13 wheels as .ci/run installs them: set CUDA_HOME).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-check-out}"
mkdir -p "$OUT"
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }

command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: run this on a machine with an NVIDIA GPU" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv | tee "$OUT/gpu.csv"
cap="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')"
# 90 builds sm_90a (H100/H200 only); anything from 80 up runs sm_80 code.
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-$cap}"
if [ -n "${CUDA_HOME:-}" ]; then export PATH="$CUDA_HOME/bin:$PATH"; fi
command -v nvcc >/dev/null || { echo "nvcc not found: install the CUDA toolkit or set CUDA_HOME" >&2; exit 2; }
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"

log "build (--features cuda, compute capability $CUDA_COMPUTE_CAP)"
start=$(date +%s)
cargo build --release --locked -p sapllm-worker --features cuda 2>&1 | tail -3
log "build took $(( $(date +%s) - start )) s"

log "parity: CPU vs CUDA (logits, LoRA gradients, NF4 kernel)"
cargo test --release --locked -p sapllm-model --features cuda --test model_cuda -- --nocapture --test-threads 1 \
  2>&1 | tee "$OUT/parity.txt"

log "tiny pipeline on the GPU"
rm -rf "$OUT/run"
set +e
timeout 420 target/release/sapllm-worker --device cuda --progress json run -f examples/trainingrun-tiny.yaml \
  --run-dir "$OUT/run" > "$OUT/pipeline.jsonl" 2> "$OUT/pipeline.err"
rc=$?
set -e
log "tiny pipeline exit code $rc (0 gates passed, 1 a gate failed, 2 error, 124 timeout)"
tail -5 "$OUT/pipeline.err" | tee -a "$OUT/summary.txt"
[ -f "$OUT/run/evaluation/EVALUATION_REPORT.md" ] && sed -n '/## Gates/,/## Metrics/p' "$OUT/run/evaluation/EVALUATION_REPORT.md" | tee -a "$OUT/summary.txt"

if python3 -c 'import torch, peft, bitsandbytes' 2>/dev/null; then
  log "PyTorch + PEFT + bitsandbytes QLoRA step, side by side"
  python3 bench/compare_torch.py 2>&1 | tee "$OUT/torch.txt" || true
else
  log "PyTorch + PEFT + bitsandbytes not installed: no side-by-side row"
fi
log "done"
