"""The Triton backend: which kernel of ``fastdrop.kernels`` a call's layout takes, with what grid
and tiles, and its launch.

Imported at the first call that needs it (``fastdrop.backends.resolve``): triton takes 0.1-0.4 s
to import, and the CPU backend never needs it.

Layouts. An element's stream index is ``sum(coord * mask_stride)``: the row-major strides of the
input (plain dropout) or of a broadcast noise shape with 0 on its size-1 dims. Each layout gets
the kernel that keeps its accesses 16 bytes wide (see ``kernels/dropout.py``); a layout's plan
(kernel, grid, walked strides, tiles) is a pure function of it and cached.

Launches. ``kernel[grid](...)`` has Triton bind and specialize every argument on every call,
which cost more host time than the kernel at small sizes. Everything Triton specializes on is
fixed by a call's *launch key* (kernel, device, grid and layout arguments, dtype, 16-byte
alignment of each pointer, the integer type each run-time scalar takes, the constexprs). The
first call of a key launches through Triton (which compiles), and keeps the compiled kernel and
its launcher; later calls of the key call that launcher directly. Before a compiled kernel's
direct launch is trusted, it is run once on the same inputs into a second output and compared
bit for bit with Triton's own launch; a difference or an error leaves that kernel on Triton's
path, with one warning. Under CUDA-graph capture nothing is checked (no synchronization is
allowed there): a key not yet known launches through Triton.
"""

from __future__ import annotations

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
DIRECT = True  # launch known keys without Triton's per-call binding (bench.gpu_overhead compares both)


# ---- the backend interface ------------------------------------------------------------------------

def dropout_add(x, bias, residual, seed, offset, threshold, scale):
    """residual + dropout(x + bias), one pass; contiguous output (other layouts are copied first)."""
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return launch_dropout_add(x.contiguous(), None if bias is None else bias.contiguous(), residual.contiguous(),
                              y, seed, offset, threshold, scale)


def fresh(x, seed, offset, threshold, scale, noise_shape, affine):
    return None  # no native autograd node: the Python autograd.Function serves


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

def launch(x, y, seed, offset, threshold, scale, block=BLOCK, *, noise_shape=None, mask_strides=None,
           affine=None):
    """y = dropout(x) by the mask contract; x and y have the same shape, any strides (the
    backend interface's ``apply``).

    ``noise_shape``: one keep bit per element of that shape, shared along its size-1 dims; or
    ``mask_strides`` (one per dim of x) give each element's stream index as
    ``sum(coord * mask_stride)`` (default: x's row-major strides; zeros share one keep bit
    along a dim). ``affine=(add, drop)`` (floats) gives alpha dropout's form
    ``keep ? x * scale + add : drop``, rounded as PyTorch rounds it. ``seed`` is an int, or
    (CUDA-graph capture) a 1-element int64 device tensor the kernels read.
    """
    n = x.numel()
    if n == 0:
        return y
    if noise_shape is not None:
        mask_strides = noise_strides(noise_shape)
    seed_ptr = not isinstance(seed, int)
    base, shift = divmod(offset, WORDS)
    add_bits, drop_bits = (0, 0) if affine is None else (_float_bits(affine[0]), _float_bits(affine[1]))
    scalars = (seed if seed_ptr else signed64(seed), base, threshold, _float_bits(scale), add_bits, drop_bits)
    is_affine = affine is not None
    # Contiguous x and y with the row-major mask: the common case, decided without walking dims.
    if mask_strides is None and x.is_contiguous() and y.is_contiguous():
        _launch(kd, "_dropout_kernel", (_cdiv(n + shift, block),), (x, y, n), scalars, (),
                dict(SHIFT=shift, BLOCK=block, AFFINE=is_affine, SEED_PTR=seed_ptr, VEC=vec_of(x)), not is_affine)
        return y
    plan = layout_plan(tuple(x.shape), x.stride(), y.stride(), None if mask_strides is None else tuple(mask_strides),
                       x.element_size(), shift, block, INDEX32_LIMIT)
    if plan is None:
        return _launch_sliced(x, y, seed, offset, threshold, scale, block,
                              row_major(x.shape) if mask_strides is None else mask_strides, affine)
    name, grid, pre, post, const = plan
    _launch(kd, name, grid, (x, y, *pre), scalars, post,
            dict(SHIFT=shift, AFFINE=is_affine, SEED_PTR=seed_ptr, **const), not is_affine)
    return y


