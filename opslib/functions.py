"""The original design's autograd-Function-style classes, kept so its code runs unchanged.

The design wrote each op as a ``torch.autograd.Function`` and called it as ``Square.apply(x)``.
Here ``apply`` is the registered custom op, so code written against the design keeps working
after changing only its import line, and gains compile, export and ONNX support::

    from opslib import Square, Linear        # was: from simple import Square, ...
    y = Square.apply(x)
    out = Linear.apply(x, weight, bias)      # bias [out], [1, out] or [batch, out]

The gradients themselves live with each op in ``opslib/ops/<name>.py``.
"""

from __future__ import annotations

from opslib import ops


class Square:
    """y = x²; ``Square.apply(x)``."""

    apply = staticmethod(ops.square)


class Cube:
    """y = x³; ``Cube.apply(x)``."""

    apply = staticmethod(ops.cube)


class Exp:
    """y = eˣ; ``Exp.apply(x)``."""

    apply = staticmethod(ops.exp)


class Linear:
    """y = x Wᵀ + b; ``Linear.apply(x, weight, bias=None)``."""

    apply = staticmethod(ops.linear)


class ReLU:
    """y = max(x, 0); ``ReLU.apply(x)``."""

    apply = staticmethod(ops.relu)


class Sigmoid:
    """y = 1 / (1 + e⁻ˣ); ``Sigmoid.apply(x)``."""

    apply = staticmethod(ops.sigmoid)


class Tanh:
    """y = tanh(x); ``Tanh.apply(x)``."""

    apply = staticmethod(ops.tanh)


class LearnedSiLU:
    """y = slope · x · sigmoid(x); ``LearnedSiLU.apply(x, slope)``."""

    apply = staticmethod(ops.learned_silu)
