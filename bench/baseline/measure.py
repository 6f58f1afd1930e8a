#!/usr/bin/env python3
"""Runs a command and measures it from outside, the same way for qforge and for the Python baseline:
wall time (process start to exit, so interpreter/library start-up counts) and peak RSS of the child
(getrusage(RUSAGE_CHILDREN).ru_maxrss).

  measure.py RESULT.json [--stdout FILE] -- COMMAND ARGS...

The command's stdout goes to FILE (default: this process's stdout), its stderr passes through; writes
{"wall_s", "peak_rss_mib", "rc"} to RESULT.json and exits with the command's status.
"""
import json
import resource
import subprocess
import sys
import time


def main():
    argv = sys.argv[1:]
    if "--" not in argv or argv.index("--") < 1:
        raise SystemExit(__doc__)
    sep = argv.index("--")
    result, opts, cmd = argv[0], argv[1:sep], argv[sep + 1:]
    out = open(opts[opts.index("--stdout") + 1], "w") if "--stdout" in opts else None
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, stdout=out)
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    with open(result, "w") as f:
        json.dump({"wall_s": wall, "peak_rss_mib": rss, "rc": rc, "cmd": cmd}, f)
    sys.exit(rc)


if __name__ == "__main__":
    main()
