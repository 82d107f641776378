"""The op contract's families of checks, each a plain function of an ``OpInfo``.

Each family turns an ``OpInfo`` into ``Case``s: one check of one sample, dtype or bad call,
which raises ``AssertionError`` (with the numbers) when the op breaks the contract, or
``NotApplicable`` when the check has nothing to check (a sample without gradients, an op with
no ONNX translation). ``check_op`` and the pytest form (``opslib.testing``) run them.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from opslib.testing.opinfo import (
    OpInfo,
    Sample,
    among_tensors,
    fresh_leaves,
    grads_of,
    leaves,
    requiring_grad,
)
from opslib.testing.support import (
    ALL_OPCHECK_TESTS,
    assert_close_named,
    bind_constants,
    error_chain,
    error_in_chain,
    max_error,
)

HALF_DTYPES = (torch.float16, torch.bfloat16)
BATCHES_AFTER_WARMUP = (3, 8, 64)  # compile: batch sizes that must reuse the first compile
FLOAT64_TOL = (1e-10, 1e-10)  # reference in float64: both sides compute in float64


class NotApplicable(Exception):
    """The check has nothing to check for this op or sample (skipped, with the reason)."""


@dataclass(frozen=True)
class Case:
    """One check: a family run on one sample, dtype or bad call of one op."""

    family: str
    info: OpInfo
    what: str  # the sample, dtype or bad call checked
    check: Callable[[], None]

    @property
    def id(self) -> str:
        return f"{self.info.label}-{self.family}-{self.what}"

    def run(self) -> None:
        """Run the check; under pytest a ``NotApplicable`` becomes a skip."""
        try:
            self.check()
        except NotApplicable as reason:
            pytest = _pytest_if_running()
            if pytest is None:
                raise
            pytest.skip(str(reason))


def _pytest_if_running() -> Any:
    import sys

    return sys.modules.get("pytest") if "_pytest.runner" in sys.modules else None


# ---- samples ----


def sample_at(info: OpInfo, index: int, device: Any, dtype: torch.dtype, requires_grad=True):
    """Sample ``index`` of the op, drawn from a seed of its own (a failure reproduces alone)."""
    torch.manual_seed(1000 + index)
    return info.sample_inputs(device, dtype, requires_grad)[index]


def _transposed_in_memory(a: Any) -> Any:
    """The same values, laid out transposed (column-major in the last two dims)."""
    if isinstance(a, Tensor) and a.dim() >= 2 and a.is_floating_point():
        return a.detach().mT.contiguous().mT.requires_grad_(a.requires_grad)
    return a


def _relaid(sample: Sample) -> Sample | None:
    """The sample with its matrices transposed in memory, or None if it has none to lay out
    otherwise: a kernel must give the same result, and its fake the kernel's strides."""
    if not any(
        isinstance(a, Tensor) and a.dim() >= 2 and a.is_contiguous() and min(a.shape[-2:]) > 1
        for a in sample.args
    ):
        return None
    args = tuple(_transposed_in_memory(a) for a in sample.args)
    return Sample(f"{sample.name}/transposed", args, sample.kwargs)


def _sample_getters(info: OpInfo) -> list[tuple[str, Callable[..., Sample]]]:
    """(name, get(device, dtype, requires_grad)) for each sample, and each sample re-laid out."""
    getters = []
    for index, sample in enumerate(info.sample_inputs("cpu", torch.float32, True)):

        def get(device, dtype, requires_grad=True, index=index) -> Sample:
            return sample_at(info, index, device, dtype, requires_grad)

        getters.append((sample.name, get))
        if _relaid(sample) is not None:

            def get_relaid(device, dtype, requires_grad=True, get=get) -> Sample:
                return _relaid(get(device, dtype, requires_grad))

            getters.append((f"{sample.name}/transposed", get_relaid))
    return getters


def _call(func: Callable[..., Any], sample: Sample, args: tuple | None = None) -> Any:
    return func(*(sample.args if args is None else args), **sample.kwargs)


def _outputs(y: Any) -> list[Tensor]:
    return [t for t in (y if isinstance(y, (tuple, list)) else (y,)) if isinstance(t, Tensor)]


def _differentiable(outputs: list[Tensor]) -> list[Tensor]:
    return [t for t in outputs if t.requires_grad]


