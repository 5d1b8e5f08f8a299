// The CUDA launch of fastdrop's Triton kernels from C++: the tensors, stream and device of a call, the
// launch table (launch.cpp) and the helper operators that give it Triton's own launch (Python:
// fastdrop.backends.triton). Built where torch has CUDA (and, for its tests on a machine without a
// GPU, where FASTDROP_CUDA_LAUNCH=1 asks for it), and plugged into the operators' CUDA kernels
// (ops.cpp) through cuda_hooks.
//
// A call's launches go from C++ where every launch key is trusted. A key's first call goes to the
// helper, which launches through Triton and returns what Triton compiled; the key's first C++
// launch is then compared bit for bit with Triton's own launch into a second output (out of place,
// outside CUDA-graph capture) before the key is trusted. A difference, an error, or a driver that
// does not load leaves the key on Triton's launch, with one warning that says why.
#include <ATen/core/TensorBody.h>
#include <ATen/core/stack.h>
#include <ATen/ops/empty_strided.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>

#include <atomic>
#include <mutex>
#include <string>
#include <vector>

#include "launch.h"
#include "ops.h"

namespace fastdrop {
namespace {


std::atomic<bool> cpp_launch{true};  // _set_launch(False): every CUDA call through Triton's launch

const char* dtype_name(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return "f16";
    case at::kBFloat16: return "bf16";
    case at::kDouble: return "f64";
    default: return "f32";
  }
}

launch::View view_of(const at::Tensor& t) {
  launch::View v;
  v.ptr = reinterpret_cast<uint64_t>(t.data_ptr());
  v.itemsize = static_cast<int>(t.element_size());
  v.dtype = dtype_name(t);
  v.sizes = t.sizes().vec();
  v.strides = t.strides().vec();
  return v;
}

launch::Arg ptr_or_zero(const void* p) {
  return launch::Arg{p != nullptr, static_cast<int64_t>(reinterpret_cast<uintptr_t>(p)), nullptr};
}

launch::Scalars scalars_of(const Rng& rng, int64_t threshold, const Form& f) {
  launch::Scalars s;
  s.seed = rng.seed_ptr != nullptr ? ptr_or_zero(rng.seed_ptr) : launch::Arg{false, rng.seed, nullptr};
  s.offset = static_cast<uint64_t>(rng.offset);
  s.base_ptr = ptr_or_zero(rng.base_ptr);
  s.save_ptr = ptr_or_zero(rng.save_to);
  s.threshold = threshold;
  s.scale = f.scale;
  s.add = f.add;
  s.drop = f.drop;
  s.affine = f.affine;
  return s;
}

// The noise shape's row-major strides with 0 on its size-1 dims, or none (row-major of x).
std::vector<int64_t> mask_strides_of(const std::optional<std::vector<int64_t>>& noise) {
  if (!noise.has_value()) return {};
  std::vector<int64_t> ms = row_major(static_cast<int64_t>(noise->size()), noise->data());
  for (size_t d = 0; d < noise->size(); ++d) {
    if ((*noise)[d] == 1) ms[d] = 0;
  }
  return ms;
}

// A device int64 the kernel reads, as a tensor for the helper (which launches through Triton).
std::optional<at::Tensor> device_int(const void* p, const at::Tensor& like, int64_t n = 1) {
  if (p == nullptr) return std::nullopt;
  return at::from_blob(const_cast<void*>(p), {n}, like.options().dtype(at::kLong));
}

// The helper's answer: each launch's key and what Triton compiled for it, taken into the table.
void learn_all(const torch::jit::Stack& out) {
  const auto keys = out[0].toListRef();
  const std::vector<int64_t> info = out[1].toIntVector();
  size_t at = 0;
  for (const auto& k : keys) launch::learn(k.toStringRef(), info, at, &at);
}

// Triton's launch of the call through the Python helper (fastdrop.backends.triton): the first
// call of a key, the check of a key's first C++ launch, and every call the C++ launch does not serve.
torch::jit::Stack helper_dropout(const at::Tensor& x, const at::Tensor& y, const Rng& rng, int64_t threshold,
                                 const Form& f, const std::optional<std::vector<int64_t>>& noise) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("fastdrop::_triton_launch", "");
  std::optional<std::vector<int64_t>> shared;
  if (noise.has_value()) {
    shared.emplace();
    for (size_t d = 0; d < noise->size(); ++d) {
      if ((*noise)[d] == 1) shared->push_back(static_cast<int64_t>(d));
    }
  }
  std::optional<std::vector<double>> affine;
  if (f.affine) affine = std::vector<double>{f.add, f.drop};
  torch::jit::Stack stack{x, y, device_int(rng.seed_ptr, x), device_int(rng.base_ptr, x), device_int(rng.save_to, x, 2),
                          rng.seed, rng.offset, threshold, f.scale, affine, shared};
  op.callBoxed(&stack);
  return stack;
}

