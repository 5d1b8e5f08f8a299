// fastdrop's operators: the schemas of the `fastdrop` namespace, where each call's seed comes
// from, and the kernels below autograd (CPU loops, CUDA launches, shapes for Meta and fake
// tensors). Autograd nodes are in autograd.cpp, the CPU loops in kernels.cpp, the CUDA launch in
// launch.cpp and cuda_launch.cpp.
//
// Every dropout call on a plain CPU or CUDA tensor runs `fastdrop::dropout` (`dropout_` in place,
// `dropout_add` for the residual forms): eager calls, modules, compiled graphs, traces, scripts.
// Its arguments decide the whole op: p (the keep threshold), the dims the mask is shared along
// (channel dropout, drop path, noise shapes), the scale of kept elements (default 1 / (1 - p)),
// alpha dropout's affine form, and the RNG state: an explicit seed, a seed tensor (a compiled
// graph draws it), or a draw from the generator of the input's device, under its mutex.
#include "ops.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/core/TensorBody.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <pthread.h>
#include <sys/mman.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

#include "kernels.h"

namespace fastdrop {

CudaHooks cuda_hooks{};

namespace {

constexpr int64_t GRAIN = 1 << 13;  // the smallest piece a thread takes (a parallel region costs ~3 us)
constexpr int64_t HUGE_PAGE = 1 << 21;
constexpr int64_t MMAPPED = 32 << 20;  // glibc maps allocations this large afresh: see huge_pages

// In a forked child libgomp's team does not survive fork(): calls run inline. Set by the
// pthread_atfork handler below where the library was loaded before fork(), and by the Python
// side (fastdrop._library registers its fork handler at import) where it was loaded after.
std::atomic<bool> forked{false};
const int registered_at_fork = pthread_atfork(nullptr, nullptr, [] { forked = true; });

template <typename F>
void parallel(int64_t n, int64_t grain, const F& f) {
  if (forked || n <= grain) {
    f(0, n);
  } else {
    at::parallel_for(0, n, grain, f);
  }
}

DType dtype_of(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat: return DType::f32;
    case at::kDouble: return DType::f64;
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default:
      TORCH_CHECK_TYPE(false, "fastdrop: expected a floating-point input (torch.float16, torch.bfloat16, "
                       "torch.float32, torch.float64), but got ", x.scalar_type());
  }
}

void check_input(const at::Tensor& x) {
  TORCH_CHECK_TYPE(!x.is_nested(), "fastdrop: nested tensors are not supported");
  TORCH_CHECK_TYPE(x.layout() == at::kStrided, "fastdrop: input must be a dense (strided) tensor, but got layout ",
                   x.layout());
  dtype_of(x);
}

void check_p(double p) {
  TORCH_CHECK_VALUE(p >= 0.0 && p <= 1.0, "dropout probability has to be between 0 and 1, but got ", p);
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

// ---- where a call's seed comes from --------------------------------------------------------------

// As ATen's random_() of an int64 CPU tensor draws (uniform_int of random64(), below 2^63), so
// that a CPU call draws the seed the Python path (and earlier versions) drew.
int64_t draw_cpu(const std::optional<at::Generator>& generator) {
  at::Generator gen = generator.has_value() && generator->defined() ? *generator : at::detail::getDefaultCPUGenerator();
  auto* impl = at::check_generator<at::CPUGeneratorImpl>(gen);
  std::lock_guard<std::mutex> lock(gen.mutex());
  return static_cast<int64_t>(impl->random64() % (uint64_t(1) << 63));
}

// CUDA without cuda.cpp (a torch whose CUDA library was not linked in): the generator's offset
// through its virtual interface, which refuses CUDA-graph capture.
Rng draw_cuda_virtual(const at::Tensor& x, const std::optional<at::Generator>& generator, int64_t counters) {
  TORCH_CHECK(generator.has_value() && generator->defined(), "fastdrop: this build draws CUDA seeds from an "
              "explicit generator only (its CUDA part is not built); pass seed= or generator=");
  at::Generator gen = *generator;
  std::lock_guard<std::mutex> lock(gen.mutex());
  const uint64_t base = gen.get_offset();
  gen.set_offset(base + (counters + 3) / 4 * 4);
  Rng rng;
  rng.seed = static_cast<int64_t>(gen.current_seed());
  rng.offset = static_cast<int64_t>(4 * base);
  return rng;
}

}  // namespace

// round((1 - p) * 2^32), half to even (the contract's keep_threshold): the product is exact.
int64_t threshold_of(double p) { return static_cast<int64_t>(std::nearbyint((1.0 - p) * 4294967296.0)); }

Form form_of(double p, std::optional<double> scale, const std::optional<std::vector<double>>& affine) {
  Form f{scale.has_value() ? *scale : (p < 1.0 ? 1.0 / (1.0 - p) : 0.0), 0.0, 0.0, false};
  if (affine.has_value()) {
    TORCH_CHECK_VALUE(affine->size() == 2, "fastdrop: affine is (add, drop), but got ", affine->size(), " values");
    f.add = (*affine)[0];
    f.drop = (*affine)[1];
    f.affine = true;
  }
  return f;
}

// The noise shape: x's shape with 1 on the shared dims (checked), or none.
std::optional<std::vector<int64_t>> noise_of(const at::Tensor& x, at::OptionalIntArrayRef shared) {
  if (!shared.has_value() || shared->empty()) return std::nullopt;
  std::vector<int64_t> noise = x.sizes().vec();
  for (int64_t d : *shared) {
    TORCH_CHECK_INDEX(d >= 0 && d < x.dim(), "fastdrop: shared dim ", d, " is out of range for a ", x.dim(),
                      "-D input");
    noise[d] = 1;
  }
  return noise;
}

int64_t stream_count(const at::Tensor& x, at::OptionalIntArrayRef shared) {
  if (!shared.has_value() || shared->empty()) return x.numel();
  int64_t n = 1;
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (std::find(shared->begin(), shared->end(), d) == shared->end()) n *= x.size(d);
  }
  return n;
}

