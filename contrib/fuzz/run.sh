#!/usr/bin/env bash
# Runs Kiln's fuzz targets one after another, each for SECONDS (600 by
# default), and prints one line per target: executions, coverage, corpus,
# and whether it found anything (artifacts in fuzz/artifacts/<target>/).
#
#   contrib/fuzz/run.sh [SECONDS] [TARGET...]
#
# Needs a nightly toolchain and cargo-fuzz (cargo install cargo-fuzz). New
# corpus entries land in fuzz/corpus/<target>/; minimise them before
# committing (cargo +nightly fuzz cmin -O <target>).
set -uo pipefail
cd "$(dirname "$0")/../../fuzz"
seconds="${1:-600}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
mkdir -p logs
for t in "${targets[@]}"; do
  log="logs/$t.log"
  cargo +nightly fuzz run -O "$t" -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  done_line=$(grep -E '^#[0-9]+.*DONE' "$log" | tail -1)
  execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')
  found=$(ls "artifacts/$t" 2>/dev/null | wc -l)
  echo "$t: rc=$rc executions=${execs:-?} ${done_line#*DONE } artifacts=$found"
done
