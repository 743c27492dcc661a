#!/usr/bin/env bash
# Kiln's end-to-end benchmark: the four runs README.md reports.
# Usage: contrib/bench/run.sh [N]     (default N=20000)
set -euo pipefail
cd "$(dirname "$0")/../.."
N="${1:-20000}"
cargo build --release -p kiln -p kiln-bench >&2
for store in embedded redis; do
  for dkim in off on; do
    target/release/kiln-bench --n "$N" --dkim "$dkim" --store "$store" --kiln target/release/kiln
  done
done
