"""Triton device code (@triton.jit kernels only), installed as ``fastssl.kernels``.

Launchers, checks and autograd live in ``fastssl.ops``; this package holds nothing else.
"""
