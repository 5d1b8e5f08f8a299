// The CUDA generator's draw, in the library built for a CUDA build of torch (linked against its
// CUDA library): the seed and Philox offset of an eager call, and under CUDA-graph capture the
// generator's graph-safe state, device pointers that each replay fills, so that a captured call
// launches one kernel and every replay draws anew (as ATen's own random ops do).
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/ops/empty.h>

#include <mutex>

#include "ops.h"

namespace fastdrop {
namespace {

// `counters` Philox calls (4 stream elements each) reserved under the generator's mutex; the
// generator rounds its offset up to a multiple of 4, as for its own ops.
Rng draw(const at::Tensor& x, const std::optional<at::Generator>& generator, int64_t counters, bool save) {
  at::Generator gen = generator.has_value() && generator->defined()
                          ? *generator
                          : at::cuda::detail::getDefaultCUDAGenerator(x.device().index());
  auto* impl = at::check_generator<at::CUDAGeneratorImpl>(gen);
  at::PhiloxCudaState state;
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    state = impl->philox_cuda_state(static_cast<uint64_t>(counters));
  }
  Rng rng;
  if (!state.captured_) {
    rng.seed = static_cast<int64_t>(state.seed_.val);
    rng.offset = static_cast<int64_t>(4 * state.offset_.val);
    return rng;
  }
  rng.seed_ptr = state.seed_.ptr;
  rng.base_ptr = state.offset_.ptr;
  rng.offset = static_cast<int64_t>(4 * state.offset_intragraph_);
  if (save) {  // the forward kernel writes the (seed, counter) it used here, for the backward
    rng.hold = at::empty({2}, x.options().dtype(at::kLong));
    rng.save_to = rng.hold.data_ptr<int64_t>();
  }
  return rng;
}

const bool registered = (cuda_hooks.draw = draw, true);

}  // namespace
}  // namespace fastdrop
