"""CPU dropout of a contiguous tensor as a C++ operator with a C++ autograd node.

    python -m fastdrop._aot      # builds it with the loops (make's set-up)

``_op.cpp`` writes each call (per element or with a noise shape, alpha's affine form too) as
jobs (``_job``) and runs them with the loops' ``omp_body``, inline or on PyTorch's OpenMP
threads, as ``_cpu.run`` does: same bits, no Python in the backward and little per call.
Built for the installed torch (its C++ ABI) into ``_op_<torch>_<source>.so`` next to this
file; where there is none (no compiler at set-up, another torch, not built) or it does not
load, ``op()`` is None and the Python autograd.Function serves.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

from . import _cpu, _job

SOURCE = Path(__file__).with_name("_op.cpp")
_op = False  # the operator once loaded and set up; None where there is none


def library_path() -> Path:
    """The built library for this torch and this source (_op.cpp, _job.py, this file)."""
    import torch

    h = hashlib.sha256()
    for name in ("_op.cpp", "_job.py", "_op.py"):
        h.update((Path(__file__).parent / name).read_bytes())
    version = re.sub(r"[^0-9A-Za-z]", "_", torch.__version__)
    return Path(__file__).with_name(f"_op_{version}_{h.hexdigest()[:16]}.so")


def _defines() -> list:
    """_job's layout as -D flags: the one source of the numbers the C++ writes."""
    names = {k: v for k, v in vars(_job).items() if k.startswith(("D_", "KIND_")) or k == "DESC"}
    names.update({f"CODE_{dtype.upper()}": code for dtype, code in _job.DTYPE_CODES.items()})
    return [f"-D{k}={v}" for k, v in names.items()]


def build() -> Path:
    """Compile ``_op.cpp`` against the installed torch; returns the library's path."""
    import torch
    from torch.utils import cpp_extension

    out = library_path()
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    libs = cpp_extension.library_paths()
    cmd = [os.environ.get("CXX", "c++"), "-O2", "-std=c++20", "-shared", "-fPIC", "-w",
           f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", *_defines(),
           *(f"-I{p}" for p in cpp_extension.include_paths()), str(SOURCE), "-o", str(tmp),
           *(f"-L{p}" for p in libs), *(f"-Wl,-rpath,{p}" for p in libs), "-ltorch_cpu", "-lc10"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{' '.join(cmd[:2])} ... failed:\n{done.stderr[-2000:]}")
    for stale in Path(__file__).parent.glob("_op_*.so"):  # other sources or torch versions
        stale.unlink()
    os.replace(tmp, out)
    return out


def op():
    """``torch.ops.fastdrop_cpu.dropout``, loaded at first need; None where it is not
    built for this torch and source, or where the loops it runs are not there."""
    global _op
    if _op is False:
        _op = None
        path = library_path()
        loops = _cpu.loops()
        if path.exists() and loops is not None:
            import torch

            try:
                torch.ops.load_library(str(path))
            except (OSError, RuntimeError) as e:
                print(f"fastdrop: {path.name} did not load ({e}); the Python autograd path serves",
                      file=sys.stderr)
                return None
            gomp = _cpu._omp()
            gomp_address = 0 if gomp is None else ctypes.cast(gomp, ctypes.c_void_p).value
            torch.ops.fastdrop_cpu.init(loops.omp_body_address(), gomp_address, _cpu.OMP_CHUNK, _cpu.MMAPPED,
                                        _cpu.HUGE_PAGE)
            overload = torch.ops.fastdrop_cpu.dropout.default
            _op = getattr(overload, "_op", overload)  # its C++ callable: 0.6 us less a call
    return _op
