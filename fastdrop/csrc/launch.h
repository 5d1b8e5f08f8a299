// The CUDA launch of fastdrop's Triton kernels from C++ (launch.cpp), in plain C++ (no torch
// headers): which kernel a call's layout takes, with what grid, arguments and constexprs (the same
// plan as fastdrop/backends/triton.py, held equal to it by tests/test_launch.py), the call's
// launch key, a table from launch keys to the kernels Triton compiled, and cuLaunchKernel.
//
// A key's first call goes to Python (the helper operator fastdrop::_triton_launch, which
// launches through Triton and returns the compiled kernel: its CUfunction, warps, shared memory
// and parameter types). The key's next call launches from C++ and is compared bit for bit with
// Triton's own launch before the key is trusted; a difference or an error leaves the key on
// Triton's launch, with one warning. ops.cpp holds the tensors, the stream and the helper calls.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace fastdrop {
namespace launch {

// A tensor as the planner sees it: where, what and how laid out.
struct View {
  uint64_t ptr = 0;
  int itemsize = 4;
  const char* dtype = "f32";  // f16, bf16, f32, f64: what the key names
  std::vector<int64_t> sizes, strides;

  View select(int64_t dim, int64_t i) const;
  bool contiguous() const;
  int64_t numel() const;
};

// A kernel's positional argument: a pointer (with its 16-byte alignment) or an integer.
struct Arg {
  bool is_ptr = false;
  int64_t value = 0;  // the pointer's address, or the integer's bits
  const char* dtype = nullptr;  // a tensor's, for the key; null for a scalar pointer (a seed, say)
};

// The run-time scalars of a call (the mask contract's state and the form), as the kernels take them.
struct Scalars {
  Arg seed;            // the key's bits, or a pointer to it
  uint64_t offset = 0;  // stream elements (with base_ptr: added to 4 * *base_ptr)
  Arg base_ptr;        // a pointer to a Philox counter offset, or 0
  Arg save_ptr;        // a pointer to 2 int64s that program 0 writes, or 0
  int64_t threshold = 0;
  double scale = 1.0, add = 0.0, drop = 0.0;
  bool affine = false;
};

// One launch of a call: kernel, grid, arguments in the kernel's order, constexprs in the key's order.
struct Launch {
  std::string kernel;
  int64_t grid = 0;
  std::vector<Arg> args;
  std::vector<int64_t> constexprs;
  bool fp_fusion = true;
  std::string key;  // the launch key's text (triton.py's key_text)
};

// The plan of a layout alone (triton.py's layout_plan), for tests: empty kernel where the call
// has more dims than the kernels walk (it is then launched slice by slice).
struct Layout {
  std::string kernel;
  int64_t grid = 0;
  std::vector<int64_t> pre, post, constexprs;
  std::vector<std::string> constexpr_names;
};
Layout layout_plan(const std::vector<int64_t>& shape, const std::vector<int64_t>& xs, const std::vector<int64_t>& ys,
                   const std::vector<int64_t>& mask_strides, int itemsize, int64_t shift, int64_t block,
                   int64_t index32_limit);

// The launches of y = dropout(x) (triton.py's launch) and of y = residual + dropout(x + bias).
// mask_strides: one per dim of x (the noise shape's, 0 along shared dims), or empty: row-major.
std::vector<Launch> plan_dropout(const View& x, const View& y, const std::vector<int64_t>& mask_strides,
                                 const Scalars& s, int device);
std::vector<Launch> plan_dropout_add(const View& x, const View* bias, const View& r, const View& y, const Scalars& s,
                                     int device);

// What the table knows of a key.
enum class State { unknown, learned, trusted, python };

struct Kernel {
  State state = State::unknown;
  uint64_t function = 0;  // CUfunction, loaded by Triton on the key's device
  int warps = 0, shared = 0, nulls = 0;  // nulls: trailing null pointers (Triton's scratch arguments)
  std::vector<int8_t> types;  // per positional argument: 0 constexpr (not passed), 1 pointer, 4 or 8 bytes of int
};

// The table. get: the key's entry (a fresh, unknown one on a miss). learn: what the helper
// returned for a key: [function, warps, shared, nulls, n, type_0 .. type_{n-1}], or [0] where
// Triton's launch must serve it.
Kernel& entry(const std::string& key);
void learn(const std::string& key, const std::vector<int64_t>& info, size_t at, size_t* next);
void forget();  // the whole table (tests)
void each(const std::function<void(const std::string&, const Kernel&)>& fn);  // every entry (tests)

// cuLaunchKernel of one launch with a learned kernel on `stream`; an empty string, or why not.
std::string run(const Launch& l, const Kernel& k, void* stream);

// Whether a CUDA-graph capture is under way on `stream` (cuStreamIsCapturing).
bool capturing(void* stream);

// Where cuLaunchKernel comes from: libcuda.so.1, or $FASTDROP_LIBCUDA (a stand-in, for tests).
bool driver_ready(std::string* why);

}  // namespace launch
}  // namespace fastdrop
