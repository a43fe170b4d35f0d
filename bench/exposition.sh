#!/usr/bin/env bash
# bench/exposition.sh BUILD_DIR: what building /metrics costs per published
# snapshot (each tick, collection thread) and per scrape (HTTP thread).
set -euo pipefail
build=${1:?usage: exposition.sh BUILD_DIR}
[[ -x $build/bench/exposition_cost ]] || { echo "exposition.sh: $build/bench/exposition_cost not built" >&2; exit 1; }
"$build/bench/exposition_cost"
echo
echo "Medians; $(nproc) CPUs, kernel $(uname -r). A scrape only serialises its own tail and, with gzip, splices it"
echo "onto the snapshot's gzip stream; a tick only gathers its series, and the text is rendered once per snapshot, by its first scrape."
