"""Fused dropout kernels: the keep mask is regenerated from (seed, offset), never stored.

Both kernels implement the mask contract of ``fastdrop.contract``: element ``g`` of the
stream keeps iff word ``g % 4`` of Philox4x32-10 at counter ``g // 4`` (key = seed) is
below the threshold. Forward and backward are the same kernel (backward runs it on the
incoming gradient). Each reads one tensor and writes one: 2 * itemsize bytes per element.
"""

import triton
import triton.language as tl

WORDS = 4  # 32-bit words per Philox call, one per element
BLOCK = 2048
NUM_WARPS = 4
MAX_DIMS = 4  # dims the strided kernel walks after merging; more falls back to a copy


@triton.jit
def _f64(bits):
    # float64 from its bits. A bits value that fits in 32 bits (0.0 is 0) arrives typed int32:
    # widen first (sign extension keeps the value), then reinterpret.
    return bits.to(tl.int64).to(tl.float64, bitcast=True)


@triton.jit
def _apply(x, keep, scale_bits):
    # Scale in float32 for 16/32-bit types (as PyTorch does), in float64 for float64.
    scale = _f64(scale_bits)
    if x.dtype == tl.float64:
        y = x * scale
    else:
        y = x.to(tl.float32) * scale.to(tl.float32)
    # tl.where, not a multiply by 0, so dropped inf/NaN become 0.
    return tl.where(keep, y, 0.0)


# n stays specialized: its divisibility by 16 lets the compiler vectorize the masked loads.
@triton.jit(do_not_specialize=["seed", "base", "threshold", "scale_bits"])
def _dropout_kernel(
    X_ptr, Y_ptr, n,
    seed,        # 64-bit Philox key, reinterpreted as signed
    base,        # Philox counter of the first stream position: offset // 4
    threshold,   # keep iff the 32-bit word < threshold, in [0, 2**32]
    scale_bits,  # float64 bits of 1 / (1 - p)
    SHIFT: tl.constexpr,  # offset % 4: element i sits at stream position 4 * base + SHIFT + i
    BLOCK: tl.constexpr,
):
    # Contiguous x and y. Each program owns BLOCK consecutive stream positions, so the four
    # words of each Philox call go to four consecutive elements.
    pid = tl.program_id(0).to(tl.int64)
    q = base + pid * (BLOCK // 4) + tl.arange(0, BLOCK // 4).to(tl.int64)
    zero = tl.zeros_like(q).to(tl.uint32)
    r0, r1, r2, r3 = tl.philox(seed, (q & 0xFFFFFFFF).to(tl.uint32), (q >> 32).to(tl.uint32), zero, zero)
    # Interleave to r0[0], r1[0], r2[0], r3[0], r0[1], ...
    r = tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), [BLOCK])
    keep = r.to(tl.int64) < threshold
    # Scalar start + int32 arange keeps the contiguity the compiler needs to vectorize.
    start = pid * BLOCK - SHIFT
    offs = tl.arange(0, BLOCK)
    inb = offs < n - start
    if SHIFT != 0:
        inb = inb & (offs >= -start)
    x = tl.load(X_ptr + start + offs, mask=inb)
    tl.store(Y_ptr + start + offs, _apply(x, keep, scale_bits).to(Y_ptr.dtype.element_ty), mask=inb)


@triton.jit(do_not_specialize=["n", "seed", "base", "threshold", "scale_bits"])
def _dropout_strided_kernel(
    X_ptr, Y_ptr, n, seed, base, threshold, scale_bits,
    S1, S2, S3,              # sizes of walked dims 1..3 (dim 0 follows from n)
    XS0, XS1, XS2, XS3,      # x strides of the walked dims
    YS0, YS1, YS2, YS3,      # y strides
    LS0, LS1, LS2, LS3,      # logical (row-major) strides: the element's index in the contract
    SHIFT: tl.constexpr, BLOCK: tl.constexpr,
):
    # Any strides. Dims are walked in y's memory order so stores stay coalesced; the mask
    # follows the logical index, so each element takes its own word of a Philox call.
    pid = tl.program_id(0).to(tl.int64)
    m = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    inb = m < n
    c3 = m % S3
    t = m // S3
    c2 = t % S2
    t = t // S2
    c1 = t % S1
    c0 = t // S1
    g = c0 * LS0 + c1 * LS1 + c2 * LS2 + c3 * LS3 + SHIFT
    q = base + g // 4
    w = g % 4
    zero = tl.zeros_like(q).to(tl.uint32)
    r0, r1, r2, r3 = tl.philox(seed, (q & 0xFFFFFFFF).to(tl.uint32), (q >> 32).to(tl.uint32), zero, zero)
    r = tl.where(w == 0, r0, tl.where(w == 1, r1, tl.where(w == 2, r2, r3)))
    keep = r.to(tl.int64) < threshold
    x = tl.load(X_ptr + c0 * XS0 + c1 * XS1 + c2 * XS2 + c3 * XS3, mask=inb)
    y = _apply(x, keep, scale_bits).to(Y_ptr.dtype.element_ty)
    tl.store(Y_ptr + c0 * YS0 + c1 * YS1 + c2 * YS2 + c3 * YS3, y, mask=inb)


def walk_dims(shape, x_strides, y_strides):
    """Dims in y's memory order, merged where x, y and the logical index all allow.

    Returns (sizes, x_strides, y_strides, logical_strides), outermost first, without
    size-1 dims. One dim with unit strides everywhere means both tensors are contiguous.
    """
    logical, acc = [], 1
    for s in reversed(shape):
        logical.append(acc)
        acc *= s
    logical.reverse()
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


def launch(x, y, seed, offset, threshold, scale_bits, block=BLOCK):
    """y = dropout(x) by the mask contract; x and y have the same shape, any strides."""
    n = x.numel()
    if n == 0:
        return y
    seed = seed - (1 << 64) if seed >= (1 << 63) else seed
    base, shift = divmod(offset, WORDS)
    sizes, xs, ys, ls = walk_dims(x.shape, x.stride(), y.stride())
    if len(sizes) <= 1 and xs in ((), (1,)) and ys in ((), (1,)):
        grid = (triton.cdiv(n + shift, block),)
        _dropout_kernel[grid](x, y, n, seed, base, threshold, scale_bits,
                              SHIFT=shift, BLOCK=block, num_warps=NUM_WARPS)
        return y
    if len(sizes) > MAX_DIMS:
        raise ValueError(f"strided kernel walks at most {MAX_DIMS} dims, got {len(sizes)}")
    pad = MAX_DIMS - len(sizes)
    sizes, xs, ys, ls = ((1,) * pad + sizes, (0,) * pad + xs, (0,) * pad + ys, (0,) * pad + ls)
    grid = (triton.cdiv(n, block),)
    _dropout_strided_kernel[grid](x, y, n, seed, base, threshold, scale_bits,
                                  sizes[1], sizes[2], sizes[3], *xs, *ys, *ls,
                                  SHIFT=shift, BLOCK=block, num_warps=NUM_WARPS)
    return y
