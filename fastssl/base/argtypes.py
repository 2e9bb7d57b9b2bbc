"""argparse ``type=`` validators shared by the command lines (train, eval, verify) and the methods'
``add_args``: a bad value is refused where it is parsed, as one line ``<prog>: error: argument --flag:
<why>`` with exit 2, before anything is created. The trainer also applies them to ``--config`` file
values (argparse would not), so a file cannot carry a value the command line would refuse.

Each takes the text (or, from a config file, the value itself) and returns the converted value or
raises ``argparse.ArgumentTypeError``.
"""

from __future__ import annotations

import argparse
import json
import math


def _number(text, kind):
    if isinstance(text, bool):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    try:
        value = kind(text) if isinstance(text, str) or kind is float else None
        if value is None:  # int from a non-string (config file): must already be integral
            value = int(text)
            if value != text:
                raise ValueError
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def ranged(kind, lo=None, hi=None, lo_open=False, hi_open=False):
    """A validator for ``kind`` (int or float) in the given interval (None: unbounded)."""

    def check(text):
        v = _number(text, kind)
        below = lo is not None and (v < lo or (lo_open and v == lo))
        above = hi is not None and (v > hi or (hi_open and v == hi))
        if lo is not None and hi is not None and (below or above):
            raise argparse.ArgumentTypeError(f"must be in {left}, {right}, got {v}")
        if below:
            raise argparse.ArgumentTypeError(f"must be {'>' if lo_open else '>='} {lo}, got {v}")
        if above:
            raise argparse.ArgumentTypeError(f"must be {'<' if hi_open else '<='} {hi}, got {v}")
        return v

    left = "(-inf" if lo is None else f"{'(' if lo_open else '['}{lo}"
    right = "inf)" if hi is None else f"{hi}{')' if hi_open else ']'}"
    check.__name__ = f"{kind.__name__} in {left}, {right}"
    return check


positive_int = ranged(int, 1)
nonneg_int = ranged(int, 0)
positive_float = ranged(float, 0, lo_open=True)
nonneg_float = ranged(float, 0)
fraction = ranged(float, 0, 1, lo_open=True)  # (0, 1]
probability = ranged(float, 0, 1)  # [0, 1]
momentum = ranged(float, 0, 1, hi_open=True)  # [0, 1)
seed = ranged(int, 0, 2**32 - 1)


def device(text) -> str:
    """cpu, cuda or cuda:N; cuda only when torch sees a GPU."""
    import torch

    text = str(text)
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r} requested but torch sees no CUDA device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return text


def json_object(text) -> dict:
    """A JSON object (dict), given as text or (from a config file) as a dict already."""
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object {{...}}, got {text!r}")
    return value


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``fastssl.<cli>: error: <why> (see --help)``, exit 2
    (argparse's default prints the whole usage block first; the CLIs promise one line)."""

    def error(self, message: str):
        prog = self.prog.removeprefix("python -m ")
        self.exit(2, f"{prog}: error: {message} (see --help)\n")
