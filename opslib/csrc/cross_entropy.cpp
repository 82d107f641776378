// cross_entropy's CPU kernels: the per-sample losses and the first-order backward over rows of
// logits [N, C] (contiguous), vectorized (at::vec) and multi-threaded over rows
// (at::parallel_for). The math is derived in opslib/ops/cross_entropy.py, whose Python kernels
// call these through torch.ops.opslib_cpu.* and fall back to torch ops.
//
//   forward   m = max_c x_c,  S = sum_c e^(x_c - m),  nll = log S - (x_t - m)          per row
//             loss = (1 - eps) w_t nll + (eps / C) (W log S - sum_c w_c (x_c - m))
//   backward  p_c = e^(x_c - m) / S
//             dx_c = s (a p_c - (eps / C) w_c) - s (1 - eps) w_t [c == t],
//             a = (1 - eps) w_t + (eps / C) W
//
// Forward: two sweeps over a row while it is in cache (the max; then the exponentials, summed,
// not stored) and no [N, C] output: native writes its [N, C] log-probabilities and reads them
// again. Backward: one exponential per element, written once into dx and scaled in place.
// Both at once (cross_entropy_forward_backward_, for linear_cross_entropy's chunks, whose
// per-row scales are known before the loss): the losses from the backward's own pass, one
// exponential per element instead of two. Rows whose target is ignore_index get loss 0,
// weight 0 and dx 0.
//
// dtypes: float and double compute in their own type; float16 and bfloat16 in float (each row
// converted into a buffer), dx rounded once at the store. Per-row results are double.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "rows.h"

namespace opslib {
namespace {

using at::vec::Vectorized;
using rows::as_compute;

template <typename T>
T row_max(const T* x, int64_t n) {
  using Vec = Vectorized<T>;
  // at::vec::maximum propagates nan, as native's max does (a nan logit makes the row nan)
  return at::vec::reduce_all<T>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, x, n);
}

// sum_c e^(x_c - m), and sum_c w_c (x_c - m) when smoothing needs it (w null: weights 1).
template <typename T>
std::pair<T, T> exp_sum_and_weighted_shift(const T* x, const T* w, int64_t n, T m, bool smooth) {
  using Vec = Vectorized<T>;
  const Vec mv(m);
  Vec acc_e(T(0)), acc_w(T(0));
  for (int64_t i = 0; i < n; i += Vec::size()) {
    const int64_t k = std::min<int64_t>(Vec::size(), n - i);
    const Vec d = Vec::loadu(x + i, k) - mv;
    // the lanes past k hold exp(0 - m) and the like: they are zeroed before they are added
    const Vec e = d.exp();
    acc_e = acc_e + (k == Vec::size() ? e : Vec::set(Vec(T(0)), e, k));
    if (smooth) {
      const Vec wd = w ? Vec::loadu(w + i, k) * d : d;
      acc_w = acc_w + (k == Vec::size() ? wd : Vec::set(Vec(T(0)), wd, k));
    }
  }
  const auto add = [](Vec& a, Vec& b) { return a + b; };
  return {at::vec::vec_reduce_all<T>(add, acc_e), at::vec::vec_reduce_all<T>(add, acc_w)};
}

// W = sum_c w_c, in double (n without weights).
template <typename T>
double weight_total(const T* w, int64_t n) {
  if (!w) return double(n);
  double total = 0.0;
  for (int64_t c = 0; c < n; ++c) total += double(w[c]);
  return total;
}

int64_t grain_rows(int64_t n) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1)); }

template <typename scalar_t>
void forward_rows(const scalar_t* x, const int64_t* target, const scalar_t* w_raw, int64_t rows,
                  int64_t n, int64_t ignore_index, double eps, double* losses, double* weights) {
  using T = at::opmath_type<scalar_t>;
  const std::vector<T> w =
      rows::in_compute_type<T>(w_raw, c10::CppTypeToScalarType<scalar_t>::value, n);
  const T* wp = w_raw ? w.data() : nullptr;
  const double w_total = weight_total(wp, n);
  const bool smooth = eps != 0.0;
  at::parallel_for(0, rows, grain_rows(n), [&](int64_t r0, int64_t r1) {
    std::vector<T> buffer(std::is_same_v<T, scalar_t> ? 0 : n);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = target[r];
      if (t == ignore_index) {
        losses[r] = 0.0;
        weights[r] = 0.0;
        continue;
      }
      const T* xr = as_compute<scalar_t, T>(x + r * n, buffer.data(), n);
      const T m = row_max(xr, n);
      const auto [sum_e, weighted_shift] = exp_sum_and_weighted_shift(xr, wp, n, m, smooth);
      const double log_sum = std::log(double(sum_e));
      const double w_t = wp ? double(wp[t]) : 1.0;
      double loss = (1.0 - eps) * w_t * (log_sum - double(xr[t] - m));
      if (smooth) loss += (eps / double(n)) * (w_total * log_sum - double(weighted_shift));
      losses[r] = loss;
      weights[r] = w_t;
    }
  });
}

