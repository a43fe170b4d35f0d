#!/usr/bin/env bash
# Installs what is missing, builds memlens three times (release; with
# AddressSanitizer + UBSan; the libFuzzer targets with clang) and runs the
# whole suite once over all of them in one ctest run (each fuzzer for a
# bounded time), so ctest's summary is the last thing printed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
jobs=$(nproc)
root=$PWD
# -O1 -g1: sanitizer reports keep file:line, and the build stays quick.
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g1" \
  -DCMAKE_C_FLAGS_DEBUG="-O1 -g1" -DMEMLENS_SANITIZE=ON >/dev/null
# Only what runs sanitized: the daemon and the unit tests (the other tests
# drive that daemon from the release tree's binaries).
cmake --build build-asan -j"$jobs" --target memlensd memlens_unit_tests
CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g1" \
  -DCMAKE_C_FLAGS_DEBUG="-O1 -g1" -DMEMLENS_FUZZ=ON -DMEMLENS_BUILD_TESTS=OFF >/dev/null
cmake --build build-fuzz -j"$jobs" --target memlens_fuzzers
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DMEMLENS_ASAN_BUILD_DIR="$root/build-asan" \
  -DMEMLENS_FUZZ_BUILD_DIR="$root/build-fuzz" >/dev/null
cmake --build build -j"$jobs"
cd build
# Integration tests mostly wait on real time; run a few at once.
exec ctest --output-on-failure -j 4 --timeout 900 "$@"
