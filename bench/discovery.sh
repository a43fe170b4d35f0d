#!/usr/bin/env bash
# bench/discovery.sh BUILD_DIR: the cost of discovery itself on a crowded
# host. memlensd runs the default config's selectors plus one entry that
# matches the idle processes by comm, capped as the default is at 64 targets;
# the host holds 64 of those processes, then 5000. Same targets, same
# collectors: what differs is the rescan of /proc every 2 s (a stat file per
# process). Prints a Markdown table: CPU (% of one core over the window),
# the rescan's duration (median and max of samples every 2 s, from
# memlens_discovery_scan_duration_seconds) and its share of a core.
# Tunables: BENCH_PROCS="64 5000"  BENCH_WINDOW=30 (s)
set -euo pipefail

build=${1:?usage: discovery.sh BUILD_DIR}
build=$(cd "$build" && pwd)
memlensd=$build/memlensd
spawner=$build/bench/spawn_targets
here=$(cd "$(dirname "$0")" && pwd)
for f in "$memlensd" "$spawner"; do
  [[ -x $f ]] || { echo "discovery.sh: $f not built (cmake --build $build)" >&2; exit 1; }
done
source "$here/lib/common.sh"

counts=${BENCH_PROCS:-64 5000}
window=${BENCH_WINDOW:-30}
hz=$(getconf CLK_TCK)
work=$(mktemp -d /tmp/memlens-discovery.XXXXXX)
daemon_pid="" spawner_pid=""
trap 'stop_section; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

printf '| idle processes | processes seen | stat reads a rescan | targets | CPU %% of a core | rescan median ms | rescan max ms | rescans, %% of a core |\n'
printf '|---:|---:|---:|---:|---:|---:|---:|---:|\n'
for n in $counts; do
  dir=$work/$n
  mkdir -p "$dir"
  "$spawner" --count "$n" --tag "disc$$x$n" --kib 16 --ready "$dir/pids" &
  spawner_pid=$!
  for _ in $(seq 1200); do [[ -f $dir/pids ]] && break; sleep 0.05; done
  [[ -f $dir/pids ]] || { echo "discovery.sh: spawn_targets did not start $n processes" >&2; exit 1; }

  # The default config, with the idle processes as one more entry before
  # top-rss (the global cap of 64 holds); the children re-exec through
  # /proc/self/exe, so their comm is "exe", read from the stat file the
  # rescan reads anyway.
  awk '/^  - name: top-rss/ { print "  - name: idle\n    comm: exe" } { print }' \
    "$here/../config/default.yaml" >"$dir/memlens.yaml"
  port=$(free_port)
  url=http://127.0.0.1:$port/metrics
  "$memlensd" --config.file="$dir/memlens.yaml" --web.listen-address="127.0.0.1:$port" \
    --log.level=warn >"$dir/memlensd.log" 2>&1 &
  daemon_pid=$!
  for _ in $(seq 120); do
    curl -s --max-time 2 "$url" 2>/dev/null | grep -q '^memlens_discovery_scans_total' && break
    sleep 0.5
  done
  sleep 10  # warm-up: first rescans, collectors attached

  t0=$(now); c0=$(cpu_ticks "$daemon_pid")
  : >"$dir/scans"
  end=$(awk -v t="$t0" -v w="$window" 'BEGIN { printf "%.3f", t + w }')
  while awk -v e="$end" -v t="$(now)" 'BEGIN { exit !(t < e) }'; do
    curl -s "$url" >"$dir/body" || true
    metric memlens_discovery_scan_duration_seconds '' <"$dir/body" >>"$dir/scans"
    sleep 2
  done
  t1=$(now); c1=$(cpu_ticks "$daemon_pid")
  cpu=$(awk -v c="$((c1 - c0))" -v hz="$hz" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", 100 * c / hz / (b - a) }')
  med=$(median <"$dir/scans" | awk '{ printf "%.1f", $1 * 1000 }')
  max=$(sort -g "$dir/scans" | tail -1 | awk '{ printf "%.1f", $1 * 1000 }')
  share=$(awk -v m="$med" 'BEGIN { printf "%.2f", m / 2000 * 100 }')  # one rescan per 2 s
  seen=$(metric memlens_discovery_processes '' <"$dir/body")
  reads=$(metric memlens_discovery_stat_reads '' <"$dir/body")
  targets=$(awk '/^memlens_targets_watched\{/ { s += $NF } END { print s + 0 }' "$dir/body")
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$n" "$seen" "$reads" "$targets" "$cpu" "$med" "$max" "$share"
  stop_section
done
printf '\nDefault config selectors plus `comm: exe` (the idle processes), max_targets 64, rescan every 2 s, tick 1 s; %s CPUs, kernel %s.\n' \
  "$(nproc)" "$(uname -r)"