Rng rng_of(const at::Tensor& x, const std::optional<int64_t>& seed, int64_t offset,
           const std::optional<at::Generator>& generator, const std::optional<at::Tensor>& seed_tensor,
           int64_t count) {
  Rng rng;
  rng.offset = offset;
  if (seed_tensor.has_value() && seed_tensor->defined()) {
    // (seed) or (seed, Philox counter offset): the state a captured call saved for its backward
    const at::Tensor& s = *seed_tensor;
    TORCH_CHECK_VALUE(s.scalar_type() == at::kLong && (s.numel() == 1 || s.numel() == 2) && s.is_contiguous(),
                      "fastdrop: seed_tensor must be a contiguous int64 tensor of 1 (seed) or 2 (seed, counter) "
                      "elements");
    TORCH_CHECK_VALUE(s.device() == x.device() || s.device().is_cpu(), "fastdrop: seed_tensor is on ", s.device(),
                      " but the input is on ", x.device());
    if (s.device().is_cpu()) {
      const int64_t* v = s.const_data_ptr<int64_t>();
      rng.seed = v[0];
      if (s.numel() == 2) rng.offset = static_cast<int64_t>(static_cast<uint64_t>(offset) + 4 * static_cast<uint64_t>(v[1]));
    } else {
      rng.seed_ptr = s.const_data_ptr<int64_t>();
      if (s.numel() == 2) rng.base_ptr = rng.seed_ptr + 1;
      rng.hold = s;
    }
    return rng;
  }
  if (seed.has_value()) {
    rng.seed = *seed;
    return rng;
  }
  TORCH_CHECK_VALUE(offset == 0, "fastdrop: offset needs an explicit seed");
  if (x.device().is_cpu()) {
    rng.seed = draw_cpu(generator);
    return rng;
  }
  TORCH_CHECK(x.device().is_cuda(), "fastdrop runs on cpu and cuda tensors, but the input is on ", x.device());
  const int64_t counters = (count + 3) / 4;  // the generator's offset counts Philox calls: 4 elements each
  if (cuda_hooks.draw != nullptr) return cuda_hooks.draw(x, generator, counters, false);
  return draw_cuda_virtual(x, generator, counters);
}

// ---- the operators through the dispatcher ------------------------------------------------------

