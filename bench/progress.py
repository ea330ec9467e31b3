"""A one-line progress report with an ETA on stderr, for runs of several minutes (no tqdm: the
package does not depend on it, and the benchmark must run wherever the package does).

On a terminal the line is redrawn in place and the table the runner prints on stdout goes above
it (:meth:`Progress.print` clears the line, prints, and draws it again). Written to a file or a
pipe (``--progress`` forces it on) it is one line per finished measurement instead.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


def _clock_text(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    """``total`` units of work (measurements). ETA = elapsed / done × remaining: measurements of
    one run take similar time (each is held to the same timing budget), so the plain average is
    a fair guide, and it needs no model of what each provider costs."""

    def __init__(self, total: int, enabled: bool, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.enabled = total, enabled and total > 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.clock = clock
        self.done, self.label, self.t0 = 0, "", clock()

    def line(self) -> str:
        """``[  7/60] 12% 0:41 elapsed, ETA 4:50 | q-b64 LSTM fwdbwd cpu``"""
        elapsed = self.clock() - self.t0
        eta = "?" if self.done == 0 else _clock_text(elapsed / self.done
                                                      * (self.total - self.done))
        width = len(str(self.total))
        text = (f"[{self.done:{width}d}/{self.total}] {100 * self.done // self.total:3d}% "
                f"{_clock_text(elapsed)} elapsed, ETA {eta}")
        return text + (f" | {self.label}" if self.label else "")

    def _draw(self) -> None:
        if self.tty:
            self.stream.write("\r" + self.line() + "\x1b[K")
            self.stream.flush()

    def _erase(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def start(self, label: str) -> None:
        """What is measured now (shown on a terminal until it is done)."""
        self.label = label
        self._draw()

    def advance(self) -> None:
        """One unit done."""
        self.done += 1
        if self.tty:
            self._draw()
        elif self.enabled:
            print(self.line(), file=self.stream, flush=True)

    def print(self, text: str) -> None:
        """Print ``text`` on stdout without tearing the progress line."""
        self._erase()
        print(text, flush=True)
        self._draw()

    def close(self) -> None:
        self._erase()
