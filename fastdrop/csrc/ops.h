// What fastdrop's operator files share: the RNG state of a call, and the operators' kernels
// below autograd (ops.cpp), which the autograd nodes (autograd.cpp) call.
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>
#include <c10/util/OptionalArrayRef.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "kernels.h"

namespace fastdrop {

// The seed and stream offset a call uses: values, or pointers that the CUDA kernel reads (the seed
// drawn in a compiled graph, or the generator's graph-safe state under CUDA-graph capture).
struct Rng {
  int64_t seed = 0;                   // the Philox key's bits, where seed_ptr is null
  int64_t offset = 0;                 // stream elements; added to 4 * *base_ptr where that is set
  const int64_t* seed_ptr = nullptr;  // device memory holding the seed
  const int64_t* base_ptr = nullptr;  // device memory holding a Philox counter offset
  int64_t* save_to = nullptr;         // 2 int64s where the kernel writes (seed, counter offset) it used
  at::Tensor hold;                    // keeps the memory above alive
};

// The (seed, offset) of a call: the given seed (an int, or a 1-element int64 tensor, its
// offset `offset`), or drawn from `generator` (else the default generator of x's device) for
// `count` stream elements.
Rng rng_of(const at::Tensor& x, const std::optional<int64_t>& seed, int64_t offset,
           const std::optional<at::Generator>& generator, const std::optional<at::Tensor>& seed_tensor,
           int64_t count);

// Stream elements a call draws: x's numel, or the size of its noise shape (x's shape with 1 on
// the shared dims).
int64_t stream_count(const at::Tensor& x, at::OptionalIntArrayRef shared);

// The operators below autograd, with an explicit RNG state (what the autograd nodes call).
at::Tensor dropout_rng(const at::Tensor& x, double p, at::OptionalIntArrayRef shared, std::optional<double> scale,
                       const std::optional<std::vector<double>>& affine, const Rng& rng);
at::Tensor& dropout_rng_(at::Tensor& x, double p, at::OptionalIntArrayRef shared, std::optional<double> scale,
                         const std::optional<std::vector<double>>& affine, const Rng& rng);
at::Tensor dropout_add_rng(const at::Tensor& x, const std::optional<at::Tensor>& bias, const at::Tensor& residual,
                           double p, const Rng& rng);

// The operators' signatures (their schemas are in ops.cpp), and their autograd kernels (autograd.cpp).
using DropoutSchema = at::Tensor(const at::Tensor&, double, at::OptionalIntArrayRef, std::optional<double>,
                                 const std::optional<std::vector<double>>&, std::optional<c10::SymInt>, c10::SymInt,
                                 std::optional<at::Generator>, const std::optional<at::Tensor>&);
using DropoutSchema_ = at::Tensor&(at::Tensor&, double, at::OptionalIntArrayRef, std::optional<double>,
                                   const std::optional<std::vector<double>>&, std::optional<c10::SymInt>, c10::SymInt,
                                   std::optional<at::Generator>, const std::optional<at::Tensor>&);
using DropoutAddSchema = at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, double,
                                    std::optional<c10::SymInt>, c10::SymInt, std::optional<at::Generator>,
                                    const std::optional<at::Tensor>&);
DropoutSchema dropout_autograd;
DropoutSchema_ dropout_autograd_;
DropoutAddSchema dropout_add_autograd;

// The operators called through the dispatcher (ops.cpp): `below` (autograd's keys excluded) from
// the autograd kernels, or from the top (a node's backward, where autograd may record again).
at::Tensor call_dropout(bool below, const at::Tensor& x, double p, at::OptionalIntArrayRef shared,
                        std::optional<double> scale, const std::optional<std::vector<double>>& affine,
                        const std::optional<c10::SymInt>& seed, const c10::SymInt& offset,
                        const std::optional<at::Generator>& generator, const std::optional<at::Tensor>& seed_tensor);
at::Tensor& call_dropout_(bool below, at::Tensor& x, double p, at::OptionalIntArrayRef shared,
                          std::optional<double> scale, const std::optional<std::vector<double>>& affine,
                          const std::optional<c10::SymInt>& seed, const c10::SymInt& offset,
                          const std::optional<at::Generator>& generator,
                          const std::optional<at::Tensor>& seed_tensor);
at::Tensor call_dropout_add(bool below, const at::Tensor& x, const std::optional<at::Tensor>& bias,
                            const at::Tensor& residual, double p, const std::optional<c10::SymInt>& seed,
                            const c10::SymInt& offset, const std::optional<at::Generator>& generator,
                            const std::optional<at::Tensor>& seed_tensor);

// What a call's arguments decide (ops.cpp): the keep threshold of p, the form of kept and dropped
// elements, and the noise shape (x's shape with 1 on the shared dims), checked.
int64_t threshold_of(double p);
Form form_of(double p, std::optional<double> scale, const std::optional<std::vector<double>>& affine);
std::optional<std::vector<int64_t>> noise_of(const at::Tensor& x, at::OptionalIntArrayRef shared);

// CUDA, where the library has it: the launch of the Triton kernels (cuda_launch.cpp, built where
// torch has CUDA) and the default generator's draw (cuda.cpp, linked against torch's CUDA
// library). Null otherwise.
struct CudaHooks {
  Rng (*draw)(const at::Tensor& x, const std::optional<at::Generator>& generator, int64_t counters, bool save);
  void (*launch)(const at::Tensor& x, const at::Tensor& y, const Rng& rng, int64_t threshold, const Form& f,
                 const std::optional<std::vector<int64_t>>& noise);
  void (*launch_add)(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& r, const at::Tensor& y,
                     const Rng& rng, int64_t threshold, double scale);
};
extern CudaHooks cuda_hooks;

}  // namespace fastdrop
