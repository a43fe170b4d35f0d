#!/usr/bin/env bash
# Installs what is missing, builds memlens twice (release, and with
# AddressSanitizer + UBSan) and runs the whole suite once over both builds in
# one ctest run, so ctest's summary is the last thing printed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
jobs=$(nproc)
root=$PWD
# -O1 -g1: sanitizer reports keep file:line, and the build stays quick.
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g1" \
  -DCMAKE_C_FLAGS_DEBUG="-O1 -g1" -DMEMLENS_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$jobs"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DMEMLENS_ASAN_BUILD_DIR="$root/build-asan" >/dev/null
cmake --build build -j"$jobs"
cd build
# Integration tests mostly wait on real time; run a few at once.
exec ctest --output-on-failure -j 4 --timeout 900 "$@"
