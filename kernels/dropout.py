"""Fused dropout kernels: the keep mask is regenerated from (seed, offset), never stored.

All kernels implement the mask contract of ``fastdrop.contract``: element ``g`` of the
stream keeps iff word ``g % 4`` of Philox4x32-10 at counter ``g // 4`` (key = seed) is
below the threshold. Forward and backward are the same kernel (backward runs it on the
incoming gradient). Each reads one tensor and writes one: 2 * itemsize bytes per element.

An element's stream index is ``sum(coord * mask_stride)``: the row-major strides of the
input (plain dropout) or of a broadcast noise shape with 0 on its size-1 dims (channel
dropout, drop path, ``noise_shape``). The contract fixes which word decides each element,
not the order of work, so each layout gets the kernel that keeps its accesses 16 bytes wide:

- ``_dropout_kernel``: contiguous x and y.
- ``_dropout_grouped_kernel``: other strides where the logical innermost dim is not the
  memory innermost (channels-last, transposed views); one Philox call per four logically
  consecutive elements, tiles along the memory-innermost dim.
- ``_dropout_bcast_kernel``: noise shapes; one word per noise element in a tile, shared
  along the broadcast dims.
- ``_dropout_strided_kernel``: any other layout, one Philox call per element.

The launcher (which kernel a layout takes, its grid and tiles) is ``fastdrop.backends.triton``.
``bench/static_check.py`` compiles what it launches for a list of calls and reads the SASS
(registers, access widths, instructions per element); tests hold it to a budget.
"""

import triton
import triton.language as tl

WORDS = 4  # 32-bit words per Philox call, one per element
BLOCK = 2048
NUM_WARPS = 4


@triton.jit
def _f64(bits):
    # float64 from its bits. A bits value that fits in 32 bits (0.0 is 0) arrives typed int32:
    # widen first (sign extension keeps the value), then reinterpret.
    return bits.to(tl.int64).to(tl.float64, bitcast=True)


@triton.jit
def _apply(x, keep, scale_bits, add_bits, drop_bits, AFFINE: tl.constexpr):
    # Scale in float32 for 16/32-bit types (as PyTorch does), in float64 for float64.
    scale = _f64(scale_bits)
    if x.dtype == tl.float64:
        y = x * scale
    else:
        y = x.to(tl.float32) * scale.to(tl.float32)
    if AFFINE:
        # Alpha dropout, rounded as PyTorch's x.mul(noise).add_(b): x * a in x's dtype,
        # then + b. Launched with fp fusion off, so no FMA merges the two roundings.
        add = _f64(add_bits).to(y.dtype)
        drop = _f64(drop_bits).to(y.dtype)
        y = y.to(x.dtype).to(y.dtype) + add
        return tl.where(keep, y, drop)
    # tl.where, not a multiply by 0, so dropped inf/NaN become 0.
    return tl.where(keep, y, 0.0)


@triton.jit
def _state(seed, base, base_ptr, save_ptr, SEED_PTR: tl.constexpr, BASE_PTR: tl.constexpr, SAVE: tl.constexpr):
    # The Philox key and the counter of the call's first stream position. Values, or (a compiled
    # graph's seed, CUDA-graph capture) read from device memory, so that every replay uses what
    # that replay drew: the seed through `seed`, and under capture the generator's counter offset
    # through `base_ptr`, which `base` (the counters of the call's place in the graph) is added to.
    # SAVE: program 0 writes (key, counter) to save_ptr, the state a captured call's backward reads.
    key = tl.load(seed) if SEED_PTR else seed
    counter = base + tl.load(base_ptr) if BASE_PTR else base
    if SAVE:
        if tl.program_id(0) == 0:
            tl.store(save_ptr, key.to(tl.int64))
            tl.store(save_ptr + 1, counter.to(tl.int64))
    return key, counter


