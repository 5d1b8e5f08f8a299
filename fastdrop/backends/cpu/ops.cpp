// fastdrop's CPU backend: the mask contract's Philox words and the apply in one pass over memory,
// on PyTorch's own thread pool (at::parallel_for), as C++ operators with C++ autograd nodes.
// Built at first use by fastdrop/backends/cpu/__init__.py, against the installed torch.
//
// Mask contract (fastdrop/contract.py): element g of the stream for seed s keeps iff word g % 4 of
// Philox4x32-10 at counter (g / 4 mod 2^32, g / 4 >> 32, 0, 0), key (s mod 2^32, s >> 32), is below
// the threshold. An element's g is offset + its row-major index (over the noise shape's index for
// noise shapes, whose size-1 dims share one bit).
//
// Arithmetic is the Triton kernels': x * scale in float32 for 16- and 32-bit types (float64 for
// float64), rounded once to the output's dtype; dropped elements are 0 whatever x holds (inf, NaN).
// 16-bit floats are converted by their bits, rounding to nearest even, with PyTorch's CPU results
// for NaN (float16: quiet, payload kept; bfloat16: 0xFFFF).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/SmallVector.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <pthread.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#define FASTDROP_INLINE inline __attribute__((always_inline))

namespace {

constexpr uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;  // Random123's Philox4x32 constants
constexpr uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
constexpr int ROUNDS = 10;
constexpr int64_t BLOCK = 2048;  // stream elements per batch of words: they stay in L1 for the apply
constexpr int64_t GRAIN = 1 << 13;  // the smallest piece a thread takes (a parallel region costs ~3 us)
constexpr int64_t HUGE_PAGE = 1 << 21;
constexpr int64_t MMAPPED = 32 << 20;  // glibc maps allocations this large afresh: see huge_pages

bool forked = false;  // in a forked child: libgomp's team does not survive fork(), so run inline

template <typename F>
void parallel(int64_t n, int64_t grain, const F& f) {
  if (forked || n <= grain) {
    f(0, n);
  } else {
    at::parallel_for(0, n, grain, f);
  }
}

// ---- which instruction sets this CPU has ---------------------------------------------------------

enum class Isa { plain, v3, v4 };  // x86-64, x86-64-v3 (AVX2, F16C), x86-64-v4 (AVX-512)

Isa detect_isa() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  Isa best = Isa::plain;
  if (__builtin_cpu_supports("x86-64-v4")) {
    best = Isa::v4;
  } else if (__builtin_cpu_supports("x86-64-v3")) {
    best = Isa::v3;
  }
  // FASTDROP_CPU_ISA=plain|v3 caps the form used: the tests run every form on one machine.
  const char* cap = std::getenv("FASTDROP_CPU_ISA");
  if (cap != nullptr && std::strcmp(cap, "plain") == 0) return Isa::plain;
  if (cap != nullptr && std::strcmp(cap, "v3") == 0 && best == Isa::v4) return Isa::v3;
  return best;
#else
  return Isa::plain;
#endif
}

const Isa isa = detect_isa();

// ---- Philox -----------------------------------------------------------------------------------

// The words of one call, out[w] = word w of Philox4x32-10 at counter q, key (k0, k1).
FASTDROP_INLINE void philox_call(uint64_t q, uint32_t k0, uint32_t k1, uint32_t* out) {
  uint32_t c0 = static_cast<uint32_t>(q), c1 = static_cast<uint32_t>(q >> 32), c2 = 0, c3 = 0;
  uint32_t a = k0, b = k1;
  for (int r = 0; r < ROUNDS; ++r) {
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
// only those), GROUP calls per iteration in 4 independent chains, so the multiplies' latency
// overlaps. The compiler's own vectorization of philox_call ran at 1.0 G words/s on one AVX-512
// core (it widened to 64-bit multiplies and shuffled); these: 3.1 (AVX-512), 1.5 (AVX2).
constexpr int64_t GROUP = 32;  // calls per iteration of the widest form; buffers leave room for one
#if defined(__x86_64__) && defined(__GNUC__)
#define FASTDROP_VECTOR_PHILOX 1
__attribute__((target("avx512f"))) void philox_avx512(uint64_t q0, int64_t calls, uint32_t k0, uint32_t k1,
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
    for (int v = 0; v < V; ++v) {
      const __m512i q = _mm512_add_epi64(_mm512_set1_epi64(static_cast<int64_t>(q0 + i + v * L)), lanes);
      c0[v] = q;
      c1[v] = _mm512_srli_epi64(q, 32);
      c2[v] = c3[v] = _mm512_setzero_si512();
    }
    for (int r = 0; r < ROUNDS; ++r) {
      for (int v = 0; v < V; ++v) {  // high halves hold garbage: only low halves are read
        const __m512i p0 = _mm512_mul_epu32(c0[v], m0), p1 = _mm512_mul_epu32(c2[v], m1);
        c0[v] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p1, 32), c1[v], ka[r], 0x96);  // a ^ b ^ c
        c2[v] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p0, 32), c3[v], kb[r], 0x96);
        c1[v] = p1;
        c3[v] = p0;
      }
    }
    for (int v = 0; v < V; ++v) {  // (w0 | w1 << 32, w2 | w3 << 32) per call, then calls in order
      const __m512i w01 = _mm512_or_si512(_mm512_and_si512(c0[v], lo), _mm512_slli_epi64(c1[v], 32));
      const __m512i w23 = _mm512_or_si512(_mm512_and_si512(c2[v], lo), _mm512_slli_epi64(c3[v], 32));
      const __m512i a = _mm512_unpacklo_epi64(w01, w23), b = _mm512_unpackhi_epi64(w01, w23);
      uint32_t* dst = out + 4 * (i + v * L);
      _mm512_storeu_si512(dst, _mm512_permutex2var_epi64(a, first, b));
      _mm512_storeu_si512(dst + 16, _mm512_permutex2var_epi64(a, second, b));
    }
  }
}

