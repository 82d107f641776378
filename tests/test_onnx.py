"""ONNX export in standard operators, and onnxruntime parity over the whole op table."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import onnx
import parity
import pytest
import torch
from conftest import op_params

import opslib
from opslib import onnx as opslib_onnx
from opslib.testing.opinfos import OP_TABLE, UPDATE_OP_TABLE

ROOT = Path(__file__).resolve().parents[1]
TWO_OPS = [info.name for info in OP_TABLE[:2]]  # the scripts' command lines, run as a user would
ONE_OP = OP_TABLE[-1].name


@pytest.mark.every_op
def test_translation_table_covers_every_registered_customgrad_op():
    registered = {  # backward ops (<op>_backward) run in training graphs only, never exported
        name.split("::")[1]
        for name in torch._C._dispatch_get_all_op_names()
        if name.startswith("customgrad::") and not name.endswith("_backward")
    }
    translated = {op.name().split("::")[1] for op in opslib_onnx.translation_table()}
    assert {info.name for info in OP_TABLE} <= translated  # and batch_norm's in-place update
    # an in-place training update (an optimizer step) is never part of an inference graph
    assert registered == translated | {info.name for info in UPDATE_OP_TABLE}


@pytest.mark.parametrize("info", [*op_params(), pytest.param(None, id="mlp_classifier")])
def test_check_parity_script_passes_every_dtype_and_batch(info, tmp_path, capsys):
    """export/check_parity.py (run in-process) on one model: exported in every dtype
    onnxruntime has kernels for, each file standard ONNX with a symbolic batch, and every row
    of the parity table (batches 1, 7, 4096) within tolerance."""
    name = "mlp_classifier" if info is None else info.name
    missing = set() if info is None else set(info.onnxruntime_missing)
    assert _script("check_parity").main(["--only", name, "--out", str(tmp_path)]) == 0, (
        capsys.readouterr().out
    )
    out = capsys.readouterr().out
    passed = [line for line in out.splitlines() if line.startswith(name) and line.endswith("PASS")]
    assert len(passed) == len(parity.PARITY_BATCHES) * (3 - len(missing)), out
    files = sorted(tmp_path.glob("*.onnx"))
    dtypes = [d for d in parity.PARITY_DTYPES if d not in missing]
    assert [p.name for p in files] == sorted(f"{name}_{str(d)[6:]}.onnx" for d in dtypes)
    for path in files:
        proto = onnx.load(str(path))
        assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"export/{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def check_onnxruntime_parity(refs, folder, missing=frozenset()) -> None:
    """Every dtype but those onnxruntime has no kernel for (``missing``)."""
    assert {r.dtype for r in refs} == set(parity.PARITY_DTYPES) - set(missing)
    for ref in refs:
        path = folder / parity.file_name(ref)
        proto = parity.export_reference(ref, path)
        assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
        rows = parity.check_parity(ref, path)
        assert [r.batch for r in rows] == list(parity.PARITY_BATCHES)
        failed = [r for r in rows if not r.passed]
        assert not failed, parity.format_parity_table(failed)


def _linear_model(bias: torch.Tensor | None) -> torch.nn.Module:
    return parity.SingleOpModel(opslib.linear, (torch.randn(4, 3), torch.randn(5, 3), bias))


@pytest.mark.parametrize("bias_shape", [None, (5,), (1, 5), (4, 5), (1, 1, 5)], ids=str)
def test_linear_exports_3d_input_and_every_bias_form(bias_shape, tmp_path):
    """x [batch, seq, in] needs MatMul (Gemm is 2-D only); Add broadcasts every bias form."""
    bias = None if bias_shape is None else torch.randn(bias_shape)
    model = _linear_model(bias)
    proto = opslib_onnx.export(model, (torch.randn(2, 4, 3),), tmp_path / "linear.onnx")
    assert "MatMul" in [n.op_type for n in proto.graph.node]
    session = opslib_onnx.onnxruntime_session(tmp_path / "linear.onnx")
    for batch in (1, 6):
        x = torch.randn(batch, 4, 3)
        (out,) = opslib_onnx.run_onnxruntime(session, x)
        torch.testing.assert_close(torch.from_numpy(out), model(x).detach())


def test_batch_sized_bias_parameter_is_refused_with_a_clear_error(tmp_path):
    model = _linear_model(torch.randn(4, 5))  # [batch, out] as a parameter fixes the batch
    with pytest.raises(opslib_onnx.ONNXExportError, match="pass it as an input instead"):
        opslib_onnx.export(model, (torch.randn(4, 3),), tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


def test_batch_sized_bias_as_an_input_shares_the_dynamic_batch(tmp_path):
    class WithBiasInput(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(5, 3))

        def forward(self, x, bias):
            return opslib.linear(x, self.weight, bias)

    model = WithBiasInput()
    proto = opslib_onnx.export(model, (torch.randn(4, 3), torch.randn(4, 5)), tmp_path / "b.onnx")
    assert all(i.type.tensor_type.shape.dim[0].dim_param for i in proto.graph.input)
    session = opslib_onnx.onnxruntime_session(tmp_path / "b.onnx")
    x, b = torch.randn(9, 3), torch.randn(9, 5)
    (out,) = opslib_onnx.run_onnxruntime(session, x, b)
    torch.testing.assert_close(torch.from_numpy(out), model(x, b).detach())


def test_learned_silu_slope_is_an_initializer_not_a_constant(tmp_path):
    model = opslib.nn.LearnedSiLU(init=0.25, num_parameters=6).eval()
    proto = opslib_onnx.export(model, (torch.randn(3, 6),), tmp_path / "silu.onnx")
    initializers = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    assert "slope" in initializers and (initializers["slope"] == 0.25).all()
    assert "Constant" not in [n.op_type for n in proto.graph.node]


def test_model_with_an_untranslated_op_gets_a_clear_error(tmp_path):
    @torch.library.custom_op("opslib_test::mystery", mutates_args=())
    def mystery(x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    mystery.register_fake(lambda x: torch.empty_like(x))

    class Mystery(torch.nn.Module):
        def forward(self, x):
            return mystery(opslib.relu(x))

    with pytest.raises(opslib_onnx.ONNXExportError, match="no ONNX translation for opslib_test"):
        opslib_onnx.export(Mystery(), (torch.randn(3, 2),), tmp_path / "m.onnx")


def test_example_batch_of_one_is_refused_for_dynamic_export(tmp_path):
    with pytest.raises(opslib_onnx.ONNXExportError, match="example batch must be >= 2"):
        opslib_onnx.export(opslib.nn.ReLU(), (torch.randn(1, 3),), tmp_path / "r.onnx")


@pytest.mark.parametrize("ops", [pytest.param(TWO_OPS, id="-".join(TWO_OPS))])
def test_check_parity_script_prints_the_table_and_exits_zero(ops):
    result = subprocess.run(
        [sys.executable, "export/check_parity.py", "--only", *ops],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "err/tol" in result.stdout and "18 passed, 0 failed" in result.stdout


def test_check_parity_script_exits_nonzero_when_a_row_fails(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("check_parity", ROOT / "export/check_parity.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    zero = dict.fromkeys(opslib_onnx.PARITY_TOLERANCE, (0.0, 0.0))  # read by parity.py
    monkeypatch.setattr(opslib_onnx, "PARITY_TOLERANCE", zero)
    assert script.main(["--only", "mlp_classifier"]) == 1  # its last-ulp differences now fail
    assert "FAIL" in capsys.readouterr().out


@pytest.mark.parametrize("op", [ONE_OP])
def test_export_models_script_writes_checked_models(op, tmp_path):
    result = subprocess.run(
        [sys.executable, "export/export_models.py", "--out", str(tmp_path), "--only", op],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    files = sorted(p.name for p in tmp_path.glob("*.onnx"))
    assert files == [f"{op}_{dtype}.onnx" for dtype in ("float16", "float32", "float64")]
    for path in tmp_path.glob("*.onnx"):
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)


class _ScaledTanh(torch.nn.Module):
    def __init__(self, as_buffer: bool) -> None:
        super().__init__()
        self.as_buffer = as_buffer
        self.register_buffer("scale", torch.tensor(0.1, dtype=torch.float64))

    def forward(self, x):
        return opslib.tanh(x) * (self.scale if self.as_buffer else 0.1)


@pytest.mark.parametrize("as_buffer", [False, True], ids=["python-literal", "float64-buffer"])
def test_float_literals_limit_float64_parity_and_buffers_do_not(as_buffer, tmp_path):
    """docs/guides/using.md: the exporter stores Python float literals as float32 constants."""
    model = _ScaledTanh(as_buffer)
    x = torch.randn(64, 8, dtype=torch.float64)
    opslib_onnx.export(model, (x,), tmp_path / "s.onnx")
    (out,) = opslib_onnx.run_onnxruntime(opslib_onnx.onnxruntime_session(tmp_path / "s.onnx"), x)
    max_abs, _ = opslib_onnx.parity_error(out, model(x))
    if as_buffer:
        assert max_abs < 1e-15
    else:
        assert 1e-10 < max_abs < 1e-8  # 0.1 rounded to float32: relative error ~1.5e-9
