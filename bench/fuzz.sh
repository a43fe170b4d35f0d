#!/usr/bin/env bash
# Long fuzzing campaigns (the test suite runs each fuzzer for 20 s):
#   bash bench/fuzz.sh [SECONDS_EACH] [NAME...]
# Builds the clang fuzz tree (build-fuzz) if needed, runs each fuzzer, and
# merges the inputs that found new coverage into tests/fuzz/corpus/NAME
# (review and commit them). A crash stops the campaign with its input named.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
shift || true
names=("$@")
if ((${#names[@]} == 0)); then
  for f in tests/fuzz/fuzz_*.cpp; do n=$(basename "$f" .cpp); names+=("${n#fuzz_}"); done
fi
bash scripts/deps.sh
CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g1" \
  -DCMAKE_C_FLAGS_DEBUG="-O1 -g1" -DMEMLENS_FUZZ=ON -DMEMLENS_BUILD_TESTS=OFF >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target memlens_fuzzers >/dev/null
printf '%-12s %10s %12s %8s\n' fuzzer seconds executions merged
for n in "${names[@]}"; do
  out=$(tests/fuzz/run.sh build-fuzz "$n" "$seconds" 2>&1) || { echo "$out" | tail -40; exit 1; }
  work=$(echo "$out" | sed -n "s/^fuzz_$n: .* under \(.*\)$/\1/p")
  runs=$(echo "$out" | sed -n 's/^stat::number_of_executed_units: //p')
  before=$(find "tests/fuzz/corpus/$n" -type f | wc -l)
  "build-fuzz/tests/fuzz/fuzz_$n" -merge=1 "tests/fuzz/corpus/$n" "$work/new" >/dev/null 2>&1
  after=$(find "tests/fuzz/corpus/$n" -type f | wc -l)
  printf '%-12s %10s %12s %8s\n' "$n" "$seconds" "$runs" "$((after - before))"
done
