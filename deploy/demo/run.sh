#!/usr/bin/env bash
# The plan's three systems on one machine, watched by memlensd, with a
# Prometheus that loads the shipped rules: a Node.js backend with a slow
# retained-object leak, a native backend (glibc, traced exactly and sampled),
# a JVM service and a Python worker collecting their garbage, a PostgreSQL
# cluster under pgbench (with a sort that spills now and then), a headless
# Chromium on a page that leaks, and a front-end bundle on disk.
#
#   bash deploy/demo/run.sh          # as root on Debian 12; Ctrl-C stops everything
#
# Everything it starts runs under one temporary directory and stops with it
# (Ctrl-C, SIGTERM, or any failure). MEMLENS_DEMO_SECONDS=N stops it after N
# seconds; MEMLENS_BUILD_DIR names a build tree to use instead of building,
# MEMLENS_DAEMON a memlensd other than that tree's.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
port=${MEMLENS_DEMO_PORT:-19723}
prom_port=${MEMLENS_DEMO_PROMETHEUS_PORT:-19790}
pg_port=${MEMLENS_DEMO_PG_PORT:-19791}

if [[ $EUID -ne 0 ]]; then
  echo "demo: run as root (memlensd reads other processes' memory and loads eBPF programs)" >&2
  exit 2
fi
if [[ -z ${MEMLENS_BUILD_DIR:-} ]]; then
  bash scripts/deps.sh
  cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build build -j"$(nproc)" --target memlensd memlens-sampler heapload >/dev/null
  MEMLENS_BUILD_DIR=$root/build
fi
build=$MEMLENS_BUILD_DIR
daemon=${MEMLENS_DAEMON:-$build/memlensd}
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_nobody=(setpriv --reuid=65534 --regid=65534 --clear-groups)

