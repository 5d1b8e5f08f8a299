"""Philox4x32-10 words per second on one CPU core: the C++ loop against the torch-ops form.

    python -m bench.philox_rate

The C++ loop (``fastdrop/csrc/kernels.cpp``, built for the instruction set the machine runs:
AVX-512, AVX2 or plain x86-64; ``FASTDROP_CPU_ISA=plain|x86-64-v3`` builds a lesser one) is what
the CPU path spends most of its time in; ``fastdrop.contract.stream_words`` (torch ops) is the
reference backend's. Interleaved runs, best and median of 7.
"""

from __future__ import annotations

import statistics
import time

import torch

from fastdrop import contract
from fastdrop.backends import load_native


def main():
    torch.set_num_threads(1)
    calls = 1 << 20
    out = torch.empty(calls, 4, dtype=torch.int32)
    runs = {"torch ops (fastdrop.contract)": lambda: contract.stream_words((2 << 32) + 1, 0, 4 * calls)}
    if load_native() is not None:
        ops = torch.ops.fastdrop
        runs = {f"C++ ({ops.isa()})": lambda: ops.philox_words(out, 0, 1, 2), **runs}
    times = {name: [] for name in runs}
    for fn in runs.values():
        fn()
    for _ in range(7):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    for name, ts in times.items():
        print(f"{name:<28} {4 * calls / min(ts) / 1e6:8.0f} M words/s best, "
              f"{4 * calls / statistics.median(ts) / 1e6:8.0f} median (one core)")


if __name__ == "__main__":
    main()
