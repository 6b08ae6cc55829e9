"""The console progress line of a training run."""

from __future__ import annotations

import sys
import time

from .card import duration


class TrainProgress:
    """A progress line on stderr: step, loss, speed, data wait, ETA."""

    def __init__(self, total: int, stream=None, enabled: bool = True) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.interactive = self.stream.isatty()
        self._last = 0.0

    def update(self, step: int, loss: float, step_s: float, wait: float, note: str = "") -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        final = step == self.total
        if not final and not note and now - self._last < (0.2 if self.interactive else 30.0):
            return
        self._last = now
        width = 24
        filled = int(width * step / max(self.total, 1))
        eta = (self.total - step) * step_s
        line = (f"step {step}/{self.total} |{'#' * filled}{'.' * (width - filled)}| loss {loss:.4f}  "
                f"{step_s:.2f} s/step  wait {100 * wait:.0f}%  ETA {duration(eta)}" + (f"  {note}" if note else ""))
        if self.interactive:
            self.stream.write("\r\033[K" + line + ("\n" if final or note else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            self.stream.write(("\n" if self.interactive else "") + text + "\n")
            self.stream.flush()
