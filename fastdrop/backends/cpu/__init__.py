"""The CPU backend: C++ operators (``ops.cpp``) built at first use for the installed torch.

    python -m fastdrop.backends.cpu      # build now (make's set-up does), instead of at the first CPU call

``ops.cpp`` computes the mask contract's Philox words and applies them in one pass over memory,
vectorized (AVX-512, AVX2 or plain x86-64, picked at load time), on PyTorch's own thread pool,
and registers ``torch.ops.fastdrop_cpu``: ``dropout`` (with a C++ autograd node: no Python in
the backward), ``apply_into``, ``keep_mask`` and ``dropout_add`` (with its node).

The library is compiled once per torch version and source into a cache folder
(``$FASTDROP_CACHE``, else ``$XDG_CACHE_HOME/fastdrop``, else ``~/.cache/fastdrop``), as
``torch.utils.cpp_extension`` builds its extensions; a lock keeps concurrent first calls
(pytest-xdist, DataLoader workers) to one build. Where it cannot be built or loaded (no
compiler, not Linux), one warning says why and the same bits come from torch ops on the
contract's keep bits (``fastdrop.contract``, numpy): correct, slower.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from ... import contract

SOURCE = Path(__file__).with_name("ops.cpp")
HALF_TYPES = (torch.float16, torch.bfloat16)
_ops = False  # torch.ops.fastdrop_cpu once loaded; None where it could not be
_dropout = None  # its dropout operator, once loaded


def _flags() -> tuple:
    from torch.utils import cpp_extension

    flags = ["-O3", "-std=c++17", "-shared", "-fPIC", "-w", "-ffp-contract=off",  # no FMA: PyTorch's rounding
             f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
             *(f"-I{p}" for p in cpp_extension.include_paths())]
    paths = cpp_extension.library_paths()
    libs = [f"-L{p}" for p in paths] + [f"-Wl,-rpath,{p}" for p in paths] + ["-ltorch_cpu", "-lc10"]
    if torch.backends.openmp.is_available():
        # ATen's parallel_for is inline OpenMP code: compiled with -fopenmp it runs on the libgomp
        # torch has loaded (same soname), that is on PyTorch's own threads.
        flags.append("-fopenmp")
        libs.append("-lgomp")
    return flags, libs


def cache_dir() -> Path:
    if os.environ.get("FASTDROP_CACHE"):
        return Path(os.environ["FASTDROP_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastdrop"


def library_path() -> Path:
    """Where the library for this torch and this source lives (built or not)."""
    flags, libs = _flags()
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(" ".join(flags + libs).encode())
    version = re.sub(r"[^0-9A-Za-z.]", "_", torch.__version__)
    return cache_dir() / f"fastdrop_cpu-torch{version}-{h.hexdigest()[:16]}.so"


def build(path: Path | None = None) -> Path:
    """Compile ``ops.cpp`` against the installed torch into ``path`` (default: ``library_path()``),
    unless another process has just done so; returns the path."""
    if not sys.platform.startswith("linux"):
        raise RuntimeError(f"the C++ CPU operators are built on Linux only (this is {sys.platform})")
    import fcntl  # Unix's

    path = path or library_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build; the others wait for it, then load it
        if path.exists():
            return path
        flags, libs = _flags()
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        cmd = [os.environ.get("CXX", "c++"), *flags, str(SOURCE), "-o", str(tmp), *libs]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except OSError as e:  # no compiler at all
            raise RuntimeError(f"{cmd[0]} could not run: {e}") from None
        if done.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"{cmd[0]} failed:\n{done.stderr[-3000:]}")
        os.replace(tmp, path)
    return path


def ops():
    """``torch.ops.fastdrop_cpu``, built if needed and loaded at first need; None (after one
    warning that says why) where it cannot be."""
    global _ops, _dropout
    if _ops is False:
        _ops = None
        try:
            path = library_path()
            if not path.exists():
                print(f"fastdrop: building the CPU operators for torch {torch.__version__} (once, about 20 s) "
                      f"into {path.parent}", file=sys.stderr)
                build(path)
            torch.ops.load_library(str(path))
            _ops = torch.ops.fastdrop_cpu
            overload = _ops.dropout.default
            _dropout = getattr(overload, "_op", overload)  # its C++ callable: 0.6 us less a call
        except Exception as e:  # noqa: BLE001 - any failure leaves the torch-ops path, which is always there
            warnings.warn(f"fastdrop: the C++ CPU operators are not available ({type(e).__name__}: "
                          f"{str(e).strip()[:2000]}); CPU dropout runs on torch ops instead (same bits, slower)",
                          RuntimeWarning, stacklevel=2)
    return _ops


def _signed(v: int) -> int:
    return contract.signed64(v % contract.UINT64)


# ---- what the library calls --------------------------------------------------------------------

def fresh(x, seed: int, offset: int, threshold: int, scale: float, noise_shape=None, affine=None):
    """A fresh y = dropout(x) with x's layout, through the operator's C++ autograd node where
    autograd records; None where the operators are not built."""
    lib = ops()
    if lib is None:
        return None
    add, drop = (0.0, 0.0) if affine is None else affine
    return _dropout(x, _signed(seed), _signed(offset), threshold, scale, add, drop, affine is not None, noise_shape)


def apply(x, y, seed: int, offset: int, threshold: int, scale: float, *, noise_shape=None, affine=None):
    """y = dropout(x) by the mask contract, for CPU tensors of one shape and any strides (y may be x).

    ``noise_shape`` (x.dim() entries, each 1 or x's size): one keep bit per element of that
    shape, the bit at its row-major index, shared along the size-1 dims.
    ``affine=(add, drop)``: alpha dropout's form, ``keep ? round(x * scale) + add : drop``.
    """
    if x.numel() == 0:
        return y
    lib = ops()
    if lib is None:
        return _apply_torch(x, y, seed, offset, threshold, scale, noise_shape, affine)
    add, drop = (0.0, 0.0) if affine is None else affine
    lib.apply_into(x.detach(), y.detach(), _signed(seed), _signed(offset), threshold, scale, add, drop,
                   affine is not None, noise_shape)
    return y


def keep_mask(out: torch.Tensor, seed: int, offset: int, threshold: int) -> torch.Tensor:
    """Keep bits of stream elements [offset, offset + out.numel()) into the contiguous bool tensor ``out``."""
    if out.numel() == 0:  # offset may be 2**64 here
        return out
    lib = ops()
    if lib is None:
        out.view(-1).copy_(torch.from_numpy(contract.keep_bits(seed, offset, out.numel(), threshold)))
    else:
        lib.keep_mask(out, _signed(seed), _signed(offset), threshold)
    return out


def dropout_add(x, bias, residual, seed: int, offset: int, threshold: int, scale: float):
    """residual + dropout(x + bias) in one pass (bias over the last dim, or None), contiguous
    output; through the operator's C++ autograd node where autograd records."""
    lib = ops()
    if lib is None:
        return dropout_add_torch(x, bias, residual, seed, offset, threshold, scale)
    return lib.dropout_add(x, bias, residual, _signed(seed), _signed(offset), threshold, scale)


# ---- without the operators: torch ops on the contract's keep bits -----------------------------

def _scaled(xs, scale):
    # x * scale in the kernels' arithmetic: float32 for 16-bit types (as PyTorch does).
    if xs.dtype in HALF_TYPES:
        return xs.float().mul_(scale)
    return xs * torch.tensor(scale, dtype=xs.dtype)


def transform(xs, keep, scale, affine):
    """keep ? x * scale : 0, or with affine=(add, drop): keep ? x * scale + add : drop.

    The affine form rounds as PyTorch's alpha dropout, x.mul(noise).add_(b): x * scale is
    rounded to x's dtype before the add. ``keep`` broadcasts to ``xs``.
    """
    vals = _scaled(xs, scale)
    if affine is None:
        # masked_fill, not a multiply by 0: dropped inf/NaN become 0.
        return vals.masked_fill_(~keep, 0)
    add, drop = affine
    if xs.dtype in HALF_TYPES:
        vals = vals.to(xs.dtype).float()
    return vals.add_(add).masked_fill_(~keep, drop)


def _apply_torch(x, y, seed, offset, threshold, scale, noise_shape, affine):
    shape = x.shape if noise_shape is None else noise_shape
    keep = torch.from_numpy(contract.keep_bits(seed, offset, int(torch.Size(shape).numel()), threshold))
    return y.copy_(transform(x, keep.view(shape), scale, affine))


def dropout_add_torch(x, bias, residual, seed, offset, threshold, scale):
    """``dropout_add`` without the operators: the same bits and one rounding, through torch ops."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    keep = torch.from_numpy(contract.keep_bits(seed, offset, x.numel(), threshold)).view(x.shape)
    vals = x.to(compute, copy=True)
    if bias is not None:
        vals = vals.add_(bias.to(compute))
    vals = vals.mul_(torch.tensor(scale, dtype=compute)).masked_fill_(~keep, 0)
    return vals.add_(residual.to(compute)).to(x.dtype).contiguous()


def main():
    start = time.perf_counter()
    path = build()
    print(f"fastdrop: {path} ready in {time.perf_counter() - start:.0f} s")
