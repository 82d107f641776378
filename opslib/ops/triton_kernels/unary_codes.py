"""Which formula the shared unary Triton kernel computes (``unary.py``): one code per op, read
by the kernels and by the op files, which must not import Triton to name their code."""

SQUARE, CUBE, EXP, RELU, SIGMOID, TANH = range(6)
