// The CUDA launch of fastdrop's Triton kernels from C++: plan, key, table, cuLaunchKernel. See launch.h.
// The planning functions are fastdrop/backends/triton.py's, line for line; tests hold the two equal.
#include "launch.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <numeric>
#include <unordered_map>

namespace fastdrop {
namespace launch {
namespace {

constexpr int64_t WORDS = 4;      // kernels/dropout.py
constexpr int64_t BLOCK = 2048;
constexpr int64_t MAX_DIMS = 4;   // dims the strided and broadcast kernels walk after merging
constexpr int64_t INDEX32_LIMIT = int64_t(1) << 31;
enum KeepKind { KEEP_SCALAR = 0, KEEP_ROW = 1, KEEP_COL = 2, KEEP_COL4 = 3, KEEP_ELEM = 4 };

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t next_power_of_2(int64_t n) {
  int64_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

using Ints = std::vector<int64_t>;

// Dims in y's memory order, merged where x, y and the mask index all allow; size-1 dims dropped.
void walk_dims(const Ints& shape, const Ints& x_strides, const Ints& y_strides, const Ints& mask_strides, Ints& sizes,
               Ints& xs, Ints& ys, Ints& ls) {
  std::vector<size_t> dims;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] != 1) dims.push_back(d);
  }
  std::stable_sort(dims.begin(), dims.end(), [&](size_t a, size_t b) { return y_strides[a] > y_strides[b]; });
  for (size_t d : dims) {
    const int64_t n = shape[d];
    if (!sizes.empty() && xs.back() == x_strides[d] * n && ys.back() == y_strides[d] * n &&
        ls.back() == mask_strides[d] * n) {
      sizes.back() *= n;
      xs.back() = x_strides[d];
      ys.back() = y_strides[d];
      ls.back() = mask_strides[d];
      continue;
    }
    sizes.push_back(n);
    xs.push_back(x_strides[d]);
    ys.push_back(y_strides[d]);
    ls.push_back(mask_strides[d]);
  }
}

// Left-pad to `width` entries with `fill` (size 1 for sizes, stride 0 for strides).
Ints pad(const Ints& v, size_t width, int64_t fill) {
  Ints out(width > v.size() ? width - v.size() : 0, fill);
  out.insert(out.end(), v.begin(), v.end());
  return out;
}

Ints slice(const Ints& v, int64_t from, int64_t to) {  // Python's v[from:to] for from, to in range
  return Ints(v.begin() + from, v.begin() + to);
}

// A power-of-two tile length for a dim of this extent: the longest up to cap whose padding stays
// within 1/16 of the extent, else the one with the least padding.
int64_t tile(int64_t extent, int64_t cap) {
  int64_t best_waste = -1, best = 1;
  for (int64_t t = std::min(next_power_of_2(extent), cap); t >= 1; t /= 2) {
    const int64_t waste = cdiv(extent, t) * t - extent;
    if (waste * 16 <= extent) return t;
    if (best_waste < 0 || waste < best_waste) {
      best_waste = waste;
      best = t;
    }
  }
  return best;
}

void add_const(Layout& l, const char* name, int64_t v) {
  l.constexpr_names.push_back(name);
  l.constexprs.push_back(v);
}

Layout bcast_plan(const Ints& sizes, const Ints& xs, const Ints& ys, const Ints& ls, int itemsize, int64_t shift,
                  int64_t block, int64_t index32_limit) {
  const int64_t nd = static_cast<int64_t>(sizes.size());
  Ints osz{1, 1}, ox{0, 0}, oy{0, 0}, ol{0, 0};
  if (nd > 2) {
    osz = pad(slice(sizes, 0, nd - 2), 2, 1);
    ox = pad(slice(xs, 0, nd - 2), 2, 0);
    oy = pad(slice(ys, 0, nd - 2), 2, 0);
    ol = pad(slice(ls, 0, nd - 2), 2, 0);
  }
  const int64_t from = std::max<int64_t>(nd - 2, 0);
  const Ints ab = pad(slice(sizes, from, nd), 2, 1), xab = pad(slice(xs, from, nd), 2, 0),
             yab = pad(slice(ys, from, nd), 2, 0), lab = pad(slice(ls, from, nd), 2, 0);
  const int64_t A = ab[0], B = ab[1], xa = xab[0], xb = xab[1], ya = yab[0], yb = yab[1], la = lab[0], lb = lab[1];
  const int64_t vec = 16 / itemsize;
  int keep;
  if (la == 0 && lb == 0) {
    keep = KEEP_SCALAR;
  } else if (la == 0 || lb == 0) {
    keep = lb == 0 ? KEEP_ROW : KEEP_COL;
    if (keep == KEEP_COL && lb == 1 && vec >= 4 && shift == 0 && ol[0] % 4 == 0 && ol[1] % 4 == 0 && la % 4 == 0) {
      keep = KEEP_COL4;
    }
  } else {
    keep = KEEP_ELEM;
  }
  int64_t block_b = tile(B, 1024);
  if (keep == KEEP_COL4) block_b = std::max(block_b, vec);
  const int64_t block_a = std::min(std::max<int64_t>(block / block_b, 1), next_power_of_2(A));
  const int64_t span = std::max((A - 1) * xa + (B - 1) * xb, (A - 1) * ya + (B - 1) * yb);
  Layout l;
  l.kernel = "_dropout_bcast_kernel";
  l.grid = osz[0] * osz[1] * cdiv(A, block_a) * cdiv(B, block_b);
  l.post = {osz[1], A, B, ox[0], ox[1], xa, xb, oy[0], oy[1], ya, yb, ol[0], ol[1], la, lb};
  add_const(l, "KEEP", keep);
  add_const(l, "BLOCK_A", block_a);
  add_const(l, "BLOCK_B", block_b);
  add_const(l, "VEC", std::min(vec, block_b));
  add_const(l, "IDX64", span >= index32_limit);
  return l;
}

bool grouped_plan(const Ints& sizes, const Ints& xs, const Ints& ys, const Ints& ls, int itemsize, int64_t shift,
                  int64_t block, int64_t index32_limit, Layout& l) {
  const int64_t nd = static_cast<int64_t>(sizes.size());
  int64_t w = -1;
  for (int64_t d = 0; d + 1 < nd; ++d) {
    if (ls[d] == 1) {
      w = d;
      break;
    }
  }
  if (w < 0) return false;
  const int64_t W = sizes[w];
  if (W % 4 != 0) return false;
  for (int64_t d = 0; d < nd; ++d) {
    if (d != w && ls[d] % W != 0) return false;
  }
  Ints rs, rx, ry, rq;
  for (int64_t d = 0; d + 1 < nd; ++d) {
    if (d == w) continue;
    rs.push_back(sizes[d]);
    rx.push_back(xs[d]);
    ry.push_back(ys[d]);
    rq.push_back(ls[d]);
  }
  const Ints osz = pad(rs, 2, 1), ox = pad(rx, 2, 0), oy = pad(ry, 2, 0), oq = pad(rq, 2, 0);
  const int64_t I = sizes[nd - 1];
  const int64_t ng = (W + shift + 3) / 4;
  // 32-bit index math where every in-tile element offset and counter step fits in 31 bits.
  const int64_t span = std::max((I - 1) * xs[nd - 1] + (W + 3) * xs[w], (I - 1) * ys[nd - 1] + (W + 3) * ys[w]);
  const bool idx64 = std::max(span, ng + (I - 1) * (ls[nd - 1] / 4)) >= index32_limit;
  const int64_t block_i = std::min<int64_t>(next_power_of_2(I), 64);
  const int64_t block_g = std::max<int64_t>(2 * block / (4 * block_i), 1);
  l.kernel = "_dropout_grouped_kernel";
  l.grid = osz[0] * osz[1] * cdiv(ng, block_g) * cdiv(I, block_i);
  l.post = {osz[1], ng, I, W, ox[0], ox[1], xs[w], xs[nd - 1], oy[0], oy[1], ys[w], ys[nd - 1],
            oq[0] / 4, oq[1] / 4, ls[nd - 1] / 4};
  add_const(l, "BLOCK_G", block_g);
  add_const(l, "BLOCK_I", block_i);
  add_const(l, "VEC", std::min<int64_t>(16 / itemsize, block_i));
  add_const(l, "IDX64", idx64);
  return true;
}

Ints row_major(const Ints& shape) {
  Ints s(shape.size());
  int64_t acc = 1;
  for (size_t d = shape.size(); d-- > 0;) {
    s[d] = acc;
    acc *= shape[d];
  }
  return s;
}

// ---- keys ---------------------------------------------------------------------------------------

// The integer type Triton gives an unspecialized int argument, by its value (its binder's rule;
// no argument here reaches 2^63, where it would be u64).
const char* int_kind(int64_t v) { return v >= -(int64_t(1) << 31) && v < (int64_t(1) << 31) ? "i32" : "i64"; }

std::string join(const std::vector<std::string>& parts) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i) out += ',';
    out += parts[i];
  }
  return out;
}

