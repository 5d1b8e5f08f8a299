"""The Triton backend: which kernel of ``fastdrop.kernels`` a call's layout takes, with what grid
and tiles, and its launch through Triton (``kernel[grid]``).

This is the Python launch: ``backend="triton"``, CUDA where fastdrop's C++ operators are not
built, and the helper the C++ launch (``fastdrop/csrc/launch.cpp``) calls on a launch key it has
not seen (``_triton_launch``): that helper launches through Triton and hands back what Triton
compiled, so that the key's later calls launch from C++. The C++ planner is this file's, line
for line (``layout_plan``, ``launch``, ``key_text``); tests hold the two equal.

Imported at the first call that needs it (``fastdrop.backends.resolve``), or when the C++
operators load on a CUDA build of torch: triton takes 0.1-0.4 s to import, and the CPU path
never needs it.

Layouts. An element's stream index is ``sum(coord * mask_stride)``: the row-major strides of the
input (plain dropout) or of a broadcast noise shape with 0 on its size-1 dims. Each layout gets
the kernel that keeps its accesses 16 bytes wide (see ``kernels/dropout.py``); a layout's plan
(kernel, grid, walked strides, tiles) is a pure function of it and cached.

Launch keys. Everything Triton specializes on is fixed by a call's launch key: kernel, device,
grid and layout arguments, dtype and 16-byte alignment of each pointer, the integer type each
run-time scalar takes, the constexprs.
"""

from __future__ import annotations

import contextlib
import functools
import math
import struct
import warnings

import torch
import triton
from triton import knobs

from ..contract import noise_strides, row_major, signed64
from ..kernels import dropout as kd
from ..kernels import residual as kr

WORDS, BLOCK, NUM_WARPS = kd.WORDS, kd.BLOCK, kd.NUM_WARPS
MAX_DIMS = 4  # dims the strided and broadcast kernels walk after merging; more are walked slice by slice
INDEX32_LIMIT = 2**31  # in-tile offsets below this take 32-bit index math


# ---- the backend interface ------------------------------------------------------------------------

def run(x, plan):
    y = x if plan.inplace else torch.empty_like(x)
    return launch(x, y, plan.seed, plan.offset, plan.threshold, plan.scale, noise_shape=plan.noise_shape,
                  affine=plan.affine)


def dropout_add(x, bias, residual, plan):
    """residual + dropout(x + bias), one pass; contiguous output (other layouts are copied first)."""
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return launch_dropout_add(x.contiguous(), None if bias is None else bias.contiguous(), residual.contiguous(),
                              y, plan.seed, plan.offset, plan.threshold, plan.scale)


# ---- layouts ----------------------------------------------------------------------------------------

def walk_dims(shape, x_strides, y_strides, mask_strides):
    """Dims in y's memory order, merged where x, y and the mask index all allow.

    Returns (sizes, x_strides, y_strides, mask_strides), outermost first, without
    size-1 dims; a 0 mask stride marks a dim the mask is shared along. One dim with unit
    strides everywhere means both tensors are contiguous and the mask index is the memory
    index.
    """
    logical = list(mask_strides)
    dims = [d for d in range(len(shape)) if shape[d] != 1]
    # Outermost = largest y stride; ties keep logical order (stable sort).
    dims.sort(key=lambda d: -y_strides[d])
    out = []
    for d in dims:
        cur = [shape[d], x_strides[d], y_strides[d], logical[d]]
        if out:
            prev = out[-1]
            if all(prev[k] == cur[k] * cur[0] for k in (1, 2, 3)):
                prev[0] *= cur[0]
                prev[1:] = cur[1:]
                continue
        out.append(cur)
    return [tuple(col) for col in zip(*out)] if out else [(), (), (), ()]


def _pad(cols, width):
    # Left-pad walked dims to `width` with size-1, stride-0 dims.
    pad = width - len(cols[0])
    return [(1,) * pad + cols[0]] + [(0,) * pad + c for c in cols[1:]]


def _tile(extent, cap):
    # A power-of-two tile length for a dim of this extent: the longest up to cap whose
    # padding stays within 1/16 of the extent, else the one with the least padding.
    best = None
    t = min(triton.next_power_of_2(extent), cap)
    while t >= 1:
        waste = _cdiv(extent, t) * t - extent
        if waste * 16 <= extent:
            return t
        if best is None or waste < best[0]:
            best = (waste, t)
        t //= 2
    return best[1]


