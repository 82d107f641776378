"""opslib.optim.Adam and AdamW against torch.optim's: the same training, state_dicts that load
both ways, schedulers, param groups, torch.compile of the step, and clear refusals."""

from __future__ import annotations

import itertools

import pytest
import torch

from opslib.core import cpu_kernels
from opslib.optim import Adam, AdamW

pytestmark = pytest.mark.ops("adam_step_")

NATIVE = {Adam: torch.optim.Adam, AdamW: torch.optim.AdamW}
OPTIONS = [
    dict(amsgrad=amsgrad, maximize=maximize, weight_decay=wd)
    for amsgrad, maximize, wd in itertools.product([False, True], [False, True], [0.0, 0.1])
]


def small_model(dtype=torch.float32) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.Tanh(), torch.nn.Linear(64, 5)).to(
        dtype
    )


def train(model, opt, steps: int, scheduler=None) -> list[float]:
    torch.manual_seed(1)
    x, y = torch.randn(32, 20, dtype=next(model.parameters()).dtype), torch.randn(32, 5)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = ((model(x).float() - y) ** 2).mean()
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses


def relative_distance(ours: torch.nn.Module, native: torch.nn.Module) -> float:
    """max over tensors of ‖ours − native‖ / ‖native‖."""
    return max(
        ((a - b).norm() / b.norm()).item()
        for a, b in zip(ours.parameters(), native.parameters(), strict=True)
    )


@pytest.mark.parametrize(
    "options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items())
)
@pytest.mark.parametrize("cls", [Adam, AdamW], ids=lambda c: c.__name__)
def test_200_steps_match_torch_foreach(cls, options):
    """Each parameter within 1e-6 of torch's (relative, per tensor), every option. The C++
    kernel's correctly rounded sqrt differs from ATen's by an ulp on about one element in
    40,000, and training amplifies that: torch's own fused=True lands as far from its foreach
    (the test checks that too, so the bound is not looser than torch's own spread)."""
    ours, native, fused = small_model(), small_model(), small_model()
    ours_losses = train(ours, cls(ours.parameters(), lr=1e-2, **options), 200)
    native_losses = train(
        native, NATIVE[cls](native.parameters(), lr=1e-2, foreach=True, **options), 200
    )
    train(fused, NATIVE[cls](fused.parameters(), lr=1e-2, fused=True, **options), 200)
    assert relative_distance(ours, native) < 1e-6
    assert relative_distance(fused, native) > relative_distance(ours, native) / 10
    torch.testing.assert_close(ours_losses, native_losses, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("cls", [Adam, AdamW], ids=lambda c: c.__name__)
def test_torch_op_path_is_bit_identical_to_torch_foreach(cls, monkeypatch):
    """Without the C++ kernel, the op's torch ops are foreach's ops, in its order."""
    monkeypatch.setattr(cpu_kernels, "_loaded", False)  # no C++ kernel: torch ops
    ours, native = small_model(), small_model()
    options = dict(amsgrad=True, weight_decay=0.1)
    train(ours, cls(ours.parameters(), lr=1e-2, **options), 50)
    train(native, NATIVE[cls](native.parameters(), lr=1e-2, foreach=True, **options), 50)
    for a, b in zip(ours.parameters(), native.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_parameters_at_least_as_accurate_as_torch(dtype):
    """bf16/fp16 parameters with moments in their dtype, as torch keeps them: closer to the
    float64 update of the same gradients than torch's foreach (which rounds after every op),
    and as close as torch's fused one (which, as here, rounds once)."""
    torch.manual_seed(0)
    start = torch.randn(4096).to(dtype)
    grads = [torch.randn(4096).to(dtype) for _ in range(50)]

    def run(make_opt, param_dtype):
        p = torch.nn.Parameter(start.to(param_dtype).clone())
        opt = make_opt([p])
        for g in grads:
            p.grad = g.to(param_dtype)
            opt.step()
        return p.detach().double()

    exact = run(lambda ps: torch.optim.Adam(ps, lr=1e-2, foreach=True), torch.float64)
    errors = {
        name: (run(make, dtype) - exact).abs().max().item()
        for name, make in {
            "ours": lambda ps: Adam(ps, lr=1e-2),
            "foreach": lambda ps: torch.optim.Adam(ps, lr=1e-2, foreach=True),
            "fused": lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True),
        }.items()
    }
    assert errors["ours"] <= errors["foreach"], errors
    assert errors["ours"] <= 1.5 * errors["fused"], errors


@pytest.mark.parametrize("cls", [Adam, AdamW], ids=lambda c: c.__name__)
def test_state_dict_loads_into_torch_and_back(cls):
    """Train 10 steps with ours, continue 10 with torch's from our state_dict, and the other way
    round: both end where 20 steps of one optimizer end."""
    options = dict(lr=1e-2, amsgrad=True, weight_decay=0.05)
    reference = small_model()
    reference_opt = NATIVE[cls](reference.parameters(), foreach=True, **options)
    train(reference, reference_opt, 20)
    for first, second in [(cls, NATIVE[cls]), (NATIVE[cls], cls)]:
        model = small_model()
        opt = first(model.parameters(), **options)
        train(model, opt, 10)
        state = opt.state_dict()
        resumed = second(model.parameters(), **options)
        resumed.load_state_dict(state)
        assert resumed.state_dict()["param_groups"] == state["param_groups"]
        train(model, resumed, 10)
        assert relative_distance(model, reference) < 1e-6
        step = resumed.state[next(model.parameters())]["step"]
        assert step.dtype == torch.float32 and step.item() == 20


def test_param_groups_schedulers_and_parameters_without_grad():
    torch.manual_seed(0)
    model, native = small_model(), small_model()
    frozen = [model[2].bias, native[2].bias]  # never gets a gradient: no state, not updated
    for p in frozen:
        p.requires_grad_(False)

    def groups(m):
        return [{"params": m[0].parameters(), "lr": 1e-2}, {"params": [m[2].weight, m[2].bias]}]

    ours = Adam(groups(model), lr=3e-3, betas=(0.8, 0.99), eps=1e-6)
    theirs = torch.optim.Adam(groups(native), lr=3e-3, betas=(0.8, 0.99), eps=1e-6, foreach=True)
    schedule = lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=[2e-2, 5e-3], total_steps=30)  # noqa: E731
    train(model, ours, 30, schedule(ours))
    train(native, theirs, 30, schedule(theirs))
    assert relative_distance(model, native) < 1e-6
    assert model[2].bias not in ours.state and torch.equal(model[2].bias, native[2].bias)
    assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in theirs.param_groups]


