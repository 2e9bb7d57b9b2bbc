"""Progress output: a tqdm bar on a terminal, whole lines in logs, close() idempotent, true rates."""

import io

from fastssl.base.progress import Progress, fmt_duration


class _Tty(io.StringIO):
    def isatty(self):
        return True


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_tty_line_closed_once():
    s, clock = _Tty(), _Clock()
    p = Progress(10, 4, stream=s, clock=clock)
    clock.t += 2.0
    p.update(1, force=True, loss=1.0)
    p.close()
    p.close()
    p.update(2, force=True, loss=1.0)  # nothing after close
    out = s.getvalue()
    assert out.startswith("\r") and out.count("\n") == 1 and out.endswith("\n")
    assert "1/10" in out and "loss 1" in out and "2/10" not in out


def test_log_lines_and_true_rates():
    s, clock = io.StringIO(), _Clock()
    p = Progress(12, 16, start_step=2, stream=s, every_s=10.0, clock=clock)
    p.close()
    assert s.getvalue() == ""
    p = Progress(12, 16, start_step=2, stream=s, every_s=10.0, clock=clock)
    for step in range(3, 9):  # 2 s per step: 0.5 step/s, 8 img/s
        clock.t += 2.0
        p.update(step, prefix="epoch 1/2 ", loss=2.5)
    lines = s.getvalue().splitlines()
    assert len(lines) == 2  # at step 3 (first), then step 8 (10 s later); whole lines, no "\r"
    assert "\r" not in s.getvalue()
    assert lines[1].startswith("epoch 1/2:") and "8/12" in lines[1] and "8 img/s" in lines[1]
    assert "2.00s/step" in lines[1] and "loss 2.5" in lines[1]
    assert "00:12<00:08" in lines[1]  # 12 s elapsed, 4 steps left at 0.5 step/s
    assert p.rates(8) == (0.5, 8.0)
    assert fmt_duration(3725) == "1:02:05" and fmt_duration(65) == "01:05"
