// layer_norm's CPU kernels: the forward and the first-order backward, each one sweep over a row
// of x (the trailing dims that normalized_shape names) while it is in cache, vectorized
// (at::vec) and multi-threaded over rows (at::parallel_for). The math is derived in
// opslib/ops/layer_norm.py, whose Python kernels call these through torch.ops.opslib_cpu.* and
// fall back to torch ops.
//
//   forward   mu  = mean(x),  var = mean((x - mu)^2),  r = 1 / sqrt(var + eps)    per row
//             y   = (x - mu) * r * w + b
//   backward  xh  = (x - mu) * r,  u = w * g
//             dx  = r * (u - mean(u) - xh * mean(u * xh))                          per row
//             dw  = sum over rows of g * xh,   db = sum over rows of g
//
// The variance is the mean of squared deviations from the row's mean (two sweeps over a row in
// cache), never mean(x^2) - mu^2, which cancels catastrophically when |mu| >> the spread. A
// row whose moments overflow is recomputed in double (see moments()).
// The backward recomputes mu and r from x instead of saving them (opslib/ops/layer_norm.py
// says why); native's fused backward reads the same x and g, plus its saved mean and rstd.
//
// dtypes: float and double compute in their own type; float16 and bfloat16 in float, rounded
// once at the store. dw and db are summed per fixed block of rows in the compute type, then in
// double in block order: the same bits whatever the number of threads.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "rows.h"

namespace opslib {
namespace {

using at::vec::Vectorized;
using rows::as_compute;
using rows::in_compute_type;
using rows::kIllConditioned;
using rows::kRowsPerBlock;

// mu and r of one row: two sweeps in T (the mean, then the squared deviations from it); a row
// whose moments overflow T (|x| from ~1e19 in float32) is done again with both accumulated in
// double (rows.h), so it gets the right answer where native gives nan.
template <typename T>
std::pair<T, T> moments(const T* x, int64_t n, double eps) {
  const T mu = rows::sum(x, n) / T(n);
  const T var = rows::squared_deviations_in(x, mu, n) / T(n);
  if (std::isfinite(var)) return {mu, T(1) / std::sqrt(var + T(eps))};
  const double mu_wide = rows::sum_in_double(x, n) / double(n);
  const double var_wide = rows::squared_deviations(x, mu_wide, n) / double(n);
  return {static_cast<T>(mu_wide), static_cast<T>(1.0 / std::sqrt(var_wide + eps))};
}

// Where a row's result is written in T: straight into the output (T is its dtype), or into a
// buffer that is rounded into it afterwards (float16/bfloat16).
template <typename scalar_t, typename T>
T* output_row(scalar_t* out, T* buffer) {
  if constexpr (std::is_same_v<T, scalar_t>) {
    return out;
  } else {
    return buffer;
  }
}

template <typename scalar_t, typename T>
void store_row(scalar_t* out, const T* row, int64_t n) {
  if constexpr (!std::is_same_v<T, scalar_t>) at::vec::convert(row, out, n);
}

template <typename scalar_t>
void forward_rows(const scalar_t* x, const scalar_t* w, const scalar_t* b, scalar_t* y,
                  int64_t rows, int64_t n, double eps) {
  using T = at::opmath_type<scalar_t>;
  using Vec = Vectorized<T>;
  const auto dtype = c10::CppTypeToScalarType<scalar_t>::value;
  const std::vector<T> weight = in_compute_type<T>(w, dtype, n);
  const std::vector<T> bias = in_compute_type<T>(b, dtype, n);
  at::parallel_for(0, rows, kRowsPerBlock, [&](int64_t r0, int64_t r1) {
    const bool half = !std::is_same_v<T, scalar_t>;
    std::vector<T> xf(half ? n : 0), yf(half ? n : 0);
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = as_compute<scalar_t, T>(x + r * n, xf.data(), n);
      T* yr = output_row<scalar_t, T>(y + r * n, yf.data());
      const auto [mu, rstd] = moments(xr, n, eps);
      const Vec mv(mu), rv(rstd);
      for (int64_t i = 0; i < n; i += Vec::size()) {  // y = (x - mu) * r * w + b
        const int64_t k = std::min<int64_t>(Vec::size(), n - i);
        Vec v = (Vec::loadu(xr + i, k) - mv) * rv;
        if (w) v = v * Vec::loadu(weight.data() + i, k);
        if (b) v = v + Vec::loadu(bias.data() + i, k);
        v.store(yr + i, k);
      }
      store_row(y + r * n, yr, n);
    }
  });
}

// dL/dx of one row computed in double throughout (for rows where float cancels, see rows.h).
template <typename T>
void backward_row_in_double(const T* x, const T* g, const T* w, T* dx, int64_t n, double eps) {
  const double mu = rows::sum_in_double(x, n) / double(n);
  const double r = 1.0 / std::sqrt(rows::squared_deviations(x, mu, n) / double(n) + eps);
  double sum_u = 0.0, sum_uxh = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double u = (w ? double(w[i]) : 1.0) * double(g[i]);
    sum_u += u;
    sum_uxh += u * (double(x[i]) - mu) * r;
  }
  const double mean_u = sum_u / double(n), mean_uxh = sum_uxh / double(n);
  for (int64_t i = 0; i < n; ++i) {
    const double u = (w ? double(w[i]) : 1.0) * double(g[i]);
    dx[i] = static_cast<T>(r * (u - mean_u - (double(x[i]) - mu) * r * mean_uxh));
  }
}

