"""Dropout microbenchmark: fastdrop vs torch eager vs torch.compile, against a copy roofline.

    python -m bench.microbench          # quick: a few sizes; CPU: 2^12/14/16/24 of each dtype and
                                        # the variants (channel, drop path, noise shape, alpha,
                                        # dropout_add) forward at 2^20 and 2^24
    python -m bench.microbench --full   # every size 2^12.. (2^28 GPU, 2^24 CPU), all dtypes
    python -m bench.microbench --full --record   # publish: into bench/results/

Writes <device>.csv (<device>-quick.csv for the quick run) and a plot next to it into
bench/out/ (ignored by git), --out DIR, or with --record bench/results/, the tracked folder
whose README.md is generated from its records (python -m bench.report --write). Every
provider's bandwidth uses the same byte count (see ``bytes_moved``). On CPU a case's providers
are timed in alternating rounds (``time_cpu``), so the machine's drift falls on all of them
alike. The console labels every row (LEGEND) and ends with fastdrop's speed-up over PyTorch
eager per size and dtype (``bench.report.speedup_text``).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import platform
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.benchmark as benchmark

import fastdrop

from .report import speedup_text

try:
    import triton
    import triton.testing
except ImportError:  # CPU-only installs without triton still run the CPU benchmark
    triton = None

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # sweep order
MODES = ("forward", "backward", "forward+backward")
COMPILE_LIMIT_S = 30.0  # on CPU a slower inductor compile drops torch.compile from the run
RESULTS = Path(__file__).parent / "results"  # tracked: written only with --record
OUT = Path(__file__).parent / "out"  # the default, ignored by git: a run leaves the checkout clean
COLUMNS = ["device", "torch", "triton", "date", "threads", "dtype", "numel", "mode", "provider", "p",
           "median_ms", "p20_ms", "p80_ms", "gbps", "pct_roofline", "speedup_vs_eager",
           "saved_bytes_per_elem"]


def bytes_moved(mode: str, numel: int, itemsize: int) -> int:
    """Bytes counted for every provider: each pass reads one tensor and writes one."""
    passes = 2 if mode == "forward+backward" else 1
    return passes * 2 * itemsize * numel


def time_cuda(fn, grads):
    """(median, p20, p80) in ms on the GPU."""
    med, p20, p80 = triton.testing.do_bench(fn, warmup=10, rep=50, grad_to_none=grads,
                                            quantiles=[0.5, 0.2, 0.8])
    return med, p20, p80


def time_cpu(fns: dict, full=False) -> dict:
    """name -> (median, p20, p80) in ms on the CPU, with all of torch's threads (Timer defaults
    to 1). The closures are timed in alternating rounds, one block of calls each per round, so
    the machine's drift during a run (large on small shared VMs: timed one after the other, a
    case's ratio moved from 0.73 to 1.21 between runs) falls on all of them alike."""
    timers = {k: benchmark.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
              for k, fn in fns.items()}
    block_s = 0.02 if full else 0.01
    numbers = {}
    for k, t in timers.items():  # one call warms up, the second sizes the blocks
        t.timeit(1)
        numbers[k] = max(1, int(block_s / max(t.timeit(1).times[0], 1e-7)))
    times = {k: [] for k in fns}
    for _ in range(15 if full else 7):
        for k, t in timers.items():
            times[k].append(t.timeit(numbers[k]).times[0])
    return {k: tuple(float(q) * 1e3 for q in np.quantile(v, [0.5, 0.2, 0.8])) for k, v in times.items()}


def make_ops():
    """provider -> dropout(x, p); the copy roofline is timed separately."""
    import torch._dynamo.config as dynamo_config
    import torch._functorch.config as functorch_config
    if hasattr(functorch_config, "donated_buffer"):
        functorch_config.donated_buffer = False  # donated buffers forbid backward(retain_graph=True)
    for name in ("recompile_limit", "cache_size_limit"):  # one compile per dtype and grad mode
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, 64)
    return {
        "fastdrop": lambda x, p: fastdrop.dropout(x, p, training=True),
        "torch": lambda x, p: F.dropout(x, p, training=True),
        "torch.compile": torch.compile(F.dropout, dynamic=True),
    }


def closure(op, mode, x, xg, g, p):
    """The timed closure: the dropout call, its backward on a graph built here, or both."""
    if mode == "forward":
        return lambda: op(x, p)
    if mode == "backward":
        y = op(xg, p)
        return lambda: torch.autograd.grad(y, xg, g, retain_graph=True)
    return lambda: torch.autograd.grad(op(xg, p), xg, g)