std::string ptr_key(const Arg& a) { return std::string(a.dtype) + ":" + (a.value % 16 == 0 ? "1" : "0"); }

// name|device|grid|lead|scalars|post|constexprs|fp_fusion: triton.py's key_text of the same launch.
std::string key_of(const Launch& l, size_t n_lead, size_t n_scalars, int device) {
  std::vector<std::string> lead, scalars, post, consts;
  for (size_t i = 0; i < l.args.size(); ++i) {
    const Arg& a = l.args[i];
    if (i < n_lead) {
      lead.push_back(a.is_ptr ? ptr_key(a) : std::to_string(a.value));
    } else if (i < n_lead + n_scalars) {
      scalars.push_back(a.is_ptr ? std::string("p:") + (a.value % 16 == 0 ? "1" : "0")
                                 : int_kind(a.value));
    } else {
      post.push_back(std::to_string(a.value));
    }
  }
  for (int64_t c : l.constexprs) consts.push_back(std::to_string(c));
  return l.kernel + "|" + std::to_string(device) + "|" + std::to_string(l.grid) + "|" + join(lead) + "|" +
         join(scalars) + "|" + join(post) + "|" + join(consts) + "|" + (l.fp_fusion ? "1" : "0");
}

int64_t float_bits(double v) {
  int64_t b;
  std::memcpy(&b, &v, 8);
  return b;
}

