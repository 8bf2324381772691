"""The progress line of a run: percent done, where it is, and an ETA from the step times
measured so far (the browser tab's title reads the percent from it: ui/studio.js)."""
from __future__ import annotations

import time


class Eta:
    """Remaining time = time per unit of progress since the first step × what is left.
    The wait before the first step (model load, the queue) is not counted."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.start: tuple[float, float] | None = None  # (time, fraction) at the first step seen

    def seconds_left(self, fraction: float) -> float | None:
        now = self.clock()
        if self.start is None:
            self.start = (now, fraction)
            return None
        t0, f0 = self.start
        if fraction <= f0 or now <= t0:
            return None
        return (now - t0) / (fraction - f0) * max(0.0, 1.0 - fraction)

    def describe(self, fraction: float, where: str) -> str:
        """'43% · Batch 1/2, step 9/20 · ETA 12 s'."""
        left = self.seconds_left(fraction)
        eta = "" if left is None else f" · ETA {format_seconds(left)}"
        return f"{int(fraction * 100)}% · {where}{eta}"


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
