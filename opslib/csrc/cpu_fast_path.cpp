// The CPU fast path of the customgrad ops: calls that need no autograd, handled in C++.
//
// Why: each op's kernel is Python (opslib/ops/<name>.py), and one trip from the dispatcher
// into Python costs ~2 us, more than a whole native op on a small tensor (torch.relu on 16
// floats: ~1.1 us). So each op also gets a kernel at the AutogradCPU dispatch key, written here:
//
//   - a plain call (dense floating-point CPU tensors, none needing a gradient, no
//     forward-mode tangent, no tensor subclass, TorchDispatchMode or functorch transform in
//     the way) whose arguments are valid is computed right here, with the same ATen call as
//     the op's Python kernel, and returns;
//   - every other call goes, untouched, to the op's Python autograd kernel
//     (opslib/core/registration.py), which does the rest: autograd, validation and its error
//     messages, tracing (compile, export, vmap), CUDA.
//
// So this file decides only "plain and valid, or not"; it never raises. When in doubt it hands
// the call over: the Python path is always correct, just slower.
//
// The hand-over: the Python autograd kernel is registered for the Autograd alias key, which
// gives it every autograd key's slot; this file takes over only AutogradCPU's. Redispatching to
// AutogradOther, a slot the Python kernel still holds, runs it with the same arguments.

#include "kernels.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

namespace {

using c10::DispatchKey;
using c10::DispatchKeySet;
using torch::jit::Stack;

// The dispatch keys of a call on plain dense CPU tensors. Anything more (Python for
// subclasses and modes, Functionalize, functorch, Conjugate, a second device...) is not plain.
const DispatchKeySet kPlainCpuCall({DispatchKey::CPU, DispatchKey::AutogradCPU,
                                    DispatchKey::ADInplaceOrView});

// What check_floating_input (opslib/core/checks.py) accepts without a word, and with no
// gradient to record.
bool plain_float(const at::Tensor& t) {
  const auto dtype = t.scalar_type();
  return t.layout() == c10::kStrided &&
         (dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
          dtype == at::kBFloat16) &&
         !(c10::GradMode::is_enabled() && t.requires_grad()) &&
         !t._fw_grad(/*level=*/0).defined();
}

// broadcasts_to in opslib/core/checks.py: `shape` broadcasts to `target` without enlarging it.
bool broadcasts_to(c10::IntArrayRef shape, c10::IntArrayRef target) {
  if (shape.size() > target.size()) return false;
  const size_t offset = target.size() - shape.size();
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] != 1 && shape[i] != target[offset + i]) return false;
  }
  return true;
}

void to_python_kernel(const c10::OperatorHandle& op, DispatchKeySet keys, Stack* stack) {
  op.redispatchBoxed(
      DispatchKeySet(DispatchKey::AutogradOther) | (keys & c10::after_autograd_keyset), stack);
}

void replace_arguments_with(Stack* stack, size_t num_arguments, at::Tensor result) {
  torch::jit::drop(*stack, num_arguments);
  stack->emplace_back(std::move(result));
}

// ---- one-input elementwise ops: the CPU line of each Python kernel ----

at::Tensor square(const at::Tensor& x) { return x * x; }
at::Tensor cube(const at::Tensor& x) { return at::pow(x, 3); }
at::Tensor exp(const at::Tensor& x) { return at::exp(x); }
at::Tensor relu(const at::Tensor& x) { return at::relu(x); }
at::Tensor sigmoid(const at::Tensor& x) { return at::sigmoid(x); }
at::Tensor tanh(const at::Tensor& x) { return at::tanh(x); }

template <at::Tensor (*formula)(const at::Tensor&)>
void unary(const c10::OperatorHandle& op, DispatchKeySet keys, Stack* stack) {
  if (kPlainCpuCall.isSupersetOf(keys)) {
    const at::Tensor& x = stack->back().toTensor();
    if (plain_float(x)) return replace_arguments_with(stack, 1, formula(x));
  }
  to_python_kernel(op, keys, stack);
}