Arg int_arg(int64_t v) { return Arg{false, v, nullptr}; }
Arg ptr_arg(const View& t) { return Arg{true, static_cast<int64_t>(t.ptr), t.dtype}; }

// The scalars in the kernels' order, and the call's offset % 4 (a constexpr).
struct Packed {
  std::vector<Arg> args;
  int64_t shift;
};

Packed pack(const Scalars& s, uint64_t offset, bool with_form) {
  Packed p;
  const uint64_t base = offset / WORDS;
  p.shift = static_cast<int64_t>(offset % WORDS);
  p.args = {s.seed, int_arg(static_cast<int64_t>(base)), s.base_ptr, s.save_ptr, int_arg(s.threshold),
            int_arg(float_bits(s.scale))};
  if (with_form) {
    p.args.push_back(int_arg(s.affine ? float_bits(s.add) : 0));
    p.args.push_back(int_arg(s.affine ? float_bits(s.drop) : 0));
  }
  return p;
}

void finish(Launch& l, size_t n_lead, const Packed& p, int device) {
  l.key = key_of(l, n_lead, p.args.size(), device);
}

void plan_into(std::vector<Launch>& out, const View& x, const View& y, const Ints& mask_strides, const Scalars& s,
               uint64_t offset, int device) {
  const int64_t n = x.numel();
  if (n == 0) return;
  const Packed p = pack(s, offset, true);
  const bool seed_ptr = s.seed.is_ptr, base_ptr = s.base_ptr.is_ptr, save = s.save_ptr.is_ptr;
  Launch l;
  l.fp_fusion = !s.affine;
  if (mask_strides.empty() && x.contiguous() && y.contiguous()) {
    // Contiguous x and y with the row-major mask: the common case, decided without walking dims.
    l.kernel = "_dropout_kernel";
    l.grid = cdiv(n + p.shift, BLOCK);
    l.args = {ptr_arg(x), ptr_arg(y), int_arg(n)};
    l.args.insert(l.args.end(), p.args.begin(), p.args.end());
    l.constexprs = {p.shift, BLOCK, s.affine, seed_ptr, base_ptr, save, std::max<int64_t>(4, 16 / x.itemsize)};
    finish(l, 3, p, device);
    out.push_back(std::move(l));
    return;
  }
  const Ints ms = mask_strides.empty() ? row_major(x.sizes) : mask_strides;
  const Layout lay = layout_plan(x.sizes, x.strides, y.strides, ms, x.itemsize, p.shift, BLOCK, INDEX32_LIMIT);
  if (lay.kernel.empty()) {
    // More dims than the kernels walk: once per index of y's outermost dim. Slice i of dim d is the
    // same op at stream offset offset + i * mask_stride[d].
    int64_t d = -1;
    for (size_t k = 0; k < x.sizes.size(); ++k) {
      if (x.sizes[k] != 1 && (d < 0 || y.strides[k] > y.strides[d])) d = static_cast<int64_t>(k);
    }
    Ints rest = ms;
    rest.erase(rest.begin() + d);
    for (int64_t i = 0; i < x.sizes[d]; ++i) {
      plan_into(out, x.select(d, i), y.select(d, i), rest, s, offset + static_cast<uint64_t>(i * ms[d]), device);
    }
    return;
  }
  l.kernel = lay.kernel;
  l.grid = lay.grid;
  l.args = {ptr_arg(x), ptr_arg(y)};
  for (int64_t v : lay.pre) l.args.push_back(int_arg(v));
  const size_t n_lead = l.args.size();
  l.args.insert(l.args.end(), p.args.begin(), p.args.end());
  for (int64_t v : lay.post) l.args.push_back(int_arg(v));
  l.constexprs = {p.shift, s.affine, seed_ptr, base_ptr, save};
  l.constexprs.insert(l.constexprs.end(), lay.constexprs.begin(), lay.constexprs.end());
  finish(l, n_lead, p, device);
  out.push_back(std::move(l));
}