at::Tensor call_dropout(bool below, const at::Tensor& x, double p, at::OptionalIntArrayRef shared,
                        std::optional<double> scale, const std::optional<std::vector<double>>& affine,
                        const std::optional<c10::SymInt>& seed, const c10::SymInt& offset,
                        const std::optional<at::Generator>& generator, const std::optional<at::Tensor>& seed_tensor) {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("fastdrop::dropout", "").typed<DropoutSchema>();
  std::optional<at::AutoDispatchBelowADInplaceOrView> guard;
  if (below) guard.emplace();
  return op.call(x, p, shared, scale, affine, seed, offset, generator, seed_tensor);
}

at::Tensor& call_dropout_(bool below, at::Tensor& x, double p, at::OptionalIntArrayRef shared,
                          std::optional<double> scale, const std::optional<std::vector<double>>& affine,
                          const std::optional<c10::SymInt>& seed, const c10::SymInt& offset,
                          const std::optional<at::Generator>& generator,
                          const std::optional<at::Tensor>& seed_tensor) {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("fastdrop::dropout_", "").typed<DropoutSchema_>();
  std::optional<at::AutoDispatchBelowADInplaceOrView> guard;
  if (below) guard.emplace();
  return op.call(x, p, shared, scale, affine, seed, offset, generator, seed_tensor);
}

at::Tensor call_dropout_add(bool below, const at::Tensor& x, const std::optional<at::Tensor>& bias,
                            const at::Tensor& residual, double p, const std::optional<c10::SymInt>& seed,
                            const c10::SymInt& offset, const std::optional<at::Generator>& generator,
                            const std::optional<at::Tensor>& seed_tensor) {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("fastdrop::dropout_add", "").typed<DropoutAddSchema>();
  std::optional<at::AutoDispatchBelowADInplaceOrView> guard;
  if (below) guard.emplace();
  return op.call(x, bias, residual, p, seed, offset, generator, seed_tensor);
}

// ---- the kernels below autograd --------------------------------------------------------------------

namespace {

void check_offset(uint64_t offset, int64_t count) {
  // offset + count <= 2^64: the stream has 2^64 elements
  TORCH_CHECK_VALUE(count == 0 || offset <= std::numeric_limits<uint64_t>::max() - static_cast<uint64_t>(count - 1),
                    "fastdrop: offset + numel must be <= 2**64 (the stream has 2**64 elements)");
}

// y = dropout(x) on the CPU, for x and y of one shape and any strides (y may be x).
void apply_cpu(const at::Tensor& x, const at::Tensor& y, const Rng& rng, int64_t threshold, const Form& f,
               const std::optional<std::vector<int64_t>>& noise) {
  const int64_t n = x.numel();
  if (n == 0) return;
  const DType dt = dtype_of(x);
  const Key key = key_of(rng.seed, rng.offset);
  const Threshold t(threshold);
  const void* xp = x.const_data_ptr();
  void* yp = y.data_ptr();
  if (!noise.has_value()) {
    check_offset(key.offset, n);
    const std::vector<int64_t> bs = row_major(x.dim(), x.sizes().data());
    const Walk walk(x.dim(), x.sizes().data(), x.strides().data(), y.strides().data(), bs.data());
    parallel(n, GRAIN, [&](int64_t b, int64_t e) { apply_words(dt, walk, xp, yp, key, t, f, b, e); });
    return;
  }
  // One keep bit per noise element, drawn first (the noise is at most x's size), then applied
  // along x with the noise index's strides (0 along its size-1 dims).
  const auto& ns = *noise;
  int64_t count = 1;
  for (int64_t s : ns) count *= s;
  check_offset(key.offset, count);
  const std::unique_ptr<uint8_t[]> bits(new uint8_t[count]);  // written whole before it is read
  parallel(count, GRAIN, [&](int64_t b, int64_t e) { keep_bits(key, t, bits.get(), b, e); });
  std::vector<int64_t> bs = row_major(static_cast<int64_t>(ns.size()), ns.data());
  for (size_t d = 0; d < ns.size(); ++d) {
    if (ns[d] == 1) bs[d] = 0;
  }
  const Walk walk(x.dim(), x.sizes().data(), x.strides().data(), y.strides().data(), bs.data());
  parallel(n, GRAIN * 8, [&](int64_t b, int64_t e) { apply_bits(dt, walk, xp, yp, bits.get(), f, b, e); });
}

void apply(const at::Tensor& x, const at::Tensor& y, double p, at::OptionalIntArrayRef shared,
           std::optional<double> scale, const std::optional<std::vector<double>>& affine, const Rng& rng) {
  const Form f = form_of(p, scale, affine);
  const auto noise = noise_of(x, shared);
  if (x.device().is_cpu()) {
    apply_cpu(x, y, rng, threshold_of(p), f, noise);
    return;
  }
  if (x.device().is_meta()) return;
  TORCH_CHECK(x.device().is_cuda(), "fastdrop runs on cpu and cuda tensors, but the input is on ", x.device());
  if (rng.seed_ptr == nullptr) {
    check_offset(static_cast<uint64_t>(rng.offset), noise.has_value() ? c10::multiply_integers(*noise) : x.numel());
  }
  TORCH_CHECK(cuda_hooks.launch != nullptr, "fastdrop: this build of the C++ operators has no CUDA launch (its "
              "torch has no CUDA): ", x.device());
  cuda_hooks.launch(x, y, rng, threshold_of(p), f, noise);
}

}  // namespace

