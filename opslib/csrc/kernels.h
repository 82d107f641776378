// The C++ CPU kernels that more than one file of opslib/csrc calls.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace opslib {

// learned_silu (opslib/csrc/learned_silu.cpp): CPU tensors of one floating dtype, with one
// slope for every element or one per channel of x's last dim.
bool learned_silu_cpu_supports(const at::Tensor& x, const at::Tensor& slope);
at::Tensor learned_silu_forward_cpu(const at::Tensor& x, const at::Tensor& slope);
std::tuple<at::Tensor, at::Tensor> learned_silu_backward_cpu(const at::Tensor& grad_y,
                                                              const at::Tensor& x,
                                                              const at::Tensor& slope);

}  // namespace opslib
