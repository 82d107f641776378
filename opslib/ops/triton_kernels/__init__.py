"""The ops' Triton kernels (the CUDA path), one module per op or family of ops: the
``@triton.jit`` kernels and the functions that launch them (``forward``, ``backward``, and
``supports`` where the kernels take only some calls).

Every module here imports Triton, so none is imported by ``import opslib``: an op reaches its
module through ``opslib.core.cuda_path.kernels(name)`` on its first CUDA call. Every kernel
loads its inputs, computes in float32 (so float16 and bfloat16 round once, at the store) and
stores in the output's dtype. The formulas are the ones derived in each op's file
(``opslib/ops/<name>.py``).
"""