__attribute__((target("avx2"))) void philox_avx2(uint64_t q0, int64_t calls, uint32_t k0, uint32_t k1,
                                                 uint32_t* out) {
  constexpr int V = 4, L = 4;
  const __m256i m0 = _mm256_set1_epi64x(M0), m1 = _mm256_set1_epi64x(M1), lo = _mm256_set1_epi64x(0xFFFFFFFFu);
  __m256i ka[ROUNDS], kb[ROUNDS];
  for (int r = 0; r < ROUNDS; ++r) {
    ka[r] = _mm256_set1_epi64x(static_cast<uint32_t>(k0 + static_cast<uint32_t>(r) * W0));
    kb[r] = _mm256_set1_epi64x(static_cast<uint32_t>(k1 + static_cast<uint32_t>(r) * W1));
  }
  const __m256i lanes = _mm256_setr_epi64x(0, 1, 2, 3);
  for (int64_t i = 0; i < calls; i += V * L) {
    __m256i c0[V], c1[V], c2[V], c3[V];
    for (int v = 0; v < V; ++v) {
      const __m256i q = _mm256_add_epi64(_mm256_set1_epi64x(static_cast<int64_t>(q0 + i + v * L)), lanes);
      c0[v] = q;
      c1[v] = _mm256_srli_epi64(q, 32);
      c2[v] = c3[v] = _mm256_setzero_si256();
    }
    for (int r = 0; r < ROUNDS; ++r) {
      for (int v = 0; v < V; ++v) {
        const __m256i p0 = _mm256_mul_epu32(c0[v], m0), p1 = _mm256_mul_epu32(c2[v], m1);
        c0[v] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), c1[v]), ka[r]);
        c2[v] = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), c3[v]), kb[r]);
        c1[v] = p1;
        c3[v] = p0;
      }
    }
    for (int v = 0; v < V; ++v) {
      const __m256i w01 = _mm256_or_si256(_mm256_and_si256(c0[v], lo), _mm256_slli_epi64(c1[v], 32));
      const __m256i w23 = _mm256_or_si256(_mm256_and_si256(c2[v], lo), _mm256_slli_epi64(c3[v], 32));
      const __m256i a = _mm256_unpacklo_epi64(w01, w23), b = _mm256_unpackhi_epi64(w01, w23);
      auto* dst = reinterpret_cast<__m256i*>(out + 4 * (i + v * L));
      _mm256_storeu_si256(dst, _mm256_permute2x128_si256(a, b, 0x20));
      _mm256_storeu_si256(dst + 1, _mm256_permute2x128_si256(a, b, 0x31));
    }
  }
}
#endif

void philox_plain(uint64_t q0, int64_t calls, uint32_t k0, uint32_t k1, uint32_t* out) {
  for (int64_t i = 0; i < calls; ++i) philox_call(q0 + static_cast<uint64_t>(i), k0, k1, out + 4 * i);
}

using PhiloxFn = void (*)(uint64_t, int64_t, uint32_t, uint32_t, uint32_t*);

PhiloxFn pick_philox() {
#ifdef FASTDROP_VECTOR_PHILOX
  if (isa == Isa::v4) return philox_avx512;
  if (isa == Isa::v3) return philox_avx2;
#endif
  return philox_plain;
}

const PhiloxFn philox_block_fn = pick_philox();

// out[4i + w] = word w of Philox4x32-10 at counter q0 + i, for i < calls; out must have room for
// calls rounded up to a multiple of GROUP (the vector forms write whole groups).
FASTDROP_INLINE void philox_block(uint64_t q0, int64_t calls, uint32_t k0, uint32_t k1, uint32_t* out) {
  philox_block_fn(q0, calls, k0, k1, out);
}

struct Key {
  uint32_t k0, k1;
  uint64_t offset;  // stream position of logical index 0
};

// Words of stream elements [g, g + m) (m <= BLOCK) into buf; returns where the first one is.
FASTDROP_INLINE int64_t words(const Key& key, uint64_t g, int64_t m, uint32_t* buf) {
  const uint64_t q0 = g / 4;
  const int64_t skip = static_cast<int64_t>(g - q0 * 4);
  philox_block(q0, (skip + m + 3) / 4, key.k0, key.k1, buf);
  return skip;
}

// keep iff word < threshold, threshold in [0, 2^32]: as an unsigned 32-bit compare.
struct Threshold {
  uint32_t last;  // threshold - 1
  bool any;       // threshold > 0
  explicit Threshold(int64_t t) : last(static_cast<uint32_t>(t - 1)), any(t > 0) {}
  FASTDROP_INLINE bool keep(uint32_t w) const { return any & (w <= last); }
};

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
struct Form {
  using C = typename Compute<T>::type;
  C scale, add, drop;
};

// keep ? x * scale : 0, or (AFFINE) keep ? round_T(x * scale) + add : drop
template <typename T, bool AFFINE>
FASTDROP_INLINE T apply(T x, bool keep, const Form<T>& f) {
  using C = typename Compute<T>::type;
  const C v = widen(x) * f.scale;
  if constexpr (AFFINE) return narrow<T>(fsel(keep, widen(narrow<T>(v)) + f.add, f.drop));
  return narrow<T>(fsel(keep, v, C(0)));
}

