"""Philox4x32-10 words per second on one CPU core: the compiled loop against numpy's form.

    python -m bench.philox_rate

The compiled loop (``fastdrop._jit._philox``) is what the CPU path spends most of its time
in; numpy's (``fastdrop.contract.stream_words``) is the path without numba. Interleaved runs,
best and median of 7.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from fastdrop import _jit, contract


def main():
    calls = 1 << 20
    out = np.empty(4 * calls, np.uint32)
    runs = {
        "compiled (fastdrop._jit)": lambda: _jit._philox(np.uint64(0), calls, 1, 2, out),
        "numpy (fastdrop.contract)": lambda: contract.stream_words((2 << 32) + 1, 0, 4 * calls),
    }
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
