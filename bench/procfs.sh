#!/usr/bin/env bash
# bench/procfs.sh BUILD_DIR: what reading /proc costs per target per tick
# (the proc collector's files: stat, status, smaps_rollup, maps) now, and
# under cheaper strategies (kept fds, smaps_rollup/maps every 5th tick).
# 100 idle targets, 200 rounds. Prints a Markdown table.
set -euo pipefail
build=$(cd "${1:?usage: procfs.sh BUILD_DIR}" && pwd)
n=${BENCH_PROCFS_TARGETS:-100}
work=$(mktemp -d /tmp/memlens-procfs.XXXXXX)
"$build/bench/spawn_targets" --count "$n" --tag "mlp$$" --ready "$work/pids" &
spawner=$!
trap 'kill $spawner 2>/dev/null; wait $spawner 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 200); do [[ -f $work/pids ]] && break; sleep 0.05; done
sleep 0.5
"$build/bench/proc_read_cost" "${BENCH_PROCFS_ROUNDS:-200}" <"$work/pids"
