// The CPU loops' internals (kernels.cpp, kernels16.cpp): Philox in the vector form the compiler
// targets, 16-bit floats by their bits, the walk of a tensor in logical order, the bodies of every
// loop as templates over the storage type. Each including file instantiates the dtypes it serves.
#pragma once

#include "kernels.h"

#if defined(__AVX2__) || defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#define FASTDROP_INLINE inline __attribute__((always_inline))
// The rounds and chains of Philox fully unrolled: their state then stays in registers.
#define FASTDROP_PRAGMA(x) _Pragma(#x)
#define FASTDROP_UNROLL(n) FASTDROP_PRAGMA(GCC unroll n)

namespace fastdrop {
namespace {

constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;  // Random123's Philox4x32 constants
constexpr uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
constexpr int ROUNDS = 10;
constexpr int64_t BLOCK = 2048;  // stream elements per batch of words: they stay in L1 for the apply

// ---- Philox -----------------------------------------------------------------------------------

// The words of one call, out[w] = word w of Philox4x32-10 at counter q, key (k0, k1).
FASTDROP_INLINE void philox_call(uint64_t q, uint32_t k0, uint32_t k1, uint32_t* out) {
  uint32_t c0 = static_cast<uint32_t>(q), c1 = static_cast<uint32_t>(q >> 32), c2 = 0, c3 = 0;
  uint32_t a = k0, b = k1;
  FASTDROP_UNROLL(10) for (int r = 0; r < ROUNDS; ++r) {
    const uint64_t p0 = static_cast<uint64_t>(c0) * M0, p1 = static_cast<uint64_t>(c2) * M1;
    const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ a;
    const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ b;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    a += W0;
    b += W1;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

// Vector forms: each 64-bit lane holds one call's 32-bit state in its low half (vpmuludq reads
// only those), several calls per iteration in independent chains, so the multiplies' latency
// overlaps; rounds and chains fully unrolled, so the state stays in registers. The compiler's own
// vectorization of philox_call ran at 1.0 G words/s on one AVX-512 core (it widened to 64-bit
// multiplies and shuffled); these: 3.1 (AVX-512, Xeon), 1.4-1.7 (AVX2, Zen 3).
// Calls per iteration: 32 (AVX-512: 4 chains of 8 lanes), 24 (AVX2: 6 chains of 4; with 16 vector
// registers 6 chains ran 8% faster than 4 on an AVX2 Zen 3 core), 1 (plain). GROUP is a multiple of
// each: the vector forms write whole iterations, and buffers leave room for one group.
constexpr int64_t GROUP = 96;
#if defined(__AVX512F__)
void philox_block(uint64_t q0, int64_t calls, uint32_t k0, uint32_t k1,
                                                       uint32_t* out) {
  constexpr int V = 4, L = 8;
  const __m512i m0 = _mm512_set1_epi64(M0), m1 = _mm512_set1_epi64(M1), lo = _mm512_set1_epi64(0xFFFFFFFFu);
  __m512i ka[ROUNDS], kb[ROUNDS];
  for (int r = 0; r < ROUNDS; ++r) {
    ka[r] = _mm512_set1_epi64(static_cast<uint32_t>(k0 + static_cast<uint32_t>(r) * W0));
    kb[r] = _mm512_set1_epi64(static_cast<uint32_t>(k1 + static_cast<uint32_t>(r) * W1));
  }
  const __m512i lanes = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  const __m512i first = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
  const __m512i second = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
  for (int64_t i = 0; i < calls; i += V * L) {
    __m512i c0[V], c1[V], c2[V], c3[V];
    FASTDROP_UNROLL(8) for (int v = 0; v < V; ++v) {
      const __m512i q = _mm512_add_epi64(_mm512_set1_epi64(static_cast<int64_t>(q0 + i + v * L)), lanes);
      c0[v] = q;
      c1[v] = _mm512_srli_epi64(q, 32);
      c2[v] = c3[v] = _mm512_setzero_si512();
    }
    FASTDROP_UNROLL(10) for (int r = 0; r < ROUNDS; ++r) {
      FASTDROP_UNROLL(8) for (int v = 0; v < V; ++v) {  // high halves hold garbage: only low halves are read
        const __m512i p0 = _mm512_mul_epu32(c0[v], m0), p1 = _mm512_mul_epu32(c2[v], m1);
        c0[v] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p1, 32), c1[v], ka[r], 0x96);  // a ^ b ^ c
        c2[v] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p0, 32), c3[v], kb[r], 0x96);
        c1[v] = p1;
        c3[v] = p0;
      }
    }
    FASTDROP_UNROLL(8) for (int v = 0; v < V; ++v) {  // (w0 | w1 << 32, w2 | w3 << 32) per call, then calls in order
      const __m512i w01 = _mm512_or_si512(_mm512_and_si512(c0[v], lo), _mm512_slli_epi64(c1[v], 32));
      const __m512i w23 = _mm512_or_si512(_mm512_and_si512(c2[v], lo), _mm512_slli_epi64(c3[v], 32));
      const __m512i a = _mm512_unpacklo_epi64(w01, w23), b = _mm512_unpackhi_epi64(w01, w23);
      uint32_t* dst = out + 4 * (i + v * L);
      _mm512_storeu_si512(dst, _mm512_permutex2var_epi64(a, first, b));
      _mm512_storeu_si512(dst + 16, _mm512_permutex2var_epi64(a, second, b));
    }
  }
}

