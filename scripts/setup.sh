#!/usr/bin/env bash
# Installs what qforge needs, then configures and builds it in Release under build/. Safe to re-run:
# what is present is not installed again and the build is incremental.
#   - Debian's packages: compilers, Open MPI, HDF5, Boost, SentencePiece, PCRE2, utf8proc, GoogleTest, nlohmann-json,
#     OpenSSL, zlib, Slurm (the slurm test tier), Python's venv;
#   - LibTorch from PyPI: the `torch` wheel pinned to the H200's version (2.11.0, a CUDA 13.0 build that runs
#     on CPU-only machines too) in a virtual environment kept outside the tree, so that every clone and CI
#     run on this machine reuses it (the wheel and its nvidia-* dependencies are ~4.6 GB);
#   - the interop test tier's Python clients (transformers, tokenizers, safetensors, compressed-tensors),
#     pinned, in the same environment: test-time oracles only, qforge itself never runs Python.
#   - CUDA code is built whenever that LibTorch has CUDA and nvcc is found (CUDA 13 toolkit, sm_90 + PTX).
# Environment:
#   QFORGE_SKIP_APT=1   skip the package step (dependencies installed some other way)
#   QFORGE_BUILD_DIR    build folder (default: build)
#   QFORGE_VENV         the virtual environment (default: ~/.cache/qforge/venv-torch2.11.0)
#   CUDACXX             nvcc to use (default: nvcc on PATH, else /usr/local/cuda/bin/nvcc)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/torch_env.sh
source scripts/torch_env.sh

packages=(cmake g++ make pkg-config git python3 python3-venv python3-pip
  libopenmpi-dev openmpi-bin libhdf5-dev libboost-program-options-dev
  googletest libgtest-dev nlohmann-json3-dev libsentencepiece-dev libssl-dev zlib1g-dev
  libpcre2-dev libutf8proc-dev  # tokenizer.json: Unicode regexes and normalization
  slurmctld slurmd slurm-client munge libpmix-dev  # the slurm test tier (slurm/dev/local-cluster.sh)
  patchelf)  # scripts/make-device-bundle.sh (the GPU machine's bundle)

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

qforge_torch_venv   # creates the venv and installs torch unless it is there already
qforge_interop_packages  # transformers & co. for the interop test tier (test-time clients only)

build="${QFORGE_BUILD_DIR:-build}"
if [ -f "$build/CMakeCache.txt" ] && ! grep -qx "Torch_DIR:PATH=$(qforge_torch_dir)" "$build/CMakeCache.txt"; then
  echo "setup: $build was configured against another LibTorch; configuring it afresh"
  rm -rf "$build/CMakeCache.txt" "$build/CMakeFiles"
fi
cuda_args=()
nvcc="${CUDACXX:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
[ -x "$nvcc" ] && cuda_args=(-DCMAKE_CUDA_COMPILER="$nvcc")
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$(qforge_torch_prefix_path)" "${cuda_args[@]}"
cmake --build "$build" -j"$(nproc)"
echo "setup: built $build/jobs/qforge against LibTorch $(qforge_torch_version)"
