"""A request's deadline: the moment after which its client no longer waits for the answer.

A client says it with ``X-Img2Pose-Deadline: <Unix time in seconds>`` (e.g. ``1764605000.25``; the
backfill sends now + its own timeout). TorchServe gives the handler no arrival time, so a relative
timeout could not be honoured: the deadline is absolute, and client and server clocks must agree
(NTP) to well within the timeout. A request whose deadline has passed when the handler reaches it
(parsing, or the start of its forward) is answered 504 at once instead of being decoded and run;
so is one whose deadline is nearer than its forward would take (``ForwardClock``: the recent
forwards' time per image). Under overload the worker then spends no time on answers nobody waits
for: without the second rule, a queue longer than the clients' patience would have the worker run
each request just before its deadline and finish it just after.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import deque

from .errors import DeadlineExceeded, InvalidInput

DEADLINE_HEADER = "X-Img2Pose-Deadline"


def parse_deadline(value: str | bytes | None) -> float | None:
    """The header's deadline (None: no header); InvalidInput (400) for anything but a finite number."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)
    try:
        deadline = float(text.strip())
    except ValueError:
        deadline = math.nan
    if not math.isfinite(deadline) or deadline <= 0:
        raise InvalidInput(f"header {DEADLINE_HEADER} must be a Unix time in seconds (e.g. "
                           f"{time.time() + 30:.2f}), got {text[:40]!r}")
    return deadline


def check_deadline(deadline: float | None, stage: str, now: float | None = None, needed: float = 0.0) -> None:
    """DeadlineExceeded (504) when ``deadline`` has passed at ``stage``, or is less than ``needed`` seconds away."""
    if deadline is None:
        return
    left = deadline - (time.time() if now is None else now)
    if left <= 0:
        raise DeadlineExceeded(f"the request's deadline ({DEADLINE_HEADER}) passed {-left:.2f} s "
                               f"before {stage}: not run")
    if left < needed:
        raise DeadlineExceeded(f"the request's deadline ({DEADLINE_HEADER}) was {left:.2f} s away at "
                               f"{stage}, less than its forward takes here (~{needed:.2f} s): not run")


class ForwardClock:
    """How long a forward takes here: the median time per image of the last ``window`` forwards."""

    def __init__(self, window: int = 16) -> None:
        self._per_image: deque[float] = deque(maxlen=window)

    def record(self, seconds: float, images: int) -> None:
        self._per_image.append(seconds / images)

    def expected(self, images: int) -> float:
        """Seconds a forward of ``images`` images should take (0 before any was measured)."""
        return statistics.median(self._per_image) * images if self._per_image else 0.0
