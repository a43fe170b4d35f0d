#!/usr/bin/env bash
# Installs what is missing, builds memlensd and runs it on its default config
# (or on the config file given as first argument), serving 127.0.0.1:19723.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target memlensd
args=()
if [[ $# -gt 0 ]]; then args+=("--config.file=$1"); shift; fi
echo "memlensd: metrics at http://127.0.0.1:19723/metrics, status at http://127.0.0.1:19723/" >&2
exec ./build/memlensd "${args[@]}" "$@"
