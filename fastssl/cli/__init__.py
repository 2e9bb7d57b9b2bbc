"""Command lines: argument parsing, presets and the one-line error of ``python -m fastssl.train``,
``python -m fastssl.eval`` and ``python -m fastssl.info`` (the top-level ``fastssl.train`` / ``eval`` /
``info`` modules are one-line entry points into these). The top layer: nothing imports it.
"""
