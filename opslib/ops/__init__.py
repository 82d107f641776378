"""The ops. Importing this package registers every ``customgrad::*`` op with torch.library.

The unary ops (those that launch the shared unary Triton kernels with a code of
``opslib/ops/triton_kernels/unary_codes.py``) share their kernels' paths: a plain CPU
call without autograd is computed in C++ by the fast path (``opslib/csrc/cpu_fast_path.cpp``:
the same ATen call as the op's Python kernel, without the trip into Python); a CUDA call in
float32, float16 or bfloat16 runs one Triton kernel forward and one backward
(``opslib/ops/triton_kernels/unary.py``); every
other call (float64 on CUDA, autograd on CPU, compile and export tracing) runs the torch ops
of the op's file.
"""

from opslib.core import cpu_kernels as _cpu_kernels
from opslib.core import sharding as _sharding
from opslib.ops.adam import adam_step_
from opslib.ops.batch_norm import batch_norm
from opslib.ops.conv import conv1d, conv2d
from opslib.ops.cross_entropy import cross_entropy
from opslib.ops.cube import cube
from opslib.ops.exp import exp
from opslib.ops.layer_norm import layer_norm
from opslib.ops.learned_silu import learned_silu
from opslib.ops.linear import linear
from opslib.ops.linear_cross_entropy import linear_cross_entropy
from opslib.ops.log_softmax import log_softmax
from opslib.ops.relu import relu
from opslib.ops.rms_norm import rms_norm
from opslib.ops.rotary_embedding import rotary_embedding
from opslib.ops.scaled_dot_product_attention import scaled_dot_product_attention
from opslib.ops.sigmoid import sigmoid
from opslib.ops.softmax import softmax
from opslib.ops.square import square
from opslib.ops.swiglu import swiglu
from opslib.ops.tanh import tanh

# After every op is defined: the C++ kernels register for ops that must already exist.
_cpu_kernels.load()
# DTensor sharding rules (declared by each op file): installed now if torch.distributed.tensor
# is imported, else when it is.
_sharding.install_when_dtensor_is_imported()
cpu_kernels_enabled = _cpu_kernels.is_loaded
cpu_fast_path_enabled = _cpu_kernels.is_loaded  # the name of earlier versions

__all__ = [
    "adam_step_",
    "cpu_fast_path_enabled",
    "cpu_kernels_enabled",
    "batch_norm",
    "conv1d",
    "conv2d",
    "cross_entropy",
    "cube",
    "exp",
    "layer_norm",
    "learned_silu",
    "linear",
    "linear_cross_entropy",
    "log_softmax",
    "relu",
    "rms_norm",
    "rotary_embedding",
    "scaled_dot_product_attention",
    "sigmoid",
    "softmax",
    "square",
    "swiglu",
    "tanh",
]
