# Sourced by scripts/setup.sh and scripts/test-audit.sh: where qforge's LibTorch (the PyPI torch wheel) lives.
# One owner of the pinned version and the virtual environment's location.
QFORGE_TORCH_VERSION="2.11.0"
QFORGE_VENV="${QFORGE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/qforge/venv-torch${QFORGE_TORCH_VERSION}}"

# Creates the virtual environment and installs the pinned torch when it is not there yet.
qforge_torch_venv() {
  if "$QFORGE_VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$QFORGE_TORCH_VERSION')" 2>/dev/null; then
    return 0
  fi
  echo "setup: installing torch==$QFORGE_TORCH_VERSION from PyPI into $QFORGE_VENV"
  local t0=$SECONDS
  mkdir -p "$(dirname "$QFORGE_VENV")"
  python3 -m venv "$QFORGE_VENV"
  "$QFORGE_VENV/bin/pip" install -q --disable-pip-version-check "torch==$QFORGE_TORCH_VERSION"
  echo "setup: torch installed in $((SECONDS - t0)) s ($(du -sh "$QFORGE_VENV" | cut -f1))"
}

# The interop tier's Python clients (tests/interop), pinned, in the same environment: transformers as the
# forward oracle and loader, compressed-tensors to load qforge's exports. torch stays at the pinned version.
# sentencepiece + protobuf: transformers converts LLaMA-2's tokenizer.model to a tokenizer.json (tokenizer tests).
QFORGE_INTEROP_PACKAGES=(transformers==5.25.0 tokenizers==0.23.3 safetensors==0.8.0 compressed-tensors==0.20.1
  sentencepiece==0.2.3 protobuf==7.36.2)
qforge_interop_packages() {
  local want
  want=$(printf '%s\n' "${QFORGE_INTEROP_PACKAGES[@]}")
  if [ "$("$QFORGE_VENV/bin/pip" freeze 2>/dev/null | grep -ixF "$want" | wc -l)" -eq ${#QFORGE_INTEROP_PACKAGES[@]} ]; then
    return 0
  fi
  echo "setup: installing ${QFORGE_INTEROP_PACKAGES[*]} from PyPI into $QFORGE_VENV (the interop test tier)"
  "$QFORGE_VENV/bin/pip" install -q --disable-pip-version-check "${QFORGE_INTEROP_PACKAGES[@]}" \
    "torch==$QFORGE_TORCH_VERSION"
}

# CMAKE_PREFIX_PATH for LibTorch: the package root first (so find_library takes its lib/, never a
# system libtorch), then its CMake folder.
qforge_torch_prefix_path() {
  "$QFORGE_VENV/bin/python" -c "import os, torch; print(os.path.dirname(torch.__file__) + ';' + torch.utils.cmake_prefix_path)" 2>/dev/null
}

# The Torch_DIR a build configured against this LibTorch records in its CMakeCache.txt.
qforge_torch_dir() {
  "$QFORGE_VENV/bin/python" -c "import torch; print(torch.utils.cmake_prefix_path + '/Torch')" 2>/dev/null
}

qforge_torch_version() {
  "$QFORGE_VENV/bin/python" -c "import torch; print(torch.__version__)" 2>/dev/null
}
