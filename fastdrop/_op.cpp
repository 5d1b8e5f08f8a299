// CPU dropout of a contiguous tensor as a C++ operator with a C++ autograd node: eager calls
// without a Python autograd.Function (whose backward cost 20-30 us more than PyTorch's own
// node) and with little Python per call. fastdrop._op builds and loads it.
//
// The work is the loops' own: each call is written as a job (fastdrop/_job.py's layout; its
// constants arrive as -D flags at build time) and run by omp_body, whose address init() gives.
// So the bits are those of every other CPU call.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

namespace {

using Body = void (*)(int64_t);                                 // omp_body(job address)
using Parallel = void (*)(void (*)(void*), void*, unsigned, unsigned);  // libgomp's GOMP_parallel
Body body = nullptr;
Parallel parallel = nullptr;  // null: every call inline (no libgomp, or a forked child)
int64_t omp_chunk = 0, mmapped = 0, huge_page = 0;

int64_t dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return CODE_FLOAT32;
    case at::kDouble: return CODE_FLOAT64;
    case at::kHalf: return CODE_UINT16;
    case at::kBFloat16: return CODE_INT16;
    default: TORCH_CHECK(false, "fastdrop_cpu: no CPU loop for ", t);
  }
}

void huge_pages(const at::Tensor& y) {
  // As fastdrop._cpu.huge_pages: a fresh mapping faulted in 2 MiB at a time.
  const int64_t nbytes = y.numel() * y.element_size();
  if (nbytes < mmapped) return;
  const auto start = reinterpret_cast<uintptr_t>(y.data_ptr());
  const uintptr_t lo = (start + huge_page - 1) / huge_page * huge_page;
  const uintptr_t hi = (start + nbytes) / huge_page * huge_page;
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);  // an error: no huge pages
}

// Runs the job d over n elements: inline, or on PyTorch's OpenMP threads as fastdrop._cpu.run does.
void run_job(int64_t* d, int64_t n) {
  d[D_N] = n;
  d[D_NEXT] = 0;
  const int threads = at::get_num_threads();
  if (parallel != nullptr && threads > 1 && n > omp_chunk) {
    d[D_PIECE] = std::max<int64_t>(omp_chunk, (n + 8 * threads - 1) / (8 * threads));  // the fast take more
    parallel(reinterpret_cast<void (*)(void*)>(body), d, threads, 0);
  } else {
    d[D_PIECE] = n;
    body(reinterpret_cast<int64_t>(d));
  }
}

// keep ? x * scale (+ add) : (0 or drop) over x in logical order, into a fresh contiguous y.
// noise (x.dim() entries, each 1 or x's size): one keep bit per element of that shape, at
// its row-major index, shared along the size-1 dims; none: one per element.
at::Tensor run(const at::Tensor& x_in, int64_t seed, int64_t offset, int64_t threshold, double scale,
               double add, double drop, bool affine, at::OptionalIntArrayRef noise) {
  TORCH_CHECK(body != nullptr, "fastdrop_cpu: init() was not called");
  TORCH_CHECK(x_in.device().is_cpu() && x_in.layout() == at::kStrided, "fastdrop_cpu: a dense CPU tensor");
  const at::Tensor x = x_in.contiguous();  // a strided gradient: the mask follows the logical index
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t n = x.numel();
  if (n == 0) return y;
  huge_pages(y);
  int64_t d[DESC] = {};
  d[D_K0] = static_cast<int64_t>(static_cast<uint64_t>(seed) & 0xFFFFFFFFu);
  d[D_K1] = static_cast<int64_t>(static_cast<uint64_t>(seed) >> 32);
  d[D_OFFSET] = offset;
  d[D_T] = threshold;
  const double floats[3] = {scale, add, drop};
  std::memcpy(d + D_FLOATS, floats, sizeof floats);
  if (!noise.has_value() || noise->equals(x.sizes())) {
    d[D_KIND] = KIND_ROWS;
    d[D_DTYPE] = dtype_code(x.scalar_type());
    d[D_CONTIG] = 1;
    d[D_X] = reinterpret_cast<int64_t>(x.data_ptr());
    d[D_Y] = reinterpret_cast<int64_t>(y.data_ptr());
    d[D_AFFINE] = affine;
    d[D_SHAPE] = d[D_SHAPE + 1] = d[D_SHAPE + 2] = 1;
    d[D_SHAPE + 3] = n;
    run_job(d, n);
    return y;
  }
  const auto ns = *noise;
  TORCH_CHECK(ns.size() == static_cast<size_t>(x.dim()), "fastdrop_cpu: noise has x.dim() entries");
  const int64_t count = c10::multiply_integers(ns);
  const auto bits = std::make_unique_for_overwrite<uint8_t[]>(count);  // one byte per noise element
  d[D_KIND] = KIND_KEEP;
  d[D_Y] = reinterpret_cast<int64_t>(bits.get());
  run_job(d, count);
  // x as runs of dims along which the bit varies or not, merged (row-major: a merged run's
  // noise stride is its last dim's); more than four runs loop over the outer ones here.
  std::vector<int64_t> sizes, strides;
  bool last_varies = false;
  for (int64_t k = 0, stride = count; k < x.dim(); ++k) {
    TORCH_CHECK(ns[k] == 1 || ns[k] == x.size(k), "fastdrop_cpu: noise dims are 1 or x's size");
    stride /= ns[k];
    if (x.size(k) == 1) continue;
    const bool varies = ns[k] != 1;
    if (!sizes.empty() && varies == last_varies) {
      sizes.back() *= x.size(k);
      strides.back() = varies ? stride : 0;
    } else {
      sizes.push_back(x.size(k));
      strides.push_back(varies ? stride : 0);
    }
    last_varies = varies;
  }
  while (sizes.size() < 4) {
    sizes.insert(sizes.begin(), 1);
    strides.insert(strides.begin(), 0);
  }
  const size_t outer = sizes.size() - 4;
  const int64_t inner = sizes[outer] * sizes[outer + 1] * sizes[outer + 2] * sizes[outer + 3];
  const int64_t item = x.element_size();
  d[D_KIND] = KIND_NOISE;
  d[D_DTYPE] = dtype_code(x.scalar_type());
  d[D_CONTIG] = 1;
  d[D_AFFINE] = affine;
  for (int k = 0; k < 4; ++k) {
    d[D_SHAPE + k] = sizes[outer + k];
    d[D_NS + k] = strides[outer + k];
  }
  std::vector<int64_t> idx(outer, 0);
  for (int64_t first = 0; first < n; first += inner) {  // first: the flat index of this piece
    int64_t bit = 0;
    for (size_t k = 0; k < outer; ++k) bit += idx[k] * strides[k];
    d[D_X] = reinterpret_cast<int64_t>(x.data_ptr()) + first * item;
    d[D_Y] = reinterpret_cast<int64_t>(y.data_ptr()) + first * item;
    d[D_AUX] = reinterpret_cast<int64_t>(bits.get()) + bit;
    d[D_AUXN] = count - bit;
    run_job(d, inner);
    for (size_t k = outer; k-- > 0;) {  // the next outer index, row-major
      if (++idx[k] < sizes[k]) break;
      idx[k] = 0;
    }
  }
  return y;
}