#elif defined(__AVX2__)
void philox_block(uint64_t q0, int64_t calls, uint32_t k0, uint32_t k1,
                                                 uint32_t* out) {
  constexpr int V = 6, L = 4;
  const __m256i m0 = _mm256_set1_epi64x(M0), m1 = _mm256_set1_epi64x(M1), lo = _mm256_set1_epi64x(0xFFFFFFFFu);
  __m256i ka[ROUNDS], kb[ROUNDS];
  for (int r = 0; r < ROUNDS; ++r) {
    ka[r] = _mm256_set1_epi64x(static_cast<uint32_t>(k0 + static_cast<uint32_t>(r) * W0));
    kb[r] = _mm256_set1_epi64x(static_cast<uint32_t>(k1 + static_cast<uint32_t>(r) * W1));
  }
  const __m256i lanes = _mm256_setr_epi64x(0, 1, 2, 3);
  for (int64_t i = 0; i < calls; i += V * L) {
    __m256i c0[V], c1[V], c2[V], c3[V];
    FASTDROP_UNROLL(8) for (int v = 0; v < V; ++v) {
      const __m256i q = _mm256_add_epi64(_mm256_set1_epi64x(static_cast<int64_t>(q0 + i + v * L)), lanes);
      c0[v] = q;
      c1[v] = _mm256_srli_epi64(q, 32);
      c2[v] = c3[v] = _mm256_setzero_si256();
    }
    FASTDROP_UNROLL(10) for (int r = 0; r < ROUNDS; ++r) {
      FASTDROP_UNROLL(8) for (int v = 0; v < V; ++v) {
        const __m256i p0 = _mm256_mul_epu32(c0[v], m0), p1 = _mm256_mul_epu32(c2[v], m1);
        c0[v] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), c1[v]), ka[r]);
        c2[v] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), c3[v]), kb[r]);
        c1[v] = p1;
        c3[v] = p0;
      }
    }
    FASTDROP_UNROLL(8) for (int v = 0; v < V; ++v) {
      const __m256i w01 = _mm256_or_si256(_mm256_and_si256(c0[v], lo), _mm256_slli_epi64(c1[v], 32));
      const __m256i w23 = _mm256_or_si256(_mm256_and_si256(c2[v], lo), _mm256_slli_epi64(c3[v], 32));
      const __m256i a = _mm256_unpacklo_epi64(w01, w23), b = _mm256_unpackhi_epi64(w01, w23);
      auto* dst = reinterpret_cast<__m256i*>(out + 4 * (i + v * L));
      _mm256_storeu_si256(dst, _mm256_permute2x128_si256(a, b, 0x20));
      _mm256_storeu_si256(dst + 1, _mm256_permute2x128_si256(a, b, 0x31));
    }
  }
}
#else
void philox_block(uint64_t q0, int64_t calls, uint32_t k0, uint32_t k1, uint32_t* out) {
  for (int64_t i = 0; i < calls; ++i) philox_call(q0 + static_cast<uint64_t>(i), k0, k1, out + 4 * i);
}
#endif

