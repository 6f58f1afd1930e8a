#!/usr/bin/env bash
# Packs what the remote GPU machine (an H200 lent through the workplace's `device` tool) needs to run qforge
# built HERE, and stages the test data beside it, into the ignored folder .device/ that a `run` call carries.
#
#   bash scripts/make-device-bundle.sh [BUILD_DIR] [OUT_DIR]      (as root, for the self-test's unshare)
#     BUILD_DIR  default $QFORGE_BUILD_DIR, else build
#     OUT_DIR    default .device/bundle
#   Environment: QFORGE_SHARED_DATA   data root to stage from (default <repo>/../shared/data)
#                QFORGE_BUNDLE_MAX_MIB  size limit of the bundle (default 30; exit 2 above it)
#                QFORGE_BUNDLE_NO_DATA=1  skip the data staging
#                QFORGE_BUNDLE_NO_VERIFY=1  skip the self-test
#                QFORGE_BUNDLE_REAL_CURL=1  bundle HDF5's real libcurl chain instead of the shim
#
# Why: the device machine (Ubuntu-like image, Python 3.12 with torch 2.11.0+cu130 and its nvidia-* wheels,
# no Debian Open MPI/HDF5/Boost/SentencePiece, no network) cannot build or install qforge's dependencies.
# The bundle holds the binaries and every shared library they need that the machine lacks; LibTorch, CUDA,
# NCCL (and torch's libgomp) come from that machine's own torch wheel, which is the same version as the
# wheel the build linked (scripts/torch_env.sh), found at run time through LD_LIBRARY_PATH set by env.sh.
#
# Layout (.device/bundle):
#   bin/      qforge, bench_calib_step, qforge_gpu_tests and qforge_unit_tests when built (and when they
#             fit), mpirun/mpiexec/orterun (copies of Debian's orterun), orted, ompi_info
#   lib/      the libraries (named by SONAME): Open MPI 4.1 (libmpi, open-rte, open-pal, common), PMIx 4.2,
#             hwloc, libevent, libudev, munge, HDF5 1.10 (+ szip/aec, zlib), Boost.Program_options,
#             libsentencepiece + qforge's libqforge_spm.so (dlopen'ed from <exe>/../lib), OpenSSL's
#             libcrypto (qforge's SHA-256; HDF5 uses it too), PCRE2 and utf8proc (tokenizer.json), and
#             libqforge_nocurl.so, a small shim built here that replaces HDF5's libcurl: HDF5 calls curl
#             only in its read-only-S3 driver (ros3), which qforge never opens, and the real curl chain
#             (gnutls, krb5, ldap, ssh2...) is ~15 MiB and would not fit.
#   lib/openmpi3/  Open MPI's MCA plugins (all that need nothing beyond the libraries above: no UCX,
#             libfabric, verbs, PSM, netlink or OpenSHMEM ones) = OPAL_PKGLIBDIR
#   lib/pmix/ PMIx's plugins = PMIX_PKGLIBDIR
#   share/openmpi, share/pmix  help texts;  etc/  MCA parameter files and the default hostfile
#   env.sh    sourced before running anything from the bundle; build-info.txt; MANIFEST.txt
#   Every ELF file carries DT_RPATH (not RUNPATH: RPATH is searched BEFORE LD_LIBRARY_PATH, so a foreign
#   libmpi/libhwloc on that machine's LD_LIBRARY_PATH cannot shadow ours): bin/ -> $ORIGIN/../lib,
#   lib/ -> $ORIGIN, lib/openmpi3 and lib/pmix -> $ORIGIN/.. . The bundle's lib/ is therefore NOT put on
#   LD_LIBRARY_PATH (which would also shadow the machine's own zlib/udev for its python3).
#
# Open MPI relocation (Debian's layout): Debian configures Open MPI 4.1 with prefix /usr, libdir
# /usr/lib/x86_64-linux-gnu/openmpi/lib, pkglibdir .../openmpi/lib/openmpi3, pkgdatadir /usr/share/openmpi,
# sysconfdir /etc/openmpi (absolute, NOT under the prefix). With OPAL_PREFIX=P alone, `ompi_info --path all`
# shows pkglibdir P/lib/x86_64-linux-gnu/openmpi/lib/openmpi3 and pkgdatadir P/share/openmpi while
# sysconfdir stays /etc/openmpi; the `env` installdirs component also reads OPAL_LIBDIR, OPAL_PKGLIBDIR,
# OPAL_PKGDATADIR, OPAL_SYSCONFDIR..., so env.sh sets OPAL_PREFIX plus those to this flat layout. Debian's
# external PMIx 4.2 (libpmix.so.2, loaded by Open MPI's pmix/ext3x plugin) has ABSOLUTE libdir/datadir
# (/usr/lib/x86_64-linux-gnu/pmix2/...), so env.sh sets PMIX_PREFIX, PMIX_LIBDIR, PMIX_PKGLIBDIR,
# PMIX_DATADIR, PMIX_PKGDATADIR, PMIX_SYSCONFDIR the same way. The self-test below checks all of it.
#
# Self-containment is proved here (unless QFORGE_BUNDLE_NO_VERIFY=1): as root, in a private mount namespace
# (unshare -m) where Debian's Open MPI, PMIx, hwloc, libevent, HDF5, Boost.Program_options, SentencePiece,
# munge, libcurl/libcrypto, /etc/openmpi and /usr/bin/{mpirun,orterun,orted} are hidden (bind-mounted empty
# files/folders), with LD_LIBRARY_PATH = the venv's torch and nvidia lib folders only, it runs
# `qforge --version`, `ompi_info --path all`, and `mpirun -np 2` of a tiny RTN quantize (stories260K-hf)
# and an eval of ref-6m (SentencePiece tokenizer).
#
# glibc: built on Debian 12 (glibc 2.36, libstdc++ of GCC 12); build-info.txt records the newest GLIBC_ and
# GLIBCXX_ symbol versions the bundle needs, and scripts/device-check.sh (step env) prints the machine's glibc
# (ldd --version), the GLIBCXX versions its libstdc++ provides, and `ldd` of every bundled binary with env.sh
# applied ("not found" fails that step), so the first GPU call proves or disproves that the binaries load there.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

