"""Property-based tests (hypothesis) for every op of the op table.

Random shapes (0 to 5 dims, sizes 0 to 4), layouts (contiguous, transposed, offset and strided
slices, expanded/broadcast view, channels-last 4-D: the strategies of tests/fuzz.py), dtypes
(float16, bfloat16, float32, float64) and values (normal, huge, tiny, ±inf, nan). Checked against
native PyTorch on the same inputs:

- float32/float64: values and gradients agree, and nan/inf sit exactly where native puts them,
  except where native's nan is an overflow artefact of its own composite expression: there the
  op must match that expression evaluated in float64 (see ``_expected_pattern``);
- float16/bfloat16: against a float64 reference computed from the same values, the op's error
  is at most twice native's (plus one epsilon of the dtype), and the op never produces a nan or
  an inf where both native and the reference are finite.

Profiles: the default run is bounded (HYPOTHESIS_PROFILE=default, 25 examples per op);
HYPOTHESIS_PROFILE=long runs 1000 per op.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import op_params
from fuzz import property_call
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opslib.testing.opinfo import describe, leaves, requiring_grad

settings.register_profile(
    "default", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def op_inputs(info):
    """Arguments for one op (float64 master copies; cast per dtype by the test), as its OpInfo
    draws them, from the fuzzer's strategies (tests/fuzz.py: shapes, layouts, extremes)."""
    return property_call(info)


def _leaves(args, dtype, constant=()):
    return leaves(args, requires_grad=True, dtype=dtype, constant=constant)


def _run(fn, args, grad_y):
    y = fn(*args)
    inputs = requiring_grad(args)
    grads = (
        torch.autograd.grad(y, inputs, grad_y, allow_unused=True)
        if y.numel()
        else [torch.zeros_like(a) for a in inputs]
    )
    return [y.detach(), *grads]


def _nonfinite_class(t: torch.Tensor) -> torch.Tensor:
    """0 finite, 1 nan, 2 +inf, 3 -inf."""
    return torch.isnan(t) * 1 + torch.isposinf(t) * 2 + torch.isneginf(t) * 3


def _expected_pattern(native, exact, dtype, inf_limit_allowed):
    """Where nan/inf must be: native's pattern, except where native's own expression evaluated
    in float64 (rounded to dtype) has another one. There native's nan is an artefact of its
    composite (slope·x overflowing to inf, then inf·0), and the op must give what float64 gives.
    Where the op's OpInfo allows it (``inf_allowed_where_native_nan``: learned_silu with an
    infinite slope), ±inf is accepted where float64 gives nan: the op computes the limit."""
    want = _nonfinite_class(native)
    exact_class = _nonfinite_class(exact.to(dtype))
    want = torch.where(want != exact_class, exact_class, want)
    return want, (torch.isnan(exact) if inf_limit_allowed else torch.zeros_like(torch.isnan(exact)))


def _check(info, args, dtype):
    cast = _leaves(args, dtype, info.constant_args)
    native_leaves = _leaves(cast, dtype, info.constant_args)  # same rounded values
    y_shape = info.reference(*native_leaves).shape
    grad_y = torch.randn(y_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grad_y = grad_y.to(dtype)
    ours = _run(info.func, cast, grad_y)
    native = _run(info.reference, native_leaves, grad_y)
    names = ["output"] + [f"grad {i}" for i in range(len(ours) - 1)]
    what = f"{info.name} {dtype} args {[describe(a) for a in args]}"
    inf_limit_allowed = info.inf_allowed_where_native_nan(cast)
    exact_reference = info.exact_reference or info.reference
    exact = _run(exact_reference, _leaves(cast, torch.float64, info.constant_args), grad_y.double())
    if dtype in (torch.float32, torch.float64):
        for name, o, n, e in zip(names, ours, native, exact, strict=True):
            want, inf_limit_ok = _expected_pattern(n, e, dtype, inf_limit_allowed)
            got = _nonfinite_class(o)
            bad = (got != want) & ~(inf_limit_ok & (got >= 2))
            assert not bad.any(), (
                f"{what} {name}: nan/inf at {int(bad.sum())} positions where native has "
                f"another value (ours {o[bad].tolist()[:4]}, native {n[bad].tolist()[:4]})"
            )
            both_finite = (got == 0) & (want == 0)
            reference = torch.where(_nonfinite_class(n) == want, n, e.to(dtype))
            # Where the op is at least as close to the float64 value as native is, it may
            # differ from native (layer_norm of a one-element row: ours is exactly 0, native's
            # rounding is amplified by 1/sqrt(eps)); everywhere else it must match native.
            at_least_as_accurate = (o.double() - e).abs() <= (n.double() - e).abs()
            both_finite &= ~at_least_as_accurate
            torch.testing.assert_close(
                o[both_finite],
                reference[both_finite],
                atol=1e-5 if dtype == torch.float32 else 1e-10,
                rtol=1e-4 if dtype == torch.float32 else 1e-9,
                msg=lambda m, name=name: f"{what} {name}: {m}",
            )
        return
    eps = torch.finfo(dtype).eps
    for name, o, n, e in zip(names, ours, native, exact, strict=True):
        finite = torch.isfinite(n) & torch.isfinite(e)
        assert torch.isfinite(o[finite]).all(), f"{what} {name}: non-finite where native is finite"
        if finite.any():
            err = (o.double() - e)[finite].abs().max().item()
            native_err = (n.double() - e)[finite].abs().max().item()
            scale = e[finite].abs().max().item()
            assert err <= 2 * native_err + eps * max(1.0, scale), (
                f"{what} {name}: error {err:.3g} vs native {native_err:.3g} (scale {scale:.3g})"
            )


@pytest.mark.parametrize("info", op_params())
def test_op_agrees_with_native_on_random_inputs(info):
    @given(args=op_inputs(info), dtype=st.sampled_from(info.dtypes))
    def check(args, dtype):
        _check(info, args, dtype)

    check()