def _backward(outputs: list[Tensor], grads: list[Tensor]) -> None:
    torch.autograd.backward(outputs, grads)


# ---- the families ----


def opcheck_cases(info: OpInfo) -> Iterator[Case]:
    """torch.library.opcheck with all five checks: schema, autograd registration, the fake
    against the kernel (shapes, strides, dtypes), AOT dispatch static and dynamic. Every sample
    in float32, and the first in each other dtype of the op (a kernel's dtype may differ from
    its fake's in one dtype only)."""
    getters = _sample_getters(info)
    for k, (name, get) in enumerate(getters):
        others = [d for d in info.dtypes if d != torch.float32] if k == 0 else []
        for dtype in [torch.float32, *others]:

            def check(get=get, dtype=dtype) -> None:
                sample = get("cpu", dtype)
                try:
                    result = torch.library.opcheck(
                        info.op, sample.args, sample.kwargs, test_utils=ALL_OPCHECK_TESTS
                    )
                except Exception as err:
                    raise AssertionError(f"{info.label}/{sample} {dtype}: opcheck: {err}") from err
                assert result == dict.fromkeys(ALL_OPCHECK_TESTS, "SUCCESS"), result

            yield Case("opcheck", info, name if dtype == torch.float32 else
                       f"{name}-{str(dtype)[6:]}", check)  # fmt: skip


def _compare_with_reference(info: OpInfo, sample: Sample, what: str, tol: dict) -> None:
    args = sample.args
    ref_args = fresh_leaves(args)
    ys = _outputs(_call(info.call, sample))
    refs = _outputs(info.reference(*ref_args, **sample.kwargs))
    assert len(ys) == len(refs), f"{what}: {len(ys)} outputs, the reference {len(refs)}"
    for k, (y, ref) in enumerate(zip(ys, refs, strict=True)):
        assert y.shape == ref.shape and y.dtype == ref.dtype, (
            f"{what} output {k}: {y.dtype} {list(y.shape)}, the reference's "
            f"{ref.dtype} {list(ref.shape)}"
        )
        assert_close_named(y, ref, f"{what} output {k}", **tol)
        assert not any(
            y.untyped_storage().data_ptr() == a.untyped_storage().data_ptr()
            for a in args
            if isinstance(a, Tensor) and a.numel() > 0 and y.numel() > 0
        ), f"{what}: output {k} aliases an input"
    pairs = [(y, r) for y, r in zip(ys, refs, strict=True) if y.requires_grad and r.requires_grad]
    if not pairs:
        return
    grads = [torch.randn_like(r) for _, r in pairs]
    _backward([y for y, _ in pairs], grads)
    _backward([r for _, r in pairs], grads)
    for i, (g, g_ref) in enumerate(zip(grads_of(args), grads_of(ref_args), strict=True)):
        assert (g is None) == (g_ref is None), f"{what} gradient of input {i}: {g} vs {g_ref}"
        if g is not None:
            assert_close_named(g, g_ref, f"{what} gradient of input {i}", **tol)


def low_precision_check(info: OpInfo, sample: Sample, dtype: torch.dtype, what: str) -> None:
    """flash-attention's rule: the op's error against a float64 reference at most twice native's
    own error in the same dtype, plus one unit of the dtype's epsilon (for gradients, of the
    largest gradient: they are sums, whose rounding scales with them)."""
    eps = torch.finfo(dtype).eps
    low = fresh_leaves(sample.args, dtype)
    exact_in = fresh_leaves(low, torch.float64)  # the very same values, in float64
    native_in = fresh_leaves(low)
    ys = _outputs(_call(info.call, sample, low))
    exact = _outputs(info.reference(*exact_in, **sample.kwargs))
    native = _outputs(info.reference(*native_in, **sample.kwargs))
    for k, (y, e, n) in enumerate(zip(ys, exact, native, strict=True)):
        assert y.dtype == n.dtype, f"{what} output {k}: {y.dtype}, native {n.dtype}"
        if not y.is_floating_point():
            continue
        err, native_err = max_error(y, e), max_error(n, e)
        assert err <= 2 * native_err + eps, (
            f"{what} output {k}: error {err:.3g}, native's {native_err:.3g}"
        )
    triples = [
        (y, e, n)
        for y, e, n in zip(ys, exact, native, strict=True)
        if y.requires_grad and e.requires_grad
    ]
    if not triples:
        return
    grads = [torch.randn(y.shape, dtype=y.dtype) for y, _, _ in triples]
    _backward([y for y, _, _ in triples], grads)
    _backward([e for _, e, _ in triples], [g.double() for g in grads])
    _backward([n for _, _, n in triples], grads)
    for i, (g, g_exact, g_native) in enumerate(
        zip(grads_of(low), grads_of(exact_in), grads_of(native_in), strict=True)
    ):
        if g is None or g_native is None:
            assert g is None and g_native is None, f"{what} gradient of input {i}: missing"
            continue
        err, native_err = max_error(g, g_exact), max_error(g_native, g_exact)
        scale = g_exact.abs().max().item() if g_exact.numel() else 0.0
        assert err <= 2 * native_err + eps * max(1.0, scale), (
            f"{what} gradient of input {i}: error {err:.3g}, native's {native_err:.3g}"
        )


