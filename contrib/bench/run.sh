#!/usr/bin/env bash
# Kiln's end-to-end benchmark: the runs README.md reports.
# Usage: contrib/bench/run.sh [N]     (default N=20000)
#
# Then the default policy against every plugin disabled, and the API.
# Every store/DKIM combination runs twice: once with the built-in load
# generator (pipelining client) and once with Postfix's smtp-source, the tool
# the reference figures in BENCHMARKS.md were taken with (no pipelining: one
# round trip per command). smtp-source is taken from PATH, or extracted from
# Debian's postfix package into target/postfix-tools without installing it.
set -euo pipefail
cd "$(dirname "$0")/../.."
N="${1:-20000}"
cargo build --release -p kiln -p kiln-bench >&2

source contrib/bench/postfix-tools.sh
find_postfix_tools

for store in embedded redis; do
  for dkim in off on; do
    echo "# load: built-in client" >&2
    target/release/kiln-bench --n "$N" --dkim "$dkim" --store "$store" --policy off --kiln target/release/kiln
    if [ -n "$source_bin" ]; then
      echo "# load: smtp-source" >&2
      target/release/kiln-bench --n "$N" --dkim "$dkim" --store "$store" --policy off --kiln target/release/kiln \
        --source "$source_bin"
    fi
  done
done

# What the kernel alone costs a receiver of the same load (smtp-sink).
if [ -n "$source_bin" ]; then
  contrib/bench/floor.sh "$N" 3
fi

# What the policy costs: the default plugins against no hook at all, in
# alternating pairs (single runs vary by more than the policy costs), ending
# with the median share; then the policy step on its own, six runs.
for store in embedded redis; do
  echo "# policy: default against off, $store" >&2
  target/release/kiln-bench --n "$N" --store "$store" --policy default --pairs 12 --kiln target/release/kiln
done
# Every message to a recipient of its own: each message's recipient checks
# find nothing read before (on Redis, one round trip per message).
for store in redis embedded; do
  echo "# policy: default against off, $store, distinct recipients" >&2
  target/release/kiln-bench --n "$N" --store "$store" --policy default --pairs 6 --recipients distinct \
    --kiln target/release/kiln
done
for store in embedded redis; do
  for run in 1 2 3 4 5 6; do
    target/release/kiln-policy-bench --n 150000 --store "$store"
  done
done

# The API: SendEmail with a template over keep-alive connections, signed as
# the SDKs sign, with the default policy and DKIM (RSA-2048, then the API's
# default RSA-1024).
for store in embedded redis; do
  for dkim in 2048 1024; do
    sync  # the earlier runs' writes out of the way
    target/release/kiln-api-bench --n "$N" --store "$store" --dkim "$dkim" --kiln target/release/kiln
  done
done

# What the deliverability loop costs: tracking, unsubscribe links, VERP and
# a callback for every event, against none of it.
for pair in 1 2 3; do
  for events in off on; do
    sync
    target/release/kiln-api-bench --n "$N" --events "$events" --dkim 2048 --kiln target/release/kiln
  done
done
