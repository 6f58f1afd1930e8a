#!/usr/bin/env bash
# One prepared run of qforge on the remote GPU machine (an H200 lent through the workplace's `device` tool),
# from the repo root, as root, in under 6 minutes, that answers everything in one go: every step is logged,
# runs under its own `timeout`, and a failed step does not stop the next.
#
#   bash scripts/device-check.sh [--device cuda|cpu] [--out DIR] [--budget SECONDS] [--unit-filter GTEST_FILTER]
#     --device   cuda (default) on the H200; cpu for the dry run here (same steps, small sizes, quick)
#     --out      where the results go (default $OUT when set, else ./device-out)
#     --budget   wall-clock budget of all steps (default 345 s); a step starts only with >= 20 s left and
#                its timeout is cut to what is left
#     --unit-filter  also run the bundled qforge_unit_tests with this gtest filter (off by default)
#
# BEFORE the call, here: `bash scripts/make-device-bundle.sh /tmp/build-pypi` (or your build folder). It
# writes .device/bundle (binaries + libraries, self-tested with Debian's libraries hidden) and stages the
# models into .device/data (~54 MiB together; a run carries the working tree + carry, 64 MiB at most).
#
# THE CALL (the `run` verb of the device tool; one call, ~7 minutes of the 15-minute device budget):
#   command:   bash scripts/device-check.sh --device cuda
#   carry:     [".device"]
#   timeout_s: 420
# Results come back from $OUT (at most 8 files there, so the logs are packed): summary.txt (PASS/FAIL/SKIP
# per step, wall times, key figures), figures.json (every figure by step), all-logs.txt (every step's log,
# each cut to its last 256 kB), logs.tar.gz (the full logs and JSON), gpu_tests.json (gtest's report).
# Then call give_back unless rerunning at once.
#
# Steps: env (machine, glibc/GLIBCXX against what the bundle needs, nvidia-smi, python3's torch, ldd of every
# bundled binary: any "not found" fails it), gpu_tests (the bundled gpu tier, skipped when not built),
# bench_7b / bench_70b (bench_calib_step: ms/step, % of the same-shape and of a bf16 8192^3 GEMM, peak GPU
# memory; the 7B steps also profiled: GPU kernels and host<->device copies by device time, trace in the logs),
# stories_1rank / ref6m_1rank (AffineQuant W4A4 quantize + eval
# against the FP model, timed), stories_2rank (the stories job under `mpirun -np 2` on the one GPU, NCCL over
# sockets on lo with a distinct NCCL_HOSTID per rank, NCCL_DEBUG=INFO, compared with stories_1rank),
# bench_7b_bf16 and fake_quant_7b (fused kernels against the unfused ops; if time is left). The binaries
# come from .device/bundle (env.sh: Open MPI relocated with OPAL_PREFIX, LibTorch/CUDA/NCCL from the
# machine's own torch wheel), the models from .device/data.
#
# The first call there is also the proof that binaries built on Debian 12 (glibc 2.36, GCC 12's libstdc++)
# load on that image: step env prints its glibc and GLIBCXX versions next to the newest ones the bundle needs
# (from .device/bundle/build-info.txt) and the `ldd` resolution of every bundled binary.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
repo=$(pwd)

device=cuda
outdir="${OUT:-./device-out}"
budget=345
unit_filter=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --device=*) device=${1#*=}; shift ;;
    --out) outdir=$2; shift 2 ;;
    --out=*) outdir=${1#*=}; shift ;;
    --budget) budget=$2; shift 2 ;;
    --unit-filter) unit_filter=$2; shift 2 ;;
    -h|--help) sed -n '2,40p' "$0"; exit 0 ;;
    *) echo "device-check: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$device" in cuda|cpu) ;; *) echo "device-check: --device must be cuda or cpu" >&2; exit 2 ;; esac

t_start=$(date +%s)
deadline=$((t_start + budget))
bundle="$repo/.device/bundle"
data="$repo/.device/data"
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
work="${TMPDIR:-/tmp}/qforge-device-check.$$"
logs="$work/logs"
rm -rf "$work"; mkdir -p "$logs"
summary="$outdir/summary.txt"
rm -f "$outdir"/{summary.txt,figures.json,all-logs.txt,logs.tar.gz,gpu_tests.json}
declare -a summary_lines=()

