"""The CPU path's key ratios timed in alternating rounds: fastdrop / PyTorch, lower is better.

    python -m bench.rounds            # 7 rounds
    python -m bench.rounds --rounds 15

``bench.microbench`` times each provider in its own block; on a small shared VM the machine
drifts between blocks (ratios of one case moved 0.7-1.5 between runs). Here every round times
each case once for fastdrop and once for PyTorch, back to back, and the table gives the
medians over rounds: backward at 2^24 and at small sizes (the mask regenerated against a
stored one), and the noise_shape forms at 2^20 (bench.microbench's shapes and references).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import fastdrop

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def backward(op, n, dt):
    xg = torch.randn(n, dtype=DTYPES[dt], requires_grad=True)
    g, y = torch.randn(n, dtype=DTYPES[dt]), op(xg)
    return lambda: torch.autograd.grad(y, xg, g, retain_graph=True)


def forward(op, shape, dt):
    x = torch.randn(shape, dtype=DTYPES[dt])
    return lambda: op(x)


def cases():
    """name -> (fastdrop closure, PyTorch closure, calls per timing)."""
    out = {}
    ours, theirs = (lambda x: fastdrop.dropout(x, 0.5)), (lambda x: F.dropout(x, 0.5))
    for dt in DTYPES:
        out[f"backward 2^24 {dt}"] = (backward(ours, 1 << 24, dt), backward(theirs, 1 << 24, dt), 3)
    for k in (12, 16):
        out[f"backward 2^{k} fp32"] = (backward(ours, 1 << k, "fp32"), backward(theirs, 1 << k, "fp32"), 200)
    for dt in ("fp32", "fp16"):
        out[f"dropout2d 2^20 {dt}"] = (forward(lambda x: fastdrop.dropout2d(x, 0.5), (16, 64, 32, 32), dt),
                                       forward(lambda x: F.dropout2d(x, 0.5), (16, 64, 32, 32), dt), 20)
        out[f"drop_path 2^20 {dt}"] = (
            forward(lambda x: fastdrop.drop_path(x, 0.5, True), (16, 256, 256), dt),
            forward(lambda x: x * x.new_empty(16, 1, 1).bernoulli_(0.5).div_(0.5), (16, 256, 256), dt), 20)
        out[f"noise_shape 2^20 {dt}"] = (
            forward(lambda x: fastdrop.dropout(x, 0.5, noise_shape=(1, None, 1)), (16, 256, 256), dt),
            forward(lambda x: x * F.dropout(x.new_ones(1, x.shape[1], 1), 0.5), (16, 256, 256), dt), 20)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    table = cases()
    times = {k: ([], []) for k in table}
    for ours, theirs, _ in table.values():  # warm-up: compiled loops, allocator
        ours(), theirs()
    for _ in range(args.rounds):
        for name, (ours, theirs, calls) in table.items():
            for fn, into in ((ours, times[name][0]), (theirs, times[name][1])):
                start = time.perf_counter()
                for _ in range(calls):
                    fn()
                into.append((time.perf_counter() - start) / calls)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds, p=0.5")
    print(f"{'case':<24}{'fastdrop ms':>13}{'torch ms':>11}{'ratio':>8}")
    for name, (a, b) in times.items():
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"{name:<24}{ma * 1e3:>13.3f}{mb * 1e3:>11.3f}{ma / mb:>8.2f}")


if __name__ == "__main__":
    main()
