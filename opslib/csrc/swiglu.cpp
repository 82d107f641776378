// swiglu's CPU kernels: the forward and the first-order backward, one pass over memory each,
// vectorized (at::vec) and multi-threaded (at::parallel_for). The math is derived in
// opslib/ops/swiglu.py; the Python kernels there call these through torch.ops.opslib_cpu.* and
// fall back to torch ops where they are not built.
//
//   forward   y        = gate * s * up                  s = sigmoid(gate) = 1 / (1 + exp(-gate))
//   backward  dL/dgate = g * up * s * (1 + gate(1 - s))
//             dL/dup   = g * gate * s
//
// Native eager makes two passes forward (silu, the product) and four backward; here each is
// one: read gate and up (and g), write y (or both gradients).
//
// dtypes: float and double (float16/bfloat16 take the torch-op path). Layouts: tensors with the
// same strides and no gaps (contiguous, transposed alike, channels-last alike) are computed as
// flat memory where they lie; any other mix runs on contiguous copies, and the results are
// copied into tensors laid out like the inputs (empty_like, what the fakes promise).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

namespace opslib {
namespace {

using at::vec::Vectorized;

// Elements per parallel task: large enough to amortize a task, small enough that a 2-core
// machine gets many of them.
constexpr int64_t kBlock = 1 << 14;

template <typename T>
void forward_span(const T* gate, const T* up, T* y, int64_t n) {
  using Vec = Vectorized<T>;
  const Vec one(T(1));
  auto step = [&](int64_t i, int64_t m) {
    const Vec z = Vec::loadu(gate + i, m);
    ((z / (one + z.neg().exp())) * Vec::loadu(up + i, m)).store(y + i, m);
  };
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) step(i, Vec::size());
  if (i < n) step(i, n - i);
}

template <typename T>
void backward_span(const T* g, const T* gate, const T* up, T* grad_gate, T* grad_up, int64_t n) {
  using Vec = Vectorized<T>;
  const Vec one(T(1));
  auto step = [&](int64_t i, int64_t m) {
    const Vec gv = Vec::loadu(g + i, m);
    const Vec z = Vec::loadu(gate + i, m);
    const Vec u = Vec::loadu(up + i, m);
    const Vec s = one / (one + z.neg().exp());
    (gv * u * s * (one + z * (one - s))).store(grad_gate + i, m);
    (gv * z * s).store(grad_up + i, m);
  };
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) step(i, Vec::size());
  if (i < n) step(i, n - i);
}

template <typename Fn>
void in_blocks(int64_t n, Fn fn) {
  at::parallel_for(0, (n + kBlock - 1) / kBlock, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t first = b * kBlock;
      fn(first, std::min(kBlock, n - first));
    }
  });
}

// Whether every tensor can be read as the same flat memory: one set of strides, no gaps.
bool laid_out_alike(const std::vector<at::Tensor>& ts) {
  if (!ts[0].is_non_overlapping_and_dense()) return false;
  for (const auto& t : ts) {
    if (t.strides() != ts[0].strides()) return false;
  }
  return true;
}

void check(bool ok, const char* what) {
  TORCH_CHECK(ok, "opslib_cpu.", what, ": unsupported arguments");
}

bool supported(const at::Tensor& t, const at::Tensor& like) {
  return t.device().is_cpu() && t.sizes() == like.sizes() &&
         t.scalar_type() == like.scalar_type() &&
         (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble);
}

}  // namespace

at::Tensor swiglu_forward_cpu(const at::Tensor& gate, const at::Tensor& up) {
  check(supported(gate, gate) && supported(up, gate), "swiglu_forward");
  const bool where_they_lie = laid_out_alike({gate, up});
  const at::Tensor gc = where_they_lie ? gate : gate.contiguous();
  const at::Tensor uc = where_they_lie ? up : up.contiguous();
  at::Tensor y = at::empty_like(gate);
  at::Tensor out = where_they_lie ? y : at::empty_like(gc);
  AT_DISPATCH_FLOATING_TYPES(gate.scalar_type(), "swiglu_fwd", [&] {
    const scalar_t* g = gc.const_data_ptr<scalar_t>();
    const scalar_t* u = uc.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    in_blocks(gate.numel(), [&](int64_t first, int64_t n) {
      forward_span<scalar_t>(g + first, u + first, o + first, n);
    });
  });
  if (!where_they_lie) y.copy_(out);
  return y;
}

std::tuple<at::Tensor, at::Tensor> swiglu_backward_cpu(const at::Tensor& grad_y,
                                                       const at::Tensor& gate,
                                                       const at::Tensor& up) {
  check(supported(gate, gate) && supported(up, gate) && supported(grad_y, gate),
        "swiglu_backward");
  const bool where_they_lie = laid_out_alike({grad_y, gate, up});
  const at::Tensor yc = where_they_lie ? grad_y : grad_y.contiguous();
  const at::Tensor gc = where_they_lie ? gate : gate.contiguous();
  const at::Tensor uc = where_they_lie ? up : up.contiguous();
  at::Tensor grad_gate = at::empty_like(gate), grad_up = at::empty_like(up);
  at::Tensor out_gate = where_they_lie ? grad_gate : at::empty_like(gc);
  at::Tensor out_up = where_they_lie ? grad_up : at::empty_like(gc);
  AT_DISPATCH_FLOATING_TYPES(gate.scalar_type(), "swiglu_bwd", [&] {
    const scalar_t* gy = yc.const_data_ptr<scalar_t>();
    const scalar_t* g = gc.const_data_ptr<scalar_t>();
    const scalar_t* u = uc.const_data_ptr<scalar_t>();
    scalar_t* og = out_gate.mutable_data_ptr<scalar_t>();
    scalar_t* ou = out_up.mutable_data_ptr<scalar_t>();
    in_blocks(gate.numel(), [&](int64_t first, int64_t n) {
      backward_span<scalar_t>(gy + first, g + first, u + first, og + first, ou + first, n);
    });
  });
  if (!where_they_lie) {
    grad_gate.copy_(out_gate);
    grad_up.copy_(out_up);
  }
  return {grad_gate, grad_up};
}

}  // namespace opslib

TORCH_LIBRARY_FRAGMENT(opslib_cpu, m) {
  m.def("swiglu_forward(Tensor gate, Tensor up) -> Tensor");
  m.def("swiglu_backward(Tensor grad_y, Tensor gate, Tensor up) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(opslib_cpu, CPU, m) {
  m.impl("swiglu_forward", &opslib::swiglu_forward_cpu);
  m.impl("swiglu_backward", &opslib::swiglu_backward_cpu);
}
