#!/usr/bin/env bash
# Runs the whole test suite once per (compute thread count, BLAS kernel selection) and reports which
# tests fail under which, so that no test depends on one machine's summation order. Every run is
# checked to have used what it claims: the thread count from the "[qforge tests] N compute thread(s)"
# line each test process prints (all of them must say N), the kernel from the BLAS library's own
# report (OPENBLAS_VERBOSE=2 "Core: ..." or MKL_VERBOSE's instruction set).
#
#   scripts/test-audit.sh [--threads "1 2"] [--knob VAR=VALUE,VALUE,...] [-- CTEST ARGS]
#
#   --threads   thread counts, through the suite's knob QFORGE_TEST_THREADS (default "1 2")
#   --knob      the BLAS kernel switch and its values; the value "default" leaves it unset, i.e. the
#               library's own choice. Default MKL_CBWR=COMPATIBLE,default: LibTorch from PyPI calls MKL,
#               and on AMD CPUs MKL_ENABLE_INSTRUCTIONS changes nothing (MKL runs its generic path there;
#               the GEMM fingerprint proves it), while MKL_CBWR=COMPATIBLE selects other kernels. On an
#               Intel CPU, MKL_ENABLE_INSTRUCTIONS=AVX2,default; with an OpenBLAS build,
#               OPENBLAS_CORETYPE=Haswell,Sandybridge.
#   CTEST ARGS  passed to ctest (e.g. -L unit, -R Eval)
# Logs go to $QFORGE_BUILD_DIR/audit/<threads>-<value>/ (ctest's LastTest.log and the BLAS report).
# Exit status: 0 when every run passed and proved its settings.
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/torch_env.sh
source scripts/torch_env.sh
build="${QFORGE_BUILD_DIR:-build}"
threads="1 2"
knob="MKL_CBWR=COMPATIBLE,default"
ctest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --knob) knob="$2"; shift 2 ;;
    --) shift; ctest_args=("$@"); break ;;
    *) echo "test-audit: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
  esac
done
var="${knob%%=*}"
IFS=',' read -r -a values <<< "${knob#*=}"
[ -x "$build/jobs/qforge" ] || { echo "test-audit: build qforge first (scripts/setup.sh)" >&2; exit 2; }

# What the BLAS library says it runs under the current environment. MKL on a non-Intel CPU reports no
# instruction set, so its line is the conditional-numerical-reproducibility mode of a GEMM the tests
# run plus a fingerprint of one GEMM through the same LibTorch (the venv's torch): two selections that
# really differ give two fingerprints.
blas_report() {
  case "$var" in
    OPENBLAS_*) { OPENBLAS_VERBOSE=2 "$build/jobs/qforge" --version 2>&1 || true; } | grep -i "^core" | head -1 |
                grep . || echo "no OpenBLAS report" ;;
    MKL_*)
      local cnr fp
      cnr=$({ MKL_VERBOSE=1 "$build/tests/qforge_unit_tests" --gtest_filter='TeamStep.ATeamOfOne*' 2>&1 || true; } |
            grep -o "CNR:[A-Za-z0-9_]*" | head -1)
      fp=$("$QFORGE_VENV/bin/python" -c "import hashlib, torch; torch.manual_seed(0)
c = torch.randn(257, 511) @ torch.randn(511, 263)
print(hashlib.sha256(str(c.view(torch.int32).flatten().tolist()).encode()).hexdigest()[:12])" 2>/dev/null)
      if [ -n "$cnr" ] && [ -n "$fp" ]; then echo "MKL $cnr, GEMM fingerprint $fp"; else echo "no MKL report"; fi ;;
    *) echo "(no kernel report for $var)" ;;
  esac
}

status=0
summary=()
for t in $threads; do
  for v in "${values[@]}"; do
    tag="t${t}-${v}"
    out="$build/audit/$tag"
    mkdir -p "$out"
    if [ "$v" != "default" ]; then export "$var=$v"; else unset "$var"; fi
    report="$(blas_report)"
    echo "$report" > "$out/blas.txt"
    echo "=== threads $t, $var=${v}: $report"
    QFORGE_TEST_THREADS="$t" ctest --test-dir "$build" -j2 --timeout 900 "${ctest_args[@]}" 2>&1 | tee "$out/ctest.txt" | tail -n 25
    rc=${PIPESTATUS[0]}
    cp "$build/Testing/Temporary/LastTest.log" "$out/LastTest.log" 2>/dev/null
    claimed=$(grep -c "\[qforge tests\] ${t} compute thread(s)" "$out/LastTest.log" || true)
    other=$(grep "\[qforge tests\] [0-9]* compute thread(s)" "$out/LastTest.log" | grep -vc "\] ${t} compute" || true)
    failed=$(grep -E "^\s+[0-9]+ - " "$out/ctest.txt" | sed -E 's/^\s+[0-9]+ - //' | tr '\n' ';')
    line="threads $t, $var=${v} [$report]: ctest exit $rc; $claimed test processes said $t thread(s), $other said otherwise; failed: ${failed:-none}"
    summary+=("$line")
    if [ "$rc" -ne 0 ] || [ "$other" -ne 0 ] || [ "$claimed" -eq 0 ]; then status=1; fi
    case "$report" in no\ *) status=1 ;; esac
  done
done
echo
echo "=== audit summary"
printf '%s\n' "${summary[@]}" | tee "$build/audit/summary.txt"
exit $status
