#!/usr/bin/env bash
# One calibration step, qforge against the plain-PyTorch baseline, side by side in the same run:
# bench_calib_step and bench/baseline/plain_step.py on the same problem (same seeded synthetic block and
# input, deployable transforms, LET + LWC, epoch 10 of 20's mask), one configuration after the other,
# each in its own process with the same thread count. Prints each pair's ms/step, the ratio qforge/plain
# (below 1: qforge faster) and each one's share of the fp32 [T, H] x [H, I] GEMM rate measured in its own
# process, and the load average around each pair (the machine may be shared).
#
#   bench/compare_step.sh [OUT_DIR]          (default /tmp/qforge-compare-step)
# Environment: CONFIGS (shape:method:wbits:abits ..., default small and 7b x affinequant/omniquant x
# W4A4/W4A16, then 70b:affinequant:4:4), SEQLEN (256), THREADS (2), STEPS_SMALL (20), STEPS_7B (2; the
# 70B shape always runs --steps 1), QFORGE_BUILD_DIR (/tmp/build-pypi). A configuration whose estimated
# memory (about 8 x the block's fp32 weights, as measured for 7b) exceeds MemAvailable is skipped and
# listed as such rather than run into the OOM killer.
set -euo pipefail
source "$(dirname "$0")/baseline/common.sh"
out="${1:-/tmp/qforge-compare-step}"
configs="${CONFIGS:-small:affinequant:4:4 small:affinequant:4:16 small:omniquant:4:4 small:omniquant:4:16 7b:affinequant:4:4 7b:affinequant:4:16 7b:omniquant:4:4 7b:omniquant:4:16 70b:affinequant:4:4}"
seqlen="${SEQLEN:-256}" threads="${THREADS:-2}"
rm -rf "$out"; mkdir -p "$out"
snapshot_bins "$out"
rows="$out/rows.tsv"
: > "$rows"
echo "compare_step: $(nproc) cores, load average $(loadavg) at start; results in $out"
for c in $configs; do
  IFS=: read -r shape method wbits abits <<< "$c"
  case "$shape" in small) steps="${STEPS_SMALL:-20}"; need_gb=1 ;; 7b) steps="${STEPS_7B:-2}"; need_gb=8 ;; 70b) steps=1; need_gb=30 ;; *) echo "unknown shape $shape" >&2; exit 2 ;; esac
  tag="$shape-$method-w${wbits}a${abits}"
  avail_gb=$(awk '/MemAvailable/ {printf "%d", $2 / 1048576}' /proc/meminfo)
  if [ "$avail_gb" -lt "$need_gb" ]; then
    echo "$tag: skipped (needs about $need_gb GiB, $avail_gb GiB available)"
    printf '%s\t%s\t%s\t%s\t%s\tskipped: needs ~%s GiB, %s GiB available\n' "$shape" "$method" "W${wbits}A${abits}" "$steps" "-" "$need_gb" "$avail_gb" >> "$rows"
    continue
  fi
  args=(--shape "$shape" --seqlen "$seqlen" --steps "$steps" --method "$method" --wbits "$wbits" --abits "$abits" --threads "$threads")
  l0=$(loadavg)
  "$bench_calib_step" "${args[@]}" > "$out/qforge-$tag.txt"
  "$py" "$baseline/plain_step.py" "${args[@]}" > "$out/plain-$tag.txt"
  l1=$(loadavg)
  echo "$tag: qforge $(sed -n 2p "$out/qforge-$tag.txt" | cut -d, -f1) | plain $(sed -n 2p "$out/plain-$tag.txt" | cut -d, -f1) (load $l0 -> $l1)"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$shape" "$method" "W${wbits}A${abits}" "$steps" "$out/qforge-$tag.txt" \
    "$out/plain-$tag.txt" "$l0" "$l1" >> "$rows"
done

"$py" - "$rows" <<'EOF'
import json, sys
print("\n| shape | method | bits | steps | qforge ms/step | plain ms/step | qforge / plain | qforge % of GEMM | plain % of GEMM | GEMM GFLOP/s q / p | load before -> after |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    if f[5].startswith("skipped"):
        print(f"| {f[0]} | {f[1]} | {f[2]} | {f[3]} | {f[5]} | | | | | | |")
        continue
    q, p = (json.loads(open(x).read().strip().splitlines()[-1]) for x in (f[4], f[5]))
    print(f"| {f[0]} | {f[1]} | {f[2]} | {f[3]} | {q['ms_per_step']:.1f} | {p['ms_per_step']:.1f} | "
          f"**{q['ms_per_step'] / p['ms_per_step']:.2f}** | {100 * q['fraction_of_gemm']:.1f}% | "
          f"{100 * p['fraction_of_gemm']:.1f}% | {q['gemm_gflops']:.0f} / {p['gemm_gflops']:.0f} | {f[6]} -> {f[7]} |")
EOF