apply = launch  # the backend interface (fastdrop.backends)


def _launch_sliced(x, y, seed, offset, threshold, scale, block, mask_strides, affine):
    # More dims than the kernels walk: launch once per index of y's outermost dim. Slice i
    # of dim d is the same op at stream offset offset + i * mask_stride[d].
    d = max((d for d in range(x.dim()) if x.shape[d] != 1), key=lambda d: y.stride(d))
    rest = tuple(mask_strides[:d]) + tuple(mask_strides[d + 1:])
    for i in range(x.shape[d]):
        launch(x.select(d, i), y.select(d, i), seed, offset + i * mask_strides[d], threshold, scale,
               block, mask_strides=rest, affine=affine)
    return y


def launch_dropout_add(x, bias, residual, y, seed, offset, threshold, scale, block=BLOCK):
    """y = residual + dropout(x + bias); x, residual, y contiguous of one shape, bias (x.shape[-1],) or None."""
    n = x.numel()
    if n == 0:
        return y
    for name, t in (("x", x), ("residual", residual), ("y", y), ("bias", bias)):
        if t is not None and not t.is_contiguous():
            raise ValueError(f"dropout_add kernel: {name} must be contiguous")
    seed_ptr = not isinstance(seed, int)
    base, shift = divmod(offset, WORDS)
    width = x.shape[-1] if x.dim() else 1
    # No fp fusion: (x + bias) * scale + residual rounds like the CPU path's separate ops.
    _launch(kr, "_dropout_add_kernel", (_cdiv(n + shift, block),),
            (x, x if bias is None else bias, residual, y, n, width),
            (seed if seed_ptr else signed64(seed), base, threshold, _float_bits(scale)), (),
            dict(SHIFT=shift, HAS_BIAS=bias is not None, BLOCK=block, SEED_PTR=seed_ptr, VEC=vec_of(x)), False)
    return y


# ---- direct launches --------------------------------------------------------------------------------

_direct: dict = {}  # launch key -> its launcher (a known, checked compiled kernel), or None: Triton's path
_checked: dict = {}  # compiled kernel -> whether its direct launch gave Triton's bits
_warned = False
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)  # the stream Triton's own launch takes
_LATER = object()  # not learned on this call (capture, or written in place): the next call tries again


def _on_gpu(x) -> bool:
    return x.is_cuda


def _int_kind(v) -> str:
    # The integer type Triton gives an unspecialized int argument, by its value.
    return "i32" if -2**31 <= v < 2**31 else "i64" if -2**63 <= v < 2**63 else "u64"


def _arg_key(a):
    if isinstance(a, torch.Tensor):
        return a.dtype, a.data_ptr() % 16 == 0
    return a


def _launch(module, name, grid, lead, scalars, post, constexprs, fp_fusion):
    """One launch of ``module.name``: positional args ``lead`` (pointers and layout sizes), the
    run-time ``scalars`` (seed, offsets, threshold, float bits: not specialized), ``post``
    (layout strides), then the constexprs."""
    kernel = getattr(module, name)  # looked up at each call, so that a replaced kernel is the one run
    args = (*lead, *scalars, *post)
    x = lead[0]
    if not (DIRECT and _on_gpu(x)):
        kernel[grid](*args, **constexprs, num_warps=NUM_WARPS, enable_fp_fusion=fp_fusion)
        return
    key = (name, x.get_device(), grid, tuple(map(_arg_key, lead)), tuple(map(_arg_key_scalar, scalars)), post,
           tuple(constexprs.values()), fp_fusion)
    run = _direct.get(key)
    if run is not None:
        run(grid, args)
        return
    compiled = kernel[grid](*args, **constexprs, num_warps=NUM_WARPS, enable_fp_fusion=fp_fusion)
    learned = _learn(kernel, compiled, grid, args, constexprs, fp_fusion)
    if learned is not _LATER:
        _direct[key] = learned