def reference_cases(info: OpInfo) -> Iterator[Case]:
    """Values, dtypes, shapes and gradients against the reference: float32 (``float32_tol``)
    and float64 on every sample; bfloat16/float16 by flash-attention's rule."""
    for name, get in _sample_getters(info):
        for dtype in (torch.float32, torch.float64):
            if dtype not in info.dtypes:
                continue
            atol, rtol = info.float32_tol if dtype == torch.float32 else FLOAT64_TOL

            def check(get=get, dtype=dtype, atol=atol, rtol=rtol) -> None:
                sample = get("cpu", dtype)
                what = f"{info.label}/{sample} {dtype}"
                _compare_with_reference(info, sample, what, {"atol": atol, "rtol": rtol})

            yield Case("reference", info, f"{name}-{str(dtype)[6:]}", check)
        for dtype in (d for d in HALF_DTYPES if d in info.dtypes):

            def check_low(get=get, dtype=dtype) -> None:
                sample = get("cpu", torch.float32)
                low_precision_check(info, sample, dtype, f"{info.label}/{sample} {dtype}")

            yield Case("reference", info, f"{name}-{str(dtype)[6:]}", check_low)


def gradcheck_args(args: tuple) -> tuple:
    """gradcheck perturbs inputs in place, so a stride-0 (expanded) input is made dense first;
    every other layout is kept as the sample made it."""
    out = []
    for a in args:
        if isinstance(a, Tensor) and any(
            s == 0 and n > 1 for s, n in zip(a.stride(), a.shape, strict=True)
        ):
            a = a.detach().contiguous().requires_grad_(a.requires_grad)
        out.append(a)
    return tuple(out)


def gradcheck_cases(info: OpInfo) -> Iterator[Case]:
    """gradcheck and gradgradcheck in float64: the backward and its own backward against
    finite differences."""
    if torch.float64 not in info.dtypes:
        return
    for name, get in _sample_getters(info):
        for checker in (torch.autograd.gradcheck, torch.autograd.gradgradcheck):

            def check(get=get, checker=checker) -> None:
                sample = get("cpu", torch.float64)
                args = gradcheck_args(sample.args)
                if not requiring_grad(args):
                    raise NotApplicable("the sample has no input that requires grad")

                def func(*a: Any) -> Any:
                    return info.call(*a, **sample.kwargs)

                try:
                    checker(func, args)
                except Exception as err:
                    raise AssertionError(
                        f"{info.label}/{sample}: {checker.__name__}: {err}"
                    ) from err

            yield Case("gradcheck", info, f"{name}-{checker.__name__}", check)


def _batch_args(info: OpInfo, rows: int) -> tuple:
    if info.batch_inputs is None:
        raise NotApplicable("the OpInfo has no batch_inputs")
    return info.batch_inputs(rows, "cpu", torch.float32)


def _forward_and_grads(fn: Callable[..., Any], args: tuple, constant=()) -> tuple:
    args = leaves(args, constant=constant)
    ys = _outputs(fn(*args))
    diff = _differentiable(ys)
    if diff:
        _backward(diff, [torch.ones_like(y) for y in diff])
    return [y.detach() for y in ys], [a.grad for a in requiring_grad(args)]


