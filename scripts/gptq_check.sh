#!/usr/bin/env bash
# A GPTQ loader as a client of qforge's GPTQ exports, outside ctest (GPTQModel pins its own torch and builds
# from source, so it gets its own virtual environment): ref-6m quantized three ways, exported with
# `qforge export --format gptq`, scored by `qforge eval` and by transformers loading the folder through
# GPTQModel (tests/interop/client_ppl.py transformers) on the same token windows; a fourth with per-block
# bits (GPTQModel `dynamic` rules, which transformers' path does not read) by GPTQModel.load itself, with
# its torch kernel (the one that takes 8 bits beside 4), which computes in float16/bfloat16 only.
#   bash scripts/gptq_check.sh BUILD_DIR [OUT_DIR]
# Prints one line per export: qforge's perplexity, the loader's, and their ratio. Results of a run are kept
# in bench/results/*-gptq/.
#
# Installing: GPTQModel 7.7.0 is a source distribution; BUILD_CUDA_EXT=0 builds it without CUDA kernels (its
# CPU path is the torch kernel, TorchCpuAvx512Linear on AVX-512 machines). transformers loads GPTQ checkpoints
# through optimum + GPTQModel.
set -euo pipefail
build=${1:?usage: gptq_check.sh BUILD_DIR [OUT_DIR]}
out=${2:-/tmp/qforge-gptq-check}
src=$(cd "$(dirname "$0")/.." && pwd)
qforge="$build/jobs/qforge"
ref="$src/../shared/data/models/ref-6m"
venv=${QFORGE_GPTQ_VENV:-$HOME/.cache/qforge/venv-gptqmodel-7.7.0}

if ! "$venv/bin/python" -c "import gptqmodel, optimum, sentencepiece" 2>/dev/null; then
  python3 -m venv "$venv"
  # sentencepiece: GPTQModel.load also loads the folder's tokenizer (ref-6m's is a SentencePiece model).
  "$venv/bin/pip" install setuptools wheel torch transformers==5.25.0 sentencepiece==0.2.3 protobuf==7.36.2
  BUILD_CUDA_EXT=0 "$venv/bin/pip" install --no-build-isolation gptqmodel==7.7.0 optimum==2.3.0
fi

mkdir -p "$out"
"$qforge" tokenize --data "$ref/valid-sample.txt" --tokenizer "$ref/tokenizer.model" --out "$out/valid.tok" --log-level warn
while IFS='|' read -r name client dtype flags; do
  rm -rf "$out/$name" "$out/$name-gptq"
  "$qforge" quantize --model "$ref" --out "$out/$name" $flags --method rtn --log-level warn > /dev/null
  "$qforge" export --model "$out/$name" --format gptq --out "$out/$name-gptq" --log-level warn
  ours=$("$qforge" eval --model "$out/$name-gptq" --data "$out/valid.tok" --seqlen 128 --json --log-level warn |
    tail -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])')
  theirs=$(HF_HUB_OFFLINE=1 "$venv/bin/python" "$src/tests/interop/client_ppl.py" "$client" "$out/$name-gptq" \
    "$out/valid.tok" 128 "$dtype" 2> "$out/$name-loader.log" | grep '^{"ppl"' | tail -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])')
  versions=$("$venv/bin/python" -c 'from importlib.metadata import version as v
print("transformers %s + GPTQModel %s + optimum %s" % (v("transformers"), v("gptqmodel"), v("optimum")))')
  python3 -c "print(f'$name: qforge eval ppl {$ours:.5f}, $client client ($versions, $dtype) ppl {$theirs:.5f}, ratio {$theirs / $ours:.6f}')"
done <<'EOF2'
w4g64-sym|transformers|float32|--wbits 4 --group-size 64 --sym
w4g64-asym|transformers|float32|--wbits 4 --group-size 64
w3g64-sym|transformers|float32|--wbits 3 --group-size 64 --sym
w4g64-sym-b0w8|gptqmodel|float16|--wbits 4 --group-size 64 --sym --block-override 0:8
EOF2
