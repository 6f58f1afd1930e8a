#!/usr/bin/env bash
# Quickstart on a fresh Debian machine: install and build (scripts/setup.sh), write the built-in demo
# model (a seeded tiny LLaMA with a byte-level tokenizer), quantize it with AffineQuant W4A4 on sequences
# sampled from the model itself, and evaluate the result on this repo's README against the FP model.
# No model is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
build="${QFORGE_BUILD_DIR:-build}"
q="$build/jobs/qforge"
demo="${QFORGE_DEMO_DIR:-demo}"
"$q" make-synthetic --shape tiny --out "$demo/tiny"
"$q" inspect "$demo/tiny" --blocks 0
"$q" quantize --model "$demo/tiny" --out "$demo/tiny-w4a4" --method affinequant --wbits 4 --abits 4 \
  --calib-data model:generate --nsamples 16 --calib-seqlen 128 --epochs 2
"$q" eval --model "$demo/tiny-w4a4" --reference "$demo/tiny" --data README.md --seqlen 128