def _arg_key_scalar(a):
    if isinstance(a, torch.Tensor):  # the seed, read from device memory (CUDA-graph capture)
        return "ptr", a.data_ptr() % 16 == 0
    return _int_kind(a)


def _learn(kernel, compiled, grid, args, constexprs, fp_fusion):
    """The direct launcher of a compiled kernel, once it has given Triton's bits; None to stay on
    Triton's path (a difference, an error, scratch memory); _LATER where it cannot be checked on
    this call (under capture, or written in place)."""
    global _warned
    if hasattr(compiled, "result"):  # an asynchronous compile
        compiled = compiled.result()
    if compiled not in _checked and (torch.cuda.is_current_stream_capturing() or _in_place(kernel, args)):
        return _LATER
    try:
        names = kernel.arg_names
        tail = names[len(args):]
        meta = compiled.metadata
        hooks = (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook)
        if (set(tail) != set(constexprs) or getattr(meta, "global_scratch_size", 0)
                or getattr(meta, "profile_scratch_size", 0) or any(getattr(h, "calls", h) for h in hooks)):
            return None  # scratch memory, or launch hooks (a profiler's): Triton's launch handles them
        launcher = compiled.run  # loads the module on the current device
        function, packed = compiled.function, compiled.packed_metadata
        const_values = tuple(constexprs[n] for n in tail)
        tensors = tuple(i for i, a in enumerate(args) if isinstance(a, torch.Tensor))
        device = args[0].get_device()
        raw_stream = _raw_stream

        def run(grid, args):
            values = list(args)
            for i in tensors:
                values[i] = values[i].data_ptr()
            launcher(grid[0], 1, 1, raw_stream(device), function, packed, None, None, None, *values, *const_values)

        if compiled not in _checked:
            _checked[compiled] = _same_bits(run, kernel, grid, args, constexprs, fp_fusion)
        if _checked[compiled]:
            return run
        reason = "its output differed from Triton's launch"
    except Exception as e:  # noqa: BLE001 - any failure keeps Triton's own launch, which works
        _checked[compiled] = False
        reason = f"{type(e).__name__}: {e}"
    if not _warned:
        _warned = True
        warnings.warn(f"fastdrop: the direct launch of {kernel.fn.__name__} is not used ({reason}); Triton's own "
                      f"launch serves it", RuntimeWarning, stacklevel=4)
    return None


def _in_place(kernel, args) -> bool:
    y = args[kernel.arg_names.index("Y_ptr")]
    return any(a is not y and isinstance(a, torch.Tensor) and a.data_ptr() == y.data_ptr() for a in args)


def _same_bits(run, kernel, grid, args, constexprs, fp_fusion) -> bool:
    """Triton's launch and the direct one, each into its own output from the same inputs: equal bits?"""
    out = kernel.arg_names.index("Y_ptr")
    y = args[out]
    outputs = []
    for launch_with in (lambda a: kernel[grid](*a, **constexprs, num_warps=NUM_WARPS, enable_fp_fusion=fp_fusion),
                        lambda a: run(grid, a)):
        o = torch.empty_strided(y.shape, y.stride(), dtype=y.dtype, device=y.device).fill_(7.0)
        launch_with(args[:out] + (o,) + args[out + 1:])
        outputs.append(o)
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[y.element_size()]
    return torch.equal(outputs[0].view(ints), outputs[1].view(ints))