at::Tensor dropout_rng(const at::Tensor& x, double p, at::OptionalIntArrayRef shared, std::optional<double> scale,
                       const std::optional<std::vector<double>>& affine, const Rng& rng) {
  at::Tensor y = at::empty_like(x);  // x's layout, as PyTorch's dropout gives
  if (x.device().is_cpu()) huge_pages(y);
  apply(x, y, p, shared, scale, affine, rng);
  return y;
}

at::Tensor& dropout_rng_(at::Tensor& x, double p, at::OptionalIntArrayRef shared, std::optional<double> scale,
                         const std::optional<std::vector<double>>& affine, const Rng& rng) {
  apply(x, x, p, shared, scale, affine, rng);
  return x;
}

at::Tensor dropout_add_rng(const at::Tensor& x_in, const std::optional<at::Tensor>& bias_in, const at::Tensor& r_in,
                           double p, const Rng& rng) {
  TORCH_CHECK_VALUE(x_in.sizes() == r_in.sizes() && x_in.scalar_type() == r_in.scalar_type(),
                    "fastdrop: x and residual must have one shape and dtype");
  // The fused pass walks contiguous memory; other layouts are copied first.
  const at::Tensor x = x_in.contiguous(), r = r_in.contiguous();
  at::Tensor bias;
  if (bias_in.has_value() && bias_in->defined()) {
    bias = bias_in->contiguous();
    TORCH_CHECK_VALUE(x.dim() > 0 && bias.dim() == 1 && bias.size(0) == x.size(-1) &&
                          bias.scalar_type() == x.scalar_type(), "fastdrop: bias is (x.shape[-1],) of x's dtype");
  }
  at::Tensor y = at::empty(x.sizes(), x.options());
  const int64_t n = x.numel();
  if (n == 0 || x.device().is_meta()) return y;
  const double scale = p < 1.0 ? 1.0 / (1.0 - p) : 0.0;
  if (!x.device().is_cpu()) {
    TORCH_CHECK(x.device().is_cuda(), "fastdrop runs on cpu and cuda tensors, but the input is on ", x.device());
    if (rng.seed_ptr == nullptr) check_offset(static_cast<uint64_t>(rng.offset), n);
    TORCH_CHECK(cuda_hooks.launch_add != nullptr, "fastdrop: this build of the C++ operators has no CUDA "
                "launch (its torch has no CUDA): ", x.device());
    cuda_hooks.launch_add(x, bias, r, y, rng, threshold_of(p), scale);
    return y;
  }
  huge_pages(y);
  const DType dt = dtype_of(x);
  const Key key = key_of(rng.seed, rng.offset);
  check_offset(key.offset, n);
  const Threshold t(threshold_of(p));
  const int64_t width = bias.defined() ? bias.size(0) : 1;
  const void* bp = bias.defined() ? bias.const_data_ptr() : nullptr;
  const void *xp = x.const_data_ptr(), *rp = r.const_data_ptr();
  void* yp = y.data_ptr();
  parallel(n, GRAIN, [&](int64_t b, int64_t e) { dropout_add(dt, xp, bp, width, rp, yp, key, t, scale, b, e); });
  return y;
}

