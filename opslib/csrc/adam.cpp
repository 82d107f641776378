// adam_step_'s CPU kernel: one Adam/AdamW update of each parameter and its moments, in one
// vectorized (at::vec) pass over memory, all the tensors' elements split between the threads
// in one parallel region (at::parallel_for). The update rule and the order of its roundings
// are derived in opslib/ops/adam.py, whose Python kernel calls this through
// torch.ops.opslib_cpu.adam_step_; this checks every tensor first (see takes) and hands back
// the calls it does not take.
//
// Per element, with g the gradient (negated when maximizing) and t the step after its
// increment:
//   p      = p * (1 - lr*wd)                           AdamW (decoupled weight decay)
//   g      = g + wd * p                                Adam (L2 penalty in the gradient)
//   m      = lerp(m, g, 1 - beta1)
//   v      = v * beta2 + (1 - beta2) * g * g
//   vmax   = max(vmax, v)                              amsgrad
//   p      = p - (lr / (1 - beta1^t)) * m / (sqrt(v or vmax) / sqrt(1 - beta2^t) + eps)
//
// Each line rounds where torch.optim.Adam(foreach=True) rounds (one foreach op per line). The
// one difference: sqrt here is IEEE's, correctly rounded, where ATen's CPU sqrt was measured an
// ulp off on about one element in 40,000, so results differ from torch's there. The
// coefficients are computed in double, as torch computes them in Python. float16 and bfloat16
// compute in float and round once per stored tensor (torch's foreach path rounds after every
// op, its fused path once, as here).
//
// Memory traffic per element: read p, g, m, v (and vmax), write p, m, v (and vmax).

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <unordered_set>
#include <vector>