def _bcast_plan(sizes, xs, ys, ls, itemsize, shift, block, index32_limit):
    # At most 4 walked dims: [O0, O1, A, B], B innermost in memory.
    osz, ox, oy, ol = _pad([col[:-2] for col in (sizes, xs, ys, ls)], 2) if len(sizes) > 2 else \
        [(1, 1), (0, 0), (0, 0), (0, 0)]
    (A, B), (xa, xb), (ya, yb), (la, lb) = _pad([col[-2:] for col in (sizes, xs, ys, ls)], 2)
    vec = 16 // itemsize
    if la == 0 and lb == 0:
        keep = kd.KEEP_SCALAR
    elif la == 0 or lb == 0:
        keep = kd.KEEP_ROW if lb == 0 else kd.KEEP_COL
        if keep == kd.KEEP_COL and lb == 1 and vec >= 4 and shift == 0 and all(s % 4 == 0 for s in ol + (la,)):
            keep = kd.KEEP_COL4
    else:
        keep = kd.KEEP_ELEM
    block_b = _tile(B, 1024)
    if keep == kd.KEEP_COL4:
        block_b = max(block_b, vec)
    block_a = min(max(block // block_b, 1), triton.next_power_of_2(A))
    span = max((A - 1) * xa + (B - 1) * xb, (A - 1) * ya + (B - 1) * yb)
    grid = (osz[0] * osz[1] * _cdiv(A, block_a) * _cdiv(B, block_b),)
    return ("_dropout_bcast_kernel", grid, (), (osz[1], A, B, *ox, xa, xb, *oy, ya, yb, *ol, la, lb),
            dict(KEEP=keep.value, BLOCK_A=block_a, BLOCK_B=block_b, VEC=min(vec, block_b),
                 IDX64=span >= index32_limit))


def _grouped_plan(sizes, xs, ys, ls, itemsize, shift, block, index32_limit):
    # The grouped kernel where it applies: W (mask stride 1) a multiple of 4 and not the
    # memory innermost dim, at most 2 more dims. None where it does not.
    if 1 not in ls[:-1]:
        return None
    w = ls.index(1)
    W = sizes[w]
    if W % 4 or any(ls[d] % W for d in range(len(ls)) if d != w):
        return None
    rest = [d for d in range(len(sizes) - 1) if d != w]
    osz, ox, oy, oq = _pad([tuple(col[d] for d in rest) for col in (sizes, xs, ys, ls)], 2)
    I = sizes[-1]
    ng = (W + shift + 3) // 4
    # 32-bit index math where every in-tile element offset and counter step fits in 31 bits.
    span = max((I - 1) * st[-1] + (W + 3) * st[w] for st in (xs, ys))
    idx64 = max(span, ng + (I - 1) * (ls[-1] // 4)) >= index32_limit
    block_i = min(triton.next_power_of_2(I), 64)
    # A 4096-element tile: 32 elements per thread, 8 Philox calls, 16-byte accesses along I.
    block_g = max(2 * block // (4 * block_i), 1)
    grid = (osz[0] * osz[1] * _cdiv(ng, block_g) * _cdiv(I, block_i),)
    return ("_dropout_grouped_kernel", grid, (),
            (osz[1], ng, I, W, *ox, xs[w], xs[-1], *oy, ys[w], ys[-1], oq[0] // 4, oq[1] // 4, ls[-1] // 4),
            dict(BLOCK_G=block_g, BLOCK_I=block_i, VEC=min(16 // itemsize, block_i), IDX64=idx64))


@functools.lru_cache(maxsize=4096)
def layout_plan(shape, x_strides, y_strides, mask_strides, itemsize, shift, block, index32_limit):
    """How to launch one layout: (kernel name, grid, args before and after the run-time
    scalars, constexprs), or None where more dims than the kernels walk remain. A pure
    function of the layout, cached: a training step repeats the same few layouts."""
    n = math.prod(shape)
    mask_strides = row_major(shape) if mask_strides is None else mask_strides
    sizes, xs, ys, ls = walk_dims(shape, x_strides, y_strides, mask_strides)
    if len(sizes) <= 1 and xs in ((), (1,)) and ys in ((), (1,)) and ls in ((), (1,)):
        return ("_dropout_kernel", (_cdiv(n + shift, block),), (n,), (),
                dict(BLOCK=block, VEC=max(4, 16 // itemsize)))
    if len(sizes) > MAX_DIMS:
        return None
    if 0 in ls:
        return _bcast_plan(sizes, xs, ys, ls, itemsize, shift, block, index32_limit)
    plan = _grouped_plan(sizes, xs, ys, ls, itemsize, shift, block, index32_limit)
    if plan is not None:
        return plan
    sizes, xs, ys, ls = _pad([sizes, xs, ys, ls], MAX_DIMS)
    return ("_dropout_strided_kernel", (_cdiv(n, block),), (n,),
            (sizes[1], sizes[2], sizes[3], *xs, *ys, *ls), dict(BLOCK=block))


def vec_of(x):
    """Elements of x per 16-byte access, at least 4 (one Philox call's words)."""
    return _VEC[x.dtype]


_VEC = {torch.float16: 8, torch.bfloat16: 8, torch.float32: 4, torch.float64: 4}


def _cdiv(a, b):
    # Plain integer math: triton.cdiv is a jit function, costly to call from Python per launch.
    return -(-a // b)


def _float_bits(v):
    return struct.unpack("<q", struct.pack("<d", float(v)))[0]


# ---- launches ---------------------------------------------------------------------------------------

def _seed_scalars(seed, base_ptr, save):
    """(seed, base_ptr, save_ptr) arguments and their constexpr flags. ``seed``: an int, a 1-element
    int64 tensor, or a 2-element one holding (seed, Philox counter offset)."""
    seed_ptr = not isinstance(seed, int)
    if seed_ptr and seed.numel() == 2 and base_ptr is None:
        seed, base_ptr = seed[:1], seed[1:]
    return ((seed if seed_ptr else signed64(seed)), 0 if base_ptr is None else base_ptr, 0 if save is None else save,
            dict(SEED_PTR=seed_ptr, BASE_PTR=base_ptr is not None, SAVE=save is not None))


def launch(x, y, seed, offset, threshold, scale, block=BLOCK, *, noise_shape=None, mask_strides=None,
           affine=None, base_ptr=None, save=None):
    """y = dropout(x) by the mask contract; x and y have the same shape, any strides.

    ``noise_shape``: one keep bit per element of that shape, shared along its size-1 dims; or
    ``mask_strides`` (one per dim of x) give each element's stream index as
    ``sum(coord * mask_stride)`` (default: x's row-major strides; zeros share one keep bit
    along a dim). ``affine=(add, drop)`` (floats) gives alpha dropout's form
    ``keep ? x * scale + add : drop``, rounded as PyTorch rounds it. ``seed`` is an int, or a
    1-element int64 device tensor the kernels read (a compiled graph's seed), or a 2-element one
    (seed, Philox counter offset). Under CUDA-graph capture, ``base_ptr`` is a tensor holding a
    counter offset added to ``offset // 4``, and ``save`` a 2-element int64 tensor where the
    kernel writes the (seed, counter) it used.
    """
    n = x.numel()
    if n == 0:
        return y
    if noise_shape is not None:
        mask_strides = noise_strides(noise_shape)
    base, shift = divmod(offset, WORDS)
    # Contiguous x and y with the row-major mask: the common case, decided without walking dims.
    contiguous = mask_strides is None and x.is_contiguous() and y.is_contiguous()
    plan = None if contiguous else layout_plan(tuple(x.shape), x.stride(), y.stride(),
                                               None if mask_strides is None else tuple(mask_strides),
                                               x.element_size(), shift, block, INDEX32_LIMIT)
    if plan is None and not contiguous:
        return _launch_sliced(x, y, seed, offset, threshold, scale, block,
                              row_major(x.shape) if mask_strides is None else mask_strides, affine, base_ptr, save)
    seed, base_ptr, save, flags = _seed_scalars(seed, base_ptr, save)
    add_bits, drop_bits = (0, 0) if affine is None else (_float_bits(affine[0]), _float_bits(affine[1]))
    scalars = (seed, base, base_ptr, save, threshold, _float_bits(scale), add_bits, drop_bits)
    is_affine = affine is not None
    if contiguous:
        _launch(kd, "_dropout_kernel", (_cdiv(n + shift, block),), (x, y, n), scalars, (),
                dict(SHIFT=shift, BLOCK=block, AFFINE=is_affine, **flags, VEC=vec_of(x)), not is_affine)
        return y
    name, grid, pre, post, const = plan
    _launch(kd, name, grid, (x, y, *pre), scalars, post,
            dict(SHIFT=shift, AFFINE=is_affine, **flags, **const), not is_affine)
    return y


def _launch_sliced(x, y, seed, offset, threshold, scale, block, mask_strides, affine, base_ptr, save):
    # More dims than the kernels walk: launch once per index of y's outermost dim. Slice i
    # of dim d is the same op at stream offset offset + i * mask_stride[d].
    d = max((d for d in range(x.dim()) if x.shape[d] != 1), key=lambda d: y.stride(d))
    rest = tuple(mask_strides[:d]) + tuple(mask_strides[d + 1:])
    for i in range(x.shape[d]):
        launch(x.select(d, i), y.select(d, i), seed, offset + i * mask_strides[d], threshold, scale,
               block, mask_strides=rest, affine=affine, base_ptr=base_ptr, save=save)
    return y


def launch_dropout_add(x, bias, residual, y, seed, offset, threshold, scale, block=BLOCK, *, base_ptr=None,
                       save=None):
    """y = residual + dropout(x + bias); x, residual, y contiguous of one shape, bias (x.shape[-1],) or None."""
    n = x.numel()
    if n == 0:
        return y
    for name, t in (("x", x), ("residual", residual), ("y", y), ("bias", bias)):
        if t is not None and not t.is_contiguous():
            raise ValueError(f"dropout_add kernel: {name} must be contiguous")
    seed, base_ptr, save, flags = _seed_scalars(seed, base_ptr, save)
    base, shift = divmod(offset, WORDS)
    width = x.shape[-1] if x.dim() else 1
    # No fp fusion: (x + bias) * scale + residual rounds like the CPU path's separate ops.
    _launch(kr, "_dropout_add_kernel", (_cdiv(n + shift, block),),
            (x, x if bias is None else bias, residual, y, n, width),
            (seed, base, base_ptr, save, threshold, _float_bits(scale)), (),
            dict(SHIFT=shift, HAS_BIAS=bias is not None, BLOCK=block, **flags, VEC=vec_of(x)), False)
    return y


_recorded = None  # while the C++ launch's helper runs: (launch key, compiled kernel, kernel, args) per launch


def _launch(module, name, grid, lead, scalars, post, constexprs, fp_fusion):
    """One launch of ``module.name`` through Triton: positional args ``lead`` (pointers and layout
    sizes), the run-time ``scalars`` (seed, offsets, threshold, float bits: not specialized),
    ``post`` (layout strides), then the constexprs."""
    kernel = getattr(module, name)  # looked up at each call, so that a replaced kernel is the one run
    args = (*lead, *scalars, *post)
    compiled = kernel[grid](*args, **constexprs, num_warps=NUM_WARPS, enable_fp_fusion=fp_fusion)
    if _recorded is not None:
        _recorded.append((launch_key(name, grid, lead, scalars, post, constexprs, fp_fusion), compiled, kernel, args))


# ---- launch keys and the C++ launch's helper -----------------------------------------------------

_DTYPES = {torch.float16: "f16", torch.bfloat16: "bf16", torch.float32: "f32", torch.float64: "f64"}


def _int_kind(v) -> str:
    # The integer type Triton gives an unspecialized int argument, by its value.
    return "i32" if -2**31 <= v < 2**31 else "i64" if -2**63 <= v < 2**63 else "u64"


def launch_key(name, grid, lead, scalars, post, constexprs, fp_fusion) -> str:
    """A launch's key as text: name|device|grid|lead|scalars|post|constexprs|fp_fusion, the text the
    C++ launch builds for the same call (fastdrop/csrc/launch.cpp, key_of)."""
    device = next(a for a in lead if isinstance(a, torch.Tensor)).get_device()
    lead_k = [f"{_DTYPES[a.dtype]}:{int(a.data_ptr() % 16 == 0)}" if isinstance(a, torch.Tensor) else str(a)
              for a in lead]
    scalar_k = [f"p:{int(a.data_ptr() % 16 == 0)}" if isinstance(a, torch.Tensor) else _int_kind(a) for a in scalars]
    consts = [str(int(v)) for v in constexprs.values()]
    return "|".join([name, str(device), str(grid[0]), ",".join(lead_k), ",".join(scalar_k),
                     ",".join(map(str, post)), ",".join(consts), str(int(fp_fusion))])


@contextlib.contextmanager
def recording():
    """The launches made inside, as (key, compiled kernel, kernel, args)."""
    global _recorded
    outer, _recorded = _recorded, []
    try:
        yield _recorded
    finally:
        _recorded = outer


_TYPE_BYTES = {"i32": 4, "u32": 4, "i64": 8, "u64": 8}


def kernel_info(compiled, kernel, args) -> list:
    """What the C++ launch needs of a compiled kernel: [length, CUfunction, warps, shared memory,
    trailing null pointers, one type per positional argument (0: a constexpr of this
    specialization, 1: a pointer, else the int's bytes)], or [2, 0] where Triton's own launch must
    serve it (scratch memory, clusters, launch hooks, an argument type it does not pass)."""
    meta = compiled.metadata
    hooks = (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook)
    if (getattr(meta, "global_scratch_size", 0) or getattr(meta, "profile_scratch_size", 0)
            or getattr(meta, "num_ctas", 1) != 1 or getattr(meta, "launch_cooperative_grid", False)
            or getattr(meta, "launch_pdl", False) or any(getattr(h, "calls", h) for h in hooks)):
        return [2, 0]
    signature = compiled.src.signature
    types = []
    for name in kernel.arg_names[:len(args)]:
        ty = signature[name]
        if ty == "constexpr":
            types.append(0)
        elif ty.startswith("*"):
            types.append(1)
        elif ty in _TYPE_BYTES:
            types.append(_TYPE_BYTES[ty])
        else:
            return [2, 0]
    compiled._init_handles()  # loaded on the current device (the launch has done it)
    nulls = 2 if hasattr(meta, "profile_scratch_size") else 1 if hasattr(meta, "global_scratch_size") else 0
    return [5 + len(types), int(compiled.function), meta.num_warps, meta.shared, nulls, *types]


def _launches(recorded):
    keys, infos = [], []
    for key, compiled, kernel, args in recorded:
        keys.append(key)
        infos += kernel_info(compiled, kernel, args)
    return keys, infos


def _noise(x, shared):
    return None if not shared else tuple(1 if d in shared else s for d, s in enumerate(x.shape))


def _helper_dropout(x, y, seed_tensor, base_ptr, save, seed, offset, threshold, scale, affine, shared):
    """fastdrop::_triton_launch: y = dropout(x) through Triton, for the C++ launch; returns the
    launches' keys and kernel_info."""
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext(), recording() as rec:
        launch(x, y, seed_tensor if seed_tensor is not None else seed % 2**64, offset % 2**64, threshold, scale,
               noise_shape=_noise(x, shared), affine=None if affine is None else tuple(affine), base_ptr=base_ptr,
               save=save)
    return _launches(rec)


def _helper_dropout_add(x, bias, residual, y, seed_tensor, base_ptr, save, seed, offset, threshold, scale):
    """fastdrop::_triton_launch_add: y = residual + dropout(x + bias) through Triton, for the C++ launch."""
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext(), recording() as rec:
        launch_dropout_add(x, bias, residual, y, seed_tensor if seed_tensor is not None else seed % 2**64,
                           offset % 2**64, threshold, scale, base_ptr=base_ptr, save=save)
    return _launches(rec)


def _warn(like, message):
    warnings.warn(message, RuntimeWarning, stacklevel=2)


_library = None


def register_helper():
    """Give the C++ launch its helper operators (their schemas are the C++ library's)."""
    global _library
    if _library is None:
        lib = torch.library.Library("fastdrop", "IMPL")
        lib.impl("_triton_launch", _helper_dropout, "CompositeExplicitAutograd")
        lib.impl("_triton_launch_add", _helper_dropout_add, "CompositeExplicitAutograd")
        lib.impl("_warn", _warn, "CompositeExplicitAutograd")
        _library = lib