// dy/dx = keep * scale: the backward is this op again on the gradient, without the affine
// part, so it is differentiable in turn (create_graph=True).
struct Dropout : public torch::autograd::Function<Dropout> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, int64_t seed,
                            int64_t offset, int64_t threshold, double scale, double add, double drop,
                            bool affine, at::OptionalIntArrayRef noise) {
    ctx->saved_data["seed"] = seed;  // what decides the mask; nothing per element
    ctx->saved_data["offset"] = offset;
    ctx->saved_data["threshold"] = threshold;
    ctx->saved_data["scale"] = scale;
    if (noise.has_value()) ctx->saved_data["noise"] = noise->vec();
    return run(x, seed, offset, threshold, scale, add, drop, affine, noise);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto& s = ctx->saved_data;
    const int64_t seed = s["seed"].toInt(), offset = s["offset"].toInt(), threshold = s["threshold"].toInt();
    const double scale = s["scale"].toDouble();
    std::optional<std::vector<int64_t>> noise;
    if (s.count("noise")) noise = s["noise"].toIntVector();
    const at::OptionalIntArrayRef ns = noise.has_value() ? at::OptionalIntArrayRef(*noise) : std::nullopt;
    // Recorded only when autograd records the backward (create_graph=True).
    at::Tensor gx = at::GradMode::is_enabled()
                        ? Dropout::apply(grads[0], seed, offset, threshold, scale, 0.0, 0.0, false, ns)
                        : run(grads[0], seed, offset, threshold, scale, 0.0, 0.0, false, ns);
    // One gradient per forward argument: x's, then none for the 8 numbers.
    torch::autograd::variable_list out(9);
    out[0] = gx;
    return out;
  }
};

at::Tensor dropout(const at::Tensor& x, int64_t seed, int64_t offset, int64_t threshold, double scale,
                   double add, double drop, bool affine, at::OptionalIntArrayRef noise) {
  if (!(at::GradMode::is_enabled() && x.requires_grad()))  // nothing to record: no node (1.4 us less)
    return run(x, seed, offset, threshold, scale, add, drop, affine, noise);
  return Dropout::apply(x, seed, offset, threshold, scale, add, drop, affine, noise);
}

void init(int64_t body_address, int64_t parallel_address, int64_t chunk, int64_t mmapped_bytes,
          int64_t page) {
  body = reinterpret_cast<Body>(body_address);
  parallel = reinterpret_cast<Parallel>(parallel_address);
  omp_chunk = chunk;
  mmapped = mmapped_bytes;
  huge_page = page;
}

// libgomp's team does not survive fork(): a forked child runs every call inline (as
// fastdrop._cpu does; PyTorch's own parallel ops hang there).
const int registered_at_fork = pthread_atfork(nullptr, nullptr, [] { parallel = nullptr; });

}  // namespace

TORCH_LIBRARY(fastdrop_cpu, m) {
  m.def("dropout(Tensor x, int seed, int offset, int threshold, float scale, float add, float drop, "
        "bool affine, int[]? noise) -> Tensor", TORCH_FN(dropout));
  m.def("init(int body, int parallel, int omp_chunk, int mmapped, int huge_page) -> ()", TORCH_FN(init));
}
