"""Layouts and variants on the GPU, next to the static model; the launch path on CPU.

    python -m bench.layouts --out DIR        # GPU: every listed call of bench.static_check
    python -m bench.layouts --launch-path    # CPU: fastdrop's Python per call, kernel launch stubbed

GPU: for each call of ``bench.static_check`` (same shapes, dtypes, layouts and variants),
fastdrop forward and backward against eager PyTorch's equivalent, torch.compile of it, and
a copy of the same bytes (``y.copy_(x)`` on tensors of the call's layout), all timed in
the same run with ``triton.testing.do_bench``. Effective GB/s counts the bytes each pass
must move (read + write, as the static check does); % of copy is fastdrop's time against
the copy's. The static check's prediction for the same call goes next to it. Writes
``layouts/<device>.csv`` and ``layouts/<device>.md`` under DIR (a subfolder: bench.report
reads DIR's own CSVs, the dropout sweep's).

Launch path: the jitted kernels are replaced by stubs that return at once, so a call costs
fastdrop's own Python from ``fastdrop.dropout`` (or the family function) to the launch.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path


def _eager(name, torch, F):
    """PyTorch's own version of a listed call: fn(x) -> y (x as the call builds it)."""
    p = 0.1
    if name.startswith("dropout1d"):
        return lambda x: F.dropout1d(x, p)
    if name.startswith("dropout2d"):
        return lambda x: F.dropout2d(x, p)
    if name.startswith("dropout3d"):
        return lambda x: F.dropout3d(x, p)
    if name.startswith("alpha_dropout"):
        return lambda x: F.alpha_dropout(x, p, True)
    if name.startswith("drop_path"):  # timm's drop_path
        def drop_path(x):
            keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - p)
            return x * keep.div_(1 - p)
        return drop_path
    if name.startswith("noise_shape"):
        def noise(x):
            keep = x.new_empty((1, x.shape[1], 1)).bernoulli_(1 - p)
            return x * keep.div_(1 - p)
        return noise
    return lambda x: F.dropout(x, p)


def gpu_rows(budget_s, predictions, quick=False, device="cuda"):
    import torch
    import torch.nn.functional as F

    import fastdrop
    from bench import static_check as S

    t0 = time.time()
    dev = torch.device(device)

    def bench(fn, grads):
        if dev.type == "cuda":
            import triton.testing
            return triton.testing.do_bench(fn, warmup=5 if quick else 10, rep=20 if quick else 50,
                                           grad_to_none=grads, quantiles=[0.5, 0.2, 0.8])
        # CPU (a rehearsal of this script, not a measurement that means anything): 3 runs.
        times = []
        for _ in range(4):
            for t in grads or ():
                t.grad = None
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        times = sorted(times[1:])
        return times[1], times[0], times[2]

    def measure(call, fn, xs, g):
        y = fn(xs)
        with torch.no_grad():
            fwd = bench(lambda: fn(xs), None)
        return {"forward": fwd, "backward": bench(lambda: y.backward(g, retain_graph=True), [xs])}

    # First sweep: fastdrop, eager and the copy for every call; then torch.compile while
    # the budget lasts (its compile takes seconds per call).
    measured = {}
    for sweep in ("eager", "compile"):
        for call in S._calls():
            if time.time() - t0 > budget_s:
                print(f"budget spent: {sweep} sweep stops before {call.name}", flush=True)
                break
            built = _build_on(call, torch, fastdrop, dev)
            if built is None:
                continue
            x, residual, bias, fd = built
            xs = x.clone().requires_grad_()
            g = torch.empty_like(x).normal_()
            if residual is None:
                eager = _eager(call.name, torch, F)
            else:
                eager = ((lambda t: residual + F.dropout(t, 0.1)) if bias is None
                         else (lambda t: residual + F.dropout(t + bias, 0.1)))
            res = measured.setdefault(call.name, {})
            try:
                if sweep == "eager":
                    res["fastdrop"] = measure(call, fd, xs, g)
                    res["torch"] = measure(call, eager, xs, g)
                    dst = torch.empty_like(x)
                    copy = bench(lambda: dst.copy_(x), None)
                    res["copy"] = {"forward": copy, "backward": copy}
                elif residual is None:  # torch.compile of the residual forms is not the point here
                    res["torch.compile"] = measure(call, torch.compile(eager), xs, g)
            except Exception as e:  # one call's failure must not stop the sweep
                print(call.name, sweep, "failed:", repr(e)[:300], flush=True)
            if sweep == "eager" and "fastdrop" in res:
                print(f"{call.name}: fastdrop fwd {res['fastdrop']['forward'][0] * 1e3:.0f} us, "
                      f"copy {res['copy']['forward'][0] * 1e3:.0f} us", flush=True)
            del x, xs, g
            torch.cuda.empty_cache()
    rows = []
    for call in S._calls():
        res = measured.get(call.name)
        if not res or "copy" not in res:
            continue
        n = _numel(call, torch, fastdrop)
        for mode in ("forward", "backward"):
            nbytes = (call.bytes_per_elem if mode == "forward" else 2 * call.itemsize) * n
            copy_ms = res["copy"][mode][0] * nbytes / (2 * call.itemsize * n)  # a copy of this many bytes
            p = predictions.get((call.name, "fwd" if mode == "forward" else "bwd")) or \
                predictions.get((call.name, "fwd+bwd"))
            for prov, modes in res.items():
                med, p20, p80 = modes[mode]
                # The copy moves 2 * itemsize bytes per element whatever the call moves.
                moved = 2 * call.itemsize * n if prov == "copy" else nbytes
                rows.append(dict(call=call.name, mode=mode, provider=prov, numel=n, median_ms=med, p20_ms=p20,
                                 p80_ms=p80, gbps=moved / med / 1e6,
                                 pct_copy=100.0 if prov == "copy" else 100 * copy_ms / med,
                                 predicted_ratio=p["ratio"] if p else "",
                                 predicted_pct=min(100, 100 / p["ratio"]) if p else ""))
    return rows