// losses: null, or where to write each row's loss as forward_rows does (the same sums in the
// same order, so the same values), from the one exponential pass (x_t and the smoothing sum
// are read before the pass writes over x, where dx is x).
template <typename scalar_t>
void backward_rows(const double* scale, const scalar_t* x, const int64_t* target,
                   const scalar_t* w_raw, scalar_t* dx, int64_t rows, int64_t n,
                   int64_t ignore_index, double eps, double* losses = nullptr) {
  using T = at::opmath_type<scalar_t>;
  using Vec = Vectorized<T>;
  const std::vector<T> w =
      rows::in_compute_type<T>(w_raw, c10::CppTypeToScalarType<scalar_t>::value, n);
  const T* wp = w_raw ? w.data() : nullptr;
  const double w_total = weight_total(wp, n);
  at::parallel_for(0, rows, grain_rows(n), [&](int64_t r0, int64_t r1) {
    constexpr bool kHalf = !std::is_same_v<T, scalar_t>;
    std::vector<T> xbuf(kHalf ? n : 0), dbuf(kHalf ? n : 0);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = target[r];
      scalar_t* out = dx + r * n;
      if (t == ignore_index) {
        std::fill(out, out + n, scalar_t(0));
        if (losses) losses[r] = 0.0;
        continue;
      }
      const T* xr = as_compute<scalar_t, T>(x + r * n, xbuf.data(), n);
      T* dr = kHalf ? dbuf.data() : reinterpret_cast<T*>(out);
      const T m = row_max(xr, n);
      const T target_shift = xr[t] - m;  // before the pass below may write over it
      const bool smooth = losses && eps != 0.0;
      const Vec mv(m);
      Vec acc(T(0)), acc_w(T(0));
      for (int64_t i = 0; i < n; i += Vec::size()) {  // e_c = exp(x_c - m), stored and summed
        const int64_t k = std::min<int64_t>(Vec::size(), n - i);
        const Vec d = Vec::loadu(xr + i, k) - mv;
        const Vec e = d.exp();
        if (smooth) {  // sum_c w_c (x_c - m), as exp_sum_and_weighted_shift sums it
          const Vec wd = wp ? Vec::loadu(wp + i, k) * d : d;
          acc_w = acc_w + (k == Vec::size() ? wd : Vec::set(Vec(T(0)), wd, k));
        }
        e.store(dr + i, k);
        acc = acc + (k == Vec::size() ? e : Vec::set(Vec(T(0)), e, k));
      }
      const auto add = [](Vec& a, Vec& b) { return a + b; };
      const T sum_e = at::vec::vec_reduce_all<T>(add, acc);
      const double s = scale[r];
      const double w_t = wp ? double(wp[t]) : 1.0;
      if (losses) {
        const double log_sum = std::log(double(sum_e));
        double loss = (1.0 - eps) * w_t * (log_sum - double(target_shift));
        if (smooth) {
          loss += (eps / double(n)) *
                  (w_total * log_sum - double(at::vec::vec_reduce_all<T>(add, acc_w)));
        }
        losses[r] = loss;
      }
      const double a = s * ((1.0 - eps) * w_t + (eps / double(n)) * w_total);
      const Vec av(T(a / double(sum_e)));  // dx_c = a p_c - b w_c, p_c = e_c / S
      const T b = T(s * eps / double(n));
      const Vec bv(b);
      for (int64_t i = 0; i < n; i += Vec::size()) {
        const int64_t k = std::min<int64_t>(Vec::size(), n - i);
        Vec v = av * Vec::loadu(dr + i, k);
        if (eps != 0.0) v = v - (wp ? bv * Vec::loadu(wp + i, k) : bv);
        v.store(dr + i, k);
      }
      dr[t] -= T(s * (1.0 - eps) * w_t);
      if constexpr (kHalf) at::vec::convert(dr, out, n);
    }
  });
}

void check_rows(const char* name, const at::Tensor& x, const at::Tensor& target,
                const std::optional<at::Tensor>& weight) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.size(1) > 0, "opslib_cpu.", name,
              ": x must be contiguous [N, C] logits");
  TORCH_CHECK(target.dim() == 1 && target.size(0) == x.size(0) &&
                  target.scalar_type() == at::kLong,
              "opslib_cpu.", name, ": target must be [N] int64");
  TORCH_CHECK(!weight || (weight->is_contiguous() && weight->numel() == x.size(1) &&
                          weight->scalar_type() == x.scalar_type()),
              "opslib_cpu.", name, ": weight must be C contiguous elements of x's dtype");
}

}  // namespace

