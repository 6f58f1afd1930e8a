# Sourced by bench/compare_*.sh: the qforge build, the Python of the pinned LibTorch and the shared data.
#   QFORGE_BUILD_DIR  qforge build folder (default /tmp/build-pypi): jobs/qforge, bench/bench_calib_step
#   QFORGE_SHARED_DATA  data folder (default <repo>/../shared/data)
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
baseline="$root/bench/baseline"
build="${QFORGE_BUILD_DIR:-/tmp/build-pypi}"
data="${QFORGE_SHARED_DATA:-$root/../shared/data}"
# shellcheck source=../../scripts/torch_env.sh
source "$root/scripts/torch_env.sh"
qforge_torch_venv
py="$QFORGE_VENV/bin/python"
if ! "$py" -c "import sentencepiece" 2>/dev/null; then
  echo "baseline: installing sentencepiece from PyPI into $QFORGE_VENV (plain_job.py and plain_eval.py tokenize with it)"
  "$QFORGE_VENV/bin/pip" install -q --disable-pip-version-check sentencepiece
fi
for bin in "$build/jobs/qforge" "$build/bench/bench_calib_step"; do
  [ -x "$bin" ] || { echo "missing $bin (build qforge, or set QFORGE_BUILD_DIR)" >&2; exit 2; }
done

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
# measure RESULT.json STDOUT_FILE COMMAND...: wall time and peak RSS of the command, measured from outside.
measure() { local res="$1" out="$2"; shift 2; "$py" "$baseline/measure.py" "$res" --stdout "$out" -- "$@"; }
# snapshot_bins DIR: copies qforge (with its SentencePiece module) and bench_calib_step to DIR/bin, so a
# relink of the build during a comparison does not disturb it; sets $qforge and $bench_calib_step.
snapshot_bins() {
  mkdir -p "$1/bin"
  cp "$build/jobs/qforge" "$build/jobs/libqforge_spm.so" "$build/bench/bench_calib_step" "$1/bin/"
  qforge="$1/bin/qforge"
  bench_calib_step="$1/bin/bench_calib_step"
}