// ---- the driver ---------------------------------------------------------------------------------

using LaunchFn = int (*)(uint64_t, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void*,
                         void**, void**);
using CapturingFn = int (*)(void*, int*);  // cuStreamIsCapturing

struct Driver {
  LaunchFn launch = nullptr;
  CapturingFn capturing = nullptr;
  std::string why;
};

const Driver& driver() {
  static const Driver d = [] {
    Driver out;
    const char* path = std::getenv("FASTDROP_LIBCUDA");
    void* h = dlopen(path != nullptr && *path ? path : "libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr) {
      const char* e = dlerror();
      out.why = std::string("cannot load the CUDA driver: ") + (e ? e : "dlopen failed");
      return out;
    }
    out.launch = reinterpret_cast<LaunchFn>(dlsym(h, "cuLaunchKernel"));
    out.capturing = reinterpret_cast<CapturingFn>(dlsym(h, "cuStreamIsCapturing"));
    if (out.launch == nullptr || out.capturing == nullptr) {
      out.launch = nullptr;
      out.why = "the CUDA driver has no cuLaunchKernel or cuStreamIsCapturing";
    }
    return out;
  }();
  return d;
}

std::mutex table_mutex;
std::unordered_map<std::string, Kernel>& table() {
  static std::unordered_map<std::string, Kernel> t;
  return t;
}

}  // namespace

