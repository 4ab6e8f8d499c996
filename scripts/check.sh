#!/usr/bin/env bash
# The test command: formatting, lints (warnings are errors), the whole test suite, and the Helm
# chart rendered and validated against the Kubernetes 1.33 schemas.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
if [ -x scripts/chart-check.sh ]; then
  echo "== helm chart"
  scripts/chart-check.sh
fi
echo "== all checks passed"