// ---- walking a tensor in logical order ----------------------------------------------------------

// Dims of a call, outermost first, size-1 dims dropped and neighbours merged where every
// walked array (x, y and the keep bits' index) steps through them as one dim.
struct Walk {
  std::vector<int64_t> sizes, xs, ys, bs;  // strides in elements; bs: of the keep-bit index

  Walk(at::IntArrayRef shape, at::IntArrayRef x_strides, at::IntArrayRef y_strides,
       const std::vector<int64_t>& bit_strides) {
    for (size_t d = 0; d < shape.size(); ++d) {
      if (shape[d] == 1) continue;
      if (!sizes.empty() && xs.back() == x_strides[d] * shape[d] && ys.back() == y_strides[d] * shape[d] &&
          bs.back() == bit_strides[d] * shape[d]) {
        sizes.back() *= shape[d];
        xs.back() = x_strides[d];
        ys.back() = y_strides[d];
        bs.back() = bit_strides[d];
      } else {
        sizes.push_back(shape[d]);
        xs.push_back(x_strides[d]);
        ys.push_back(y_strides[d]);
        bs.push_back(bit_strides[d]);
      }
    }
    if (sizes.empty()) {  // one element
      sizes = {1};
      xs = ys = bs = {0};
    }
  }

  bool contiguous_inner() const { return xs.back() == 1 && ys.back() == 1; }

  // fn(x offset, y offset, bit index, logical index, run length) for each run of the innermost
  // dim within logical elements [begin, end).
  template <typename F>
  FASTDROP_INLINE void rows(int64_t begin, int64_t end, const F& fn) const {
    const size_t nd = sizes.size();
    c10::SmallVector<int64_t, 8> idx(nd);
    int64_t r = begin;
    for (size_t d = nd; d-- > 0;) {
      idx[d] = r % sizes[d];
      r /= sizes[d];
    }
    int64_t i = begin;
    while (i < end) {
      int64_t xo = 0, yo = 0, bo = 0;
      for (size_t d = 0; d < nd; ++d) {
        xo += idx[d] * xs[d];
        yo += idx[d] * ys[d];
        bo += idx[d] * bs[d];
      }
      const int64_t m = std::min(sizes[nd - 1] - idx[nd - 1], end - i);
      fn(xo, yo, bo, i, m);
      i += m;
      idx[nd - 1] += m;
      for (size_t d = nd - 1; d > 0 && idx[d] == sizes[d]; --d) {
        idx[d] = 0;
        ++idx[d - 1];
      }
    }
  }
};

std::vector<int64_t> row_major(at::IntArrayRef shape) {
  std::vector<int64_t> s(shape.size());
  int64_t acc = 1;
  for (size_t d = shape.size(); d-- > 0;) {
    s[d] = acc;
    acc *= shape[d];
  }
  return s;
}

// ---- the loops, each compiled for three instruction sets ------------------------------------------

// float16 <-> float32 over arrays. Where the CPU has F16C the hardware converts (the conversion
// PyTorch's own CPU kernels use); the bit arithmetic above gives the same results, slower.
template <Isa I>
struct HalfBlock {
  static FASTDROP_INLINE void widen(const F16* x, float* o, int64_t m) {
    for (int64_t k = 0; k < m; ++k) o[k] = ::widen(x[k]);
  }
  static FASTDROP_INLINE void narrow(const float* v, F16* y, int64_t m) {
    for (int64_t k = 0; k < m; ++k) y[k] = ::narrow<F16>(v[k]);
  }
};

#if defined(__x86_64__) && defined(__GNUC__)
#define FASTDROP_V3 __attribute__((target("arch=x86-64-v3")))
#define FASTDROP_V4 __attribute__((target("arch=x86-64-v4")))
template <>
struct HalfBlock<Isa::v3> {
  static FASTDROP_V3 void widen(const F16* x, float* o, int64_t m) {
    int64_t k = 0;
    for (; k + 8 <= m; k += 8) {
      _mm256_storeu_ps(o + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + k))));
    }
    for (; k < m; ++k) o[k] = ::widen(x[k]);
  }
  static FASTDROP_V3 void narrow(const float* v, F16* y, int64_t m) {
    int64_t k = 0;
    for (; k + 8 <= m; k += 8) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(y + k), _mm256_cvtps_ph(_mm256_loadu_ps(v + k), _MM_FROUND_TO_NEAREST_INT));
    }
    for (; k < m; ++k) y[k] = ::narrow<F16>(v[k]);
  }
};

template <>
struct HalfBlock<Isa::v4> {
  static FASTDROP_V4 void widen(const F16* x, float* o, int64_t m) {
    int64_t k = 0;
    for (; k + 16 <= m; k += 16) {
      _mm512_storeu_ps(o + k, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + k))));
    }
    for (; k < m; ++k) o[k] = ::widen(x[k]);
  }
  static FASTDROP_V4 void narrow(const float* v, F16* y, int64_t m) {
    int64_t k = 0;
    for (; k + 16 <= m; k += 16) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + k),
                          _mm512_cvtps_ph(_mm512_loadu_ps(v + k), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    for (; k < m; ++k) y[k] = ::narrow<F16>(v[k]);
  }
};
#endif

constexpr int64_t STAGE = 256;  // float16 elements converted per batch (their float32 values stay in L1)