build="${1:-${QFORGE_BUILD_DIR:-build}}"
out="${2:-.device/bundle}"
max_mib="${QFORGE_BUNDLE_MAX_MIB:-30}"
data_src="${QFORGE_SHARED_DATA:-$repo/../shared/data}"
device_root="$(dirname "$out")"   # .device: the folder `run` carries (the data goes to <it>/data)

say() { echo "bundle: $*"; }
die() { echo "bundle: ERROR: $*" >&2; exit 1; }
for t in patchelf strip readelf ldd objdump; do
  command -v "$t" >/dev/null || die "$t not found (patchelf: apt-get install patchelf; scripts/setup.sh lists it)"
done
[ -d "$build" ] || die "no build folder $build"
build=$(cd "$build" && pwd)

# ---------------------------------------------------------------- inputs
# A binary another engineer is relinking may be missing or half-written for a moment: wait and retry.
wait_for_elf() {  # path required(0/1)
  local f=$1 req=$2 i
  for i in 1 2 3 4 5 6 7 8 9 10; do
    if [ -f "$f" ] && readelf -h "$f" >/dev/null 2>&1 && readelf -d "$f" >/dev/null 2>&1; then return 0; fi
    [ "$req" = 0 ] && [ ! -e "$f" ] && return 1
    say "waiting for $f (being relinked?) [$i/10]"
    sleep 15
  done
  [ "$req" = 1 ] && die "$f missing or not a complete ELF file"
  return 1
}
declare -a bins=()        # "path|name" of executables to put in bin/
add_bin() { bins+=("$1|$2"); }
wait_for_elf "$build/jobs/qforge" 1; add_bin "$build/jobs/qforge" qforge
wait_for_elf "$build/jobs/libqforge_spm.so" 1
if wait_for_elf "$build/bench/bench_calib_step" 0; then add_bin "$build/bench/bench_calib_step" bench_calib_step
else say "NOTE: $build/bench/bench_calib_step not built; skipped"; fi
if wait_for_elf "$build/bench/bench_fake_quant" 0; then add_bin "$build/bench/bench_fake_quant" bench_fake_quant
else say "NOTE: $build/bench/bench_fake_quant not built; skipped"; fi
if wait_for_elf "$build/tests/qforge_gpu_tests" 0; then add_bin "$build/tests/qforge_gpu_tests" qforge_gpu_tests
else say "NOTE: $build/tests/qforge_gpu_tests not built (yet); skipped"; fi
optional_unit=""
if wait_for_elf "$build/tests/qforge_unit_tests" 0; then optional_unit="$build/tests/qforge_unit_tests"; fi

