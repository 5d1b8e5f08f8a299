"""Static performance check of the GPU kernels, without a GPU.

    python -m bench.static_check               # the table, one row per listed call
    python -m bench.static_check --markdown    # the same as a Markdown table
    python -m bench.static_check --json        # machine-readable (tests/test_static_check.py)

Each listed call runs through the public API (``fastdrop.dropout`` and family, forward and
backward) on CPU tensors that are never touched. The launcher does all its work (layout
walk, tile choice, arguments) and calls the jitted kernel; there, instead of launching,
Triton's own binder specializes the arguments and compiles for sm_90 exactly as a launch on
an H100 would, and the grid is recorded. The SASS of that cubin (Triton ships ptxas and
cuobjdump) then gives registers, spills and local memory, shared memory,
the width of every global load and store, and the instruction mix.

Throughput model (NVIDIA H100 SXM5), a deliberately simple bound, not a simulator:
- 132 SMs, 4 sub-partitions (SMSPs) per SM, each issuing at most one warp-instruction per
  clock (NVIDIA, "H100 Tensor Core GPU Architecture" whitepaper, SM section). Clock 1.755
  GHz: below the SXM5's 1.98 GHz maximum boost, so the model does not flatter compute.
- Per-SM throughput of the CUDA C++ Programming Guide, "Arithmetic Instructions" table,
  compute capability 9.0: 32-bit integer add/compare/logic/shift and 32-bit integer
  multiply(-add) 64 results/clock/SM (half rate: a warp-instruction holds its pipe for 2
  clocks), fp32 add/mul/fma 128 (full rate), conversions 16 (a warp-instruction holds the
  pipe for 8 clocks). ALU-pipe and FMA-pipe integer instructions are separate pipes.
  Uniform-datapath (U*) instructions and memory instructions take an issue slot only.
- A kernel needs max(issue, 2 * ALU, 2 * IMAD + FP32, 8 * conversions) clocks per SMSP for
  its warp-instructions (no loop in any kernel: each warp runs its SASS once, predicated-off
  instructions still issue), spread evenly over the 528 SMSPs.
- Memory: bytes read + written at 3.0 TB/s, what a device-to-device copy reaches on an
  H100 SXM5 (about 90% of the 3.35 TB/s HBM3 peak).

compute/memory is the ratio of the two times. Below about 0.7 issue hides behind memory and
the kernel should run at the copy roofline; above 1 it cannot. "instr/elem" counts thread
instructions per useful element: idle lanes and masked tails count against the kernel.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

SMS, CLOCK_HZ, SMSP_PER_SM = 132, 1.755e9, 4
COPY_BYTES_PER_S = 3.0e12
RATIO_LIMIT = 0.7

# sm_90 opcodes by pipe (the opcode's first dotted part).
ALU = {"IADD3", "LOP3", "SHF", "LEA", "ISETP", "SEL", "FSEL", "FSETP", "PRMT", "IMNMX", "MOV", "PLOP3",
       "IABS", "SGXT", "BMSK", "P2R", "R2P", "FMNMX", "HSETP2", "VIMNMX", "IADD", "F2FP", "CS2R"}
IMAD = {"IMAD", "IMUL", "IDP", "IMADSP"}
FP32 = {"FFMA", "FADD", "FMUL", "HFMA2", "HADD2", "HMUL2"}
CONV = {"F2F", "I2F", "F2I", "I2FP", "F2IP", "MUFU", "POPC", "FLO", "BREV", "FRND"}
NOT_ISSUED = {"NOP"}


@dataclass(frozen=True)
class Call:
    name: str
    build: object  # () -> None: runs the call (forward and backward) through the public API
    itemsize: int
    bytes_per_elem: int  # memory traffic per element at the roofline (read + write)
    vector: bool = True  # contiguous 16/32-bit tensors: every x/y access must be 128-bit
    note: str = ""


def _calls():
    import torch

    import fastdrop

    seed, offset, p = 0x9E3779B97F4A7C15, 2**36, 0.1  # offsets from CUDA generators are multiples of 4
    kw = dict(seed=seed, offset=offset, backend="triton")

    def fwd_bwd(fn, x):
        # The gradient has the output's layout (empty_like keeps it), as autograd's usually has.
        y = fn(x.requires_grad_())
        _PHASE[0] = "bwd"
        try:
            y.backward(torch.empty_like(y))
        finally:
            _PHASE[0] = "fwd"

    def t(shape, dtype=torch.float16, fmt=None):
        x = torch.empty(shape, dtype=dtype)
        if fmt is not None:
            x = x.contiguous(memory_format=fmt)
        return x

    cl, cl3 = torch.channels_last, torch.channels_last_3d
    n24 = 1 << 24
    calls = []

    def add(name, build, dtype=torch.float16, bytes_per_elem=None, vector=True, note=""):
        size = torch.empty((), dtype=dtype).element_size()
        calls.append(Call(name, build, size, bytes_per_elem or 2 * size, vector, note))

    for dt, dn in ((torch.float16, "fp16"), (torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        add(f"dropout {dn} 2^24",
            functools.partial(fwd_bwd, lambda x: fastdrop.dropout(x, p, **kw), t((n24,), dt)), dt)
    add("dropout fp16 channels-last (32,64,56,56)",
        lambda: fwd_bwd(lambda x: fastdrop.dropout(x, p, **kw), t((32, 64, 56, 56), fmt=cl)))
    add("dropout fp32 channels-last (32,64,56,56)",
        lambda: fwd_bwd(lambda x: fastdrop.dropout(x, p, **kw), t((32, 64, 56, 56), torch.float32, fmt=cl)),
        torch.float32)
    add("dropout fp16 channels-last-3d (8,32,16,56,56)",
        lambda: fwd_bwd(lambda x: fastdrop.dropout(x, p, **kw), t((8, 32, 16, 56, 56), fmt=cl3)))
    add("dropout fp16 transposed (1024,4096) strides (1,1024)",
        lambda: fwd_bwd(lambda x: fastdrop.dropout(x, p, **kw), t((4096, 1024)).t()))
    add("dropout1d fp16 (32,256,2048)",
        lambda: fwd_bwd(lambda x: fastdrop.dropout1d(x, p, **kw), t((32, 256, 2048))))
    add("dropout1d fp16 (32,256,2048) strides (C*L,1,C)",
        lambda: fwd_bwd(lambda x: fastdrop.dropout1d(x, p, **kw), t((32, 2048, 256)).transpose(1, 2)))
    add("dropout2d fp16 (32,64,56,56)",
        lambda: fwd_bwd(lambda x: fastdrop.dropout2d(x, p, **kw), t((32, 64, 56, 56))))
    add("dropout2d fp16 channels-last (32,64,56,56)",
        lambda: fwd_bwd(lambda x: fastdrop.dropout2d(x, p, **kw), t((32, 64, 56, 56), fmt=cl)))
    add("dropout3d fp16 (8,32,16,56,56)",
        lambda: fwd_bwd(lambda x: fastdrop.dropout3d(x, p, **kw), t((8, 32, 16, 56, 56))))
    add("dropout3d fp16 channels-last-3d (8,32,16,56,56)",
        lambda: fwd_bwd(lambda x: fastdrop.dropout3d(x, p, **kw), t((8, 32, 16, 56, 56), fmt=cl3)))
    add("drop_path fp16 (64,197,768)",
        lambda: fwd_bwd(lambda x: fastdrop.drop_path(x, p, training=True, **kw), t((64, 197, 768))))
    add("noise_shape (1,L,1) fp16 (64,197,768)",
        lambda: fwd_bwd(lambda x: fastdrop.dropout(x, p, noise_shape=(1, 197, 1), **kw), t((64, 197, 768))))
    add("alpha_dropout fp16 2^24",
        lambda: fwd_bwd(lambda x: fastdrop.alpha_dropout(x, p, training=True, **kw), t((n24,))))
    # Forward reads x and residual and writes y; backward is plain dropout on the gradient
    # (bytes of its own pass), reported as a separate launch below.
    add("dropout_add fp16 (32,512,1024)",
        lambda: fwd_bwd(lambda x: fastdrop.dropout_add(x, t((32, 512, 1024)), p, **kw), t((32, 512, 1024))),
        bytes_per_elem=6)
    add("bias_dropout_add fp16 (32,512,1024)",
        lambda: fwd_bwd(lambda x: fastdrop.bias_dropout_add(x, t((1024,)), t((32, 512, 1024)), p, **kw),
                        t((32, 512, 1024))), bytes_per_elem=6)
    add("bias_dropout_add bf16 (32,512,1024)",
        lambda: fwd_bwd(lambda x: fastdrop.bias_dropout_add(x, t((1024,), torch.bfloat16),
                                                            t((32, 512, 1024), torch.bfloat16), p, **kw),
                        t((32, 512, 1024), torch.bfloat16)), torch.bfloat16, bytes_per_elem=6)
    return calls


CALL_NAMES = [  # kept in step with _calls() (checked by the test): parametrize without importing torch
    "dropout fp16 2^24", "dropout bf16 2^24", "dropout fp32 2^24",
    "dropout fp16 channels-last (32,64,56,56)", "dropout fp32 channels-last (32,64,56,56)",
    "dropout fp16 channels-last-3d (8,32,16,56,56)", "dropout fp16 transposed (1024,4096) strides (1,1024)",
    "dropout1d fp16 (32,256,2048)", "dropout1d fp16 (32,256,2048) strides (C*L,1,C)",
    "dropout2d fp16 (32,64,56,56)", "dropout2d fp16 channels-last (32,64,56,56)",
    "dropout3d fp16 (8,32,16,56,56)", "dropout3d fp16 channels-last-3d (8,32,16,56,56)",
    "drop_path fp16 (64,197,768)", "noise_shape (1,L,1) fp16 (64,197,768)", "alpha_dropout fp16 2^24",
    "dropout_add fp16 (32,512,1024)", "bias_dropout_add fp16 (32,512,1024)",
    "bias_dropout_add bf16 (32,512,1024)",
]


# ---- capture: the launcher's launches, compiled for sm_90 instead of run -------------------


class _Sm90Driver:
    """Stands in for the CUDA driver: device 0, an sm_90 target. Nothing is ever launched."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget("cuda", 90, 32)

    def __getattr__(self, name):  # anything else would mean a launch: refuse loudly
        raise RuntimeError(f"static check: the sm_90 stand-in driver has no {name!r}")


