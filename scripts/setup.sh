#!/usr/bin/env bash
# Installs what qforge needs from Debian's packages, then configures and builds it in Release under
# build/. Safe to re-run: packages already present are not reinstalled and the build is incremental.
#   QFORGE_SKIP_APT=1   skip the package step (dependencies installed some other way)
#   QFORGE_BUILD_DIR    build folder (default: build)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(cmake g++ make pkg-config git
  libtorch-dev libopenblas0-pthread        # LibTorch 1.13 (CPU); OpenBLAS makes it ~10x faster than generic BLAS
  libopenmpi-dev openmpi-bin libhdf5-dev libboost-program-options-dev
  googletest libgtest-dev nlohmann-json3-dev libsentencepiece-dev
  slurmctld slurmd slurm-client munge libpmix-dev)  # the slurm test tier (slurm/dev/local-cluster.sh)

if [ "${QFORGE_SKIP_APT:-0}" != "1" ]; then
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "setup: installing ${missing[*]}"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
fi

build="${QFORGE_BUILD_DIR:-build}"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j"$(nproc)"
echo "setup: built $build/jobs/qforge"