// y[k] = apply(x[k], keep(k)) over a contiguous run; float16 goes through float32 in batches
// where the hardware converts.
template <Isa I, typename T, bool AFFINE, typename Keep>
FASTDROP_INLINE void contiguous_run(const T* __restrict x, T* y, int64_t m, const Keep& keep, const Form<T>& f) {
  if constexpr (std::is_same_v<T, F16> && I != Isa::plain) {
    alignas(64) float v[STAGE];
    for (int64_t k0 = 0; k0 < m; k0 += STAGE) {
      const int64_t mm = std::min(STAGE, m - k0);
      HalfBlock<I>::widen(x + k0, v, mm);
      for (int64_t k = 0; k < mm; ++k) {
        const float s = v[k] * f.scale;
        if constexpr (AFFINE) {
          v[k] = fsel(keep(k0 + k), widen(narrow<F16>(s)) + f.add, f.drop);
        } else {
          v[k] = fsel(keep(k0 + k), s, 0.0f);
        }
      }
      HalfBlock<I>::narrow(v, y + k0, mm);
    }
  } else {
    for (int64_t k = 0; k < m; ++k) y[k] = apply<T, AFFINE>(x[k], keep(k), f);
  }
}

// Plain dropout: each run's words are consecutive stream elements (its logical indices),
// generated a block at a time.
template <Isa I, typename T, bool AFFINE, bool CONTIG>
FASTDROP_INLINE void words_body(const Walk& walk, const T* __restrict x, T* y, const Key& key, Threshold t,
                                const Form<T>& f, int64_t begin, int64_t end) {
  alignas(64) uint32_t buf[BLOCK + 4 * GROUP + 8];
  const int64_t sx = walk.xs.back(), sy = walk.ys.back();
  walk.rows(begin, end, [&](int64_t xo, int64_t yo, int64_t, int64_t i, int64_t m) {
    for (int64_t j = 0; j < m; j += BLOCK) {
      const int64_t mm = std::min(BLOCK, m - j);
      const uint32_t* w = buf + words(key, key.offset + static_cast<uint64_t>(i + j), mm, buf);
      const T* xr = x + xo + j * sx;
      T* yr = y + yo + j * sy;
      if constexpr (CONTIG) {
        contiguous_run<I, T, AFFINE>(xr, yr, mm, [&](int64_t k) { return t.keep(w[k]); }, f);
      } else {
        for (int64_t k = 0; k < mm; ++k) yr[k * sy] = apply<T, AFFINE>(xr[k * sx], t.keep(w[k]), f);
      }
    }
  });
}

// Noise shapes: the keep bit of a run's element k is bits[k * sb] (sb = 0: one bit for the run).
template <Isa I, typename T, bool AFFINE, bool CONTIG>
FASTDROP_INLINE void bits_body(const Walk& walk, const T* __restrict x, T* y, const uint8_t* bits,
                               const Form<T>& f, int64_t begin, int64_t end) {
  const int64_t sx = walk.xs.back(), sy = walk.ys.back(), sb = walk.bs.back();
  walk.rows(begin, end, [&](int64_t xo, int64_t yo, int64_t bo, int64_t, int64_t m) {
    const T* xr = x + xo;
    T* yr = y + yo;
    const uint8_t* br = bits + bo;
    if (CONTIG && sb == 0) {
      const bool keep = br[0] != 0;
      contiguous_run<I, T, AFFINE>(xr, yr, m, [&](int64_t) { return keep; }, f);
    } else if (CONTIG && sb == 1) {
      contiguous_run<I, T, AFFINE>(xr, yr, m, [&](int64_t k) { return br[k] != 0; }, f);
    } else {
      for (int64_t k = 0; k < m; ++k) yr[k * sy] = apply<T, AFFINE>(xr[k * sx], br[k * sb] != 0, f);
    }
  });
}

// Keep bits of stream elements [offset + begin, offset + end) into out.
FASTDROP_INLINE void keep_body(const Key& key, Threshold t, uint8_t* out, int64_t begin, int64_t end) {
  alignas(64) uint32_t buf[BLOCK + 4 * GROUP + 8];
  for (int64_t j = begin; j < end; j += BLOCK) {
    const int64_t m = std::min(BLOCK, end - j);
    const uint32_t* w = buf + words(key, key.offset + static_cast<uint64_t>(j), m, buf);
    for (int64_t i = 0; i < m; ++i) out[j + i] = t.keep(w[i]);
  }
}

// y = residual + (keep ? (x + bias) * scale : 0) over contiguous elements [begin, end), in the
// compute type, rounded once; bias (width elements, or none) runs along rows.
template <Isa I, typename T>
FASTDROP_INLINE void add_run(const T* xs, const T* bs, const T* rs, T* ys, const uint32_t* ws, int64_t m,
                             Threshold t, typename Compute<T>::type scale) {
  using C = typename Compute<T>::type;
  if constexpr (std::is_same_v<T, F16> && I != Isa::plain) {
    alignas(64) float a[STAGE], b[STAGE], r[STAGE];
    for (int64_t k0 = 0; k0 < m; k0 += STAGE) {
      const int64_t mm = std::min(STAGE, m - k0);
      HalfBlock<I>::widen(xs + k0, a, mm);
      HalfBlock<I>::widen(rs + k0, r, mm);
      if (bs != nullptr) {
        HalfBlock<I>::widen(bs + k0, b, mm);
        for (int64_t k = 0; k < mm; ++k) a[k] += b[k];
      }
      for (int64_t k = 0; k < mm; ++k) a[k] = fsel(t.keep(ws[k0 + k]), a[k] * scale, 0.0f) + r[k];
      HalfBlock<I>::narrow(a, ys + k0, mm);
    }
  } else if (bs == nullptr) {
    for (int64_t j = 0; j < m; ++j) ys[j] = narrow<T>(fsel(t.keep(ws[j]), widen(xs[j]) * scale, C(0)) + widen(rs[j]));
  } else {
    for (int64_t j = 0; j < m; ++j) {
      ys[j] = narrow<T>(fsel(t.keep(ws[j]), (widen(xs[j]) + widen(bs[j])) * scale, C(0)) + widen(rs[j]));
    }
  }
}

