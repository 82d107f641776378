// learned_silu's CPU kernels: the forward and the first-order backward, one pass over memory
// each, vectorized (at::vec) and multi-threaded (at::parallel_for). The math, and why these
// formulas, are derived in opslib/ops/learned_silu.py; the Python kernels there call these
// through torch.ops.opslib_cpu.* and fall back to torch ops where they are not built.
//
//   forward   y       = a * x * s                   s = sigmoid(x) = 1 / (1 + exp(-x))
//   backward  dL/dx   = g * a * s * (1 + x(1 - s))
//             dL/da   = sum of g * x * s over every element slope a is broadcast to
//
// Native eager computes the forward in three passes over memory (slope*x, sigmoid, the
// product) and the backward in about eight; here each is one: read x (and g), write y (or dx).
//
// Slopes: one for every element (slope.numel() == 1) or one per channel of x's last dim
// ([C]); other broadcast forms are left to the torch-op path (learned_silu_cpu_supports).
// dtypes: float and double compute in their own type; float16 and bfloat16 are converted to
// float in small chunks and rounded once when stored.
//
// The slope gradient is a sum of up to numel(x) terms: per vector lane (one slope) or per
// channel, summed in the compute type over at most 32 vectors or rows, then in double; over
// blocks of a fixed number of elements whose sums are added in block order. More accurate than
// native's float sum at every size (tested), and the same bits whatever the number of threads.

#include "kernels.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace opslib {
namespace {

using at::vec::Vectorized;

// Elements per parallel task and per partial sum: large enough to amortize a task, small
// enough that a 2-core machine gets many of them. Fixed, so results never depend on threads.
constexpr int64_t kBlock = 1 << 14;
// Vectors (one slope) or rows (per channel) summed in the compute type before adding to double.
constexpr int64_t kFlush = 32;
// Elements of float16/bfloat16 converted to float at a time (stack buffers).
constexpr int64_t kChunk = 512;

// ---- the formulas on n contiguous elements; T = float or double, the compute type ----

// y = silu(x) * a, in the order the torch-op path computes it (F.silu(x) * slope). `a` is one
// slope (kPerChannel false) or n slopes aligned with x.
template <typename T, bool kPerChannel>
void forward_span(const T* x, const T* a, T* y, int64_t n) {
  using Vec = Vectorized<T>;
  const Vec one(T(1)), a_all(a[0]);
  auto step = [&](int64_t i, int64_t m) {
    const Vec xv = Vec::loadu(x + i, m);
    const Vec av = kPerChannel ? Vec::loadu(a + i, m) : a_all;
    ((xv / (one + xv.neg().exp())) * av).store(y + i, m);
  };
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) step(i, Vec::size());
  if (i < n) step(i, n - i);
}

// gx = g * a * s * (1 + x(1 - s)); the slope gradient's terms g * x * s are added to `sum`
// (one slope: a vector of lane sums) or to row_sum[i] (per channel: n sums aligned with x).
template <typename T, bool kPerChannel>
void backward_span(const T* g, const T* x, const T* a, T* gx, Vectorized<T>* sum, T* row_sum,
                   int64_t n) {
  using Vec = Vectorized<T>;
  const Vec one(T(1)), a_all(a[0]);
  auto step = [&](int64_t i, int64_t m) {
    const Vec gv = Vec::loadu(g + i, m);
    const Vec xv = Vec::loadu(x + i, m);
    const Vec av = kPerChannel ? Vec::loadu(a + i, m) : a_all;
    const Vec s = one / (one + xv.neg().exp());
    (gv * av * s * (one + xv * (one - s))).store(gx + i, m);
    const Vec term = gv * xv * s;  // 0 in lanes past m: loadu(ptr, m) fills them with 0
    if constexpr (kPerChannel) {
      (Vec::loadu(row_sum + i, m) + term).store(row_sum + i, m);
    } else {
      *sum = *sum + term;
    }
  };
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) step(i, Vec::size());
  if (i < n) step(i, n - i);
}

// float16/bfloat16: the float formulas on chunks converted to float, rounded once at the store.
template <typename scalar_t, typename Fn>
void in_float_chunks(int64_t n, Fn fn) {
  for (int64_t i = 0; i < n; i += kChunk) fn(i, std::min(kChunk, n - i));
}

template <typename scalar_t>
void to_float(const scalar_t* src, float* dst, int64_t m) {
  for (const auto k : c10::irange(m)) dst[k] = static_cast<float>(src[k]);
}

template <typename scalar_t>
void from_float(const float* src, scalar_t* dst, int64_t m) {
  for (const auto k : c10::irange(m)) dst[k] = static_cast<scalar_t>(src[k]);
}