View View::select(int64_t dim, int64_t i) const {
  View v = *this;
  v.ptr = ptr + static_cast<uint64_t>(i * strides[dim] * itemsize);
  v.sizes.erase(v.sizes.begin() + dim);
  v.strides.erase(v.strides.begin() + dim);
  return v;
}

bool View::contiguous() const {
  int64_t expected = 1;
  for (size_t d = sizes.size(); d-- > 0;) {
    if (sizes[d] != 1 && strides[d] != expected) return false;
    expected *= sizes[d];
  }
  return true;
}

int64_t View::numel() const { return std::accumulate(sizes.begin(), sizes.end(), int64_t(1), std::multiplies<>()); }

Layout layout_plan(const Ints& shape, const Ints& x_strides, const Ints& y_strides, const Ints& mask_strides,
                   int itemsize, int64_t shift, int64_t block, int64_t index32_limit) {
  const int64_t n = std::accumulate(shape.begin(), shape.end(), int64_t(1), std::multiplies<>());
  Ints sizes, xs, ys, ls;
  walk_dims(shape, x_strides, y_strides, mask_strides.empty() ? row_major(shape) : mask_strides, sizes, xs, ys, ls);
  auto unit = [](const Ints& v) { return v.empty() || (v.size() == 1 && v[0] == 1); };
  Layout l;
  if (sizes.size() <= 1 && unit(xs) && unit(ys) && unit(ls)) {
    l.kernel = "_dropout_kernel";
    l.grid = cdiv(n + shift, block);
    l.pre = {n};
    add_const(l, "BLOCK", block);
    add_const(l, "VEC", std::max(4, 16 / itemsize));
    return l;
  }
  if (static_cast<int64_t>(sizes.size()) > MAX_DIMS) return l;  // empty kernel: sliced
  if (std::find(ls.begin(), ls.end(), 0) != ls.end()) {
    return bcast_plan(sizes, xs, ys, ls, itemsize, shift, block, index32_limit);
  }
  if (grouped_plan(sizes, xs, ys, ls, itemsize, shift, block, index32_limit, l)) return l;
  const Ints s4 = pad(sizes, MAX_DIMS, 1), x4 = pad(xs, MAX_DIMS, 0), y4 = pad(ys, MAX_DIMS, 0),
             l4 = pad(ls, MAX_DIMS, 0);
  l.kernel = "_dropout_strided_kernel";
  l.grid = cdiv(n, block);
  l.pre = {n};
  l.post = {s4[1], s4[2], s4[3]};
  for (const Ints* v : {&x4, &y4, &l4}) l.post.insert(l.post.end(), v->begin(), v->end());
  add_const(l, "BLOCK", block);
  return l;
}

std::vector<Launch> plan_dropout(const View& x, const View& y, const Ints& mask_strides, const Scalars& s,
                                 int device) {
  std::vector<Launch> out;
  plan_into(out, x, y, mask_strides, s, s.offset, device);
  return out;
}

std::vector<Launch> plan_dropout_add(const View& x, const View* bias, const View& r, const View& y, const Scalars& s,
                                     int device) {
  std::vector<Launch> out;
  const int64_t n = x.numel();
  if (n == 0) return out;
  const Packed p = pack(s, s.offset, false);
  Launch l;
  l.kernel = "_dropout_add_kernel";
  l.fp_fusion = false;  // (x + bias) * scale + residual rounds like the CPU path's separate ops
  l.grid = cdiv(n + p.shift, BLOCK);
  const int64_t width = x.sizes.empty() ? 1 : x.sizes.back();
  l.args = {ptr_arg(x), ptr_arg(bias != nullptr ? *bias : x), ptr_arg(r), ptr_arg(y), int_arg(n), int_arg(width)};
  l.args.insert(l.args.end(), p.args.begin(), p.args.end());
  l.constexprs = {p.shift, bias != nullptr, BLOCK, s.seed.is_ptr, s.base_ptr.is_ptr, s.save_ptr.is_ptr,
                  std::max<int64_t>(4, 16 / x.itemsize)};
  finish(l, 6, p, device);
  out.push_back(std::move(l));
  return out;
}

