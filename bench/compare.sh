#!/usr/bin/env bash
# tthc beside the peer BPMN engines, in one go: builds tthc (release), runs the two peers
# (SpiffWorkflow, bpmn-engine) on the same procedure with ../shared/peers/run.sh, then
# `tthc bench` on the judicial record procedure, and prints the table with tthc's rates as
# ratios of each peer's. See docs/performance.md.
#
# Usage: bench/compare.sh [N] [--all] [--quick] [--pairs R]
#   N        instances for the peers and dossiers for tthc's durable run (default 2000)
#   --pairs R  then R more runs of SpiffWorkflow and of the core row, alternating, and the
#            median of their ratios (default 5; 0 skips them): on a machine whose speed
#            drifts, one peer run beside one core run can land anywhere in the drift
#   --all    every row of `tthc bench` (HTTP, audit verify, 1,000,000-dossier lookups,
#            storage: a few minutes more); by default only the core and durable rows
#            (one at a time and 32 in flight)
#   --quick  small sizes (seconds), to check the harness
# After the table: bench/sqlite-commit-rate.py, SQLite's own
#   commit rate on this disk with no engine, and the durable row's share of it (target 2).
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
pairs=5
want_pairs=
for a in "$@"; do
  if [[ -n $want_pairs ]]; then
    [[ $a =~ ^[0-9]+$ ]] || { echo "--pairs takes a number" >&2; exit 2; }
    pairs=$a
    want_pairs=
    continue
  fi
  case $a in
    --all) only=() ;;
    --quick) quick=(--quick) ;;
    --pairs) want_pairs=1 ;;
    ''|*[!0-9]*) echo "usage: $0 [N] [--all] [--quick] [--pairs R]" >&2; exit 2 ;;
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

# The durable row (always among the rows run here) beside what SQLite itself commits on this
# disk with no engine at all (bench/sqlite-commit-rate.py, a transaction shaped like a
# command): the share of that bare rate the engine reaches, and the dossiers/s a free engine
# would top out at. Target 2 is bounded by this (docs/performance.md).
commits=20000
[[ ${#quick[@]} -gt 0 ]] && commits=2000
echo "== SQLite's own commit rate here: python3 bench/sqlite-commit-rate.py $commits" >&2
python3 "$repo/bench/sqlite-commit-rate.py" "$commits" | tee "$out/sqlite-floor.txt" >&2
python3 - "$out/bench.json" "$out/sqlite-floor.txt" <<'PY'
import json, re, sys
rows = {r["id"]: r for r in json.load(open(sys.argv[1]))["rows"]}
d = rows["durable"]["data"]
bare = float(re.search(r"command-shaped: ([0-9,]+) commits/s", open(sys.argv[2]).read())
             .group(1).replace(",", ""))
tx, per = d["write_transactions_per_sec"], d["write_transactions_per_dossier"]
print(f"durable on SQLite: {tx:,.0f} write transactions/s = {100 * tx / bare:.0f}% of SQLite's own "
      f"{bare:,.0f} command-shaped commits/s here; at {per} a dossier, a free engine would top "
      f"out at {bare / per:,.0f} dossiers/s")
PY

# The core's ratio again, from runs alternating with the peer's: the median of R ratios.
[[ ${#quick[@]} -gt 0 ]] && pairs=0
if (( pairs > 0 )); then
  echo "== the core beside SpiffWorkflow, $pairs alternating pairs" >&2
  : > "$out/core-pairs.txt"
  for i in $(seq "$pairs"); do
    "$shared/peers/run.sh" "$n" spiff > "$out/pair-peer.txt"
    "${CARGO_TARGET_DIR:-$repo/target}/release/tthc" --root "$repo" bench --only core \
      --json "$out/pair-core.json" > "$out/pair-core.log" 2>&1 || { cat "$out/pair-core.log" >&2; exit 1; }
    python3 - "$out/pair-peer.txt" "$out/pair-core.json" >> "$out/core-pairs.txt" <<'PY'
import json, re, sys
peer = float(re.search(r"per_sec=([0-9.]+)", open(sys.argv[1]).read()).group(1))
core = next(r for r in json.load(open(sys.argv[2]))["rows"] if r["id"] == "core")["value"]
print(f"{peer:.1f} {core:.0f} {core / peer:.1f}")
PY
    read -r peer core ratio < <(tail -n1 "$out/core-pairs.txt")
    printf 'pair %d: SpiffWorkflow %s instances/s, core %s dossiers/s: %s x\n' "$i" "$peer" "$core" "$ratio"
  done
  python3 - "$out/core-pairs.txt" <<'PY'
import statistics, sys
ratios = sorted(float(line.split()[2]) for line in open(sys.argv[1]) if line.strip())
print(f"core / SpiffWorkflow over {len(ratios)} alternating pairs: median {statistics.median(ratios):.1f} x "
      f"(lowest {ratios[0]:.1f}, highest {ratios[-1]:.1f}); target 1 asks for 50 x")
PY
fi
