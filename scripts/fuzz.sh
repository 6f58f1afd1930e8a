#!/usr/bin/env bash
# Builds qforge's fuzz targets with clang's libFuzzer under ASan/UBSan and runs each for SECONDS (default
# 600), starting from the seed corpus in fuzz/corpus/<target> (new inputs go to build-fuzz/corpus/<target>).
# A finding stops the target and leaves crash-* / leak-* files in build-fuzz; exit status is non-zero.
#   bash scripts/fuzz.sh [SECONDS] [TARGET ...]      (targets: fuzz_journal fuzz_token_file fuzz_safetensors_header)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
seconds="${1:-600}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fuzz_journal fuzz_token_file fuzz_safetensors_header)
build="$root/build-fuzz"
command -v clang++ >/dev/null || { echo "fuzz.sh: needs clang++ (apt-get install clang)" >&2; exit 2; }
cmake -S "$root/fuzz" -B "$build" -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)" --target "${targets[@]}"
for t in "${targets[@]}"; do
  mkdir -p "$build/corpus/$t"
  echo "== $t for ${seconds} s"
  (cd "$build" && "./$t" -max_total_time="$seconds" -print_final_stats=1 "$build/corpus/$t" "$root/fuzz/corpus/$t")
done