Kernel& entry(const std::string& key) {
  std::lock_guard<std::mutex> lock(table_mutex);
  return table()[key];  // node-based: the reference stays valid
}

void learn(const std::string& key, const std::vector<int64_t>& info, size_t at, size_t* next) {
  Kernel k;
  const int64_t n = info.at(at);
  // [length, function, warps, shared, nulls, type...] or [1, 0]: Triton's launch serves it
  if (n < 5 || info.at(at + 1) == 0) {
    k.state = State::python;
  } else {
    k.state = State::learned;
    k.function = static_cast<uint64_t>(info.at(at + 1));
    k.warps = static_cast<int>(info.at(at + 2));
    k.shared = static_cast<int>(info.at(at + 3));
    k.nulls = static_cast<int>(info.at(at + 4));
    for (int64_t i = 5; i < n; ++i) k.types.push_back(static_cast<int8_t>(info.at(at + i)));
  }
  *next = at + static_cast<size_t>(n);
  std::lock_guard<std::mutex> lock(table_mutex);
  Kernel& slot = table()[key];
  if (slot.state != State::python) slot = k;
}

void forget() {
  std::lock_guard<std::mutex> lock(table_mutex);
  table().clear();
}

void each(const std::function<void(const std::string&, const Kernel&)>& fn) {
  std::lock_guard<std::mutex> lock(table_mutex);
  for (const auto& [k, e] : table()) fn(k, e);
}

bool driver_ready(std::string* why) {
  const Driver& d = driver();
  if (d.launch == nullptr && why != nullptr) *why = d.why;
  return d.launch != nullptr;
}

bool capturing(void* stream) {
  const Driver& d = driver();
  int status = 0;  // CU_STREAM_CAPTURE_STATUS_NONE
  // Where the driver cannot say, as if capturing: no synchronizing check is made then.
  return d.capturing == nullptr || d.capturing(stream, &status) != 0 || status != 0;
}

std::string run(const Launch& l, const Kernel& k, void* stream) {
  const Driver& d = driver();
  if (d.launch == nullptr) return d.why;
  if (k.types.size() != l.args.size()) {
    return "the compiled kernel takes " + std::to_string(k.types.size()) + " arguments, the call has " +
           std::to_string(l.args.size());
  }
  // Each parameter in its own 8-byte slot; ints narrowed to 4 bytes where the kernel takes i32.
  std::vector<uint64_t> slots(l.args.size() + static_cast<size_t>(k.nulls), 0);
  std::vector<void*> params;
  params.reserve(slots.size());
  for (size_t i = 0; i < l.args.size(); ++i) {
    const int8_t t = k.types[i];
    if (t == 0) continue;  // a constexpr of the compiled kernel (Triton specialized it): not passed
    if (t == 4) {
      const auto v = static_cast<int32_t>(l.args[i].value);
      std::memcpy(&slots[i], &v, 4);
    } else {
      std::memcpy(&slots[i], &l.args[i].value, 8);
    }
    params.push_back(&slots[i]);
  }
  for (int j = 0; j < k.nulls; ++j) params.push_back(&slots[l.args.size() + static_cast<size_t>(j)]);
  const int rc = d.launch(k.function, static_cast<unsigned>(l.grid), 1, 1, static_cast<unsigned>(32 * k.warps), 1, 1,
                          static_cast<unsigned>(k.shared), stream, params.data(), nullptr);
  return rc == 0 ? std::string() : "cuLaunchKernel returned " + std::to_string(rc);
}

}  // namespace launch
}  // namespace fastdrop