namespace opslib {
namespace {

using at::vec::Vectorized;

// Elements per parallel task (of all the tensors' elements, counted as one index space): a
// step smaller than this runs on one thread.
constexpr int64_t kGrain = 1 << 12;
// Elements of float16/bfloat16 converted to float at a time (stack buffers).
constexpr int64_t kChunk = 512;

// The scalars of one tensor's update, in the compute type T, from torch's double arithmetic.
template <typename T>
struct Coefficients {
  T decay;           // 1 - lr*wd (AdamW) ; 1 when unused
  T l2;              // wd (Adam) ; 0 when unused
  T lerp_weight;     // 1 - beta1
  T beta2;           // beta2
  T sq_weight;       // 1 - beta2
  T bc2_sqrt;        // sqrt(1 - beta2^t)
  T eps;             // eps
  T neg_step_size;   // -lr / (1 - beta1^t)
  bool decoupled, l2_penalty, amsgrad, maximize;
};

// torch.lerp(m, g, w) as ATen computes it: fma(w, g - m, m) for |w| < 0.5, else
// fma(w - 1, g - m, g); each form is exact at its own end.
template <typename V>
V lerp(const V& m, const V& g, const V& w, const V& w_minus_one, bool small_weight) {
  return at::vec::fmadd(small_weight ? w : w_minus_one, g - m, small_weight ? m : g);
}

// The update of n contiguous elements in the compute type T (float or double).
template <typename T>
void update_span(T* p, const T* g, T* m, T* v, T* vmax, int64_t n, const Coefficients<T>& c) {
  using Vec = Vectorized<T>;
  const Vec decay(c.decay), l2(c.l2), w(c.lerp_weight), w_minus_one(c.lerp_weight - T(1));
  const Vec beta2(c.beta2), sq_weight(c.sq_weight), bc2_sqrt(c.bc2_sqrt), eps(c.eps);
  const Vec neg_step_size(c.neg_step_size);
  const bool small_weight = std::abs(c.lerp_weight) < T(0.5);
  auto step = [&](int64_t i, int64_t k) {
    Vec pv = Vec::loadu(p + i, k);
    Vec gv = Vec::loadu(g + i, k);
    if (c.maximize) gv = gv.neg();
    if (c.decoupled) pv = pv * decay;
    if (c.l2_penalty) gv = at::vec::fmadd(pv, l2, gv);  // torch.add(g, p, alpha=wd)
    const Vec mv = lerp(Vec::loadu(m + i, k), gv, w, w_minus_one, small_weight);
    Vec vv = Vec::loadu(v + i, k) * beta2;
    vv = at::vec::fmadd(sq_weight * gv, gv, vv);
    Vec second = vv;
    if (c.amsgrad) {
      second = at::vec::maximum(Vec::loadu(vmax + i, k), vv);
      second.store(vmax + i, k);
    }
    const Vec denom = second.sqrt() / bc2_sqrt + eps;
    pv = pv + neg_step_size * mv / denom;
    pv.store(p + i, k);
    mv.store(m + i, k);
    vv.store(v + i, k);
  };
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) step(i, Vec::size());
  if (i < n) step(i, n - i);
}

// Elements [begin, end) of one parameter's update.
template <typename scalar_t>
void update_range(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                  const at::Tensor& exp_avg_sq, const at::Tensor* max_exp_avg_sq,
                  const Coefficients<at::opmath_type<scalar_t>>& c, int64_t begin, int64_t end) {
  using T = at::opmath_type<scalar_t>;
  scalar_t* p = param.data_ptr<scalar_t>();
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  scalar_t* m = exp_avg.data_ptr<scalar_t>();
  scalar_t* v = exp_avg_sq.data_ptr<scalar_t>();
  scalar_t* vmax = max_exp_avg_sq ? max_exp_avg_sq->data_ptr<scalar_t>() : nullptr;
  if constexpr (std::is_same_v<T, scalar_t>) {
    update_span<T>(p + begin, g + begin, m + begin, v + begin, vmax ? vmax + begin : nullptr,
                   end - begin, c);
  } else {  // float16/bfloat16: convert a chunk to float, update it, round it once
    T pf[kChunk], gf[kChunk], mf[kChunk], vf[kChunk], vmaxf[kChunk];
    for (int64_t i = begin; i < end; i += kChunk) {
      const int64_t k = std::min(kChunk, end - i);
      at::vec::convert(p + i, pf, k);
      at::vec::convert(g + i, gf, k);
      at::vec::convert(m + i, mf, k);
      at::vec::convert(v + i, vf, k);
      if (vmax) at::vec::convert(vmax + i, vmaxf, k);
      update_span<T>(pf, gf, mf, vf, vmax ? vmaxf : nullptr, k, c);
      at::vec::convert(pf, p + i, k);
      at::vec::convert(mf, m + i, k);
      at::vec::convert(vf, v + i, k);
      if (vmax) at::vec::convert(vmaxf, vmax + i, k);
    }
  }
}

// The scalars of one tensor's update at step t, computed in double as torch computes them.
template <typename T>
Coefficients<T> coefficients(double t, double lr, double beta1, double beta2,
                             double weight_decay, double eps, bool amsgrad, bool maximize,
                             bool decoupled_weight_decay) {
  const double bias_correction1 = 1 - std::pow(beta1, t);
  const double bias_correction2 = 1 - std::pow(beta2, t);
  Coefficients<T> c{};
  c.decoupled = decoupled_weight_decay && weight_decay != 0;
  c.l2_penalty = !decoupled_weight_decay && weight_decay != 0;
  c.decay = static_cast<T>(c.decoupled ? 1 - lr * weight_decay : 1.0);
  c.l2 = static_cast<T>(weight_decay);
  c.lerp_weight = static_cast<T>(1 - beta1);
  c.beta2 = static_cast<T>(beta2);
  c.sq_weight = static_cast<T>(1 - beta2);
  c.bc2_sqrt = static_cast<T>(std::sqrt(bias_correction2));
  c.eps = static_cast<T>(eps);
  c.neg_step_size = static_cast<T>(-(lr / bias_correction1));
  c.amsgrad = amsgrad;
  c.maximize = maximize;
  return c;
}

template <typename T>
const Coefficients<T>& in_type(const Coefficients<float>& f, const Coefficients<double>& d) {
  if constexpr (std::is_same_v<T, double>) {
    return d;
  } else {
    return f;
  }
}

// t + 1, stored in the step tensor and returned: through its pointer for the float32 0-d tensor
// torch.optim keeps (a dispatched add_ and item() per parameter cost ~3 us each).
double increment_step(const at::Tensor& step) {
  if (step.scalar_type() == at::kFloat && step.is_contiguous()) {
    float* value = step.data_ptr<float>();
    *value += 1;
    return *value;
  }
  step.add_(1);
  return step.item<double>();
}

bool is_parameter_dtype(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
         dtype == at::kBFloat16;
}

bool is_dense_cpu_contiguous(const at::Tensor& t) {
  return t.layout() == at::kStrided && t.is_cpu() && t.is_contiguous();
}

// Whether this kernel takes the whole call: every check of the Python kernel's
// _check_tensors (opslib/ops/adam.py) passes, and every tensor is a dense,
// contiguous CPU tensor. Done before any tensor is updated, in C++ because an optimizer step
// passes hundreds of tensors, whose checks took ~0.3 ms a step in Python; a call refused here
// goes back to the Python kernel, which names the problem or takes another path.
bool takes(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
           at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList steps,
           bool amsgrad) {
  const size_t n = params.size();
  if (grads.size() != n || exp_avgs.size() != n || exp_avg_sqs.size() != n ||
      steps.size() != n || max_exp_avg_sqs.size() != (amsgrad ? n : 0)) {
    return false;
  }
  std::unordered_set<const c10::TensorImpl*> seen;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    if (!is_dense_cpu_contiguous(p) || !is_parameter_dtype(p.scalar_type()) ||
        !seen.insert(p.unsafeGetTensorImpl()).second) {
      return false;
    }
    for (const at::Tensor* t : {&grads[i], &exp_avgs[i], &exp_avg_sqs[i],
                                amsgrad ? &max_exp_avg_sqs[i] : nullptr}) {
      if (t != nullptr && (!is_dense_cpu_contiguous(*t) || t->sizes() != p.sizes() ||
                           t->scalar_type() != p.scalar_type())) {
        return false;
      }
    }
    const at::Tensor& step = steps[i];
    if (!is_dense_cpu_contiguous(step) || step.numel() != 1 || !step.is_floating_point()) {
      return false;
    }
  }
  return true;
}