def test_closure_is_evaluated_with_grad():
    model = small_model()
    opt = Adam(model.parameters())
    x = torch.randn(4, 20)

    def closure():
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.requires_grad and opt.state[next(model.parameters())]["step"].item() == 1


@pytest.mark.parametrize("option", ["differentiable", "capturable"])
def test_unsupported_options_are_refused(option):
    with pytest.raises(ValueError, match=rf"opslib.optim.Adam: {option}=True is not supported"):
        Adam(small_model().parameters(), **{option: True})


def test_sparse_gradient_is_refused_by_the_op_and_nothing_changes():
    model = small_model()
    opt = Adam(model.parameters(), lr=0.1)
    train(model, opt, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    steps = [s["step"].clone() for s in opt.state.values()]
    model[2].bias.grad = model[2].bias.grad.to_sparse()
    with pytest.raises(
        ValueError, match=r"customgrad\.adam_step_: grads\[3\] is torch\.sparse_coo"
    ):
        opt.step()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(s["step"], t) for s, t in zip(opt.state.values(), steps, strict=True))


def _snapshot(model, opt) -> tuple[dict, dict]:
    """Copies of the parameters and of every state tensor of every parameter."""
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state = {id(p): {k: v.clone() for k, v in st.items()} for p, st in opt.state.items()}
    return params, state


def _assert_unchanged(model, opt, snapshot) -> None:
    params, state = snapshot
    for name, value in model.state_dict().items():
        assert torch.equal(value, params[name]), name
    assert {id(p) for p in opt.state} == set(state), "a refused step added or dropped state"
    for p, st in opt.state.items():
        for key, value in st.items():
            assert torch.equal(value, state[id(p)][key]), key


def _bad_second_group(kind: str, model, opt) -> None:
    """Spoils the state or gradient of the last parameter (in the second param group)."""
    last = model[2].bias
    if kind == "moment-shape":
        opt.state[last]["exp_avg"] = torch.zeros(last.numel() + 1)
    elif kind == "moment-dtype":
        opt.state[last]["exp_avg_sq"] = torch.zeros_like(last, dtype=torch.float64)
    elif kind == "sparse-grad":
        last.grad = last.grad.to_sparse()
    elif kind in ("capturable", "differentiable"):
        opt.param_groups[1][kind] = True


