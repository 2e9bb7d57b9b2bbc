"""Progress output for long loops (no tqdm dependency): one refreshing line on a terminal, a plain
line every ``every_s`` seconds in logs. Shows steps/s, images/s, the given metrics and the ETA."""

from __future__ import annotations

import sys
import time


def fmt_duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    def __init__(self, total_steps: int, images_per_step: int, start_step: int = 0, stream=None,
                 every_s: float = 10.0, enabled: bool = True, width: int = 24):
        self.total, self.ips = total_steps, images_per_step
        self.start_step = start_step
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every_s = 0.2 if self.tty else every_s
        self.enabled, self.width = enabled, width
        self.t0 = time.perf_counter()
        self.last_print = 0.0
        self._line_open = False  # a tty line awaiting its newline

    def rates(self, step: int) -> tuple[float, float]:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        sps = (step - self.start_step) / elapsed
        return sps, sps * self.ips

    def update(self, step: int, prefix: str = "", force: bool = False, **metrics) -> None:
        now = time.perf_counter()
        if not self.enabled or (not force and now - self.last_print < self.every_s):
            return
        self.last_print = now
        sps, ips = self.rates(step)
        eta = (self.total - step) / sps if sps > 0 else float("nan")
        frac = step / max(self.total, 1)
        bar = "#" * int(frac * self.width) + "." * (self.width - int(frac * self.width))
        vals = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        line = (f"{prefix}[{bar}] {step}/{self.total} | {sps:.2f} step/s {ips:.0f} img/s | {vals} | "
                f"ETA {fmt_duration(eta) if eta == eta else '?'}")
        self.stream.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        self.stream.flush()
        self._line_open = self.tty

    def close(self) -> None:
        """End the refreshing line, if one is open (safe to call more than once)."""
        if self._line_open:
            self.stream.write("\n")
            self.stream.flush()
            self._line_open = False