# ---------------------------------------------------------------- environment for every step
orig_ld="${LD_LIBRARY_PATH:-}"
# the python3 whose torch provides LibTorch/CUDA/NCCL: the device image's python3; here the project's venv
py=""
for cand in "${QFORGE_PYTHON:-}" python3 /opt/torch/.venv/bin/python3 "${QFORGE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/qforge/venv-torch2.11.0}/bin/python"; do
  [ -n "$cand" ] || continue
  if "$cand" -c 'import torch' >/dev/null 2>&1; then py=$(command -v "$cand"); break; fi
done
jpy=$(command -v python3 || echo "$py")   # JSON handling only
export QFORGE_PYTHON="$py"
bundle_ok=1
if [ -f "$bundle/env.sh" ]; then
  chmod +x "$bundle"/bin/* 2>/dev/null   # in case the copy to the machine dropped the executable bits
  # shellcheck disable=SC1091
  source "$bundle/env.sh"
else
  bundle_ok=0
fi
qf="$bundle/bin/qforge"
export QFORGE_SHARED_DATA="$data"   # tests/support/test_data.h: the root holding models/...
unset CI                            # missing data skips (not fails) tests
m="$data/models"

# ---------------------------------------------------------------- helpers
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
json_last() { grep -E '^\{.*\}\s*$' "$1" | tail -1; }   # the last line of a log that is a JSON object

fig() { printf '%s\n' "$*" >> "$logs/$cur.fig"; }       # a key figure of the current step (summary line)
figjson() { printf '%s\t%s\n' "$1" "$2" >> "$logs/$cur.figjson"; }   # key<TAB>json, for figures.json

pack() {  # everything so far into $outdir: summary.txt, figures.json, all-logs.txt, logs.tar.gz
  {
    echo "qforge device check: device=$device, started $(date -u -d "@$t_start" +%Y-%m-%dT%H:%M:%SZ), $(secs "$t_start" "$(now)") s so far, budget ${budget} s"
    echo "host $(hostname 2>/dev/null), $(nproc) cores; bundle $(sed -n 's/^built: \([^ ]*\).*/built \1/p; s/^source: .* @ /from /p' "$bundle/build-info.txt" 2>/dev/null | paste -sd' ')"
    printf '%-15s %-7s %7s  %s\n' STEP RESULT WALL FIGURES
    printf '%s\n' "${summary_lines[@]}"
  } > "$summary"
  "$jpy" - "$logs" > "$outdir/figures.json" <<'PY' 2>/dev/null || true
import json, os, sys
d = sys.argv[1]; out = {}
for f in sorted(os.listdir(d)):
    if not f.endswith(".figjson"): continue
    step = f[:-8]; out[step] = {}
    for line in open(os.path.join(d, f)):
        k, _, v = line.rstrip("\n").partition("\t")
        try: out[step][k] = json.loads(v)
        except Exception: out[step][k] = v