template <Isa I, typename T>
FASTDROP_INLINE void add_body(const T* x, const T* bias, int64_t width, const T* r, T* y, const Key& key,
                              Threshold t, double scale, int64_t begin, int64_t end) {
  alignas(64) uint32_t buf[BLOCK + 4 * GROUP + 8];
  for (int64_t g = begin; g < end; g += BLOCK) {
    const int64_t m = std::min(BLOCK, end - g);
    const uint32_t* w = buf + words(key, key.offset + static_cast<uint64_t>(g), m, buf);
    for (int64_t k = 0; k < m;) {  // runs within one row of the bias
      const int64_t col = bias == nullptr ? 0 : (g + k) % width;
      const int64_t run = bias == nullptr ? m - k : std::min(m - k, width - col);
      add_run<I, T>(x + g + k, bias == nullptr ? nullptr : bias + col, r + g + k, y + g + k, w + k, run, t,
                    static_cast<typename Compute<T>::type>(scale));
      k += run;
    }
  }
}

template <typename T> using WordsFn = void (*)(const Walk&, const T*, T*, const Key&, Threshold, const Form<T>&,
                                               int64_t, int64_t);
template <typename T> using BitsFn = void (*)(const Walk&, const T*, T*, const uint8_t*, const Form<T>&, int64_t,
                                              int64_t);
using KeepFn = void (*)(const Key&, Threshold, uint8_t*, int64_t, int64_t);
template <typename T> using AddFn = void (*)(const T*, const T*, int64_t, const T*, T*, const Key&, Threshold,
                                             double, int64_t, int64_t);

// One copy of every loop per instruction set: the bodies inline into each.
#define FASTDROP_ISA(NAME, TARGET)                                                                        \
  template <typename T, bool AFFINE, bool CONTIG>                                                         \
  TARGET void words_##NAME(const Walk& w, const T* x, T* y, const Key& k, Threshold t, const Form<T>& f,  \
                           int64_t b, int64_t e) {                                                         \
    words_body<Isa::NAME, T, AFFINE, CONTIG>(w, x, y, k, t, f, b, e);                                     \
  }                                                                                                       \
  template <typename T, bool AFFINE, bool CONTIG>                                                         \
  TARGET void bits_##NAME(const Walk& w, const T* x, T* y, const uint8_t* bits, const Form<T>& f,        \
                          int64_t b, int64_t e) {                                                          \
    bits_body<Isa::NAME, T, AFFINE, CONTIG>(w, x, y, bits, f, b, e);                                      \
  }                                                                                                       \
  TARGET void keep_##NAME(const Key& k, Threshold t, uint8_t* out, int64_t b, int64_t e) {               \
    keep_body(k, t, out, b, e);                                                                           \
  }                                                                                                       \
  template <typename T>                                                                                   \
  TARGET void add_##NAME(const T* x, const T* bias, int64_t width, const T* r, T* y, const Key& k,       \
                         Threshold t, double scale, int64_t b, int64_t e) {                               \
    add_body<Isa::NAME, T>(x, bias, width, r, y, k, t, scale, b, e);                                      \
  }

FASTDROP_ISA(plain, )
#if defined(__x86_64__) && defined(__GNUC__)
FASTDROP_ISA(v3, FASTDROP_V3)
FASTDROP_ISA(v4, FASTDROP_V4)

#define FASTDROP_PICK(FN, ...) \
  (isa == Isa::v4 ? FN##_v4 __VA_ARGS__ : isa == Isa::v3 ? FN##_v3 __VA_ARGS__ : FN##_plain __VA_ARGS__)
#else
#define FASTDROP_PICK(FN, ...) FN##_plain __VA_ARGS__
#endif

template <typename T, bool AFFINE, bool CONTIG> WordsFn<T> words_fn() {
  return FASTDROP_PICK(words, <T, AFFINE, CONTIG>);
}
template <typename T, bool AFFINE, bool CONTIG> BitsFn<T> bits_fn() { return FASTDROP_PICK(bits, <T, AFFINE, CONTIG>); }
KeepFn keep_fn() { return FASTDROP_PICK(keep); }
template <typename T> AddFn<T> add_fn() { return FASTDROP_PICK(add, <T>); }

// ---- the operators ------------------------------------------------------------------------------

Key key_of(int64_t seed, int64_t offset) {
  const auto s = static_cast<uint64_t>(seed);
  return Key{static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32), static_cast<uint64_t>(offset)};
}

void huge_pages(const at::Tensor& y) {
  // A fresh large output is a fresh mapping: faulted in 4 KiB at a time, its first write cost
  // more than the dropout (64 MiB: 28 ms of faults, 15 ms of work); 2 MiB at a time, 7 ms.
  // Only whole 2 MiB pages inside y are marked.
  const int64_t nbytes = y.numel() * y.element_size();
  if (nbytes < MMAPPED || !y.is_contiguous()) return;
  const auto start = reinterpret_cast<uintptr_t>(y.data_ptr());
  const uintptr_t lo = (start + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
  const uintptr_t hi = (start + nbytes) / HUGE_PAGE * HUGE_PAGE;
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);  // an error: no huge pages
}

void check_dense_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.layout() == at::kStrided, "fastdrop_cpu: ", name,
              " must be a dense CPU tensor");
}