template <typename scalar_t, bool kPerChannel, typename T>
void forward_any(const scalar_t* x, const T* a, scalar_t* y, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, T>) {
    forward_span<T, kPerChannel>(x, a, y, n);
  } else {
    in_float_chunks<scalar_t>(n, [&](int64_t i, int64_t m) {
      float xf[kChunk], yf[kChunk];
      to_float(x + i, xf, m);
      forward_span<float, kPerChannel>(xf, kPerChannel ? a + i : a, yf, m);
      from_float(yf, y + i, m);
    });
  }
}

template <typename scalar_t, bool kPerChannel, typename T>
void backward_any(const scalar_t* g, const scalar_t* x, const T* a, scalar_t* gx,
                  Vectorized<T>* sum, T* row_sum, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, T>) {
    backward_span<T, kPerChannel>(g, x, a, gx, sum, row_sum, n);
  } else {
    in_float_chunks<scalar_t>(n, [&](int64_t i, int64_t m) {
      float gf[kChunk], xf[kChunk], gxf[kChunk];
      to_float(g + i, gf, m);
      to_float(x + i, xf, m);
      backward_span<float, kPerChannel>(gf, xf, kPerChannel ? a + i : a, gxf, sum,
                                        kPerChannel ? row_sum + i : row_sum, m);
      from_float(gxf, gx + i, m);
    });
  }
}

// ---- the loops: x (and g) contiguous, seen as [rows, channels] ----
// A single slope: the whole tensor is one long row, cut into blocks of kBlock elements.
// Per channel: blocks of whole rows, about kBlock elements each.

struct Layout {
  bool per_channel;
  int64_t rows, channels;  // one slope: rows = 1, channels = numel
  int64_t blocks, rows_per_block, block_elements;
};

Layout layout_of(const at::Tensor& x, const at::Tensor& slope) {
  if (slope.numel() == 1) {
    const int64_t n = x.numel();
    return {false, 1, n, (n + kBlock - 1) / kBlock, 1, kBlock};
  }
  const int64_t channels = x.size(-1);
  const int64_t rows = channels == 0 ? 0 : x.numel() / channels;
  const int64_t rows_per_block = std::max<int64_t>(1, kBlock / std::max<int64_t>(channels, 1));
  return {true, rows, channels, (rows + rows_per_block - 1) / rows_per_block, rows_per_block, 0};
}

// The compute type: float for float16/bfloat16, else the dtype itself.
template <typename scalar_t>
using compute_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <typename scalar_t>
void forward_loop(const Layout& l, const scalar_t* x, const compute_t<scalar_t>* a,
                  scalar_t* y) {
  at::parallel_for(0, l.blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      if (!l.per_channel) {
        const int64_t first = b * kBlock;
        forward_any<scalar_t, false>(x + first, a, y + first, std::min(kBlock, l.channels - first));
        continue;
      }
      const int64_t last = std::min(l.rows, (b + 1) * l.rows_per_block);
      for (int64_t r = b * l.rows_per_block; r < last; ++r) {
        const int64_t first = r * l.channels;
        forward_any<scalar_t, true>(x + first, a, y + first, l.channels);
      }
    }
  });
}

// Returns the slope gradient in double: one sum, or one per channel.
template <typename scalar_t>
std::vector<double> backward_loop(const Layout& l, const scalar_t* g, const scalar_t* x,
                                  const compute_t<scalar_t>* a, scalar_t* gx) {
  using T = compute_t<scalar_t>;
  using Vec = Vectorized<T>;
  const int64_t width = l.per_channel ? l.channels : 1;
  std::vector<double> partials(std::max<int64_t>(l.blocks, 1) * width, 0.0);
  at::parallel_for(0, l.blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      double* partial = partials.data() + b * width;
      if (!l.per_channel) {
        const int64_t first = b * kBlock, n = std::min(kBlock, l.channels - first);
        for (int64_t i = 0; i < n; i += kFlush * Vec::size()) {  // flush every kFlush vectors
          Vec sum(T(0));
          const int64_t m = std::min(kFlush * Vec::size(), n - i);
          backward_any<scalar_t, false, T>(g + first + i, x + first + i, a, gx + first + i, &sum,
                                        nullptr, m);
          T lanes[Vec::size()];
          sum.store(lanes);
          for (const auto k : c10::irange(Vec::size())) *partial += lanes[k];
        }
        continue;
      }
      std::vector<T> row_sum(l.channels, T(0));
      const int64_t first_row = b * l.rows_per_block;
      const int64_t last = std::min(l.rows, first_row + l.rows_per_block);
      for (int64_t r = first_row; r < last; ++r) {
        const int64_t first = r * l.channels;
        backward_any<scalar_t, true, T>(g + first, x + first, a, gx + first, nullptr,
                                     row_sum.data(), l.channels);
        if ((r - first_row + 1) % kFlush == 0 || r + 1 == last) {  // flush every kFlush rows
          for (const auto c : c10::irange(l.channels)) {
            partial[c] += row_sum[c];
            row_sum[c] = T(0);
          }
        }
      }
    }
  });
  std::vector<double> sums(width, 0.0);  // block sums, added in block order
  for (size_t b = 0; b * width < partials.size(); ++b) {
    for (const auto c : c10::irange(width)) sums[c] += partials[b * width + c];
  }
  return sums;
}

}  // namespace

