"""Which formula the shared unary Triton kernels compute: one code per op, read by the kernels
(``triton_kernels.py``, which needs Triton) and by their launchers (``triton_launchers.py``,
which does not). Its own module, so that neither imports the other for them."""

SQUARE, CUBE, EXP, RELU, SIGMOID, TANH = range(6)