template <typename T, bool AFFINE>
void apply_typed(const at::Tensor& x, const at::Tensor& y, const Key& key, Threshold t, const Form<T>& f,
                 const std::optional<std::vector<int64_t>>& noise) {
  const T* xp = static_cast<const T*>(x.data_ptr());
  T* yp = static_cast<T*>(y.data_ptr());
  const int64_t n = x.numel();
  if (!noise.has_value()) {
    const Walk walk(x.sizes(), x.strides(), y.strides(), row_major(x.sizes()));
    const auto fn = walk.contiguous_inner() ? words_fn<T, AFFINE, true>() : words_fn<T, AFFINE, false>();
    parallel(n, GRAIN, [&](int64_t b, int64_t e) { fn(walk, xp, yp, key, t, f, b, e); });
    return;
  }
  // One keep bit per noise element, drawn first (the noise is at most x's size), then applied
  // along x with the noise index's strides (0 along its size-1 dims).
  const auto& ns = *noise;
  const int64_t count = c10::multiply_integers(ns);
  const std::unique_ptr<uint8_t[]> bits(new uint8_t[count]);  // written whole before it is read
  const KeepFn keep = keep_fn();
  parallel(count, GRAIN, [&](int64_t b, int64_t e) { keep(key, t, bits.get(), b, e); });
  std::vector<int64_t> bs = row_major(ns);
  for (size_t d = 0; d < ns.size(); ++d) {
    if (ns[d] == 1) bs[d] = 0;
  }
  const Walk walk(x.sizes(), x.strides(), y.strides(), bs);
  const auto fn = walk.contiguous_inner() ? bits_fn<T, AFFINE, true>() : bits_fn<T, AFFINE, false>();
  parallel(n, GRAIN * 8, [&](int64_t b, int64_t e) { fn(walk, xp, yp, bits.get(), f, b, e); });
}

template <typename T>
void apply_dtype(const at::Tensor& x, const at::Tensor& y, const Key& key, Threshold t, double scale, double add,
                 double drop, bool affine, const std::optional<std::vector<int64_t>>& noise) {
  using C = typename Compute<T>::type;
  const Form<T> f{static_cast<C>(scale), static_cast<C>(add), static_cast<C>(drop)};
  if (affine) {
    apply_typed<T, true>(x, y, key, t, f, noise);
  } else {
    apply_typed<T, false>(x, y, key, t, f, noise);
  }
}

// y = dropout(x) by the contract: x and y of one shape, any strides (y may be x itself).
void apply_into(const at::Tensor& x, const at::Tensor& y, int64_t seed, int64_t offset, int64_t threshold,
                double scale, double add, double drop, bool affine, at::OptionalIntArrayRef noise) {
  check_dense_cpu(x, "x");
  check_dense_cpu(y, "y");
  TORCH_CHECK(x.sizes() == y.sizes() && x.scalar_type() == y.scalar_type(), "fastdrop_cpu: x and y differ");
  if (x.numel() == 0) return;
  std::optional<std::vector<int64_t>> ns;
  if (noise.has_value() && !noise->equals(x.sizes())) {
    TORCH_CHECK(noise->size() == static_cast<size_t>(x.dim()), "fastdrop_cpu: noise has x.dim() entries");
    for (int64_t d = 0; d < x.dim(); ++d) {
      TORCH_CHECK((*noise)[d] == 1 || (*noise)[d] == x.size(d), "fastdrop_cpu: noise dims are 1 or x's size");
    }
    ns = noise->vec();
  }
  const Key key = key_of(seed, offset);
  const Threshold t(threshold);
  switch (x.scalar_type()) {
    case at::kFloat: return apply_dtype<float>(x, y, key, t, scale, add, drop, affine, ns);
    case at::kDouble: return apply_dtype<double>(x, y, key, t, scale, add, drop, affine, ns);
    case at::kHalf: return apply_dtype<F16>(x, y, key, t, scale, add, drop, affine, ns);
    case at::kBFloat16: return apply_dtype<BF16>(x, y, key, t, scale, add, drop, affine, ns);
    default: TORCH_CHECK(false, "fastdrop_cpu: no CPU loop for ", x.scalar_type());
  }
}

at::Tensor dropout_cpu(const at::Tensor& x, int64_t seed, int64_t offset, int64_t threshold, double scale, double add,
               double drop, bool affine, at::OptionalIntArrayRef noise) {
  at::Tensor y = at::empty_like(x);  // x's layout, as PyTorch's dropout gives
  huge_pages(y);
  apply_into(x, y, seed, offset, threshold, scale, add, drop, affine, noise);
  return y;
}

// The operators reach their CPU kernels through the dispatcher, below autograd: so a tensor
// subclass (a DTensor's shard, a functional collective's result) gets them in its
// __torch_dispatch__, which hands over plain tensors.
at::Tensor dropout_below_autograd(const at::Tensor& x, int64_t seed, int64_t offset, int64_t threshold, double scale,
                                  double add, double drop, bool affine, at::OptionalIntArrayRef noise) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("fastdrop_cpu::dropout", "").typed<decltype(dropout_cpu)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(x, seed, offset, threshold, scale, add, drop, affine, noise);
}

