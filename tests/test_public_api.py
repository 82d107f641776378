"""The public API: the original design's classes (``Square.apply`` ...) with the values its
usage examples state, the ``opslib.nn`` modules, and memory saved for backward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_named, op_params

import opslib
from opslib import Cube, Exp, LearnedSiLU, Linear, ReLU, Sigmoid, Square, Tanh
from opslib.testing.opinfo import leaves


def _value_and_grad(fn, x0: float) -> tuple[float, float]:
    x = torch.tensor(x0, requires_grad=True)
    y = fn(x)
    y.backward()
    return y.item(), x.grad.item()


def test_design_examples_square_cube_exp_at_two():
    assert _value_and_grad(Square.apply, 2.0) == (4.0, 4.0)
    assert _value_and_grad(Cube.apply, 2.0) == (8.0, 12.0)
    y, g = _value_and_grad(Exp.apply, 2.0)
    assert y == pytest.approx(math.e**2, rel=1e-6) and g == pytest.approx(math.e**2, rel=1e-6)


@pytest.mark.parametrize(
    "cls,native",
    [(ReLU, torch.relu), (Sigmoid, torch.sigmoid), (Tanh, torch.tanh)],
    ids=["ReLU", "Sigmoid", "Tanh"],
)
def test_design_activation_classes_match_native(cls, native):
    x = torch.linspace(-3, 3, 13, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    cls.apply(x).sum().backward()
    native(x_ref).sum().backward()
    assert_close_named(x.grad, x_ref.grad, cls.__name__)


@pytest.mark.parametrize("bias_shape", [(1, 3), (4, 3)], ids=["bias[1,out]", "bias[batch,out]"])
def test_design_linear_with_its_bias_forms(bias_shape):
    x = torch.randn(4, 5, requires_grad=True)
    w = torch.randn(3, 5, requires_grad=True)
    b = torch.randn(bias_shape, requires_grad=True)
    out = Linear.apply(x, w, b)
    ref_args = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    ref = ref_args[0] @ ref_args[1].t() + ref_args[2]
    assert_close_named(out, ref, "Linear.apply")
    out.sum().backward()
    ref.sum().backward()
    for name, got, want in zip("xwb", (x, w, b), ref_args, strict=True):
        assert_close_named(got.grad, want.grad, f"Linear.apply grad {name}")


def test_design_learned_silu_class():
    x = torch.randn(6, requires_grad=True)
    slope = torch.tensor([1.5], requires_grad=True)
    y = LearnedSiLU.apply(x, slope)
    assert_close_named(y, 1.5 * x * torch.sigmoid(x), "LearnedSiLU.apply")


def test_nn_linear_is_a_torch_linear_with_the_same_init_and_state_dict():
    torch.manual_seed(0)
    ours = opslib.nn.Linear(5, 3)
    torch.manual_seed(0)
    native = torch.nn.Linear(5, 3)
    assert isinstance(ours, torch.nn.Linear)
    assert torch.equal(ours.weight, native.weight) and torch.equal(ours.bias, native.bias)
    x = torch.randn(2, 7, 5)
    assert_close_named(ours(x), native(x), "nn.Linear forward")
    plain = torch.nn.Linear(5, 3)
    ours.load_state_dict(plain.state_dict())
    assert_close_named(ours(x), plain(x), "nn.Linear after load_state_dict")
    no_bias = opslib.nn.Linear(5, 3, bias=False)
    assert no_bias.bias is None
    assert_close_named(no_bias(x), F.linear(x, no_bias.weight), "nn.Linear(bias=False)")


@pytest.mark.parametrize("num_parameters", [1, 4])
def test_nn_learned_silu_learns_its_slope(num_parameters):
    module = opslib.nn.LearnedSiLU(init=0.5, num_parameters=num_parameters)
    assert isinstance(module.slope, torch.nn.Parameter)
    assert module.slope.shape == (num_parameters,) and torch.all(module.slope == 0.5)
    x = torch.randn(3, 4)
    module(x).sum().backward()
    want = (x * torch.sigmoid(x)).sum_to_size(module.slope.shape)
    assert_close_named(module.slope.grad, want, "LearnedSiLU slope gradient")


@pytest.mark.parametrize(
    "ours,native",
    [
        (opslib.nn.ReLU(), torch.nn.ReLU()),
        (opslib.nn.Sigmoid(), torch.nn.Sigmoid()),
        (opslib.nn.Tanh(), torch.nn.Tanh()),
        (opslib.nn.Softmax(dim=0), torch.nn.Softmax(dim=0)),
        (opslib.nn.LogSoftmax(dim=-1), torch.nn.LogSoftmax(dim=-1)),
        (opslib.nn.Softmax(), torch.nn.Softmax()),  # dim=None: torch's legacy choice, warned
    ],
    ids=["ReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Softmax-dim-None"],
)
@pytest.mark.filterwarnings("ignore:Implicit dimension choice")
def test_nn_activations_match_native(ours, native):
    for x in (torch.randn(4, 5), torch.randn(2, 3, 4)):
        assert_close_named(ours(x), native(x), type(ours).__name__)
    if isinstance(native, torch.nn.Softmax | torch.nn.LogSoftmax):
        assert isinstance(ours, type(native)) and ours.state_dict() == native.state_dict()


def saved_bytes(fn, *args) -> int:
    """Bytes autograd keeps for backward, counting each storage once."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return sum(storages.values())


@pytest.mark.parametrize("info", op_params())
def test_saves_no_more_for_backward_than_native(info):
    args = leaves(info.batch_inputs(256, "cpu", torch.float32), constant=info.constant_args)
    ours, native = saved_bytes(info.func, *args), saved_bytes(info.reference, *args)
    bound = info.saved_fraction_of_native  # below 1 for fused ops: the point of fusing them
    assert ours <= bound * native, f"{info.name}: saves {ours} bytes, native {native}"


def test_nothing_is_saved_without_grad():
    x = torch.randn(64, 64, requires_grad=True)
    with torch.no_grad():
        assert saved_bytes(opslib.learned_silu, x, torch.ones(1, requires_grad=True)) == 0
    with torch.inference_mode():
        assert saved_bytes(opslib.linear, x, torch.randn(8, 64, requires_grad=True)) == 0


@pytest.mark.every_op
def test_readme_op_table_is_generated_from_the_op_table():
    from pathlib import Path

    from opslib.testing.opinfos import markdown_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert markdown_table() in readme, "regenerate with: python3 -m opslib.testing.opinfos"


def test_the_authoring_api_is_one_documented_all_that_the_example_op_uses():
    """opslib.authoring: every name in its __all__ exists and is documented (the dtypes tuple
    aside), nothing public of it is left out of __all__, and the example op of "Adding an op"
    (tests/extra_op.py) imports from it, not from opslib.core; the package ships py.typed."""
    import ast
    from pathlib import Path

    import opslib.authoring as authoring

    for name in authoring.__all__:
        value = getattr(authoring, name)
        assert name == "HALF_DTYPES" or (value.__doc__ or "").strip(), name
    public = {n for n in vars(authoring) if not n.startswith("_") and n != "annotations"}
    assert public == set(authoring.__all__)
    root = Path(__file__).resolve().parents[1]
    tree = ast.parse((root / "tests" / "extra_op.py").read_text())
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "opslib.authoring" in modules and not any(
        m and m.startswith("opslib.core") for m in modules
    )
    assert (root / "opslib" / "py.typed").exists()