// Updates every parameter and returns true, or returns false having changed nothing when it
// does not take the call (see takes).
bool adam_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                   at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                   at::TensorList steps, double lr, double beta1, double beta2,
                   double weight_decay, double eps, bool amsgrad, bool maximize,
                   bool decoupled_weight_decay) {
  if (!takes(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, amsgrad)) {
    return false;
  }
  // Every tensor's coefficients first (they need its step count), then one parallel region
  // over all their elements as one index space: a region per tensor would cost a fork and a
  // join each (~100 tensors a step, most of them small).
  const size_t n = params.size();
  std::vector<Coefficients<float>> as_float(n);
  std::vector<Coefficients<double>> as_double(n);
  std::vector<int64_t> starts(n + 1, 0);
  for (size_t i = 0; i < n; ++i) {
    const double t = increment_step(steps[i]);
    as_float[i] = coefficients<float>(t, lr, beta1, beta2, weight_decay, eps, amsgrad, maximize,
                                      decoupled_weight_decay);
    as_double[i] = coefficients<double>(t, lr, beta1, beta2, weight_decay, eps, amsgrad,
                                        maximize, decoupled_weight_decay);
    starts[i + 1] = starts[i] + params[i].numel();
  }
  at::parallel_for(0, starts[n], kGrain, [&](int64_t begin, int64_t end) {
    size_t i = std::upper_bound(starts.begin(), starts.end(), begin) - starts.begin() - 1;
    for (; i < n && starts[i] < end; ++i) {
      const int64_t lo = std::max(begin, starts[i]) - starts[i];
      const int64_t hi = std::min(end, starts[i + 1]) - starts[i];
      if (lo >= hi) continue;
      const at::Tensor* vmax = amsgrad ? &max_exp_avg_sqs[i] : nullptr;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[i].scalar_type(),
                                      "adam_step_", [&] {
        using T = at::opmath_type<scalar_t>;
        const Coefficients<T>& c = in_type<T>(as_float[i], as_double[i]);
        update_range<scalar_t>(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], vmax, c, lo, hi);
      });
    }
  });
  return true;
}

}  // namespace
}  // namespace opslib

TORCH_LIBRARY_FRAGMENT(opslib_cpu, m) {
  m.def(
      "adam_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] steps, float lr, "
      "float beta1, float beta2, float weight_decay, float eps, bool amsgrad, bool maximize, "
      "bool decoupled_weight_decay) -> bool");
}

// For every backend, not only CPU: the dispatcher would pick CUDA's for a call with a CUDA
// tensor in it, and this kernel answers false for such a call itself (see takes).
TORCH_LIBRARY_IMPL(opslib_cpu, CompositeExplicitAutograd, m) {
  m.impl("adam_step_", &opslib::adam_step_cpu);
}