torch::jit::Stack helper_dropout_add(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& r,
                                     const at::Tensor& y, const Rng& rng, int64_t threshold, double scale) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("fastdrop::_triton_launch_add", "");
  std::optional<at::Tensor> b;
  if (bias.defined()) b = bias;
  torch::jit::Stack stack{x, b, r, y, device_int(rng.seed_ptr, x), device_int(rng.base_ptr, x),
                          device_int(rng.save_to, x, 2), rng.seed, rng.offset, threshold, scale};
  op.callBoxed(&stack);
  return stack;
}

// One warning per process, through Python's warnings where the helper is registered (a C++
// warning raised inside an operator called from torch.ops reaches only stderr).
void warn_once(const at::Tensor& like, const std::string& why) {
  static std::once_flag once;
  std::call_once(once, [&] {
    const std::string message = "fastdrop: a CUDA launch from C++ is not used (" + why +
                                "); Triton's own launch serves it";
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("fastdrop::_warn", "");
    torch::jit::Stack stack{like, message};
    try {
      op.callBoxed(&stack);
    } catch (const std::exception&) {
      TORCH_WARN(message);
    }
  });
}

bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  static const at::ScalarType ints[] = {at::kByte, at::kShort, at::kByte, at::kInt, at::kByte, at::kByte, at::kByte,
                                        at::kLong};
  const at::ScalarType t = ints[a.element_size() - 1];
  return a.view(t).equal(b.view(t));
}

// One call's launches: from C++ where every key is trusted; the first C++ launch of a learned key
// is checked against Triton's own (out of place, outside capture); everything else through the
// helper, whose answer teaches the table. `stream`: the current CUDA stream (null: a stand-in).
template <typename Helper>
void launch_call(const std::vector<launch::Launch>& launches, const at::Tensor& y, bool in_place, void* stream,
                 const Helper& helper) {
  bool known = cpp_launch.load();
  bool unchecked = false;
  std::vector<launch::Kernel*> kernels;
  for (const auto& l : launches) {
    launch::Kernel& k = launch::entry(l.key);
    kernels.push_back(&k);
    if (k.state == launch::State::unknown || k.state == launch::State::python) known = false;
    if (k.state == launch::State::learned) unchecked = true;
  }
  std::string why;
  if (known && !launch::driver_ready(&why)) {
    warn_once(y, why);
    known = false;
  }
  const bool capturing = stream != nullptr && known && launch::capturing(stream);
  if (!known || (unchecked && (capturing || in_place))) {
    torch::jit::Stack out = helper(y);
    if (cpp_launch.load() && !(stream != nullptr && launch::capturing(stream))) learn_all(out);
    return;
  }
  for (size_t i = 0; i < launches.size(); ++i) {
    why = launch::run(launches[i], *kernels[i], stream);
    if (!why.empty()) break;
  }
  if (why.empty() && !unchecked) return;
  if (why.empty()) {
    // The first C++ launch of these keys: Triton's own launch into a second output, bit for bit.
    at::Tensor ref = at::empty_strided(y.sizes(), y.strides(), y.options());
    helper(ref);
    if (same_bits(y, ref)) {
      for (auto* k : kernels) k->state = launch::State::trusted;
      return;
    }
    why = "its output differed from Triton's launch";
    y.copy_(ref);
  } else {
    helper(y);
  }
  warn_once(y, why);
  for (auto* k : kernels) k->state = launch::State::python;
}