// ---- linear(x, weight, bias=None): the common forms only ----
// No bias, or a [out] bias; other bias forms, and anything _check_linear would reject, take
// the Python kernel.

void linear(const c10::OperatorHandle& op, DispatchKeySet keys, Stack* stack) {
  if (kPlainCpuCall.isSupersetOf(keys)) {
    const size_t n = stack->size();
    const at::Tensor& x = (*stack)[n - 3].toTensor();
    const at::Tensor& weight = (*stack)[n - 2].toTensor();
    const c10::IValue& bias_arg = (*stack)[n - 1];
    bool valid = plain_float(x) && plain_float(weight) &&
                 weight.scalar_type() == x.scalar_type() && weight.dim() == 2 &&
                 x.dim() >= 1 && x.size(-1) == weight.size(1);
    std::optional<at::Tensor> bias;
    if (valid && !bias_arg.isNone()) {
      const at::Tensor& b = bias_arg.toTensor();
      valid = plain_float(b) && b.scalar_type() == x.scalar_type() && b.dim() == 1 &&
              b.size(0) == weight.size(0);
      bias = b;
    }
    if (valid) return replace_arguments_with(stack, 3, at::linear(x, weight, bias));
  }
  to_python_kernel(op, keys, stack);
}

// ---- learned_silu(x, slope): the fused kernel of learned_silu.cpp, as the Python kernel ----
// One slope or one per channel of the last dim; other slope forms take the Python kernel.

void learned_silu(const c10::OperatorHandle& op, DispatchKeySet keys, Stack* stack) {
  if (kPlainCpuCall.isSupersetOf(keys)) {
    const size_t n = stack->size();
    const at::Tensor& x = (*stack)[n - 2].toTensor();
    const at::Tensor& slope = (*stack)[n - 1].toTensor();
    if (plain_float(x) && plain_float(slope) && broadcasts_to(slope.sizes(), x.sizes()) &&
        opslib::learned_silu_cpu_supports(x, slope)) {
      return replace_arguments_with(stack, 2, opslib::learned_silu_forward_cpu(x, slope));
    }
  }
  to_python_kernel(op, keys, stack);
}

// ---- softmax(x, dim), log_softmax(x, dim): native's kernels, as the Python kernels ----
// A dim out of range takes the Python kernel (which raises the op's own error).

template <at::Tensor (*formula)(const at::Tensor&, int64_t, std::optional<at::ScalarType>)>
void along_dim(const c10::OperatorHandle& op, DispatchKeySet keys, Stack* stack) {
  if (kPlainCpuCall.isSupersetOf(keys)) {
    const size_t n = stack->size();
    const at::Tensor& x = (*stack)[n - 2].toTensor();
    const int64_t dim = (*stack)[n - 1].toInt();
    const int64_t rank = std::max<int64_t>(x.dim(), 1);
    if (plain_float(x) && -rank <= dim && dim < rank) {
      return replace_arguments_with(stack, 2, formula(x, dim, std::nullopt));
    }
  }
  to_python_kernel(op, keys, stack);
}

// ---- rms_norm(x, normalized_shape, weight, eps), layer_norm(x, ..., weight, bias, eps) ----
// The fused C++ forwards of rms_norm.cpp and layer_norm.cpp, for contiguous rows and what
// _check_rms_norm / _check_layer_norm accept; everything else takes the Python kernel.

// normalized_shape is x's trailing dims (at least one, none empty); n: their product.
std::optional<int64_t> row_size(const at::Tensor& x, const std::vector<int64_t>& shape) {
  const int64_t k = static_cast<int64_t>(shape.size());
  if (k == 0 || k > x.dim() || x.numel() == 0 || !x.is_contiguous()) return std::nullopt;
  int64_t n = 1;
  for (int64_t i = 0; i < k; ++i) {
    if (x.size(x.dim() - k + i) != shape[i]) return std::nullopt;
    n *= shape[i];
  }
  return n;
}

