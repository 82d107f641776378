import mylib  # defines mylib::scaled_tanh(Tensor x, float alpha=1.0) -> Tensor
import pytest
import torch

from opslib.testing import ErrorInput, OpInfo, Sample, op_cases


def samples(device, dtype, requires_grad):
    def x(*shape):
        return torch.randn(shape, device=device, dtype=dtype, requires_grad=requires_grad)

    return [
        Sample("matrix", (x(4, 5), 0.5)),
        Sample("0-d", (x(), 2.0)),
        Sample("empty", (x(0, 3), 1.0)),
        Sample("alpha-keyword", (x(3),), {"alpha": -1.0}),
    ]


INFO = OpInfo(
    op=torch.ops.mylib.scaled_tanh.default,
    reference=lambda x, alpha=1.0: alpha * torch.tanh(x),
    sample_inputs=samples,
    batch_inputs=lambda rows, device, dtype: (torch.randn(rows, 8, dtype=dtype), 1.5),
    onnx_translation=mylib.scaled_tanh_onnx,
    extreme_inputs=lambda x: (x, 0.5),
    error_inputs=lambda: [ErrorInput("int x", (torch.arange(3),), TypeError, "floating point")],
)


@pytest.mark.parametrize("case", op_cases(INFO))
def test_scaled_tanh(case):
    case.run()
