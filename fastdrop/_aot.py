"""The CPU loops compiled ahead of time: the first CPU call without numba's 0.5 s start.

    python -m fastdrop._aot      # build for this machine (make's set-up runs it), and fastdrop._op

The loops of ``fastdrop._jit``, unchanged, go through ``numba.pycc`` into an extension module
next to this file, one per x86-64 level (``x86-64-v3``: AVX2, ``-v4``: AVX-512), loaded only
where torch reports that level and only if built from the present source. It imports no
numba (a first call costs milliseconds, not numba's import and set-up) and runs code of the
same source as the JIT (same bits, same speed).

Its entry points check none of their arguments (a wrong dtype crashes, a strided array
passed as contiguous gives wrong values), so ``Loops`` calls them only for the exact dtype,
rank and layout each was built for, and hands anything else to the JIT loops.
"""

from __future__ import annotations

import hashlib
import importlib
import platform
import sys
import time
from pathlib import Path

import numpy as np

# Storage dtypes as the loops see them (float16 as uint16, bfloat16 as int16: see _jit).
DTYPES = {"f32": np.float32, "f64": np.float64, "f16": np.uint16, "bf16": np.int16}
LEVELS = {"AVX512": ("x86-64-v4", "x86-64-v3"), "AVX2": ("x86-64-v3",)}  # torch's capability -> usable


def module_name(level: str) -> str:
    return "_loops_" + level.replace("-", "_")


def _levels() -> tuple:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ()
    import torch
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")()
    return LEVELS.get(capability, ())


def source_hash() -> int:
    """The loops' source (this file, _jit.py and _job.py) as an int64: a module built from
    other source is not loaded, so an edit to the loops never runs stale machine code."""
    h = hashlib.sha256()
    for name in ("_jit.py", "_job.py", "_aot.py"):
        h.update((Path(__file__).parent / name).read_bytes())
    return int.from_bytes(h.digest()[:8], "little", signed=True)


def _exports():
    """(name, python function, signature) of every entry point."""
    from numba import types as T
    from numba.np.numpy_support import from_dtype

    from . import _jit

    scalars_rows = (T.int64, T.int64, T.uint64, T.int64, T.float64, T.float64, T.float64, T.boolean, T.int64,
                    T.int64)
    bits, strides = T.Array(T.boolean, 1, "C"), T.Array(T.int64, 1, "C")
    out = [("keep_into", _jit.keep_into, T.void(T.int64, T.int64, T.uint64, T.int64, bits, T.int64, T.int64))]
    for tag, dt in DTYPES.items():
        nb = from_dtype(np.dtype(dt))
        for layout in ("C", "A"):
            a4 = T.Array(nb, 4, layout)
            out.append((f"dropout_rows_{tag}_{layout}", _jit.dropout_rows, T.void(a4, a4, *scalars_rows)))
            out.append((f"noise_rows_{tag}_{layout}", _jit.noise_rows,
                        T.void(a4, a4, bits, strides, T.float64, T.float64, T.float64, T.boolean, T.int64, T.int64)))
        a1 = T.Array(nb, 1, "C")
        out.append((f"dropout_add_{tag}", _jit.dropout_add,
                    T.void(a1, a1, T.boolean, a1, a1, T.int64, T.int64, T.uint64, T.int64, T.float64, T.int64,
                           T.int64)))
    out.append(("omp_body", _jit.omp_body, T.void(T.int64)))
    return out


OMP_SYMBOL = "fastdrop_omp_body"  # omp_body as a C function, exported by the module


def build(folder: Path | None = None) -> Path:
    """Compile the loops for the best level this machine runs; returns the module's path."""
    from numba.pycc import CC
    from numba.pycc import compiler

    from . import _jit

    levels = _levels()
    if not levels:
        raise RuntimeError(f"ahead-of-time loops are built for x86-64 with AVX2 or AVX-512; this machine is "
                           f"{platform.machine()} (the JIT loops serve it)")
    cc = CC(module_name(levels[0]))
    cc.output_dir = str(folder or Path(__file__).parent)
    cc.target_cpu = levels[0]
    cc.verbose = False
    for name, fn, sig in _exports():
        cc.export(name, sig)(fn.py_func)
    built_from = source_hash()
    cc.export("source_hash", "int64()")(lambda: built_from)
    # pycc's wrappers keep the GIL, which serialized the CPU path's threads (2^24 on two
    # threads: 104 ms, on one: 35 ms); its compile_extra is given the JIT's nogil flag. And
    # omp_body's C wrapper (numba makes one per function) is exported under OMP_SYMBOL: the
    # OpenMP runtime calls it (fastdrop._cpu).
    compile_extra = compiler.compile_extra

    def nogil(typing, target, fn, args, ret, flags, *rest, **kw):
        flags.release_gil = True
        cres = compile_extra(typing, target, fn, args, ret, flags, *rest, **kw)
        if fn is _jit.omp_body.py_func:
            wrapper = cres.library.get_function(cres.fndesc.llvm_cfunc_wrapper_name)
            wrapper.name, wrapper.linkage = OMP_SYMBOL, "external"
        return cres

    cull = compiler._ModuleCompiler._cull_exports

    def cull_keeping_omp_body(self):
        self.dll_exports.append(OMP_SYMBOL)  # left visible, as pycc leaves no other function
        return cull(self)

    compiler.compile_extra, compiler._ModuleCompiler._cull_exports = nogil, cull_keeping_omp_body
    try:
        cc.compile()
    finally:
        compiler.compile_extra, compiler._ModuleCompiler._cull_exports = compile_extra, cull
    return next(Path(cc.output_dir).glob(module_name(levels[0]) + ".*"))


