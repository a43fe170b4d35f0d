#!/usr/bin/env bash
# bench/daemon.sh BUILD_DIR: memlensd's own cost with 10, 100 and 1000 idle
# targets at a 1 s tick: CPU (% of one core, from /proc/PID/stat utime+stime
# over a window, scraped every 15 s as Prometheus would), RSS, and /metrics
# latency (sequential GETs on one keep-alive connection, like a scraper),
# and the time from SIGTERM to its exit.
# Prints a Markdown table. Tunables (environment):
#   BENCH_SIZES="10 100 1000"  BENCH_WINDOW=30 (s)  BENCH_GETS=200  BENCH_KIB=64
set -euo pipefail

build=${1:?usage: daemon.sh BUILD_DIR}
build=$(cd "$build" && pwd)
memlensd=$build/memlensd
spawner=$build/bench/spawn_targets
for f in "$memlensd" "$spawner"; do
  [[ -x $f ]] || { echo "daemon.sh: $f not built (cmake --build $build)" >&2; exit 1; }
done
command -v curl >/dev/null || { echo "daemon.sh: curl is needed" >&2; exit 1; }

sizes=${BENCH_SIZES:-10 100 1000}
window=${BENCH_WINDOW:-30}
gets=${BENCH_GETS:-200}
kib=${BENCH_KIB:-64}
hz=$(getconf CLK_TCK)
work=$(mktemp -d /tmp/memlens-bench.XXXXXX)
daemon_pid="" spawner_pid=""
trap 'stop_section; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# p-th percentile (0-100) of the numbers on stdin.
percentile() { sort -g | awk -v p="$1" '{ v[NR] = $1 } END { i = int((NR * p + 99) / 100); if (i < 1) i = 1; print v[i] }'; }

printf '| targets | watched | CPU %% of a core | RSS MiB | peak RSS MiB | timeline MiB | /metrics p50 ms | /metrics p99 ms | series | body KiB | last tick ms | memlensd heap in use MiB | memlensd fragmentation | memlensd leak slope B/s | SIGTERM to exit s |\n'
printf '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n'

for n in $sizes; do
  tag="mlb$$x$n"
  dir=$work/$n
  mkdir -p "$dir"
  "$spawner" --count "$n" --tag "$tag" --kib "$kib" --ready "$dir/pids" &
  spawner_pid=$!
  for _ in $(seq 200); do [[ -f $dir/pids ]] && break; sleep 0.05; done
  [[ -f $dir/pids ]] || { echo "daemon.sh: spawn_targets did not start $n processes" >&2; exit 1; }

  cat >"$dir/memlens.yaml" <<EOF
global:
  tick_interval: 1s
  rescan_interval: 2s
  max_targets: $((n + 8))
targets:
  - name: memlensd
    self: true
  - name: bench
    cmdline: "--child --tag=$tag --kib"
    max_targets: $((n + 8))
EOF
  port=$(free_port)
  url=http://127.0.0.1:$port/metrics
  "$memlensd" --config.file="$dir/memlens.yaml" --web.listen-address="127.0.0.1:$port" \
    --log.level=warn >"$dir/memlensd.log" 2>&1 &
  daemon_pid=$!

  # Ready when every target is watched (discovery + first tick).
  watched=0
  for _ in $(seq 120); do
    watched=$(curl -s --max-time 2 "$url" 2>/dev/null | metric memlens_targets_watched 'target="bench"' || true)
    [[ ${watched:-0} == "$n" ]] && break
    sleep 0.5
  done
  if [[ ${watched:-0} != "$n" ]]; then
    echo "daemon.sh: memlensd watches ${watched:-0} of $n targets after 60 s; log:" >&2
    tail -5 "$dir/memlensd.log" >&2
  fi
  sleep 5  # warm-up: timelines allocated, first slopes computed

  # CPU over the window, scraped every 15 s as Prometheus would.
  t0=$(now); c0=$(cpu_ticks "$daemon_pid")
  end=$(awk -v t="$t0" -v w="$window" 'BEGIN { printf "%.3f", t + w }')
  while :; do
    curl -s -o /dev/null "$url" || true
    left=$(awk -v e="$end" -v t="$(now)" 'BEGIN { d = e - t; printf "%.3f", (d > 15 ? 15 : d) }')
    awk -v l="$left" 'BEGIN { exit !(l > 0) }' || break
    sleep "$left"
  done
  t1=$(now); c1=$(cpu_ticks "$daemon_pid")
  cpu=$(awk -v c="$((c1 - c0))" -v hz="$hz" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", 100 * c / hz / (b - a) }')
  rss=$(status_kib "$daemon_pid" VmRSS)
  hwm=$(status_kib "$daemon_pid" VmHWM)

  # /metrics latency: sequential GETs on one connection.
  args=()
  for _ in $(seq "$gets"); do args+=(-o /dev/null "$url"); done
  curl -s -w '%{time_total}\n' "${args[@]}" >"$dir/lat"
  p50=$(percentile 50 <"$dir/lat" | awk '{ printf "%.2f", $1 * 1000 }')
  p99=$(percentile 99 <"$dir/lat" | awk '{ printf "%.2f", $1 * 1000 }')

  curl -s "$url" >"$dir/body"
  series=$(grep -vc '^#' "$dir/body" || true)
  body=$(($(wc -c <"$dir/body") / 1024))
  tick=$(metric memlens_tick_duration_seconds '' <"$dir/body" | awk '{ printf "%.1f", $1 * 1000 }')
  tl=$(metric memlens_timeline_memory_bytes '' <"$dir/body" | awk '{ printf "%.1f", $1 / 1048576 }')
  # memlensd as its own target (self: true): its allocator's books and its
  # leak slope over the last 60 s, the figures the backend budgets hold.
  self_heap=$(metric memlens_allocator_inuse_bytes 'target="memlensd"' <"$dir/body" | awk '{ printf "%.1f", $1 / 1048576 }')
  self_frag=$(metric memlens_heap_fragmentation_ratio 'target="memlensd"' <"$dir/body" | awk '{ printf "%.3f", $1 }')
  self_slope=$(metric memlens_leak_slope_bytes_per_second 'target="memlensd"' <"$dir/body" | awk '{ printf "%.0f", $1 }')

  # How long SIGTERM takes to end it, as systemd's stop waits for it.
  s0=$(now)
  kill "$daemon_pid" && wait "$daemon_pid" || true
  stop_s=$(awk -v a="$s0" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }')
  daemon_pid=""
  printf '| %s | %s | %s | %.1f | %.1f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$n" "${watched:-0}" "$cpu" \
    "$(awk -v k="$rss" 'BEGIN { print k / 1024 }')" "$(awk -v k="$hwm" 'BEGIN { print k / 1024 }')" \
    "${tl:-?}" "$p50" "$p99" "$series" "$body" "${tick:-?}" "${self_heap:-?}" "${self_frag:-?}" "${self_slope:-?}" "$stop_s"
  stop_section
done
echo
echo "Aims at 100 targets: CPU < 1% of a core, RSS < 32 MiB, /metrics p99 < 20 ms." \
  "Window ${window}s, ${gets} GETs, ${kib} KiB heap per target, $(nproc) CPUs, kernel $(uname -r)."
