#!/usr/bin/env bash
# Quickstart on a fresh Debian machine: install and build (scripts/setup.sh), write the built-in demo
# model (a seeded tiny LLaMA with a byte-level tokenizer), inspect it and evaluate it on this repo's
# README. No model is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
build="${QFORGE_BUILD_DIR:-build}"
q="$build/jobs/qforge"
demo="${QFORGE_DEMO_DIR:-demo/tiny}"
"$q" make-synthetic --shape tiny --out "$demo"
"$q" inspect "$demo" --blocks 0
"$q" eval --model "$demo" --data README.md --seqlen 128
