"""The user-facing error types, in one module that the CLIs, the trainer and the data layer import.

Each is printed by the command line as one line ``fastssl.<cli>: error: <message>`` with a non-zero exit
(2 for a bad command line or config, 1 for a run that cannot go on). Keeping them here (and nowhere
else) means ``python -m fastssl.train`` (where train.py runs as ``__main__``) catches the very class
the trainer raises: no import cycle between a CLI and the engine.
"""

from __future__ import annotations


class FastSSLError(Exception):
    """Base of every error fastssl reports as one line to the user."""


class ConfigError(FastSSLError, ValueError):
    """A bad command line, config file or flag combination (exit 2, nothing written)."""


class TrainError(FastSSLError, RuntimeError):
    """The run cannot go on (non-finite loss, incompatible resume, bad data size)."""


class DataError(FastSSLError, ValueError):
    """A dataset path or file that cannot be used; the message names the path."""


def print_line(text: str, file=None) -> None:
    """Write ``text`` and its newline to stderr as ONE write, then flush: under torchrun every rank prints
    its error at the same moment, and ``print`` (message and newline as two writes on an unbuffered
    stream) let two ranks' lines run together into one (a pipe keeps a single write of <= 4 KiB whole)."""
    import sys

    f = file or sys.stderr
    f.write(f"{text}\n")
    f.flush()


class cli_warnings:  # noqa: N801 (a context manager used like a function)
    """Within a command line, print each ``warnings.warn`` as one line ``<prog>: warning: <message>``
    (not Python's two-line ``file:line: UserWarning`` form)."""

    def __init__(self, prog: str):
        self.prog = prog

    def __enter__(self):
        import sys
        import warnings

        self._old = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            print_line(f"{self.prog}: warning: {' '.join(str(message).split())}", file=file or sys.stderr)

        warnings.showwarning = show
        return self

    def __exit__(self, *exc):
        import warnings

        warnings.showwarning = self._old
