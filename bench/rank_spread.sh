#!/usr/bin/env bash
# The spread that summation order alone gives a whole calibration, against the effect of the rank count
# and the margin over RTN: the job of the mpi test "SequentialOneAndThreeRanks..." (stories260K-hf,
# AffineQuant W3A8, 12 x 64 tokens sampled from the model, global batch 3, 4 epochs), quantized
#   - on 1 rank with 1, 2 and 3 compute threads, each under the BLAS's default kernels and under KNOB
#     (default MKL_CBWR=COMPATIBLE: MKL's other code path; OPENBLAS_CORETYPE=Sandybridge for an OpenBLAS build);
#   - on 3 ranks (1 thread each), and with RTN (no training) for the margin;
# and each result scored on held-out text (stories260K/generated-eval.txt, 25,741 tokens, windows of 64)
# by perplexity and KL(FP || quantized). Prints one TSV row per run and the spreads.
#
#   bench/rank_spread.sh [OUT_DIR]
# Environment: QFORGE (the binary, default build/jobs/qforge); RECIPE (quantize flags of the trained
# method, default that test's); RTN (the RTN flags to compare with, default the same bits).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
data="${QFORGE_SHARED_DATA:-$root/../shared/data}"
model="$data/models/stories260K-hf"
tok="$data/models/stories260K/tok512.bin"
text="$data/models/stories260K/generated-eval.txt"
out="${1:-/tmp/qforge-rank-spread}"
qforge="${QFORGE:-$root/build/jobs/qforge}"
recipe="${RECIPE:---method affinequant --wbits 3 --abits 8 --epochs 4}"
rtn="${RTN:---method rtn --wbits 3 --abits 8}"
read -r -a flags <<< "$recipe --calib-data model:generate --nsamples 12 --calib-seqlen 64 --batch-size 3 --joint-topk 0 --log-level warn"
read -r -a rtn_flags <<< "$rtn --log-level warn"

mpirun=(env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe --bind-to none)
rm -rf "$out"; mkdir -p "$out"

score() {  # name dir
  local j ppl kl
  j=$("$qforge" eval --model "$2" --reference "$model" --data "$text" --tokenizer "$tok" --seqlen 64 --json \
      --threads 1 --log-level warn | tail -1)
  ppl=$(echo "$j" | grep -o '"ppl":[^,}]*' | cut -d: -f2)
  kl=$(echo "$j" | grep -o '"kl":[^,}]*' | cut -d: -f2)
  printf '%s\t%s\t%s\n' "$1" "$ppl" "$kl" | tee -a "$out/results.tsv"
}

printf 'run\tppl\tkl\n' | tee "$out/results.tsv"
knob="${KNOB:-MKL_CBWR=COMPATIBLE}"
for kernels in default "$knob"; do
  setting=()
  [ "$kernels" != default ] && setting=("$kernels")
  for t in 1 2 3; do
    name="np1-t$t-${kernels//=/-}"
    env "${setting[@]}" "$qforge" quantize --model "$model" --out "$out/$name" "${flags[@]}" --threads "$t"
    score "$name" "$out/$name"
  done
done
"${mpirun[@]}" -np 3 "$qforge" quantize --model "$model" --out "$out/np3-t1" "${flags[@]}" --threads 1
score np3-t1 "$out/np3-t1"
"$qforge" quantize --model "$model" --out "$out/rtn" "${rtn_flags[@]}" --threads 1
score rtn "$out/rtn"
awk -F'\t' 'NR > 1 && $1 ~ /^np1/ { if (!n++ || $2 < pl) pl = $2; if ($2 > ph) ph = $2; if (n == 1 || $3 < kl) kl = $3; if ($3 > kh) kh = $3 }
  END { printf "1-rank spread over threads and kernels: ppl %.4f..%.4f (%.2f%%), KL %.5f..%.5f (%.2f%%)\n",
               pl, ph, 100 * (ph - pl) / pl, kl, kh, 100 * (kh - kl) / kl }' "$out/results.tsv"
