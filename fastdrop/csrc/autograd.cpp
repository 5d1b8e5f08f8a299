// Autograd for fastdrop's operators: one node per operator, saving what decides the mask (seed,
// offset, p, shared dims, scale) and nothing per element. The derivative of every form is
// keep * scale, the plain form of the same operator on the gradient with the same RNG state, so
// each backward runs the operator again, through autograd where that records (create_graph=True).
//
// Where autograd records, the node's seed is settled here, before the kernel runs: an explicit
// seed or seed tensor, or one drawn now from the generator (under CUDA-graph capture, the
// generator's device-side state, which the forward kernel copies into a 2-element tensor that
// the node keeps for the backward). Where it records nothing, the call goes straight below
// autograd, where the kernel draws its own seed.
//
// The nodes are written as torch's generated ones are (a Node subclass, its edges and history
// set here) rather than with torch::autograd::Function, whose templates cost this file twice the
// compile time and every call a map of saved values.
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/dynamo/compiled_autograd.h>

#include <memory>
#include <type_traits>

#include "ops.h"

namespace fastdrop {
namespace {

using torch::autograd::CompiledNodeArgs;
using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::SwapSavedVariables;
using torch::autograd::variable_list;
using NodePtr = decltype(torch::autograd::Edge::function);  // std::shared_ptr or c10::intrusive_ptr by torch version

template <typename T>
std::pair<NodePtr, T*> make_node() {
  if constexpr (std::is_same_v<NodePtr, std::shared_ptr<Node>>) {
    auto p = std::make_shared<T>();
    T* raw = p.get();
    return {std::move(p), raw};
  } else {
    auto p = c10::make_intrusive<T>();
    T* raw = p.get();
    return {NodePtr(std::move(p)), raw};
  }
}

// A call's RNG state as the schema carries it: an int seed and offset, or a seed tensor (with
// `offset`), or (a first captured call) the drawn device state itself.
struct Settled {
  std::optional<c10::SymInt> seed;
  c10::SymInt offset = 0;
  std::optional<at::Tensor> seed_tensor;
  std::optional<Rng> drawn;  // device pointers: run below the dispatcher, the state saved into seed_tensor
};

Settled settle(const at::Tensor& x, double p, const std::optional<c10::SymInt>& seed, const c10::SymInt& offset,
               const std::optional<at::Generator>& generator, const std::optional<at::Tensor>& seed_tensor,
               at::OptionalIntArrayRef shared) {
  Settled s;
  s.offset = offset;
  if (seed_tensor.has_value() && seed_tensor->defined()) {
    s.seed_tensor = seed_tensor;
  } else if (seed.has_value()) {
    s.seed = seed;
  } else if (p == 1.0) {
    s.seed = 0;  // no stream bit decides anything
  } else if (x.device().is_cuda() && cuda_hooks.draw != nullptr) {
    Rng rng = cuda_hooks.draw(x, generator, (stream_count(x, shared) + 3) / 4, true);
    if (rng.seed_ptr == nullptr) {
      s.seed = rng.seed;
      s.offset = rng.offset;
    } else {
      s.seed_tensor = rng.hold;  // (seed, counter offset), written by the forward kernel
      s.offset = 0;
      s.drawn = rng;
    }
  } else {
    const Rng rng = rng_of(x, std::nullopt, 0, generator, std::nullopt, stream_count(x, shared));
    s.seed = rng.seed;
    s.offset = rng.offset;
  }
  return s;
}

// A dense CPU tensor that no dispatch key beyond the backend's and autograd's would handle, with no
// dispatch mode watching: the kernel may take it without the dispatcher.
bool plain_cpu(const at::Tensor& t) {
  static const c10::DispatchKeySet special({
      c10::DispatchKey::Python, c10::DispatchKey::PythonTLSSnapshot, c10::DispatchKey::FuncTorchGradWrapper,
      c10::DispatchKey::FuncTorchBatched, c10::DispatchKey::Batched, c10::DispatchKey::Functionalize,
      c10::DispatchKey::Negative, c10::DispatchKey::Conjugate, c10::DispatchKey::ZeroTensor,
      c10::DispatchKey::Sparse, c10::DispatchKey::SparseCsr, c10::DispatchKey::NestedTensor});
  return t.defined() && t.device().is_cpu() && t.layout() == at::kStrided && !t.key_set().has_any(special) &&
         c10::impl::TorchDispatchModeTLS::stack_len() == 0 &&
         !c10::impl::tls_is_dispatch_key_included(c10::DispatchKey::FuncTorchDynamicLayerFrontMode);
}

// What a node saves: what decides the mask and the scale. The seed and offset are IValues so
// that compiled autograd lifts them into inputs of its graph (one graph for every step's seed).
struct Saved {
  double p = 0;
  std::optional<std::vector<int64_t>> shared;
  std::optional<double> scale;
  at::IValue seed, offset;
  SavedVariable seed_tensor;
  bool has_seed_tensor = false;