namespace {

// ---- the operators' kernels (below autograd: CPU, CUDA, Meta) -----------------------------------

// A kernel's RNG state: p == 1 draws nothing (no stream bit decides anything there).
Rng kernel_rng(const at::Tensor& x, double p, const std::optional<c10::SymInt>& seed, const c10::SymInt& offset,
               const std::optional<at::Generator>& generator, const std::optional<at::Tensor>& seed_tensor,
               int64_t count) {
  const std::optional<int64_t> s = seed.has_value() ? std::optional<int64_t>(seed->expect_int()) : std::nullopt;
  const bool given = s.has_value() || (seed_tensor.has_value() && seed_tensor->defined());
  if (p == 1.0 && !given) return Rng{};
  return rng_of(x, s, offset.expect_int(), generator, seed_tensor, count);
}

at::Tensor dropout_kernel(const at::Tensor& x, double p, at::OptionalIntArrayRef shared, std::optional<double> scale,
                          const std::optional<std::vector<double>>& affine, std::optional<c10::SymInt> seed, c10::SymInt offset,
                          std::optional<at::Generator> generator, const std::optional<at::Tensor>& seed_tensor) {
  check_input(x);
  check_p(p);
  const Rng rng = kernel_rng(x, p, seed, offset, generator, seed_tensor, stream_count(x, shared));
  return dropout_rng(x, p, shared, scale, affine, rng);
}

at::Tensor& dropout_kernel_(at::Tensor& x, double p, at::OptionalIntArrayRef shared, std::optional<double> scale,
                            const std::optional<std::vector<double>>& affine, std::optional<c10::SymInt> seed, c10::SymInt offset,
                            std::optional<at::Generator> generator, const std::optional<at::Tensor>& seed_tensor) {
  check_input(x);
  check_p(p);
  const Rng rng = kernel_rng(x, p, seed, offset, generator, seed_tensor, stream_count(x, shared));
  return dropout_rng_(x, p, shared, scale, affine, rng);
}

at::Tensor dropout_add_kernel(const at::Tensor& x, const std::optional<at::Tensor>& bias, const at::Tensor& residual,
                              double p, std::optional<c10::SymInt> seed, c10::SymInt offset,
                              std::optional<at::Generator> generator, const std::optional<at::Tensor>& seed_tensor) {
  check_input(x);
  check_p(p);
  const Rng rng = kernel_rng(x, p, seed, offset, generator, seed_tensor, x.numel());
  return dropout_add_rng(x, bias, residual, p, rng);
}

// Meta (and fake tensors): shapes only, no draw.
at::Tensor dropout_meta(const at::Tensor& x, double p, at::OptionalIntArrayRef, std::optional<double>,
                        const std::optional<std::vector<double>>&, std::optional<c10::SymInt>, c10::SymInt, std::optional<at::Generator>,
                        const std::optional<at::Tensor>&) {
  check_input(x);
  check_p(p);
  return at::empty_like(x);
}

at::Tensor& dropout_meta_(at::Tensor& x, double p, at::OptionalIntArrayRef, std::optional<double>,
                          const std::optional<std::vector<double>>&, std::optional<c10::SymInt>, c10::SymInt,
                          std::optional<at::Generator>, const std::optional<at::Tensor>&) {
  check_input(x);
  check_p(p);
  return x;
}

at::Tensor dropout_add_meta(const at::Tensor& x, const std::optional<at::Tensor>&, const at::Tensor& residual,
                            double p, std::optional<c10::SymInt>, c10::SymInt, std::optional<at::Generator>,
                            const std::optional<at::Tensor>&) {
  check_input(x);
  check_p(p);
  TORCH_CHECK_VALUE(x.sym_sizes() == residual.sym_sizes(), "fastdrop: x and residual must have one shape");
  return at::empty_symint(x.sym_sizes(), x.options());
}

// ---- helpers for tests, benchmarks and dropout_mask --------------------------------------------------

// The keep bits of stream elements [offset, offset + numel) as a bool CPU tensor of `size`.
at::Tensor keep_mask(at::IntArrayRef size, double p, int64_t seed, int64_t offset) {
  check_p(p);
  at::Tensor out = at::empty(size, at::TensorOptions().dtype(at::kBool));
  const int64_t n = out.numel();
  if (n == 0) return out;
  const Key key = key_of(seed, offset);
  check_offset(key.offset, n);
  const Threshold t(threshold_of(p));
  auto* o = static_cast<uint8_t*>(out.data_ptr());
  parallel(n, GRAIN, [&](int64_t b, int64_t e) { keep_bits(key, t, o, b, e); });
  return out;
}

void philox_words_op(const at::Tensor& out, int64_t q0, int64_t k0, int64_t k1) {
  TORCH_CHECK(out.device().is_cpu() && out.scalar_type() == at::kInt && out.is_contiguous() && out.numel() % 4 == 0,
              "fastdrop: philox_words writes a contiguous int32 CPU tensor of 4 words per call");
  philox_words(static_cast<uint64_t>(q0), out.numel() / 4, static_cast<uint32_t>(k0), static_cast<uint32_t>(k1),
               static_cast<uint32_t*>(out.data_ptr()));
}

void narrow_into(const at::Tensor& x, const at::Tensor& out) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous() && out.is_contiguous() && x.numel() == out.numel() &&
                  (out.scalar_type() == at::kHalf || out.scalar_type() == at::kBFloat16),
              "fastdrop: narrow_into takes contiguous float32 and float16/bfloat16 CPU tensors of one size");
  narrow(dtype_of(out), x.const_data_ptr<float>(), out.data_ptr(), x.numel());
}

