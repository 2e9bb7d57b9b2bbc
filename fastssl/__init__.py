"""fastssl: self-supervised learning for vision on fused Triton / C++ / CUDA kernels and DALI.

Public entry points: ``fastssl.ops`` (fused ops), ``python -m fastssl.train``, ``python -m fastssl.eval``,
``python -m fastssl.info``.
"""

__version__ = "0.1.0"
