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