def copy_closure(mode, x, g, out, out2):
    """The roofline: one plain device copy per pass (forward+backward makes two)."""
    if mode == "forward+backward":
        return lambda: (out.copy_(x), out2.copy_(g))
    return lambda: out.copy_(x)


def saved_bytes_per_elem(op, like, p, numel=4096) -> float:
    """Bytes of tensors autograd keeps for backward, per input element (on a small tensor)."""
    xg = torch.randn(numel, device=like.device, dtype=like.dtype, requires_grad=True)
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        op(xg, p)
    return total / xg.numel()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu-{model}"


# The dropout family, forward, against what a PyTorch user writes for it: x -> y closures over
# inputs made from x (rows "<variant> forward" of the CSV; bytes: x read, y written).
def _torch_drop_path(x, p):  # timm's drop_path
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - p)
    return x * keep.div_(1 - p)


VARIANTS = {  # name: (shape of n elements, fastdrop, PyTorch)
    "dropout2d": (lambda n: (n >> 16, 64, 32, 32), lambda x, r, p: fastdrop.dropout2d(x, p),
                  lambda x, r, p: F.dropout2d(x, p)),
    "drop_path": (lambda n: (n >> 16, 256, 256), lambda x, r, p: fastdrop.drop_path(x, p, True),
                  lambda x, r, p: _torch_drop_path(x, p)),
    "noise_shape": (lambda n: (n >> 16, 256, 256), lambda x, r, p: fastdrop.dropout(x, p, noise_shape=(1, None, 1)),
                    lambda x, r, p: x * F.dropout(x.new_ones(1, x.shape[1], 1), p)),
    "alpha_dropout": (lambda n: (n,), lambda x, r, p: fastdrop.alpha_dropout(x, p, True),
                      lambda x, r, p: F.alpha_dropout(x, p, True)),
    "dropout_add": (lambda n: (n,), lambda x, r, p: fastdrop.dropout_add(x, r, p),
                    lambda x, r, p: r + F.dropout(x, p)),
}


def sweep(device: torch.device, full: bool):
    """(dtype, numel, variant) blocks, largest sizes first: a run cut short by --budget keeps
    those. variant None: dropout itself, every mode and provider."""
    if device.type == "cuda":
        dtypes = list(DTYPES) if full else ["fp32", "bf16"]
        logs = range(12, 29) if full else range(12, 29, 4)
        return [(d, 1 << k, None) for k in reversed(logs) for d in dtypes]
    logs = range(12, 25) if full else (24, 16, 14, 12)
    plain = [(d, 1 << k, None) for k in sorted(logs, reverse=True) for d in DTYPES]
    # The variants first: bench.report reads saved bytes per dtype from the last rows (dropout's).
    return [(d, 1 << k, v) for k in (24, 20) for v in VARIANTS for d in DTYPES] + plain


def run_variant(dt, n, variant, p, full):
    """The forward of one variant: fastdrop, PyTorch and the copy roofline, side by side."""
    shape, ours, theirs = VARIANTS[variant]
    x = torch.randn(shape(n), dtype=DTYPES[dt])
    r, out = torch.randn_like(x), torch.empty_like(x)
    fns = {"fastdrop": lambda: ours(x, r, p), "torch": lambda: theirs(x, r, p), "copy": lambda: out.copy_(x)}
    times = time_cpu(fns, full)
    rows = []
    for name, (med, p20, p80) in times.items():
        rows.append(dict(dtype=dt, numel=n, mode=f"{variant} forward", provider=name, p=p, median_ms=med,
                         p20_ms=p20, p80_ms=p80, gbps=bytes_moved("forward", n, x.element_size()) / med / 1e6,
                         pct_roofline=100 * times["copy"][0] / med,
                         speedup_vs_eager=times["torch"][0] / med if name != "copy" else float("nan"),
                         saved_bytes_per_elem=float("nan")))
        print(fmt_row(rows[-1]), flush=True)
    return rows


