"""Progress output: one refreshing line on a terminal, plain lines in logs, close() idempotent."""

import io

from fastssl.progress import Progress, fmt_duration


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_tty_line_closed_once():
    s = _Tty()
    p = Progress(10, 4, stream=s)
    p.update(1, force=True, loss=1.0)
    p.close()
    p.close()
    assert s.getvalue().startswith("\r") and s.getvalue().count("\n") == 1
    assert "1/10" in s.getvalue() and "loss 1" in s.getvalue()


def test_log_lines_and_nothing_to_close():
    s = io.StringIO()
    p = Progress(10, 4, stream=s)
    p.close()
    assert s.getvalue() == ""
    p.update(5, force=True, loss=2.5)
    assert s.getvalue().endswith("\n") and "5/10" in s.getvalue() and "ETA" in s.getvalue()
    assert fmt_duration(3725) == "1h02m05s" and fmt_duration(65) == "1m05s"
