// fastdrop's CPU loops: the mask contract's Philox words and the apply in one pass over memory.
// No torch headers: built once for the instruction set of the machine (see kernels.h).
//
// Mask contract (fastdrop/contract.py): element g of the stream for seed s keeps iff word g % 4 of
// Philox4x32-10 at counter (g / 4 mod 2^32, g / 4 >> 32, 0, 0), key (s mod 2^32, s >> 32), is below
// the threshold. An element's g is offset + its row-major index (over the noise shape's index for
// noise shapes, whose size-1 dims share one bit).
//
// Arithmetic is the Triton kernels': x * scale in float32 for 16- and 32-bit types (float64 for
// float64), rounded once to the output's dtype; dropped elements are 0 whatever x holds (inf, NaN).
// 16-bit floats are converted by their bits, rounding to nearest even, with PyTorch's CPU results
// for NaN (float16: quiet, payload kept; bfloat16: 0xFFFF), or by F16C where it is compiled in.
#include "loops.h"

namespace fastdrop {

Walk::Walk(int64_t nd, const int64_t* shape, const int64_t* x_strides, const int64_t* y_strides,
           const int64_t* bit_strides) {
  for (int64_t d = 0; d < nd; ++d) {
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

std::vector<int64_t> row_major(int64_t nd, const int64_t* shape) {
  std::vector<int64_t> s(nd);
  int64_t acc = 1;
  for (int64_t d = nd; d-- > 0;) {
    s[d] = acc;
    acc *= shape[d];
  }
  return s;
}

void apply_words(DType dt, const Walk& walk, const void* x, void* y, const Key& key, Threshold t, const Form& f,
                 int64_t begin, int64_t end) {
  if (dt == DType::f32) return apply_words_typed<float>(walk, x, y, key, t, f, begin, end);
  if (dt == DType::f64) return apply_words_typed<double>(walk, x, y, key, t, f, begin, end);
  apply_words_16(dt, walk, x, y, key, t, f, begin, end);
}

void apply_bits(DType dt, const Walk& walk, const void* x, void* y, const uint8_t* bits, const Form& f,
                int64_t begin, int64_t end) {
  if (dt == DType::f32) return apply_bits_typed<float>(walk, x, y, bits, f, begin, end);
  if (dt == DType::f64) return apply_bits_typed<double>(walk, x, y, bits, f, begin, end);
  apply_bits_16(dt, walk, x, y, bits, f, begin, end);
}

void keep_bits(const Key& key, Threshold t, uint8_t* out, int64_t begin, int64_t end) {
  alignas(64) uint32_t buf[BLOCK + 4 * GROUP + 8];
  for (int64_t j = begin; j < end; j += BLOCK) {
    const int64_t m = std::min(BLOCK, end - j);
    const uint32_t* w = buf + words(key, key.offset + static_cast<uint64_t>(j), m, buf);
    for (int64_t i = 0; i < m; ++i) out[j + i] = t.keep(w[i]);
  }
}

void dropout_add(DType dt, const void* x, const void* bias, int64_t width, const void* r, void* y, const Key& key,
                 Threshold t, double scale, int64_t begin, int64_t end) {
  if (dt == DType::f32) return dropout_add_typed<float>(x, bias, width, r, y, key, t, scale, begin, end);
  if (dt == DType::f64) return dropout_add_typed<double>(x, bias, width, r, y, key, t, scale, begin, end);
  dropout_add_16(dt, x, bias, width, r, y, key, t, scale, begin, end);
}

void philox_words(uint64_t q0, int64_t calls, uint32_t k0, uint32_t k1, uint32_t* out) {
  const int64_t whole = calls / GROUP * GROUP;
  philox_block(q0, whole, k0, k1, out);  // whole groups straight into out, the rest through a buffer
  uint32_t tail[4 * GROUP];
  philox_block(q0 + whole, calls - whole, k0, k1, tail);
  std::memcpy(out + 4 * whole, tail, 16 * (calls - whole));
}

void narrow(DType dt, const float* v, void* out, int64_t n) {
  if (dt == DType::bf16) {
    auto* y = static_cast<BF16*>(out);
    for (int64_t k = 0; k < n; ++k) y[k] = narrow<BF16>(v[k]);
  } else {
    narrow_block(v, static_cast<F16*>(out), n);
  }
}

const char* isa() {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
  return "x86-64-v4";
#elif defined(__AVX2__) && defined(__F16C__)
  return "x86-64-v3";
#else
  return "plain";
#endif
}

}  // namespace fastdrop