def fmt_row(r):
    """One console row: every column labelled by LEGEND (the variant is "dropout" for plain dropout)."""
    def num(v, spec):
        return format(v, spec) if isinstance(v, float) and not math.isnan(v) else "-"
    if r["mode"] in MODES:
        variant, pass_ = "dropout", r["mode"]
    else:  # "<variant> forward"
        variant, pass_ = r["mode"].rsplit(" ", 1)
    return (f"{r['dtype']:<5} 2^{int(math.log2(r['numel'])):<3} {variant:<13} {pass_:<16} {r['provider']:<13}"
            f"{r['median_ms']:>10.4f}{r['p20_ms']:>10.4f}{r['p80_ms']:>10.4f}{r['gbps']:>9.2f}"
            f"{r['pct_roofline']:>7.1f}%{num(r['speedup_vs_eager'], '.2f'):>9}"
            f"{num(r['saved_bytes_per_elem'], '.2f'):>7}")


HEADER = (f"{'dtype':<5} {'size':<5} {'variant':<13} {'pass':<16} {'provider':<13}{'median ms':>10}"
          f"{'p20 ms':>10}{'p80 ms':>10}{'GB/s':>9}{'% copy':>8}{'speed-up':>9}{'saved':>7}")

LEGEND = """\
Each row times one provider on one case; the providers of a case are timed side by side.
  size        elements of the input, as a power of two
  variant     dropout, or one of the family (dropout2d, drop_path, noise_shape, alpha_dropout,
              dropout_add); pass: forward, backward (on a graph built beforehand), or both
  provider    fastdrop; torch = PyTorch eager (F.dropout, or what a PyTorch user writes for the
              variant); torch.compile = torch.compile(F.dropout); copy = a plain copy (the roofline)
  median ms   time per call; p20 ms / p80 ms: the 20th and 80th percentiles over the timing rounds
  GB/s        effective bandwidth: 2 x itemsize x elements per pass (reads one tensor, writes one)
  % copy      the plain copy's time / this one's: 100% runs at the speed of a copy
  speed-up    PyTorch eager's time / this one's: >1 means faster than PyTorch eager
  saved       bytes per element autograd keeps for backward (fastdrop: 0, its backward regenerates
              the mask from the seed; - where not measured)"""


def run_block(device, dt, n, p, ops, skipped, failed, saved, full):
    """All modes and providers for one (dtype, numel): rows without the run-wide columns."""
    dtype = DTYPES[dt]
    x = torch.randn(n, device=device, dtype=dtype)
    xg = x.clone().requires_grad_()
    g = torch.randn_like(x)
    out, out2 = torch.empty_like(x), torch.empty_like(x)
    rows = []
    for mode in MODES:
        times, cpu_fns = {}, {}
        for name, op in ops.items():
            if name in skipped or (name, mode, dt) in skipped:
                continue
            try:
                t0 = time.perf_counter()
                fn = closure(op, mode, x, xg, g, p)
                fn()  # where torch.compile compiles, and where any provider's failure shows
                warm_s = time.perf_counter() - t0
                if device.type == "cuda":
                    times[name] = time_cuda(fn, [xg])
                else:
                    cpu_fns[name] = fn  # timed below, all providers in alternating rounds
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - a failing provider is reported, the run goes on
                why = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
                failed.setdefault((name, mode, dt, why), []).append(f"2^{n.bit_length() - 1}")
                print(f"  {name} {mode} {dt} 2^{n.bit_length() - 1} failed: {why}")
                if name == "torch.compile":  # it would fail again at the next size, slowly
                    skipped[name, mode, dt] = f"failed: {why}"
                continue
            if (name, dt) not in saved:
                try:
                    saved[name, dt] = saved_bytes_per_elem(op, x, p)
                except Exception as e:  # noqa: BLE001
                    saved[name, dt] = float("nan")
                    print(f"  {name} {dt}: saved bytes not measured: {type(e).__name__}: {e}")
            if name == "torch.compile" and device.type == "cpu" and warm_s > COMPILE_LIMIT_S:
                skipped[name] = f"CPU inductor compile took {warm_s:.0f} s (limit {COMPILE_LIMIT_S:.0f} s)"
                print(f"  skipping {name} from here on: {skipped[name]}")
        if device.type == "cuda":
            times["copy"] = time_cuda(copy_closure(mode, x, g, out, out2), None)
        else:
            times = time_cpu({**cpu_fns, "copy": copy_closure(mode, x, g, out, out2)}, full)
        nbytes = bytes_moved(mode, n, x.element_size())
        eager = times["torch"][0] if "torch" in times else float("nan")
        for name, (med, p20, p80) in times.items():
            rows.append(dict(
                dtype=dt, numel=n, mode=mode, provider=name,
                p=p, median_ms=med, p20_ms=p20, p80_ms=p80, gbps=nbytes / med / 1e6,
                pct_roofline=100 * times["copy"][0] / med,
                speedup_vs_eager=eager / med if name != "copy" else float("nan"),
                saved_bytes_per_elem=saved.get((name, dt), float("nan")),
            ))
            print(fmt_row(rows[-1]), flush=True)
    return rows


