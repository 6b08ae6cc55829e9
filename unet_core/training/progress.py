"""The console progress line of a training run (tqdm): step, loss, data wait, time left; the
validation results and messages as lines of their own above it."""

from __future__ import annotations

import sys

from tqdm import tqdm


class TrainProgress:
    """Progress of a run of ``total`` steps on stderr (nothing when not ``enabled``).

    A run resumed at step ``n`` starts its bar there (on the first :meth:`update`), so the rate
    and the time left count only the steps this process trains.
    """

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total = total
        self.enabled = enabled
        self._bar: tqdm | None = None

    def _bar_at(self, step: int) -> tqdm:
        if self._bar is None:
            interactive = sys.stderr.isatty()
            # In a log file (the app's console.log) a line every 30 s, not a redraw per step.
            self._bar = tqdm(total=self.total, initial=step - 1, unit="step", file=sys.stderr, dynamic_ncols=True,
                             mininterval=0.2 if interactive else 30.0, disable=not self.enabled, ascii=not interactive)
        return self._bar

    def update(self, step: int, loss: float, step_s: float, wait: float, note: str = "") -> None:
        bar = self._bar_at(step)
        bar.set_postfix_str(f"loss {loss:.4f}, {step_s:.2f} s/step, wait {100 * wait:.0f}%", refresh=False)
        bar.update(step - bar.n)
        if note:
            self.message(f"step {step}/{self.total}: {note}")

    def message(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
