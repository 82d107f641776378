// The C++ CPU kernels that more than one file of opslib/csrc calls.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace opslib {

// learned_silu (opslib/csrc/learned_silu.cpp): CPU tensors of one floating dtype, with one
// slope for every element or one per channel of x's last dim.
bool learned_silu_cpu_supports(const at::Tensor& x, const at::Tensor& slope);
at::Tensor learned_silu_forward_cpu(const at::Tensor& x, const at::Tensor& slope);
std::tuple<at::Tensor, at::Tensor> learned_silu_backward_cpu(const at::Tensor& grad_y,
                                                              const at::Tensor& x,
                                                              const at::Tensor& slope);

// rms_norm and layer_norm (rms_norm.cpp, layer_norm.cpp): contiguous rows of n elements of x,
// weight and bias of n contiguous elements of x's dtype.
at::Tensor rms_norm_forward_cpu(const at::Tensor& x, int64_t n,
                                const std::optional<at::Tensor>& weight, double eps);
at::Tensor layer_norm_forward_cpu(const at::Tensor& x, int64_t n,
                                  const std::optional<at::Tensor>& weight,
                                  const std::optional<at::Tensor>& bias, double eps);

}  // namespace opslib
