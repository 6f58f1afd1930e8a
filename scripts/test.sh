#!/usr/bin/env bash
# Builds qforge (scripts/setup.sh) and runs the whole test suite with ctest. Tests read real models
# from ../shared/data; under CI=true missing data fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
build="${QFORGE_BUILD_DIR:-build}"
ctest --test-dir "$build" --output-on-failure -j2 --timeout 600
