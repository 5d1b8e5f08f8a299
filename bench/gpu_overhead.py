"""Host time per call on the GPU at 2^12 elements, and where fastdrop's goes.

    python -m bench.gpu_overhead

At 2^12 elements a dropout call is bound by the host: the GPU is done before the next call
is issued, so back-to-back calls (one synchronize per block of calls) measure the host's cost
per call. For fp32, bf16 and fp16: PyTorch's dropout and fastdrop's, forward and
forward+backward, the family against PyTorch's expression for each (dropout2d, drop path as
timm writes it, dropout_add as residual + dropout), and the pieces of fastdrop's forward: the
seed and offset reserved from the CUDA generator, the kernel launch alone (Triton's
``kernel[grid]`` and the direct launch of ``fastdrop.backends.triton``), and
torch.empty_like. Every fastdrop case runs twice, with direct launches and through Triton's
own launch, in alternating blocks. Without a CUDA device it prints so and exits 0.
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
    from fastdrop.backends import triton as launcher

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
          f"host microseconds per call, 2^12 elements, p=0.5; fastdrop with direct launches / through "
          f"Triton's launch")
    thr = contract.keep_threshold(0.5)

    def drop_path_timm(v):
        keep = v.new_empty((v.shape[0],) + (1,) * (v.dim() - 1)).bernoulli_(0.5)
        return v * keep.div_(0.5)

    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = torch.randn(1 << 12, device="cuda", dtype=dtype)
        x4 = x.view(8, 32, 4, 4)
        y, g, g4 = torch.empty_like(x), torch.randn_like(x), torch.randn_like(x4)
        xg, x4g = x.clone().requires_grad_(), x4.clone().requires_grad_()
        torch_cases = {
            "dropout": lambda: F.dropout(x, 0.5),
            "dropout, forward+backward": lambda: torch.autograd.grad(F.dropout(xg, 0.5), xg, g),
            "dropout2d": lambda: F.dropout2d(x4, 0.5),
            "dropout2d, forward+backward": lambda: torch.autograd.grad(F.dropout2d(x4g, 0.5), x4g, g4),
            "drop_path": lambda: drop_path_timm(x4),
            "dropout_add": lambda: x + F.dropout(x, 0.5),
            "x * 2": lambda: x * 2,
            "torch.empty_like": lambda: torch.empty_like(x),
        }
        ours = {
            "dropout": lambda: fastdrop.dropout(x, 0.5),
            "dropout, forward+backward": lambda: torch.autograd.grad(fastdrop.dropout(xg, 0.5), xg, g),
            "dropout2d": lambda: fastdrop.dropout2d(x4, 0.5),
            "dropout2d, forward+backward": lambda: torch.autograd.grad(fastdrop.dropout2d(x4g, 0.5), x4g, g4),
            "drop_path": lambda: fastdrop.drop_path(x4, 0.5, True),
            "dropout_add": lambda: fastdrop.dropout_add(x, x, 0.5),
            "dropout, seed=1": lambda: fastdrop.dropout(x, 0.5, seed=1),
            "  reserve (generator offset)": lambda: _rng.reserve(x.numel(), x.device, None),
            "  kernel launch alone": lambda: launcher.launch(x, y, 1, 0, thr, 2.0),
        }
        name = str(dtype).removeprefix("torch.")
        for case, fn in torch_cases.items():
            print(f"{name:<9} torch    {case:<30} {per_call_us(fn):8.1f}", flush=True)
        for case, fn in ours.items():
            times = {}
            for direct in (True, False, True, False):  # alternating: the machine's drift falls on both
                launcher.DIRECT = direct
                times.setdefault(direct, []).append(per_call_us(fn, repeats=3))
            launcher.DIRECT = True
            ratio = f"{min(times[True]) / per_call_us(torch_cases[case]):6.2f}x torch" if case in torch_cases else ""
            print(f"{name:<9} fastdrop {case:<30} {min(times[True]):8.1f} / {min(times[False]):6.1f}  {ratio}",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