// dy/dx = keep * scale: the backward is this op again on the gradient without the affine part,
// so it is differentiable in turn (create_graph=True). Saves what decides the mask, nothing per element.
struct Dropout : public torch::autograd::Function<Dropout> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, int64_t seed,
                            int64_t offset, int64_t threshold, double scale, double add, double drop,
                            bool affine, at::OptionalIntArrayRef noise) {
    ctx->saved_data["seed"] = seed;
    ctx->saved_data["offset"] = offset;
    ctx->saved_data["threshold"] = threshold;
    ctx->saved_data["scale"] = scale;
    if (noise.has_value()) ctx->saved_data["noise"] = noise->vec();
    return dropout_below_autograd(x, seed, offset, threshold, scale, add, drop, affine, noise);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto& s = ctx->saved_data;
    const int64_t seed = s["seed"].toInt(), offset = s["offset"].toInt(), threshold = s["threshold"].toInt();
    const double scale = s["scale"].toDouble();
    std::optional<std::vector<int64_t>> noise;
    if (s.count("noise")) noise = s["noise"].toIntVector();
    const at::OptionalIntArrayRef ns = noise.has_value() ? at::OptionalIntArrayRef(*noise) : std::nullopt;
    at::Tensor gx = at::GradMode::is_enabled()
                        ? Dropout::apply(grads[0], seed, offset, threshold, scale, 0.0, 0.0, false, ns)
                        : dropout_below_autograd(grads[0], seed, offset, threshold, scale, 0.0, 0.0, false, ns);
    torch::autograd::variable_list out(9);  // x's gradient, none for the 8 numbers
    out[0] = gx;
    return out;
  }
};

at::Tensor dropout_autograd(const at::Tensor& x, int64_t seed, int64_t offset, int64_t threshold, double scale,
                            double add, double drop, bool affine, at::OptionalIntArrayRef noise) {
  if (!(at::GradMode::is_enabled() && x.requires_grad()))  // nothing to record: no node (1.4 us less)
    return dropout_below_autograd(x, seed, offset, threshold, scale, add, drop, affine, noise);
  return Dropout::apply(x, seed, offset, threshold, scale, add, drop, affine, noise);
}

void keep_mask(const at::Tensor& out, int64_t seed, int64_t offset, int64_t threshold) {
  TORCH_CHECK(out.device().is_cpu() && out.scalar_type() == at::kBool && out.is_contiguous(),
              "fastdrop_cpu: keep_mask writes a contiguous bool CPU tensor");
  const Key key = key_of(seed, offset);
  const Threshold t(threshold);
  auto* p = static_cast<uint8_t*>(out.data_ptr());
  const KeepFn fn = keep_fn();
  parallel(out.numel(), GRAIN, [&](int64_t b, int64_t e) { fn(key, t, p, b, e); });
}

at::Tensor dropout_add_cpu(const at::Tensor& x_in, const std::optional<at::Tensor>& bias_in, const at::Tensor& r_in,
                   int64_t seed, int64_t offset, int64_t threshold, double scale) {
  check_dense_cpu(x_in, "x");
  check_dense_cpu(r_in, "residual");
  TORCH_CHECK(x_in.sizes() == r_in.sizes() && x_in.scalar_type() == r_in.scalar_type(),
              "fastdrop_cpu: x and residual differ");
  // The fused pass walks contiguous memory; other layouts are copied first.
  const at::Tensor x = x_in.contiguous(), r = r_in.contiguous();
  at::Tensor bias;
  if (bias_in.has_value()) {
    bias = bias_in->contiguous();
    TORCH_CHECK(x.dim() > 0 && bias.dim() == 1 && bias.size(0) == x.size(-1) &&
                    bias.scalar_type() == x.scalar_type(), "fastdrop_cpu: bias is (x.shape[-1],) of x's dtype");
  }
  at::Tensor y = at::empty_like(x);
  huge_pages(y);
  const int64_t n = x.numel();
  if (n == 0) return y;
  const Key key = key_of(seed, offset);
  const Threshold t(threshold);
  const int64_t width = bias.defined() ? bias.size(0) : 1;
  auto go = [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x.data_ptr());
    const T* bp = bias.defined() ? static_cast<const T*>(bias.data_ptr()) : nullptr;
    const T* rp = static_cast<const T*>(r.data_ptr());
    T* yp = static_cast<T*>(y.data_ptr());
    const AddFn<T> fn = add_fn<T>();
    parallel(n, GRAIN, [&](int64_t b, int64_t e) { fn(xp, bp, width, rp, yp, key, t, scale, b, e); });
  };
  switch (x.scalar_type()) {
    case at::kFloat: go(float{}); break;
    case at::kDouble: go(double{}); break;
    case at::kHalf: go(F16{}); break;
    case at::kBFloat16: go(BF16{}); break;
    default: TORCH_CHECK(false, "fastdrop_cpu: no CPU loop for ", x.scalar_type());
  }
  return y;
}

at::Tensor dropout_add_below_autograd(const at::Tensor& x, const std::optional<at::Tensor>& bias,
                                      const at::Tensor& r, int64_t seed, int64_t offset, int64_t threshold,
                                      double scale) {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("fastdrop_cpu::dropout_add", "").typed<decltype(dropout_add_cpu)>();
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(x, bias, r, seed, offset, threshold, scale);
}