def _first_sample_with_grad(info: OpInfo) -> Sample:
    for index in range(len(info.sample_inputs("cpu", torch.float32, True))):
        sample = sample_at(info, index, "cpu", torch.float32)
        if requiring_grad(sample.args) and all(
            a.numel() > 0 for a in sample.args if isinstance(a, Tensor)
        ):
            return sample
    return sample_at(info, 0, "cpu", torch.float32)


def compile_cases(info: OpInfo) -> Iterator[Case]:
    """``torch.compile(fullgraph=True, dynamic=True)`` of the public function (its non-tensor
    arguments constants of the code): no graph break, forward and backward equal to eager, and
    with ``batch_inputs``, batch sizes after the first reuse the first compile."""

    def check() -> None:
        from torch._dynamo.testing import CompileCounterWithBackend

        torch._dynamo.reset()
        counter = CompileCounterWithBackend("aot_eager")
        if info.batch_inputs is not None:
            rows = (2, *BATCHES_AFTER_WARMUP)
            calls = [(f"batch {n}", _batch_args(info, n)) for n in rows]
        else:
            sample = _first_sample_with_grad(info)
            calls = [(str(sample), sample.args)]
            if sample.kwargs:
                raise NotApplicable("compile of keyword arguments: give batch_inputs")
        constant = among_tensors(calls[0][1], info.constant_args)
        func, _ = bind_constants(info.call, calls[0][1])
        compiled = torch.compile(func, backend=counter, fullgraph=True, dynamic=True)
        try:
            for k, (what, args) in enumerate(calls):
                _, tensors = bind_constants(info.call, args)
                stance = torch.compiler.set_stance("fail_on_recompile") if k else _nothing()
                with stance:
                    ys, grads = _forward_and_grads(compiled, tensors, constant)
                ys_ref, grads_ref = _forward_and_grads(func, tensors, constant)
                for j, (y, y_ref) in enumerate(zip(ys, ys_ref, strict=True)):
                    assert_close_named(y, y_ref, f"{info.label} compiled output {j}, {what}")
                for i, (g, g_ref) in enumerate(zip(grads, grads_ref, strict=True)):
                    assert_close_named(g, g_ref, f"{info.label} compiled gradient {i}, {what}")
        except AssertionError:
            raise
        except Exception as err:
            raise AssertionError(f"{info.label}: torch.compile(fullgraph=True): {err}") from err
        finally:
            torch._dynamo.reset()
        assert counter.frame_count == 1, f"{info.label}: compiled {counter.frame_count} frames"

    yield Case("compile", info, "fullgraph-dynamic", check)


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """The fake tensor logs the op's own error at ERROR level before dynamo re-raises it."""
    import logging

    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


class _Call(torch.nn.Module):
    """The public function as a module of its tensor arguments (others are constants)."""

    def __init__(self, func: Callable[..., Any]) -> None:
        super().__init__()
        self.func = func

    def forward(self, *tensors: Tensor) -> Any:
        return self.func(*tensors)


def export_cases(info: OpInfo) -> Iterator[Case]:
    """``torch.export`` (dim 0 of the batch arguments dynamic with ``batch_inputs``): the op
    stays one node of the graph; saved, loaded, and run at another batch size, as eager."""

    def check() -> None:
        if info.batch_inputs is not None:
            args, other = _batch_args(info, 4), _batch_args(info, 9)
        else:
            sample = sample_at(info, 0, "cpu", torch.float32, requires_grad=False)
            if sample.kwargs:
                raise NotApplicable("export of keyword arguments: give batch_inputs")
            args = other = sample.args
        func, tensors = bind_constants(info.call, leaves(args, requires_grad=False))
        _, other_tensors = bind_constants(info.call, leaves(other, requires_grad=False))
        dynamic = None
        if info.batch_inputs is not None:
            batch = torch.export.Dim("batch")
            positions = among_tensors(args, info.batch_args)
            dynamic = (tuple({0: batch} if k in positions else None for k in range(len(tensors))),)
        try:
            program = torch.export.export(_Call(func), tensors, dynamic_shapes=dynamic)
            buffer = io.BytesIO()
            torch.export.save(program, buffer)
            buffer.seek(0)
            loaded = torch.export.load(buffer)
        except Exception as err:
            raise AssertionError(f"{info.label}: torch.export: {err}") from err
        targets = {n.target for n in program.graph.nodes if n.op == "call_function"}
        assert info.op in targets, f"{info.label}: not a node of the exported graph: {targets}"
        got = _outputs(loaded.module()(*other_tensors))
        want = _outputs(func(*other_tensors))
        for k, (y, w) in enumerate(zip(got, want, strict=True)):
            assert_close_named(y, w, f"{info.label} exported and loaded, output {k}")

    yield Case("export", info, "save-load", check)


