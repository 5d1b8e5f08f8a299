"""How a CPU call is written down for threads that run compiled code only: numbers.

A job is one loop of ``fastdrop._jit`` over elements [0, n), described in an int64 array
(fields ``D_*``: kind, dtype, addresses, shape, strides, stream key, and the float64 bits of
scale, add and drop); ``_jit.omp_body`` runs it on the threads of PyTorch's own OpenMP
pool. Kept apart from ``_jit`` so that the caller needs no numba where the loops were built
ahead of time; ``_aot`` hashes this file with the loops.
"""

KIND_ROWS, KIND_NOISE, KIND_ADD, KIND_KEEP = 0, 1, 2, 3  # dropout_rows, noise_rows, dropout_add, keep_into
DTYPE_CODES = {"float32": 0, "float64": 1, "uint16": 2, "int16": 3}  # storage as the loops see it (_jit)
(D_KIND, D_DTYPE, D_CONTIG, D_N, D_PIECE, D_NEXT, D_X, D_Y, D_AUX, D_BIAS, D_AUXN, D_K0, D_K1, D_OFFSET, D_T,
 D_AFFINE, D_HAS_BIAS) = range(17)
# D_NEXT: the next piece to take (threads claim pieces from it); D_X, D_Y: addresses of x and
# y; D_AUX: of the keep bits (noise) or the residual (add); D_AUXN: the bits' or the bias's length
D_SHAPE, D_XS, D_YS, D_NS = 17, 21, 25, 29  # four each: shape, x and y byte strides, noise strides
D_FLOATS = 33  # three float64s: scale, add, drop
DESC = 36