@pytest.mark.parametrize(
    "kind", ["moment-shape", "moment-dtype", "sparse-grad", "capturable", "differentiable"]
)
@pytest.mark.parametrize("cls", [Adam, AdamW], ids=lambda c: c.__name__)
def test_a_step_refused_in_any_group_changes_no_group(cls, kind):
    """Two param groups, the second with a bad state, a sparse gradient, or an option set
    after construction: the step raises, naming the problem, and no parameter, moment or step
    count of either group has changed (torch.optim.Adam updates the first group, then
    raises). On a first step, the state the refused step would have created is not kept."""
    for steps_before in (1, 0):
        model = small_model()
        opt = cls(
            [{"params": [model[0].weight, model[0].bias]},
             {"params": [model[2].weight, model[2].bias], "lr": 0.01}],
            lr=0.1,
        )  # fmt: skip
        train(model, opt, steps_before)
        loss = model(torch.randn(5, 20)).square().mean()
        loss.backward()
        if steps_before == 0 and kind in ("moment-shape", "moment-dtype"):
            continue  # no state yet to spoil
        _bad_second_group(kind, model, opt)
        snapshot = _snapshot(model, opt)
        with pytest.raises(ValueError, match=r"adam_step_|is not supported"):
            opt.step()
        _assert_unchanged(model, opt, snapshot)


def test_a_refused_first_step_of_one_group_keeps_no_state():
    """One param group, one op call (no pre-check): the op refuses a sparse gradient before it
    changes anything, and the state the step created for it is dropped as well."""
    model = small_model()
    opt = Adam(model.parameters(), lr=0.1)
    model(torch.randn(5, 20)).square().mean().backward()
    model[2].bias.grad = model[2].bias.grad.to_sparse()
    snapshot = _snapshot(model, opt)
    with pytest.raises(ValueError, match=r"customgrad\.adam_step_: grads\[3\] is torch\.sparse"):
        opt.step()
    _assert_unchanged(model, opt, snapshot)


@pytest.mark.parametrize("cls", [Adam, AdamW], ids=lambda c: c.__name__)
def test_compiled_step_with_a_scheduler_has_no_graph_break_and_no_recompile(cls):
    """A compiled ``optimizer.step()`` (fullgraph) with a tensor learning rate that a scheduler
    changes every step: one graph, and the same parameters as eager, bit for bit. (torch's own
    Adam breaks the graph here on purpose, and its schedulers' step wrapper stops dynamo.)"""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    results = []
    for compiled in (False, True):
        model = small_model()
        opt = cls(model.parameters(), lr=torch.tensor(1e-2), amsgrad=True)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8)
        step = torch.compile(opt.step, fullgraph=True) if compiled else opt.step
        torch.manual_seed(1)
        x, y = torch.randn(32, 20), torch.randn(32, 5)
        lrs = []
        for _ in range(8):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            step()
            scheduler.step()
            lrs.append(opt.param_groups[0]["lr"].item())
        results.append([p.detach().clone() for p in model.parameters()])
    assert len(set(lrs)) == 8
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])


def _cpp_adam_step(args: tuple) -> bool:
    """The C++ kernel on the tensor lists and flags of an ``adam_step_`` call, with the
    hyperparameters it would be given (floats)."""
    lists, hyperparameters, flags = args[:6], args[6:11], args[11:]
    return torch.ops.opslib_cpu.adam_step_(*lists, *(float(h) for h in hyperparameters), *flags)


def _copies_of_tensors(args: tuple) -> list[torch.Tensor]:
    tensors = [t for lst in args[:6] for t in lst]
    return [t.to_dense().clone() if t.layout != torch.strided else t.clone() for t in tensors]


@pytest.mark.skipif(not cpu_kernels.is_loaded(), reason="needs opslib's C++ kernels")
def test_cpp_kernel_refuses_by_itself_every_call_whose_tensors_python_refuses():
    """On the usual path the C++ kernel checks the tensors itself (``takes`` in
    opslib/csrc/adam.cpp) in place of ``_check_tensors``: the two are kept in step here. Every
    bad call of the op table that ``_check_tensors`` refuses, the C++ kernel refuses too,
    returning False with nothing changed; every sample it takes exactly when all its tensors
    are contiguous (the others go to the per-parameter paths)."""
    from opslib.ops.adam import _check_tensors
    from opslib.testing.opinfos import UPDATE_OP_TABLE

    info = next(i for i in UPDATE_OP_TABLE if i.name == "adam_step_")
    refused = 0
    for case in info.error_inputs():
        args = case.args()
        try:
            _check_tensors(*args[:6], args[11])
        except ValueError:
            before = _copies_of_tensors(args)
            assert not _cpp_adam_step(args), case.name
            for old, new in zip(before, _copies_of_tensors(args), strict=True):
                assert torch.equal(old, new), case.name
            refused += 1
    assert refused >= 8  # all but the bad hyperparameter (a Python check, before the kernel)
    for sample in info.sample_inputs("cpu", torch.float32):
        contiguous = all(t.is_contiguous() for lst in sample.args[:6] for t in lst)
        assert _cpp_adam_step(sample.args) == contiguous, sample.name
