"""The dtype an op computes in, shared by every op that widens half precision."""

from __future__ import annotations

import torch

HALF_DTYPES = (torch.float16, torch.bfloat16)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for float16/bfloat16, the dtype itself otherwise: what native's kernels compute
    half precision in (their sums and exponentials in float32, rounded once at the end), and so
    what an op must do to be as accurate as native."""
    return torch.float32 if dtype in HALF_DTYPES else dtype
