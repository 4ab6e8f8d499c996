#!/usr/bin/env bash
# The test command: formatting, lints (warnings are errors), the whole test suite, and the Helm
# chart rendered and validated against the Kubernetes 1.33 schemas.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings
if command -v nvcc >/dev/null 2>&1; then
  # The CUDA build is checked and linted, not linked: libcuda is not here (.ci/run installs nvcc
  # from PyPI's CUDA wheels; candle-kernels compiles its PTX with it).
  echo "== cargo clippy --features cuda (warnings denied)"
  cargo clippy -p sapllm-model -p sapllm-engine -p sapllm-serve -p sapllm-worker --features cuda \
    --all-targets --locked -- -D warnings
else
  echo "== cargo clippy --features cuda: skipped, nvcc not found (.ci/run installs it)"
fi
echo "== cargo test"
cargo test --workspace --locked
# The workspace build turns serde_json's `preserve_order` on (through llguidance); the operator
# image builds without it. Settings digests must not differ between the two: test them alone too.
echo "== cargo test -p sapllm-crds (serde_json as the operator image builds it)"
cargo test -p sapllm-crds --lib --locked
if [ -x scripts/chart-check.sh ]; then
  echo "== helm chart"
  scripts/chart-check.sh
fi
echo "== all checks passed"