def _numel(call, torch, fastdrop):
    built = _build_on(call, torch, fastdrop, torch.device("meta"))
    return built[0].numel()


def _build_on(call, torch, fastdrop, dev):
    """The call's input on the GPU with its layout, and fastdrop's fn(x) for it."""
    import functools
    recorded = {}
    orig = {name: getattr(fastdrop, name) for name in ("dropout", "dropout1d", "dropout2d", "dropout3d",
                                                         "drop_path", "alpha_dropout", "dropout_add",
                                                         "bias_dropout_add")}

    def spy(name, *args, **kwargs):
        recorded["name"], recorded["args"], recorded["kwargs"] = name, args, kwargs
        raise _Built()

    try:
        for name in orig:
            setattr(fastdrop, name, functools.partial(spy, name))
        try:
            call.build()
        except _Built:
            pass
    finally:
        for name, fn in orig.items():
            setattr(fastdrop, name, fn)
    if "name" not in recorded:
        return None
    name, args, kwargs = recorded["name"], recorded["args"], dict(recorded["kwargs"])
    for k in ("seed", "offset", "backend"):
        kwargs.pop(k, None)

    def to_dev(t):
        out = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=dev)
        return out if dev.type == "meta" else out.normal_()

    args = [to_dev(a) if isinstance(a, torch.Tensor) else a for a in args]
    x = args[0].detach()
    fn = orig[name]
    residual = bias = None
    if name == "dropout_add":
        residual = args[1]
        return x, residual, None, lambda t: fn(t, residual, *args[2:], **kwargs)
    if name == "bias_dropout_add":
        bias, residual = args[1], args[2]
        return x, residual, bias, lambda t: fn(t, bias, residual, *args[3:], **kwargs)
    return x, None, None, lambda t: fn(t, *args[1:], **kwargs)


class _Built(Exception):
    pass


