"""Fused residual dropout: y = residual + dropout(x + bias) in one pass.

The keep mask is ``fastdrop.contract``'s for x's row-major index, the same bits plain
dropout draws with the same (seed, offset). Contiguous tensors only. Reads x and residual
(and the bias, which stays in cache) and writes y: 3 * itemsize bytes per element, where
the unfused ``residual + dropout(x + bias)`` moves 7 (9 with a stored mask).
"""

import triton
import triton.language as tl

from .dropout import _contiguous_block, _f64, _state


@triton.jit(do_not_specialize=["seed", "base", "base_ptr", "save_ptr", "threshold", "scale_bits"])
def _dropout_add_kernel(
    X_ptr, B_ptr, R_ptr, Y_ptr, n,
    H,           # bias length: the size of x's last dim
    seed, base, base_ptr, save_ptr, threshold, scale_bits,  # as in kernels.dropout._dropout_kernel
    SHIFT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr, SEED_PTR: tl.constexpr,
    BASE_PTR: tl.constexpr, SAVE: tl.constexpr,
    VEC: tl.constexpr,  # elements per 16-byte access, at least 4
):
    key, base = _state(seed, base, base_ptr, save_ptr, SEED_PTR, BASE_PTR, SAVE)
    keep, start, offs, inb = _contiguous_block(key, base, threshold, n, SHIFT, BLOCK, VEC)
    x = tl.load(X_ptr + start + offs, mask=inb)
    # float32 arithmetic for 16/32-bit types, float64 for float64; one rounding at the store.
    ct = tl.float64 if x.dtype == tl.float64 else tl.float32
    v = x.to(ct)
    if HAS_BIAS:
        v = v + tl.load(B_ptr + (start + offs) % H, mask=inb).to(ct)
    v = tl.where(keep, v * _f64(scale_bits).to(ct), 0.0)
    v = v + tl.load(R_ptr + start + offs, mask=inb).to(ct)
    tl.store(Y_ptr + start + offs, v.to(Y_ptr.dtype.element_ty), mask=inb)
