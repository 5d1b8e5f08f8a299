// The CPU loops of fastdrop's operators (kernels.cpp): plain C++ over raw pointers, no torch
// headers, so that the file compiles in seconds, once, for the instruction set of the machine
// that builds it (-march=x86-64-v4, -v3 or plain x86-64). Each loop covers a range
// [begin, end) of logical elements; ops.cpp splits a call over PyTorch's threads.
#pragma once

#include <cstdint>
#include <vector>

namespace fastdrop {

// Where a call's stream starts: the Philox key and the stream position of logical index 0.
struct Key {
  uint32_t k0, k1;
  uint64_t offset;
};

inline Key key_of(int64_t seed, int64_t offset) {
  const auto s = static_cast<uint64_t>(seed);
  return Key{static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32), static_cast<uint64_t>(offset)};
}

// keep iff word < threshold, threshold in [0, 2^32]: as an unsigned 32-bit compare.
struct Threshold {
  uint32_t last;  // threshold - 1
  bool any;       // threshold > 0
  explicit Threshold(int64_t t) : last(static_cast<uint32_t>(t - 1)), any(t > 0) {}
  inline bool keep(uint32_t w) const { return any & (w <= last); }
};

enum class DType { f32, f64, f16, bf16 };

// What a kept or dropped element becomes: keep ? x * scale : 0, or (affine) alpha dropout's
// keep ? round(x * scale) + add : drop.
struct Form {
  double scale, add, drop;
  bool affine;
};

// Dims of a call, outermost first, size-1 dims dropped and neighbours merged where every
// walked array (x, y and the keep bits' index) steps through them as one dim.
struct Walk {
  std::vector<int64_t> sizes, xs, ys, bs;  // strides in elements; bs: of the keep-bit index

  Walk(int64_t nd, const int64_t* shape, const int64_t* x_strides, const int64_t* y_strides,
       const int64_t* bit_strides);
  bool contiguous_inner() const { return xs.back() == 1 && ys.back() == 1; }
};

std::vector<int64_t> row_major(int64_t nd, const int64_t* shape);

// y = the form applied to x, keep bits the stream words at each element's logical index.
void apply_words(DType dt, const Walk& walk, const void* x, void* y, const Key& key, Threshold t, const Form& f,
                 int64_t begin, int64_t end);
// The same with one keep bit per noise element, bits[index over the noise shape] (walk.bs).
void apply_bits(DType dt, const Walk& walk, const void* x, void* y, const uint8_t* bits, const Form& f,
                int64_t begin, int64_t end);
// Keep bits of stream elements [offset + begin, offset + end) into out[begin, end).
void keep_bits(const Key& key, Threshold t, uint8_t* out, int64_t begin, int64_t end);
// y = residual + (keep ? (x + bias) * scale : 0) over contiguous elements [begin, end), in float32
// (float64 for float64), rounded once; bias of `width` elements runs along rows, or is null.
void dropout_add(DType dt, const void* x, const void* bias, int64_t width, const void* r, void* y, const Key& key,
                 Threshold t, double scale, int64_t begin, int64_t end);
// out[4i + w] = word w of Philox4x32-10 at counter q0 + i, for i < calls.
void philox_words(uint64_t q0, int64_t calls, uint32_t k0, uint32_t k1, uint32_t* out);
// float32 -> float16 / bfloat16 as every loop here rounds (the tests hold it to PyTorch's casts).
void narrow(DType dt, const float* v, void* out, int64_t n);
// The instruction-set form this file was compiled for: "x86-64-v4", "x86-64-v3" or "plain".
const char* isa();

}  // namespace fastdrop