def _translation(info: OpInfo) -> Callable[..., Any] | None:
    if info.onnx_translation is not None:
        return info.onnx_translation
    from opslib.core.registration import ONNX_TRANSLATIONS

    return ONNX_TRANSLATIONS.get(info.op)


def onnx_cases(info: OpInfo) -> Iterator[Case]:
    """Exported to ONNX in standard operators with the op's translation (a model whose input
    is the first argument, its other tensors parameters), run in onnxruntime against PyTorch in
    float64, float32 and float16 (``opslib.onnx.PARITY_TOLERANCE``), at two batch sizes."""
    for dtype in (torch.float64, torch.float32, torch.float16):
        if dtype not in info.dtypes:
            continue

        def check(dtype=dtype) -> None:
            translation = _translation(info)
            if translation is None:
                raise NotApplicable("no ONNX translation (OpInfo.onnx_translation)")
            if dtype in info.onnxruntime_missing:
                raise NotApplicable(f"onnxruntime: {info.onnxruntime_missing[dtype]}")
            _onnx_parity(info, translation, dtype)

        yield Case("onnx", info, str(dtype)[6:], check)


def _onnx_parity(info: OpInfo, translation: Callable[..., Any], dtype: torch.dtype) -> None:
    from opslib import onnx as opslib_onnx
    from opslib.testing.models import SingleOpModel, model_inputs

    dynamic = info.batch_inputs is not None
    if dynamic:
        make = lambda rows: leaves(_batch_args(info, rows), requires_grad=False)  # noqa: E731
    else:
        sample = sample_at(info, 0, "cpu", torch.float32, requires_grad=False)
        if sample.kwargs:
            raise NotApplicable("ONNX of keyword arguments: give batch_inputs")
        make = lambda rows: leaves(sample.args, requires_grad=False)  # noqa: E731
    args = _cast(make(4), dtype)
    model = SingleOpModel(info.call, args, info.batch_args)
    inputs = model_inputs(args, info.batch_args)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{info.name}.onnx"
        try:
            opslib_onnx.export(model, inputs, path, dynamic_batch=dynamic,
                               extra_translations={info.op: translation})  # fmt: skip
            session = opslib_onnx.onnxruntime_session(path)
        except Exception as err:
            raise AssertionError(f"{info.label} {dtype}: ONNX export: {err}") from err
        atol, rtol = opslib_onnx.PARITY_TOLERANCE[dtype]
        for rows in (4, 9) if dynamic else (4,):
            # other rows than the exported ones; the parameters are the model's own
            feed = model_inputs(_cast(make(rows), dtype), info.batch_args)
            try:
                (got, *_) = opslib_onnx.run_onnxruntime(session, *feed)
            except Exception as err:
                raise AssertionError(f"{info.label} {dtype}: onnxruntime: {err}") from err
            with torch.no_grad():
                (want, *_) = _outputs(model(*feed))
            assert got.dtype == want.numpy().dtype, (
                f"{info.label} {dtype}: onnxruntime gives {got.dtype}, PyTorch {want.dtype}"
            )
            assert_close_named(torch.from_numpy(got), want, f"{info.label} onnxruntime {dtype},"
                               f" batch {rows}", atol=atol, rtol=rtol)  # fmt: skip


def _cast(args: tuple, dtype: torch.dtype) -> tuple:
    return tuple(a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() else a
                 for a in args)  # fmt: skip


