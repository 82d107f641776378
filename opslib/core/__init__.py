"""The machinery every op uses, kept apart from the ops themselves (``opslib/ops/<name>.py``).

- ``registration``: ``define_op`` (schema, kernel, fake, ``torch.library.register_autograd``),
  vmap, autocast and inductor helpers;
- ``checks``: the input checks whose errors name the op;
- ``precision``: the dtype an op computes half precision in;
- ``cpu_kernels``: builds and loads the C++ kernels of ``opslib/csrc``;
- ``cuda_path``: when a call goes to a Triton kernel (the kernels themselves are per op, in
  ``opslib/ops/triton_kernels/``).
"""