ompi_bin=/usr/bin
ompi_pkglib=/usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3
ompi_data=/usr/share/openmpi
pmix_root=/usr/lib/x86_64-linux-gnu/pmix2
[ -x "$ompi_bin/orterun" ] && [ -d "$ompi_pkglib" ] || die "Debian's Open MPI (openmpi-bin) is not installed"
[ -d "$pmix_root/lib/pmix" ] || die "Debian's PMIx (libpmix2) is not installed"

# Never bundled: glibc's own libraries and the C++ runtime (the machine's are newer), and everything that the
# machine's torch wheel provides (libtorch*, libc10*, CUDA, cuDNN, NCCL, nvshmem, torch's libgomp, MKL).
is_system_lib() {
  case "$1" in
    linux-vdso.so.*|ld-linux-x86-64.so.*|libc.so.6|libm.so.6|libdl.so.2|libpthread.so.0|librt.so.1|\
    libutil.so.1|libresolv.so.2|libanl.so.1|libmvec.so.1|libnsl.so.1|libBrokenLocale.so.1|\
    libstdc++.so.6|libgcc_s.so.1) return 0 ;;
  esac
  return 1
}
is_torch_path() {
  case "$1" in
    */site-packages/*|*/dist-packages/*|*/torch/lib/*|*/nvidia/*) return 0 ;;
  esac
  return 1
}
is_torch_name() {
  case "$1" in
    libtorch*|libc10*|libcudart*|libcuda.so*|libnccl*|libcublas*|libcudnn*|libcufft*|libcurand*|libcusparse*|\
    libcusolver*|libcufile*|libcupti*|libnvJitLink*|libnvrtc*|libnvshmem*|libnvToolsExt*|libmkl*|libiomp*|\
    libgomp*|libshm.so|libcaffe2*) return 0 ;;
  esac
  return 1
}

use_stubs=1
[ "${QFORGE_BUNDLE_REAL_CURL:-0}" = 1 ] && use_stubs=0
if [ $use_stubs = 1 ] && ! command -v cc >/dev/null; then
  say "NOTE: no C compiler for the libcurl shim: bundling the real chain"; use_stubs=0
fi

# ---------------------------------------------------------------- dependency closure
declare -A where=()    # soname -> path on this machine (from ldd of every object)
declare -A want=()     # soname -> path, the libraries to bundle
declare -A done_obj=()
learn() {  # ldd an object and remember where each soname resolves
  local line name path
  while read -r line; do
    case "$line" in
      *"=> not found"*) name=${line%% *}; [ -n "${where[$name]:-}" ] || where[$name]="NOTFOUND" ;;
      *"=> /"*) name=${line%% *}; path=${line#*=> }; path=${path%% (*}
                if [ -z "${where[$name]:-}" ] || [ "${where[$name]}" = NOTFOUND ]; then where[$name]=$path; fi ;;
    esac
  done < <(ldd "$1" 2>/dev/null || true)
}
needed() { readelf -d "$1" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
# qforge links libcrypto itself (common/sha256.cpp), so the real one is bundled (4.5 MiB, needing only libc);
# only HDF5's libcurl is replaced by the shim.
stubbed() { [ $use_stubs = 1 ] && [ "$1" = libcurl.so.4 ]; }
close_over() {  # object: add its NEEDED libraries (recursively) to want
  local obj=$1 n p
  [ -n "${done_obj[$obj]:-}" ] && return 0
  done_obj[$obj]=1
  learn "$obj"
  for n in $(needed "$obj"); do
    is_system_lib "$n" && continue
    is_torch_name "$n" && continue
    stubbed "$n" && continue
    p=${where[$n]:-}
    [ -z "$p" ] || [ "$p" = NOTFOUND ] && die "$obj needs $n, which ldd cannot resolve here"
    is_torch_path "$p" && continue
    if [ -z "${want[$n]:-}" ]; then want[$n]=$p; close_over "$p"; fi
  done
}

# Open MPI plugins: those whose NEEDED are all within what a single-node run uses.
plugin_ok_re='^(libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|libutil\.so|libgcc_s\.so|libstdc\+\+\.so|libevent|libudev|libopen-pal|libopen-rte|libmpi\.so|libhwloc|libz\.so|libpmix|libmunge|libmca_common_(sm|ompio|monitoring)\.so)'
declare -a ompi_plugins=() skipped_plugins=()
for f in "$ompi_pkglib"/*.so; do
  bad=$(needed "$f" | grep -v -E "$plugin_ok_re" | tr '\n' ' ' || true)
  if [ -z "$bad" ]; then ompi_plugins+=("$f"); else skipped_plugins+=("$(basename "$f") ($bad)"); fi
done
pmix_plugins=("$pmix_root"/lib/pmix/*.so)

for b in "${bins[@]}"; do close_over "${b%%|*}"; done
[ -n "$optional_unit" ] && close_over "$optional_unit"
close_over "$build/jobs/libqforge_spm.so"
for f in orterun orted ompi_info; do close_over "$ompi_bin/$f"; done
for f in "${ompi_plugins[@]}" "${pmix_plugins[@]}"; do close_over "$f"; done

# ---------------------------------------------------------------- assemble
rm -rf "$out"
mkdir -p "$out"/{bin,lib/openmpi3,lib/pmix,share/openmpi,share/pmix,etc}
out=$(cd "$out" && pwd)
device_root=$(cd "$device_root" && pwd)
for b in "${bins[@]}"; do cp -L "${b%%|*}" "$out/bin/${b##*|}"; done
cp -L "$build/jobs/libqforge_spm.so" "$out/lib/"
for n in "${!want[@]}"; do cp -L "${want[$n]}" "$out/lib/$n"; done
cp -L "$ompi_bin/orterun" "$out/bin/orterun"
cp -L "$ompi_bin/orterun" "$out/bin/mpirun"      # copies, not links: orterun is 15 kB
cp -L "$ompi_bin/orterun" "$out/bin/mpiexec"
cp -L "$ompi_bin/orted" "$out/bin/orted"
cp -L "$ompi_bin/ompi_info" "$out/bin/ompi_info"
for f in "${ompi_plugins[@]}"; do cp -L "$f" "$out/lib/openmpi3/"; done
for f in "${pmix_plugins[@]}"; do cp -L "$f" "$out/lib/pmix/"; done
cp -L "$ompi_data"/* "$out/share/openmpi/" 2>/dev/null || true
cp -L "$pmix_root"/share/pmix/* "$out/share/pmix/" 2>/dev/null || true
# MCA parameter files: Debian's settings (no UCX/OFI/openib, which are not bundled anyway), and what a
# single node in a VM needs; env.sh points OPAL_SYSCONFDIR / PMIX_SYSCONFDIR here.
{
  echo "# qforge device bundle (from Debian's /etc/openmpi/openmpi-mca-params.conf plus single-node settings)"
  grep -v -E '^\s*(#|$|btl\s*=)' /etc/openmpi/openmpi-mca-params.conf 2>/dev/null || true
  echo "rmaps_base_oversubscribe = 1"
  echo "hwloc_base_binding_policy = none"
  echo "btl = self,vader,tcp"
  echo "btl_vader_single_copy_mechanism = none"
} > "$out/etc/openmpi-mca-params.conf"
: > "$out/etc/openmpi-default-hostfile"
printf 'gds = hash\n' > "$out/etc/pmix-mca-params.conf"

# HDF5's libcurl shim (see the header). Every curl_* symbol HDF5 imports must be defined.
if [ $use_stubs = 1 ]; then
  hdf5=$(for n in "${!want[@]}"; do case $n in libhdf5*) echo "$n";; esac; done | head -1)
  [ -n "$hdf5" ] || die "no libhdf5 among the libraries?"
  tmp=$(mktemp -d)
  cat > "$tmp/nocurl.c" <<'EOF'
/* Stands in for libcurl in qforge's device bundle: HDF5 calls curl only in its read-only S3 driver. */
#include <stddef.h>
int curl_global_init(long flags) { (void)flags; return 0; }
void curl_global_cleanup(void) {}
void *curl_easy_init(void) { return NULL; }                 /* HDF5 then fails the S3 open cleanly */
int curl_easy_setopt(void *h, int opt, ...) { (void)h; (void)opt; return 2; } /* CURLE_FAILED_INIT */
int curl_easy_perform(void *h) { (void)h; return 2; }
void curl_easy_cleanup(void *h) { (void)h; }
void *curl_slist_append(void *l, const char *s) { (void)l; (void)s; return NULL; }
void curl_slist_free_all(void *l) { (void)l; }
EOF
  echo 'CURL_OPENSSL_4 { global: curl_*; local: *; };' > "$tmp/nocurl.map"
  cc -shared -fPIC -O2 -Wl,-soname,libqforge_nocurl.so -Wl,--version-script="$tmp/nocurl.map" \
    -o "$out/lib/libqforge_nocurl.so" "$tmp/nocurl.c"
  if case " $(needed "$out/lib/$hdf5" | tr '\n' ' ') " in *" libcurl.so.4 "*) true ;; *) false ;; esac; then
    # every symbol HDF5 takes from libcurl (by version) must be in the shim
    have=" $(objdump -T "$out/lib/libqforge_nocurl.so" | awk '{print $NF}' | tr '\n' ' ') "
    missing=$(objdump -T "$out/lib/$hdf5" | awk '$0 ~ /\*UND\*/ && index($0, "(CURL_OPENSSL_4)") {print $NF}' | while read -r s; do
      case "$have" in *" $s "*) ;; *) echo "$s" ;; esac; done)
    [ -z "$missing" ] || die "the libcurl shim lacks $missing (HDF5 changed?): rerun with QFORGE_BUNDLE_REAL_CURL=1"
    patchelf --replace-needed libcurl.so.4 libqforge_nocurl.so "$out/lib/$hdf5"
  fi
  rm -rf "$tmp"
  # nothing else may still need it
  for f in "$out"/lib/*.so*; do
    case " $(needed "$f" | tr '\n' ' ') " in *" libcurl.so.4 "*) die "$(basename "$f") still needs libcurl" ;; esac
  done
fi

# strip, then RPATH (patchelf after strip; DT_RPATH, see the header)
strip_and_rpath() {  # rpath files...
  local rp=$1; shift
  local f
  for f in "$@"; do
    [ -f "$f" ] || continue
    chmod u+w "$f"
    strip --strip-unneeded "$f" 2>/dev/null || say "NOTE: could not strip $(basename "$f")"
    patchelf --force-rpath --set-rpath "$rp" "$f"
  done
}
strip_and_rpath '$ORIGIN/../lib' "$out"/bin/*
strip_and_rpath '$ORIGIN' "$out"/lib/*.so*
strip_and_rpath '$ORIGIN/..' "$out"/lib/openmpi3/*.so "$out"/lib/pmix/*.so

# ---------------------------------------------------------------- env.sh and build-info.txt
cat > "$out/env.sh" <<'EOF'
# Source this (bash) before running anything from the bundle: `source .device/bundle/env.sh`.
# Written by scripts/make-device-bundle.sh. QFORGE_PYTHON: the python3 whose torch provides LibTorch/CUDA/NCCL
# (default: python3 on PATH). The bundle's own lib/ is reached through DT_RPATH and is deliberately NOT put on
# LD_LIBRARY_PATH (it would shadow the machine's zlib/udev for python3 and other programs).
QFORGE_BUNDLE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export QFORGE_BUNDLE
export QFORGE_SPM_MODULE="$QFORGE_BUNDLE/lib/libqforge_spm.so"
# Open MPI (Debian 4.1) relocated: see scripts/make-device-bundle.sh's header.
export OPAL_PREFIX="$QFORGE_BUNDLE" OPAL_EXEC_PREFIX="$QFORGE_BUNDLE" OPAL_BINDIR="$QFORGE_BUNDLE/bin"
export OPAL_LIBDIR="$QFORGE_BUNDLE/lib" OPAL_PKGLIBDIR="$QFORGE_BUNDLE/lib/openmpi3"
export OPAL_DATAROOTDIR="$QFORGE_BUNDLE/share" OPAL_DATADIR="$QFORGE_BUNDLE/share"
export OPAL_PKGDATADIR="$QFORGE_BUNDLE/share/openmpi" OPAL_SYSCONFDIR="$QFORGE_BUNDLE/etc"
export PMIX_PREFIX="$QFORGE_BUNDLE" PMIX_LIBDIR="$QFORGE_BUNDLE/lib" PMIX_PKGLIBDIR="$QFORGE_BUNDLE/lib/pmix"
export PMIX_DATADIR="$QFORGE_BUNDLE/share" PMIX_PKGDATADIR="$QFORGE_BUNDLE/share/pmix"
export PMIX_SYSCONFDIR="$QFORGE_BUNDLE/etc" PMIX_MCA_gds=hash
export OMPI_MCA_mca_base_param_files="$QFORGE_BUNDLE/etc/openmpi-mca-params.conf"
export OMPI_MCA_orte_default_hostfile="$QFORGE_BUNDLE/etc/openmpi-default-hostfile"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_hwloc_base_binding_policy=none
export OMPI_MCA_btl=self,vader,tcp OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_plm_rsh_agent=false   # single node: never look for ssh
export PATH="$QFORGE_BUNDLE/bin:$PATH"
# LibTorch and its CUDA/NCCL libraries: the machine's torch wheel (torch/lib and site-packages/nvidia/*/lib;
# the binaries link libnccl/libcudart directly once built with NCCL, so those folders must be searchable).
QFORGE_TORCH_LIB_PATH="$("${QFORGE_PYTHON:-python3}" - <<'PY' 2>/dev/null
import glob, os, torch
tl = os.path.join(os.path.dirname(torch.__file__), "lib")
site = os.path.dirname(os.path.dirname(torch.__file__))
dirs = [tl] + sorted(d for d in glob.glob(os.path.join(site, "nvidia", "*", "lib")) if os.path.isdir(d))
print(":".join(dirs))
PY
)"
if [ -z "$QFORGE_TORCH_LIB_PATH" ]; then
  echo "env.sh: WARNING: ${QFORGE_PYTHON:-python3} cannot import torch: LibTorch will not be found" >&2