std::string isa_name() { return isa(); }



void set_inline(bool on) { forked = on; }

}  // namespace
}  // namespace fastdrop

TORCH_LIBRARY(fastdrop, m) {
  const std::vector<at::Tag> tags{at::Tag::pt2_compliant_tag};
  m.def("dropout(Tensor input, float p, int[]? shared=None, float? scale=None, float[]? affine=None, SymInt? seed=None, "
        "SymInt offset=0, Generator? generator=None, Tensor? seed_tensor=None) -> Tensor", tags);
  m.def("dropout_(Tensor(a!) input, float p, int[]? shared=None, float? scale=None, float[]? affine=None, "
        "SymInt? seed=None, SymInt offset=0, Generator? generator=None, Tensor? seed_tensor=None) -> Tensor(a!)", tags);
  m.def("dropout_add(Tensor x, Tensor? bias, Tensor residual, float p, SymInt? seed=None, SymInt offset=0, "
        "Generator? generator=None, Tensor? seed_tensor=None) -> Tensor", tags);
  m.def("keep_mask(int[] size, float p, int seed, int offset=0) -> Tensor");
  m.def("philox_words(Tensor(a!) out, int q0, int k0, int k1) -> ()");
  m.def("narrow_into(Tensor x, Tensor(a!) out) -> ()");
  m.def("isa() -> str", TORCH_FN(fastdrop::isa_name));
  m.def("_set_inline(bool on) -> ()", TORCH_FN(fastdrop::set_inline));

}

TORCH_LIBRARY_IMPL(fastdrop, CPU, m) {
  m.impl("dropout", TORCH_FN(fastdrop::dropout_kernel));
  m.impl("dropout_", TORCH_FN(fastdrop::dropout_kernel_));
  m.impl("dropout_add", TORCH_FN(fastdrop::dropout_add_kernel));
  m.impl("philox_words", TORCH_FN(fastdrop::philox_words_op));
  m.impl("narrow_into", TORCH_FN(fastdrop::narrow_into));
}

TORCH_LIBRARY_IMPL(fastdrop, CUDA, m) {
  m.impl("dropout", TORCH_FN(fastdrop::dropout_kernel));
  m.impl("dropout_", TORCH_FN(fastdrop::dropout_kernel_));
  m.impl("dropout_add", TORCH_FN(fastdrop::dropout_add_kernel));
}

TORCH_LIBRARY_IMPL(fastdrop, Autograd, m) {
  m.impl("dropout", TORCH_FN(fastdrop::dropout_autograd));
  m.impl("dropout_", TORCH_FN(fastdrop::dropout_autograd_));
  m.impl("dropout_add", TORCH_FN(fastdrop::dropout_add_autograd));
}

TORCH_LIBRARY_IMPL(fastdrop, Meta, m) {
  m.impl("dropout", TORCH_FN(fastdrop::dropout_meta));
  m.impl("dropout_", TORCH_FN(fastdrop::dropout_meta_));
  m.impl("dropout_add", TORCH_FN(fastdrop::dropout_add_meta));
}

TORCH_LIBRARY_IMPL(fastdrop, CompositeExplicitAutograd, m) {
  m.impl("keep_mask", TORCH_FN(fastdrop::keep_mask));
}
