#!/usr/bin/env bash
# What the kernel alone costs a receiver of kiln-bench's load on this
# machine: Postfix's smtp-sink, which answers every command and keeps
# nothing, takes the same messages (2 KB, 20 sessions, a connection per
# message, no pipelining) from smtp-source; its CPU per message is a floor
# for the intake leg of any MTA here. Then the same over reused
# connections (`smtp-source -d`), a floor for a delivery leg that keeps its
# connection. Prints `floor leg=<intake|reused> user_us_per_msg=
# sys_us_per_msg= cpu_us_per_msg= mps=`, R rounds each.
# Usage: contrib/bench/floor.sh [N] [R]     (default N=20000, R=3)
set -euo pipefail
cd "$(dirname "$0")/../.."
N="${1:-20000}"
ROUNDS="${2:-3}"
source contrib/bench/postfix-tools.sh
find_postfix_tools
if [ -z "$sink_bin" ]; then
  exit 2
fi
port=$((20000 + RANDOM % 20000))
sink_user=()
if [ "$(id -u)" = 0 ]; then sink_user=(-u nobody); fi
"$sink_bin" "${sink_user[@]}" "127.0.0.1:$port" 256 &
sink=$!
trap 'kill $sink 2>/dev/null' EXIT
sleep 0.5
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14, $15}' "/proc/$sink/stat"; }
for round in $(seq "$ROUNDS"); do
  for leg in intake reused; do
    flags=()
    if [ "$leg" = reused ]; then flags=(-d); fi
    read -r u1 s1 < <(cpu)
    t1=$(date +%s.%N)
    "$source_bin" "${flags[@]}" -s 20 -l 2048 -m "$N" -f bench@shop.test -t rcpt@sink.test \
      -M bench.test "127.0.0.1:$port"
    t2=$(date +%s.%N)
    read -r u2 s2 < <(cpu)
    awk -v u=$((u2 - u1)) -v s=$((s2 - s1)) -v hz="$ticks" -v n="$N" -v t1="$t1" -v t2="$t2" \
      -v leg="$leg" 'BEGIN { printf "floor leg=%s user_us_per_msg=%.0f sys_us_per_msg=%.0f cpu_us_per_msg=%.0f mps=%.0f\n",
        leg, u * 1e6 / hz / n, s * 1e6 / hz / n, (u + s) * 1e6 / hz / n, n / (t2 - t1) }'
  done
done
