// rms_norm's CPU kernels: the forward and the first-order backward, one pass over each row of
// x (a row: the trailing dims that normalized_shape names), vectorized (at::vec) and
// multi-threaded over rows (at::parallel_for). The math is derived in opslib/ops/rms_norm.py,
// whose Python kernels call these through torch.ops.opslib_cpu.* and fall back to torch ops.
//
//   forward   r   = 1 / sqrt(mean(x^2) + eps)                 per row
//             y   = x * r * w
//   backward  u   = w * g
//             dx  = r * u - x * (r^3 / N) * sum(u * x)        per row
//             dw  = sum over rows of g * x * r
//
// Native eager composes the forward of five kernels (pow, mean, add, rsqrt, two muls) and the
// backward of about ten, each a pass over memory; here a row is read once (forward: x; backward:
// g and x) while it is in cache, and written once.
//
// dtypes: float and double compute in their own type; float16 and bfloat16 in float, rounded
// once at the store. Row sums use 4 vector accumulators (4 * 16 floats on AVX-512); a row
// whose mean(x^2) overflows is summed again in double (inverse_rms). dw is summed in double over fixed blocks of rows, added in block order:
// the same bits whatever the number of threads.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "rows.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

namespace opslib {
namespace {

using at::vec::Vectorized;
using rows::as_compute;
using rows::dot;
using rows::kIllConditioned;
using rows::kRowsPerBlock;

// 1 / sqrt(mean(x^2) + eps) of one row: summed in T, and again in double if that overflows
// (|x| from ~1e19 in float32), where native's float32 mean of squares gives inf and then 0.
template <typename T>
double inverse_rms(const T* x, int64_t n, double eps) {
  const T mean_square = rows::dot(x, x, n) / T(n);
  const double wide = std::isfinite(mean_square) ? double(mean_square)
                                                 : rows::squared_deviations(x, 0.0, n) / double(n);
  return 1.0 / std::sqrt(wide + eps);
}

template <typename scalar_t>
void forward_rows(const scalar_t* x, const scalar_t* w, scalar_t* y, int64_t rows, int64_t n,
                  double eps) {
  using T = at::opmath_type<scalar_t>;
  using Vec = Vectorized<T>;
  std::vector<T> weight(w ? n : 0);
  if (w) at::vec::convert(w, weight.data(), n);
  at::parallel_for(0, rows, kRowsPerBlock, [&](int64_t r0, int64_t r1) {
    std::vector<T> xf(std::is_same_v<T, scalar_t> ? 0 : n), yf(n);
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = as_compute<scalar_t, T>(x + r * n, xf.data(), n);
      const T rstd = static_cast<T>(inverse_rms(xr, n, eps));
      const Vec rv(rstd);
      for (int64_t i = 0; i < n; i += Vec::size()) {
        const int64_t k = std::min<int64_t>(Vec::size(), n - i);
        Vec out = Vec::loadu(xr + i, k) * rv;
        if (w) out = out * Vec::loadu(weight.data() + i, k);
        out.store(yf.data() + i, k);
      }
      at::vec::convert(yf.data(), y + r * n, n);
    }
  });
}

template <typename scalar_t>
void backward_rows(const scalar_t* g, const scalar_t* x, const scalar_t* w, scalar_t* gx,
                   double* dw_blocks, int64_t rows, int64_t n, double eps) {
  using T = at::opmath_type<scalar_t>;
  using Vec = Vectorized<T>;
  std::vector<T> weight(w ? n : 0);
  if (w) at::vec::convert(w, weight.data(), n);
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> xf(std::is_same_v<T, scalar_t> ? 0 : n), gf(n), u(n), out(n), acc(n);
    for (int64_t b = b0; b < b1; ++b) {
      double* dw = dw_blocks ? dw_blocks + b * n : nullptr;
      std::fill(acc.begin(), acc.end(), T(0));
      for (int64_t r = b * kRowsPerBlock; r < std::min(rows, (b + 1) * kRowsPerBlock); ++r) {
        const T* xr = as_compute<scalar_t, T>(x + r * n, xf.data(), n);
        at::vec::convert(g + r * n, gf.data(), n);
        const T* ur = gf.data();
        if (w) {  // u = w * g
          for (int64_t i = 0; i < n; i += Vec::size()) {
            const int64_t k = std::min<int64_t>(Vec::size(), n - i);
            (Vec::loadu(weight.data() + i, k) * Vec::loadu(gf.data() + i, k)).store(u.data() + i, k);
          }
          ur = u.data();
        }
        // r and r³·mean(u·x) in double: r³ underflows in float32 for rows of |x| ~ 1e13
        const double rd = inverse_rms(xr, n, eps);
        const T rstd = static_cast<T>(rd);
        const T coefficient =
            static_cast<T>(rd * rd * rd * rows::dot_in_double(ur, xr, n) / double(n));
        const Vec rv(rstd), cv(coefficient);
        for (int64_t i = 0; i < n; i += Vec::size()) {
          const int64_t k = std::min<int64_t>(Vec::size(), n - i);
          const Vec xv = Vec::loadu(xr + i, k);
          (rv * Vec::loadu(ur + i, k) - xv * cv).store(out.data() + i, k);
          if (dw) {  // the block's dw terms g * x * r, in T over at most kRowsPerBlock rows
            const Vec term = Vec::loadu(gf.data() + i, k) * xv * rv;
            (Vec::loadu(acc.data() + i, k) + term).store(acc.data() + i, k);
          }
        }
        if constexpr (!std::is_same_v<T, double>) {  // cancellation: the row again in double
          const T scale = rstd * rows::max_abs(ur, n);  // the largest term of r·u - x·c
          if (!(rows::max_abs(out.data(), n) * T(kIllConditioned) >= scale) &&
              std::isfinite(scale)) {
            const double s3 = rd * rd * rd * rows::dot_in_double(ur, xr, n) / double(n);
            for (int64_t i = 0; i < n; ++i) {
              out[i] = static_cast<T>(rd * double(ur[i]) - double(xr[i]) * s3);
            }
          }
        }
        at::vec::convert(out.data(), gx + r * n, n);
      }
      if (dw) {
        for (int64_t i = 0; i < n; ++i) dw[i] = double(acc[i]);
      }
    }
  });
}

}  // namespace

