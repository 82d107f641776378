// adam_step_'s CPU kernel: one Adam/AdamW update of each parameter and its moments, in one
// vectorized (at::vec), multi-threaded (at::parallel_for) pass over memory per tensor. The
// update rule and the order of its roundings are derived in opslib/ops/adam.py, whose Python
// kernel validates every tensor and calls this through torch.ops.opslib_cpu.adam_step_.
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

namespace opslib {
namespace {

using at::vec::Vectorized;

// Elements per parallel task: large enough to amortize a task, small enough that the two
// halves of a mid-sized tensor go to two threads.
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

template <typename scalar_t>
void update_tensor(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                   const at::Tensor& exp_avg_sq, const at::Tensor* max_exp_avg_sq,
                   const Coefficients<at::opmath_type<scalar_t>>& c) {
  using T = at::opmath_type<scalar_t>;
  scalar_t* p = param.data_ptr<scalar_t>();
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  scalar_t* m = exp_avg.data_ptr<scalar_t>();
  scalar_t* v = exp_avg_sq.data_ptr<scalar_t>();
  scalar_t* vmax = max_exp_avg_sq ? max_exp_avg_sq->data_ptr<scalar_t>() : nullptr;
  at::parallel_for(0, param.numel(), kGrain, [&](int64_t begin, int64_t end) {
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
  });
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

// The Python kernel (opslib/ops/adam.py) has checked every tensor: same shapes, one floating
// dtype per parameter and its state, contiguous, CPU, 0-d float steps. Here only what a wrong
// call would corrupt memory with is checked again.
void adam_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                   at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                   at::TensorList steps, double lr, double beta1, double beta2,
                   double weight_decay, double eps, bool amsgrad, bool maximize,
                   bool decoupled_weight_decay) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n &&
                  steps.size() == n && (amsgrad ? max_exp_avg_sqs.size() == n : true),
              "opslib_cpu.adam_step_: lists of different lengths");
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor* vmax = amsgrad ? &max_exp_avg_sqs[i] : nullptr;
    for (const at::Tensor* t : {&grads[i], &exp_avgs[i], &exp_avg_sqs[i], vmax}) {
      TORCH_CHECK(t == nullptr || (t->is_contiguous() && t->numel() == params[i].numel() &&
                                   t->scalar_type() == params[i].scalar_type()),
                  "opslib_cpu.adam_step_: tensor ", i, " and its state differ");
    }
    TORCH_CHECK(params[i].is_contiguous(), "opslib_cpu.adam_step_: params must be contiguous");
    const double t = increment_step(steps[i]);
    const double bias_correction1 = 1 - std::pow(beta1, t);
    const double bias_correction2 = 1 - std::pow(beta2, t);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[i].scalar_type(),
                                    "adam_step_", [&] {
      using T = at::opmath_type<scalar_t>;
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
      update_tensor<scalar_t>(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], vmax, c);
    });
  }
}

}  // namespace
}  // namespace opslib

TORCH_LIBRARY_FRAGMENT(opslib_cpu, m) {
  m.def(
      "adam_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] steps, float lr, "
      "float beta1, float beta2, float weight_decay, float eps, bool amsgrad, bool maximize, "
      "bool decoupled_weight_decay) -> ()");
}

TORCH_LIBRARY_IMPL(opslib_cpu, CPU, m) { m.impl("adam_step_", &opslib::adam_step_cpu); }