bool learned_silu_cpu_supports(const at::Tensor& x, const at::Tensor& slope) {
  const auto dtype = x.scalar_type();
  const bool float_dtype = dtype == at::kFloat || dtype == at::kDouble ||
                           dtype == at::kHalf || dtype == at::kBFloat16;
  return x.device().is_cpu() && slope.device().is_cpu() && float_dtype &&
         slope.scalar_type() == dtype &&
         (slope.numel() == 1 ||
          (slope.dim() == 1 && x.dim() >= 1 && slope.size(0) == x.size(-1)));
}

at::Tensor learned_silu_forward_cpu(const at::Tensor& x, const at::Tensor& slope) {
  TORCH_CHECK(learned_silu_cpu_supports(x, slope),
              "opslib_cpu.learned_silu_forward: unsupported arguments");
  const Layout l = layout_of(x, slope);
  // The output is laid out like x (what the fake promises: empty_like(x)). A single slope
  // treats x as flat memory, so any dense layout (transposed, channels-last) is computed where
  // it lies; otherwise the kernel runs on a contiguous copy and the result is copied back.
  const bool where_it_lies =
      x.is_contiguous() || (!l.per_channel && x.is_non_overlapping_and_dense());
  const at::Tensor xc = where_it_lies ? x : x.contiguous();
  at::Tensor y = at::empty_like(x);
  at::Tensor out = where_it_lies ? y : at::empty_like(xc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "learned_silu_fwd",
                                  [&] {
    using T = compute_t<scalar_t>;
    const at::Tensor a = slope.to(c10::CppTypeToScalarType<T>::value).contiguous();
    forward_loop<scalar_t>(l, xc.const_data_ptr<scalar_t>(), a.const_data_ptr<T>(),
                           out.mutable_data_ptr<scalar_t>());
  });
  if (!where_it_lies) y.copy_(out);
  return y;
}

std::tuple<at::Tensor, at::Tensor> learned_silu_backward_cpu(const at::Tensor& grad_y,
                                                              const at::Tensor& x,
                                                              const at::Tensor& slope) {
  TORCH_CHECK(learned_silu_cpu_supports(x, slope) && grad_y.sizes() == x.sizes() &&
                  grad_y.scalar_type() == x.scalar_type() && grad_y.device().is_cpu(),
              "opslib_cpu.learned_silu_backward: unsupported arguments");
  const Layout l = layout_of(x, slope);
  const bool where_it_lies =
      (x.is_contiguous() && grad_y.is_contiguous()) ||
      (!l.per_channel && x.is_non_overlapping_and_dense() && grad_y.strides() == x.strides());
  const at::Tensor xc = where_it_lies ? x : x.contiguous();
  const at::Tensor gc = where_it_lies ? grad_y : grad_y.contiguous();
  at::Tensor grad_x = at::empty_like(x);
  at::Tensor out = where_it_lies ? grad_x : at::empty_like(xc);
  std::vector<double> sums;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "learned_silu_bwd",
                                  [&] {
    using T = compute_t<scalar_t>;
    const at::Tensor a = slope.to(c10::CppTypeToScalarType<T>::value).contiguous();
    sums = backward_loop<scalar_t>(l, gc.const_data_ptr<scalar_t>(),
                                   xc.const_data_ptr<scalar_t>(), a.const_data_ptr<T>(),
                                   out.mutable_data_ptr<scalar_t>());
  });
  if (!where_it_lies) grad_x.copy_(out);
  at::Tensor grad_slope =
      at::tensor(c10::ArrayRef<double>(sums), at::TensorOptions().dtype(at::kDouble))
          .to(slope.scalar_type())
          .reshape(slope.sizes());
  return {grad_x, grad_slope};
}

}  // namespace opslib

TORCH_LIBRARY_FRAGMENT(opslib_cpu, m) {
  m.def("learned_silu_forward(Tensor x, Tensor slope) -> Tensor");
  m.def("learned_silu_backward(Tensor grad_y, Tensor x, Tensor slope) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(opslib_cpu, CPU, m) {
  m.impl("learned_silu_forward", &opslib::learned_silu_forward_cpu);
  m.impl("learned_silu_backward", &opslib::learned_silu_backward_cpu);
}
