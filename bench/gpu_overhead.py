"""Host time per call on the GPU at 2^12 elements, and where fastdrop's goes.

    python -m bench.gpu_overhead

At 2^12 elements a dropout call is bound by the host: the GPU is done before the next call
is issued, so the benchmark's event times there measure the host's cost per call. This times
back-to-back calls (one synchronize per block of calls) for PyTorch's dropout and fastdrop's,
forward and forward+backward, and the pieces of fastdrop's forward: the seed and offset
reserved from the CUDA generator, the kernel launch alone, and torch.empty_like. Without a
CUDA device it prints so and exits 0.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F


def per_call_us(fn, number=500, repeats=7) -> float:
    """Median over blocks of ``number`` back-to-back calls, synchronized once per block."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / number * 1e6)
    return statistics.median(times)


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    import triton

    import fastdrop
    from fastdrop import _rng, contract
    from fastdrop._dispatch import kernels

    k = kernels()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
          f"host microseconds per call, 2^12 elements, p=0.5")
    thr = contract.keep_threshold(0.5)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = torch.randn(1 << 12, device="cuda", dtype=dtype)
        y, g = torch.empty_like(x), torch.randn_like(x)
        xg = x.clone().requires_grad_()
        cases = {
            "F.dropout": lambda: F.dropout(x, 0.5),
            "fastdrop.dropout": lambda: fastdrop.dropout(x, 0.5),
            "fastdrop.dropout, seed=1": lambda: fastdrop.dropout(x, 0.5, seed=1),
            "  reserve (generator offset)": lambda: _rng.reserve(x.numel(), x.device, None),
            "  kernel launch alone": lambda: k.launch(x, y, 1, 0, thr, 2.0),
            "  torch.empty_like": lambda: torch.empty_like(x),
            "x * 2": lambda: x * 2,
            "F.dropout, forward+backward": lambda: torch.autograd.grad(F.dropout(xg, 0.5), xg, g),
            "fastdrop, forward+backward": lambda: torch.autograd.grad(fastdrop.dropout(xg, 0.5), xg, g),
        }
        for name, fn in cases.items():
            print(f"{str(dtype).removeprefix('torch.'):<9} {name:<30} {per_call_us(fn):8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