dir=$(mktemp -d /tmp/memlens-demo.XXXXXX)
chmod 755 "$dir"
pids=()
cleanup() {
  trap - EXIT INT TERM
  echo "demo: stopping" >&2
  # The postmaster first, with a fast shutdown (its backends and pgbench's
  # connections go with it), then everything else.
  [[ -n ${postmaster:-} ]] && kill -INT "$postmaster" 2>/dev/null || true
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() {  # start NAME CMD...: runs CMD in the background, its output in $dir/NAME.log
  local name=$1
  shift
  "$@" >"$dir/$name.log" 2>&1 &
  pids+=($!)
  eval "pid_$name=$!"
}

# The front-end bundle: what a build would leave in dist/.
mkdir -p "$dir/dist"
python3 - "$dir/dist" <<'EOF'
import sys
out = sys.argv[1]
def module(name, n):
    return "".join(f"export function {name}{i}(x) {{ return x * {i} + {len(name)}; }}\n" for i in range(n))
open(f"{out}/index-3f9a1c.js", "w").write(module("view", 14000))  # over the 500 KB budget: an alert
open(f"{out}/vendor-77b2e0.js", "w").write(module("lib", 6000))
open(f"{out}/index-3f9a1c.css", "w").write("".join(f".c{i} {{ margin: {i % 7}px; }}\n" for i in range(3000)))
EOF

# memlensd first, so that every workload is watched from its start.
cat >"$dir/memlens.yaml" <<EOF
global: {tick_interval: 1s, rescan_interval: 1s, smaps_interval: 2s, leak_window: 60s, breach_window: 60s}
targets:
  - name: memlensd
    self: true
  - name: demo-backend-node
    comm: node
    cmdline: "$dir"
    budgets: {heap: 128MiB, gc_pause_p99: 10ms, alloc_rate: 1MB/s, fragmentation: 20%, leak: 0}
  - name: demo-backend-native
    comm: demo-native
    cmdline: "$dir"
    alloc: {mode: full}
    budgets: {heap: 32MiB, rss: 96MiB, peak: 128MiB, alloc_rate: 1MB/s, fragmentation: 20%, leak: 0}
  - name: demo-worker-native
    comm: demo-sampled
    cmdline: "$dir"
    budgets: {rss: 64MiB, alloc_rate: 1MB/s}
  - name: demo-jvm
    comm: java
    cmdline: "$dir"
    budgets: {gc_pause_p99: 10ms}
  - name: demo-python
    comm: "python[0-9.]*"
    cmdline: "$dir"
    budgets: {gc_pause_p99: 10ms}
  - name: demo-postgres
    comm: postgres
    cmdline: "$dir"
    children: false
    budgets: {shared_buffers: 256MiB, connection_memory: 50MiB, temp_files: 16MiB}
  - name: demo-browser
    comm: chromium
    cmdline: "$dir"
    children: false
    budgets: {renderer_memory: 30MB}
  - name: demo-bundle
    files:
      paths: ["$dir/dist/*.js", "$dir/dist/*.css"]
      entry: ["$dir/dist/index-*"]
    budgets: {bundle: 500KB}
EOF
start memlensd "$daemon" --config.file="$dir/memlens.yaml" --web.listen-address="127.0.0.1:$port"
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  kill -0 "$pid_memlensd" 2>/dev/null || { cat "$dir/memlensd.log" >&2; exit 1; }
  sleep 0.1
done

# Prometheus with the shipped rules.
cat >"$dir/prometheus.yml" <<EOF
global: {scrape_interval: 5s, evaluation_interval: 5s}
rule_files: ["$root/deploy/prometheus/memlens.rules.yml"]
scrape_configs:
  - job_name: memlens
    static_configs: [{targets: ["127.0.0.1:$port"]}]
EOF
start prometheus prometheus --config.file="$dir/prometheus.yml" --storage.tsdb.path="$dir/prometheus" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn

# The backends.
start node node "$root/deploy/demo/backend.js" "$dir"
# The native backend, traced exactly from exec (a copy of its own, named
# demo-native: held at exec by that name), leaking 16 KiB a second toward its
# 32 MiB heap budget; a native worker with the in-process sampler preloaded.
cp "$build/tests/workloads/heapload" "$dir/demo-native"
cp "$build/tests/workloads/heapload" "$dir/demo-sampled"
start native "$dir/demo-native" --hold $((24 << 20)) --churn 1000 --leak 16384 --truth "$dir/native.jsonl"
start sampled env LD_PRELOAD="$build/lib/libmemlens-sampler.so" MEMLENS_SAMPLER_INTERVAL=16384 \
  "$dir/demo-sampled" --hold $((16 << 20)) --churn 2000 --truth "$dir/sampled.jsonl"
start jvm java -Xmx64m "$root/deploy/demo/Worker.java" "$dir"
start python python3 "$root/deploy/demo/worker.py" "$dir"

# PostgreSQL: a cluster of the demo's own (unix socket in $dir only), pgbench
# at 40 transactions a second, and a sort that spills to temp files every 20 s.
mkdir "$dir/pg" && chown 65534:65534 "$dir/pg"
"${as_nobody[@]}" "$pgbin/initdb" -D "$dir/pg/data" -A trust -U postgres --no-sync --no-instructions >"$dir/initdb.log" 2>&1
start postgres "${as_nobody[@]}" "$pgbin/postgres" -D "$dir/pg/data" -k "$dir/pg" -p "$pg_port" \
  -c listen_addresses= -c shared_buffers=64MB
postmaster=$pid_postgres
psql=("${as_nobody[@]}" "$pgbin/psql" -h "$dir/pg" -p "$pg_port" -U postgres -X -Atq -d postgres)
for _ in $(seq 100); do "${psql[@]}" -c "select 1" >/dev/null 2>&1 && break; sleep 0.2; done
"${as_nobody[@]}" "$pgbin/pgbench" -h "$dir/pg" -p "$pg_port" -U postgres -i -s 5 -q postgres >"$dir/pgbench-init.log" 2>&1
start pgbench "${as_nobody[@]}" "$pgbin/pgbench" -h "$dir/pg" -p "$pg_port" -U postgres -c 8 -j 2 -R 40 -T 86400 postgres
start spill bash -c "while :; do ${psql[*]} -c \"set work_mem = '64kB'; select count(*) from (select * from pgbench_accounts order by filler, abalance) s\" >/dev/null; sleep 20; done"

# The front end's runtime: a headless Chromium on a page that leaks.
start chromium /usr/lib/chromium/chromium --headless=new --no-sandbox --disable-gpu \
  --user-data-dir="$dir/chromium" "file://$root/deploy/demo/page.html"

cat >&2 <<EOF

memlens demo running (everything under $dir):
  timeline page     http://127.0.0.1:$port/
  metrics           http://127.0.0.1:$port/metrics
  Prometheus        http://127.0.0.1:$prom_port/ (the shipped rules; alerts at /alerts)
  Grafana           import deploy/grafana/memlens-dashboard.json, data source http://127.0.0.1:$prom_port
Ctrl-C stops everything it started.
EOF

if [[ -n ${MEMLENS_DEMO_SECONDS:-} ]]; then
  sleep "$MEMLENS_DEMO_SECONDS" &
  pids+=($!)
  wait $!  # (a signal's trap runs at once, not after the sleep)
else
  while kill -0 "$pid_memlensd" 2>/dev/null; do sleep 1; done
  echo "demo: memlensd stopped:" >&2
  tail -5 "$dir/memlensd.log" >&2
fi