// Contiguous x whose last `n` elements form a row, and a contiguous weight of n elements (or
// none), all of one floating dtype: what the kernels take (opslib/ops/rms_norm.py checks).
at::Tensor rms_norm_forward_cpu(const at::Tensor& x, int64_t n,
                                const std::optional<at::Tensor>& weight, double eps) {
  TORCH_CHECK(x.is_contiguous() && n > 0 && x.numel() % n == 0,
              "opslib_cpu.rms_norm_forward: x must be contiguous rows of n elements");
  TORCH_CHECK(!weight || (weight->is_contiguous() && weight->numel() == n &&
                          weight->scalar_type() == x.scalar_type()),
              "opslib_cpu.rms_norm_forward: weight must be n contiguous elements of x's dtype");
  at::Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rms_norm_fwd", [&] {
    forward_rows<scalar_t>(x.const_data_ptr<scalar_t>(),
                           weight ? weight->const_data_ptr<scalar_t>() : nullptr,
                           y.data_ptr<scalar_t>(), x.numel() / n, n, eps);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> rms_norm_backward_cpu(const at::Tensor& grad_y,
                                                         const at::Tensor& x, int64_t n,
                                                         const std::optional<at::Tensor>& weight,
                                                         double eps) {
  TORCH_CHECK(x.is_contiguous() && n > 0 && x.numel() % n == 0,
              "opslib_cpu.rms_norm_backward: x must be contiguous rows of n elements");
  TORCH_CHECK(grad_y.sizes() == x.sizes() && grad_y.scalar_type() == x.scalar_type(),
              "opslib_cpu.rms_norm_backward: grad_y must be like x");
  TORCH_CHECK(!weight || (weight->is_contiguous() && weight->numel() == n &&
                          weight->scalar_type() == x.scalar_type()),
              "opslib_cpu.rms_norm_backward: weight must be n contiguous elements of x's dtype");
  const at::Tensor g = grad_y.contiguous();
  at::Tensor grad_x = at::empty_like(x);
  const int64_t rows = x.numel() / n;
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  at::Tensor partial = weight ? at::zeros({std::max<int64_t>(blocks, 1), n},
                                          x.options().dtype(at::kDouble))
                              : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rms_norm_bwd", [&] {
    backward_rows<scalar_t>(g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                            weight ? weight->const_data_ptr<scalar_t>() : nullptr,
                            grad_x.data_ptr<scalar_t>(),
                            weight ? partial.data_ptr<double>() : nullptr, rows, n, eps);
  });
  at::Tensor grad_weight = at::empty({0}, x.options());
  if (weight) {  // the blocks' sums added in block order, in double: thread-independent
    at::Tensor total = at::empty({n}, x.options().dtype(at::kDouble));
    rows::sum_blocks(partial.const_data_ptr<double>(), blocks, n, total.data_ptr<double>());
    grad_weight = total.to(x.scalar_type()).view(weight->sizes());
  }
  return {grad_x, grad_weight};
}

}  // namespace opslib

TORCH_LIBRARY_FRAGMENT(opslib_cpu, m) {
  m.def("rms_norm_forward(Tensor x, int n, Tensor? weight, float eps) -> Tensor");
  m.def(
      "rms_norm_backward(Tensor grad_y, Tensor x, int n, Tensor? weight, float eps) -> "
      "(Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(opslib_cpu, CPU, m) {
  m.impl("rms_norm_forward", &opslib::rms_norm_forward_cpu);
  m.impl("rms_norm_backward", &opslib::rms_norm_backward_cpu);
}