@triton.jit
def _philox(seed, q):
    # Philox4x32-10 at counter (q mod 2**32, q >> 32, 0, 0), key = seed's two halves: the words
    # tl.philox returns, with each 32x32-bit product one 64-bit multiply (a single
    # IMAD.WIDE.U32 giving both halves, where tl.philox's umulhi and mul issue two).
    seed = seed.to(tl.uint64)
    k0 = (seed & 0xFFFFFFFF).to(tl.uint32)
    k1 = (seed >> 32).to(tl.uint32)
    c0 = (q & 0xFFFFFFFF).to(tl.uint32)
    c1 = (q >> 32).to(tl.uint32)
    c2 = tl.zeros_like(c0)
    c3 = tl.zeros_like(c0)
    for _ in tl.static_range(10):
        pa = c0.to(tl.uint64) * 0xD2511F53
        pb = c2.to(tl.uint64) * 0xCD9E8D57
        c0 = (pb >> 32).to(tl.uint32) ^ c1 ^ k0
        c2 = (pa >> 32).to(tl.uint32) ^ c3 ^ k1
        c1 = pb.to(tl.uint32)
        c3 = pa.to(tl.uint32)
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def _block_keep(seed, q0, threshold, BLOCK: tl.constexpr, VEC: tl.constexpr):
    # Keep bits of the BLOCK consecutive stream positions from 4 * q0 on: BLOCK // 4 Philox
    # calls, all four words used; each thread's VEC (4 or 8) consecutive positions in
    # registers, the layout of its 16-byte accesses (see _col_words).
    q = q0 + (VEC // 4) * tl.arange(0, BLOCK // VEC).to(tl.int64)
    r = tl.reshape(_col_words(seed, q[None, :], VEC), [BLOCK])
    return r.to(tl.int64) < threshold


@triton.jit
def _contiguous_block(key, base, threshold, n, SHIFT: tl.constexpr, BLOCK: tl.constexpr, VEC: tl.constexpr):
    # This program's BLOCK consecutive stream positions over contiguous tensors: keep bits,
    # the element index of the first (start), the in-block offsets and which are in bounds.
    pid = tl.program_id(0).to(tl.int64)
    keep = _block_keep(key, base + pid * (BLOCK // 4), threshold, BLOCK, VEC)
    # Scalar start + int32 arange keeps the contiguity the compiler needs to vectorize.
    start = pid * BLOCK - SHIFT
    offs = tl.arange(0, BLOCK)
    inb = offs < n - start
    if SHIFT != 0:
        inb = inb & (offs >= -start)
    return keep, start, offs, inb


@triton.jit
def _word(seed, base, g):
    # The contract's 32-bit word of stream position 4 * base + g (g: int64 tensor), as int64.
    q = base + g // 4
    w = g % 4
    r0, r1, r2, r3 = _philox(seed, q)
    return tl.where(w == 0, r0, tl.where(w == 1, r1, tl.where(w == 2, r2, r3))).to(tl.int64)


# Run-time scalars, never specialized: a new seed, offset or p does not recompile.
SCALARS = ["seed", "base", "base_ptr", "save_ptr", "threshold", "scale_bits", "add_bits", "drop_bits"]


# n stays specialized: its divisibility by 16 lets the compiler vectorize the masked loads.
@triton.jit(do_not_specialize=SCALARS)
def _dropout_kernel(
    X_ptr, Y_ptr, n,
    seed,        # 64-bit Philox key, reinterpreted as signed (SEED_PTR: a pointer to it)
    base,        # Philox counter of the first stream position: offset // 4
    base_ptr,    # BASE_PTR: a pointer to a counter offset added to base (else unused)
    save_ptr,    # SAVE: where program 0 writes (key, counter) (else unused)
    threshold,   # keep iff the 32-bit word < threshold, in [0, 2**32]
    scale_bits,  # float64 bits of 1 / (1 - p) (alpha dropout: of a)
    add_bits,    # AFFINE only: float64 bits of what kept elements add (alpha dropout's b)
    drop_bits,   # AFFINE only: float64 bits of the value of dropped elements
    SHIFT: tl.constexpr,  # offset % 4: element i sits at stream position 4 * base + SHIFT + i
    BLOCK: tl.constexpr,
    AFFINE: tl.constexpr,  # y = keep ? x * scale + add : drop, instead of keep ? x * scale : 0
    SEED_PTR: tl.constexpr, BASE_PTR: tl.constexpr, SAVE: tl.constexpr,  # see _state
    VEC: tl.constexpr,  # elements per 16-byte access, at least 4 (vec_of)
):
    # Contiguous x and y. Each program owns BLOCK consecutive stream positions, so the four
    # words of each Philox call go to four consecutive elements.
    key, base = _state(seed, base, base_ptr, save_ptr, SEED_PTR, BASE_PTR, SAVE)
    keep, start, offs, inb = _contiguous_block(key, base, threshold, n, SHIFT, BLOCK, VEC)
    x = tl.load(X_ptr + start + offs, mask=inb)
    y = _apply(x, keep, scale_bits, add_bits, drop_bits, AFFINE)
    tl.store(Y_ptr + start + offs, y.to(Y_ptr.dtype.element_ty), mask=inb)


@triton.jit(do_not_specialize=["n"] + SCALARS)
def _dropout_strided_kernel(
    X_ptr, Y_ptr, n, seed, base, base_ptr, save_ptr, threshold, scale_bits, add_bits, drop_bits,
    S1, S2, S3,              # sizes of walked dims 1..3 (dim 0 follows from n)
    XS0, XS1, XS2, XS3,      # x strides of the walked dims
    YS0, YS1, YS2, YS3,      # y strides
    LS0, LS1, LS2, LS3,      # mask strides (row-major by default): the element's index in the contract
    SHIFT: tl.constexpr, BLOCK: tl.constexpr, AFFINE: tl.constexpr, SEED_PTR: tl.constexpr,
    BASE_PTR: tl.constexpr, SAVE: tl.constexpr,
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
    key, base = _state(seed, base, base_ptr, save_ptr, SEED_PTR, BASE_PTR, SAVE)
    keep = _word(key, base, g) < threshold
    x = tl.load(X_ptr + c0 * XS0 + c1 * XS1 + c2 * XS2 + c3 * XS3, mask=inb)
    y = _apply(x, keep, scale_bits, add_bits, drop_bits, AFFINE).to(Y_ptr.dtype.element_ty)
    tl.store(Y_ptr + c0 * YS0 + c1 * YS1 + c2 * YS2 + c3 * YS3, y, mask=inb)


@triton.jit(do_not_specialize=SCALARS)
def _dropout_grouped_kernel(
    X_ptr, Y_ptr, seed, base, base_ptr, save_ptr, threshold, scale_bits, add_bits, drop_bits,
    O1, NG, I,               # sizes: outer dim 1 (dim 0 follows from the grid), groups of 4 along W, dim I
    W,                       # the W dim's size (the logical innermost dim, mask stride 1), a multiple of 4
    XO0, XO1, XW, XI,        # x strides of the outer dims, W and I
    YO0, YO1, YW, YI,        # y strides
    QO0, QO1, QI,            # mask strides / 4 of the outer dims and I (multiples of W, so of 4)
    SHIFT: tl.constexpr, AFFINE: tl.constexpr, SEED_PTR: tl.constexpr, BASE_PTR: tl.constexpr, SAVE: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_I: tl.constexpr,
    VEC: tl.constexpr,       # elements per 16-byte access along I
    IDX64: tl.constexpr,     # some element offset needs more than 31 bits
):
    # Any strides where the logical innermost dim W (size a multiple of 4) is not the memory
    # innermost dim I: channels-last tensors, transposed views. A tile is BLOCK_G groups of 4
    # consecutive W positions by BLOCK_I positions along I: each Philox call serves the four
    # W positions of its group (the contract's four consecutive elements), and each of the
    # four loads and stores runs along I, contiguous in memory. Reads x once, writes y once.
    key, base = _state(seed, base, base_ptr, save_ptr, SEED_PTR, BASE_PTR, SAVE)
    pid = tl.program_id(0)
    num_i = tl.cdiv(I, BLOCK_I)
    num_g = tl.cdiv(NG, BLOCK_G)
    ib = pid % num_i
    t = pid // num_i
    gb = t % num_g
    t = t // num_g
    o1 = t % O1
    o0 = (t // O1).to(tl.int64)  # scalars: the row's offsets in 64 bits, once per program
    xo = o0 * XO0 + o1.to(tl.int64) * XO1
    yo = o0 * YO0 + o1.to(tl.int64) * YO1
    qo = base + o0 * QO0 + o1.to(tl.int64) * QO1
    it = tl.int64 if IDX64 else tl.int32
    k = (gb * BLOCK_G + tl.arange(0, BLOCK_G)).to(it)
    i = (ib * BLOCK_I + tl.arange(0, BLOCK_I)).to(it)
    # Counter of group k at position i: qo + k + i * QI. Words for VEC consecutive i per
    # thread: the layout of the 16-byte accesses (see _philox_interleaved).
    u = (ib * BLOCK_I + VEC * tl.arange(0, BLOCK_I // VEC)).to(it)
    q = qo + (k[:, None] + (u * QI)[None, :])
    r0, r1, r2, r3 = _philox_interleaved(key, q, QI, VEC)
    in_i = (i < I)[None, :]
    xi, yi = (i * XI)[None, :], (i * YI)[None, :]
    for j in tl.static_range(4):
        r = r0 if j == 0 else (r1 if j == 1 else (r2 if j == 2 else r3))
        w = (4 * k + (j - SHIFT))[:, None]  # element j of each group sits at W position w
        inb = in_i & (w >= 0) & (w < W)
        x = tl.load(X_ptr + xo + (w * XW + xi), mask=inb)
        y = _apply(x, r.to(tl.int64) < threshold, scale_bits, add_bits, drop_bits, AFFINE)
        tl.store(Y_ptr + yo + (w * YW + yi), y.to(Y_ptr.dtype.element_ty), mask=inb)


@triton.jit
def _interleave(t0, t1, t2, t3, t4, t5, t6, t7, VEC: tl.constexpr):
    # [A, B] tiles t0.. -> [A, B * VEC] with column b * VEC + v from t_v (the first VEC used).
    if VEC == 1:
        t = t0
    elif VEC == 2:
        t = tl.join(t0, t1)
    elif VEC == 4:
        t = tl.join(tl.join(t0, t2), tl.join(t1, t3))
    else:
        t = tl.join(tl.join(tl.join(t0, t4), tl.join(t2, t6)), tl.join(tl.join(t1, t5), tl.join(t3, t7)))
    return tl.reshape(t, [t0.shape[0], t0.shape[1] * VEC])


@triton.jit
def _philox_interleaved(seed, q, step, VEC: tl.constexpr):
    # The four Philox words at counters q[:, b] + v * step, each [A, B * VEC] with the word
    # of counter q[:, b] + v * step in column b * VEC + v. Philox runs on the [A, B] tiles and
    # its words are joined after, so that each thread holds VEC consecutive columns: the
    # layout of 16-byte accesses, reached in registers (joining counters instead makes
    # Triton pass through shared memory).
    a0, b0, c0, d0 = _philox(seed, q)
    a1, b1, c1, d1 = a0, b0, c0, d0
    a2, b2, c2, d2 = a0, b0, c0, d0
    a3, b3, c3, d3 = a0, b0, c0, d0
    a4, b4, c4, d4 = a0, b0, c0, d0
    a5, b5, c5, d5 = a0, b0, c0, d0
    a6, b6, c6, d6 = a0, b0, c0, d0
    a7, b7, c7, d7 = a0, b0, c0, d0
    if VEC >= 2:
        a1, b1, c1, d1 = _philox(seed, q + step)
    if VEC >= 4:
        a2, b2, c2, d2 = _philox(seed, q + 2 * step)
        a3, b3, c3, d3 = _philox(seed, q + 3 * step)
    if VEC >= 8:
        a4, b4, c4, d4 = _philox(seed, q + 4 * step)
        a5, b5, c5, d5 = _philox(seed, q + 5 * step)
        a6, b6, c6, d6 = _philox(seed, q + 6 * step)
        a7, b7, c7, d7 = _philox(seed, q + 7 * step)
    return (_interleave(a0, a1, a2, a3, a4, a5, a6, a7, VEC),
            _interleave(b0, b1, b2, b3, b4, b5, b6, b7, VEC),
            _interleave(c0, c1, c2, c3, c4, c5, c6, c7, VEC),
            _interleave(d0, d1, d2, d3, d4, d5, d6, d7, VEC))


# Where the keep bit of a broadcast-kernel tile comes from (the KEEP argument).
KEEP_SCALAR, KEEP_ROW, KEEP_COL, KEEP_COL4, KEEP_ELEM = (tl.constexpr(i) for i in range(5))


@triton.jit(do_not_specialize=SCALARS)
def _dropout_bcast_kernel(
    X_ptr, Y_ptr, seed, base, base_ptr, save_ptr, threshold, scale_bits, add_bits, drop_bits,
    O1, A, B,                # sizes: outer dim 1 (dim 0 follows from the grid), tile dims A and B
    XO0, XO1, XA, XB,        # x strides (B: the memory-innermost dim)
    YO0, YO1, YA, YB,        # y strides
    LO0, LO1, LA, LB,        # mask strides, 0 along broadcast dims
    SHIFT: tl.constexpr, AFFINE: tl.constexpr, SEED_PTR: tl.constexpr, BASE_PTR: tl.constexpr, SAVE: tl.constexpr,
    KEEP: tl.constexpr,      # KEEP_*: one bit per program, per row a, per column b, per element
    BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
    VEC: tl.constexpr,       # elements per 16-byte access along B
    IDX64: tl.constexpr,     # some in-tile element offset needs more than 31 bits
):
    # Noise shapes (channel dropout, drop path, noise_shape): up to four walked dims, two
    # outer ones per program and a [BLOCK_A, BLOCK_B] tile over the two innermost, loads and
    # stores 16 bytes wide along B. A keep bit is drawn once per noise element in the tile
    # and shared along the broadcast dims. Reads x once, writes y once.
    pid = tl.program_id(0)
    num_b = tl.cdiv(B, BLOCK_B)
    num_a = tl.cdiv(A, BLOCK_A)
    bb = pid % num_b
    t = pid // num_b
    ab = t % num_a
    t = t // num_a
    o1 = (t % O1).to(tl.int64)
    o0 = (t // O1).to(tl.int64)
    xo = o0 * XO0 + o1 * XO1
    yo = o0 * YO0 + o1 * YO1
    go = o0 * LO0 + o1 * LO1 + SHIFT  # stream position of the tile's origin, past 4 * base
    it = tl.int64 if IDX64 else tl.int32
    a = (ab * BLOCK_A + tl.arange(0, BLOCK_A)).to(it)
    b = (bb * BLOCK_B + tl.arange(0, BLOCK_B)).to(it)
    key, base = _state(seed, base, base_ptr, save_ptr, SEED_PTR, BASE_PTR, SAVE)
    if KEEP == KEEP_SCALAR:
        keep = _word(key, base, go) < threshold
    elif KEEP == KEEP_ROW:
        keep = (_word(key, base, go + a.to(tl.int64) * LA) < threshold)[:, None]
    elif KEEP == KEEP_COL:
        keep = (_word(key, base, go + b.to(tl.int64) * LB) < threshold)[None, :]
    elif KEEP == KEEP_COL4:
        # Mask stride 1 along B and the tile's first column at a multiple of 4: four
        # consecutive columns share a Philox call, each thread's VEC columns 1 or 2 calls.
        u = (bb * BLOCK_B + VEC * tl.arange(0, BLOCK_B // VEC)).to(tl.int64)
        q = (base + go // 4 + u // 4)[None, :]
        keep = _col_words(key, q, VEC).to(tl.int64) < threshold
    else:
        keep = _word(key, base, go + a.to(tl.int64)[:, None] * LA + b.to(tl.int64)[None, :] * LB) < threshold
    inb = (a < A)[:, None] & (b < B)[None, :]
    x = tl.load(X_ptr + xo + ((a * XA)[:, None] + (b * XB)[None, :]), mask=inb)
    y = _apply(x, keep, scale_bits, add_bits, drop_bits, AFFINE).to(Y_ptr.dtype.element_ty)
    tl.store(Y_ptr + yo + ((a * YA)[:, None] + (b * YB)[None, :]), y, mask=inb)


@triton.jit
def _col_words(seed, q, VEC: tl.constexpr):
    # [1, U] counters, one per VEC columns -> [1, U * VEC] words: column VEC * u + v takes
    # word v % 4 of the call at counter q[u] + v // 4 (VEC: 4 or 8).
    a0, b0, c0, d0 = _philox(seed, q)
    a1, b1, c1, d1 = a0, b0, c0, d0
    if VEC == 8:
        a1, b1, c1, d1 = _philox(seed, q + 1)
    return _interleave(a0, b0, c0, d0, a1, b1, c1, d1, VEC)
