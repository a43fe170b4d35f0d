#!/usr/bin/env bash
# bench/gc.sh BUILD_DIR: what GC pause tracing costs each runtime on its own
# GC-heavy workload (tests/workloads: GcChurn.java, gc_churn.js, gc_churn.py)
# doing a fixed amount of work. Runs alternate untraced / traced in the same
# session (one memlensd), so drift hits both alike; both are memlens targets,
# the untraced ones with `gc: false`, so only GC tracing differs.
# Two measures: the churn wall time the workload measures itself (best of the
# runs: other load on the host only adds to it), and the CPU time of the
# whole process over the churn (utime+stime from /proc/PID/stat, median;
# uprobe traps are charged to the traced process, and CPU time is less
# disturbed by other load than wall time). Needs root.
# The probe-* rows time 200k empty CPython collections: their difference per
# collection is what one traced pause costs.
# Tunables (environment): BENCH_GC_REPS=5, BENCH_GC_DEBUG=1 (each run on stderr),
#   BENCH_GC_RUNTIMES="jvm node python-usdt python-symbols probe-usdt probe-symbols"
set -euo pipefail

build=${1:?usage: gc.sh BUILD_DIR}
build=$(cd "$build" && pwd)
src=$(cd "$(dirname "$0")/.." && pwd)
memlensd=$build/memlensd
[[ -x $memlensd ]] || { echo "gc.sh: $memlensd not built" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "gc.sh: needs root (eBPF): nothing was measured" >&2; exit 1; }
reps=${BENCH_GC_REPS:-5}
runtimes=${BENCH_GC_RUNTIMES:-jvm node python-usdt python-symbols probe-usdt probe-symbols}
work=$(mktemp -d /tmp/memlens-gcbench.XXXXXX)
daemon_pid="" wl_pid=""

cleanup() {
  [[ -n $wl_pid ]] && kill "$wl_pid" 2>/dev/null && wait "$wl_pid" 2>/dev/null
  [[ -n $daemon_pid ]] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
  wl_pid="" daemon_pid=""
}
trap 'cleanup; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

default_python=$(python3 -c 'import sys; print(sys.executable)' 2>/dev/null || true)

# The command of one runtime's workload; $1 runtime, $2 go file, $3 done file.
# GC_CHURN_WORK sizes each run to a few seconds on a 2-core VM.
workload() {
  case $1 in
    jvm) echo "env GC_CHURN_WORK=5000 /usr/bin/java -Xmx256m $src/tests/workloads/GcChurn.java $2 $3 4 3" ;;
    node) echo "env GC_CHURN_WORK=10000 /usr/bin/node $src/tests/workloads/gc_churn.js $2 $3 0" ;;
    python-usdt) echo "env GC_CHURN_WORK=1000 /usr/bin/python3.11 $src/tests/workloads/gc_churn.py $2 $3 0" ;;
    python-symbols) echo "env GC_CHURN_WORK=1000 $default_python $src/tests/workloads/gc_churn.py $2 $3 0" ;;
    # Per-pause cost: 200k collections of an empty young generation.
    probe-usdt) echo "/usr/bin/python3.11 $src/bench/gc_probe_cost.py $2 $3 200000" ;;
    probe-symbols) echo "$default_python $src/bench/gc_probe_cost.py $2 $3 200000" ;;
  esac
}

available() {
  case $1 in
    jvm) [[ -x /usr/bin/java ]] ;;
    node) [[ -x /usr/bin/node ]] ;;
    python-usdt) [[ -x /usr/bin/python3.11 ]] ;;
    python-symbols|probe-symbols) [[ -n $default_python ]] && ! readelf -n "$default_python" 2>/dev/null | grep -q gc__start ;;
    probe-usdt) [[ -x /usr/bin/python3.11 ]] ;;
  esac
}

port=$(free_port)
cat >"$work/memlens.yaml" <<YAML
global: {tick_interval: 1s, rescan_interval: 250ms}
targets:
  - name: gcbench
    cmdline: "gcbench-traced"
  - name: gcbench-plain
    cmdline: "gcbench-plain"
    gc: false
YAML
"$memlensd" --config.file="$work/memlens.yaml" --web.listen-address="127.0.0.1:$port" >"$work/memlensd.log" 2>&1 &
daemon_pid=$!
for _ in $(seq 100); do curl -sf "127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done

hz=$(getconf CLK_TCK)