fi
export QFORGE_TORCH_LIB_PATH
export LD_LIBRARY_PATH="$QFORGE_TORCH_LIB_PATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
EOF

max_ver() {  # prefix files... : the newest symbol version with that prefix that the files need
  local p=$1; shift
  for f in "$@"; do objdump -T "$f" 2>/dev/null; done | grep -o "(${p}_[0-9.]*)" | tr -d '()' | sort -u -V | tail -1
}
mapfile -t elves < <(find "$out/bin" "$out/lib" -type f \( -name '*.so*' -o -perm -u+x \))
{
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release; echo "$PRETTY_NAME"), $(ldd --version | head -1)"
  echo "source: $repo @ $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$repo" diff --quiet 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "build_dir: $build"
  echo "torch: $(grep -o 'Torch_DIR:PATH=.*' "$build/CMakeCache.txt" 2>/dev/null | cut -d= -f2)"
  echo "qforge_version: $("$build/jobs/qforge" --version 2>/dev/null || echo '?')"
  # compiled into the test binaries (tests/CMakeLists.txt): device-check.sh links these paths to the bundle
  echo "qforge_binary_compiled: $build/jobs/qforge"
  echo "source_dir_compiled: $(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build/CMakeCache.txt" 2>/dev/null)"
  echo "needs_glibc: $(max_ver GLIBC "${elves[@]}")"
  echo "needs_glibcxx: $(max_ver GLIBCXX "${elves[@]}")"
  echo "needs_cxxabi: $(max_ver CXXABI "${elves[@]}")"
  echo "libcurl: $([ $use_stubs = 1 ] && echo 'shim (HDF5 ros3 driver disabled)' || echo real)"
  echo "ompi_plugins_skipped: ${skipped_plugins[*]:-none}"
} > "$out/build-info.txt"