// An optional weight or bias: absent, or a plain contiguous tensor of x's dtype and the shape.
bool plain_affine(const c10::IValue& arg, const at::Tensor& x, const std::vector<int64_t>& shape,
                  std::optional<at::Tensor>& out) {
  if (arg.isNone()) return true;
  const at::Tensor& t = arg.toTensor();
  if (!plain_float(t) || t.scalar_type() != x.scalar_type() || !t.is_contiguous() ||
      t.sizes() != c10::IntArrayRef(shape)) {
    return false;
  }
  out = t;
  return true;
}

bool valid_eps(double eps) { return std::isfinite(eps) && eps >= 0; }

void rms_norm(const c10::OperatorHandle& op, DispatchKeySet keys, Stack* stack) {
  if (kPlainCpuCall.isSupersetOf(keys)) {
    const size_t n = stack->size();
    const at::Tensor& x = (*stack)[n - 4].toTensor();
    const std::vector<int64_t> shape = (*stack)[n - 3].toIntVector();
    const c10::IValue& eps_arg = (*stack)[n - 1];
    // eps=None: the epsilon of the compute dtype (float32 for float16/bfloat16), as native
    const double eps = eps_arg.isNone() ? (x.scalar_type() == at::kDouble
                                               ? std::numeric_limits<double>::epsilon()
                                               : std::numeric_limits<float>::epsilon())
                                        : eps_arg.toDouble();
    std::optional<at::Tensor> weight;
    const std::optional<int64_t> row = plain_float(x) ? row_size(x, shape) : std::nullopt;
    if (row && plain_affine((*stack)[n - 2], x, shape, weight) && valid_eps(eps)) {
      return replace_arguments_with(stack, 4, opslib::rms_norm_forward_cpu(x, *row, weight, eps));
    }
  }
  to_python_kernel(op, keys, stack);
}

void layer_norm(const c10::OperatorHandle& op, DispatchKeySet keys, Stack* stack) {
  if (kPlainCpuCall.isSupersetOf(keys)) {
    const size_t n = stack->size();
    const at::Tensor& x = (*stack)[n - 5].toTensor();
    const std::vector<int64_t> shape = (*stack)[n - 4].toIntVector();
    const double eps = (*stack)[n - 1].toDouble();
    std::optional<at::Tensor> weight, bias;
    const std::optional<int64_t> row = plain_float(x) ? row_size(x, shape) : std::nullopt;
    if (row && plain_affine((*stack)[n - 3], x, shape, weight) &&
        plain_affine((*stack)[n - 2], x, shape, bias) && valid_eps(eps)) {
      return replace_arguments_with(
          stack, 5, opslib::layer_norm_forward_cpu(x, *row, weight, bias, eps));
    }
  }
  to_python_kernel(op, keys, stack);
}

}  // namespace

TORCH_LIBRARY_IMPL(customgrad, AutogradCPU, m) {
  m.impl("square", torch::CppFunction::makeFromBoxedFunction<&unary<&square>>());
  m.impl("cube", torch::CppFunction::makeFromBoxedFunction<&unary<&cube>>());
  m.impl("exp", torch::CppFunction::makeFromBoxedFunction<&unary<&exp>>());
  m.impl("relu", torch::CppFunction::makeFromBoxedFunction<&unary<&relu>>());
  m.impl("sigmoid", torch::CppFunction::makeFromBoxedFunction<&unary<&sigmoid>>());
  m.impl("tanh", torch::CppFunction::makeFromBoxedFunction<&unary<&tanh>>());
  m.impl("linear", torch::CppFunction::makeFromBoxedFunction<&linear>());
  m.impl("learned_silu", torch::CppFunction::makeFromBoxedFunction<&learned_silu>());
  m.impl("softmax", torch::CppFunction::makeFromBoxedFunction<&along_dim<&at::softmax>>());
  m.impl("rms_norm", torch::CppFunction::makeFromBoxedFunction<&rms_norm>());
  m.impl("layer_norm", torch::CppFunction::makeFromBoxedFunction<&layer_norm>());
  m.impl("log_softmax",
         torch::CppFunction::makeFromBoxedFunction<&along_dim<&at::log_softmax>>());
}