template <typename scalar_t>
void backward_rows(const scalar_t* g, const scalar_t* x, const scalar_t* w, scalar_t* gx,
                   double* dw_blocks, double* db_blocks, int64_t rows, int64_t n, double eps) {
  using T = at::opmath_type<scalar_t>;
  using Vec = Vectorized<T>;
  const auto dtype = c10::CppTypeToScalarType<scalar_t>::value;
  const std::vector<T> weight = in_compute_type<T>(w, dtype, n);
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    const bool half = !std::is_same_v<T, scalar_t>;
    std::vector<T> xf(half ? n : 0), gf(half ? n : 0), out(half ? n : 0);
    std::vector<T> acc_w(dw_blocks ? n : 0), acc_b(db_blocks ? n : 0);
    // Plain local pointers: the lambda's captured references would be reloaded from memory at
    // every iteration, since the stores to dx might alias them.
    const T* const wt = w ? weight.data() : nullptr;
    T* const aw = dw_blocks ? acc_w.data() : nullptr;
    T* const ab = db_blocks ? acc_b.data() : nullptr;
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(acc_w.begin(), acc_w.end(), T(0));
      std::fill(acc_b.begin(), acc_b.end(), T(0));
      for (int64_t r = b * kRowsPerBlock; r < std::min(rows, (b + 1) * kRowsPerBlock); ++r) {
        const T* xr = as_compute<scalar_t, T>(x + r * n, xf.data(), n);
        const T* gr = as_compute<scalar_t, T>(g + r * n, gf.data(), n);
        T* dxr = output_row<scalar_t, T>(gx + r * n, out.data());
        const auto [mu, rstd] = moments(xr, n, eps);
        const Vec mv(mu), rv(rstd);
        // One sweep for the row sums of u = w·g and u·x̂ (and the dw, db terms)...
        Vec sum_u(T(0)), sum_uxh(T(0)), largest_u(T(0));
        T tail_u = T(0), tail_uxh = T(0), tail_largest_u = T(0);
        // The next row's x and g are fetched into cache meanwhile: a row is only a few pages
        // and the hardware prefetchers stop at each page's end, leaving this memory-bound loop
        // waiting on each new page of g (measured: 1.4x native's time without it).
        const bool next = r + 1 < rows;
        const scalar_t* next_x = x + (r + 1) * n;
        const scalar_t* next_g = g + (r + 1) * n;
        int64_t i = 0;
        for (; i + Vec::size() <= n; i += Vec::size()) {
          if (next) {
            __builtin_prefetch(next_x + i);
            __builtin_prefetch(next_g + i);
          }
          const Vec gv = Vec::loadu(gr + i);
          const Vec xh = (Vec::loadu(xr + i) - mv) * rv;
          const Vec u = wt ? Vec::loadu(wt + i) * gv : gv;
          sum_u = sum_u + u;
          sum_uxh = at::vec::fmadd(u, xh, sum_uxh);
          largest_u = at::vec::maximum(largest_u, u.abs());
          if (aw) at::vec::fmadd(gv, xh, Vec::loadu(aw + i)).store(aw + i);
          if (ab) (Vec::loadu(ab + i) + gv).store(ab + i);
        }
        for (; i < n; ++i) {
          const T xh = (xr[i] - mu) * rstd, u = wt ? wt[i] * gr[i] : gr[i];
          tail_u += u;
          tail_uxh += u * xh;
          tail_largest_u = std::max(tail_largest_u, std::abs(u));
          if (aw) aw[i] += gr[i] * xh;
          if (ab) ab[i] += gr[i];
        }
        const auto reduce = [](Vec v) {
          return at::vec::vec_reduce_all<T>([](Vec& a, Vec& c) { return a + c; }, v);
        };
        const auto reduce_max = [](Vec v) {
          return at::vec::vec_reduce_all<T>(
              [](Vec& a, Vec& c) { return at::vec::maximum(a, c); }, v);
        };
        const T max_u = std::max(tail_largest_u, reduce_max(largest_u));
        const Vec mean_u((reduce(sum_u) + tail_u) / T(n));
        const Vec mean_uxh((reduce(sum_uxh) + tail_uxh) / T(n));
        // ...and one for dL/dx = r·(u - mean(u) - x̂·mean(u·x̂)), noting its largest |dx|.
        Vec largest_dx(T(0));
        int64_t j = 0;
        for (; j < n; j += Vec::size()) {
          const int64_t k = std::min<int64_t>(Vec::size(), n - j);
          const Vec gv = Vec::loadu(gr + j, k);
          const Vec u = wt ? Vec::loadu(wt + j, k) * gv : gv;
          const Vec xh = (Vec::loadu(xr + j, k) - mv) * rv;
          const Vec dx = rv * (u - mean_u - xh * mean_uxh);
          dx.store(dxr + j, k);
          if (k < Vec::size()) break;  // the lanes past k are not dx: the tail's max below
          largest_dx = at::vec::maximum(largest_dx, dx.abs());
        }
        if constexpr (!std::is_same_v<T, double>) {  // cancellation: the row again in double
          const T scale = rstd * max_u;  // the largest term of r·(u - mean(u) - x̂·mean(u·x̂))
          const T max_dx = std::max(reduce_max(largest_dx), rows::max_abs(dxr + j, n - j));
          if (!(max_dx * T(kIllConditioned) >= scale) && std::isfinite(scale)) {
            backward_row_in_double(xr, gr, wt, dxr, n, eps);
          }
        }
        store_row(gx + r * n, dxr, n);
      }
      for (int64_t j = 0; dw_blocks && j < n; ++j) dw_blocks[b * n + j] = double(acc_w[j]);
      for (int64_t j = 0; db_blocks && j < n; ++j) db_blocks[b * n + j] = double(acc_b[j]);
    }
  });
}