# ---------------------------------------------------------------- size and manifest
write_manifest() {
  ( cd "$out" && find . -type f ! -name 'MANIFEST.*' -printf '%s\t%P\n' | sort -k2 ) > "$out/MANIFEST.tmp"
  local total
  total=$(awk -F'\t' '{s+=$1} END {print s}' "$out/MANIFEST.tmp")
  { echo "# qforge device bundle: every file with its size in bytes; total $total bytes ($(awk -v t="$total" 'BEGIN{printf "%.2f", t/1048576}') MiB)"
    cat "$out/MANIFEST.tmp"; } > "$out/MANIFEST.txt"
  rm -f "$out/MANIFEST.tmp"
  echo "$total"
}
limit=$((max_mib * 1048576))
total=$(write_manifest)
if [ -n "$optional_unit" ]; then
  u=$(stat -c %s "$optional_unit")
  if [ $((total + u)) -le "$limit" ]; then
    cp -L "$optional_unit" "$out/bin/qforge_unit_tests"
    strip_and_rpath '$ORIGIN/../lib' "$out/bin/qforge_unit_tests"
    total=$(write_manifest)
    # the one that fit may still push the total over after all (strip gives it back later): undo then
    if [ "$total" -gt "$limit" ]; then rm -f "$out/bin/qforge_unit_tests"; total=$(write_manifest); say "NOTE: qforge_unit_tests does not fit; left out"; fi
  else
    say "NOTE: qforge_unit_tests ($((u / 1048576)) MiB) does not fit under ${max_mib} MiB; left out"
  fi
