#!/usr/bin/env bash
# bench/run.sh [BUILD_DIR] [SECTION...]: runs the benchmark sections and
# prints their tables. Each section is a script bench/NAME.sh taking the build
# directory and printing a Markdown table; sections run one after the other
# (never in parallel: they measure CPU). Without SECTION arguments every
# bench/*.sh but this one runs, daemon first. Needs root for the eBPF
# sections; the daemon section runs unprivileged too (eBPF collectors off).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build=${1:-$here/../build}
shift || true
if [[ ! -x $build/memlensd || -n ${BENCH_REBUILD:-} ]]; then
  # One command: install what is missing and build, as scripts/run.sh does.
  bash "$here/../scripts/deps.sh"
  cmake -S "$here/.." -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build" -j"$(nproc)" >/dev/null
fi
build=$(cd "$build" && pwd)

if (($#)); then
  sections=("$@")
else
  sections=(daemon)
  for s in "$here"/*.sh; do
    n=$(basename "$s" .sh)
    [[ $n == run || $n == daemon ]] || sections+=("$n")
  done
fi

# The tree measured (the binary's own revision is the one of its last
# configure, which a build directory kept across commits does not refresh).
tree=$(git -C "$here/.." rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -n $(git -C "$here/.." status --porcelain --untracked-files=no 2>/dev/null) ]] && tree="$tree+changes"
echo "# memlens benchmark ($(date -u +%Y-%m-%dT%H:%MZ), tree $tree, $("$build/memlensd" --version 2>/dev/null | head -1))"
status=0
for n in "${sections[@]}"; do
  echo
  echo "## $n"
  echo
  start=$SECONDS
  if ! bash "$here/$n.sh" "$build"; then
    echo "(section $n failed)"
    status=1
  fi
  echo "(section $n took $((SECONDS - start)) s)"
done
exit $status
