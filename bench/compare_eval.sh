#!/usr/bin/env bash
# Eval, qforge against the plain-PyTorch baseline, side by side in the same run: `qforge eval` and
# bench/baseline/plain_eval.py on the same model, text and window length (GPTQ protocol), each measured
# from outside (wall time from process start to exit, peak RSS of the process), plus the RSS of each
# runtime doing nothing (`qforge --help`, `python -c "import torch"`: the CUDA-enabled LibTorch alone
# maps a few hundred MiB), so the working set above it can be compared too. The perplexities must agree
# to 1e-4 relative (ref-6m on valid-sample.txt at 256: 50.6474); the script exits 1 when they do not.
#
#   bench/compare_eval.sh [OUT_DIR]          (default /tmp/qforge-compare-eval)
# Environment: MODEL (ref-6m), DATA (MODEL/valid-sample.txt), SEQLEN (256), THREADS (2), BATCH (plain_eval's
# windows per pass, 8), QFORGE_BUILD_DIR (/tmp/build-pypi).
set -euo pipefail
source "$(dirname "$0")/baseline/common.sh"
out="${1:-/tmp/qforge-compare-eval}"
model="${MODEL:-$data/models/ref-6m}"
text="${DATA:-$model/valid-sample.txt}"
seqlen="${SEQLEN:-256}" threads="${THREADS:-2}" batch="${BATCH:-8}"
rm -rf "$out"; mkdir -p "$out"
snapshot_bins "$out"
echo "compare_eval: $(nproc) cores, load average $(loadavg) at start; results in $out"
l0=$(loadavg)
measure "$out/qforge.json" "$out/qforge.out" "$qforge" eval --model "$model" --data "$text" --seqlen "$seqlen" \
  --threads "$threads" --json --log-level warn
measure "$out/plain.json" "$out/plain.out" "$py" "$baseline/plain_eval.py" --model "$model" --data "$text" \
  --seqlen "$seqlen" --threads "$threads" --batch "$batch" --json
l1=$(loadavg)
measure "$out/qforge-idle.json" /dev/null "$qforge" --help
measure "$out/plain-idle.json" /dev/null "$py" -W ignore -c "import torch"

"$py" - "$out" "$l0" "$l1" <<'EOF'
import json, sys
d, l0, l1 = sys.argv[1:4]
ld = lambda n: json.load(open(f"{d}/{n}"))
last = lambda n: json.loads(open(f"{d}/{n}").read().strip().splitlines()[-1])
qm, pm, qi, pi = ld("qforge.json"), ld("plain.json"), ld("qforge-idle.json"), ld("plain-idle.json")
q, p = last("qforge.out"), last("plain.out")
rel = abs(q["ppl"] - p["ppl"]) / p["ppl"]
print(f"\n{q['windows']} windows of {q['seqlen']} ({q['tokens']} tokens); plain: batch {p['batch']}, score phase "
      f"{p['score_s']:.2f} s after {p['import_s']:.2f} s of python/torch import; load average {l0} -> {l1}\n")
print("| figure | qforge | plain PyTorch | qforge / plain |")
print("|---|---|---|---|")
print(f"| eval wall time (s, process start to exit) | {qm['wall_s']:.2f} | {pm['wall_s']:.2f} | **{qm['wall_s'] / pm['wall_s']:.2f}** |")
print(f"| peak RSS (MiB) | {qm['peak_rss_mib']:.0f} | {pm['peak_rss_mib']:.0f} | **{qm['peak_rss_mib'] / pm['peak_rss_mib']:.2f}** |")
print(f"| idle runtime RSS (MiB: `qforge --help`, `import torch`) | {qi['peak_rss_mib']:.0f} | {pi['peak_rss_mib']:.0f} | |")
qa, pa = qm['peak_rss_mib'] - qi['peak_rss_mib'], pm['peak_rss_mib'] - pi['peak_rss_mib']
print(f"| peak RSS above the idle runtime (MiB) | {qa:.0f} | {pa:.0f} | {qa / pa:.2f} |")
print(f"| perplexity | {q['ppl']:.4f} | {p['ppl']:.4f} | rel. diff {rel:.1e} ({'agree' if rel < 1e-4 else 'DISAGREE'}) |")
sys.exit(0 if rel < 1e-4 else 1)
EOF