def write(rows, out, device):
    out = out / "layouts"
    out.mkdir(parents=True, exist_ok=True)
    tag = device.replace(" ", "_")
    path = out / f"{tag}.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [f"**{device}**: effective GB/s (% of a copy of the same layout, measured in the same run); "
             "static model: compute/memory and the % of copy it predicts.", "",
             "| call | pass | fastdrop | torch | torch.compile | copy | fastdrop vs torch | model c/m "
             "| model % |",
             "|---|---|---|---|---|---|---|---|---|"]
    by = {}
    for r in rows:
        by.setdefault((r["call"], r["mode"]), {})[r["provider"]] = r
    for (call, mode), d in by.items():
        fd = d.get("fastdrop")

        def cell(p):
            r = d.get(p)
            return "-" if r is None else f"{r['gbps']:.0f} ({r['pct_copy']:.0f}%)"
        vs = f"{d['torch']['median_ms'] / fd['median_ms']:.2f}x" if fd and "torch" in d else "-"
        pr = fd["predicted_ratio"] if fd else ""
        lines.append(f"| {call} | {mode} | {cell('fastdrop')} | {cell('torch')} | {cell('torch.compile')} | "
                     f"{cell('copy')} | {vs} | {pr if pr == '' else f'{pr:.2f}'} | "
                     f"{'' if pr == '' else f'{min(100, 100 / pr):.0f}'} |")
    (out / f"{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print("wrote", path)


# ---- launch path on CPU ------------------------------------------------------------------


class _NoLaunch:
    def __getitem__(self, grid):
        return _no_launch


def _no_launch(*args, **kwargs):
    return None


def launch_path(repeats=5, number=2000):
    """Median microseconds per call, fastdrop's Python only (the kernel launch is a stub)."""
    os.environ["TRITON_INTERPRET"] = "1"  # lets backend="triton" take CPU tensors
    import timeit

    import torch

    import fastdrop
    from fastdrop.kernels import dropout as kd
    from fastdrop.kernels import residual as kr
    for mod in (kd, kr):
        for name in list(vars(mod)):
            if name.startswith("_") and name.endswith("_kernel"):
                setattr(mod, name, _NoLaunch())
    kw = dict(seed=1234, offset=0, backend="triton")
    x = torch.empty(1 << 20, dtype=torch.float16)
    x4 = torch.empty(8, 64, 56, 56, dtype=torch.float16)
    cl = x4.contiguous(memory_format=torch.channels_last)
    tr = torch.empty(1024, 1024, dtype=torch.float16).t()
    h = torch.empty(8, 128, 1024, dtype=torch.float16)
    cases = {
        "dropout contiguous": lambda: fastdrop.dropout(x, 0.1, **kw),
        "dropout channels-last": lambda: fastdrop.dropout(cl, 0.1, **kw),
        "dropout transposed": lambda: fastdrop.dropout(tr, 0.1, **kw),
        "dropout2d contiguous": lambda: fastdrop.dropout2d(x4, 0.1, **kw),
        "dropout2d channels-last": lambda: fastdrop.dropout2d(cl, 0.1, **kw),
        "drop_path": lambda: fastdrop.drop_path(h, 0.1, True, **kw),
        "bias_dropout_add": lambda: fastdrop.bias_dropout_add(h, h[0, 0], h, 0.1, **kw),
    }
    out = {}
    for name, fn in cases.items():
        fn()
        times = timeit.repeat(fn, repeat=repeats, number=number)
        out[name] = sorted(times)[len(times) // 2] / number * 1e6
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--budget", type=float, default=240.0, help="seconds; no new call starts after it")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--static", type=Path, help="bench.static_check --json output (else it runs here)")
    ap.add_argument("--launch-path", action="store_true",
                    help="CPU: fastdrop's Python per call, launch stubbed")
    args = ap.parse_args(argv)
    if args.launch_path:
        for name, us in launch_path().items():
            print(f"{name:26s} {us:7.2f} us/call")
        return 0
    import torch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.quick:
        print("no CUDA device: the layout benchmark needs a GPU (--quick rehearses it on the CPU)")
        return 0
    if args.static and args.static.exists():
        results = json.loads(args.static.read_text())
    else:
        from bench import static_check as S
        results = S.run_all()
    predictions = {(r["call"], r["phase"]): r for r in results}
    rows = gpu_rows(args.budget, predictions, args.quick, device)
    if rows:
        write(rows, args.out, torch.cuda.get_device_name() if device == "cuda" else "cpu-rehearsal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