// Words of stream elements [g, g + m) (m <= BLOCK) into buf; returns where the first one is.
FASTDROP_INLINE int64_t words(const Key& key, uint64_t g, int64_t m, uint32_t* buf) {
  const uint64_t q0 = g / 4;
  const int64_t skip = static_cast<int64_t>(g - q0 * 4);
  philox_block(q0, (skip + m + 3) / 4, key.k0, key.k1, buf);
  return skip;
}

// ---- branch-free selects and 16-bit floats by their bits ------------------------------------------
// Selects are written with masks, not ?:, so that the compiler turns the loops below into
// vector code (with ?: GCC 12 left them scalar: "control flow in loop").

FASTDROP_INLINE uint32_t sel(bool c, uint32_t a, uint32_t b) {
  const uint32_t m = 0u - static_cast<uint32_t>(c);
  return (a & m) | (b & ~m);
}

FASTDROP_INLINE uint64_t sel(bool c, uint64_t a, uint64_t b) {
  const uint64_t m = 0u - static_cast<uint64_t>(c);
  return (a & m) | (b & ~m);
}

FASTDROP_INLINE float f32_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

FASTDROP_INLINE uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

FASTDROP_INLINE float fsel(bool c, float a, float b) { return f32_of(sel(c, bits_of(a), bits_of(b))); }

FASTDROP_INLINE double fsel(bool c, double a, double b) {
  uint64_t ua, ub;
  std::memcpy(&ua, &a, 8);
  std::memcpy(&ub, &b, 8);
  const uint64_t u = sel(c, ua, ub);
  double d;
  std::memcpy(&d, &u, 8);
  return d;
}

struct F16 { uint16_t v; };   // float16 storage
struct BF16 { uint16_t v; };  // bfloat16 storage

template <typename T> struct Compute { using type = float; };
template <> struct Compute<double> { using type = double; };

FASTDROP_INLINE float widen(float v) { return v; }
FASTDROP_INLINE double widen(double v) { return v; }
FASTDROP_INLINE float widen(BF16 h) { return f32_of(static_cast<uint32_t>(h.v) << 16); }
FASTDROP_INLINE float widen(F16 h) {
  // Exact: the magnitude's bits moved into a float32's place, rescaled by 2^112 (normals and
  // subnormals alike); inf and NaN keep their payload.
  const uint32_t sign = static_cast<uint32_t>(h.v & 0x8000u) << 16;
  const uint32_t em = h.v & 0x7FFFu;
  const uint32_t scaled = bits_of(f32_of(em << 13) * 0x1p112f);
  return f32_of(sign | sel(em >= 0x7C00u, (em << 13) | 0x7F800000u, scaled));
}

template <typename T> FASTDROP_INLINE T narrow(typename Compute<T>::type v);
template <> FASTDROP_INLINE float narrow<float>(float v) { return v; }
template <> FASTDROP_INLINE double narrow<double>(double v) { return v; }
template <> FASTDROP_INLINE BF16 narrow<BF16>(float v) {
  const uint32_t u = bits_of(v);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return BF16{static_cast<uint16_t>(sel(v != v, 0xFFFFu, rounded))};
}
template <> FASTDROP_INLINE F16 narrow<F16>(float v) {
  // Round to nearest even (the scheme of F. Giesen's float_to_half_fast3_rtne); NaN quiet with
  // its top payload bits, as the hardware conversion PyTorch uses gives.
  const uint32_t u = bits_of(v);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7FFFFFFFu;
  constexpr uint32_t denorm_magic = ((127 - 15) + (23 - 10) + 1) << 23;
  const uint32_t sub = bits_of(f32_of(a) + f32_of(denorm_magic)) - denorm_magic;  // below 2^-14
  const uint32_t norm = (a + ((15u - 127u) << 23) + 0xFFFu + ((a >> 13) & 1u)) >> 13;
  const uint32_t inf_nan = sel(a > 0x7F800000u, 0x7E00u | ((a >> 13) & 0x3FFu), 0x7C00u);
  const uint32_t o = sel(a >= ((127u + 16u) << 23), inf_nan, sel(a < (113u << 23), sub, norm));
  return F16{static_cast<uint16_t>(sign | o)};
}

// ---- the apply ----------------------------------------------------------------------------------

