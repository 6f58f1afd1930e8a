#!/usr/bin/env bash
# The whole ref-6m quantization job, qforge against the plain-PyTorch baseline, side by side in the same
# run, both from the same HF folder to a quantized HF folder:
#   1. qforge quantize (the issue's recipe: AffineQuant W4A4 faithful, aug loss, sf 0.1, 16 x 256, 5 epochs,
#      block-wise), with a kept job directory: its journal gives every unit's seconds;
#   2. the same qforge job with --epochs 0: each unit's seconds are then qforge's fixed per-unit work
#      (load, read, statistics and targets, losses, fold + quantize, next stream, cache and shard writes);
#      the difference of the two runs' unit seconds is qforge's training time, hence its mean step;
#   3. bench/baseline/plain_job.py with the same flags, which times its own phases;
#   4. the perplexity of both results by both evaluators (qforge eval, plain_eval.py) on the eval text:
#      each result by its own evaluator, and crossed (a check that both folders mean the same model to
#      both programs); the two results differ by training noise only, so their perplexities are close
#      (not equal: the trajectories drift apart after a few hundred steps of float rounding).
# Wall times are measured from outside (process start to exit); peak RSS likewise. Block 0's first-epoch
# loss (same calibration windows, same initialisation) is printed as a check that both do the same work.
#
#   bench/compare_job.sh [OUT_DIR]           (default /tmp/qforge-compare-job)
# Environment: MODEL (ref-6m), CALIB (MODEL/calib.txt), EVAL (MODEL/valid-sample.txt), NSAMPLES (16),
# SEQLEN (256), EPOCHS (5), METHOD (affinequant), WBITS (4), ABITS (4), EXTRA ("--faithful --aug-loss true
# --sf 0.1", flags both programs take), THREADS (2), QFORGE_BUILD_DIR (/tmp/build-pypi).
set -euo pipefail
source "$(dirname "$0")/baseline/common.sh"
out="${1:-/tmp/qforge-compare-job}"
model="${MODEL:-$data/models/ref-6m}"
calib="${CALIB:-$model/calib.txt}"
evalf="${EVAL:-$model/valid-sample.txt}"
read -r -a extra <<< "${EXTRA:---faithful --aug-loss true --sf 0.1}"
threads="${THREADS:-2}" epochs="${EPOCHS:-5}"
common=(--model "$model" --calib-data "$calib" --nsamples "${NSAMPLES:-16}" --calib-seqlen "${SEQLEN:-256}"
        --method "${METHOD:-affinequant}" --wbits "${WBITS:-4}" --abits "${ABITS:-4}" "${extra[@]}" --threads "$threads")
rm -rf "$out"; mkdir -p "$out"
snapshot_bins "$out"
echo "compare_job: $(nproc) cores, load average $(loadavg) at start; results in $out"
l0=$(loadavg)
measure "$out/qforge.json" "$out/qforge.log" "$qforge" quantize "${common[@]}" --epochs "$epochs" --joint-topk 0 \
  --out "$out/qforge-out" --job-dir "$out/qforge-job" --log-level warn
echo "qforge job done (load $(loadavg))"
measure "$out/qforge0.json" "$out/qforge0.log" "$qforge" quantize "${common[@]}" --epochs 0 --joint-topk 0 \
  --out "$out/qforge0-out" --job-dir "$out/qforge0-job" --log-level warn
echo "qforge --epochs 0 job done (load $(loadavg))"
measure "$out/plain.json" "$out/plain.log" "$py" "$baseline/plain_job.py" "${common[@]}" --epochs "$epochs" \
  --out "$out/plain-out"
echo "plain job done (load $(loadavg))"
l1=$(loadavg)
for who in qforge plain; do
  measure "$out/eval-qforge-$who.json" "$out/eval-qforge-$who.out" "$qforge" eval --model "$out/$who-out" \
    --data "$evalf" --seqlen "${SEQLEN:-256}" --threads "$threads" --json --log-level warn
  measure "$out/eval-plain-$who.json" "$out/eval-plain-$who.out" "$py" "$baseline/plain_eval.py" \
    --model "$out/$who-out" --data "$evalf" --seqlen "${SEQLEN:-256}" --threads "$threads" --json
done
l2=$(loadavg)

