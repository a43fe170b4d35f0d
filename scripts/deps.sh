#!/usr/bin/env bash
# Installs the Debian packages memlens builds, runs and tests with, when any is
# missing (apt-get update once, then one apt-get install).
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config git
  clang llvm libclang-rt-14-dev libbpf-dev bpftool libelf-dev libdw-dev zlib1g-dev
  prometheus-cpp-dev libyaml-cpp-dev libre2-dev libspdlog-dev libfmt-dev libboost-dev
  nlohmann-json3-dev libcurl4-openssl-dev libssl-dev libcrypt-dev openssl
  googletest libgtest-dev
  prometheus libcap2-bin procps
  openjdk-17-jdk-headless nodejs python3.11 binutils
  systemd util-linux curl
  libjemalloc-dev libtcmalloc-minimal4 libmimalloc2.0 bpftrace heaptrack bc
  golang-go systemtap-sdt-dev rustc
  postgresql chromium fonts-dejavu-core
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "memlens: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