def plot(rows, path: Path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not importable: no plot")
        return
    dtypes = list(dict.fromkeys(r["dtype"] for r in rows))
    fig, axes = plt.subplots(len(dtypes), len(MODES), figsize=(5 * len(MODES), 3.5 * len(dtypes)),
                             squeeze=False, sharex=True)
    for ax, (dt, mode) in zip(axes.flat, [(d, m) for d in dtypes for m in MODES]):
        for prov in dict.fromkeys(r["provider"] for r in rows):
            pts = sorted((r["numel"], r["gbps"]) for r in rows
                         if r["dtype"] == dt and r["mode"] == mode and r["provider"] == prov)
            if pts:
                ax.plot(*zip(*pts), marker=".", label=prov)
        ax.set(title=f"{dt} {mode}", xlabel="elements", ylabel="GB/s")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.suptitle(f"dropout bandwidth, {rows[0]['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="the whole sweep (all sizes and dtypes)")
    where = ap.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, default=None, help="folder for the CSV and plot (default bench/out/)")
    where.add_argument("--record", action="store_true",
                       help="write into bench/results/, the published records "
                            "(then: python -m bench.report --write)")
    ap.add_argument("--p", type=float, default=0.5, help="drop probability (default 0.5)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds: start no new size after this (the CSV keeps what was measured)")
    args = ap.parse_args(argv)

    start = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = device_name(device)
    out = RESULTS if args.record else args.out or OUT
    out.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9.-]+", "_", dev).strip("_") + ("" if args.full else "-quick")
    csv_path = out / f"{stem}.csv"
    common = dict(device=dev, torch=torch.__version__, triton=getattr(triton, "__version__", "none"),
                  date=datetime.date.today().isoformat(), threads=torch.get_num_threads())
    print(f"{dev}: torch {common['torch']}, triton {common['triton']}, {common['threads']} threads, "
          f"p={args.p}, {'full' if args.full else 'quick'} sweep")
    print(LEGEND, flush=True)
    ops, skipped, failed, saved, rows = make_ops(), {}, {}, {}, []
    blocks = sweep(device, args.full)
    if device.type == "cpu" and not args.full:  # inductor compiles take minutes: fp32 only here
        skipped.update({("torch.compile", m, d): "quick CPU run: fp32 only" for m in MODES for d in DTYPES
                        if d != "fp32"})
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for i, (dt, n, variant) in enumerate(blocks, 1):
            elapsed = time.perf_counter() - start
            size = f"{variant or 'dropout'}, {dt}, 2^{n.bit_length() - 1} elements"
            if args.budget is not None and elapsed > args.budget:
                print(f"time budget of {args.budget:.0f} s spent: stopping before {size}")
                break
            print(f"\n[{i}/{len(blocks)}] {size} ({elapsed:.0f} s in)\n{HEADER}", flush=True)
            try:
                block = (run_variant(dt, n, variant, args.p, args.full) if variant else
                         run_block(device, dt, n, args.p, ops, skipped, failed, saved, args.full))
            except torch.cuda.OutOfMemoryError:
                print(f"  out of memory: no {size}")
                torch.cuda.empty_cache()
                continue
            for r in block:
                r.update(common)
                writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()})
            f.flush()
            rows += block
    for (name, mode, dt, why), sizes in failed.items():
        print(f"failed: {name} {mode} {dt} at {', '.join(sizes)}: {why}")
    for key, why in skipped.items():
        print(f"not measured from then on: {' '.join(key) if isinstance(key, tuple) else key}: {why}")
    print(f"wrote {csv_path} ({len(rows)} rows) in {time.perf_counter() - start:.0f} s")
    if rows:
        plot(rows, csv_path.with_suffix(".png"))
    print(f"tables: python -m bench.report {out}")
    summary = speedup_text(rows)
    if summary:
        print(f"\n{dev}: torch {common['torch']}, {common['threads']} threads, p={args.p}, "
              f"{'full' if args.full else 'quick'} sweep.\n{summary}", end="")


if __name__ == "__main__":
    main()
