"""Training progress: a tqdm bar on a terminal, and the same tqdm-formatted line written whole every
``every_s`` seconds when the stream is a log file (tqdm alone would fill a log with carriage-return
redraws on one endless line; that is the one thing added here).

Numbers (all from the clock the trainer passes, so tests can check them exactly): ``step/s`` and the
ETA are the average over this session (steps since ``start_step`` divided by the seconds since the
bar was created; tqdm ``smoothing=0``), ``img/s`` is that rate times the global batch.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


def fmt_duration(seconds: float) -> str:
    """Seconds as tqdm writes durations ([H:]MM:SS)."""
    return tqdm.format_interval(max(seconds, 0))


class Progress:
    def __init__(self, total_steps: int, images_per_step: int, start_step: int = 0, stream=None,
                 every_s: float = 10.0, enabled: bool = True, clock=time.perf_counter):
        self.total, self.ips = total_steps, images_per_step
        self.start_step = start_step
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.every_s, self.enabled, self.clock = every_s, enabled, clock
        self.t0 = clock()
        self.last_print = float("-inf")
        self.closed = False
        self.bar = None
        if enabled and self.tty:
            self.bar = tqdm(total=total_steps, initial=start_step, file=self.stream, unit="step", smoothing=0,
                            mininterval=0.2, dynamic_ncols=True, leave=True)
            self.bar._time = clock  # tqdm reads time through this attribute; one clock for every number
            self.bar.start_t = self.bar.last_print_t = self.t0

    def rates(self, step: int) -> tuple[float, float]:
        """(steps/s, images/s) averaged over this session up to ``step``."""
        elapsed = max(self.clock() - self.t0, 1e-9)
        sps = (step - self.start_step) / elapsed
        return sps, sps * self.ips

    def line(self, step: int, prefix: str = "", **metrics) -> str:
        """The progress text for ``step`` (what a log gets): tqdm's meter plus img/s and the metrics."""
        _, ips = self.rates(step)
        return tqdm.format_meter(step, self.total, self.clock() - self.t0, prefix=prefix.strip(), unit="step",
                                 initial=self.start_step, ncols=None, postfix=self._postfix(ips, metrics))

    @staticmethod
    def _postfix(ips: float, metrics: dict) -> str:
        return ", ".join([f"{ips:.0f} img/s", *(f"{k} {v:.4g}" for k, v in metrics.items())])

    def update(self, step: int, prefix: str = "", force: bool = False, **metrics) -> None:
        if not self.enabled or self.closed:
            return
        if self.bar is not None:
            self.bar.set_description_str(prefix.strip(), refresh=False)
            self.bar.set_postfix_str(self._postfix(self.rates(step)[1], metrics), refresh=False)
            self.bar.update(step - self.bar.n)
            if force:
                self.bar.refresh()
            return
        now = self.clock()
        if force or now - self.last_print >= self.every_s:
            self.last_print = now
            self.stream.write(self.line(step, prefix, **metrics) + "\n")
            self.stream.flush()

    def write(self, text: str) -> None:
        """A line of its own above the bar (tqdm.write on a terminal), or in the log."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        """End the terminal bar's line, if one is open (safe to call more than once)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.closed = True
