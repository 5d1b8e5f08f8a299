"""Cost per call of small dropout calls, fastdrop against PyTorch, side by side.

    python -m bench.host_cost                 # CPU: 32 and 4096 elements, fp32 and bf16
    python -m bench.host_cost --device cuda   # GPU: host time per call at 2^12, both launch paths
    python -m bench.host_cost --blocks 41 --number 400

At these sizes a call's cost is its fixed cost: argument checks, the seed, dispatch, the
autograd node, the launch. Each case times fastdrop's call and PyTorch's in alternating blocks
of ``--number`` back-to-back calls (so the machine's drift falls on both alike) and reports the
minimum over ``--blocks`` blocks, in microseconds per call, and the ratio fastdrop / PyTorch
(below 1: fastdrop is cheaper).

On a GPU the same calls measure host-inclusive time: back-to-back eager calls with one
synchronize per block (at 2^12 elements the GPU finishes each kernel before the host issues
the next), for fp32, bf16 and fp16, with fastdrop's C++ launch and with its Python launch
through Triton (``FASTDROP_LAUNCH=python``), each against PyTorch. GPU kernel time is not
measured here (``bench.microbench`` does, from CUDA-graph replays or the profiler).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import fastdrop


def drop_path_torch(x, p):
    # timm's drop_path, as models call it
    keep = 1 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


def cases(n, dtype, device):
    """name -> (fastdrop's call, PyTorch's call); each a closure over fixed inputs."""
    p = 0.1
    x = torch.randn(n, dtype=dtype, device=device)
    xg = x.clone().requires_grad_()
    g = torch.randn_like(x)
    x4 = torch.randn(n // 16, 4, 2, 2, dtype=dtype, device=device)
    r = torch.randn_like(x)
    mod_fd, mod_pt = fastdrop.Dropout(p), nn.Dropout(p)
    y_fd, y_pt = fastdrop.dropout(xg, p), F.dropout(xg, p)  # for the backward alone

    return {
        "dropout, forward": (lambda: fastdrop.dropout(x, p), lambda: F.dropout(x, p)),
        "Dropout module, forward": (lambda: mod_fd(x), lambda: mod_pt(x)),
        "dropout, forward+backward": (lambda: torch.autograd.grad(fastdrop.dropout(xg, p), xg, g),
                                      lambda: torch.autograd.grad(F.dropout(xg, p), xg, g)),
        "dropout, backward alone": (lambda: torch.autograd.grad(y_fd, xg, g, retain_graph=True),
                                    lambda: torch.autograd.grad(y_pt, xg, g, retain_graph=True)),
        "dropout2d, forward": (lambda: fastdrop.dropout2d(x4, p), lambda: F.dropout2d(x4, p)),
        "drop_path, forward": (lambda: fastdrop.drop_path(x4, p, True), lambda: drop_path_torch(x4, p)),
        "dropout_add, forward": (lambda: fastdrop.dropout_add(x, r, p), lambda: r + F.dropout(x, p)),
    }


def per_call_us(fn, number, sync) -> float:
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    sync()
    return (time.perf_counter() - t0) / number * 1e6


def compare(ours, theirs, number, blocks, sync):
    """(min us fastdrop, min us PyTorch), over alternating blocks."""
    for fn in (ours, theirs):  # warm-up: first-use costs (loading, compiling) stay out
        for _ in range(3):
            fn()
    sync()
    a, b = [], []
    for _ in range(blocks):
        a.append(per_call_us(ours, number, sync))
        b.append(per_call_us(theirs, number, sync))
    return min(a), min(b)


def run(device, sizes, dtypes, number, blocks, label=""):
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    print(f"{'case':<28} {'dtype':<9} {'numel':>6} {'fastdrop us':>12} {'torch us':>9} {'ratio':>6}  {label}")
    worst = 0.0
    for dtype in dtypes:
        for n in sizes:
            for name, (ours, theirs) in cases(n, dtype, device).items():
                a, b = compare(ours, theirs, number, blocks, sync)
                worst = max(worst, a / b)
                print(f"{name:<28} {str(dtype)[6:]:<9} {n:>6} {a:12.2f} {b:9.2f} {a / b:6.2f}", flush=True)
    return worst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--number", type=int, default=200, help="calls per timed block")
    ap.add_argument("--blocks", type=int, default=21, help="blocks per provider; the minimum is reported")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    threads = torch.get_num_threads()
    print(f"fastdrop {fastdrop.__version__}, torch {torch.__version__}, {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else f", {threads} threads")
          + f"; p=0.1; minimum of {args.blocks} alternating blocks of {args.number} calls")
    if args.device == "cpu":
        worst = run("cpu", (32, 4096), (torch.float32, torch.bfloat16), args.number, args.blocks)
        print(f"largest ratio: {worst:.2f}")
        return 0
    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    from fastdrop import _library
    from fastdrop.backends import load_native
    if load_native() is None:
        print("fastdrop's C++ operators are not built here: only the Python launch runs")
    for path in ("cpp", "python"):
        _library.set_launch(path)
        run("cuda", (1 << 12,), dtypes, args.number, args.blocks, label=f"launch: {path}")
    _library.set_launch("cpp")
    return 0


if __name__ == "__main__":
    sys.exit(main())