template <typename T>
struct TForm {
  using C = typename Compute<T>::type;
  C scale, add, drop;
};

// keep ? x * scale : 0, or (AFFINE) keep ? round_T(x * scale) + add : drop
template <typename T, bool AFFINE>
FASTDROP_INLINE T apply(T x, bool keep, const TForm<T>& f) {
  using C = typename Compute<T>::type;
  const C v = widen(x) * f.scale;
  if constexpr (AFFINE) return narrow<T>(fsel(keep, widen(narrow<T>(v)) + f.add, f.drop));
  return narrow<T>(fsel(keep, v, C(0)));
}

// ---- walking a tensor in logical order ----------------------------------------------------------

// fn(x offset, y offset, bit index, logical index, run length) for each run of the innermost dim
// within logical elements [begin, end).
template <typename F>
FASTDROP_INLINE void rows(const Walk& w, int64_t begin, int64_t end, const F& fn) {
  const size_t nd = w.sizes.size();
  int64_t idx[64];  // a tensor has at most 64 dims
  int64_t r = begin;
  for (size_t d = nd; d-- > 0;) {
    idx[d] = r % w.sizes[d];
    r /= w.sizes[d];
  }
  int64_t i = begin;
  while (i < end) {
    int64_t xo = 0, yo = 0, bo = 0;
    for (size_t d = 0; d < nd; ++d) {
      xo += idx[d] * w.xs[d];
      yo += idx[d] * w.ys[d];
      bo += idx[d] * w.bs[d];
    }
    const int64_t m = std::min(w.sizes[nd - 1] - idx[nd - 1], end - i);
    fn(xo, yo, bo, i, m);
    i += m;
    idx[nd - 1] += m;
    for (size_t d = nd - 1; d > 0 && idx[d] == w.sizes[d]; --d) {
      idx[d] = 0;
      ++idx[d - 1];
    }
  }
}

// float16 <-> float32 over arrays: F16C where it is compiled in (the conversion PyTorch's own CPU
// kernels use), else the bit arithmetic above, which gives the same results, slower.
#if defined(__F16C__)
constexpr bool HW_HALF = true;
FASTDROP_INLINE void widen_block(const F16* x, float* o, int64_t m) {
  int64_t k = 0;
#if defined(__AVX512F__)
  for (; k + 16 <= m; k += 16) {
    _mm512_storeu_ps(o + k, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + k))));
  }
#endif
  for (; k + 8 <= m; k += 8) {
    _mm256_storeu_ps(o + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + k))));
  }
  for (; k < m; ++k) o[k] = widen(x[k]);
}
FASTDROP_INLINE void narrow_block(const float* v, F16* y, int64_t m) {
  int64_t k = 0;
#if defined(__AVX512F__)
  for (; k + 16 <= m; k += 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + k),
                        _mm512_cvtps_ph(_mm512_loadu_ps(v + k), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
#endif
  for (; k + 8 <= m; k += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(y + k), _mm256_cvtps_ph(_mm256_loadu_ps(v + k), _MM_FROUND_TO_NEAREST_INT));
  }
  for (; k < m; ++k) y[k] = narrow<F16>(v[k]);
}
#else
constexpr bool HW_HALF = false;
FASTDROP_INLINE void widen_block(const F16* x, float* o, int64_t m) {
  for (int64_t k = 0; k < m; ++k) o[k] = widen(x[k]);
}
FASTDROP_INLINE void narrow_block(const float* v, F16* y, int64_t m) {
  for (int64_t k = 0; k < m; ++k) y[k] = narrow<F16>(v[k]);
}
#endif

constexpr int64_t STAGE = 256;  // float16 elements converted per batch (their float32 values stay in L1)

// y[k] = apply(x[k], keep(k)) over a contiguous run; float16 goes through float32 in batches
// where the hardware converts.
template <typename T, bool AFFINE, typename Keep>
FASTDROP_INLINE void contiguous_run(const T* __restrict x, T* y, int64_t m, const Keep& keep, const TForm<T>& f) {
  if constexpr (std::is_same_v<T, F16> && HW_HALF) {
    alignas(64) float v[STAGE];
    for (int64_t k0 = 0; k0 < m; k0 += STAGE) {
      const int64_t mm = std::min(STAGE, m - k0);
      widen_block(x + k0, v, mm);
      for (int64_t k = 0; k < mm; ++k) {
        const float s = v[k] * f.scale;
        if constexpr (AFFINE) {
          v[k] = fsel(keep(k0 + k), widen(narrow<F16>(s)) + f.add, f.drop);
        } else {
          v[k] = fsel(keep(k0 + k), s, 0.0f);
        }
      }
      narrow_block(v, y + k0, mm);
    }
  } else {
    for (int64_t k = 0; k < m; ++k) y[k] = apply<T, AFFINE>(x[k], keep(k), f);
  }
}