def load(jit_loops):
    """``Loops`` over the built module for this machine, or None where there is none."""
    for level in _levels():
        try:
            mod = importlib.import_module(f"{__package__}.{module_name(level)}")
        except ImportError:
            continue
        if mod.source_hash() == source_hash():
            return Loops(mod, jit_loops)
    return None


def _layout(*arrays) -> str:
    for a in arrays:  # a loop, not all() over a generator: this runs on every call (0.54 -> 0.29 us)
        if not a.flags.c_contiguous:
            return "A"
    return "C"


class Loops:
    """The loops of ``fastdrop._jit`` (same names and arguments), through the built module
    where a call's arrays are exactly what an entry point was built for."""

    def __init__(self, mod, jit_loops):
        self._mod, self._jit_loops = mod, jit_loops
        # (kind, storage dtype, layout) -> entry point, built once: the checks below run on
        # every call (measured: 1.7 us a call through the shim, 0.7 us straight to the entry point).
        self._entries = {}
        for tag, dt in DTYPES.items():
            for kind, layouts in (("dropout_rows", ("C", "A")), ("noise_rows", ("C", "A")), ("dropout_add", ("",))):
                for layout in layouts:
                    name = f"{kind}_{tag}" + (f"_{layout}" if layout else "")
                    self._entries[kind, np.dtype(dt), layout or "C"] = getattr(mod, name)

        self._omp_address = None

    def omp_body_address(self) -> int:
        """The address of the module's ``omp_body`` as a C function (see ``_jit``)."""
        if self._omp_address is None:
            import ctypes
            fn = ctypes.CDLL(self._mod.__file__)[OMP_SYMBOL]  # the module already loaded: its own handle
            self._omp_address = ctypes.cast(fn, ctypes.c_void_p).value
        return self._omp_address

    def _fallback(self):
        loops = self._jit_loops()
        if loops is None:  # not reached by fastdrop's own calls: every one has an entry point
            raise RuntimeError("fastdrop: no built CPU loop takes these arrays, and numba (the JIT loops) "
                               "is not installed")
        return loops

    def _entry(self, kind, x, y, ndim, layout):
        if (y.dtype != x.dtype or x.ndim != ndim or y.ndim != ndim or not y.flags.writeable
                or not (x.flags.aligned and y.flags.aligned)):
            return None
        return self._entries.get((kind, x.dtype, layout))

    def dropout_rows(self, x, y, *args):
        fn = self._entry("dropout_rows", x, y, 4, _layout(x, y))
        return fn(x, y, *args) if fn is not None else self._fallback().dropout_rows(x, y, *args)

    def noise_rows(self, x, y, bits, ns, *args):
        fn = self._entry("noise_rows", x, y, 4, _layout(x, y))
        if (fn is None or bits.dtype != np.bool_ or bits.ndim != 1 or not bits.flags.c_contiguous
                or ns.dtype != np.int64 or ns.ndim != 1 or not ns.flags.c_contiguous):
            return self._fallback().noise_rows(x, y, bits, ns, *args)
        return fn(x, y, bits, ns, *args)

    def keep_into(self, k0, k1, offset, t, out, lo, hi):
        if out.dtype != np.bool_ or out.ndim != 1 or not out.flags.c_contiguous or not out.flags.writeable:
            return self._fallback().keep_into(k0, k1, offset, t, out, lo, hi)
        return self._mod.keep_into(k0, k1, offset, t, out, lo, hi)

    def dropout_add(self, x, bias, has_bias, res, y, *args):
        fn = self._entry("dropout_add", x, y, 1, "C")
        if (fn is None or _layout(x, bias, res, y) != "C" or bias.dtype != x.dtype or res.dtype != x.dtype
                or bias.ndim != 1 or res.ndim != 1):
            return self._fallback().dropout_add(x, bias, has_bias, res, y, *args)
        return fn(x, bias, has_bias, res, y, *args)


def main():
    start = time.perf_counter()
    try:
        path = build()
        print(f"fastdrop: built {path.name} ({len(_exports())} entry points) in "
              f"{time.perf_counter() - start:.0f} s")
    except Exception as e:  # noqa: BLE001 - a set-up step: numba's JIT serves without the module
        print(f"fastdrop: the CPU loops were not built ahead of time ({type(e).__name__}: {e}); numba's "
              f"JIT loops serve instead, with a 0.5 s first call per process", file=sys.stderr)
    from . import _op

    start = time.perf_counter()
    try:
        path = _op.build()
        print(f"fastdrop: built {path.name} (the C++ autograd node) in {time.perf_counter() - start:.0f} s")
    except Exception as e:  # noqa: BLE001 - a set-up step: the Python autograd.Function serves without it
        print(f"fastdrop: the C++ operator was not built ({type(e).__name__}: {e}); the Python autograd "
              f"Function serves instead", file=sys.stderr)


if __name__ == "__main__":
    main()
