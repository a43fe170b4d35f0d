#!/usr/bin/env bash
# Installs what is missing, builds memlens twice (release, and with
# AddressSanitizer + UBSan) and runs the whole suite once over both builds in
# one ctest run, so ctest's summary is the last thing printed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
jobs=$(nproc)
root=$PWD
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMEMLENS_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$jobs"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMEMLENS_ASAN_BUILD_DIR="$root/build-asan" >/dev/null
cmake --build build -j"$jobs"
cd build
# Integration tests mostly wait on real time; run a few at once.
exec ctest --output-on-failure -j 4 --timeout 900 "$@"
