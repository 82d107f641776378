// The opslib_cpu library: the C++ kernels' own ops (torch.ops.opslib_cpu.*), which the Python
// kernels of opslib/ops call. Declared once here; each kernel file adds its ops' schemas with a
// TORCH_LIBRARY_FRAGMENT and their CPU kernels with a TORCH_LIBRARY_IMPL, beside the code.

#include <torch/library.h>

TORCH_LIBRARY(opslib_cpu, m) {}