fi
say "contents (largest first):"
tail -n +2 "$out/MANIFEST.txt" | sort -t$'\t' -k1,1 -rn | awk -F'\t' 'NR <= 12 {printf "  %8.2f MiB  %s\n", $1/1048576, $2}'
say "$(wc -l < "$out/MANIFEST.txt" | awk '{print $1-1}') files, total $(awk -v t="$total" 'BEGIN{printf "%.2f", t/1048576}') MiB (limit ${max_mib} MiB) in $out"
if [ "$total" -gt "$limit" ]; then echo "bundle: ERROR: over ${max_mib} MiB" >&2; exit 2; fi

# ---------------------------------------------------------------- data staging (the gpu tier's models)
if [ "${QFORGE_BUNDLE_NO_DATA:-0}" != 1 ]; then
  [ -d "$data_src/models" ] || die "no $data_src/models to stage (set QFORGE_SHARED_DATA)"
  mkdir -p "$device_root/data/models"
  for m in stories260K stories260K-hf ref-6m; do
    [ -d "$data_src/models/$m" ] || die "missing $data_src/models/$m"
    rm -rf "$device_root/data/models/$m"
    cp -rL "$data_src/models/$m" "$device_root/data/models/$m"
    chmod -R u+w "$device_root/data/models/$m"
  done
  say "staged data: $(du -sh "$device_root/data" | cut -f1) in $device_root/data"