def errors_cases(info: OpInfo) -> Iterator[Case]:
    """Each bad call raises its error, naming the op and the problem, in eager mode and under
    ``torch.compile(fullgraph=True)`` (where dynamo can trace the inputs)."""
    for bad in info.error_inputs():

        def eager(bad=bad) -> None:
            _expect_error(info, bad, lambda args: info.call(*args), "eager")

        yield Case("errors", info, f"{bad.name}-eager", eager)
        if not bad.compiles:
            continue

        def compiled(bad=bad) -> None:
            def run(args: tuple) -> Any:
                torch._dynamo.reset()
                with _quiet("torch._subclasses.fake_tensor"):
                    try:
                        return torch.compile(lambda: info.call(*args), backend="aot_eager",
                                             fullgraph=True)()  # fmt: skip
                    finally:
                        torch._dynamo.reset()

            _expect_error(info, bad, run, "compiled")

        yield Case("errors", info, f"{bad.name}-compiled", compiled)


def _expect_error(info: OpInfo, bad: Any, run: Callable[[tuple], Any], how: str) -> None:
    import re

    what = f"{info.label}: bad call {bad.name!r} ({how})"
    try:
        result = run(bad.make_args())
    except Exception as err:
        messages = [str(e) for e in error_chain(err)]
        assert any(re.search(bad.match, m) for m in messages), (
            f"{what}: raised {type(err).__name__}: {str(err)[:300]!r}, which does not match "
            f"{bad.match!r}"
        )
        assert error_in_chain(err, bad.error_type), (
            f"{what}: raised {type(err).__name__}, not {bad.error_type.__name__}"
        )
        return
    raise AssertionError(
        f"{what}: returned {type(result).__name__} instead of raising {bad.error_type.__name__}"
    )


def _has_vmap_rule(info: OpInfo) -> bool:
    return torch._C._dispatch_has_kernel_for_dispatch_key(info.op.name(), "FuncTorchBatched")


VMAP_SIZE = 4


def vmap_cases(info: OpInfo) -> Iterator[Case]:
    """With a vmap rule registered: ``torch.vmap`` over every tensor argument at dim 0, and
    over the first alone at its last dim, equals a Python loop, with no per-sample fallback."""
    for plan in ("all-0", "first-last"):

        def check(plan=plan) -> None:
            if not _has_vmap_rule(info):
                raise NotApplicable("no vmap rule registered (vmap would loop per sample)")
            draws = [leaves(_batch_args(info, 3), requires_grad=False) for _ in range(VMAP_SIZE)]
            tensors = [i for i, a in enumerate(draws[0]) if isinstance(a, Tensor)]
            dims = dict.fromkeys(tensors, 0) if plan == "all-0" else {
                tensors[0]: draws[0][tensors[0]].dim()}  # fmt: skip
            in_dims = tuple(dims.get(i) for i in range(len(draws[0])))
            batched = [
                a if d is None else torch.stack([draw[i] for draw in draws], dim=d)
                for i, (a, d) in enumerate(zip(draws[0], in_dims, strict=True))
            ]
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # the per-sample fallback warns
                try:
                    out = torch.vmap(info.call, in_dims=in_dims)(*batched)
                except Exception as err:
                    raise AssertionError(f"{info.label}: vmap {in_dims}: {err}") from err
            loop = torch.stack([
                info.call(*[a if d is None else a.select(d, b)
                            for a, d in zip(batched, in_dims, strict=True)])
                for b in range(VMAP_SIZE)
            ])  # fmt: skip
            assert_close_named(out, loop, f"{info.label} vmap {in_dims} against a loop")

        yield Case("vmap", info, plan, check)


def autocast_cases(info: OpInfo) -> Iterator[Case]:
    """Under CPU autocast (bfloat16, float16) the op computes in the dtype native does, and its
    gradients reach the inputs in the dtype native's do."""
    for dtype in HALF_DTYPES[::-1]:
        yield Case("autocast", info, f"cpu-{str(dtype)[6:]}", _autocast_check(info, dtype))


