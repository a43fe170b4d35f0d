#!/usr/bin/env bash
# bench/heap.sh BUILD_DIR: what reading glibc's books from outside costs.
#  1. The target: bench/alloc_bench (malloc/free pairs of varied sizes over
#     a pool of live blocks, so its bins are busy) with memlensd walking its
#     heap at every tick vs not a target (a copy under another name, same
#     memlensd running). Runs interleaved, best and median of each side.
#  2. memlensd: time and CPU per walk against the number of free chunks
#     (tests/workloads/heap_truth --holes: every other block freed), from
#     memlensd's own counters and its CPU time, less an idle memlensd's.
# Needs root (process_vm_readv on processes that are not its children).
# Prints Markdown tables.
set -euo pipefail

build=$(cd "${1:-$(dirname "$0")/../build}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
bench=$build/bench/alloc_bench
truth_wl=$build/tests/workloads/heap_truth
memlensd=$build/memlensd
for f in "$bench" "$truth_wl" "$memlensd"; do
  [[ -x $f ]] || { echo "heap.sh: $f is missing; build first" >&2; exit 1; }
done
[[ $(id -u) == 0 ]] || { echo "heap.sh: needs root (process_vm_readv): nothing was measured" >&2; exit 1; }
source "$here/lib/common.sh"

work=$(mktemp -d /tmp/memlens-heapbench.XXXXXX)
daemon_pid="" wl_pid="" port=""
cleanup() {
  for p in $wl_pid $daemon_pid; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  daemon_pid="" wl_pid=""
}
trap 'cleanup; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p"; }
metric() { # metric NAME[{labels}]: its value in the last scrape, 0 if absent
  awk -v n="$1" 'index($0, n " ") == 1 { v = $2 } END { print v + 0 }' "$work/scrape"
}
scrape() { curl -s "http://127.0.0.1:$port/metrics" >"$work/scrape"; }
start_daemon() { # start_daemon YAML
  port=$(free_port)
  printf '%s\n' "$1" >"$work/memlens.yaml"
  "$memlensd" --config.file="$work/memlens.yaml" --web.listen-address="127.0.0.1:$port" --log.level=warn \
    >>"$work/memlensd.log" 2>&1 &
  daemon_pid=$!
  for _ in $(seq 100); do
    curl -s "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "heap.sh: memlensd did not start" >&2
  cat "$work/memlensd.log" >&2
  return 1
}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# ---- 1. the target's own speed -------------------------------------------------
RUNS=${HEAP_BENCH_RUNS:-7}
PAIRS=${HEAP_BENCH_PAIRS:-20000000}
LIVE=${HEAP_BENCH_LIVE:-50000}
plain=$work/plain_bench  # not a target: memlensd never walks it
cp "$bench" "$plain"
start_daemon "$(printf 'global: {tick_interval: 250ms, rescan_interval: 250ms}\ntargets:\n  - name: bench\n    comm: alloc_bench\n')"
: >"$work/on" && : >"$work/off"
for _ in $(seq "$RUNS"); do
  # --wait-ms: discovered and walked once before the measured loop starts.
  "$bench" --pairs "$PAIRS" --live "$LIVE" --wait-ms 1500 | field cpu_ns_per_pair >>"$work/on"
  "$plain" --pairs "$PAIRS" --live "$LIVE" --wait-ms 1500 | field cpu_ns_per_pair >>"$work/off"
done
scrape
walks=$(metric 'memlens_allocator_walks_total{result="consistent"}')
bad=$(metric 'memlens_allocator_walks_total{result="inconsistent"}')
wsec=$(metric memlens_allocator_walk_seconds_total)
cleanup
# Beside it, the same workload under eBPF allocation tracing (mode full:
# exact live heap, a uprobe per call), interleaved with untraced runs too.
start_daemon "$(printf 'global: {tick_interval: 250ms, rescan_interval: 250ms}\ntargets:\n  - name: bench\n    comm: alloc_bench\n    heap: false\n    alloc: {mode: full}\n')"
: >"$work/full" && : >"$work/off2"
for _ in $(seq "$RUNS"); do
  "$bench" --pairs "$((PAIRS / 10))" --live "$LIVE" --wait-ms 1500 | field cpu_ns_per_pair >>"$work/full"
  "$plain" --pairs "$((PAIRS / 10))" --live "$LIVE" --wait-ms 1500 | field cpu_ns_per_pair >>"$work/off2"
done
cleanup
on_best=$(sort -g "$work/on" | head -1) off_best=$(sort -g "$work/off" | head -1)
on_med=$(median <"$work/on") off_med=$(median <"$work/off")
full_best=$(sort -g "$work/full" | head -1) off2_best=$(sort -g "$work/off2" | head -1)
full_med=$(median <"$work/full") off2_med=$(median <"$work/off2")
printf '| alloc_bench (%s pairs, %s live blocks, 16 B-4 KiB) | CPU ns/pair best | median |\n|---|---:|---:|\n' "$PAIRS" "$LIVE"
printf '| not a target | %s | %s |\n| heap walked every tick (250 ms) | %s | %s |\n' "$off_best" "$off_med" "$on_best" "$on_med"
printf '| ratio walked / not | %.3f | %.3f |\n' "$(echo "$on_best / $off_best" | bc -l)" "$(echo "$on_med / $off_med" | bc -l)"
printf '| eBPF alloc mode full (%s pairs; not a target alongside: %s / %s) | %s | %s |\n' "$((PAIRS / 10))" \
  "$off2_best" "$off2_med" "$full_best" "$full_med"
printf '| ratio eBPF full / not | %.2f | %.2f |\n' "$(echo "$full_best / $off2_best" | bc -l)" \
  "$(echo "$full_med / $off2_med" | bc -l)"
echo
printf 'walks during the runs: %s consistent, %s inconsistent, %.3f s walking (%s interleaved runs each side)\n' \
  "$walks" "$bad" "$wsec" "$RUNS"

# ---- 2. memlensd per walk ------------------------------------------------------------
# An idle memlensd's CPU over the same time, to take away.
HOLD=${HEAP_BENCH_SECONDS:-20}
idle_ticks() {
  start_daemon "$(printf 'global: {tick_interval: 1s}\ntargets:\n  - name: idle\n    pid: %s\n    heap: false\n' "$1")"
  local c0 c1
  c0=$(cpu_ticks "$daemon_pid")
  sleep "$HOLD"
  c1=$(cpu_ticks "$daemon_pid")
  kill "$daemon_pid"; wait "$daemon_pid" 2>/dev/null || true; daemon_pid=""
  echo $((c1 - c0))
}
hz=$(getconf CLK_TCK)
echo
printf '| free chunks | heap (arena) MiB | walk ms (wall) | memlensd CPU ms/walk | pages read/walk | walked every |\n'
printf '|---:|---:|---:|---:|---:|---:|\n'
for blocks in 2000 200000 2000000; do
  rm -f "$work/truth.jsonl"
  "$truth_wl" --truth "$work/truth.jsonl" --blocks "$blocks" --holes --min 150 --max 300 &
  wl_pid=$!
  for _ in $(seq 600); do grep -q steady "$work/truth.jsonl" 2>/dev/null && break; sleep 0.1; done
  idle=$(idle_ticks "$wl_pid")
  start_daemon "$(printf 'global: {tick_interval: 1s}\ntargets:\n  - name: heap\n    pid: %s\n' "$wl_pid")"
  sleep 3  # located, first walk done
  scrape
  w0=$(metric 'memlens_allocator_walks_total{result="consistent"}')
  s0=$(metric memlens_allocator_walk_seconds_total)
  p0=$(metric memlens_allocator_pages_read_total)
  c0=$(cpu_ticks "$daemon_pid")
  sleep "$HOLD"
  c1=$(cpu_ticks "$daemon_pid")
  scrape
  w1=$(metric 'memlens_allocator_walks_total{result="consistent"}')
  s1=$(metric memlens_allocator_walk_seconds_total)
  p1=$(metric memlens_allocator_pages_read_total)
  chunks=$(awk '/^memlens_allocator_free_chunks\{/ { print $2 }' "$work/scrape")
  arena=$(awk '/^memlens_allocator_system_bytes\{/ { printf "%.0f", $2 / 1048576 }' "$work/scrape")
  cleanup
  n=$(echo "$w1 - $w0" | bc)
  if [[ $n == 0 ]]; then
    printf '| %s | %s | - | - | - | no walk in %s s |\n' "${chunks:-?}" "${arena:-?}" "$HOLD"
    continue
  fi
  printf '| %s | %s | %.1f | %.1f | %.0f | %.1f s |\n' "$chunks" "$arena" \
    "$(echo "($s1 - $s0) * 1000 / $n" | bc -l)" \
    "$(echo "($c1 - $c0 - $idle) * 1000 / $hz / $n" | bc -l)" \
    "$(echo "($p1 - $p0) / $n" | bc -l)" "$(echo "$HOLD / $n" | bc -l)"
done
