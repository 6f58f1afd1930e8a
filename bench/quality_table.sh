#!/usr/bin/env bash
# Quality table: FP vs RTN, OmniQuant, AffineQuant (deployable) and AffineQuant (faithful) on a model,
# with one reduced recipe for every method (default 32 x 256 calibration tokens, 10 epochs), per
# setting and seed. Prints a markdown table of perplexity and KL(FP || quantized) on the eval text.
#
#   bench/quality_table.sh [MODEL_DIR] [CALIB_FILE] [EVAL_FILE] [OUT_DIR]
# Environment: SETTINGS ("w4a16g128 w3a16 w2a16g64 w4a4 w6a6"), METHODS ("rtn omniquant affinequant
# affinequant-faithful"; a method may carry suffixes: +gptq for --rounding gptq (gptq alone is
# --method gptq), +had for --rotate hadamard with --rotate-seed = the seed, e.g. "affinequant+gptq+had"), SEEDS ("2 3"), NSAMPLES (32), SEQLEN (256), EPOCHS (10), JOBS (parallel runs, 2),
# QFORGE (build/jobs/qforge), TOKENIZER (for models without one in their folder), EXTRA (more quantize
# flags, e.g. "--joint-topk 0" for block-wise). Results are appended to OUT_DIR/results.tsv, and runs
# already there are skipped, so the script can be resumed; each run's oscillation.json is kept in
# OUT_DIR/oscillation/. The executable is copied first, so rebuilding during a run does not disturb it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
model="${1:-$root/../shared/data/models/ref-6m}"
calib="${2:-$model/calib.txt}"
evalf="${3:-$model/valid-sample.txt}"
out="${4:-/tmp/qforge-quality}"
src_bin="${QFORGE:-$root/build/jobs/qforge}"
settings="${SETTINGS:-w4a16g128 w3a16 w2a16g64 w4a4 w6a6}"
methods="${METHODS:-rtn omniquant affinequant affinequant-faithful}"
seeds="${SEEDS:-2 3}"
nsamples="${NSAMPLES:-32}" seqlen="${SEQLEN:-256}" epochs="${EPOCHS:-10}" jobs="${JOBS:-2}"
mkdir -p "$out/bin"
cp "$src_bin" "$out/bin/qforge"
cp "$(dirname "$src_bin")/libqforge_spm.so" "$out/bin/"
qforge="$out/bin/qforge"
tok_flag=()
[ -n "${TOKENIZER:-}" ] && tok_flag=(--tokenizer "$TOKENIZER")
results="$out/results.tsv"
touch "$results"

flags_of() {  # setting -> quantize flags
  local s="$1" w a g
  w="${s#w}"; w="${w%%a*}"; a="${s#*a}"; a="${a%%g*}"; g=0
  [[ "$s" == *g* ]] && g="${s##*g}"
  echo "--wbits $w --abits $a --group-size $g"
}

run_one() {  # setting method seed
  local s="$1" m="$2" seed="$3" dir="$out/$1-$2-$3" method extra=""
  grep -q "^$s	$m	$seed	" "$results" && return 0
  method="${m%%+*}"
  [ "$method" = "affinequant-faithful" ] && method=affinequant && extra="--faithful"
  [[ "$m" == *+gptq* ]] && extra="$extra --rounding gptq"
  [[ "$m" == *+had* ]] && extra="$extra --rotate hadamard --rotate-seed $seed"
  local t0
  t0=$(date +%s.%N)
  "$qforge" quantize --model "$model" --out "$dir" --method "$method" $extra $(flags_of "$s") \
    --calib-data "$calib" --nsamples "$nsamples" --calib-seqlen "$seqlen" --seed "$seed" --epochs "$epochs" \
    --threads 1 --log-level warn "${tok_flag[@]}" ${EXTRA:-} > "$dir.log" 2>&1 || { echo "failed: $dir (see $dir.log)" >&2; return 0; }
  local q
  q=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
  local j
  j=$("$qforge" eval --model "$dir" --reference "$model" --data "$evalf" --seqlen "$seqlen" --json --threads 1 \
        --log-level warn "${tok_flag[@]}" 2>/dev/null | tail -1) || { echo "eval failed: $dir" >&2; return 0; }
  local ppl kl
  ppl=$(echo "$j" | grep -o '"ppl":[^,}]*' | cut -d: -f2)
  kl=$(echo "$j" | grep -o '"kl":[^,}]*' | cut -d: -f2)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$s" "$m" "$seed" "$ppl" "$kl" "$q" >> "$results"
  # The per-block loss curve (and, with MRECG, the probe and the selected joint units) is kept.
  mkdir -p "$out/oscillation"
  [ -f "$dir/oscillation.json" ] && cp "$dir/oscillation.json" "$out/oscillation/$s-$m-$seed.json"
  rm -rf "$dir"
}

blocks=$(grep -o '"num_hidden_layers": *[0-9]*' "$model/config.json" | grep -o '[0-9]*$')
fp=$("$qforge" eval --model "$model" --data "$evalf" --seqlen "$seqlen" --json --log-level warn "${tok_flag[@]}" 2>/dev/null | tail -1 |
     grep -o '"ppl":[^,}]*' | cut -d: -f2)
echo "FP perplexity: $fp" > "$out/fp.txt"

for seed in $seeds; do
  for s in $settings; do
    for m in $methods; do
      while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
      run_one "$s" "$m" "$seed" &
    done
  done
done
wait

echo "model $(basename "$model"), FP perplexity $fp; calibration $nsamples x $seqlen tokens, $epochs epochs; seeds $seeds"
echo "cell: perplexity / KL(FP||q) in nats per token (mean over seeds; ± half the seed spread); s/block: quantize"
echo "wall time per block (calibration data, rotation and writing included), mean over the row's runs"
awk -F'\t' -v settings="$settings" -v methods="$methods" -v blocks="$blocks" '
  { k = $1 SUBSEP $2; n[k]++; p[k] += $4; kl[k] += $5; t[$2] += $6; nt[$2]++;
    if (!(k in lo) || $4 < lo[k]) lo[k] = $4; if (!(k in hi) || $4 > hi[k]) hi[k] = $4 }
  END {
    ns = split(settings, S, " "); nm = split(methods, M, " ");
    printf "| method |"; for (i = 1; i <= ns; i++) printf " %s |", S[i]; printf " s/block |\n|---|";
    for (i = 1; i <= ns; i++) printf "---|"; printf "---|\n";
    for (j = 1; j <= nm; j++) { printf "| %s |", M[j];
      for (i = 1; i <= ns; i++) { k = S[i] SUBSEP M[j];
        if (n[k]) printf " %.2f ±%.2f / %.4f |", p[k] / n[k], (hi[k] - lo[k]) / 2, kl[k] / n[k]; else printf " – |" }
      if (nt[M[j]]) printf " %.1f |\n", t[M[j]] / nt[M[j]] / blocks; else printf " – |\n" } }' "$results"
