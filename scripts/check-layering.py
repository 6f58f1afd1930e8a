#!/usr/bin/env python3
"""Checks that #include dependencies between the libraries point one way (README, "Architecture").

Each folder may include its own headers and those of the layers below it; the plain-C++ layers
(common, partition) include neither MPI nor LibTorch, except the MPI/NCCL transport and the
precompiled torch header, which are separate CMake targets (qforge_comm, qforge_torch_pch).
Prints every violation as file:line and exits 1 if there is any."""
import pathlib
import re
import sys

ALLOWED = {
    "common": {"common"},
    "storage": {"common", "storage"},
    "partition": {"common", "partition"},
    "worker": {"common", "storage", "partition", "worker"},
    "coordinator": {"common", "storage", "partition", "coordinator"},
    "jobs": {"common", "storage", "partition", "worker", "coordinator", "jobs"},
}
PLAIN = {"common", "partition"}  # no MPI, no LibTorch
PLAIN_EXCEPTIONS = {"common/mpi_comm.h", "common/mpi_comm.cpp", "common/nccl_comm.h", "common/nccl_comm.cpp",
                    "common/torch_pch.h", "common/torch_pch.cpp"}
HEAVY = re.compile(r'#include\s*<(mpi\.h|ATen/|torch/|c10/|nccl\.h|cuda)')
LOCAL = re.compile(r'#include\s*"([a-z_]+)/')


def main(root: pathlib.Path) -> int:
    bad = []
    for layer, allowed in ALLOWED.items():
        for path in sorted((root / layer).rglob("*")):
            if path.suffix not in {".h", ".cpp", ".cu", ".cuh"}:
                continue
            rel = path.relative_to(root).as_posix()
            for n, line in enumerate(path.read_text().splitlines(), 1):
                m = LOCAL.match(line.strip())
                if m and m.group(1) in ALLOWED and m.group(1) not in allowed:
                    bad.append(f"{rel}:{n}: {layer} includes {m.group(1)}: {line.strip()}")
                if layer in PLAIN and rel not in PLAIN_EXCEPTIONS and HEAVY.match(line.strip()):
                    bad.append(f"{rel}:{n}: {layer} must stay free of MPI and LibTorch: {line.strip()}")
    for b in bad:
        print(b)
    print(f"layering: {len(bad)} violation(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent)))