fi
dev_bytes=$(du -sb "$device_root" | cut -f1)
tracked=$(git -C "$repo" ls-files -z | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
untracked=$(git -C "$repo" ls-files -z -o --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
say "$device_root: $(awk -v t="$dev_bytes" 'BEGIN{printf "%.2f", t/1048576}') MiB; with the working tree (tracked $(awk -v t="$tracked" 'BEGIN{printf "%.2f", t/1048576}') MiB + untracked $(awk -v t="$untracked" 'BEGIN{printf "%.2f", t/1048576}') MiB) a run carries $(awk -v t="$((dev_bytes + tracked + untracked))" 'BEGIN{printf "%.2f", t/1048576}') MiB of 64"
if [ $((dev_bytes + tracked + untracked)) -gt $((63 * 1048576)) ]; then
  echo "bundle: ERROR: .device plus the working tree exceed 63 MiB: a run call would be refused" >&2; exit 2
fi

# ---------------------------------------------------------------- self-test: nothing from Debian's packages
if [ "${QFORGE_BUNDLE_NO_VERIFY:-0}" = 1 ]; then say "self-test skipped (QFORGE_BUNDLE_NO_VERIFY=1)"; exit 0; fi
if [ "$(id -u)" -ne 0 ] || ! unshare -m true 2>/dev/null; then
  say "NOTE: self-test skipped (needs root and unshare -m)"; exit 0
fi
# shellcheck source=scripts/torch_env.sh
source scripts/torch_env.sh
py="$QFORGE_VENV/bin/python"
[ -x "$py" ] || { say "NOTE: self-test skipped (no venv python at $py)"; exit 0; }
data_root="$device_root/data"
[ -d "$data_root/models/stories260K-hf" ] || data_root="$data_src"
say "self-test: hiding Debian's Open MPI/PMIx/hwloc/libevent/HDF5/Boost/SentencePiece/munge/curl/crypto/utf8proc"
selftest=$(mktemp)
cat > "$selftest" <<'EOS'
set -euo pipefail
empty_dir=$QFORGE_EMPTY_DIR; empty_file=$QFORGE_EMPTY_FILE
hidden=()
hide() { local p
  for p in "$@"; do
    [ -e "$p" ] || continue
    if [ -d "$p" ]; then mount --bind "$empty_dir" "$p"; else mount --bind "$empty_file" "$p"; fi
    hidden+=("$p")
  done; }
L=/usr/lib/x86_64-linux-gnu
hide $L/openmpi $L/pmix2 $L/hwloc /etc/openmpi /usr/share/openmpi $L/hdf5
hide /usr/bin/orterun /usr/bin/orted /usr/bin/ompi_info /usr/bin/mpirun.openmpi /usr/bin/mpiexec.openmpi
for pat in 'libmpi*.so*' 'libopen-pal.so*' 'libopen-rte.so*' 'liboshmem.so*' 'libmca_common_*.so*' 'libpmix.so*' \
           'libhwloc.so*' 'libevent*.so*' 'libhdf5*.so*' 'libsz.so*' 'libaec.so*' 'libboost_program_options*.so*' \
           'libsentencepiece*.so*' 'libprotobuf*.so*' 'libmunge.so*' 'libcurl*.so*' 'libcrypto.so*' 'libssl.so*' \
           'libudev.so*' 'libutf8proc.so*'; do  # not libpcre2-8: grep, which this test runs, needs it
  for f in $L/$pat /lib/x86_64-linux-gnu/$pat; do [ -e "$f" ] && hide "$f"; done
done
echo "self-test: hid ${#hidden[@]} paths (bind-mounted empty files/folders over them), among them:"
printf '%s\n' "${hidden[@]}" | grep -E '/openmpi$|pmix2$|hwloc$|/etc/openmpi|orterun|libmpi\.so\.40$|libopen-pal\.so\.40$|libpmix\.so\.2$|libhwloc\.so\.15$|libhdf5_serial\.so\.103$|libboost_program_options\.so\.1\.74\.0$|libsentencepiece\.so\.0$|libcurl\.so\.4$|libcrypto\.so\.3$|libevent_core-2\.1\.so\.7$|libmunge\.so\.2$|libudev\.so\.1$|libutf8proc\.so\.2$' | grep -v '^/lib/' | sed 's/^/  /'
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset LD_LIBRARY_PATH
export QFORGE_PYTHON
# shellcheck disable=SC1091
source "$QFORGE_OUT/env.sh"
echo "self-test: LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
q="$QFORGE_OUT/bin/qforge"
resolved=$(ldd "$q")
case "$resolved" in *"not found"*) echo "$resolved" | grep "not found"; echo "self-test: FAIL: unresolved"; exit 1 ;; esac
echo "self-test: libraries from outside the bundle and the torch wheel:"
for f in "$QFORGE_OUT"/bin/* "$QFORGE_OUT"/lib/libqforge_spm.so; do ldd "$f"; done | awk '/=>/{print $3}' \
  | grep -v -e "^$QFORGE_OUT/" -e 'site-packages' | sort -u | sed 's/^/  /'
"$q" --version
w=$(mktemp -d)
ompi_info --path all > "$w/paths.txt"; ompi_info > "$w/info.txt"
grep -E 'Prefix|Pkglibdir|Pkgdatadir|Sysconfdir' "$w/paths.txt" | sort -u
echo "self-test: Open MPI components found: $(grep -c 'MCA [a-z0-9_]*:' "$w/info.txt"), among them:"
grep -E 'MCA (btl|pml|plm|odls|pmix):' "$w/info.txt" | tr -s ' ' | cut -d'(' -f1 | tr '\n' ';'; echo
m="$QFORGE_DATA_ROOT/models"
dev=()   # quantize's --device (being added): pass it only when this build knows it
qhelp=$("$q" quantize --help 2>&1 || true)   # (not piped into grep -q: pipefail + SIGPIPE)
case "$qhelp" in *--device*) dev=(--device cpu) ;; esac
set -x
# AffineQuant W4A4, 1 epoch on 4 sampled sequences: exercises MPI (a team of 2), the HDF5 activation cache
# (--keep-cache leaves its files to list) and the journal
mpirun -np 2 --oversubscribe --bind-to none "$q" quantize --threads 1 "${dev[@]}" \
  --model "$m/stories260K-hf" --out "$w/q" --method affinequant --wbits 4 --abits 4 --calib-data model:generate \
  --tokenizer "$m/stories260K/tok512.bin" --nsamples 4 --calib-seqlen 32 --epochs 1 --batch-size 2 \
  --job-dir "$w/job" --keep-cache </dev/null > "$w/quantize.log" 2>&1 || { cat "$w/quantize.log"; exit 1; }
grep -E 'ranks \(mpirun\)|wrote ' "$w/quantize.log"
find "$w/job" -name '*.h5' | awk 'NR <= 3'
"$q" eval --log-level warn --threads 2 --device cpu --model "$w/q" --reference "$m/stories260K-hf" \
  --data "$m/stories260K/generated-eval.txt" --tokenizer "$m/stories260K/tok512.bin" --seqlen 128 --max-windows 4 --json
"$q" eval --log-level warn --threads 2 --device cpu --model "$m/ref-6m" --data "$m/ref-6m/valid-sample.txt" \
  --seqlen 256 --max-windows 2 --json
set +x
rm -rf "$w"
echo "self-test: PASS (qforge, mpirun -np 2, HDF5 cache, SentencePiece, with Debian's libraries hidden)"
EOS
rc=0
empty_dir=$(mktemp -d); empty_file=$(mktemp)
QFORGE_PYTHON="$py" QFORGE_OUT="$out" QFORGE_DATA_ROOT="$data_root" QFORGE_EMPTY_DIR="$empty_dir" \
  QFORGE_EMPTY_FILE="$empty_file" unshare -m bash "$selftest" </dev/null || rc=$?
rm -rf "$selftest" "$empty_dir" "$empty_file"
[ $rc = 0 ] || { echo "bundle: ERROR: self-test failed (rc $rc)" >&2; exit 1; }
