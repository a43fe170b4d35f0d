#!/usr/bin/env bash
# Runs one fuzzer for a bounded time over its checked-in corpus:
#   tests/fuzz/run.sh FUZZ_BUILD_DIR NAME SECONDS [extra libFuzzer flags]
# New inputs go to a temporary directory (the corpus in git stays as it is;
# bench/fuzz.sh merges long campaigns into it). A crash fails the run and
# leaves its input under that directory, named in the output.
set -euo pipefail
build=$1 name=$2 seconds=$3
shift 3
here=$(cd "$(dirname "$0")" && pwd)
bin=$build/tests/fuzz/fuzz_$name
[[ -x $bin ]] || { echo "run.sh: $bin is not built" >&2; exit 1; }
work=$(mktemp -d "/tmp/memlens-fuzz-$name.XXXXXX")
seeds=("$here/corpus/$name")
# Fuzzers that read files get a few real ones from this machine as seeds.
if [[ $name == elf ]]; then
  mkdir -p "$work/seed"
  cp /usr/bin/true /lib/x86_64-linux-gnu/libdl.so.2 "$work/seed/" 2>/dev/null || true
  seeds+=("$work/seed")
fi
mkdir -p "$work/new" "$work/crashes"
echo "fuzz_$name: ${seconds}s, new inputs and crashes under $work"
"$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
  -artifact_prefix="$work/crashes/" -print_final_stats=1 "$@" "$work/new" "${seeds[@]}"
