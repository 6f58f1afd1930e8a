#!/usr/bin/env bash
# ctest fixture of the slurm tier: `start` brings up the local Slurm cluster (slurm/dev/local-cluster.sh)
# once for all slurm tests, `stop` stops it again, but only if `start` started it: a cluster that was
# already running (a developer's) is left alone. Where Slurm cannot start, the slurm tests skip
# with the reason (state file says "unavailable"), except under CI=true, where that fails.
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
cluster="$here/slurm/dev/local-cluster.sh"
dir="${QFORGE_SLURM_DIR:-/tmp/qforge-slurm}"
marker="$dir.fixture"   # beside, not inside, the cluster's directory (which stop may remove)

case "${1:-}" in
  start)
    if bash "$cluster" status > /dev/null 2>&1; then
      echo "preexisting" > "$marker"
      echo "slurm fixture: using the cluster already running in $dir"
    elif bash "$cluster" start; then
      echo "ours" > "$marker"
    else
      echo "unavailable" > "$marker"
      if [ "${CI:-}" = "true" ]; then
        echo "slurm fixture: the local Slurm cluster did not start (CI=true: this fails)" >&2
        exit 1
      fi
      echo "slurm fixture: the local Slurm cluster did not start; the slurm tests will skip" >&2
    fi
    ;;
  stop)
    state="$(cat "$marker" 2>/dev/null || echo none)"
    rm -f "$marker"
    if [ "$state" = "ours" ]; then
      bash "$cluster" stop
    else
      echo "slurm fixture: not stopping a cluster this fixture did not start ($state)"
    fi
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
