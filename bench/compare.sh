#!/usr/bin/env bash
# tthc beside the peer BPMN engines, in one go: builds tthc (release), runs the two peers
# (SpiffWorkflow, bpmn-engine) on the same procedure with ../shared/peers/run.sh, then
# `tthc bench` on the judicial record procedure, and prints the table with tthc's rates as
# ratios of each peer's. See docs/performance.md.
#
# Usage: bench/compare.sh [N] [--all] [--quick]
#   N        instances for the peers and dossiers for tthc's durable run (default 2000)
#   --all    every row of `tthc bench` (HTTP, audit verify, 1,000,000-dossier lookups,
#            storage: a few minutes more); by default only the core and durable rows
#            (one at a time and 32 in flight)
#   --quick  small sizes (seconds), to check the harness
# Environment: TTHC_SHARED (default ../shared beside the repository) holds peers/;
#   TTHC_BENCH_OUT (default target/bench) receives peers.txt and bench.json.
#   TTHC_BENCH_POSTGRES (optional): a PostgreSQL URL whose user may create databases, to
#   measure the durable path on PostgreSQL too (e.g. postgres://root@127.0.0.1:5432/test).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
shared=${TTHC_SHARED:-$repo/../shared}
out=${TTHC_BENCH_OUT:-$repo/target/bench}
n=2000
only=(--only core,durable,concurrent)
quick=()
for a in "$@"; do
  case $a in
    --all) only=() ;;
    --quick) quick=(--quick) ;;
    ''|*[!0-9]*) echo "usage: $0 [N] [--all] [--quick]" >&2; exit 2 ;;
    *) n=$a ;;
  esac
done
if [[ ! -x $shared/peers/run.sh ]]; then
  echo "no peers at $shared/peers (set TTHC_SHARED)" >&2
  exit 1
fi
mkdir -p "$out"
echo "== building tthc (release)" >&2
(cd "$repo" && cargo build --release --quiet -p tthc)
echo "== peers: $shared/peers/run.sh $n" >&2
"$shared/peers/run.sh" "$n" | tee "$out/peers.txt" >&2
echo "== tthc bench" >&2
dossiers=$n
[[ ${#quick[@]} -gt 0 ]] && dossiers=$(( n < 50 ? n : 50 ))
"${CARGO_TARGET_DIR:-$repo/target}/release/tthc" --root "$repo" bench "${quick[@]}" "${only[@]}" \
  --dossiers "$dossiers" --peers "$out/peers.txt" --json "$out/bench.json"