def _autocast_check(info: OpInfo, dtype: torch.dtype) -> Callable[[], None]:
    def check() -> None:
        if dtype not in info.dtypes:
            raise NotApplicable(f"the op does not take {dtype}")
        if info.batch_inputs is not None:
            args = leaves(_batch_args(info, 8), constant=info.constant_args)
            kwargs: dict = {}
        else:
            sample = _first_sample_with_grad(info)
            args, kwargs = leaves(sample.args, constant=info.constant_args), sample.kwargs
        native_args = leaves(args, constant=info.constant_args)
        with torch.autocast("cpu", dtype=dtype):
            ours = _outputs(info.call(*args, **kwargs))
            native = _outputs(info.reference(*native_args, **kwargs))
        for k, (y, n) in enumerate(zip(ours, native, strict=True)):
            assert y.dtype == n.dtype, f"{info.label} output {k}: {y.dtype}, native {n.dtype}"
            assert_close_named(y, n, f"{info.label} under autocast, output {k}")
        diff = [(y, n) for y, n in zip(ours, native, strict=True) if y.requires_grad]
        if diff:
            _backward([y.float().sum() for y, _ in diff], [torch.ones(()) for _ in diff])
            _backward([n.float().sum() for _, n in diff], [torch.ones(()) for _ in diff])
        for i, (a, b) in enumerate(zip(requiring_grad(args), requiring_grad(native_args),
                                       strict=True)):  # fmt: skip
            got = None if a.grad is None else a.grad.dtype
            want = None if b.grad is None else b.grad.dtype
            assert got == want, f"{info.label} gradient {i} under autocast: {got}, native {want}"

    return check


def torchscript_cases(info: OpInfo) -> Iterator[Case]:
    """``torch.jit.trace`` of the public function keeps the op: saved, loaded, and run on
    other inputs of the same shapes, as eager."""

    def check() -> None:
        if info.batch_inputs is not None:
            args, other = _batch_args(info, 4), _batch_args(info, 4)
        else:
            sample = sample_at(info, 0, "cpu", torch.float32, requires_grad=False)
            if sample.kwargs:
                raise NotApplicable("tracing keyword arguments: give batch_inputs")
            args = sample.args
            other = tuple(a.detach().clone().normal_() if isinstance(a, Tensor)
                          and a.is_floating_point() else a for a in args)  # fmt: skip
        func, tensors = bind_constants(info.call, leaves(args, requires_grad=False))
        _, other_tensors = bind_constants(info.call, leaves(other, requires_grad=False))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates jit
                traced = torch.jit.trace(_Call(func), tensors, check_trace=False)
                buffer = io.BytesIO()
                torch.jit.save(traced, buffer)
                buffer.seek(0)
                loaded = torch.jit.load(buffer)
        except Exception as err:
            raise AssertionError(f"{info.label}: torch.jit.trace: {err}") from err
        assert info.op.name() in str(loaded.inlined_graph), (
            f"{info.label}: not a node of the traced graph"
        )
        got, want = _outputs(loaded(*other_tensors)), _outputs(func(*other_tensors))
        for k, (y, w) in enumerate(zip(got, want, strict=True)):
            assert_close_named(y, w, f"{info.label} traced and loaded, output {k}")

    yield Case("torchscript", info, "trace-save-load", check)


EXTREMES = (float("-inf"), -1e4, -1000.0, -20.0, -1.0, -0.0, 0.0, 1.0, 20.0, 1000.0, 1e4,
            float("inf"), float("nan"))  # fmt: skip


def extremes_cases(info: OpInfo) -> Iterator[Case]:
    """±1000, ±1e4, ±inf and nan (``extreme_inputs``) give native's values and gradients: the
    same infinities, nan in the same places."""

    def check() -> None:
        if info.extreme_inputs is None:
            raise NotApplicable("no extreme_inputs")
        args = info.extreme_inputs(torch.tensor(EXTREMES, requires_grad=True))
        ref_args = fresh_leaves(args)
        y, y_ref = info.call(*args), info.reference(*ref_args)
        assert_close_named(y, y_ref, f"{info.label} forward on {list(EXTREMES)}")
        y.sum().backward()
        y_ref.sum().backward()
        for i, (g, g_ref) in enumerate(zip(grads_of(args), grads_of(ref_args), strict=True)):
            assert_close_named(g, g_ref, f"{info.label} gradient of input {i} on extremes")

    yield Case("extremes", info, "inf-nan-1e4", check)


FAMILIES: dict[str, Callable[[OpInfo], Iterator[Case]]] = {
    "opcheck": opcheck_cases,
    "reference": reference_cases,
    "gradcheck": gradcheck_cases,
    "compile": compile_cases,
    "export": export_cases,
    "onnx": onnx_cases,
    "errors": errors_cases,
    "vmap": vmap_cases,
    "autocast": autocast_cases,
    "torchscript": torchscript_cases,
    "extremes": extremes_cases,
}