// Plain dropout: each run's words are consecutive stream elements (its logical indices),
// generated a block at a time.
template <typename T, bool AFFINE, bool CONTIG>
void words_body(const Walk& walk, const T* __restrict x, T* y, const Key& key, Threshold t, const TForm<T>& f,
                int64_t begin, int64_t end) {
  alignas(64) uint32_t buf[BLOCK + 4 * GROUP + 8];
  const int64_t sx = walk.xs.back(), sy = walk.ys.back();
  rows(walk, begin, end, [&](int64_t xo, int64_t yo, int64_t, int64_t i, int64_t m) {
    for (int64_t j = 0; j < m; j += BLOCK) {
      const int64_t mm = std::min(BLOCK, m - j);
      const uint32_t* w = buf + words(key, key.offset + static_cast<uint64_t>(i + j), mm, buf);
      const T* xr = x + xo + j * sx;
      T* yr = y + yo + j * sy;
      if constexpr (CONTIG) {
        contiguous_run<T, AFFINE>(xr, yr, mm, [&](int64_t k) { return t.keep(w[k]); }, f);
      } else {
        for (int64_t k = 0; k < mm; ++k) yr[k * sy] = apply<T, AFFINE>(xr[k * sx], t.keep(w[k]), f);
      }
    }
  });
}

// Noise shapes: the keep bit of a run's element k is bits[k * sb] (sb = 0: one bit for the run).
template <typename T, bool AFFINE, bool CONTIG>
void bits_body(const Walk& walk, const T* __restrict x, T* y, const uint8_t* bits, const TForm<T>& f,
               int64_t begin, int64_t end) {
  const int64_t sx = walk.xs.back(), sy = walk.ys.back(), sb = walk.bs.back();
  rows(walk, begin, end, [&](int64_t xo, int64_t yo, int64_t bo, int64_t, int64_t m) {
    const T* xr = x + xo;
    T* yr = y + yo;
    const uint8_t* br = bits + bo;
    if (CONTIG && sb == 0) {
      const bool keep = br[0] != 0;
      contiguous_run<T, AFFINE>(xr, yr, m, [&](int64_t) { return keep; }, f);
    } else if (CONTIG && sb == 1) {
      contiguous_run<T, AFFINE>(xr, yr, m, [&](int64_t k) { return br[k] != 0; }, f);
    } else {
      for (int64_t k = 0; k < m; ++k) yr[k * sy] = apply<T, AFFINE>(xr[k * sx], br[k * sb] != 0, f);
    }
  });
}

// y = residual + (keep ? (x + bias) * scale : 0) over a contiguous run, in the compute type,
// rounded once.
template <typename T>
FASTDROP_INLINE void add_run(const T* xs, const T* bs, const T* rs, T* ys, const uint32_t* ws, int64_t m,
                             Threshold t, typename Compute<T>::type scale) {
  using C = typename Compute<T>::type;
  if constexpr (std::is_same_v<T, F16> && HW_HALF) {
    alignas(64) float a[STAGE], b[STAGE], r[STAGE];
    for (int64_t k0 = 0; k0 < m; k0 += STAGE) {
      const int64_t mm = std::min(STAGE, m - k0);
      widen_block(xs + k0, a, mm);
      widen_block(rs + k0, r, mm);
      if (bs != nullptr) {
        widen_block(bs + k0, b, mm);
        for (int64_t k = 0; k < mm; ++k) a[k] += b[k];
      }
      for (int64_t k = 0; k < mm; ++k) a[k] = fsel(t.keep(ws[k0 + k]), a[k] * scale, 0.0f) + r[k];
      narrow_block(a, ys + k0, mm);
    }
  } else if (bs == nullptr) {
    for (int64_t j = 0; j < m; ++j) ys[j] = narrow<T>(fsel(t.keep(ws[j]), widen(xs[j]) * scale, C(0)) + widen(rs[j]));
  } else {
    for (int64_t j = 0; j < m; ++j) {
      ys[j] = narrow<T>(fsel(t.keep(ws[j]), (widen(xs[j]) + widen(bs[j])) * scale, C(0)) + widen(rs[j]));
    }
  }
}