  void set(double p_, at::OptionalIntArrayRef shared_, std::optional<double> scale_, const Settled& s) {
    p = p_;
    if (shared_.has_value()) shared = shared_->vec();
    scale = scale_;
    offset = s.offset;
    if (s.seed_tensor.has_value()) {
      seed_tensor = SavedVariable(*s.seed_tensor, false);
      has_seed_tensor = true;
    } else {
      seed = *s.seed;
    }
  }

  // keep * scale on the gradient: the operator again, same mask, no affine part. A plain CPU
  // gradient where autograd records nothing (the usual backward) goes straight to the kernel; anything
  // else (a tensor subclass, a functorch wrapper, a traced or fake gradient, create_graph=True)
  // through the dispatcher, from the top.
  at::Tensor derivative(const at::Tensor& grad) const {
    if (!has_seed_tensor && seed.isInt() && offset.isInt() && !at::GradMode::is_enabled() && plain_cpu(grad)) {
      Rng rng;
      rng.seed = seed.toInt();
      rng.offset = offset.toInt();
      const at::OptionalIntArrayRef sh = shared.has_value() ? at::OptionalIntArrayRef(*shared) : std::nullopt;
      return dropout_rng(grad, p, sh, scale, std::nullopt, rng);
    }
    std::optional<c10::SymInt> sd;
    std::optional<at::Tensor> st;
    if (has_seed_tensor) {
      st = seed_tensor.unpack();
    } else {
      sd = seed.toSymInt();
    }
    const at::OptionalIntArrayRef sh = shared.has_value() ? at::OptionalIntArrayRef(*shared) : std::nullopt;
    return call_dropout(false, grad, p, sh, scale, std::nullopt, sd, offset.toSymInt(), std::nullopt, st);
  }

  void compiled_args(CompiledNodeArgs& args) const {
    args.collect(p);
    args.collect(shared);
    args.collect(scale);
    args.collect(seed);
    args.collect(offset);
    args.collect(has_seed_tensor);
    if (has_seed_tensor) args.collect(seed_tensor, false);
  }

  void before(SwapSavedVariables& saved) {
    saved.before(seed);
    saved.before(offset);
    if (has_seed_tensor) saved.before(seed_tensor);
  }

  void after(SwapSavedVariables& saved) {
    saved.after(seed);
    saved.after(offset);
    if (has_seed_tensor) saved.after(seed_tensor);
  }
};

struct DropoutBackward : public Node {
  Saved saved;

  variable_list apply(variable_list&& grads) override {
    variable_list out(1);
    if (should_compute_output(0) && grads[0].defined()) out[0] = saved.derivative(grads[0]);
    return out;
  }
  std::string name() const override { return "fastdrop::DropoutBackward"; }
  void release_variables() override { saved.seed_tensor.reset_data(); }
  void compiled_args(CompiledNodeArgs& args) const override { saved.compiled_args(args); }
  variable_list apply_with_saved(const variable_list& grads, SwapSavedVariables& s) override {
    saved.before(s);
    variable_list out = apply(variable_list(grads));
    saved.after(s);
    return out;
  }
};

// residual + dropout(x + bias): d/dx = the dropout mask (the operator on the gradient), d/dbias its
// sum over the leading dims, d/dresidual the identity. Inputs: x, the bias where there is one, the
// residual.
struct DropoutAddBackward : public Node {
  Saved saved;
  bool has_bias = false;