"$py" - "$out" "$l0" "$l1" "$l2" <<'EOF'
import json, sys
d, l0, l1, l2 = sys.argv[1:5]
ld = lambda n: json.load(open(f"{d}/{n}"))
last = lambda n: json.loads(open(f"{d}/{n}").read().strip().splitlines()[-1])

def units(job):  # seconds of every unit_done record of a qforge journal
    s = {}
    for line in open(f"{d}/{job}/journal.log"):
        r = json.loads(line.rsplit("\t", 1)[0])
        if r.get("type") == "unit_done":
            s[r["unit"]] = r["seconds"]
    return [s[k] for k in sorted(s)]

qm, q0m, pm = ld("qforge.json"), ld("qforge0.json"), ld("plain.json")
u5, u0 = units("qforge-job"), units("qforge0-job")
p = last("plain.log")
B, n = p["blocks"], p["nsamples"]
steps = p["steps"]
q_fixed, q_train = sum(u0) / B, (sum(u5) - sum(u0)) / B
q_step = 1e3 * (sum(u5) - sum(u0)) / steps
p_fixed, p_train = p["fixed_per_block_s"], p["train_s"] / B
# The paper recipe's proportions: 128 samples x 20 epochs per block. Fixed work is per-sample (targets,
# next stream) plus a constant; scaling all of it by the samples overstates it slightly.
k_fixed, k_steps = 128 / n, 128 * 20
share = lambda fixed, step_ms: fixed * k_fixed / (fixed * k_fixed + k_steps * step_ms / 1e3)
qr = json.load(open(f"{d}/qforge-out/calibration_report.json"))["blocks"]
pr = json.load(open(f"{d}/plain-out/plain_report.json"))["blocks"]
ev = {(e, w): last(f"eval-{e}-{w}.out")["ppl"] for e in ("qforge", "plain") for w in ("qforge", "plain")}
et = {(e, w): ld(f"eval-{e}-{w}.json")["wall_s"] for e in ("qforge", "plain") for w in ("qforge", "plain")}
print(f"\n{B} blocks x {n} samples x {p['seqlen']} tokens, {p['recipe']['epochs']} epochs = {steps} steps; "
      f"load average {l0} (start) -> {l1} (jobs done) -> {l2} (evals done)\n")
print("| figure | qforge | plain PyTorch | qforge / plain |")
print("|---|---|---|---|")
row = lambda name, q, pl, fmt: print(f"| {name} | {q:{fmt}} | {pl:{fmt}} | **{q / pl:.2f}** |")
row("whole job wall time (s, process start to exit)", qm["wall_s"], pm["wall_s"], ".2f")
row("fixed work per block (s: all but the optimiser steps)", q_fixed, p_fixed, ".3f")
row("training per block (s)", q_train, p_train, ".2f")
row("optimiser step (ms, mean over the job)", q_step, p["ms_per_step"], ".1f")
print(f"| job outside the blocks (s: start-up, tokenize, assembly / write) | {qm['wall_s'] - sum(u5):.2f} | "
      f"{pm['wall_s'] - p['fixed_s'] - p['train_s']:.2f} | |")
print(f"| projected fixed share of a unit at 128 samples x 20 epochs | {100 * share(q_fixed, q_step):.1f}% | "
      f"{100 * share(p_fixed, p['ms_per_step']):.1f}% | |")
row("peak RSS (MiB)", qm["peak_rss_mib"], pm["peak_rss_mib"], ".0f")
print(f"| block 0 mean loss of epoch 1 (same windows, same start: close) | {qr[0]['epoch_loss'][0]:.6g} | "
      f"{pr[0]['epoch_loss'][0]:.6g} | |")
print(f"| last block final MSE | {qr[-1]['final_loss']:.6g} | {pr[-1]['final_loss']:.6g} | |")
print(f"| perplexity of the result, own evaluator | {ev['qforge', 'qforge']:.4f} | {ev['plain', 'plain']:.4f} | "
      f"{ev['qforge', 'qforge'] / ev['plain', 'plain']:.4f} |")
print(f"| perplexity of the result, other evaluator | {ev['plain', 'qforge']:.4f} | {ev['qforge', 'plain']:.4f} | |")
print(f"| eval wall time of the result, own evaluator (s) | {et['qforge', 'qforge']:.2f} | {et['plain', 'plain']:.2f} | "
      f"{et['qforge', 'qforge'] / et['plain', 'plain']:.2f} |")
EOF
