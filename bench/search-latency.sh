#!/usr/bin/env bash
# Search latency over N IMs: builds the deterministic report fixture with
# N_IMS IMs over 7 days (release `gen_fixture` example), indexes its
# im_messages segments as the server does and runs a fixed set of queries
# (words, a phrase, from:/to:, boolean, rare and frequent terms, time ranges)
# RUNS times each, in process (query/examples/search_bench.rs). Reports the
# index build time and size, and p50/p99 per query and over all queries.
#
#   bench/search-latency.sh [N_IMS] [RUNS]      (defaults: 1000000 IMs, 100 runs)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
RUNS=${2:-100}
cargo build --release -q -p sipvault-query --example gen_fixture --example search_bench
GEN=$PWD/target/release/examples/gen_fixture
BENCH=$PWD/target/release/examples/search_bench
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
DATA=$WORK/data

$GEN "$DATA" --ims "$N" --calls 0
printf 'archive              %d IMs, %d MB of im_messages Parquet\n' "$N" "$(du -sm "$DATA/archive/im_messages" | cut -f1)"
$BENCH "$DATA" --runs "$RUNS"
