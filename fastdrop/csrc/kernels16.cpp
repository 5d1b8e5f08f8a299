// The float16 and bfloat16 loops (kernels.cpp has the rest): a file of their own, so that the build
// compiles the two halves side by side.
#include "loops.h"

namespace fastdrop {

void apply_words_16(DType dt, const Walk& walk, const void* x, void* y, const Key& key, Threshold t, const Form& f,
                    int64_t begin, int64_t end) {
  if (dt == DType::f16) return apply_words_typed<F16>(walk, x, y, key, t, f, begin, end);
  apply_words_typed<BF16>(walk, x, y, key, t, f, begin, end);
}

void apply_bits_16(DType dt, const Walk& walk, const void* x, void* y, const uint8_t* bits, const Form& f,
                   int64_t begin, int64_t end) {
  if (dt == DType::f16) return apply_bits_typed<F16>(walk, x, y, bits, f, begin, end);
  apply_bits_typed<BF16>(walk, x, y, bits, f, begin, end);
}

void dropout_add_16(DType dt, const void* x, const void* bias, int64_t width, const void* r, void* y, const Key& key,
                    Threshold t, double scale, int64_t begin, int64_t end) {
  if (dt == DType::f16) return dropout_add_typed<F16>(x, bias, width, r, y, key, t, scale, begin, end);
  dropout_add_typed<BF16>(x, bias, width, r, y, key, t, scale, begin, end);
}

}  // namespace fastdrop