void* current_stream(const at::Tensor& x) {
  const auto* impl = c10::impl::getDeviceGuardImpl(x.device().type());
  return impl->getStream(x.device()).native_handle();
}

// `stand_in`: CPU tensors, no stream, device -1 (the tests' stand-in driver; see _launch_stand_in).
void launch_dropout(const at::Tensor& x, const at::Tensor& y, const Rng& rng, int64_t threshold, const Form& f,
                    const std::optional<std::vector<int64_t>>& noise, bool stand_in) {
  std::optional<c10::DeviceGuard> guard;
  if (!stand_in) guard.emplace(x.device());  // a tensor on another GPU than the current one
  const auto launches = launch::plan_dropout(view_of(x), view_of(y), mask_strides_of(noise),
                                             scalars_of(rng, threshold, f), stand_in ? -1 : x.device().index());
  launch_call(launches, y, x.is_same(y), stand_in ? nullptr : current_stream(x),
              [&](const at::Tensor& out) { return helper_dropout(x, out, rng, threshold, f, noise); });
}

void launch_dropout_add(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& r, const at::Tensor& y,
                        const Rng& rng, int64_t threshold, double scale, bool stand_in) {
  std::optional<c10::DeviceGuard> guard;
  if (!stand_in) guard.emplace(x.device());
  const launch::View vb = bias.defined() ? view_of(bias) : launch::View{};
  const Form f{scale, 0.0, 0.0, false};
  const auto launches = launch::plan_dropout_add(view_of(x), bias.defined() ? &vb : nullptr, view_of(r), view_of(y),
                                                 scalars_of(rng, threshold, f), stand_in ? -1 : x.device().index());
  launch_call(launches, y, false, stand_in ? nullptr : current_stream(x),
              [&](const at::Tensor& out) { return helper_dropout_add(x, bias, r, out, rng, threshold, scale); });
}

// ---- test hooks: the C++ launch on a machine without a GPU ---------------------------------------

void set_launch(bool cpp) { cpp_launch = cpp; }

// ---- the C++ launch, for tests on a machine without a GPU ---------------------------------------

Rng test_rng(int64_t seed, int64_t offset, const std::optional<at::Tensor>& seed_tensor) {
  Rng rng;
  rng.seed = seed;
  rng.offset = offset;
  if (seed_tensor.has_value() && seed_tensor->defined()) {
    rng.seed_ptr = seed_tensor->const_data_ptr<int64_t>();
    if (seed_tensor->numel() == 2) rng.base_ptr = rng.seed_ptr + 1;
  }
  return rng;
}

// The planned launches of a call: their keys, and each launch's arguments ([n, a_0 .. a_n-1] each).
std::tuple<std::vector<std::string>, std::vector<int64_t>> launch_plan(
    const at::Tensor& x, const at::Tensor& y, double p, at::OptionalIntArrayRef shared, std::optional<double> scale,
    const std::optional<std::vector<double>>& affine, int64_t seed, int64_t offset,
    const std::optional<at::Tensor>& seed_tensor, const std::optional<at::Tensor>& residual,
    const std::optional<at::Tensor>& bias) {
  const Rng rng = test_rng(seed, offset, seed_tensor);
  const Form f = form_of(p, scale, affine);
  std::vector<launch::Launch> launches;
  if (residual.has_value()) {
    const launch::View vb = bias.has_value() ? view_of(*bias) : launch::View{};
    launches = launch::plan_dropout_add(view_of(x), bias.has_value() ? &vb : nullptr, view_of(*residual), view_of(y),
                                        scalars_of(rng, threshold_of(p), f), -1);
  } else {
    launches = launch::plan_dropout(view_of(x), view_of(y), mask_strides_of(noise_of(x, shared)),
                                    scalars_of(rng, threshold_of(p), f), -1);
  }
  std::vector<std::string> keys;
  std::vector<int64_t> args;
  for (const auto& l : launches) {
    keys.push_back(l.key);
    args.push_back(static_cast<int64_t>(l.args.size()));
    for (const auto& a : l.args) args.push_back(a.value);
  }
  return {keys, args};
}