template <typename T>
void add_body(const T* x, const T* bias, int64_t width, const T* r, T* y, const Key& key, Threshold t,
              double scale, int64_t begin, int64_t end) {
  alignas(64) uint32_t buf[BLOCK + 4 * GROUP + 8];
  for (int64_t g = begin; g < end; g += BLOCK) {
    const int64_t m = std::min(BLOCK, end - g);
    const uint32_t* w = buf + words(key, key.offset + static_cast<uint64_t>(g), m, buf);
    for (int64_t k = 0; k < m;) {  // runs within one row of the bias
      const int64_t col = bias == nullptr ? 0 : (g + k) % width;
      const int64_t run = bias == nullptr ? m - k : std::min(m - k, width - col);
      add_run<T>(x + g + k, bias == nullptr ? nullptr : bias + col, r + g + k, y + g + k, w + k, run, t,
                 static_cast<typename Compute<T>::type>(scale));
      k += run;
    }
  }
}

template <typename T>
TForm<T> typed(const Form& f) {
  using C = typename Compute<T>::type;
  return TForm<T>{static_cast<C>(f.scale), static_cast<C>(f.add), static_cast<C>(f.drop)};
}


// The typed entry points of the loops (kernels.cpp's are per dtype, in two files for build time).
template <typename T>
void apply_words_typed(const Walk& walk, const void* x, void* y, const Key& key, Threshold t, const Form& f,
                       int64_t begin, int64_t end) {
  const T* xp = static_cast<const T*>(x);
  T* yp = static_cast<T*>(y);
  const TForm<T> tf = typed<T>(f);
  const bool contig = walk.contiguous_inner();
  if (f.affine) {
    contig ? words_body<T, true, true>(walk, xp, yp, key, t, tf, begin, end)
           : words_body<T, true, false>(walk, xp, yp, key, t, tf, begin, end);
  } else {
    contig ? words_body<T, false, true>(walk, xp, yp, key, t, tf, begin, end)
           : words_body<T, false, false>(walk, xp, yp, key, t, tf, begin, end);
  }
}

template <typename T>
void apply_bits_typed(const Walk& walk, const void* x, void* y, const uint8_t* bits, const Form& f, int64_t begin,
                      int64_t end) {
  const T* xp = static_cast<const T*>(x);
  T* yp = static_cast<T*>(y);
  const TForm<T> tf = typed<T>(f);
  const bool contig = walk.contiguous_inner();
  if (f.affine) {
    contig ? bits_body<T, true, true>(walk, xp, yp, bits, tf, begin, end)
           : bits_body<T, true, false>(walk, xp, yp, bits, tf, begin, end);
  } else {
    contig ? bits_body<T, false, true>(walk, xp, yp, bits, tf, begin, end)
           : bits_body<T, false, false>(walk, xp, yp, bits, tf, begin, end);
  }
}

template <typename T>
void dropout_add_typed(const void* x, const void* bias, int64_t width, const void* r, void* y, const Key& key,
                       Threshold t, double scale, int64_t begin, int64_t end) {
  add_body<T>(static_cast<const T*>(x), static_cast<const T*>(bias), width, static_cast<const T*>(r),
              static_cast<T*>(y), key, t, scale, begin, end);
}

}  // namespace

// kernels16.cpp: the float16 and bfloat16 loops.
void apply_words_16(DType dt, const Walk& walk, const void* x, void* y, const Key& key, Threshold t, const Form& f,
                    int64_t begin, int64_t end);
void apply_bits_16(DType dt, const Walk& walk, const void* x, void* y, const uint8_t* bits, const Form& f,
                   int64_t begin, int64_t end);
void dropout_add_16(DType dt, const void* x, const void* bias, int64_t width, const void* r, void* y, const Key& key,
                    Threshold t, double scale, int64_t begin, int64_t end);

}  // namespace fastdrop