// The gradient of a weight or bias from the blocks' partial sums, in its dtype and shape.
at::Tensor sum_blocks(const at::Tensor& partial, int64_t blocks, int64_t n,
                      const at::Tensor& like) {
  at::Tensor total = at::empty({n}, partial.options());
  rows::sum_blocks(partial.const_data_ptr<double>(), blocks, n, total.data_ptr<double>());
  return total.to(like.scalar_type()).view(like.sizes());
}

void check_rows(const char* name, const at::Tensor& x, int64_t n,
                const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.is_contiguous() && n > 0 && x.numel() % n == 0, "opslib_cpu.", name,
              ": x must be contiguous rows of n elements");
  for (const auto* t : {&weight, &bias}) {
    TORCH_CHECK(!*t || ((*t)->is_contiguous() && (*t)->numel() == n &&
                        (*t)->scalar_type() == x.scalar_type()),
                "opslib_cpu.", name, ": weight and bias must be n contiguous elements of x's dtype");
  }
}

}  // namespace

at::Tensor layer_norm_forward_cpu(const at::Tensor& x, int64_t n,
                                  const std::optional<at::Tensor>& weight,
                                  const std::optional<at::Tensor>& bias, double eps) {
  check_rows("layer_norm_forward", x, n, weight, bias);
  at::Tensor y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ln_fwd", [&] {
    forward_rows<scalar_t>(x.const_data_ptr<scalar_t>(),
                           weight ? weight->const_data_ptr<scalar_t>() : nullptr,
                           bias ? bias->const_data_ptr<scalar_t>() : nullptr,
                           y.data_ptr<scalar_t>(), x.numel() / n, n, eps);
  });
  return y;
}

// dL/dx, and dL/dw and dL/db (empty tensors when weight or bias are absent).
std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, int64_t n,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, double eps) {
  check_rows("layer_norm_backward", x, n, weight, bias);
  TORCH_CHECK(grad_y.sizes() == x.sizes() && grad_y.scalar_type() == x.scalar_type(),
              "opslib_cpu.layer_norm_backward: grad_y must be like x");
  const at::Tensor g = grad_y.contiguous();
  at::Tensor grad_x = at::empty_like(x);
  const int64_t rows = x.numel() / n;
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  const auto partial_options = x.options().dtype(at::kDouble);
  // every block writes its whole row of partial sums: no need to zero them first
  at::Tensor dw = weight ? at::empty({std::max<int64_t>(blocks, 1), n}, partial_options)
                         : at::Tensor();
  at::Tensor db = bias ? at::empty({std::max<int64_t>(blocks, 1), n}, partial_options)
                       : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ln_bwd", [&] {
    backward_rows<scalar_t>(g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                            weight ? weight->const_data_ptr<scalar_t>() : nullptr,
                            grad_x.data_ptr<scalar_t>(), weight ? dw.data_ptr<double>() : nullptr,
                            bias ? db.data_ptr<double>() : nullptr, rows, n, eps);
  });
  const at::Tensor none = at::empty({0}, x.options());
  return {grad_x, weight ? sum_blocks(dw, blocks, n, *weight) : none,
          bias ? sum_blocks(db, blocks, n, *bias) : none};
}

}  // namespace opslib

TORCH_LIBRARY_FRAGMENT(opslib_cpu, m) {
  m.def("layer_norm_forward(Tensor x, int n, Tensor? weight, Tensor? bias, float eps) -> Tensor");
  m.def(
      "layer_norm_backward(Tensor grad_y, Tensor x, int n, Tensor? weight, Tensor? bias, "
      "float eps) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(opslib_cpu, CPU, m) {
  m.impl("layer_norm_forward", &opslib::layer_norm_forward_cpu);
  m.impl("layer_norm_backward", &opslib::layer_norm_backward_cpu);
}