  variable_list apply(variable_list&& grads) override {
    const at::Tensor& g = grads[0];
    variable_list out(has_bias ? 3 : 2);
    const size_t r = has_bias ? 2 : 1;
    if (!g.defined()) return out;
    const bool need_bias = has_bias && should_compute_output(1);
    if (should_compute_output(0) || need_bias) {
      at::Tensor gx = saved.derivative(g);
      if (need_bias) out[1] = gx.reshape({-1, g.size(-1)}).sum(0);
      if (should_compute_output(0)) out[0] = std::move(gx);
    }
    if (should_compute_output(r)) out[r] = g;
    return out;
  }
  std::string name() const override { return "fastdrop::DropoutAddBackward"; }
  void release_variables() override { saved.seed_tensor.reset_data(); }
  void compiled_args(CompiledNodeArgs& args) const override {
    saved.compiled_args(args);
    args.collect(has_bias);
  }
  variable_list apply_with_saved(const variable_list& grads, SwapSavedVariables& s) override {
    saved.before(s);
    variable_list out = apply(variable_list(grads));
    saved.after(s);
    return out;
  }
};

at::Tensor forward_below(const at::Tensor& x, double p, at::OptionalIntArrayRef shared, std::optional<double> scale,
                         const std::optional<std::vector<double>>& affine, const Settled& s) {
  if (s.drawn.has_value()) return dropout_rng(x, p, shared, scale, affine, *s.drawn);
  return call_dropout(true, x, p, shared, scale, affine, s.seed, s.offset, std::nullopt, s.seed_tensor);
}

}  // namespace

at::Tensor dropout_autograd(const at::Tensor& x, double p, at::OptionalIntArrayRef shared, std::optional<double> scale,
                            const std::optional<std::vector<double>>& affine, std::optional<c10::SymInt> seed, c10::SymInt offset,
                            std::optional<at::Generator> generator, const std::optional<at::Tensor>& seed_tensor) {
  if (!(at::GradMode::is_enabled() && x.requires_grad())) {  // nothing to record: no node
    return call_dropout(true, x, p, shared, scale, affine, seed, offset, generator, seed_tensor);
  }
  const Settled s = settle(x, p, seed, offset, generator, seed_tensor, shared);
  at::Tensor y = forward_below(x, p, shared, scale, affine, s);
  auto [node, raw] = make_node<DropoutBackward>();
  raw->saved.set(p, shared, scale, s);
  raw->set_next_edges(torch::autograd::collect_next_edges(x));
  torch::autograd::set_history(y, node);
  return y;
}

at::Tensor& dropout_autograd_(at::Tensor& x, double p, at::OptionalIntArrayRef shared, std::optional<double> scale,
                              const std::optional<std::vector<double>>& affine, std::optional<c10::SymInt> seed,
                              c10::SymInt offset, std::optional<at::Generator> generator,
                              const std::optional<at::Tensor>& seed_tensor) {
  if (!(at::GradMode::is_enabled() && x.requires_grad())) {
    call_dropout_(true, x, p, shared, scale, affine, seed, offset, generator, seed_tensor);
    // written below autograd: tell it, as in-place ops do (inference tensors have no version)
    if (!x.is_inference()) x.unsafeGetTensorImpl()->bump_version();
    return x;
  }
  // Where autograd records: the out-of-place node, copied in, which autograd records as an
  // in-place copy (with PyTorch's own checks for leaves and views).
  x.copy_(dropout_autograd(x, p, shared, scale, affine, seed, offset, generator, seed_tensor));
  return x;
}

at::Tensor dropout_add_autograd(const at::Tensor& x, const std::optional<at::Tensor>& bias, const at::Tensor& r,
                                double p, std::optional<c10::SymInt> seed, c10::SymInt offset,
                                std::optional<at::Generator> generator, const std::optional<at::Tensor>& seed_tensor) {
  const bool has_bias = bias.has_value() && bias->defined();
  const bool grad = at::GradMode::is_enabled() &&
                    (x.requires_grad() || r.requires_grad() || (has_bias && bias->requires_grad()));
  if (!grad) return call_dropout_add(true, x, bias, r, p, seed, offset, generator, seed_tensor);
  const Settled s = settle(x, p, seed, offset, generator, seed_tensor, std::nullopt);
  at::Tensor y;
  if (s.drawn.has_value()) {
    y = dropout_add_rng(x, bias, r, p, *s.drawn);
  } else {
    y = call_dropout_add(true, x, bias, r, p, s.seed, s.offset, std::nullopt, s.seed_tensor);
  }
  auto [node, raw] = make_node<DropoutAddBackward>();
  raw->saved.set(p, std::nullopt, std::nullopt, s);
  raw->has_bias = has_bias;
  if (has_bias) {
    raw->set_next_edges(torch::autograd::collect_next_edges(x, *bias, r));
  } else {
    raw->set_next_edges(torch::autograd::collect_next_edges(x, r));
  }
  torch::autograd::set_history(y, node);
  return y;
}

}  // namespace fastdrop