// A call through the C++ launch on CPU tensors: no stream, device -1, and cuLaunchKernel from
// $FASTDROP_LIBCUDA (a stand-in that records what it is given).
void launch_stand_in(const at::Tensor& x, const at::Tensor& y, double p, at::OptionalIntArrayRef shared,
                     std::optional<double> scale, const std::optional<std::vector<double>>& affine, int64_t seed,
                     int64_t offset, const std::optional<at::Tensor>& seed_tensor) {
  launch_dropout(x, y, test_rng(seed, offset, seed_tensor), threshold_of(p), form_of(p, scale, affine),
                 noise_of(x, shared), true);
}

// The launch table: each key and its state (0 unknown, 1 learned, 2 trusted, 3 Triton's launch).
std::tuple<std::vector<std::string>, std::vector<int64_t>> launch_table() {
  std::vector<std::string> keys;
  std::vector<int64_t> states;
  launch::each([&](const std::string& k, const launch::Kernel& e) {
    keys.push_back(k);
    states.push_back(static_cast<int64_t>(e.state));
  });
  return {keys, states};
}

void launch_forget() { launch::forget(); }

const bool registered = (cuda_hooks.launch = [](const at::Tensor& x, const at::Tensor& y, const Rng& rng,
                                                int64_t threshold, const Form& f,
                                                const std::optional<std::vector<int64_t>>& noise) {
                           launch_dropout(x, y, rng, threshold, f, noise, false);
                         },
                         cuda_hooks.launch_add = [](const at::Tensor& x, const at::Tensor& bias, const at::Tensor& r,
                                                    const at::Tensor& y, const Rng& rng, int64_t threshold,
                                                    double scale) {
                           launch_dropout_add(x, bias, r, y, rng, threshold, scale, false);
                         },
                         true);

}  // namespace
}  // namespace fastdrop

TORCH_LIBRARY_FRAGMENT(fastdrop, m) {
  m.def("_triton_launch(Tensor x, Tensor(a!) y, Tensor? seed_tensor, Tensor? base_ptr, Tensor(b!)? save, int seed, "
        "int offset, int threshold, float scale, float[]? affine, int[]? shared) -> (str[], int[])");
  m.def("_triton_launch_add(Tensor x, Tensor? bias, Tensor residual, Tensor(a!) y, Tensor? seed_tensor, "
        "Tensor? base_ptr, Tensor(b!)? save, int seed, int offset, int threshold, float scale) -> (str[], int[])");
  m.def("_warn(Tensor like, str message) -> ()");
  m.def("_set_launch(bool cpp) -> ()", TORCH_FN(fastdrop::set_launch));
  m.def("_launch_plan(Tensor x, Tensor y, float p, int[]? shared=None, float? scale=None, float[]? affine=None, "
        "int seed=0, int offset=0, Tensor? seed_tensor=None, Tensor? residual=None, Tensor? bias=None) "
        "-> (str[], int[])", TORCH_FN(fastdrop::launch_plan));
  m.def("_launch_stand_in(Tensor x, Tensor(a!) y, float p, int[]? shared=None, float? scale=None, "
        "float[]? affine=None, int seed=0, int offset=0, Tensor? seed_tensor=None) -> ()",
        TORCH_FN(fastdrop::launch_stand_in));
  m.def("_launch_table() -> (str[], int[])", TORCH_FN(fastdrop::launch_table));
  m.def("_launch_forget() -> ()", TORCH_FN(fastdrop::launch_forget));
}