// (per-row losses, per-row target weights), both [N] double; targets already checked in range.
std::tuple<at::Tensor, at::Tensor> cross_entropy_forward_cpu(
    const at::Tensor& x, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, double label_smoothing) {
  check_rows("cross_entropy_forward", x, target, weight);
  const auto options = x.options().dtype(at::kDouble);
  at::Tensor losses = at::empty({x.size(0)}, options);
  at::Tensor weights = at::empty({x.size(0)}, options);
  const at::Tensor t = target.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ce_fwd", [&] {
    forward_rows<scalar_t>(x.const_data_ptr<scalar_t>(), t.const_data_ptr<int64_t>(),
                           weight ? weight->const_data_ptr<scalar_t>() : nullptr, x.size(0),
                           x.size(1), ignore_index, label_smoothing, losses.data_ptr<double>(),
                           weights.data_ptr<double>());
  });
  return {losses, weights};
}

namespace {

// dL/dx for per-row scales s = dL/dloss_i ([N] double), written into out: a new tensor, or x
// itself (each row is read before it is written, element by element, so the result is the
// same).
void backward_into(const char* name, const at::Tensor& scale, const at::Tensor& x,
                   const at::Tensor& target, const std::optional<at::Tensor>& weight,
                   int64_t ignore_index, double label_smoothing, const at::Tensor& out,
                   double* losses = nullptr) {
  check_rows(name, x, target, weight);
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == x.size(0) &&
                  scale.scalar_type() == at::kDouble && scale.is_contiguous(),
              "opslib_cpu.", name, ": scale must be [N] contiguous double");
  const at::Tensor t = target.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ce_bwd", [&] {
    backward_rows<scalar_t>(scale.const_data_ptr<double>(), x.const_data_ptr<scalar_t>(),
                            t.const_data_ptr<int64_t>(),
                            weight ? weight->const_data_ptr<scalar_t>() : nullptr,
                            out.data_ptr<scalar_t>(), x.size(0), x.size(1), ignore_index,
                            label_smoothing, losses);
  });
}

}  // namespace

at::Tensor cross_entropy_backward_cpu(const at::Tensor& scale, const at::Tensor& x,
                                      const at::Tensor& target,
                                      const std::optional<at::Tensor>& weight,
                                      int64_t ignore_index, double label_smoothing) {
  at::Tensor grad_x = at::empty_like(x);
  backward_into("cross_entropy_backward", scale, x, target, weight, ignore_index,
                label_smoothing, grad_x);
  return grad_x;
}

// Both at once, dL/dx written over x: the per-row losses ([N] double, as
// cross_entropy_forward gives them) and the gradient from one exponential per element, where
// the forward and the backward kernel make one each. For linear_cross_entropy's chunks, whose
// per-row scales are known before the loss is (1/count for "mean").
at::Tensor cross_entropy_forward_backward_inplace_cpu(const at::Tensor& scale, const at::Tensor& x,
                                                      const at::Tensor& target,
                                                      const std::optional<at::Tensor>& weight,
                                                      int64_t ignore_index,
                                                      double label_smoothing) {
  at::Tensor losses = at::empty({x.size(0)}, x.options().dtype(at::kDouble));
  backward_into("cross_entropy_forward_backward_", scale, x, target, weight, ignore_index,
                label_smoothing, x, losses.data_ptr<double>());
  return losses;
}

}  // namespace opslib

TORCH_LIBRARY_FRAGMENT(opslib_cpu, m) {
  m.def(
      "cross_entropy_forward(Tensor x, Tensor target, Tensor? weight, int ignore_index, "
      "float label_smoothing) -> (Tensor, Tensor)");
  m.def(
      "cross_entropy_backward(Tensor scale, Tensor x, Tensor target, Tensor? weight, "
      "int ignore_index, float label_smoothing) -> Tensor");
  m.def(
      "cross_entropy_forward_backward_(Tensor scale, Tensor(a!) x, Tensor target, "
      "Tensor? weight, int ignore_index, float label_smoothing) -> Tensor");
}

TORCH_LIBRARY_IMPL(opslib_cpu, CPU, m) {
  m.impl("cross_entropy_forward", &opslib::cross_entropy_forward_cpu);
  m.impl("cross_entropy_backward", &opslib::cross_entropy_backward_cpu);
  m.impl("cross_entropy_forward_backward_",
         &opslib::cross_entropy_forward_backward_inplace_cpu);
}
