"""Fused residual dropout: y = residual + dropout(x + bias) in one pass.

The keep mask is ``fastdrop.contract``'s for x's row-major index, the same bits plain
dropout draws with the same (seed, offset). Contiguous tensors only. Reads x and residual
(and the bias, which stays in cache) and writes y: 3 * itemsize bytes per element, where
the unfused ``residual + dropout(x + bias)`` moves 7 (9 with a stored mask).
"""

import triton
import triton.language as tl

from ..contract import signed64
from .dropout import BLOCK, NUM_WARPS, WORDS, _cdiv, _contiguous_block, _f64, _float_bits, vec_of


@triton.jit(do_not_specialize=["seed", "base", "threshold", "scale_bits"])
def _dropout_add_kernel(
    X_ptr, B_ptr, R_ptr, Y_ptr, n,
    H,           # bias length: the size of x's last dim
    seed, base, threshold, scale_bits,  # as in kernels.dropout._dropout_kernel
    SHIFT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr, SEED_PTR: tl.constexpr,
    VEC: tl.constexpr,  # elements per 16-byte access, at least 4
):
    keep, start, offs, inb = _contiguous_block(seed, base, threshold, n, SEED_PTR, SHIFT, BLOCK, VEC)
    x = tl.load(X_ptr + start + offs, mask=inb)
    # float32 arithmetic for 16/32-bit types, float64 for float64; one rounding at the store.
    ct = tl.float64 if x.dtype == tl.float64 else tl.float32
    v = x.to(ct)
    if HAS_BIAS:
        v = v + tl.load(B_ptr + (start + offs) % H, mask=inb).to(ct)
    v = tl.where(keep, v * _f64(scale_bits).to(ct), 0.0)
    v = v + tl.load(R_ptr + start + offs, mask=inb).to(ct)
    tl.store(Y_ptr + start + offs, v.to(Y_ptr.dtype.element_ty), mask=inb)


def launch(x, bias, residual, y, seed, offset, threshold, scale, block=BLOCK):
    """y = residual + dropout(x + bias); x, residual, y contiguous of one shape, bias (x.shape[-1],) or None."""
    n = x.numel()
    if n == 0:
        return y
    for name, t in (("x", x), ("residual", residual), ("y", y), ("bias", bias)):
        if t is not None and not t.is_contiguous():
            raise ValueError(f"dropout_add kernel: {name} must be contiguous")
    seed_ptr = not isinstance(seed, int)  # a device tensor under CUDA-graph capture
    seed = seed if seed_ptr else signed64(seed)
    base, shift = divmod(offset, WORDS)
    width = x.shape[-1] if x.dim() else 1
    grid = (_cdiv(n + shift, block),)
    # No fp fusion: (x + bias) * scale + residual rounds like the CPU path's separate ops.
    _dropout_add_kernel[grid](x, x if bias is None else bias, residual, y, n, width,
                              seed, base, threshold, _float_bits(scale), SHIFT=shift, HAS_BIAS=bias is not None,
                              BLOCK=block, SEED_PTR=seed_ptr, VEC=vec_of(x), num_warps=NUM_WARPS,
                              enable_fp_fusion=False)
    return y