# One run: prints "<churn seconds> <cpu seconds> <pauses seen by memlens or ->".
run_once() {
  local rt=$1 mode=$2 n=$3 dir pid secs pauses
  dir=$work/gcbench-$mode-$rt-$n
  mkdir -p "$dir"
  # shellcheck disable=SC2046
  $(workload "$rt" "$dir/go" "$dir/done") >"$dir/out" 2>&1 &
  wl_pid=$!
  pid=$wl_pid
  # Both kinds of run are memlens targets (so /proc, faults and the other
  # collectors cost the same); only GC tracing differs (gc: false).
  local want='reason="ok"} 1' ok=""
  [[ $mode == traced ]] || want='reason="disabled_by_config"} 0'
  for _ in $(seq 200); do
    if curl -s "127.0.0.1:$port/metrics" | grep "^memlens_gc_tracing_available{.*pid=\"$pid\"" | grep -qF "$want"; then ok=1; break; fi
    sleep 0.1
  done
  [[ -n $ok ]] || echo "gc.sh: $rt pid $pid ($mode) never seen by memlens" >&2
  # The JVM's pid is java's own (env execs it); its CPU before "go" (start-up,
  # compiling the single-file source) is subtracted.
  local c0 c1
  c0=$(cpu_ticks "$pid")
  touch "$dir/go"
  for _ in $(seq 1200); do [[ -s $dir/done ]] && break; sleep 0.05; done
  c1=$(cpu_ticks "$pid")
  sleep 1.2  # a tick, so memlens has read the final counts
  secs=$(python3 -c 'import json,sys; t=open(sys.argv[1]).read()
print(t.split()[1] if t.startswith("done") else json.loads(t)["elapsed_s"])' "$dir/done")
  pauses=-
  if [[ $mode == traced ]]; then
    pauses=$(curl -s "127.0.0.1:$port/metrics" | awk -v p="pid=\"$pid\"" \
      '$1 ~ /^memlens_gc_pause_seconds_count/ && index($1, p) { s += $2 } END { print s + 0 }')
  fi
  kill "$wl_pid" 2>/dev/null; wait "$wl_pid" 2>/dev/null || true
  wl_pid=""
  [[ -n ${BENCH_GC_DEBUG:-} ]] && echo "gc.sh: $rt $mode: churn ${secs}s, CPU ticks $c0 -> $c1" >&2
  echo "$secs $(awk -v a="$c0" -v b="$c1" -v hz="$hz" 'BEGIN { printf "%.2f", (b - a) / hz }') $pauses"
}
min() { sort -g | head -1; }

median() { sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

echo "| runtime | probe | runs | pauses/run | wall untraced (s, best) | wall traced (s, best) | wall slowdown | CPU untraced (s, median) | CPU traced (s, median) | CPU slowdown |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for rt in $runtimes; do
  if ! available "$rt"; then
    echo "| $rt | - | 0 | - | - | - | not available here | - | - | - |"
    continue
  fi
  plain=() traced=() pcpu=() tcpu=() pauses=()
  for n in $(seq "$reps"); do
    # Alternate which mode goes first, so an order effect (a process still
    # being torn down, caches) does not favour one. The run directory (in the
    # command line) selects the target policy.
    order="plain traced"
    ((n % 2)) || order="traced plain"
    for mode in $order; do
      read -r s c p < <(run_once "$rt" "$mode" "$n")
      if [[ $mode == plain ]]; then
        plain+=("$s") pcpu+=("$c")
      else
        traced+=("$s") tcpu+=("$c") pauses+=("$p")
      fi
    done
  done
  mp=$(printf '%s\n' "${plain[@]}" | min)
  mt=$(printf '%s\n' "${traced[@]}" | min)
  cp=$(printf '%s\n' "${pcpu[@]}" | median)
  ct=$(printf '%s\n' "${tcpu[@]}" | median)
  np=$(printf '%s\n' "${pauses[@]}" | median)
  probe=uprobe
  [[ $rt == jvm || $rt == *-usdt ]] && probe=usdt
  if [[ $rt == probe-* ]]; then
    awk -v rt="$rt" -v pr="$probe" -v n="$reps" -v np="$np" -v a="$mp" -v b="$mt" -v c="$cp" -v d="$ct" 'BEGIN {
      printf "| %s | %s | %d+%d | %d | %.3f | %.3f | %+.2f us/pause | %.2f | %.2f | %+.2f us/pause |\n",
        rt, pr, n, n, np, a, b, (np > 0 ? (b - a) / np * 1e6 : 0), c, d, (np > 0 ? (d - c) / np * 1e6 : 0) }'
    continue
  fi
  awk -v rt="$rt" -v pr="$probe" -v n="$reps" -v np="$np" -v a="$mp" -v b="$mt" -v c="$cp" -v d="$ct" 'BEGIN {
    printf "| %s | %s | %d+%d | %d | %.3f | %.3f | %+.1f%% | %.2f | %.2f | %+.1f%% |\n",
      rt, pr, n, n, np, a, b, (b - a) / a * 100, c, d, (c > 0 ? (d - c) / c * 100 : 0) }'
done
echo
echo "Slowdown = traced/untraced - 1. The probe-* rows give the cost of one traced pause; a"
echo "workload's expected slowdown is pauses/run x that cost / run time. When the workload rows"
echo "differ from that by more than a few percent, it is the host's noise (other load), not tracing."