_PHASE = ["fwd"]  # the pass the launches being recorded belong to


@dataclass
class Launch:
    kernel: str
    programs: int
    compiled: object = field(repr=False)
    numel: int = 0  # elements of the tensor the launch covers (x's numel)
    phase: str = "fwd"


def _kernel_objects():
    from triton.runtime.jit import JITFunction

    from fastdrop.kernels import dropout, residual
    return [obj for mod in (dropout, residual) for obj in vars(mod).values()
            if isinstance(obj, JITFunction) and obj.fn.__name__.endswith("_kernel")]


@contextlib.contextmanager
def capture():
    """Within: every kernel launch compiles for sm_90 and is recorded instead of run."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("static check: unset TRITON_INTERPRET (the kernels must be compilable)")
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    import fastdrop  # noqa: F401  (imported before the switch below, as a real run would)
    launches = []
    kernels = _kernel_objects()
    saved = [(k, k.__dict__.get("run"), k.device_caches) for k in kernels]

    def recorder(k):
        def run(*args, grid, warmup, **kwargs):
            compiled = JITFunction.run(k, *args, grid=grid, warmup=True, **kwargs)
            programs = 1
            for g in (grid if isinstance(grid, tuple) else tuple(grid)):
                programs *= g
            launches.append(Launch(k.fn.__name__, programs, compiled, args[0].numel(), _PHASE[0]))
        return run

    old_driver = getattr(driver, "_active", None)  # unset (None) on a machine without a GPU
    driver.set_active(_Sm90Driver())
    # The CPU tensors of the listed calls reach the kernels only through this capture; the
    # public API lets backend="triton" take CPU tensors only when it believes the
    # interpreter runs them.
    old_env = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        for k in kernels:
            k.device_caches = collections.defaultdict(k.create_binder)
            k.run = recorder(k)
        yield launches
    finally:
        for k, run, caches in saved:
            if run is None:
                k.__dict__.pop("run", None)
            else:
                k.run = run
            k.device_caches = caches
        driver._active = old_driver
        if old_env is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old_env


# ---- SASS analysis -----------------------------------------------------------------------


def _tool(name):
    import triton
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(path) if path.exists() else name


def _width(op):
    mods = op.split(".")[1:]
    for m, bits in (("128", 128), ("64", 64), ("U16", 16), ("S16", 16), ("U8", 8), ("S8", 8)):
        if m in mods:
            return bits
    return 32


@functools.lru_cache(maxsize=None)
def _sass_of(cubin: bytes):
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "k.cubin"
        f.write_bytes(cubin)
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", str(f)], capture_output=True,
                               text=True, check=True, timeout=60).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", str(f)], capture_output=True, text=True,
                              check=True, timeout=60).stdout
    res = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", sass)
    # The trailing "BRA self" loop after EXIT is padding: never executed.
    while ops and ops[-1].split(".")[0] in ("BRA", "NOP"):
        ops.pop()
    return {k: int(v) for k, v in res.items()}, ops


def analyse(launch):
    """Per-launch figures: resources, access widths, per-warp instruction mix."""
    res, ops = _sass_of(launch.compiled.asm["cubin"])
    md = launch.compiled.metadata
    mix = collections.Counter()
    loads, stores = collections.Counter(), collections.Counter()
    for op in ops:
        head = op.split(".")[0]
        if head in NOT_ISSUED:
            continue
        mix["issue"] += 1
        if head in ALU:
            mix["alu"] += 1
        elif head in IMAD:
            mix["imad"] += 1
        elif head in FP32:
            mix["fp32"] += 1
        elif head in CONV:
            mix["conv"] += 1
        if head in ("LDG", "LD"):
            loads[_width(op)] += 1
        elif head in ("STG", "ST"):
            stores[_width(op)] += 1
        elif head in ("LDL", "STL"):
            mix["local"] += 1
    bounds = {"issue": mix["issue"], "alu": 2 * mix["alu"], "fma": 2 * mix["imad"] + mix["fp32"],
              "conv": 8 * mix["conv"]}
    bound = max(bounds, key=bounds.get)
    clocks = bounds[bound]
    warps = launch.programs * md.num_warps
    return dict(kernel=launch.kernel, programs=launch.programs, num_warps=md.num_warps,
                regs=res.get("REG", 0),
                stack=res.get("STACK", 0), local=res.get("LOCAL", 0) + mix["local"],
                shared=max(res.get("SHARED", 0), md.shared), loads=dict(loads), stores=dict(stores),
                static_instr=mix["issue"], warp_instr=warps * mix["issue"], warp_clocks=warps * clocks,
                bound=bound,
                mix=dict(mix))


def _merge(parts):
    # One pass may take several launches (sliced layouts): time adds up, resources are the worst.
    out = dict(parts[0])
    for p in parts[1:]:
        for k in ("warp_instr", "warp_clocks", "programs"):
            out[k] += p[k]
        for k in ("regs", "stack", "local", "shared", "static_instr"):
            out[k] = max(out[k], p[k])
        for k in ("loads", "stores"):
            out[k] = dict(collections.Counter(out[k]) + collections.Counter(p[k]))
        if p["kernel"] not in out["kernel"].split("+"):
            out["kernel"] += "+" + p["kernel"]
    out["launches"] = len(parts)
    return out


def check(call):
    """Rows of one call: forward, and backward where it launches something else."""
    with capture() as launches:
        call.build()
    rows = []
    for phase in ("fwd", "bwd"):
        mine = [ln for ln in launches if ln.phase == phase]
        if not mine:
            continue
        key = [(ln.compiled.hash, ln.programs) for ln in mine]
        if rows and key == rows[-1]["key"]:  # backward is forward's kernel on the gradient
            rows[-1]["phase"] = "fwd+bwd"
            continue
        n = max(ln.numel for ln in mine)
        part = _merge([analyse(ln) for ln in mine])
        # Forward moves the call's bytes; backward is a dropout pass over the gradient.
        nbytes = (call.bytes_per_elem if phase == "fwd" else 2 * call.itemsize) * n
        compute_s = part["warp_clocks"] / (SMS * SMSP_PER_SM * CLOCK_HZ)
        memory_s = nbytes / COPY_BYTES_PER_S
        part.update(call=call.name, phase=phase, key=key, numel=n, vector=call.vector,
                    instr_per_elem=part["warp_instr"] * 32 / n, compute_s=compute_s, memory_s=memory_s,
                    ratio=compute_s / memory_s)
        rows.append(part)
    for r in rows:
        del r["key"]
    return rows


def _widths(d):
    return " ".join(f"{b}x{c}" for b, c in sorted(d.items(), reverse=True)) or "-"


HEADER = ["call", "pass", "kernel", "regs", "spill/local B", "smem B", "LDG bits x count", "STG bits x count",
          "instr/elem", "bound by", "compute/memory", "pred. % of copy"]


def table_rows(results):
    rows = []
    for r in results:
        rows.append([r["call"], r["phase"], r["kernel"].lstrip("_").replace("_kernel", ""), str(r["regs"]),
                     f"{r['stack']}/{r['local']}", str(r["shared"]), _widths(r["loads"]),
                     _widths(r["stores"]), f"{r['instr_per_elem']:.1f}", r["bound"], f"{r['ratio']:.2f}",
                     f"{min(100, 100 / r['ratio']):.0f}"])
    return rows


def run_all(names=None):
    calls = [c for c in _calls() if names is None or c.name in names]
    return [row for c in calls for row in check(c)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="one JSON list of rows on stdout")
    ap.add_argument("--markdown", action="store_true", help="a Markdown table")
    ap.add_argument("--only", action="append", help="a call name (repeatable)")
    ap.add_argument("--save", type=Path, help="also write the JSON rows to this file")
    args = ap.parse_args(argv)
    results = run_all(args.only)
    if args.save:
        args.save.write_text(json.dumps(results))
    if args.json:
        json.dump(results, sys.stdout)
        return 0
    rows = table_rows(results)
    if args.markdown:
        print("| " + " | ".join(HEADER) + " |")
        print("|" + "---|" * len(HEADER))
        for r in rows:
            print("| " + " | ".join(r) + " |")
    else:
        widths = [max(len(x) for x in col) for col in zip(HEADER, *rows)]
        for r in [HEADER] + rows:
            print("  ".join(x.ljust(w) for x, w in zip(r, widths)))
    print(f"\nModel: H100 SXM5, {SMS} SMs x {SMSP_PER_SM} SMSPs at {CLOCK_HZ / 1e9} GHz, "
          "1 warp-instr/clock/SMSP, "
          f"integer pipes half rate, conversions 1/8; copy {COPY_BYTES_PER_S / 1e12} TB/s. "
          f"Target: compute/memory <= {RATIO_LIMIT}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