print(json.dumps(out, indent=1, sort_keys=True))
PY
  : > "$outdir/all-logs.txt"
  local f
  while IFS= read -r f; do
    { echo "=================== $(basename "$f") ($(stat -c %s "$f") bytes; last 256 kB)"; tail -c 262144 "$f"; echo; } >> "$outdir/all-logs.txt"
  done < <(ls -tr "$logs"/*.log 2>/dev/null)   # in the order they were written (names are ours: no spaces)
  tar -C "$work" -czf "$outdir/logs.tar.gz" logs 2>/dev/null || true
}

# run_step NAME TIMEOUT FUNCTION: runs FUNCTION in a child bash under timeout (the whole process group is
# killed at the limit), its output in logs/NAME.log; FUNCTION returns 0 (PASS), 77 (SKIP) or else (FAIL).
run_step() {
  local name=$1 limit=$2 fn=$3 left rc t0 t1 res figs
  cur=$name
  left=$((deadline - $(date +%s)))
  if [ "$left" -lt 20 ]; then
    summary_lines+=("$(printf '%-15s %-7s %7s  %s' "$name" SKIP - "out of the ${budget} s budget")")
    pack; return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "device-check: [$name] up to ${limit} s"
  t0=$(now)
  cur=$name timeout -k 10 "$limit" bash -c "$fn" > "$logs/$name.log" 2>&1 < /dev/null
  rc=$?
  t1=$(now)
  case $rc in
    0) res=PASS ;;
    77) res=SKIP ;;
    124|137) res=TIMEOUT; echo "device-check: [$name] killed at its ${limit} s limit" >> "$logs/$name.log" ;;
    *) res=FAIL ;;
  esac
  figs=$(awk 'NR > 1 {printf "; "} {printf "%s", $0}' "$logs/$name.fig" 2>/dev/null)
  [ $rc != 0 ] && [ $rc != 77 ] && figs="rc $rc${figs:+; $figs}"
  summary_lines+=("$(printf '%-15s %-7s %6ss  %s' "$name" "$res" "$(secs "$t0" "$t1")" "$figs")")
  echo "device-check: [$name] $res in $(secs "$t0" "$t1") s${figs:+: $figs}"
  pack
}
export -f now secs json_last fig figjson
export logs work device qf m data bundle py jpy orig_ld repo outdir

# sizes: the H200 gets the real ones; the dry run here (2 shared cores) tiny ones that exercise the same path
if [ "$device" = cuda ]; then
  export BENCH_ARGS="--seqlen 2048 --steps 5" BENCH_SHAPE_7B=7b BENCH_SHAPE_70B=70b
  export Q_STORIES="--nsamples 32 --calib-seqlen 256 --epochs 2 --batch-size 2" E_STORIES="--seqlen 128"
  export Q_REF6M="--nsamples 32 --calib-seqlen 256 --epochs 2 --batch-size 2" E_REF6M="--seqlen 256"
else
  export BENCH_ARGS="--seqlen 64 --steps 1" BENCH_SHAPE_7B=small BENCH_SHAPE_70B=small
  export Q_STORIES="--nsamples 4 --calib-seqlen 64 --epochs 1 --batch-size 2" E_STORIES="--seqlen 128 --max-windows 16"
  export Q_REF6M="--nsamples 2 --calib-seqlen 64 --epochs 1 --batch-size 2" E_REF6M="--seqlen 256 --max-windows 8"
fi
# quantize's --device is being added: pass it only when the bundled build knows it (else say so)
export QDEV=""
qhelp=$("$qf" quantize --help 2>/dev/null || true)   # (not piped into grep -q: pipefail + SIGPIPE)
case "$qhelp" in *--device*) QDEV="--device $device" ;; esac

# GPU memory/utilisation sampled once a second for the whole run (peak figures in the env step's file)
mon_pid=""
if [ "$device" = cuda ] && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu,power.draw,clocks.sm --format=csv,noheader -l 1 \
    > "$logs/gpu-monitor.csv" 2>/dev/null &
  mon_pid=$!
fi

# ---------------------------------------------------------------- a. environment
step_env() {
  rc=0
  echo "## date"; date -u; echo "## uname"; uname -a; cat /etc/os-release 2>/dev/null | head -4
  echo "## cores/memory"; nproc; free -g 2>/dev/null | head -2; df -h /tmp 2>/dev/null | tail -1
  glibc=$(ldd --version 2>&1 | head -1 | grep -oE '[0-9]+\.[0-9]+$')
  echo "## glibc: $(ldd --version 2>&1 | head -1)"
  need_glibc=$(sed -n 's/^needs_glibc: GLIBC_//p' "$bundle/build-info.txt" 2>/dev/null)
  need_cxx=$(sed -n 's/^needs_glibcxx: GLIBCXX_//p' "$bundle/build-info.txt" 2>/dev/null)
  stdcxx=$(ldconfig -p 2>/dev/null | awk '/libstdc[+][+][.]so[.]6 .*x86-64/ {print $NF; exit}')
  [ -n "$stdcxx" ] || stdcxx=$(ls /usr/lib/x86_64-linux-gnu/libstdc++.so.6 2>/dev/null)
  have_cxx=$(grep -aoE 'GLIBCXX_3\.4\.[0-9]+' "$stdcxx" 2>/dev/null | sort -u -V | tail -1 | sed 's/GLIBCXX_//')
  echo "## libstdc++: $stdcxx provides up to GLIBCXX_$have_cxx; the bundle needs GLIBCXX_$need_cxx and GLIBC_$need_glibc"
  ok_glibc=$(printf '%s\n%s\n' "$need_glibc" "$glibc" | sort -V | tail -1)
  ok_cxx=$(printf '%s\n%s\n' "$need_cxx" "$have_cxx" | sort -V | tail -1)
  [ "$ok_glibc" = "$glibc" ] || { echo "FAIL: glibc $glibc < $need_glibc"; rc=1; }
  [ "$ok_cxx" = "$have_cxx" ] || { echo "FAIL: GLIBCXX $have_cxx < $need_cxx"; rc=1; }
  fig "glibc $glibc (needs $need_glibc); GLIBCXX $have_cxx (needs $need_cxx)"
  echo "## nvidia-smi"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,compute_mode,mig.mode.current --format=csv
    fig "GPU $(nvidia-smi --query-gpu=name,driver_version,compute_mode --format=csv,noheader | head -1)"
  else
    echo "(no nvidia-smi)"
  fi
  echo "## python3 torch ($py)"
  if [ -n "$py" ]; then
    tj=$(env LD_LIBRARY_PATH="$orig_ld" "$py" -c 'import json, torch, sys
print(json.dumps({"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
  "cuda_available": torch.cuda.is_available(), "gpus": torch.cuda.device_count(),
  "name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
  "nccl": ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else None}))' 2>&1 | tail -1)
    echo "$tj"; figjson torch "$tj"
    fig "torch $(echo "$tj" | "$jpy" -c 'import json,sys; d=json.load(sys.stdin); print(d["torch"], "cuda_available=%s gpus=%s" % (d["cuda_available"], d["gpus"]))' 2>/dev/null)"
  else
    echo "FAIL: no python3 with torch"; rc=1
  fi
  echo "## bundle: $(head -3 "$bundle/build-info.txt" 2>/dev/null | tr '\n' ' ')"
  cat "$bundle/build-info.txt" 2>/dev/null
  echo "## env.sh: LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  env | grep -E '^(OPAL|PMIX|OMPI)_' | sort
  unresolved=0
  for f in "$bundle"/bin/* "$bundle"/lib/libqforge_spm.so; do
    [ -f "$f" ] || continue
    echo "## ldd $(basename "$f")"
    out=$(ldd "$f" 2>&1); echo "$out"
    if echo "$out" | grep -q "not found"; then unresolved=$((unresolved + 1)); echo "FAIL: $(basename "$f") has unresolved libraries"; fi
  done
  [ $unresolved = 0 ] || rc=1
  fig "ldd: $([ $unresolved = 0 ] && echo 'all bundled binaries resolve' || echo "$unresolved binaries with 'not found'")"
  echo "## qforge --version"; "$qf" --version || rc=1
  echo "## mpirun --version"; mpirun --version 2>&1 | head -2
  echo "## ompi_info --path all"; ompi_info --path all 2>&1 | grep -E 'Prefix|Pkglibdir|Pkgdatadir|Sysconfdir'
  [ -n "$QDEV" ] || { echo "NOTE: this qforge's quantize has no --device option: its quantize steps run without it"; fig "quantize has no --device in this build"; }
  return $rc
}
export -f step_env

# ---------------------------------------------------------------- b. the gpu test tier
link_compiled_paths() {
  # the test binaries have the build's qforge path and source dir compiled in: make them exist here
  local qb sd
  qb=$(sed -n 's/^qforge_binary_compiled: //p' "$bundle/build-info.txt")
  sd=$(sed -n 's/^source_dir_compiled: //p' "$bundle/build-info.txt")
  if [ -n "$qb" ] && [ ! -e "$qb" ]; then mkdir -p "$(dirname "$qb")" && ln -s "$bundle/bin/qforge" "$qb" && echo "linked $qb -> bundle qforge"; fi
  if [ -n "$sd" ] && [ ! -e "$sd" ]; then mkdir -p "$(dirname "$sd")" && ln -s "$repo" "$sd" && echo "linked $sd -> $repo"; fi
  return 0
}
step_gpu_tests() {
  local t="$bundle/bin/qforge_gpu_tests"
  [ -x "$t" ] || { echo "no qforge_gpu_tests in the bundle (not built when it was made)"; fig "not in the bundle"; return 77; }
  link_compiled_paths
  [ "$device" = cuda ] && export QFORGE_TEST_THREADS=8
  "$t" --gtest_output="json:$work/gpu_tests.json" --gtest_color=no
  local rc=$?
  cp "$work/gpu_tests.json" "$outdir/gpu_tests.json" 2>/dev/null
  cp "$work/gpu_tests.json" "$logs/gpu_tests.json" 2>/dev/null
  local counts
  counts=$("$jpy" - "$work/gpu_tests.json" <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1])); p = f = s = 0; failed = []
for suite in d.get("testsuites", []):
    for t in suite.get("testsuite", []):
        if t.get("failures"): f += 1; failed.append(suite["name"] + "." + t["name"])
        elif t.get("result") == "SKIPPED" or t.get("status") == "NOTRUN": s += 1
        else: p += 1
print(f"{p+f+s} tests: {p} passed, {f} failed, {s} skipped" + (" (failed: " + ", ".join(failed[:6]) + ")" if failed else ""))
PY
)
  fig "${counts:-no JSON report}"
  return $rc
}
step_unit_tests() {
  local t="$bundle/bin/qforge_unit_tests"
  [ -x "$t" ] || { fig "not in the bundle"; return 77; }
  link_compiled_paths
  "$t" --gtest_filter="$UNIT_FILTER" --gtest_color=no --gtest_brief=1
  local rc=$?
  fig "filter $UNIT_FILTER: rc $rc"
  return $rc
}
export -f link_compiled_paths step_gpu_tests step_unit_tests

# ---------------------------------------------------------------- c. calibration-step benchmarks
bench() {  # shape dtype [extra bench_calib_step arguments]
  local b="$bundle/bin/bench_calib_step" shape=$1 dtype=$2
  shift 2
  [ -x "$b" ] || { fig "bench_calib_step not in the bundle"; return 77; }
  echo "+ bench_calib_step --shape $shape --compute-dtype $dtype --device $device $BENCH_ARGS $*"
  # shellcheck disable=SC2086
  "$b" --shape "$shape" --compute-dtype "$dtype" --device "$device" $BENCH_ARGS "$@"
  local rc=$? j
  j=$(json_last "$logs/$cur.log")
  if [ -n "$j" ]; then
    figjson bench "$j"
    fig "$(echo "$j" | "$jpy" -c 'import json,sys; d=json.load(sys.stdin)
line = "%s on %s %s: %.1f ms/step, %.0f tok/s, %.1f%% of GEMM (%.0f GFLOP/s), paper block %.0f s" % (d.get("shape"), d.get("device","?"),
  d.get("compute_dtype","?"), d["ms_per_step"], d["tokens_per_s"], 100*d["fraction_of_gemm"], d["gemm_gflops"], d["paper_block_s"])
if "paper_model_h" in d:
  line += " (model of %d blocks %.2f h)" % (d["model_blocks"], d["paper_model_h"])
if "fraction_of_bf16_gemm" in d:
  line += "; %.1f%% of bf16 GEMM (%.0f GFLOP/s); peak %.0f MiB" % (100*d["fraction_of_bf16_gemm"], d["bf16_gemm_gflops"], d["peak_device_mib"])
p = d.get("profile")
if p:
  line += "; profiled: busy %.1f ms, H2D %.2f ms, D2H %.2f ms, top: %s" % (p["busy_ms"], p["h2d_ms"], p["d2h_ms"],
    ", ".join("%s %.1f ms" % (r["name"][:40], r["ms"]) for r in p["top"][:3]))
print(line)' 2>/dev/null)"
    if [ "$device" = cuda ] && ! echo "$j" | grep -q '"device":"cuda'; then fig "NOT on the GPU (this bench_calib_step ignores --device?)"; rc=1; fi
  else  # an older bench_calib_step prints no JSON line (nor knows --device/--compute-dtype)
    fig "no JSON line (older bench_calib_step?): $(grep -m1 -oE 'calibration step: [0-9.]+ ms/step.*' "$logs/$cur.log" | cut -c1-120)"
    [ "$device" = cuda ] && rc=1
  fi
  return $rc
}
step_bench_7b() { bench "$BENCH_SHAPE_7B" fp32 --profile "$logs/bench_7b-trace.json"; }
step_bench_70b() { bench "$BENCH_SHAPE_70B" fp32; }
step_bench_7b_bf16() { bench "$BENCH_SHAPE_7B" bf16 --profile "$logs/bench_7b_bf16-trace.json"; }
export -f bench step_bench_7b step_bench_70b step_bench_7b_bf16

# The fused fake-quant kernels against LibTorch's unfused ops on the 7B shapes (what fusion buys here;
# the small shape in the CPU dry run, like the step benchmarks).
step_fake_quant_7b() {
  local b="$bundle/bin/bench_fake_quant"
  [ -x "$b" ] || { fig "bench_fake_quant not in the bundle"; return 77; }
  echo "+ bench_fake_quant --shape $BENCH_SHAPE_7B --device $device --reps 5"
  "$b" --shape "$BENCH_SHAPE_7B" --device "$device" --reps 5
  local rc=$?
  fig "$(grep -E '^\| (weight|activation)' "$logs/$cur.log" | awk -F'|' '{printf "%s fused/unfused fwd+bwd %s; ", $2, $8}')"
  return $rc
}
export -f step_fake_quant_7b

# ---------------------------------------------------------------- d/e. quantize + eval
# quantize_eval TAG NRANKS MODEL CALIB_ARGS QUANT_ARGS EVAL_ARGS
quantize_eval() {
  local tag=$1 np=$2 model=$3 calib=$4 qargs=$5 eargs=$6 rc t0 t1 j launcher=()
  local dir="$work/$tag"
  rm -rf "$dir"; mkdir -p "$dir"
  if [ "$np" -gt 1 ]; then
    # two ranks on one GPU: NCCL refuses two ranks of one host on one GPU, so each rank claims its own
    # host (NCCL_HOSTID) and they talk through the socket transport on the loopback interface
    cat > "$work/rankwrap.sh" <<'EOF'
#!/usr/bin/env bash
export NCCL_HOSTID="host-${OMPI_COMM_WORLD_RANK:-0}"
exec "$@"
EOF
    export NCCL_SOCKET_IFNAME=lo NCCL_DEBUG=INFO NCCL_IB_DISABLE=1
    launcher=(mpirun -np "$np" --oversubscribe --allow-run-as-root --bind-to none -x NCCL_SOCKET_IFNAME -x NCCL_DEBUG
              -x NCCL_IB_DISABLE bash "$work/rankwrap.sh")
  fi
  echo "+ ${launcher[*]} qforge quantize --model $model --out $dir/q $QDEV --method affinequant --wbits 4 --abits 4 $calib $qargs"
  t0=$(now)
  # shellcheck disable=SC2086
  "${launcher[@]}" "$qf" quantize --model "$model" --out "$dir/q" --job-dir "$dir/job" $QDEV --method affinequant \
    --wbits 4 --abits 4 $calib $qargs
  rc=$?
  t1=$(now)
  fig "quantize ${np} rank(s) $(secs "$t0" "$t1") s (rc $rc)"
  local pat l
  for pat in 'rank 0 computes on [^ ;]+( in [a-z0-9]+)?' 'team of [0-9]+ reduces over [A-Za-z]+'; do
    l=$(grep -m1 -oE "$pat" "$logs/$cur.log"); [ -n "$l" ] && fig "$l"
  done
  figjson quantize_s "$(secs "$t0" "$t1")"
  [ $rc = 0 ] || return $rc
  echo "+ qforge eval --model $dir/q --reference $model --device $device --json $eargs"
  t0=$(now)
  # shellcheck disable=SC2086
  "$qf" eval --log-level warn --model "$dir/q" --reference "$model" --device "$device" --json $eargs > "$dir/eval.out"
  rc=$?
  t1=$(now)
  cat "$dir/eval.out"
  j=$(json_last "$dir/eval.out")
  figjson eval_s "$(secs "$t0" "$t1")"
  [ -n "$j" ] && { figjson eval "$j"; echo "$j" > "$work/$tag.eval.json"; }
  fig "eval $(secs "$t0" "$t1") s: $(echo "$j" | "$jpy" -c 'import json,sys; d=json.load(sys.stdin); print("ppl %.4f kl %.5f top1 %.4f" % (d["ppl"], d["kl"], d["top1"]))' 2>/dev/null)"
  return $rc
}
step_stories_1rank() {
  quantize_eval stories_1rank 1 "$m/stories260K-hf" "--calib-data model:generate --tokenizer $m/stories260K/tok512.bin" \
    "$Q_STORIES" "--data $m/stories260K/generated-eval.txt --tokenizer $m/stories260K/tok512.bin $E_STORIES"
}
step_ref6m_1rank() {
  quantize_eval ref6m_1rank 1 "$m/ref-6m" "--calib-data $m/ref-6m/calib.txt" "$Q_REF6M" "--data $m/ref-6m/valid-sample.txt $E_REF6M"
}
step_stories_2rank() {
  quantize_eval stories_2rank 2 "$m/stories260K-hf" "--calib-data model:generate --tokenizer $m/stories260K/tok512.bin" \
    "$Q_STORIES" "--data $m/stories260K/generated-eval.txt --tokenizer $m/stories260K/tok512.bin $E_STORIES"
  local rc=$?
  echo "## NCCL lines: $(grep -c 'NCCL INFO' "$logs/$cur.log") (first ones below)"
  grep -m 12 -E 'NCCL INFO (NCCL version|Bootstrap|comm |Channel 00|Connected|Using network|cudaDriverVersion)' "$logs/$cur.log"
  grep -q 'NCCL INFO' "$logs/$cur.log" && fig "NCCL used ($(grep -m1 -oE 'NCCL version [0-9.]+' "$logs/$cur.log"))"
  if [ -f "$work/stories_1rank.eval.json" ] && [ -f "$work/stories_2rank.eval.json" ]; then
    local cmp
    cmp=$("$jpy" - "$work/stories_1rank.eval.json" "$work/stories_2rank.eval.json" <<'PY' 2>/dev/null
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
print("1 rank: ppl %.4f kl %.5f top1 %.4f | 2 ranks: ppl %.4f kl %.5f top1 %.4f | kl 2r/1r %.3f" %
      (a["ppl"], a["kl"], a["top1"], b["ppl"], b["kl"], b["top1"], b["kl"] / a["kl"] if a["kl"] else float("nan")))
PY
)
    fig "$cmp"; figjson compare "\"$cmp\""
  fi
  return $rc
}
export -f quantize_eval step_stories_1rank step_ref6m_1rank step_stories_2rank

# ---------------------------------------------------------------- run
echo "device-check: device=$device, results in $outdir, logs in $logs, budget ${budget} s"
if [ $bundle_ok = 0 ]; then
  echo "device-check: no $bundle/env.sh: run scripts/make-device-bundle.sh first (and carry .device)" | tee "$logs/setup.log"
  summary_lines+=("$(printf '%-15s %-7s %7s  %s' bundle FAIL - "no .device/bundle (carry .device after scripts/make-device-bundle.sh)")")
  pack; exit 1
fi
run_step env 45 step_env
run_step gpu_tests 130 step_gpu_tests
if [ -n "$unit_filter" ]; then export UNIT_FILTER="$unit_filter"; run_step unit_tests 90 step_unit_tests; fi
run_step bench_7b 60 step_bench_7b
run_step bench_70b 70 step_bench_70b
run_step stories_1rank 60 step_stories_1rank
run_step stories_2rank 75 step_stories_2rank
run_step ref6m_1rank 70 step_ref6m_1rank
run_step bench_7b_bf16 50 step_bench_7b_bf16
run_step fake_quant_7b 30 step_fake_quant_7b

if [ -n "$mon_pid" ]; then
  kill "$mon_pid" 2>/dev/null; wait "$mon_pid" 2>/dev/null
  peak=$(awk -F', ' '{gsub(/ MiB/,"",$2); gsub(/ %/,"",$3); if ($2+0>m) m=$2+0; if ($3+0>u) u=$3+0} END {printf "peak GPU memory %d MiB, peak utilisation %d%%", m, u}' "$logs/gpu-monitor.csv")
  summary_lines+=("$(printf '%-15s %-7s %7s  %s' gpu_monitor - - "$peak")")
fi
total=$(secs "$t_start" "$(now)")
summary_lines+=("total wall time ${total} s")
pack
cat "$summary"
fails=$(printf '%s\n' "${summary_lines[@]}" | grep -cE '^[a-z0-9_]+ +(FAIL|TIMEOUT) ' || true)
rm -rf "$work"   # quantized models, job folders, logs: the logs are in $outdir/logs.tar.gz
[ "$fails" = 0 ]