// residual + dropout(x + bias): d/dx = the dropout mask (the op on the gradient), d/dbias its sum
// over the leading dims, d/dresidual the identity.
struct DropoutAdd : public torch::autograd::Function<DropoutAdd> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const std::optional<at::Tensor>& bias, const at::Tensor& r, int64_t seed,
                            int64_t offset, int64_t threshold, double scale) {
    ctx->saved_data["seed"] = seed;
    ctx->saved_data["offset"] = offset;
    ctx->saved_data["threshold"] = threshold;
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["has_bias"] = bias.has_value();
    return dropout_add_below_autograd(x, bias, r, seed, offset, threshold, scale);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto& s = ctx->saved_data;
    const at::Tensor& g = grads[0];
    // needs_input_grad counts the tensors given: x, the bias where there is one, the residual.
    const bool has_bias = s["has_bias"].toBool();
    const bool need_bias = has_bias && ctx->needs_input_grad(1);
    torch::autograd::variable_list out(7);  // one per forward argument
    if (ctx->needs_input_grad(0) || need_bias) {
      out[0] = dropout_autograd(g, s["seed"].toInt(), s["offset"].toInt(), s["threshold"].toInt(),
                                s["scale"].toDouble(), 0.0, 0.0, false, std::nullopt);
      if (need_bias) out[1] = out[0].reshape({-1, g.size(-1)}).sum(0);
    }
    if (ctx->needs_input_grad(has_bias ? 2 : 1)) out[2] = g;
    return out;
  }
};

at::Tensor dropout_add_autograd(const at::Tensor& x, const std::optional<at::Tensor>& bias, const at::Tensor& r,
                                int64_t seed, int64_t offset, int64_t threshold, double scale) {
  const bool grad = at::GradMode::is_enabled() &&
                    (x.requires_grad() || r.requires_grad() || (bias.has_value() && bias->requires_grad()));
  if (!grad) return dropout_add_below_autograd(x, bias, r, seed, offset, threshold, scale);
  return DropoutAdd::apply(x, bias, r, seed, offset, threshold, scale);
}

// The Philox words themselves: out (int32, calls x 4) at counters q0, q0 + 1, ...
void philox_words(const at::Tensor& out, int64_t q0, int64_t k0, int64_t k1) {  // tests and benchmarks
  TORCH_CHECK(out.scalar_type() == at::kInt && out.is_contiguous() && out.numel() % 4 == 0,
              "fastdrop_cpu: philox_words writes a contiguous int32 tensor of 4 words per call");
  const int64_t calls = out.numel() / 4, whole = calls / GROUP * GROUP;
  auto* o = static_cast<uint32_t*>(out.data_ptr());
  const auto q = static_cast<uint64_t>(q0);
  const auto a = static_cast<uint32_t>(k0), b = static_cast<uint32_t>(k1);
  philox_block(q, whole, a, b, o);  // whole groups straight into out, the rest through a buffer
  uint32_t tail[4 * GROUP];
  philox_block(q + whole, calls - whole, a, b, tail);
  std::memcpy(o + 4 * whole, tail, 16 * (calls - whole));
}

// float32 -> float16 or bfloat16 as every loop here narrows (the tests hold it to PyTorch's casts).
void narrow_into(const at::Tensor& x, const at::Tensor& out) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous() && out.is_contiguous() && x.numel() == out.numel(),
              "fastdrop_cpu: narrow_into takes contiguous float32 and float16/bfloat16 tensors of one size");
  const float* v = static_cast<const float*>(x.data_ptr());
  if (out.scalar_type() == at::kBFloat16) {
    auto* y = static_cast<BF16*>(out.data_ptr());
    for (int64_t k = 0; k < x.numel(); ++k) y[k] = narrow<BF16>(v[k]);
    return;
  }
  TORCH_CHECK(out.scalar_type() == at::kHalf, "fastdrop_cpu: narrow_into writes float16 or bfloat16");
  auto* y = static_cast<F16*>(out.data_ptr());
  switch (isa) {
#if defined(__x86_64__) && defined(__GNUC__)
    case Isa::v4: return HalfBlock<Isa::v4>::narrow(v, y, x.numel());
    case Isa::v3: return HalfBlock<Isa::v3>::narrow(v, y, x.numel());
#endif
    default: return HalfBlock<Isa::plain>::narrow(v, y, x.numel());
  }
}

std::string isa_name() { return isa == Isa::v4 ? "x86-64-v4" : isa == Isa::v3 ? "x86-64-v3" : "plain"; }

const int registered_at_fork = pthread_atfork(nullptr, nullptr, [] { forked = true; });

}  // namespace

TORCH_LIBRARY(fastdrop_cpu, m) {
  m.def("dropout(Tensor x, int seed, int offset, int threshold, float scale, float add, float drop, "
        "bool affine, int[]? noise) -> Tensor");
  m.def("apply_into(Tensor x, Tensor(a!) y, int seed, int offset, int threshold, float scale, float add, "
        "float drop, bool affine, int[]? noise) -> ()");
  m.def("keep_mask(Tensor(a!) out, int seed, int offset, int threshold) -> ()");
  m.def("dropout_add(Tensor x, Tensor? bias, Tensor residual, int seed, int offset, int threshold, "
        "float scale) -> Tensor");
  m.def("philox_words(Tensor(a!) out, int q0, int k0, int k1) -> ()", TORCH_FN(philox_words));
  m.def("narrow_into(Tensor x, Tensor(a!) out) -> ()", TORCH_FN(narrow_into));
  m.def("isa() -> str", TORCH_FN(isa_name));
}

TORCH_LIBRARY_IMPL(fastdrop_cpu, CPU, m) {
  m.impl("dropout", TORCH_FN(dropout_cpu));
  m.impl("apply_into", TORCH_FN(apply_into));
  m.impl("keep_mask", TORCH_FN(keep_mask));
  m.impl("dropout_add", TORCH_FN(dropout_add_cpu));
}

TORCH_LIBRARY_IMPL(fastdrop_cpu, Autograd, m) {
  m.impl("dropout", TORCH_FN(dropout_autograd));
  m.impl("dropout_add", TORCH_FN(dropout_add_autograd));
}
